"""Small features objects in the SYSU-MM01 layout for the evaluation tests."""

from __future__ import annotations

import numpy as np

from uvireid.features import Features


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


def sysu_arrays(n_ids: int = 22, seed: int = 0) -> dict:
    """Arrays of a SYSU-MM01-shaped test set (for ``features_from_arrays``): every id in
    every camera, two images each, with the release's path layout (cams 3 and 6
    infrared)."""
    pids, cams, mods, paths = [], [], [], []
    for pid in range(1, n_ids + 1):
        for cam in (1, 2, 3, 4, 5, 6):
            for k in (1, 2):
                pids.append(pid)
                cams.append(cam)
                mods.append(1 if cam in (3, 6) else 0)
                paths.append(f"cam{cam}/{pid:04d}/{k:04d}.jpg")
    feats = np.random.default_rng(seed).normal(size=(len(pids), 8)).astype(np.float32)
    return {
        "feats": feats,
        "pids": np.array(pids),
        "cams": np.array(cams),
        "modality": np.array(mods),
        "paths": np.array(paths),
    }


def regdb_arrays(seed: int = 0, cams=(1, 2)) -> dict:
    """Arrays of one RegDB-shaped split: 12 ids, one visible (cam 1) and one thermal (cam 2)
    image each."""
    rng = np.random.default_rng(seed)
    pids = np.arange(12)
    return {
        "feats": rng.normal(size=(24, 8)).astype(np.float32),
        "pids": np.concatenate([pids, pids]),
        "cams": np.repeat(cams, 12),
        "modality": np.repeat([0, 1], 12),
    }
