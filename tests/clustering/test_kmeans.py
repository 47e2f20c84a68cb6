"""kmeans: Lloyd's iterations against scikit-learn's KMeans(algorithm="lloyd") from the
same initial centres, the k-means++ seeding's properties, and the clusterer's contract."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.cluster._kmeans import _kmeans_plusplus
from sklearn.metrics import adjusted_rand_score

from uvireid.clustering.kmeans import KMeansClusterer, kmeans_pp, lloyd
from uvireid.errors import ConfigError
from uvireid.registry import CLUSTERERS


def _blobs(seed: int, k: int = 6, per: int = 40, d: int = 8, spread: float = 3.0):
    rng = np.random.default_rng(seed)
    centres = spread * rng.normal(size=(k, d))
    gt = np.repeat(np.arange(k), per)
    x = centres[gt] + rng.normal(size=(len(gt), d))
    perm = rng.permutation(len(gt))
    return x[perm], gt[perm]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lloyd_equals_scikit_learn_from_the_same_centres(seed):
    """Overlapping blobs (spread 1.5: several iterations, labels that move), float64."""
    x, _ = _blobs(seed, spread=1.5)
    init = x[np.random.default_rng(seed + 10).choice(len(x), 6, replace=False)]
    ref = KMeans(6, init=init, n_init=1, algorithm="lloyd", tol=1e-4, max_iter=100).fit(x)
    labels, centres, inertia, _ = lloyd(torch.from_numpy(x), torch.from_numpy(init))
    np.testing.assert_array_equal(labels.numpy(), ref.labels_)
    np.testing.assert_allclose(centres.numpy(), ref.cluster_centers_, atol=1e-10)
    assert inertia == pytest.approx(ref.inertia_, rel=1e-10)


def test_an_empty_cluster_takes_the_farthest_point_as_scikit_learn_does():
    """Two equal initial centres: the second gets no point (ties go to the first) and is
    moved to the point farthest from its centre, which leaves its old cluster."""
    x, _ = _blobs(5, k=4, spread=1.5)
    init = x[[0, 0, 7, 19]]
    ref = KMeans(4, init=init, n_init=1, algorithm="lloyd", tol=1e-4, max_iter=100).fit(x)
    labels, centres, inertia, _ = lloyd(torch.from_numpy(x), torch.from_numpy(init))
    np.testing.assert_array_equal(labels.numpy(), ref.labels_)
    np.testing.assert_allclose(centres.numpy(), ref.cluster_centers_, atol=1e-10)
    assert inertia == pytest.approx(ref.inertia_, rel=1e-10)
    assert len(np.unique(labels.numpy())) == 4


def test_kmeans_pp_seeds_one_centre_in_each_far_apart_blob():
    """Blobs 100 apart with unit noise: D^2 sampling all but never draws a second centre
    in a covered blob; the centres are data points; the seed decides them."""
    x, gt = _blobs(7, k=8, per=25, spread=100.0)
    t = torch.from_numpy(x)
    centres = kmeans_pp(t, 8, torch.Generator().manual_seed(3))
    rows = [int(np.flatnonzero((x == c.numpy()).all(1))[0]) for c in centres]
    assert sorted(gt[rows].tolist()) == list(range(8))
    again = kmeans_pp(t, 8, torch.Generator().manual_seed(3))
    assert torch.equal(again, centres)
    other = kmeans_pp(t, 8, torch.Generator().manual_seed(4))
    assert not torch.equal(other, centres)


def test_the_clusterer_recovers_separated_identities_and_numbers_them_by_first_row():
    x, gt = _blobs(11, k=6, spread=20.0)
    part = KMeansClusterer(num_clusters=6, seed=1)
    labels = part.fit_predict(x.astype(np.float32))
    assert labels.dtype == np.int64 and labels.min() == 0
    assert adjusted_rand_score(gt, labels) == 1.0
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in range(6)]
    assert firsts == sorted(firsts)  # cluster c's first row comes before cluster c + 1's
    assert part.num_clusters_ == 6 and part.inertia_ > 0 and part.iterations_ >= 1
    # the same partition from a torch tensor, and with several seedings the least inertia
    assert np.array_equal(
        KMeansClusterer(num_clusters=6, seed=1).fit_predict(torch.tensor(x)), labels
    )
    x2, _ = _blobs(12, k=6, spread=1.0)
    singles = [KMeansClusterer(num_clusters=6, seed=s) for s in range(3)]
    for s in singles:
        s.fit_predict(x2)
    several = KMeansClusterer(num_clusters=6, n_init=3, seed=0)
    several.fit_predict(x2)
    # seeding i draws with seed + i: the kept run is the best of the three single ones
    assert several.inertia_ == min(s.inertia_ for s in singles)
    assert len({s.inertia_ for s in singles}) > 1  # the seedings did differ


def test_more_clusters_than_images_and_bad_settings(caplog):
    x, _ = _blobs(0, k=2, per=3)
    with caplog.at_level(logging.WARNING):
        labels = KMeansClusterer(num_clusters=50).fit_predict(x)
    assert sorted(labels.tolist()) == list(range(6)) and "num_clusters=50 > 6 images" in caplog.text
    for bad, match in (
        ({"num_clusters": 0}, "num_clusters"),
        ({"tol": -1}, "tol must be a finite number >= 0"),
        ({"n_init": 1.5}, "n_init"),
        ({"seed": "a"}, "seed must be an integer"),
    ):
        with pytest.raises(ConfigError, match=match):
            CLUSTERERS.build({"type": "kmeans", **bad}).fit_predict(x)


def test_a_recipe_can_name_kmeans_per_stage():
    from uvireid.config import load_recipe
    from uvireid.engine.runner import preflight

    cfg = load_recipe("demo", ["stages.0.clusterer={type: kmeans, num_clusters: 4}"])
    assert cfg["stages"][0]["clusterer"]["type"] == "kmeans"
    preflight(cfg)
    with pytest.raises(ConfigError, match="did you mean 'stages.0.clusterer.num_clusters'"):
        load_recipe("demo", ["stages.0.clusterer={type: kmeans, num_cluster: 4}"])
    with pytest.raises(ConfigError, match="num_clusters"):
        preflight(load_recipe("demo", ["stages.0.clusterer={type: kmeans, num_clusters: 0}"]))


class _TorchDraws:
    """A numpy RandomState stand-in for scikit-learn's _kmeans_plusplus that hands out
    the draws of a torch generator in the order kmeans_pp makes them: the first centre
    uniformly (randint), then `trials` uniform [0, 1) float64 numbers a step."""

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)

    def choice(self, n, p=None):
        assert p is None or np.allclose(p, 1.0 / n)  # unweighted: uniform
        return int(torch.randint(n, (1,), generator=self.gen)[0])

    def uniform(self, size):
        return torch.rand(size, generator=self.gen, dtype=torch.float64).numpy()


@pytest.mark.parametrize("seed,k", [(0, 5), (1, 12), (2, 30)])
def test_kmeans_pp_is_scikit_learns_greedy_kmeans_pp_given_the_same_draws(seed, k):
    """scikit-learn's own _kmeans_plusplus (2 + floor(ln k) candidates by D^2 sampling,
    the one leaving the least potential kept) fed the same random numbers picks the same
    rows: the first centre, the candidates' count, the D^2 sampling and the greedy choice."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 6)) + 4 * rng.normal(size=(1, 6)) * rng.integers(0, 3, (300, 1))
    ref, ref_rows = _kmeans_plusplus(x, k, (x * x).sum(1), np.ones(len(x)), _TorchDraws(seed))
    got = kmeans_pp(torch.from_numpy(x), k, torch.Generator().manual_seed(seed))
    np.testing.assert_array_equal(got.numpy(), ref)


