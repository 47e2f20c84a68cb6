"""k-means against scikit-learn at the edges of its stopping rule and dtypes, and the
clusterer's choice among seedings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from uvireid.clustering.kmeans import KMeansClusterer, lloyd


def _naive_shifts(x: np.ndarray, init: np.ndarray, rounds: int) -> list[tuple[float, bool]]:
    """Per Lloyd round (no empty cluster here): the centres' total squared shift, and
    whether the next assignment still changes a label."""
    c = init.copy()
    labels = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
    out = []
    for _ in range(rounds):
        new = np.stack([x[labels == j].mean(0) for j in range(len(c))])
        fresh = ((x[:, None] - new[None]) ** 2).sum(-1).argmin(1)
        out.append((float(((new - c) ** 2).sum()), bool((fresh != labels).any())))
        c, labels = new, fresh
    return out


def test_the_tolerance_scales_the_biased_per_dimension_variance():
    """scikit-learn's _tolerance: ``np.mean(np.var(X, axis=0)) * tol`` (ddof 0). With 24
    points the unbiased variance is 24/23 larger; a tol between the two thresholds for
    a round whose labels still move stops scikit-learn (and lloyd) one round later than
    it would with the unbiased variance."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(24, 2)) + np.repeat(rng.normal(size=(3, 2)) * 1.2, 8, axis=0)
    init = x[[0, 1, 2]]
    var_b, var_u = x.var(0).mean(), x.var(0, ddof=1).mean()
    shifts = _naive_shifts(x, init, 20)
    i = next(j for j, (s, moving) in enumerate(shifts) if moving and s > 0)
    tol = shifts[i][0] / np.sqrt(var_b * var_u)  # var_b * tol < shift <= var_u * tol
    ref = KMeans(3, init=init, n_init=1, algorithm="lloyd", tol=tol, max_iter=100).fit(x)
    assert ref.n_iter_ > i + 1  # scikit-learn did not stop at that round
    labels, centres, inertia, done = lloyd(torch.from_numpy(x), torch.from_numpy(init), tol=tol)
    assert done == ref.n_iter_
    np.testing.assert_array_equal(labels.numpy(), ref.labels_)
    np.testing.assert_allclose(centres.numpy(), ref.cluster_centers_, atol=1e-12)


def test_equal_inertia_keeps_the_first_seeding():
    """The corners of a square, K = 2: the left/right and the top/bottom partitions have
    the same inertia (4). Seeding 3 gives one, seeding 7 the other (seedings 4-6 worse);
    n_init=5 from seed 3 keeps the first of the equal ones, as scikit-learn's
    ``inertia < best_inertia``."""
    x = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    runs = [KMeansClusterer(num_clusters=2, seed=s) for s in range(3, 8)]
    labels = [r.fit_predict(x).tolist() for r in runs]
    inertia = [r.inertia_ for r in runs]
    assert inertia[0] == inertia[4] == min(inertia) and labels[0] != labels[4]
    several = KMeansClusterer(num_clusters=2, seed=3, n_init=5)
    assert several.fit_predict(x).tolist() == labels[0] and several.inertia_ == inertia[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_iterations_count_the_confirming_round_as_scikit_learn(seed):
    """tol = 0: only the labels' strict convergence stops Lloyd. scikit-learn's n_iter_
    counts the round whose assignment changed nothing (its centres equal the previous
    ones), and so does lloyd, as on a tol stop
    (test_the_tolerance_scales_the_biased_per_dimension_variance)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(120, 3)) + np.repeat(rng.normal(size=(4, 3)), 30, axis=0)
    init = x[rng.choice(len(x), 5, replace=False)]
    ref = KMeans(5, init=init, n_init=1, algorithm="lloyd", tol=0.0, max_iter=100).fit(x)
    labels, _, _, done = lloyd(torch.from_numpy(x), torch.from_numpy(init), tol=0.0)
    assert done == ref.n_iter_ > 1
    np.testing.assert_array_equal(labels.numpy(), ref.labels_)
