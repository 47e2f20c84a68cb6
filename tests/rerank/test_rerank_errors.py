"""Bad input to the re-rankers: each a clear error naming the problem and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uvireid.rerank.inputs as inputs
from uvireid.errors import ConfigError, FeatureFileError, RegistryError
from uvireid.registry import RERANKERS
from uvireid.rerank import rerank

NAMES = ["cmfp", "kreciprocal", "cmrr", "aim"]


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 4)), rng.normal(size=(5, 4))


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_feature_dims_name_both(name, pair):
    q, g = pair
    with pytest.raises(FeatureFileError, match="d=4 but gallery features d=3"):
        RERANKERS.build(name).rerank(q, g[:, :3])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_name_the_row(name, pair, bad):
    q, g = pair
    g = g.copy()
    g[2, 1] = bad
    with pytest.raises(FeatureFileError, match=r"gallery features contain NaN or inf .*row 2"):
        RERANKERS.build(name).rerank(q, g)


@pytest.mark.parametrize("name", NAMES)
def test_empty_query_or_gallery(name, pair):
    q, g = pair
    with pytest.raises(FeatureFileError, match="empty input"):
        RERANKERS.build(name).rerank(q[:0], g)
    with pytest.raises(FeatureFileError, match="empty input"):
        RERANKERS.build(name).rerank(torch.from_numpy(q), torch.from_numpy(g)[:0])


def test_features_must_be_2d(pair):
    q, g = pair
    with pytest.raises(FeatureFileError, match="must be 2-D"):
        rerank(q[0], g, "cmfp")


@pytest.mark.parametrize(
    "name,kw,match",
    [
        ("cmfp", {"k": 0}, "k must be an integer >= 1"),
        ("cmfp", {"mode": "fast"}, "mode must be one of auto, dense, sparse"),
        ("kreciprocal", {"k2": 0}, "k2 must be an integer >= 1"),
        ("cmrr", {"k": 2.5}, "k must be an integer"),
        ("aim", {"k1": -1}, "k1 must be an integer >= 1"),
    ],
)
def test_bad_hyper_parameters(name, kw, match, pair):
    with pytest.raises(ConfigError, match=match):
        RERANKERS.build({"type": name, **kw}).rerank(*pair)


def test_unknown_reranker_lists_the_registered_ones(pair):
    with pytest.raises(RegistryError, match="did you mean 'cmfp'.*available: cmfp"):
        rerank(*pair, "cmfb")


@pytest.mark.parametrize("name", ["kreciprocal", "cmrr", "aim"])
def test_too_big_for_memory_stops_at_once_saying_how_much(name, pair, monkeypatch):
    monkeypatch.setattr(inputs, "available_memory", lambda device: 1000)
    with pytest.raises(ConfigError, match=r"needs about .* GiB but only .* is free.*cmfp"):
        RERANKERS.build(name).rerank(*pair)


def test_cmfp_forced_dense_stops_at_once_when_its_blocks_cannot_fit(pair, monkeypatch):
    """Audit Y (session 17): mode='dense' was the one dense path without the check (a
    raw allocator error, or the OOM killer); 'auto' still takes the sparse path."""
    dense = RERANKERS.build({"type": "cmfp", "k": 3, "mode": "dense"})
    want = dense.rerank(*pair)  # checked, and fits
    monkeypatch.setattr(inputs, "available_memory", lambda device: 1000)
    with pytest.raises(ConfigError, match=r"CMFP's dense path .* needs about .*mode='sparse'"):
        dense.rerank(*pair)
    sparse = RERANKERS.build({"type": "cmfp", "k": 3, "mode": "sparse"})
    assert np.allclose(sparse.rerank(*pair), want, atol=1e-5)  # the way out it names
    auto = RERANKERS.build({"type": "cmfp", "k": 3})  # dense where it fits, else sparse
    assert np.allclose(auto.rerank(*pair), want, atol=1e-5)


@pytest.mark.parametrize("dtype, extra", [(torch.float32, 0.0), (torch.float64, 8.0)])
def test_the_kreciprocal_estimate_counts_the_matrices_of_the_inputs_dtype(
    dtype, extra, monkeypatch
):
    """Audit Y: float32 input was charged a float64 (N, N) matrix it never allocates (2.1x
    its need: a 5,000 + 30,000 run that fits was refused)."""
    from uvireid.rerank import kreciprocal as kr

    seen = []
    monkeypatch.setattr(kr, "ensure_fits", lambda nbytes, *a, **k: seen.append(nbytes))
    nq, ng = 30, 90
    n = nq + ng
    kr.k_reciprocal_distance(torch.randn(nq, 8, dtype=dtype), torch.randn(ng, 8, dtype=dtype))
    assert seen == [pytest.approx(kr._dense_bytes(n, nq) + extra * n * n)]


def test_three_line_use_from_another_codebase(pair):
    q, g = pair
    dist = rerank(q, g, "cmfp", k=3)
    assert dist.shape == (6, 5) and isinstance(dist, np.ndarray)


def test_features_that_are_not_a_float_matrix_are_refused_or_converted(pair):
    """Ragged lists and strings are refused by name; integers, half precision and a mix
    of float32 and float64 are re-ranked as the float computation they stand for."""
    q, g = pair
    with pytest.raises(FeatureFileError, match="query features could not be read as an array"):
        rerank([[1.0, 2.0], [3.0]], g, "cmfp")
    with pytest.raises(FeatureFileError, match="gallery features have dtype <U1"):
        rerank(q, np.array([["a", "b", "c", "d"]]), "cmfp")
    # complex features lost their imaginary part with a torch warning (audit H)
    with pytest.raises(FeatureFileError, match="query features have dtype complex64"):
        rerank(q.astype(np.complex64), g, "cmfp")
    with pytest.raises(FeatureFileError, match="features have dtype torch.complex64"):
        rerank(torch.from_numpy(q.astype(np.complex64)), torch.from_numpy(g), "cmfp")
    with pytest.raises(FeatureFileError, match="features have dtype torch.bool"):
        rerank(torch.from_numpy(q > 0), torch.from_numpy(g), "cmfp")
    q32 = q.astype(np.float32)
    mixed = rerank(q32, g, "cmfp")  # float32 with float64: in float64
    assert mixed.dtype == np.float64
    assert np.array_equal(mixed, rerank(q32.astype(np.float64), g, "cmfp"))
    half = rerank(torch.from_numpy(q).half(), torch.from_numpy(g).half(), "cmfp")
    assert half.dtype == torch.float32
    want = rerank(torch.from_numpy(q).half().float(), torch.from_numpy(g).half().float(), "cmfp")
    assert torch.equal(half, want)
    qi, gi = np.round(q * 10).astype(np.int64), np.round(g * 10).astype(np.int64)
    assert np.array_equal(
        rerank(qi, gi, "cmfp"), rerank(qi.astype(float), gi.astype(float), "cmfp")
    )
    # numpy with torch: the torch side decides the output kind
    assert isinstance(rerank(q, torch.from_numpy(g), "cmfp"), torch.Tensor)


def test_free_cuda_memory_counts_what_torchs_cache_holds_unused(monkeypatch):
    """Audit AG (session 17): cudaMemGetInfo's free bytes leave out the blocks torch's
    allocator holds cached and unused (after a training epoch, gigabytes), which it hands
    out again; CMFP's mode=auto flipped to sparse and a forced dense path was refused."""
    from uvireid.rerank import cmfp

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 40 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 10 * gib)
    dev = torch.device("cuda")
    assert inputs.available_memory(dev) == 32 * gib
    assert cmfp._resolve_mode("auto", 12000, 9000, 4, dev) == "dense"
    assert cmfp._resolve_mode("dense", 12000, 9000, 4, dev) == "dense"
