"""Behaviour of the re-rankers that a second mutation audit (NB) found untested: each test
kills a mutant the suite let survive. Each compares with an independent computation written here (numpy
sorts of float64 products, SALCR's knn_graph as a loop, the reference loops of
``rerank_oracles``) or asserts documented behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rerank_oracles import naive_knn_graph_loop

from uvireid.rerank import cmfp


def _kept_sets(block) -> list[set[int]]:
    return [
        set(block.col[block.crow[i] : block.crow[i + 1]].tolist())
        for i in range(block.crow.numel() - 1)
    ]


def test_screened_block_selects_the_float64_entries_for_any_error_within_the_bound():
    """``_screened_block``'s contract: given float32 similarities within ``slack`` of the
    float64 products, it keeps exactly the entries the float64 products keep, with the
    float64 values of the entries it re-scores. Here the "float32" similarities carry
    adversarial errors of up to 0.9 slack (the band must be 2 slack wide: the k-th value
    moves as much as the entries), and a cluster of near-equal values makes rows whose
    band reaches past the candidates (recomputed whole)."""
    gen = torch.Generator().manual_seed(0)
    n, m, k, slack = 40, 40, 3, 1e-3
    s = torch.rand(n, m, generator=gen, dtype=torch.float64) * 0.8
    s[10:25] = 0.9 + 1e-3 * torch.randn(15, m, generator=gen, dtype=torch.float64)
    err = (torch.rand(n, m, generator=gen, dtype=torch.float64) * 2 - 1) * 0.9 * slack
    # row 0, designed: exact 1.0 > 0.9 > 0.8995 (k = 2 keeps columns 0 and 1), the
    # screening sees 1.0, 0.8991, 0.9004: the float32 order of columns 1 and 2 reversed
    s[0] = torch.linspace(0.5, 0.3, m, dtype=torch.float64)
    s[0, :3] = torch.tensor([1.0, 0.9, 0.8995], dtype=torch.float64)
    err[0] = 0.0
    err[0, 1], err[0, 2] = -0.9 * slack, 0.9 * slack
    # row 1, designed: with k = 2 its float32 k-th value is 0.5 and column 0 lies exactly
    # 2 slack above it (every value here is exact in float32): the edge of the band, so
    # it is re-scored (and kept), not dropped
    rows_slack = torch.full((n,), slack, dtype=torch.float64)
    rows_slack[1] = 2.0**-10
    s[1] = torch.linspace(0.25, 0.125, m, dtype=torch.float64)
    s[1, :2] = torch.tensor([0.5 + 2.0**-9, 0.5], dtype=torch.float64)
    err[1] = 0.0
    # a = identity, b = s^T: every product a_i . b_j is s[i, j] exactly in float64
    a, b = torch.eye(n, dtype=torch.float64), s.T.contiguous()
    sim32 = (s + err).float()
    assert ((sim32.double() - s).abs() <= rows_slack[:, None]).all()
    for kk in (2, k):
        block, _ = cmfp._screened_block(a, b, sim32, kk, rows_slack)
        want = naive_knn_graph_loop(s.numpy(), kk)
        assert _kept_sets(block) == [set(np.flatnonzero(r).tolist()) for r in want]
        got = block.dense().numpy()
        if kk == 2:  # row 0 keeps 1.0 (float32-exact) and the re-scored float64 0.9
            np.testing.assert_allclose(got[:2], want[:2], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got, want, rtol=0, atol=2 * slack)


@pytest.mark.parametrize("long_side", ["query", "gallery"])
def test_screening_bounds_of_the_self_blocks_use_their_own_norms(long_side):
    """The float32 error of a query-query product scales with |q_i| max|q_j| (and of a
    gallery-gallery one with the gallery norms), not with the other side's norms: one
    side 1e3 long and the other 1e-3 (unnormalised features, as ``propagate`` takes them).
    Two rows of the long side 3e-8 apart make float32 pick the wrong one for many rows;
    the screened self block must still keep float64's top 2 (self and the nearer one)."""
    gen = torch.Generator().manual_seed(3)
    d = 64
    x = torch.nn.functional.normalize(
        torch.randn(300, d, generator=gen, dtype=torch.float64), dim=1
    )
    x[1] = torch.nn.functional.normalize(
        x[0] + 3e-8 * torch.randn(d, generator=gen, dtype=torch.float64), dim=0
    )
    x[2:250] = torch.nn.functional.normalize(x[0] + 0.05 * x[2:250], dim=1)
    other = torch.nn.functional.normalize(
        torch.randn(5, d, generator=gen, dtype=torch.float64), dim=1
    )
    x, other = x * 1e3, other * 1e-3
    s64 = x.numpy() @ x.numpy().T
    s32 = x.numpy().astype(np.float32) @ x.numpy().astype(np.float32).T
    assert ((s64[2:, 0] > s64[2:, 1]) != (s32[2:, 0] > s32[2:, 1])).sum() > 0
    want = [set(np.argsort(-row, kind="stable")[:2].tolist()) for row in s64]
    q, g = (x, other) if long_side == "query" else (other, x)
    blocks = cmfp.affinity_blocks(q, g, 2, mode="dense", mixed=True)
    name = "qq" if long_side == "query" else "gg"
    assert _kept_sets(blocks[name]) == want


