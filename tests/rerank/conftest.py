"""Fixtures of the re-ranking tests; puts this folder on sys.path for ``rerank_oracles``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def clustered():
    """``make(nq, ng, d, seed)`` -> unit (query, gallery) float64 features with identities."""

    def make(nq: int, ng: int, d: int = 16, seed: int = 0, ids: int = 8, noise: float = 0.6):
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(ids, d))
        q = centres[rng.integers(0, ids, nq)] + noise * rng.normal(size=(nq, d))
        g = centres[rng.integers(0, ids, ng)] + noise * rng.normal(size=(ng, d))
        return unit_rows(q), unit_rows(g)

    return make
