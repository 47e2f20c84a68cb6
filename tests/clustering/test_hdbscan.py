"""HDBSCAN on the sparse Jaccard distance equals the hdbscan package on the dense matrix."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from cluster_oracles import clustered, dense_core_hdbscan, dense_jaccard, faiss_l2_rank
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
