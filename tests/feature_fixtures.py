"""Features in SYSU-MM01's layout for the command-line tests (re-ranking, evaluation)."""

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
