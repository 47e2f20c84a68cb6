"""The row-blocked steps of the sparse Jaccard distance
(encode, query expansion, the pairwise accumulation) against the dense re-statement of
Cluster-Contrast's compute_jaccard_distance. At test sizes each step ran in one block, so
a block that read another block's rows went unseen. (Mutation audit NE.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cluster_oracles import clustered, dense_jaccard

import uvireid.clustering.jaccard as jac


def _rank(x: np.ndarray, k: int) -> np.ndarray:
    xd = x.astype(np.float64)
    d = ((xd[:, None] - xd[None]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def _dense(rows, cols, dist, n):
    out = np.ones((n, n), dtype=np.float32)
    out[rows, cols] = dist
    return out


@pytest.mark.parametrize("block_bytes,block_pairs", [(8 * 50, None), (None, 300), (1, 1)])
def test_jaccard_in_many_row_blocks_equals_the_dense_reference(
    monkeypatch, block_bytes, block_pairs
):
    x, _ = clustered(seed=21, n_ids=8, per_id=10, d=16, noise=1.0)
    n, k1, k2 = len(x), 12, 4
    rank = _rank(x, k1)
    ref = dense_jaccard(x, rank, k1, k2)
    monkeypatch.setattr(jac, "_BLOCK_ELEMS", 64)  # encode / query_expand: rows per block
    knn_idx = torch.from_numpy(rank)
    crow, col = jac.expanded_sets(knn_idx, k1)
    val = jac.encode(torch.from_numpy(x), crow, col)
    crow, col, val = jac.query_expand(crow, col, val, knn_idx, k2)
    rows, cols, dist = jac.jaccard_from_encoding(
        crow, col, val, block_bytes=block_bytes, block_pairs=block_pairs
    )
    assert len(set(zip(rows.tolist(), cols.tolist()))) == len(rows)  # each pair once
    np.testing.assert_array_equal(_dense(rows, cols, dist, n) < 1, ref < 1)
    np.testing.assert_allclose(_dense(rows, cols, dist, n), ref, rtol=0, atol=1e-6)


def test_knn_indices_equal_to_n_are_refused():
    """Indices outside [0, N) are refused with a named error: N itself too, not only -1."""
    from uvireid.errors import FeatureFileError

    x, _ = clustered(seed=8, n_ids=3, per_id=5, d=8, noise=0.5)
    rank = _rank(x, 6)
    rank[2, 4] = len(x)
    with pytest.raises(FeatureFileError, match="outside"):
        jac.jaccard_distance(x, 6, 2, knn_indices=rank)
