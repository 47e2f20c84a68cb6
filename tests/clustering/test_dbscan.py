"""DBSCAN on the sparse Jaccard distance gives the dense reference's partition."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from cluster_oracles import clustered, dense_jaccard, faiss_l2_rank
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

import uvireid  # noqa: F401  (registers the parts)
from uvireid.clustering.dbscan import DBSCANClusterer, cosine_radius_graph, dbscan_sparse
from uvireid.clustering.jaccard import jaccard_distance
from uvireid.errors import ConfigError, FeatureFileError
from uvireid.registry import CLUSTERERS


def _reference_labels(x, k1, k2, eps, min_samples=4):
    dense = dense_jaccard(x, faiss_l2_rank(x, k1), k1, k2)
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dense)


@pytest.mark.parametrize("seed,k1,k2", [(0, 30, 6), (1, 20, 6), (2, 7, 3), (3, 25, 1)])
@pytest.mark.parametrize("eps", [0.3, 0.6])
def test_sparse_dbscan_partition_equals_dense_reference(seed, k1, k2, eps):
    x, _ = clustered(seed=seed, n_ids=14, per_id=12, d=32, noise=1.0)
    ref = _reference_labels(x, k1, k2, eps)
    got = DBSCANClusterer(eps=eps, k1=k1, k2=k2).fit_predict(x)
    assert got.dtype == np.int64
    assert adjusted_rand_score(ref, got) == 1.0
    np.testing.assert_array_equal(got, ref)  # same numbering too (first core point order)


def test_builds_from_the_registry_with_peer_defaults():
    part = CLUSTERERS.build({"type": "dbscan"})
    assert (part.eps, part.min_samples, part.k1, part.k2) == (0.6, 4, 30, 6)
    x, gt = clustered(seed=9, n_ids=5, per_id=40, d=16, noise=0.6)
    labels = part.fit_predict(torch.from_numpy(x))
    assert adjusted_rand_score(gt, labels) > 0.9


def test_explicit_zero_distances_make_neighbours():
    # four identical points: their Jaccard distances are exactly 0, and together they are
    # a core group only if the zeros are kept in the sparse graph
    x, _ = clustered(seed=10, n_ids=3, per_id=6, d=16, noise=2.0)
    x = np.concatenate([x, np.repeat(x[:1], 3, axis=0)])
    dist = jaccard_distance(x, 4, 1, max_distance=0.05)
    ref = DBSCAN(eps=0.05, min_samples=4, metric="precomputed").fit_predict(
        dense_jaccard(x, faiss_l2_rank(x, 4), 4, 1)
    )
    got = dbscan_sparse(dist, 0.05, 4)
    np.testing.assert_array_equal(got, ref)
    dup = [0, len(x) - 3, len(x) - 2, len(x) - 1]
    assert got[dup].min() >= 0 and len(set(got[dup])) == 1


def test_a_point_without_any_pair_within_eps_is_noise_even_at_min_samples_1():
    """An absent pair is farther than eps, the point's own too: with min_samples=1
    scikit-learn (which reads an absent diagonal as 0) made such a point a one-point
    cluster, where the dense reference (d_ii > eps) leaves it noise (audit NE)."""
    import scipy.sparse as sp

    # row 0 stores nothing; rows 1, 2 are neighbours; row 3 stores only its own zero
    rows, cols = [1, 1, 2, 2, 3], [1, 2, 1, 2, 3]
    graph = sp.csr_matrix(([0.0, 0.2, 0.2, 0.0, 0.0], (rows, cols)), shape=(4, 4))
    dense = np.ones((4, 4))
    dense[rows, cols] = graph.data
    want = DBSCAN(eps=0.5, min_samples=1, metric="precomputed").fit_predict(dense)
    assert want.tolist() == [-1, 0, 0, 1]  # the reference: renumbered without row 0
    assert dbscan_sparse(graph, 0.5, 1).tolist() == want.tolist()
    assert dbscan_sparse(graph, 0.5, 2).tolist() == [-1, 0, 0, -1]


@pytest.mark.parametrize("min_samples", [1, 4])
def test_copies_beyond_k1_without_reciprocal_neighbours_match_the_reference(min_samples):
    """More than k1 exact copies of one point and no query expansion (k2 = 1): the copies
    past the first k1 have no reciprocal neighbour, a zero row of V (J = 1 to every
    point, itself included), and the dense reference's DBSCAN labels them noise."""
    x, _ = clustered(seed=2, n_ids=6, per_id=10, d=16, noise=1.0)
    x = np.concatenate([x, np.repeat(x[3:4], 12, axis=0)])
    xd = x.astype(np.float64)
    rank = np.argsort(((xd[:, None] - xd[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :8]
    ref = dense_jaccard(x, rank, 8, 1)
    assert (np.diag(ref) == 1).any()  # the case arises
    want = DBSCAN(eps=0.6, min_samples=min_samples, metric="precomputed").fit_predict(ref)
    graph = jaccard_distance(x, 8, 1, knn_indices=rank, max_distance=0.6)
    np.testing.assert_array_equal(dbscan_sparse(graph, 0.6, min_samples), want)


def test_all_outliers_is_a_clear_outcome(caplog):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 64)).astype(np.float32)  # no structure at all
    part = DBSCANClusterer(eps=0.05, min_samples=8)
    with caplog.at_level(logging.WARNING):
        labels = part.fit_predict(x)
    assert (labels == -1).all() and part.num_clusters_ == 0
    assert "every one of the 30 points is an outlier" in caplog.text


def test_cosine_metric_equals_sklearn_dbscan_on_features():
    x, _ = clustered(seed=11, n_ids=6, per_id=10, d=16, noise=1.2)
    ref = DBSCAN(eps=0.2, min_samples=4, metric="cosine").fit_predict(x.astype(np.float64))
    got = DBSCANClusterer(eps=0.2, metric="cosine").fit_predict(x)
    assert adjusted_rand_score(ref, got) == 1.0


def test_tiny_inputs_work():
    x, _ = clustered(seed=12, n_ids=1, per_id=3, d=8, noise=0.2)
    assert DBSCANClusterer().fit_predict(x[:1]).tolist() == [-1]
    assert DBSCANClusterer(min_samples=2).fit_predict(x).shape == (len(x),)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"eps": 1.0}, "eps=1.0 >= 1"),
        ({"eps": 0.0}, "eps must be a finite number > 0"),
        ({"metric": "l1"}, "unknown metric 'l1'; use one of jaccard, cosine"),
        ({"min_samples": 0}, "min_samples must be an integer >= 1"),
    ],
)
def test_bad_parameters_are_refused_with_the_fix(kwargs, match):
    x, _ = clustered(seed=13, n_ids=2, per_id=5, d=8, noise=0.5)
    with pytest.raises(ConfigError, match=match):
        DBSCANClusterer(**kwargs).fit_predict(x)


