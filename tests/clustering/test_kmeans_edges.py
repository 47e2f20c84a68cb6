"""k-means edge cases (mutation audit MB): blocked distances, relocations of empty
clusters as scikit-learn does them, the clusterer's settings."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.cluster import KMeans

from uvireid.clustering import kmeans as km
from uvireid.clustering.kmeans import KMeansClusterer, kmeans_pp, lloyd
from uvireid.errors import ConfigError


def _blobs(seed: int, k: int = 4, per: int = 15, d: int = 3, spread: float = 1.5):
    rng = np.random.default_rng(seed)
    centres = spread * rng.normal(size=(k, d))
    gt = np.repeat(np.arange(k), per)
    return centres[gt] + rng.normal(size=(len(gt), d)), gt


def test_small_blocks_give_the_naive_assignment_and_inertia(monkeypatch):
    """_BLOCK_ELEMENTS = 3: one-row blocks in _nearest (K = 4) and _inertia (d = 3) cover every row
    up to the last one; labels and inertia equal a naive
    argmin over the full distance matrix."""
    x, _ = _blobs(0)
    init = x[[0, 15, 30, 45]]
    monkeypatch.setattr(km, "_BLOCK_ELEMENTS", 3)
    labels, centres, inertia, _ = lloyd(torch.from_numpy(x), torch.from_numpy(init))
    c = centres.numpy()
    dist = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels.numpy(), dist.argmin(1))
    assert inertia == pytest.approx(dist.min(1).sum(), rel=1e-10)
    ref = KMeans(4, init=init, n_init=1, algorithm="lloyd", tol=1e-4, max_iter=100).fit(x)
    np.testing.assert_array_equal(labels.numpy(), ref.labels_)


def test_two_empty_clusters_in_one_iteration_equal_scikit_learn():
    """Three copies of one initial centre: two clusters are empty at once and each takes
    one of the two points farthest from their centre (max_iter=1: the centres right
    after the relocation)."""
    x, _ = _blobs(3, k=3, per=20)
    init = x[[0, 0, 0, 25, 45]]
    ref = KMeans(5, init=init, n_init=1, algorithm="lloyd", max_iter=1).fit(x)
    labels, centres, _, _ = lloyd(torch.from_numpy(x), torch.from_numpy(init), iters=1)
    np.testing.assert_allclose(centres.numpy(), ref.cluster_centers_, atol=1e-10)
    np.testing.assert_array_equal(labels.numpy(), ref.labels_)


def _singleton_relocation_case():
    """Cluster 1 starts empty; the point (5, 5), alone in cluster 2, is the farthest from
    its own centre (9, 9), so it moves to cluster 1 and leaves cluster 2 with no point."""
    x = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [5.0, 5.0]])
    init = np.array([[0.0, 0.0], [0.0, 0.0], [9.0, 9.0]])
    return x, init


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_cluster_emptied_by_the_relocation_gets_no_nan_centre():
    """The emptied cluster's count is 0: its centre must stay finite (no 0 / 0); the two
    other centres are the means scikit-learn computes."""
    x, init = _singleton_relocation_case()
    ref = KMeans(3, init=init, n_init=1, algorithm="lloyd", max_iter=1).fit(x)
    _, centres, _, _ = lloyd(torch.from_numpy(x), torch.from_numpy(init), iters=1)
    assert torch.isfinite(centres).all()
    np.testing.assert_allclose(centres[:2].numpy(), ref.cluster_centers_[:2], atol=1e-12)
    np.testing.assert_allclose(centres[:2].numpy(), [[0.05, 0.05], [5.0, 5.0]], atol=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_cluster_emptied_by_the_relocation_is_placed_as_scikit_learn_does():
    """The module runs Lloyd 'as scikit-learn's KMeans(algorithm="lloyd") runs it'. The
    installed scikit-learn (1.9.1, _k_means_common.pyx _average_centers: 'we avoid
    setting empty clusters at the origin') puts a centre left without weight at the
    largest cluster's centre; lloyd leaves it at the origin (sum 0 / clamp_min(1)), where
    it then takes the point (0, 0) away from its cluster: labels [2, 0, 0, 0, 1] instead
    of scikit-learn's [0, 0, 0, 0, 1]. (Compared with the installed scikit-learn: on a
    version that still leaves it at the origin, this passes.)"""
    x, init = _singleton_relocation_case()
    ref = KMeans(3, init=init, n_init=1, algorithm="lloyd", max_iter=1).fit(x)
    labels, centres, _, _ = lloyd(torch.from_numpy(x), torch.from_numpy(init), iters=1)
    np.testing.assert_allclose(centres.numpy(), ref.cluster_centers_, atol=1e-12)
    np.testing.assert_array_equal(labels.numpy(), ref.labels_)


def test_the_clusterer_passes_its_tol_and_iters_to_lloyd():
    """KMeansClusterer(tol, iters) gives the partition of lloyd(kmeans_pp(seed), iters,
    tol) and the iteration count; a loose tol and iters=1 both stop earlier than the
    defaults on these overlapping blobs."""
    x, _ = _blobs(4, k=6, per=30, d=5, spread=1.0)
    t = torch.from_numpy(x)

    def direct(iters, tol):
        init = kmeans_pp(t, 6, torch.Generator().manual_seed(2))
        labels, _, inertia, done = lloyd(t, init, iters, tol)
        return labels.numpy(), inertia, done

    default = direct(100, 1e-4)
    for iters, tol in ((100, 0.5), (1, 1e-4)):
        labels, inertia, done = direct(iters, tol)
        part = KMeansClusterer(num_clusters=6, iters=iters, tol=tol, seed=2)
        got = part.fit_predict(x)
        assert skm.adjusted_rand_score(labels, got) == 1.0
        assert part.inertia_ == pytest.approx(inertia, rel=1e-12)
        assert part.iterations_ == done < default[2]


def test_tol_zero_is_accepted_and_bad_tol_refused():
    x, _ = _blobs(5)
    part = KMeansClusterer(num_clusters=4, tol=0)
    assert len(np.unique(part.fit_predict(x))) == 4
    for bad in (-1e-9, math.inf, math.nan, True, "0.1"):
        with pytest.raises(ConfigError, match="tol must be a finite number >= 0"):
            KMeansClusterer(num_clusters=4, tol=bad).fit_predict(x)


def test_as_many_clusters_as_points_warns_of_nothing(caplog):
    """K == N is allowed (one point per cluster): neither the 'num_clusters > images'
    warning nor the 'fewer distinct points' one."""
    x, _ = _blobs(6, k=2, per=3)
    with caplog.at_level(logging.WARNING):
        labels = KMeansClusterer(num_clusters=6).fit_predict(x)
    assert labels.tolist() == list(range(6))  # numbered by first row
    assert caplog.records == []
    with caplog.at_level(logging.WARNING):
        KMeansClusterer(num_clusters=2).fit_predict(x)
    assert caplog.records == []


def test_all_points_equal_gives_one_cluster_zero_inertia_and_a_warning(caplog):
    """Every point identical: the D^2 weights are all 0 from the first centre on, so the
    later centres are drawn uniformly; one cluster, inertia 0, warned."""
    x = np.full((7, 3), 2.5)
    with caplog.at_level(logging.WARNING):
        part = KMeansClusterer(num_clusters=3, seed=4)
        labels = part.fit_predict(x)
    assert labels.tolist() == [0] * 7 and part.inertia_ == 0.0 and part.num_clusters_ == 1
    assert "1 clusters of the 3 asked for" in caplog.text


def test_float32_torch_and_numpy_inputs_give_the_same_partition():
    """Seeded: a float64 numpy array, the same as a torch tensor and as float32 give the
    same partition on separated blobs; repeated calls are identical."""
    x, gt = _blobs(8, k=5, per=20, d=6, spread=8.0)
    a = KMeansClusterer(num_clusters=5, seed=7).fit_predict(x)
    b = KMeansClusterer(num_clusters=5, seed=7).fit_predict(torch.tensor(x))
    c = KMeansClusterer(num_clusters=5, seed=7).fit_predict(x.astype(np.float32))
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert np.array_equal(a, KMeansClusterer(num_clusters=5, seed=7).fit_predict(x))
    assert skm.adjusted_rand_score(gt, a) == 1.0


# ------------------------------------------------------------------- label_quality


def test_a_numpy_tolerance_is_taken_and_an_overflowing_seed_is_named():
    """tol as a numpy scalar (from a sweep's np.logspace) is a number; a seed torch cannot
    hold is a ConfigError naming the setting, not torch's overflow."""
    x, _ = _blobs(0)
    want = KMeansClusterer(num_clusters=4, tol=1e-4, seed=1).fit_predict(x)
    got = KMeansClusterer(num_clusters=4, tol=np.float32(1e-4), seed=np.int64(1)).fit_predict(x)
    assert np.array_equal(got, want)
    with pytest.raises(ConfigError, match=r"kmeans: seed must be an integer in 0\.\.2\*\*32-1"):
        KMeansClusterer(num_clusters=4, seed=2**70).fit_predict(x)


def test_repr_names_the_settings():
    """As the other clusterers' reprs: the settings, not an object address."""
    from uvireid.registry import CLUSTERERS

    km = CLUSTERERS.build({"type": "kmeans", "num_clusters": 7, "n_init": 2, "seed": 3})
    assert repr(km) == "KMeansClusterer(num_clusters=7, iters=100, tol=0.0001, n_init=2, seed=3)"
