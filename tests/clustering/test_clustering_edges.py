"""Clustering (Jaccard, DBSCAN, kNN, IVF) against independent computations (mutation audit
FB, session 23): k2 and k1 at their edges, ties, float64 ranking, DBSCAN against sklearn's
on the dense reference distance, rows of norm 0, NaN refused by kNN.

The oracle below is a line-by-line transcription of Cluster-Contrast's
``compute_jaccard_distance`` (``clustercontrast/utils/faiss_rerank.py``) with the faiss
rank injected, written for this audit independently of ``tests/clustering``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN

from uvireid.clustering import ivf
from uvireid.clustering.dbscan import DBSCANClusterer, cosine_radius_graph
from uvireid.clustering.hdbscan_clusterer import HDBSCANClusterer
from uvireid.clustering.jaccard import jaccard_distance
from uvireid.clustering.knn import knn
from uvireid.errors import ConfigError, FeatureFileError


def brute_rank(x: np.ndarray, k: int) -> np.ndarray:
    """Squared-L2 ranks in float64, ties by index (numpy stable argsort)."""
    x = np.asarray(x, dtype=np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def _k_reciprocal_neigh(initial_rank, i, k1):
    forward = initial_rank[i, : k1 + 1]
    backward = initial_rank[forward, : k1 + 1]
    return forward[np.where(backward == i)[0]]


def cc_jaccard(feats: np.ndarray, initial_rank: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Cluster-Contrast ``compute_jaccard_distance`` (dense float32), rank injected."""
    f = torch.as_tensor(np.asarray(feats, dtype=np.float32))
    n = f.size(0)
    nn_k1 = [_k_reciprocal_neigh(initial_rank, i, k1) for i in range(n)]
    nn_half = [_k_reciprocal_neigh(initial_rank, i, int(np.around(k1 / 2))) for i in range(n)]
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        rec = nn_k1[i]
        exp = rec
        for cand in rec:
            crec = nn_half[cand]
            if len(np.intersect1d(crec, rec)) > 2 / 3 * len(crec):
                exp = np.append(exp, crec)
        exp = np.unique(exp)
        dist = 2 - 2 * torch.mm(f[i].unsqueeze(0), f[exp].t())
        v[i, exp] = F.softmax(-dist, dim=1).view(-1).numpy()
    if k2 != 1:
        vq = np.zeros_like(v)
        for i in range(n):
            vq[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
        v = vq
    inv = [np.where(v[:, i] != 0)[0] for i in range(n)]
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        tmin = np.zeros((1, n), dtype=np.float32)
        nz = np.where(v[i, :] != 0)[0]
        for j in nz:
            tmin[0, inv[j]] = tmin[0, inv[j]] + np.minimum(v[i, j], v[inv[j], j])
        jac[i] = 1 - tmin / (2 - tmin)
    jac[jac < 0] = 0.0
    return jac


def densify(m) -> np.ndarray:
    coo = m.tocoo()
    out = np.ones(m.shape, dtype=np.float32)
    out[coo.row, coo.col] = coo.data
    return out


def blobs(seed: int, n_ids: int, per_id: int, d: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n_ids, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = np.repeat(c, per_id, 0) + noise * rng.normal(size=(n_ids * per_id, d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[rng.permutation(len(x))].astype(np.float32)


# --- Jaccard distance --------------------------------------------------------------------


def test_k2_of_two_is_a_real_query_expansion():
    """k2 = 2 averages V over self and the first neighbour (only k2 == 1 skips it)."""
    x = blobs(0, 8, 10, 16, 1.0)
    rank = brute_rank(x, 10)
    ref = cc_jaccard(x, rank, 10, 2)
    got = densify(jaccard_distance(x, 10, 2, knn_indices=rank))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    assert not np.allclose(ref, cc_jaccard(x, rank, 10, 1), atol=1e-3)  # k2 matters here


def test_k2_larger_than_k1_averages_over_the_k1_neighbours_as_the_reference():
    """The reference's ``initial_rank[i, :k2]`` of a k1-column array has k1 rows: a mean
    over k1 rows, not a sum over k1 rows divided by k2."""
    x = blobs(1, 8, 10, 16, 1.0)
    rank = brute_rank(x, 5)
    ref = cc_jaccard(x, rank, 5, 8)
    got = densify(jaccard_distance(x, 5, 8, knn_indices=rank))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_k1_larger_than_n_is_clamped_so_half_k_follows_n():
    """k1 = 30 on 20 points is k1 = 20 (kh = 10), not kh = 15 on a 20-wide list."""
    x = blobs(2, 4, 5, 8, 1.5)
    n = len(x)
    ref = cc_jaccard(x, brute_rank(x, n), n, 6)
    got = densify(jaccard_distance(x, 30, 6, knn_backend="torch"))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_knn_indices_narrower_than_k1_are_refused():
    x = blobs(3, 4, 6, 8, 1.0)
    rank = brute_rank(x, 9)
    with pytest.raises(FeatureFileError, match="knn_indices must be"):
        jaccard_distance(x, 10, 4, knn_indices=rank)


def test_more_identical_copies_than_k1_at_the_end():
    """Rows whose k1 list is filled by earlier copies (ties by index) have an empty R*:
    the result is still the reference's."""
    x = blobs(4, 4, 5, 8, 1.0)
    x = np.concatenate([x, np.repeat(x[:1], 8, 0)])
    rank = brute_rank(x, 5)
    assert not any(i in rank[i] for i in range(len(x) - 3, len(x)))  # no self in list
    ref = cc_jaccard(x, rank, 5, 3)
    got = densify(jaccard_distance(x, 5, 3, knn_indices=rank))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_float64_features_are_ranked_in_float64():
    """knn keeps float64 (module docstring): squared distances of ~1e-10, below what a
    float32 search resolves, are ordered as a float64 brute force orders them."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(6, 8))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    x = np.concatenate([base + 1e-5 * rng.normal(size=base.shape) for _ in range(4)])
    rank = brute_rank(x, 6)
    _, rank32 = knn(x.astype(np.float32), None, 6, metric="l2", backend="torch")
    assert not np.array_equal(rank32, rank)  # float32 cannot order these
    ref = cc_jaccard(x, rank, 6, 2)
    got = densify(jaccard_distance(x, 6, 2, knn_backend="torch"))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("eps,k1,k2", [(0.6, 30, 6), (0.3, 30, 6), (0.5, 10, 2)])
def test_dbscan_equals_sklearn_on_the_dense_reference(seed, eps, k1, k2):
    x = blobs(seed + 10, 10, 12, 32, 1.0)
    ref = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(
        cc_jaccard(x, brute_rank(x, k1), k1, k2)
    )
    got = DBSCANClusterer(eps=eps, k1=k1, k2=k2, knn_backend="torch").fit_predict(x)
    np.testing.assert_array_equal(got, ref)


def test_distances_store_only_the_pairs_within_eps():
    """``distances`` is "the sparse distance graph DBSCAN runs on (pairs with distance <=
    eps)": O(N k) memory, not every pair with J < 1."""
    x = blobs(6, 10, 12, 32, 1.0)
    ref = cc_jaccard(x, brute_rank(x, 30), 30, 6)
    g = DBSCANClusterer(eps=0.3, knn_backend="torch").distances(x)
    assert g.nnz == int((ref <= np.float32(0.3)).sum())
    assert g.data.max() <= np.float32(0.3)


# --- zero rows -----------------------------------------------------------------------------


def test_zero_rows_are_outliers_when_they_are_the_majority():
    """More than half of the rows of norm 0 (median norm 0): they are still outliers."""
    x = blobs(7, 2, 6, 16, 0.2)
    z = np.concatenate([x, np.zeros((14, 16), np.float32)])
    got = DBSCANClusterer(eps=0.6, min_samples=4).fit_predict(z)
    assert (got[len(x) :] == -1).all()
    ref = DBSCANClusterer(eps=0.6, min_samples=4).fit_predict(x)
    np.testing.assert_array_equal(got[: len(x)], ref)


def test_features_scaled_by_0_8_are_warned(caplog):
    """Median norm outside [0.9, 1.1] warns (``directional_rows`` docstring)."""
    x = blobs(8, 4, 8, 16, 0.3)
    with caplog.at_level(logging.WARNING):
        DBSCANClusterer().fit_predict(x * 0.8)
    assert any("not L2-normalised" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("cls", [DBSCANClusterer, HDBSCANClusterer])
def test_all_zero_features_are_all_outliers(cls):
    """Docstring: "rows of norm 0 are outliers"; with every row of norm 0 the clusterer
    was called on no row ('got 0 feature rows; pass at least one image' for 5 rows)."""
    clusterer = cls()
    labels = clusterer.fit_predict(np.zeros((5, 4), np.float32))
    assert labels.tolist() == [-1] * 5 and clusterer.num_clusters_ == 0
    assert clusterer.labels_.tolist() == [-1] * 5


# --- DBSCAN parameters, cosine graph -------------------------------------------------------


def test_non_integer_k2_is_refused():
    with pytest.raises(ConfigError, match="k2 must be an integer"):
        DBSCANClusterer(k2=2.5).fit_predict(blobs(9, 2, 5, 8, 0.5))


def test_cosine_graph_diagonal_is_zero():
    """A point's cosine distance to itself is 0 (float32 rounding of |x|^2 must not leak)."""
    x = torch.from_numpy(blobs(10, 20, 10, 64, 1.0))
    g = cosine_radius_graph(x, 0.5)
    assert (g.diagonal() == 0).all()
    xd = torch.nn.functional.normalize(x.double(), dim=1)
    ref = (1 - xd @ xd.T).clamp(min=0).numpy()
    want = (ref <= 0.5) | np.eye(len(x), dtype=bool)
    # the stored pattern is the float64 one except pairs within float32 rounding of eps
    got = g.toarray() > 0
    got |= np.eye(len(x), dtype=bool)
    assert (got != want)[np.abs(ref - 0.5) > 1e-5].sum() == 0


def test_cosine_graph_memory_check_projects_from_the_first_block(monkeypatch):
    """The check raises after the first block (a projection), not once the graph has been
    collected up to the limit."""
    from uvireid.rerank import inputs

    calls = []
    real = inputs.ensure_fits

    def spy(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(inputs, "ensure_fits", spy)
    monkeypatch.setattr(inputs, "available_memory", lambda device: 64 * 2**20)
    x = torch.rand(2000, 16, generator=torch.Generator().manual_seed(0))  # all pairs near
    with pytest.raises(ConfigError, match="cosine graph"):
        cosine_radius_graph(x, 0.6, block_bytes=200 * 4 * 2000)  # 200 rows per block
    assert len(calls) == 1


# --- kNN / IVF -----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_ties_at_the_kth_place_keep_the_lowest_indices(metric):
    """Many exact ties (integer grid): numpy's stable argsort on exact float64 scores."""
    rng = np.random.default_rng(11)
    x = rng.integers(-1, 2, size=(200, 3)).astype(np.float32)
    xd = x.astype(np.float64)
    s = xd @ xd.T if metric == "ip" else ((xd[:, None] - xd[None]) ** 2).sum(-1)
    want = np.argsort(-s if metric == "ip" else s, axis=1, kind="stable")[:, :7]
    for block_rows in (None, 16):
        _, got = knn(x, None, 7, metric=metric, backend="torch", block_rows=block_rows)
        np.testing.assert_array_equal(got, want)
        _, got = knn(x[:40], x, 7, metric=metric, backend="torch", block_rows=block_rows)
        np.testing.assert_array_equal(got, want[:40])


def test_ivf_spherical_kmeans_keeps_unit_centroids():
    """``_kmeans`` docstring: '"ip" keeps the centroids unit-norm (spherical k-means)'."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(500, 8, generator=g), dim=1)
    c = ivf._kmeans(x, 10, "ip", torch.Generator().manual_seed(1))
    assert torch.allclose(c.norm(dim=1), torch.ones(len(c)), atol=1e-5)


def test_knn_refuses_nan_features():
    """NaN features got arbitrary neighbours silently (``topk_stable`` assumes no NaN);
    every other entry point of the package refused them with a named error."""
    x = np.random.default_rng(12).normal(size=(40, 8)).astype(np.float32)
    x[3, 3] = np.nan
    with pytest.raises(FeatureFileError, match=r"knn: query holds NaN or inf in 1 row"):
        knn(x, None, 5, metric="l2", backend="torch")
    with pytest.raises(FeatureFileError, match=r"knn: base holds NaN or inf in 1 row"):
        knn(x[:2] * 0 + 1, x, 5, metric="l2", backend="torch")


@pytest.mark.parametrize("k1,k2", [(2.5, 2), (0, 2), (True, 2), (5, 1.5), (5, 0)])
def test_jaccard_distance_refuses_k_that_is_no_integer_of_at_least_one(k1, k2):
    """k1=2.5 was taken as 2 without a word (the clusterers refused it, the function not)."""
    x = np.eye(6, dtype=np.float32)
    with pytest.raises(ConfigError, match=r"jaccard_distance: k[12] must be an integer >= 1"):
        jaccard_distance(x, k1, k2)
    assert jaccard_distance(x, np.int64(3), 2).shape == (6, 6)  # numpy integers are integers