def test_nan_features_are_refused():
    x = np.zeros((6, 4), dtype=np.float32)
    x[1, 1] = np.inf
    with pytest.raises(FeatureFileError, match="NaN or inf"):
        DBSCANClusterer().fit_predict(x)


def test_out_of_range_options_are_refused_for_every_metric():
    """From the audit: ``metric="cosine", eps=inf`` failed inside sklearn, a wrong
    ``knn_backend`` went unnoticed with the cosine metric, and hdbscan's
    ``allow_single_cluster="no"`` failed inside the hdbscan package."""
    import pytest

    from uvireid.clustering.dbscan import DBSCANClusterer
    from uvireid.clustering.hdbscan_clusterer import HDBSCANClusterer
    from uvireid.errors import ConfigError

    with pytest.raises(ConfigError, match=r"eps=2.5 >= 2 makes every pair .* cosine"):
        DBSCANClusterer(metric="cosine", eps=2.5)._check_params()
    with pytest.raises(ConfigError, match=r"eps must be a finite number > 0, got inf"):
        DBSCANClusterer(metric="cosine", eps=float("inf"))._check_params()
    with pytest.raises(ConfigError, match=r"knn_backend must be one of"):
        DBSCANClusterer(metric="cosine", knn_backend="fiass")._check_params()
    with pytest.raises(ConfigError, match=r"allow_single_cluster must be true or false"):
        HDBSCANClusterer(allow_single_cluster="no")._check_params()
    DBSCANClusterer(metric="cosine", eps=1.5)._check_params()  # a wide but valid radius


def test_a_float32_distance_of_exactly_eps_is_a_neighbour_as_in_the_reference():
    """Audit N (session 16): the reference runs DBSCAN on a dense float32 Jaccard matrix,
    where float32(0.6) = 0.6000000238 <= 0.6 in float32; uvireid's float64 copy of the
    graph left that pair out (a point became noise)."""
    import scipy.sparse as sp

    from uvireid.clustering.dbscan import dbscan_sparse

    d = np.ones((4, 4), np.float32)
    np.fill_diagonal(d, 0)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        d[i, j] = d[j, i] = 0.1
    d[0, 3] = d[3, 0] = np.float32(0.6)
    ref = DBSCAN(eps=0.6, min_samples=3, metric="precomputed").fit_predict(d)
    r, c = np.nonzero(d < 1)
    got = dbscan_sparse(sp.csr_matrix((d[r, c], (r, c)), shape=(4, 4)), 0.6, 3)
    assert ref.tolist() == [0, 0, 0, 0] and got.tolist() == ref.tolist()


def test_a_cosine_graph_that_cannot_fit_is_refused_from_its_first_block(monkeypatch):
    """Audit Y (session 17): the cosine graph keeps every pair within eps, up to N^2 of
    them (3.35 GiB at 8k images), with no check; now its projected size is checked after
    the first block."""
    import torch

    from uvireid.clustering.dbscan import DBSCANClusterer
    from uvireid.errors import ConfigError
    from uvireid.rerank import inputs

    monkeypatch.setattr(inputs, "available_memory", lambda device: 64 * 2**20)
    x = torch.rand(2000, 16, generator=torch.Generator().manual_seed(0))  # all pairs near
    with pytest.raises(
        ConfigError, match=r"cosine graph of 2000 images at eps 0.6 \(about 3,9\d\d,\d\d\d pairs"
    ):
        DBSCANClusterer(metric="cosine", eps=0.6).fit_predict(x)
    DBSCANClusterer(metric="cosine", eps=0.6).fit_predict(x[:300])  # 90,000 pairs: fits


def test_cosine_graph_includes_a_pair_at_exactly_eps():
    # unit rows whose cosine is exactly 0.5 in float32: distance 1 - 0.5 = 0.5 = eps
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 1.0]])
    g = cosine_radius_graph(x, 0.5).toarray()
    assert g[0, 1] == 0.5 and g[1, 0] == 0.5  # within eps: stored
    # naive: every pair with 1 - cos <= eps
    cos = (x.double() @ x.double().T).numpy()
    assert ((1 - cos <= 0.5) == (g > 0) | np.eye(3, dtype=bool)).all()
