"""Exact kNN tie order with wide k, the two-level ivf
quantizer and the ivf scan in an approximate setting, each against a brute-force
re-computation. (Mutation audit NE.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uvireid.clustering.ivf as ivf_mod
from uvireid.clustering.knn import ivf_within, knn


def _stable(x: np.ndarray, metric: str, k: int) -> np.ndarray:
    s = x @ x.T if metric == "ip" else ((x[:, None] - x[None]) ** 2).sum(-1)
    return np.argsort(-s if metric == "ip" else s, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_wide_k_keeps_equal_scores_in_index_order(metric):
    """Rows best first and equal scores by increasing index (module doc) also for k of
    17 and more, where torch's unstable CPU sort reorders equal values."""
    rng = np.random.default_rng(7)
    x = rng.integers(-1, 2, (70, 3)).astype(np.float64)  # 27 distinct points: wide ties
    want = _stable(x, metric, 25)
    for block_rows in (16, None):
        _, got = knn(x, None, 25, metric=metric, backend="torch", block_rows=block_rows)
        np.testing.assert_array_equal(got, want)
        _, got = knn(x, x.copy(), 25, metric=metric, backend="torch", block_rows=block_rows)
        np.testing.assert_array_equal(got, want)


def _score(x: torch.Tensor, c: torch.Tensor, metric: str) -> torch.Tensor:
    x, c = x.double(), c.double()
    return x @ c.T if metric == "ip" else -(torch.cdist(x, c) ** 2)


def _small_two_level(monkeypatch):
    # 640 points -> 20 cells of ~32 under 5 coarse nodes; the beam keeps 2 of them
    monkeypatch.setattr(ivf_mod, "_DENSE_LEVEL", 16)
    monkeypatch.setattr(ivf_mod, "GROUP", 4)
    monkeypatch.setattr(ivf_mod, "BEAM", 2)
    monkeypatch.setattr(ivf_mod, "NPROBE", 3)
    g = torch.Generator().manual_seed(0)
    b = torch.nn.functional.normalize(torch.randn(640, 6, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(25, 6, generator=g), dim=1)
    return b, q


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_two_level_probes_are_the_nearest_cells_under_the_beams_coarse_nodes(monkeypatch, metric):
    """Module doc: a query scores every coarse centroid, keeps its BEAM nearest, and
    takes its NPROBE cells among their children (re-computed here in float64)."""
    b, q = _small_two_level(monkeypatch)
    index = ivf_mod._Index(b, metric, 0)
    (coarse, _), (cells, parent) = index.levels
    assert len(index.levels) == 2 and len(coarse) > ivf_mod.BEAM
    probes = index.probe(q, ivf_mod.NPROBE)
    for r in range(len(q)):
        beam = _score(q[r : r + 1], coarse, metric)[0].topk(ivf_mod.BEAM).indices
        children = torch.isin(parent, beam).nonzero().squeeze(1)
        best = _score(q[r : r + 1], cells[children], metric)[0].topk(ivf_mod.NPROBE).indices
        assert set(probes[r].tolist()) == set(children[best].tolist()), r


@pytest.mark.parametrize("two_levels", [False, True])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_ivf_returns_the_exact_top_k_of_the_points_in_the_probed_cells(
    monkeypatch, metric, two_levels
):
    """An approximate search (3 of 20 cells probed) still returns, for each query, the
    exact k best of the base points that lie in its probed cells, with their true scores;
    the base_rows placement (ivf_within) gives the plain search's answer."""
    b, q = _small_two_level(monkeypatch)
    if not two_levels:
        monkeypatch.setattr(ivf_mod, "_DENSE_LEVEL", 1024)
    index = ivf_mod._Index(b, metric, 0)
    assert len(index.levels) == (2 if two_levels else 1)
    probes = index.probe(q, ivf_mod.NPROBE)
    vals, idx = ivf_mod.search(q, b, 8, metric)
    exact = _score(q, b, metric)
    assert not torch.equal(idx.sort(1).values, exact.topk(8).indices.sort(1).values)
    for r in range(len(q)):
        inside = torch.isin(index.cell_of, probes[r]).nonzero().squeeze(1)
        want = inside[exact[r, inside].topk(8).indices]
        assert set(idx[r].tolist()) == set(want.tolist()), r
    true = exact.gather(1, idx)
    assert torch.allclose(vals.double(), true if metric == "ip" else -true, atol=1e-5)
    if metric == "ip":
        x = torch.cat([q, b])
        got = ivf_within(x, slice(len(q), None), 8)
        plain = knn(x, b, 8, backend="ivf")
        assert torch.equal(got[1], plain[1]) and torch.equal(got[0], plain[0])


def test_ivf_within_clamps_k_to_the_base_and_refuses_an_empty_base():
    """Docstring: 'k is clamped to the base size' (as knn clamps k to Nb); a base of 6
    rows is one cell, all probed, so the answer is the exact one."""
    from uvireid.errors import ConfigError

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    vals, idx = ivf_within(x, slice(10, 16), 9)
    want = (x.double() @ x[10:16].double().T).sort(dim=1, descending=True, stable=True)
    assert idx.shape == (50, 6) and torch.equal(idx, want.indices)
    assert torch.allclose(vals.double(), want.values, atol=1e-6)
    with pytest.raises(ConfigError, match="empty input"):
        ivf_within(x, slice(5, 5), 3)
