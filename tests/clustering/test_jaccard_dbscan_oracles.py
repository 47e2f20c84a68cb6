"""jaccard.py and dbscan.py: empty encodings, the empty graph, blocked vs whole
bit-identity and DBSCAN vs scikit-learn on the naive dense Jaccard distance with exact
duplicates (ties)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from cluster_oracles import clustered, dense_jaccard

import uvireid.clustering.jaccard as jac
from uvireid.clustering.dbscan import DBSCANClusterer, dbscan_sparse


def _rank(x: np.ndarray, k: int) -> np.ndarray:
    xd = x.astype(np.float64)
    d = ((xd[:, None] - xd[None]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def test_dbscan_sparse_of_an_empty_graph_is_an_empty_labelling():
    got = dbscan_sparse(sp.csr_matrix((0, 0), dtype=np.float32), 0.5, 4)
    assert got.shape == (0,) and got.dtype == np.int64


def test_no_reciprocal_neighbour_anywhere_gives_an_empty_graph():
    """A neighbour table where no point lists itself or a point listing it back: every
    R* is empty (the reference's V is all zeros, so J = 1 everywhere: nothing stored)."""
    x = np.eye(4, dtype=np.float32)
    knn_idx = np.array([[1], [2], [3], [0]])
    got = jac.jaccard_distance(x, 1, 1, knn_indices=knn_idx)
    assert got.shape == (4, 4) and got.nnz == 0
    assert dbscan_sparse(got, 0.5, 1).tolist() == [-1, -1, -1, -1]


def test_blocked_and_whole_steps_are_bit_identical(monkeypatch):
    """Sums are exact fixed point: block sizes must not change a single bit."""
    x, _ = clustered(seed=31, n_ids=7, per_id=9, d=12, noise=1.0)
    k1, k2 = 10, 3
    knn_idx = torch.from_numpy(_rank(x, k1))
    feats = torch.from_numpy(x)

    def run(elems, block_bytes, block_pairs):
        monkeypatch.setattr(jac, "_BLOCK_ELEMS", elems)
        crow, col = jac.expanded_sets(knn_idx, k1)
        val = jac.encode(feats, crow, col)
        crow, col, val = jac.query_expand(crow, col, val, knn_idx, k2)
        r, c, d = jac.jaccard_from_encoding(
            crow, col, val, block_bytes=block_bytes, block_pairs=block_pairs
        )
        order = np.lexsort((c, r))
        return r[order], c[order], d[order]

    whole = run(1 << 21, None, None)
    blocked = run(16, 1, 1)
    for a, b in zip(whole, blocked):
        np.testing.assert_array_equal(a, b)
    ref = dense_jaccard(x, knn_idx.numpy(), k1, k2)
    np.testing.assert_allclose(ref[whole[0], whole[1]], whole[2], rtol=0, atol=1e-6)


def test_dbscan_equals_sklearn_on_the_dense_jaccard_with_duplicate_points():
    """Exact copies (ties in every kNN list, broken by index) and outliers: the partition
    of scikit-learn's DBSCAN on the naive dense Jaccard matrix, label for label."""
    from sklearn.cluster import DBSCAN

    x, _ = clustered(seed=32, n_ids=6, per_id=8, d=12, noise=1.2)
    x = np.concatenate([x, np.repeat(x[3:4], 4, axis=0), np.repeat(x[10:11], 2, axis=0)])
    k1, k2, eps = 12, 4, 0.5
    ref = dense_jaccard(x, _rank(x, k1), k1, k2)
    want = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(ref)
    got = DBSCANClusterer(eps=eps, min_samples=4, k1=k1, k2=k2, knn_backend="torch")
    labels = got.fit_predict(x)
    assert (want == -1).any() and want.max() >= 1  # outliers and several clusters
    np.testing.assert_array_equal(labels, want)
    assert got.num_clusters_ == int(want.max()) + 1