@pytest.mark.parametrize("tol", [1e-2, 1e-1])
def test_lloyd_stops_on_scikit_learns_tolerance(tol):
    """A loose tol stops before the labels settle, at scikit-learn's iteration: the
    shift is compared with tol times the features' mean per-dimension variance."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 5)) + np.repeat(rng.normal(size=(4, 5)), 100, axis=0)
    init = x[rng.choice(len(x), 8, replace=False)]
    ref = KMeans(8, init=init, n_init=1, algorithm="lloyd", tol=tol, max_iter=100).fit(x)
    full = KMeans(8, init=init, n_init=1, algorithm="lloyd", tol=0, max_iter=100).fit(x)
    assert ref.n_iter_ < full.n_iter_  # the tolerance did stop it early
    labels, centres, inertia, _ = lloyd(torch.from_numpy(x), torch.from_numpy(init), tol=tol)
    np.testing.assert_array_equal(labels.numpy(), ref.labels_)
    np.testing.assert_allclose(centres.numpy(), ref.cluster_centers_, atol=1e-10)
    assert inertia == pytest.approx(ref.inertia_, rel=1e-10)


def test_one_lloyd_iteration_with_an_empty_cluster_equals_scikit_learn():
    """max_iter=1: the centres right after the relocation. The point that moves to the
    empty cluster leaves its old cluster's mean (scikit-learn subtracts it)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 3)) * np.array([1.0, 1.0, 4.0])
    init = x[[0, 0, 10, 20]]
    ref = KMeans(4, init=init, n_init=1, algorithm="lloyd", max_iter=1).fit(x)
    _, centres, _, done = lloyd(torch.from_numpy(x), torch.from_numpy(init), iters=1)
    assert done == 1
    np.testing.assert_allclose(centres.numpy(), ref.cluster_centers_, atol=1e-10)


def test_fewer_distinct_points_than_clusters_is_warned(caplog):
    """Three distinct points, each five times, K = 5: three clusters, and a warning (audit
    DE: only an info line said so)."""
    x = np.repeat(np.eye(3), 5, axis=0)
    with caplog.at_level(logging.WARNING):
        labels = KMeansClusterer(num_clusters=5).fit_predict(x)
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert "3 clusters of the 5 asked for" in caplog.text
