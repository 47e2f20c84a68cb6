"""Naive dense re-statements of the clustering references, for tests only.

Written from ``shared/notes/eval_datasets.md`` Sec. 3.2 (Cluster-Contrast
``compute_jaccard_distance``): Python loops over rows, dense N x N float32 arrays, the
reference's float32 accumulation order. Slow on purpose; only for N of a few hundred.
"""

from __future__ import annotations

import numpy as np
import pytest


def faiss_l2_rank(x: np.ndarray, k: int) -> np.ndarray:
    """(N, k) neighbour lists by faiss ``IndexFlatL2`` (what the reference searches with).

    faiss is a test dependency (the ``dev`` extra), optional for the package: without it
    the tests that compare with the reference's faiss search are skipped."""
    faiss = pytest.importorskip("faiss")

    x = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, rank = index.search(x, k)
    return rank.astype(np.int64)


def _reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = rank[i, : k + 1]  # the reference slices k+1 of a k1-column array
    backward = rank[forward, : k + 1]
    return forward[np.where(backward == i)[0]]


def dense_jaccard(x: np.ndarray, rank: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """(N, N) float32 Jaccard distance, the reference algorithm with an injected rank.

    ``rank`` must have exactly k1 columns (self included), as faiss returns them.
    """
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    rank = rank[:, :k1]
    kh = int(np.around(k1 / 2))
    r_full = [_reciprocal(rank, i, k1) for i in range(n)]
    r_half = [_reciprocal(rank, i, kh) for i in range(n)]
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        expansion = r_full[i]
        for c in r_full[i]:
            rc = r_half[c]
            if len(np.intersect1d(rc, r_full[i])) > 2 / 3 * len(rc):
                expansion = np.append(expansion, rc)
        expansion = np.unique(expansion)
        if expansion.size == 0:  # more than k1 exact copies: no reciprocal neighbour;
            continue  # the reference's indexed assignment writes nothing (row of zeros)
        d = (2 - 2 * (x[i : i + 1] @ x[expansion].T)).astype(np.float32)
        e = np.exp(-d - (-d).max())
        v[i, expansion] = (e / e.sum()).astype(np.float32)
    if k2 != 1:
        vq = np.zeros_like(v)
        for i in range(n):
            vq[i] = np.mean(v[rank[i, :k2]], axis=0)
        v = vq
    inv = [np.where(v[:, k] != 0)[0] for k in range(n)]
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        acc = np.zeros(n, dtype=np.float32)
        for k in np.where(v[i] != 0)[0]:
            acc[inv[k]] = acc[inv[k]] + np.minimum(v[i, k], v[inv[k], k])
        jac[i] = 1 - acc / (2 - acc)
    jac[jac < 0] = 0
    return jac


def dense_core_hdbscan(dist: np.ndarray, min_cluster_size: int, min_samples: int) -> np.ndarray:
    """Labels of the ``hdbscan`` package on a dense precomputed distance matrix."""
    import hdbscan

    return hdbscan.HDBSCAN(
        metric="precomputed", min_cluster_size=min_cluster_size, min_samples=min_samples
    ).fit_predict(dist.astype(np.float64))


def clustered(
    seed: int, n_ids: int, per_id: int, d: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm float32 features: Gaussian identities around random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = rng.integers(max(1, per_id // 2), per_id * 2, size=n_ids)
    gt = np.repeat(np.arange(n_ids), sizes)
    x = centres[gt] + noise * rng.normal(size=(len(gt), d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(len(gt))
    return x[perm].astype(np.float32), gt[perm]


def brute_knn(q: np.ndarray, b: np.ndarray, k: int, metric: str = "ip"):
    """Top-k by a stable argsort of all scores (ties by the lower index), in float64 when
    given float64: ``(values, indices)``."""
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
    if metric == "l2":
        s = np.maximum(((q[:, None, :] - b[None]) ** 2).sum(-1), 0)
        order = np.argsort(s, axis=1, kind="stable")
    else:
        s = q @ b.T
        order = np.argsort(-s, axis=1, kind="stable")
    idx = order[:, :k]
    return np.take_along_axis(s, idx, 1), idx
