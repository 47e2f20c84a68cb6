"""Fixtures of the evaluation tests; puts this folder on sys.path for ``eval_oracles``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from eval_fixtures import make_sysu_features  # noqa: E402

from uvireid.features import Features  # noqa: E402

REPO = HERE.parents[1]


def official_dir() -> Path | None:
    """The copy of SYSU-MM01's official evaluation files: the folder
    ``$UVIREID_SYSU_OFFICIAL`` names (a checkout elsewhere; an error when it lacks them),
    else the shared one beside the repository, if present."""
    env = os.environ.get("UVIREID_SYSU_OFFICIAL")
    if env:
        candidates = [Path(env).expanduser()]
    else:
        candidates = [
            r / "data" / "sysu_mm01_official" for r in (REPO / "shared", REPO.parent / "shared")
        ]
    for d in candidates:
        if (d / "rand_perm_cam.mat").is_file() and (d / "test_id.mat").is_file():
            return d
    if env:
        raise pytest.UsageError(
            f"UVIREID_SYSU_OFFICIAL={env} has no rand_perm_cam.mat and test_id.mat"
        )
    return None


@pytest.fixture(scope="session")
def sysu_official():
    """(perm_file, {(cam, pid): (10, n) perm}, test ids) or skip."""
    d = official_dir()
    if d is None:
        pytest.skip(
            "shared/data/sysu_mm01_official (rand_perm_cam.mat, test_id.mat) is absent; "
            "set UVIREID_SYSU_OFFICIAL to the folder that holds them"
        )
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


@pytest.fixture
def sysu_small() -> Features:
    return make_sysu_features()