def test_mixed_precision_is_chosen_by_default_on_the_cpu_only():
    """``mixed=None``: mixed precision on the CPU where available, float64 elsewhere (on a
    GPU float64 stays the default; tensors on the meta device stand for one here);
    ``mixed=True`` is honoured on any device."""
    cpu = torch.zeros((3, 4), dtype=torch.float64)
    meta = torch.empty((3, 4), dtype=torch.float64, device="meta")
    assert cmfp._resolve_mixed(None, cpu, cpu) is True
    assert cmfp._resolve_mixed(None, meta, meta) is False
    assert cmfp._resolve_mixed(True, meta, meta) is True
    assert cmfp._resolve_mixed(False, cpu, cpu) is False


def test_auto_mode_goes_sparse_where_the_dense_blocks_do_not_fit(monkeypatch):
    """``mode="auto"`` picks dense only where the similarity blocks fit in free memory
    (with a tenth kept back and 10 % over for temporaries), else sparse."""
    from uvireid.rerank import inputs

    nq, ng = 30, 20
    need = (nq * nq + 2 * nq * ng + ng * ng) * 8  # the four float64 blocks
    monkeypatch.setattr(inputs, "available_memory", lambda device: int(need * 1.1 / 0.9) + 64)
    assert cmfp._resolve_mode("auto", nq, ng, 8, "cpu") == "dense"
    monkeypatch.setattr(inputs, "available_memory", lambda device: int(need * 1.1 / 0.9) - 64)
    assert cmfp._resolve_mode("auto", nq, ng, 8, "cpu") == "sparse"
    assert cmfp._resolve_mode("auto", nq, ng, 8, None) == "dense"  # no device: by size only


def test_ensure_fits_keeps_a_tenth_of_the_free_memory(monkeypatch):
    """``ensure_fits`` refuses what would take more than 90 % of the free memory."""
    from uvireid.errors import ConfigError
    from uvireid.rerank import inputs

    monkeypatch.setattr(inputs, "available_memory", lambda device: 1000 * 2**20)
    inputs.ensure_fits(899 * 2**20, torch.device("cpu"), "x", "y")
    with pytest.raises(ConfigError, match="needs about 0.9 GiB but only 1.0 GiB is free"):
        inputs.ensure_fits(950 * 2**20, torch.device("cpu"), "x", "y")
    assert inputs.fits_in_memory(899 * 2**20, torch.device("cpu"))
    assert not inputs.fits_in_memory(950 * 2**20, torch.device("cpu"))


def test_cmfp_name_records_either_approximate_backend():
    """Both approximate backends change the neighbours, so both are named in provenance."""
    assert cmfp.CMFP(k=8, mode="sparse", backend="faiss-ivf").name == "cmfp(k=8, backend=faiss-ivf)"
    assert cmfp.CMFP(k=8, mode="sparse", backend="ivf").name == "cmfp(k=8, backend=ivf)"
    assert cmfp.CMFP(k=8, backend="faiss").name == "cmfp(k=8)"


# --------------------------------------------------------------------------------------
# k-reciprocal and CMRR


def _dists(q: np.ndarray, g: np.ndarray):
    from scipy.spatial.distance import cdist

    qq, gg = cdist(q, q), cdist(g, g)
    return cdist(q, g), (qq + qq.T) / 2, (gg + gg.T) / 2


@pytest.mark.parametrize("k1,k2", [(2, 6), (0, 3)])
def test_kreciprocal_query_expansion_wider_than_the_neighbourhood(k1, k2):
    """k2 > k1 + 1 (the expansion averages over more neighbours than R(p, k1) holds) and
    k1 = 0 (R(p) = {p}; accepted, as by the reference): Zhong et al.'s loops."""
    from rerank_oracles import zhong_re_ranking

    from uvireid.rerank import KReciprocal, re_ranking

    rng = np.random.default_rng(k1)
    q, g = rng.normal(size=(12, 6)), rng.normal(size=(15, 6))
    qg, qq, gg = _dists(q, g)
    want = zhong_re_ranking(qg, qq, gg, k1, k2, 0.3)
    assert np.abs(re_ranking(qg, qq, gg, k1, k2, 0.3) - want).max() < 1e-5
    assert np.abs(KReciprocal(k1, k2).rerank(q, g) - want).max() < 1e-5


