"""Sparse k-reciprocal Jaccard distance against a naive dense re-statement of the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cluster_oracles import clustered, dense_jaccard, faiss_l2_rank

from uvireid.clustering.jaccard import jaccard_distance
from uvireid.errors import ConfigError, FeatureFileError
from uvireid.rerank.kreciprocal import round_half_even


def _densify(sparse) -> np.ndarray:
    coo = sparse.tocoo()
    out = np.ones(sparse.shape, dtype=np.float32)
    out[coo.row, coo.col] = coo.data
    return out


@pytest.mark.parametrize("k1", [5, 7, 15, 20, 25, 30, 31])
def test_half_k_rounds_half_to_even_like_numpy(k1):
    assert round_half_even(k1 / 2) == int(np.around(k1 / 2))
    assert [round_half_even(k / 2) for k in (5, 15, 25, 30)] == [2, 8, 12, 15]


@pytest.mark.parametrize("k1,k2", [(30, 6), (20, 6), (25, 1), (7, 3)])
def test_sparse_jaccard_equals_dense_reference_with_injected_rank(k1, k2):
    x, _ = clustered(seed=k1 + k2, n_ids=12, per_id=14, d=24, noise=1.0)
    rank = faiss_l2_rank(x, k1)
    ref = dense_jaccard(x, rank, k1, k2)
    got = jaccard_distance(x, k1, k2, knn_indices=rank)
    # the same pairs are stored (J < 1), and the values agree to float32 rounding
    stored = np.zeros(ref.shape, dtype=bool)
    coo = got.tocoo()
    stored[coo.row, coo.col] = True
    assert np.array_equal(stored, ref < 1)
    np.testing.assert_allclose(_densify(got), ref, rtol=0, atol=1e-6)


def test_own_knn_gives_the_reference_result_without_injection():
    x, _ = clustered(seed=3, n_ids=10, per_id=12, d=32, noise=1.0)
    ref = dense_jaccard(x, faiss_l2_rank(x, 20), 20, 6)
    for backend in ("torch", "faiss"):
        got = jaccard_distance(x, 20, 6, knn_backend=backend)
        np.testing.assert_allclose(_densify(got), ref, rtol=0, atol=1e-6)


def test_jaccard_is_symmetric_deterministic_and_device_agnostic():
    x, _ = clustered(seed=4, n_ids=8, per_id=10, d=16, noise=1.0)
    a = jaccard_distance(x, 15, 4)
    b = jaccard_distance(torch.from_numpy(x), 15, 4)
    assert (a != a.T).nnz == 0
    assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
    assert np.array_equal(a.data, b.data)


def test_identical_points_keep_explicit_zero_distances():
    x, _ = clustered(seed=5, n_ids=6, per_id=10, d=16, noise=1.0)
    x = np.concatenate([x, np.repeat(x[:1], 5, axis=0)])  # five copies of point 0
    rank = faiss_l2_rank(x, 10)
    ref = dense_jaccard(x, rank, 10, 3)
    got = jaccard_distance(x, 10, 3, knn_indices=rank)
    dup = [0, *range(len(x) - 5, len(x))]
    assert (ref[np.ix_(dup, dup)] == 0).all()
    block = got[dup][:, dup]
    assert block.nnz == len(dup) ** 2  # stored ...
    assert (block.data == 0).all()  # ... as explicit zeros
    np.testing.assert_allclose(_densify(got), ref, rtol=0, atol=1e-6)


def test_max_distance_keeps_exactly_the_pairs_within_it():
    x, _ = clustered(seed=6, n_ids=8, per_id=12, d=16, noise=1.0)
    full = jaccard_distance(x, 20, 6)
    cut = jaccard_distance(x, 20, 6, max_distance=0.3)
    dense = _densify(full)
    got = np.ones_like(dense)
    coo = cut.tocoo()
    got[coo.row, coo.col] = coo.data
    assert cut.nnz == int((dense <= 0.3).sum())
    np.testing.assert_array_equal(got[dense <= 0.3], dense[dense <= 0.3])


def test_k1_larger_than_n_is_clamped():
    x, _ = clustered(seed=7, n_ids=2, per_id=3, d=8, noise=0.5)
    got = jaccard_distance(x, 30, 6)
    assert got.shape == (len(x), len(x))
    n = len(x)
    ref = dense_jaccard(x, faiss_l2_rank(x, n), n, min(6, n))
    np.testing.assert_allclose(_densify(got), ref, rtol=0, atol=1e-6)


def test_nan_features_are_refused_with_a_message():
    x = np.ones((5, 4), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(FeatureFileError, match="NaN or inf"):
        jaccard_distance(x)


def test_bad_knn_indices_and_k_are_refused():
    x, _ = clustered(seed=8, n_ids=3, per_id=5, d=8, noise=0.5)
    with pytest.raises(FeatureFileError, match="knn_indices"):
        jaccard_distance(x, 10, knn_indices=np.zeros((3, 10), dtype=np.int64))
    bad = faiss_l2_rank(x, 10)
    bad[0, 3] = -1
    with pytest.raises(FeatureFileError, match="outside"):
        jaccard_distance(x, 10, knn_indices=bad)
    with pytest.raises(ConfigError, match="k1 must be an integer >= 1"):
        jaccard_distance(x, 0)


def test_max_distance_keeps_the_pairs_at_exactly_the_bound():
    """DBSCAN passes eps as max_distance and counts a pair at d <= eps as a neighbour: a
    pair at exactly the bound must be stored (the unfiltered graph, filtered by scipy)."""
    x, _ = clustered(seed=3, n_ids=10, per_id=12, d=32, noise=1.0)
    full = jaccard_distance(x, 20, 6).tocoo()
    off = (full.row != full.col) & (full.data > 0)
    bound = float(np.median(full.data[off]))  # a value some pairs have exactly
    got = jaccard_distance(x, 20, 6, max_distance=bound).tocoo()
    want = {(r, c) for r, c, d in zip(full.row, full.col, full.data) if d <= np.float32(bound)}
    assert any(d == np.float32(bound) for d in full.data)
    assert set(zip(got.row.tolist(), got.col.tolist())) == want


def test_knn_indices_wider_than_k1_use_their_first_k1_columns():
    """knn_indices may be (N, >= k1): e.g. a faiss search run once for a larger k1."""
    x, _ = clustered(seed=8, n_ids=10, per_id=12, d=24, noise=1.0)
    rank = faiss_l2_rank(x, 25)
    ref = dense_jaccard(x, rank[:, :15], 15, 4)
    got = jaccard_distance(x, 15, 4, knn_indices=rank)
    dense = np.ones(ref.shape, dtype=np.float32)
    coo = got.tocoo()
    dense[coo.row, coo.col] = coo.data
    np.testing.assert_allclose(dense, ref, rtol=0, atol=1e-6)
