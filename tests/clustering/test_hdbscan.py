"""HDBSCAN on the sparse Jaccard distance equals the hdbscan package on the dense matrix."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.sparse as sp
from cluster_oracles import (
    clustered,
    dense_core_hdbscan,
    dense_jaccard,
    faiss_l2_rank,
)
from sklearn.metrics import adjusted_rand_score

from uvireid.clustering.hdbscan_clusterer import HDBSCANClusterer, hdbscan_sparse
from uvireid.clustering.jaccard import jaccard_distance
from uvireid.errors import ConfigError


@functools.cache
def _case(seed: int):
    x, _ = clustered(seed=seed, n_ids=14, per_id=12, d=32, noise=1.0)
    rank = faiss_l2_rank(x, 30)
    dense = dense_jaccard(x, rank, 30, 6)  # absent pairs are 1 there
    return dense, jaccard_distance(x, 30, 6, knn_indices=rank)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("min_cluster_size,min_samples", [(4, None), (5, 3), (8, 8)])
def test_sparse_hdbscan_equals_package_on_dense_reference(seed, min_cluster_size, min_samples):
    dense, sparse = _case(seed)
    ref = dense_core_hdbscan(dense, min_cluster_size, min_samples or min_cluster_size)
    got = hdbscan_sparse(sparse, min_cluster_size, min_samples)
    np.testing.assert_array_equal(got, ref)


def test_disconnected_graph_is_handled():
    # two far-apart groups: the sparse graph has two components (the package's own sparse
    # path refuses that); the dense matrix with J = 1 between them is the reference
    x, _ = clustered(seed=2, n_ids=2, per_id=12, d=64, noise=0.1)
    dist = jaccard_distance(x, 8, 2)
    from scipy.sparse import csgraph

    assert csgraph.connected_components(dist, directed=False)[0] > 1
    coo = dist.tocoo()
    dense = np.ones(dist.shape)
    dense[coo.row, coo.col] = coo.data
    np.testing.assert_array_equal(hdbscan_sparse(dist, 4), dense_core_hdbscan(dense, 4, 4))


def test_hdbscan_clusterer_defaults_and_euclidean():
    x, gt = clustered(seed=3, n_ids=5, per_id=10, d=16, noise=0.5)
    for metric in ("jaccard", "euclidean"):
        labels = HDBSCANClusterer(metric=metric).fit_predict(x)
        assert labels.dtype == np.int64 and labels.shape == gt.shape
        assert adjusted_rand_score(gt, labels) > 0.8
    assert HDBSCANClusterer().fit_predict(x[:1]).tolist() == [-1]


def test_bad_parameters_are_refused():
    x, _ = clustered(seed=4, n_ids=2, per_id=5, d=8, noise=0.5)
    with pytest.raises(ConfigError, match="use one of jaccard, euclidean"):
        HDBSCANClusterer(metric="cosine").fit_predict(x)
    with pytest.raises(ConfigError, match="min_cluster_size must be an integer >= 2"):
        HDBSCANClusterer(min_cluster_size=1).fit_predict(x)


@pytest.mark.parametrize("metric", ["jaccard", "euclidean"])
def test_missing_hdbscan_package_is_named(monkeypatch, metric):
    """Without the package (a GPU image that lacks it, say) the error says to install it,
    not that an installed package lacks functions."""
    import sys

    for name in [m for m in sys.modules if m == "hdbscan" or m.startswith("hdbscan.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "hdbscan", None)  # import hdbscan -> ImportError
    x, _ = clustered(seed=5, n_ids=3, per_id=6, d=8, noise=0.5)
    with pytest.raises(ConfigError, match="hdbscan package is not installed.*pip install hdbscan"):
        HDBSCANClusterer(metric=metric).fit_predict(x)


def _hdbscan():
    return pytest.importorskip("hdbscan")  # the reference implementation


def _dense(dist):
    coo = dist.tocoo()
    dense = np.ones(dist.shape)
    dense[coo.row, coo.col] = coo.data
    return dense


def _ref(dense, **kw):
    return _hdbscan().HDBSCAN(metric="precomputed", **kw).fit_predict(dense)


@pytest.mark.parametrize(
    "seed,n_ids,noise,opts",
    [
        (0, 14, 1.0, {"cluster_selection_method": "leaf"}),
        (0, 14, 1.0, {"cluster_selection_epsilon": 0.5}),
        (1, 2, 2.0, {"allow_single_cluster": True}),
    ],
)
def test_selection_options_reach_the_jaccard_path(seed, n_ids, noise, opts):
    per_id = 12 if n_ids > 2 else 20
    d = 32 if n_ids > 2 else 16
    x, _ = clustered(seed=seed, n_ids=n_ids, per_id=per_id, d=d, noise=noise)
    dense = _dense(jaccard_distance(x, 30, 6))
    want = _ref(dense, min_cluster_size=4, min_samples=4, **opts)
    assert not np.array_equal(want, _ref(dense, min_cluster_size=4, min_samples=4))  # matters
    np.testing.assert_array_equal(HDBSCANClusterer(**opts).fit_predict(x), want)


def test_min_samples_reaches_the_euclidean_path():
    x, _ = clustered(seed=0, n_ids=14, per_id=12, d=32, noise=1.0)
    want = _hdbscan().HDBSCAN(min_cluster_size=4, min_samples=1).fit_predict(x.astype(np.float64))
    got = HDBSCANClusterer(metric="euclidean", min_samples=1).fit_predict(x)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(5))
def test_rows_with_exactly_min_samples_entries(seed):
    """A row whose stored entries (self included) number exactly min_samples has core
    distance = missing (the min_samples-th smallest, 0-based, is an absent pair)."""
    rng = np.random.default_rng(seed)
    n, m = 40, 3
    a = np.zeros((n, n))
    for i in range(n):  # a sparse random symmetric graph, few neighbours per row
        for j in rng.choice(n, size=rng.integers(1, 4), replace=False):
            if j != i:
                a[i, j] = a[j, i] = rng.uniform(0.05, 0.9)
    counts = (a > 0).sum(1) + 1  # + the diagonal
    assert (counts == m).any()
    dist = sp.csr_matrix(a)
    dist.setdiag(0.0)  # stored explicit zeros on the diagonal
    dense = np.where(a > 0, a, 1.0)
    np.fill_diagonal(dense, 0.0)
    want = _ref(dense, min_cluster_size=3, min_samples=m)
    np.testing.assert_array_equal(hdbscan_sparse(dist, 3, m), want)
