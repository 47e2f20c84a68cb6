"""The ivf index's build against its documentation and a naive re-computation: cell
counts, the one/two-level boundary, the training k-means (sampled Lloyd, spherical for
"ip", emptied cells keep their centroid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uvireid.clustering.ivf as ivf


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


@pytest.mark.parametrize("nb,cells", [(50, 2), (60, 2), (500, 16), (1, 1)])
def test_one_level_index_has_round_nb_over_cell_cells(nb, cells):
    """Module doc: 'nlist ~ Nb / CELL cells' (round, not floor: 50 points make 2 cells of
    25, not 1 of 50); 500 points make 16 cells, so NPROBE = 16 probes all of them."""
    index = ivf._Index(_unit(nb, 6, nb), "ip", 0)
    assert len(index.levels) == 1 and index.n_cells == cells == max(1, round(nb / ivf.CELL))
    assert index.levels[0][0].shape[0] == cells


def test_dense_level_boundary_is_inclusive(monkeypatch):
    """Module doc: 'Up to _DENSE_LEVEL cells, a query scores every cell centroid (a flat
    quantizer)': exactly _DENSE_LEVEL cells is still one level; a base whose flat index
    would have round(Nb / CELL) = one cell more is two (not floor(Nb / CELL))."""
    monkeypatch.setattr(ivf, "_DENSE_LEVEL", 8)
    one = ivf._Index(_unit(8 * ivf.CELL, 4, 0), "ip", 0)
    assert len(one.levels) == 1 and one.n_cells == 8
    # 280 points: round(8.75) = 9 cells of a flat index, one more than _DENSE_LEVEL
    two = ivf._Index(_unit(280, 4, 1), "ip", 0)
    assert len(two.levels) == 2


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_kmeans_cells_emptied_by_duplicates_keep_a_finite_centroid(metric):
    """Five distinct points, each 20 times, 8 centroids drawn from them: several start
    equal, so cells empty. Docstring: 'an emptied cell keeps its centroid' (no 0 / 0),
    and "ip" keeps every centroid unit-norm, the emptied ones included (the rows here
    have norm ~7)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5, 6, generator=g) * 3).repeat(20, 1)
    c = ivf._kmeans(x, 8, metric, torch.Generator().manual_seed(0))
    assert c.shape == (8, 6) and torch.isfinite(c).all()
    if metric == "ip":
        assert torch.allclose(c.norm(dim=1), torch.ones(8), atol=1e-5)
    else:  # every l2 centroid is a mean of some of the points: inside their box
        assert (c >= x.min(0).values - 1e-5).all() and (c <= x.max(0).values + 1e-5).all()


def _naive_kmeans(x: np.ndarray, n: int, metric: str, seed: int) -> np.ndarray:
    """Lloyd in float64 loops, on the same seeded sample of at most 48 n rows, started
    from its first n rows, 8 rounds; "ip": cosine assignment, unit-norm centroids."""
    m = len(x)
    n = max(1, min(n, m))
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed)).numpy()
    sample = x[perm[: min(m, 48 * n)]]
    c = sample[:n].copy()
    if metric == "ip":
        c /= np.linalg.norm(c, axis=1, keepdims=True)
    for _ in range(8):
        if metric == "ip":
            a = np.argmax(sample @ c.T, axis=1)
        else:
            a = np.argmin(((sample[:, None] - c[None]) ** 2).sum(-1), axis=1)
        for j in range(n):
            if (a == j).any():
                mean = sample[a == j].mean(0)
                c[j] = mean / np.linalg.norm(mean) if metric == "ip" else mean
    return c


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("n,m", [(4, 300), (7, 100), (12, 9)])
def test_training_kmeans_equals_a_naive_lloyd_on_the_seeded_sample(metric, n, m):
    """Docstring: '(min(n, len(x)), d) centroids: Lloyd's k-means on a seeded sample of
    at most _TRAIN_PER_CENTROID * n rows, started from n sampled rows'. (4, 300): a
    sample of 192 of the 300 rows; (12, 9): more centroids than rows."""
    rng = np.random.default_rng(n * 1000 + m)
    x = rng.normal(size=(m, 5)) + 3 * rng.normal(size=(3, 5))[rng.integers(0, 3, m)]
    got = ivf._kmeans(torch.from_numpy(x), n, metric, torch.Generator().manual_seed(5))
    want = _naive_kmeans(x, n, metric, 5)
    assert got.shape == want.shape == (min(n, m), 5)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-9)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_probe_pads_with_minus_one_where_there_are_fewer_cells(metric):
    """``_Index.probe`` docstring: '(n, nprobe) nearest cells of each row ... (-1 where
    there are fewer cells)': 100 points make 3 cells; 16 probes are the 3 cells best
    first (re-scored in float64), then 13 times -1."""
    b, q = _unit(100, 6, 3), _unit(9, 6, 4)
    index = ivf._Index(b, metric, 0)
    cents = index.levels[0][0].double()
    assert index.n_cells == 3
    probes = index.probe(q, 16)
    assert probes.shape == (9, 16) and (probes[:, 3:] == -1).all()
    qd = q.double()
    score = qd @ cents.T if metric == "ip" else -(torch.cdist(qd, cents) ** 2)
    assert torch.equal(probes[:, :3], score.argsort(dim=1, descending=True))


@pytest.mark.parametrize("seed", [0, 7])
def test_the_index_trains_its_cells_with_the_seeded_kmeans(seed):
    """``search(..., seed)`` / ``_Index(b, metric, seed)``: a one-level index's cells are
    ``_kmeans(b, round(Nb / CELL))`` drawn with a generator seeded by ``seed``, and each
    base point lies in its nearest cell."""
    b = _unit(200, 6, 11)
    index = ivf._Index(b, "ip", seed)
    want = ivf._kmeans(b, round(200 / ivf.CELL), "ip", torch.Generator().manual_seed(seed))
    assert torch.equal(index.levels[0][0], want)
    assert torch.equal(index.cell_of, (b.double() @ want.double().T).argmax(1))