def test_re_ranking_refuses_a_gallery_block_of_the_wrong_shape():
    from uvireid.errors import ConfigError
    from uvireid.rerank import re_ranking

    rng = np.random.default_rng(0)
    d = rng.random((9, 9))
    with pytest.raises(ConfigError, match=r"g_g_dist \(5, 5\); got \(4, 4\) and \(4, 4\)"):
        re_ranking(d[:4, 4:], d[:4, :4], d[:4, :4])


def test_kreciprocal_of_identical_features_is_finite_and_equals_the_distance_api():
    """All features equal: every distance is 0 and so every row maximum; the rows are left
    unnormalised (no 0 / 0), as ``re_ranking`` on the zero distance matrices does."""
    from uvireid.rerank import k_reciprocal_distance, re_ranking

    q, g = np.ones((4, 3)), np.ones((6, 3))
    got = k_reciprocal_distance(q, g, 3, 2, 0.3)
    assert np.isfinite(got).all()
    want = re_ranking(np.zeros((4, 6)), np.zeros((4, 4)), np.zeros((6, 6)), 3, 2, 0.3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_cmrr_intra_query_expansion_wider_than_its_neighbourhood():
    """k = 2 with the intra re-ranking's k2 = 6 > k + 1: MULT's loops."""
    from rerank_oracles import mult_re_ranking_cross

    from uvireid.rerank.cmrr import cmrr_distance

    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(14, 6)), rng.normal(size=(11, 6))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    want = mult_re_ranking_cross(q, g, 2, 0.1)
    assert np.abs(cmrr_distance(q, g, 2, 0.1) - want).max() < 1e-4


@pytest.mark.parametrize("bad", ["false", 0, None])
def test_cmfp_normalize_must_be_a_bool(bad):
    """``normalize="false"`` from a config would read as True: refused."""
    from uvireid.errors import ConfigError

    with pytest.raises(ConfigError, match="normalize must be true or false"):
        cmfp.CMFP(normalize=bad)


def test_a_bool_is_not_taken_for_a_neighbour_count():
    """``k: true`` in a config is a mistake, not k = 1; numpy integers are fine."""
    from uvireid.errors import ConfigError
    from uvireid.registry import RERANKERS

    for name, key in (("cmfp", "k"), ("cmrr", "k"), ("kreciprocal", "k1"), ("aim", "k1")):
        with pytest.raises(ConfigError, match=f"{key} must be an integer >= [01], got True"):
            RERANKERS.build({"type": name, key: True})
    assert cmfp.CMFP(k=np.int64(7)).k == 7


def test_kreciprocal_without_query_expansion_on_duplicated_features():
    """k2 = 1 switches the local query expansion off (the reference's ``if k2 != 1``); an
    expansion by each row's first neighbour would replace V[p] by V[p'] for an earlier
    duplicate p' (ties ordered by index), which differs from V[p] where p' and p
    straddle the reciprocal boundary. Zhong et al.'s loops."""
    from rerank_oracles import zhong_re_ranking

    from uvireid.rerank import re_ranking

    rng = np.random.default_rng(22)
    q, g = rng.normal(size=(8, 4)), rng.normal(size=(10, 4))
    g[3] = g[6] = q[2] = g[1]
    q[5] = q[4]
    qg, qq, gg = _dists(q, g)
    want = zhong_re_ranking(qg, qq, gg, 3, 1, 0.3)
    assert np.abs(re_ranking(qg, qq, gg, 3, 1, 0.3) - want).max() < 1e-5


def test_aim_orders_tied_smoothing_neighbours_by_index():
    """Quantised features: distinct gallery rows with equal similarities, so which of them
    are the first k2 of a row's top-k1 list (the rows it averages) depends on the order of
    the ties; documented: by index. SAAI's AIM as a loop with a stable sort."""
    from rerank_oracles import saai_aim

    from uvireid.rerank import affinity_inference

    gen = torch.Generator().manual_seed(1)
    q = torch.randint(0, 3, (6, 3), generator=gen).double() + torch.tensor([1.0, 0, 0])
    g = torch.randint(0, 3, (40, 3), generator=gen).double() + torch.tensor([1.0, 0, 0])
    for k1, k2 in ((3, 2), (6, 5)):
        want = saai_aim(q, g, k1, k2)
        assert torch.allclose(affinity_inference(q, g, k1, k2), want, atol=1e-9, rtol=0)
