"""hdbscan_sparse against the hdbscan package on the dense matrix, on graphs where the
package's tie rules decide the tree: many equal mutual reachabilities (absent pairs all
at ``missing``), and min_samples clamped to N - 1 on a complete graph."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from uvireid.clustering.hdbscan_clusterer import hdbscan_sparse

hdbscan = pytest.importorskip("hdbscan")


def _package(dense: np.ndarray, mcs: int, ms: int | None, **kw) -> np.ndarray:
    model = hdbscan.HDBSCAN(metric="precomputed", min_cluster_size=mcs, min_samples=ms, **kw)
    return model.fit_predict(dense)


def _random_graph(seed: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """A sparse random symmetric graph (diagonal stored as explicit zeros) and its dense
    matrix with absent pairs at 1; odd seeds draw the distances from 4 values (ties)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    a = np.zeros((n, n))
    density = rng.uniform(0.05, 0.6)
    for i in range(n):
        for j in range(i + 1, n):
            if rng.random() < density:
                d = rng.choice([0.2, 0.4, 0.6, 0.8]) if seed % 2 else rng.uniform(0.05, 0.95)
                a[i, j] = a[j, i] = d
    dist = sp.csr_matrix(a)
    dist.setdiag(0.0)
    dense = np.where(a > 0, a, 1.0)
    np.fill_diagonal(dense, 0.0)
    return dist, dense


@pytest.mark.parametrize(
    "seed,mcs,ms,opts",
    [
        (2, 2, None, {}),  # a Prim update on '<=' moves an edge's source: other labels
        (3, 4, None, {"cluster_selection_method": "leaf"}),
        (3, 5, 8, {}),  # an edge recorded from the last node added instead of its source
        (9, 2, None, {}),
    ],
)
def test_tied_random_graphs_equal_the_package(seed, mcs, ms, opts):
    """The module doc: Prim's 'with the package's tie rules' (strict '<' updates, the
    edge from the node that gave the distance), so the labels equal
    ``hdbscan.HDBSCAN(metric="precomputed")`` on the dense matrix even where most
    mutual reachabilities are equal."""
    dist, dense = _random_graph(seed)
    want = _package(dense, mcs, ms, **opts)
    np.testing.assert_array_equal(hdbscan_sparse(dist, mcs, ms, **opts), want)


def test_min_samples_above_n_is_clamped_to_n_minus_1_on_a_complete_graph():
    """The package clamps min_samples to N - 1 (hdbscan_.py: ``min(size - 1,
    min_samples)``): on a complete graph (every pair stored, all below ``missing``) the
    core distance is then each row's largest entry, not ``missing``."""
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(0, 0.05, (4, 2)), rng.normal(1, 0.05, (4, 2))])
    dense = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    dense /= dense.max() * 1.25  # all < 1 = missing
    dist = sp.csr_matrix(dense)
    dist.setdiag(0.0)
    assert dist.nnz == 64  # complete, diagonal stored
    for mcs, ms in ((2, 8), (2, 50), (3, 7)):
        want = _package(dense, mcs, ms, allow_single_cluster=True)
        got = hdbscan_sparse(dist, mcs, ms, allow_single_cluster=True)
        np.testing.assert_array_equal(got, want)
    # and the clamp matters here: without it every core distance would be 1
    cut = _package(np.where(np.eye(8) > 0, 0.0, 1.0), 2, 7, allow_single_cluster=True)
    assert not np.array_equal(cut, _package(dense, 2, 8, allow_single_cluster=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float64_distances_closer_than_float32_resolution_keep_their_order(seed):
    """A float64 graph whose distances differ by < 1e-9 (equal in float32): the tree is
    built on the float64 values, as the package builds it from the dense float64 matrix."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 30))
    a = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            if rng.random() < 0.4:
                a[i, j] = a[j, i] = rng.choice([0.2, 0.4, 0.6]) + rng.uniform(0, 1e-9)
    dist = sp.csr_matrix(a)
    dist.setdiag(0.0)
    dense = np.where(a > 0, a, 1.0)
    np.fill_diagonal(dense, 0.0)
    for mcs in (2, 3):
        np.testing.assert_array_equal(hdbscan_sparse(dist, mcs), _package(dense, mcs, None))


def test_min_samples_defaults_to_min_cluster_size():
    """Docstring: 'min_samples: ... (default: min_cluster_size)', as the package."""
    dist, dense = _random_graph(0)
    for mcs in (2, 3):
        want = _package(dense, mcs, mcs)
        np.testing.assert_array_equal(hdbscan_sparse(dist, mcs), want)
        assert not np.array_equal(want, _package(dense, mcs, 4))  # it matters here


def test_the_clusterer_hands_its_knn_backend_to_the_jaccard_distance(monkeypatch):
    """knn_backend reaches the kNN of the Jaccard distance (here 'ivf', exact on 40
    points: the same labels as the default backend)."""
    import uvireid.clustering.hdbscan_clusterer as hc

    seen = []
    real = hc.jaccard_distance

    def spy(*args, **kw):
        seen.append(kw.get("knn_backend"))
        return real(*args, **kw)

    monkeypatch.setattr(hc, "jaccard_distance", spy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a = hc.HDBSCANClusterer(knn_backend="ivf", k1=10, k2=3).fit_predict(x)
    b = hc.HDBSCANClusterer(knn_backend="torch", k1=10, k2=3).fit_predict(x)
    assert seen == ["ivf", "torch"] and np.array_equal(a, b)


def test_one_point_with_the_euclidean_metric_is_an_outlier():
    """N = 1: the package itself fails (its KD-tree query asks for 2 neighbours of 1
    point); the clusterer answers [-1] as on the jaccard path."""
    x = np.ones((1, 4), dtype=np.float32) / 2
    with pytest.raises(ValueError):
        hdbscan.HDBSCAN().fit_predict(x.astype(np.float64))
    for metric in ("euclidean", "jaccard"):
        from uvireid.clustering.hdbscan_clusterer import HDBSCANClusterer

        assert HDBSCANClusterer(metric=metric).fit_predict(x).tolist() == [-1]


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"cluster_selection_epsilon": -0.1}, "cluster_selection_epsilon must be a finite"),
        ({"cluster_selection_epsilon": float("nan")}, "cluster_selection_epsilon must be"),
        ({"allow_single_cluster": "yes"}, "allow_single_cluster must be true or false"),
        ({"allow_single_cluster": 1}, "allow_single_cluster must be true or false"),
    ],
)
def test_bad_selection_settings_are_refused_on_the_jaccard_path(bad, match):
    """The jaccard path hands these to the package's private tree code, which checks
    nothing: the clusterer refuses them itself."""
    from uvireid.clustering.hdbscan_clusterer import HDBSCANClusterer
    from uvireid.errors import ConfigError

    x = np.eye(6, dtype=np.float32)
    with pytest.raises(ConfigError, match=match):
        HDBSCANClusterer(**bad).fit_predict(x)
