"""CMFP's mixed-precision screening, dtypes and input kinds. Each compares with an
independent computation (float64 products, a float64 run of the same function, exact
rational arithmetic) or asserts documented behaviour."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from uvireid.rerank import cmfp


def _kept_sets(block) -> list[set[int]]:
    return [
        set(block.col[block.crow[i] : block.crow[i + 1]].tolist())
        for i in range(block.crow.numel() - 1)
    ]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def test_float32_bound_covers_a_worst_case_single_product():
    """d = 1: both inputs round down by just under half an ulp and their float32 product
    rounds up by just under half an ulp, so the error is about 3u |a b|: the bound must
    count 2u for the inputs' rounding (1u for them would give about 2u)."""
    u = 2.0**-24
    big_a, big_b = 1 + 2040 * 2.0**-23, 1 + 2057 * 2.0**-23  # exact in float32
    a = big_a - u * (1 - 2.0**-20)  # rounds to big_a in float32 (just under half an ulp)
    b = big_b - u * (1 - 2.0**-20)
    assert np.float32(a) == np.float32(big_a) and np.float32(b) == np.float32(big_b)
    ta = torch.tensor([[a]], dtype=torch.float64)
    tb = torch.tensor([[b]], dtype=torch.float64)
    got = Fraction(float((ta.float() @ tb.float().T)[0, 0]))
    err = abs(got - Fraction(a) * Fraction(b)) / (Fraction(a) * Fraction(b))
    assert err > Fraction(2.9) * Fraction(u)  # the designed worst case
    assert err <= Fraction(cmfp.float32_bound(1))


@pytest.mark.parametrize("long_side", ["query", "gallery"])
def test_screening_bounds_of_the_cross_blocks_use_the_base_sets_norms(long_side):
    """The float32 error of a query-gallery product scales with |q_i| max|g_j| (and of a
    gallery-query one with |g_i| max|q_j|). One side 1e3 long, the other 1e-3, and two
    rows of the long side 3e-8 apart: float32 picks the wrong one of the two for many rows
    of the short side; the screened cross block (short rows against the long base) must
    keep float64's top 1."""
    gen = torch.Generator().manual_seed(5)
    d = 64
    x = _unit(torch.randn(60, d, generator=gen, dtype=torch.float64))
    x[1] = torch.nn.functional.normalize(
        x[0] + 3e-8 * torch.randn(d, generator=gen, dtype=torch.float64), dim=0
    )
    short = _unit(x[0] + 0.05 * torch.randn(200, d, generator=gen, dtype=torch.float64))
    x, short = x * 1e3, short * 1e-3
    s64 = short.numpy() @ x.numpy().T
    s32 = short.numpy().astype(np.float32) @ x.numpy().astype(np.float32).T
    assert (np.argmax(s64, 1) != np.argmax(s32, 1)).sum() > 0  # float32 alone errs
    want = [{int(np.argmax(row))} for row in s64]
    q, g = (x, short) if long_side == "query" else (short, x)
    blocks = cmfp.affinity_blocks(q, g, 1, mode="dense", mixed=True)
    name = "gq" if long_side == "query" else "qg"
    assert _kept_sets(blocks[name]) == want


