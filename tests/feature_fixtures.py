"""Features in SYSU-MM01's and RegDB's layouts for the command-line tests (re-ranking,
evaluation)."""

from __future__ import annotations

import numpy as np


def sysu_like(seed: int = 0, ids: int = 12, d: int = 16):
    """SYSU-MM01 layout: infrared cams 3, 6 (queries); visible cams 1, 2, 4, 5 (gallery)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, d))
    feats, pids, cams = [], [], []
    for pid in range(1, ids + 1):
        for cam in (1, 2, 3, 4, 5, 6):
            for _ in range(3):
                shift = 0.5 if cam in (3, 6) else 0.0  # a modality gap
                feats.append(centres[pid - 1] + shift + 0.9 * rng.normal(size=d))
                pids.append(pid)
                cams.append(cam)
    feats = np.asarray(feats, dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    cams = np.asarray(cams)
    return feats, np.asarray(pids), cams, np.isin(cams, (3, 6)).astype(np.int64)


def regdb_like(seed: int, ids: int, per: int, shift: float, noise: float, d: int = 12):
    """RegDB layout, ids 0..ids-1: ``per`` visible then ``per`` infrared images of each
    (modality 0 / 1), the infrared ones moved by ``shift`` (a modality gap);
    ``(feats, pids, modality)``, features L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, d))
    feats, pids, mods = [], [], []
    for pid in range(ids):
        for mod in (0, 1):
            for _ in range(per):
                feats.append(centres[pid] + shift * mod + noise * rng.normal(size=d))
                pids.append(pid)
                mods.append(mod)
    feats = np.asarray(feats, np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats, np.asarray(pids), np.asarray(mods)


def small_arrays(n: int = 6, d: int = 4, seed: int = 0) -> dict:
    """The arrays of a small features file (``n`` <= 6 rows: ids 0..2, SYSU-MM01 cameras,
    modalities alternating), as ``np.savez(path, **small_arrays())`` writes them."""
    rng = np.random.default_rng(seed)
    return {
        "feats": rng.standard_normal((n, d)).astype(np.float32),
        "pids": np.arange(n) % 3,
        "cams": np.array([1, 3, 2, 6, 4, 3])[:n],
        "modality": np.array([0, 1, 0, 1, 0, 1])[:n],
    }
