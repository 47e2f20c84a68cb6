"""Fixtures of the evaluation tests; puts this folder on sys.path for ``eval_oracles``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from uvireid.features import Features  # noqa: E402

REPO = HERE.parents[1]


def official_dir() -> Path | None:
    """The shared copy of SYSU-MM01's official evaluation files, if present."""
    for root in (REPO / "shared", REPO.parent / "shared"):
        d = root / "data" / "sysu_mm01_official"
        if (d / "rand_perm_cam.mat").is_file() and (d / "test_id.mat").is_file():
            return d
    return None


@pytest.fixture(scope="session")
def sysu_official():
    """(perm_file, {(cam, pid): (10, n) perm}, test ids) or skip."""
    d = official_dir()
    if d is None:
        pytest.skip("shared/data/sysu_mm01_official (rand_perm_cam.mat, test_id.mat) is absent")
    import scipy.io

    from uvireid.evaluation import load_rand_perm

    perm_file = d / "rand_perm_cam.mat"
    test_ids = [int(x) for x in scipy.io.loadmat(d / "test_id.mat")["id"].reshape(-1)]
    return perm_file, load_rand_perm(perm_file), test_ids


@pytest.fixture(scope="session")
def sysu_official_features(sysu_official):
    """A zero-image SYSU-MM01 test set: one row per test image named as in the release.

    Image counts per (camera, id) come from the row lengths of rand_perm_cam.mat; the
    features are random unit vectors (8-d), the rows are shuffled.
    """
    _, perms, test_ids = sysu_official
    paths, pids, cams = [], [], []
    for (cam, pid), perm in sorted(perms.items()):
        if pid not in test_ids:
            continue
        for idx in range(1, perm.shape[1] + 1):
            paths.append(f"/data/SYSU-MM01/cam{cam}/{pid:04d}/{idx:04d}.jpg")
            pids.append(pid)
            cams.append(cam)
    rng = np.random.default_rng(7)
    shuffle = rng.permutation(len(paths))
    feats = rng.standard_normal((len(paths), 8)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    cams_a = np.asarray(cams)[shuffle]
    return Features(
        feats=feats,
        pids=np.asarray(pids)[shuffle],
        cams=cams_a,
        modality=np.isin(cams_a, (3, 6)).astype(np.int64),
        paths=np.asarray(paths)[shuffle],
        meta={"dataset": "sysu", "split": "test"},
    )


def make_sysu_features(
    seed: int = 0, n_ids: int = 12, with_paths: bool = True, dim: int = 16
) -> Features:
    """A small synthetic SYSU-like test set (cams 1..6, some (id, camera) groups absent).

    Ids are sparse (not 0..n-1), rows are shuffled, image names are zero-padded indices;
    features carry an identity signal so the metrics are not trivial.
    """
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(1, 400), n_ids, replace=False))
    centres = rng.standard_normal((n_ids, dim))
    paths, pids, cams, feats = [], [], [], []
    for k, pid in enumerate(ids.tolist()):
        for cam in range(1, 7):
            if cam not in (3, 6) and rng.random() < 0.25:
                continue  # absent group: draws no random number
            n = int(rng.integers(1, 14))
            for idx in rng.permutation(np.arange(1, n + 1)).tolist():
                paths.append(f"cam{cam}/{pid:04d}/{idx:04d}.jpg")
                pids.append(pid)
                cams.append(cam)
                feats.append(centres[k] + 1.5 * rng.standard_normal(dim))
    order = rng.permutation(len(paths))
    feats_a = np.asarray(feats, dtype=np.float32)[order]
    feats_a /= np.linalg.norm(feats_a, axis=1, keepdims=True)
    cams_a = np.asarray(cams)[order]
    return Features(
        feats=feats_a,
        pids=np.asarray(pids)[order],
        cams=cams_a,
        modality=np.isin(cams_a, (3, 6)).astype(np.int64),
        paths=np.asarray(paths)[order] if with_paths else None,
        meta={"dataset": "sysu", "split": "test", "feature_head": "global"},
    )


@pytest.fixture
def sysu_small() -> Features:
    return make_sysu_features()