@pytest.mark.parametrize("side", ["query", "gallery"])
def test_mixed_precision_falls_back_to_float64_where_either_sides_norms_exceed_2_50(side):
    """Row norms above 2^50 on either side: float32 products could overflow (2^70 squared
    is past float32's range), so the blocks come from float64 products: those of
    ``mixed=False``."""
    gen = torch.Generator().manual_seed(1)
    q = _unit(torch.randn(7, 8, generator=gen, dtype=torch.float64))
    g = _unit(torch.randn(9, 8, generator=gen, dtype=torch.float64))
    if side == "query":
        q[:3] *= 2.0**70
    else:
        g[:3] *= 2.0**70
    assert cmfp._screened_dense_blocks(q, g, 3) is None
    exact = cmfp.affinity_blocks(q, g, 3, mode="dense", mixed=False)
    mixed = cmfp.affinity_blocks(q, g, 3, mode="dense", mixed=True)
    for name in exact:
        torch.testing.assert_close(mixed[name].dense(), exact[name].dense(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("scale", "k"), [(1e-21, 3), (1e-21, 30), (1e-25, 30)])
def test_mixed_precision_keeps_float64_affinities_for_tiny_norms(scale, k):
    """Features with tiny norms (unnormalised input to ``propagate``): float32 products
    would fall into float32's subnormal range or to 0 (the kept entries outside the band
    keep float32 values: weights off by up to 0.9), so such input runs in float64. The
    affinities are row-normalised, so they must equal those of the same features
    scaled to unit norm (an exact power-of-two rescaling here) and those of mixed=False."""
    gen = torch.Generator().manual_seed(0)
    q = _unit(torch.randn(6, 16, generator=gen, dtype=torch.float64))
    g = _unit(torch.randn(9, 16, generator=gen, dtype=torch.float64))
    exact = cmfp.affinity_blocks(q * scale, g * scale, k, mode="dense", mixed=False)
    unit = cmfp.affinity_blocks(q, g, k, mode="dense", mixed=False)
    mixed = cmfp.affinity_blocks(q * scale, g * scale, k, mode="dense", mixed=True)
    for name in exact:
        torch.testing.assert_close(exact[name].dense(), unit[name].dense(), rtol=0, atol=1e-12)
        torch.testing.assert_close(mixed[name].dense(), exact[name].dense(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_and_returned_in_float32(dtype):
    """Documented: float16 and bfloat16 inputs are computed and returned in float32, the
    result of the same features cast to float32 first (numpy float16 too)."""
    gen = torch.Generator().manual_seed(2)
    q = _unit(torch.randn(5, 8, generator=gen)).to(dtype)
    g = _unit(torch.randn(7, 8, generator=gen)).to(dtype)
    qp, gp = cmfp.propagate(q, g, 3)
    wq, wg = cmfp.propagate(q.float(), g.float(), 3)
    assert qp.dtype == gp.dtype == torch.float32
    assert torch.equal(qp, wq) and torch.equal(gp, wg)
    if dtype == torch.float16:
        nq, ng = cmfp.propagate(q.numpy(), g.numpy(), 3)
        assert isinstance(nq, np.ndarray) and nq.dtype == ng.dtype == np.float32
        np.testing.assert_array_equal(nq, wq.numpy())


def test_one_numpy_and_one_torch_input_give_torch_and_promoted_dtypes():
    """Documented: with one numpy and one torch input the output is torch; a float32 and a
    float64 side are both computed in float64 (no rounding of the float64 side)."""
    gen = torch.Generator().manual_seed(4)
    q = _unit(torch.randn(5, 8, generator=gen, dtype=torch.float64))
    g = _unit(torch.randn(6, 8, generator=gen, dtype=torch.float64))
    qp, gp = cmfp.propagate(q.numpy(), g, 3)
    assert isinstance(qp, torch.Tensor) and isinstance(gp, torch.Tensor)
    d = cmfp.CMFP(k=3).rerank(q, g.numpy())
    assert isinstance(d, torch.Tensor)
    q32 = q.float().double()  # the float32 side, exactly
    qp, gp = cmfp.propagate(q.float(), g, 3, mixed=False)
    wq, wg = cmfp.propagate(q32, g, 3, mixed=False)
    assert qp.dtype == gp.dtype == torch.float64
    torch.testing.assert_close(torch.cat([qp, gp]), torch.cat([wq, wg]), rtol=0, atol=1e-14)


def test_faiss_sparse_blocks_of_float64_input_are_normalised_in_float64():
    """faiss scores are float32; the sparse path's affinities of float64 input are still
    float64, each row summing to 1 to float64 rounding (every block contributes 1 to its
    row of G), also in rows re-scored for a tie at the k-th value."""
    pytest.importorskip("faiss")
    gen = torch.Generator().manual_seed(6)
    x = _unit(torch.randn(40, 12, generator=gen, dtype=torch.float64))
    base = _unit(torch.randn(30, 12, generator=gen, dtype=torch.float64))
    base[7] = base[3]  # a duplicate: ties at the k-th place for the rows that rank it there
    block = cmfp._sparse_block(x, base, 4, "faiss", None)
    assert ((block.crow[1:] - block.crow[:-1]) > 4).any()  # some row keeps a tie
    dense = block.dense()
    assert dense.dtype == torch.float64
    sums = dense.sum(1)
    pos = dense.clamp(min=0).sum(1) > 0
    torch.testing.assert_close(sums[pos], torch.ones_like(sums[pos]), rtol=0, atol=1e-14)
    # the kept columns are those of float64 products (no near-ties at this scale)
    s = (x @ base.T).numpy()
    for i, kept in enumerate(_kept_sets(block)):
        thr = np.sort(s[i])[::-1][3]
        assert kept == set(np.flatnonzero(s[i] >= thr - 1e-6).tolist())


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_tiny_features_are_normalised_as_the_official_code_does(mode):
    """``propagate`` ends with the official ``F.normalize`` (``x / max(|x|, 1e-12)``):
    propagated features shorter than 1e-12 stay short, as in ``agg_feature``."""
    from rerank_oracles import official_agg_feature

    gen = torch.Generator().manual_seed(7)
    q = _unit(torch.randn(5, 8, generator=gen, dtype=torch.float64)) * 1e-15
    g = _unit(torch.randn(6, 8, generator=gen, dtype=torch.float64)) * 1e-15
    qp, gp = cmfp.propagate(q, g, 3, mode=mode, mixed=False)
    want = official_agg_feature(q, g, 3)
    assert float(torch.linalg.vector_norm(want, dim=1).max()) < 1e-2  # not unit rows
    torch.testing.assert_close(torch.cat([qp, gp]), want, rtol=1e-9, atol=0)


@pytest.mark.parametrize(("n", "m", "k"), [(3, 12, 5), (12, 3, 5), (1, 9, 4)])
def test_knn_affinity_of_non_square_similarities_equals_the_loop(n, m, k):
    """``knn_affinity`` clamps k to the number of columns (the block width), not rows: a
    short wide block (a single query against a gallery) keeps k entries per row."""
    from rerank_oracles import naive_knn_graph_loop

    rng = np.random.default_rng(8)
    sim = rng.normal(size=(n, m))
    got = cmfp.knn_affinity(sim, k)
    np.testing.assert_allclose(got, naive_knn_graph_loop(sim, k), rtol=0, atol=1e-12)
    assert ((got > 0).sum(1) == np.minimum(k, (sim > 0).sum(1))).all()


@pytest.mark.parametrize("n", [2, 258])
def test_gram_symmetric_is_exactly_symmetric_for_a_two_row_tile(n):
    """A GEMM's 2 x 2 diagonal tile is not always symmetric (d = 33: (0, 1) and (1, 0)
    summed in other orders, 1 ulp apart); ``gram_symmetric`` mirrors every diagonal tile,
    the last one of 2 rows included (n = 258: tiles of 256), and its values are those of
    the products (to a rounding)."""
    from uvireid.rerank.distances import gram_symmetric

    gen = torch.Generator().manual_seed(9)
    for dtype in (torch.float32, torch.float64):
        for _ in range(6 if n == 2 else 2):
            x = torch.randn(n, 33, generator=gen, dtype=dtype)
            got = gram_symmetric(x)
            assert torch.equal(got, got.T)
            exact = x.double() @ x.double().T
            tol = 1e-4 if dtype == torch.float32 else 1e-12
            torch.testing.assert_close(got.double(), exact, rtol=0, atol=tol)


def test_self_distances_return_1_for_row_maxima_that_round_below_zero():
    """A one-image set: its only squared distance, to itself, rounds to a tiny negative
    value (|x|^2 + |x|^2 - 2 x.x, not clamped, as the reference computes it); a maximum
    that is not > 0 is returned as 1 (a negative divisor would flip the row's order)."""
    from uvireid.rerank.distances import self_distances, squared_norms

    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(1, 33, generator=gen, dtype=torch.float64)
    d, m = self_distances(x, squared_norms(x))
    sq = float((x * x).sum())
    assert float(d[0, 0]) < 0 and abs(float(d[0, 0])) < 1e-12 * sq  # rounding, not clamped
    assert torch.equal(m, torch.ones(1, dtype=torch.float64))


def test_squared_euclidean_is_not_clamped_at_zero():
    """Documented: the reference ``|x|^2 + |y|^2 - 2 x.y``, not clamped: a row's distance
    to itself may round to a tiny negative value, as in the official evaluators."""
    from uvireid.rerank.distances import squared_euclidean

    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(1, 33, generator=gen, dtype=torch.float64)
    y = torch.cat([x, torch.randn(2, 33, generator=gen, dtype=torch.float64)])
    got = squared_euclidean(x, y)
    want = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    sq = float((x * x).sum())
    assert float(got[0, 0]) < 0 and abs(float(got[0, 0])) < 1e-12 * sq
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * sq)
