"""CMFP against the official SALCR ``agg_feature`` / ``knn_graph`` (rerank_oracles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rerank_oracles import naive_knn_graph_loop, official_agg_feature

from uvireid.errors import ConfigError
from uvireid.rerank import CMFP, cmfp_distance, propagate
from uvireid.rerank.cmfp import affinity_blocks, knn_affinity

MODES = ["dense", "sparse"]


def _stack(qp, gp):
    return torch.cat([torch.as_tensor(qp), torch.as_tensor(gp)])


def assert_matches_official(out: torch.Tensor, ref: torch.Tensor, atol: float = 1e-5) -> None:
    """Equal where the official result is finite; finite where it is NaN (0/0 rows)."""
    assert torch.isfinite(out).all()
    ok = torch.isfinite(ref).all(1)
    assert torch.allclose(out[ok], ref[ok], atol=atol, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("nq,ng,d,k", [(60, 25, 16, 5), (120, 40, 32, 30), (9, 30, 8, 3)])
def test_cmfp_equals_official_agg_feature(clustered, mode, nq, ng, d, k):
    q, g = clustered(nq, ng, d, seed=nq)
    ref = official_agg_feature(torch.from_numpy(q), torch.from_numpy(g), k)
    qp, gp = propagate(q, g, k, mode=mode)
    assert isinstance(qp, np.ndarray) and qp.dtype == np.float64
    assert_matches_official(_stack(qp, gp), ref)


@pytest.mark.parametrize("mode", MODES)
def test_cmfp_keeps_every_tie_at_the_kth_value(mode):
    # integer features: every inner product is exact, duplicates tie exactly
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(-2, 3, (40, 6), generator=gen).double()
    g = torch.randint(-2, 3, (15, 6), generator=gen).double()
    g[3] = g[5] = g[7]
    q[1] = q[2] = q[9]
    q[4] = g[0]
    ref = official_agg_feature(q, g, 4)
    qp, gp = propagate(q, g, 4, mode=mode)
    assert_matches_official(_stack(qp, gp), ref)
    # a row keeps more than k entries where a tie straddles the k-th place
    blocks = affinity_blocks(q, g, 4, mode=mode)
    counts = blocks["qg"].crow.diff()
    assert int(counts.max()) > 4


@pytest.mark.parametrize("mode", MODES)
def test_cmfp_negative_similarities_inside_topk_become_zero(mode):
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(30, 3, generator=gen, dtype=torch.float64), dim=1)
    g = torch.nn.functional.normalize(torch.randn(12, 3, generator=gen, dtype=torch.float64), dim=1)
    k = 8  # with d=3 and k=8 of 12, many cross rows keep negative similarities
    sim = (q @ g.T).numpy()
    assert (np.sort(sim, axis=1)[:, ::-1][:, k - 1] < 0).any()
    ref = official_agg_feature(q, g, k)
    qp, gp = propagate(q, g, k, mode=mode)
    assert_matches_official(_stack(qp, gp), ref)
    dense = knn_affinity(sim, k)
    assert np.allclose(dense, naive_knn_graph_loop(sim, k), atol=1e-12)
    assert (dense >= 0).all()


@pytest.mark.parametrize("mode,screen", [("dense", None), ("dense", False), ("sparse", None)])
def test_cmfp_row_that_official_code_turns_to_nan_stays_finite(mode, screen):
    # gallery row 0 has only negative similarities to every query: official 0/0 = NaN
    q = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3]], dtype=torch.float64)
    g = torch.tensor([[-1.0, 0.0], [0.7, 0.7], [1.0, 0.2]], dtype=torch.float64)
    ref = official_agg_feature(q, g, 2)
    assert torch.isnan(ref[3]).all()
    qp, gp = propagate(q, g, 2, mode=mode, mixed=screen)
    out = _stack(qp, gp)
    # float32 screening (the dense default for float64) keeps float32 affinity values
    atol = 1e-6 if (mode, screen) == ("dense", None) else 1e-12
    assert_matches_official(out, ref, atol=atol)
    # the empty cross block contributes nothing: only the gallery-gallery part is left
    gg = torch.from_numpy(naive_knn_graph_loop((g @ g.T).numpy(), 2)) @ g
    assert torch.allclose(out[3], torch.nn.functional.normalize(gg[0], dim=0), atol=atol)


@pytest.mark.parametrize("mode", MODES)
def test_cmfp_clamps_k_to_each_block_width(mode):
    rng = np.random.default_rng(5)
    q = rng.normal(size=(9, 4))
    g = rng.normal(size=(5, 4))
    qp, gp = propagate(q, g, 30, mode=mode)  # official: IndexError (k > 5 gallery columns)
    x = np.concatenate([q, g])
    big = np.block(
        [
            [naive_knn_graph_loop(q @ q.T, 30), naive_knn_graph_loop(q @ g.T, 30)],
            [naive_knn_graph_loop(g @ q.T, 30), naive_knn_graph_loop(g @ g.T, 30)],
        ]
    )
    want = big @ x
    want /= np.maximum(np.linalg.norm(want, axis=1, keepdims=True), 1e-12)
    assert np.allclose(np.concatenate([qp, gp]), want, atol=1e-10)


def test_cmfp_single_query_and_duplicate_gallery(clustered):
    q, g = clustered(1, 6, 8, seed=2)
    g = np.concatenate([g, g[:2]])
    ref = official_agg_feature(torch.from_numpy(q), torch.from_numpy(g), 1)
    # dense float64 input: mixed precision by default (about 1e-7), exact with mixed=False
    for mode, mixed, atol in [
        ("dense", None, 1e-6),
        ("dense", False, 1e-10),
        ("sparse", None, 1e-10),
    ]:
        qp, gp = propagate(q, g, 1, mode=mode, mixed=mixed)
        assert_matches_official(torch.from_numpy(np.concatenate([qp, gp])), ref, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cmfp_sparse_equals_dense(clustered, dtype):
    q, g = clustered(400, 150, 32, seed=11)
    q, g = torch.from_numpy(q).to(dtype), torch.from_numpy(g).to(dtype)
    dq, dg = propagate(q, g, 30, mode="dense")
    sq, sg = propagate(q, g, 30, mode="sparse", block_rows=64)
    assert sq.dtype == dtype
    assert torch.allclose(torch.cat([dq, dg]), torch.cat([sq, sg]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("duplicates", [False, True])
@pytest.mark.parametrize("backend,seed", [("faiss", 12), ("faiss-ivf", 13), ("ivf", 14)])
def test_cmfp_sparse_with_faiss_or_ivf_equals_dense(clustered, backend, seed, duplicates):
    # faiss-ivf: 300 and 120 points give 7 and 3 inverted-file cells, all probed, so its
    # approximate search is exhaustive here (through its one-index-per-base path); ivf: 9
    # and 4 cells of ~32, all probed. Duplicated rows tie at the k-th place: every tied
    # entry is kept, as on the dense path (the tied rows are re-scored exactly)
    if backend != "ivf":
        pytest.importorskip("faiss")
    q, g = clustered(300, 120, 32, seed=seed)
    q, g = torch.from_numpy(q).float(), torch.from_numpy(g).float()
    if duplicates:
        q, g = torch.cat([q, q[:40], q[:40]]), torch.cat([g, g[:30], g[:30]])
    dq, dg = propagate(q, g, 10, mode="dense")
    sq, sg = propagate(q, g, 10, mode="sparse", backend=backend)
    assert torch.allclose(torch.cat([dq, dg]), torch.cat([sq, sg]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_cmfp_rows_sum_to_one_per_block(clustered, mode):
    q, g = clustered(50, 20, 8, seed=4)
    blocks = affinity_blocks(torch.from_numpy(q), torch.from_numpy(g), 7, mode=mode)
    for name, b in blocks.items():
        a = b.dense()
        assert a.shape == {"qq": (50, 50), "qg": (50, 20), "gq": (20, 50), "gg": (20, 20)}[name]
        assert torch.allclose(a.sum(1), torch.ones(a.shape[0], dtype=a.dtype), atol=1e-12)


def test_cmfp_class_normalises_input_and_reranks_by_squared_euclidean(clustered):
    q, g = clustered(30, 12, 8, seed=6)
    scaled_q, scaled_g = 3.0 * q, 0.5 * g
    rr = CMFP(k=5)
    qp, gp = rr.propagate(scaled_q, scaled_g)
    want_q, want_g = propagate(q, g, 5)
    assert np.allclose(qp, want_q, atol=1e-12) and np.allclose(gp, want_g, atol=1e-12)
    dist = rr.rerank(scaled_q, scaled_g)
    assert np.allclose(dist, ((qp[:, None, :] - gp[None]) ** 2).sum(-1), atol=1e-10)
    assert np.allclose(cmfp_distance(q, g, 5), dist, atol=1e-10)


def test_cmfp_torch_in_torch_out_keeps_dtype(clustered):
    q, g = clustered(20, 8, 4, seed=7)
    qt, gt = torch.from_numpy(q).float(), torch.from_numpy(g).float()
    out = CMFP(k=3).rerank(qt, gt)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape == (20, 8)


# --------------------------------------------------------------------------------------
# float32 screening of the dense path (float64 features)


def _structure(blocks):
    return {n: (b.crow.tolist(), b.col.tolist()) for n, b in blocks.items()}


def test_float32_bound_holds_on_cancelling_and_random_products():
    from uvireid.rerank.cmfp import float32_bound

    gen = torch.Generator().manual_seed(0)
    for d in (3, 64, 2048):
        a = torch.randn(200, d, generator=gen, dtype=torch.float64)
        b = torch.randn(300, d, generator=gen, dtype=torch.float64)
        b[:100] = a[:100] * (1 + 1e-9)  # products as large as |a| |b|
        sign = torch.ones(d, dtype=torch.float64)
        sign[1::2] = -1
        b[100:200] = a[100:200] * sign * 1e3  # sums of +-a_i^2: cancelling, large
        exact = a @ b.T
        approx = (a.float() @ b.float().T).double()
        scale = torch.linalg.vector_norm(a, dim=1)[:, None] * torch.linalg.vector_norm(b, dim=1)
        assert ((approx - exact).abs() <= float32_bound(d) * scale).all()
    # a bound that is not vacuous: d = 2048 gives about 1.2e-4
    assert 1e-4 < float32_bound(2048) < 2e-4


@pytest.mark.parametrize("nq,ng,d,k", [(300, 40, 64, 30), (80, 200, 16, 10), (50, 7, 8, 30)])
def test_screened_dense_selects_the_float64_neighbours(clustered, nq, ng, d, k):
    q, g = (torch.from_numpy(x) for x in clustered(nq, ng, d, seed=d))
    exact = affinity_blocks(q, g, k, mode="dense", mixed=False)
    screened = affinity_blocks(q, g, k, mode="dense", mixed=True)
    assert _structure(screened) == _structure(exact)
    for name in exact:
        assert torch.allclose(screened[name].val, exact[name].val, atol=1e-6, rtol=0)
    if k <= ng:  # the official code fails past the gallery's width
        ref = official_agg_feature(q, g, k)
        qp, gp = propagate(q, g, k, mode="dense", mixed=True)
        assert_matches_official(_stack(qp, gp), ref)


@pytest.mark.parametrize("ng,copies", [(12, 0), (60, 40)])
def test_screening_recomputes_near_ties_below_float32_resolution(ng, copies):
    from uvireid.rerank.cmfp import _screened_dense_blocks

    gen = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(
        torch.randn(40, 32, generator=gen, dtype=torch.float64), dim=1
    )
    g = torch.nn.functional.normalize(
        torch.randn(ng, 32, generator=gen, dtype=torch.float64), dim=1
    )
    if copies:  # more tied copies than candidates: those rows are redone whole
        g[ng - copies :] = g[0]
        q[:10] = torch.nn.functional.normalize(g[0] + 0.01 * q[:10], dim=1)
    # gallery pairs 1e-10 apart: their similarities to every query differ by ~1e-10,
    # far below float32's resolution, so the order between them is float64's alone
    g[5] = torch.nn.functional.normalize(g[4] + 1e-10 * torch.randn(32, generator=gen), dim=0)
    g[9] = g[8]  # an exact duplicate: a true tie
    k = 3
    exact = affinity_blocks(q, g, k, mode="dense", mixed=False)
    blocks, redone = _screened_dense_blocks(q, g, k)
    assert (redone > 0) == (copies > 0)
    assert _structure(blocks) == _structure(exact)
    # naive reference: the float64 similarity matrices through the official knn_graph loop
    for name, (a, b) in {"qg": (q, g), "gg": (g, g)}.items():
        ref = naive_knn_graph_loop((a @ b.T).numpy(), k)
        assert np.allclose(blocks[name].dense().numpy(), ref, atol=1e-6)


def test_screening_keeps_float64_order_where_float32_reverses_it():
    gen = torch.Generator().manual_seed(2)
    q = torch.nn.functional.normalize(
        torch.randn(500, 64, generator=gen, dtype=torch.float64), dim=1
    )
    g = torch.nn.functional.normalize(torch.randn(6, 64, generator=gen, dtype=torch.float64), dim=1)
    g[1] = torch.nn.functional.normalize(g[0] + 3e-8 * torch.randn(64, generator=gen), dim=0)
    q[:400] = torch.nn.functional.normalize(g[0] + 0.05 * q[:400], dim=1)  # nearest: 0 or 1
    s64, s32 = q @ g.T, (q.float() @ g.float().T).double()
    flipped = (s64[:, 0] > s64[:, 1]) != (s32[:, 0] > s32[:, 1])
    assert int(flipped.sum()) > 0  # float32 alone would pick the wrong nearest for these rows
    exact = affinity_blocks(q, g, 1, mode="dense", mixed=False)
    screened = affinity_blocks(q, g, 1, mode="dense", mixed=True)
    assert screened["qg"].col.tolist() == exact["qg"].col.tolist()
    assert _structure(screened) == _structure(exact)


def test_screening_is_refused_where_float32_products_are_not_exact_enough(monkeypatch):
    from uvireid.errors import ConfigError
    from uvireid.rerank.cmfp import mixed_available

    q = torch.randn(10, 4, dtype=torch.float64)
    assert mixed_available(q)
    assert not mixed_available(q.float())  # float32 input: nothing to screen
    big = q * 2.0**60  # beyond float32's comfortable range: float64 after all
    assert torch.equal(
        torch.cat(propagate(big, big[:4], 3, mode="dense", mixed=True)),
        torch.cat(propagate(big, big[:4], 3, mode="dense", mixed=False)),
    )
    with pytest.raises(ConfigError, match="mixed=True needs float64"):
        affinity_blocks(q.float(), q.float(), 3, mode="dense", mixed=True)
    with pytest.raises(ConfigError, match="dense path"):
        propagate(q, q, 3, mode="sparse", mixed=True)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")  # TF32
    assert not mixed_available(q)
    with pytest.raises(ConfigError, match="'high'"):
        affinity_blocks(q, q, 3, mode="dense", mixed=True)


def test_mixed_precision_is_the_cpu_default_for_float64_and_follows_mixed_false(device):
    gen = torch.Generator().manual_seed(4)
    q = torch.nn.functional.normalize(
        torch.randn(200, 48, generator=gen, dtype=torch.float64), dim=1
    )
    g = torch.nn.functional.normalize(
        torch.randn(50, 48, generator=gen, dtype=torch.float64), dim=1
    )
    q, g = q.to(device), g.to(device)
    exact = torch.cat(propagate(q, g, 10, mode="dense", mixed=False))
    mixed = torch.cat(propagate(q, g, 10, mode="dense", mixed=True))
    default = torch.cat(propagate(q, g, 10, mode="dense"))
    assert mixed.dtype == torch.float64
    err = (mixed - exact).abs().max()
    assert 0 < err < 1e-6  # float32 arithmetic, the float64 neighbours
    assert torch.equal(default, mixed if device == "cpu" else exact)


def test_a_misspelt_backend_is_refused_on_the_dense_path_too():
    """The dense path does not search with the backend, but a typo must not wait until an
    input is large enough to go sparse."""
    q = torch.randn(6, 4)
    with pytest.raises(ConfigError, match="backend must be one of .*got 'fiass'"):
        propagate(q, q, 3, backend="fiass")
    with pytest.raises(ConfigError, match="backend must be one of"):
        affinity_blocks(q, q, 3, mode="dense", backend="fiass")
    with pytest.raises(ConfigError, match="backend must be one of"):
        CMFP(backend="fiass")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_selection_with_tied_rows_equals_sorting_every_entry(dtype):
    """The sparse path's block when some rows tie at their k-th value: built in place,
    the same CSR arrays, to the bit, as every kept entry sorted by (row, column) (the
    construction it replaced), with tied rows keeping every entry >= their threshold."""
    from uvireid.rerank.cmfp import _entries_to_block, _select

    g = torch.Generator().manual_seed(4)
    n, m, kc = 200, 60, 7
    s = (torch.randint(-3, 12, (n, m), generator=g).to(dtype)) / 10  # many ties
    s[:60] -= 1.0  # rows whose kept entries are negative (clamped: rows summing to 0)
    vals, idx = torch.topk(s, kc + 3, dim=1, sorted=True)
    got = _select(vals, idx, kc, m, lambda rows: s[rows])
    # the oracle: each row's kept entries listed, then sorted into a CSR block
    rr, cc, vv = [], [], []
    tied = 0
    for i in range(n):
        if vals[i, kc] == vals[i, kc - 1]:
            tied += 1
            cols = (s[i] >= vals[i, kc - 1]).nonzero().squeeze(1)
        else:
            cols = idx[i, :kc]
        rr += [i] * len(cols)
        cc += cols.tolist()
        vv += s[i, cols].tolist()
    want = _entries_to_block(
        torch.tensor(rr), torch.tensor(cc), torch.tensor(vv, dtype=dtype), n, m
    )
    assert 0 < tied < n
    assert torch.equal(got.crow, want.crow) and torch.equal(got.col, want.col)
    assert torch.equal(got.val, want.val)


def test_knn_affinity_row_with_only_negative_similarities_is_zero_not_nan():
    """Documented: a row whose kept similarities are all <= 0 stays 0 (the official code
    gives NaN); no row of the other tests had that (mutation audit BX)."""
    sim = np.array([[0.9, 0.2, -0.1, 0.4], [-0.3, -0.5, -0.2, -0.9], [0.1, -0.2, 0.7, 0.0]])
    out = knn_affinity(sim, 2)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, naive_knn_graph_loop(sim, 2), atol=1e-12)
    assert (out[1] == 0).all()


@pytest.mark.parametrize(("mode", "mixed"), [("dense", None), ("dense", False), ("sparse", None)])
def test_cmfp_all_zero_feature_stays_zero_not_nan(mode, mixed):
    """A dead image (an all-zero feature): each of its block rows sums to 0, so its
    propagated feature is the zero vector, and normalising it must not divide 0 by 0
    (NaN distances stopped the evaluation; mutation audit BX)."""
    rng = np.random.default_rng(0)
    q = rng.normal(size=(7, 5))
    g = rng.normal(size=(6, 5))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q[2] = 0.0
    k = 3
    qp, gp = propagate(q, g, k, mode=mode, mixed=mixed)
    x = np.concatenate([q, g])
    big = np.block(
        [
            [naive_knn_graph_loop(q @ q.T, k), naive_knn_graph_loop(q @ g.T, k)],
            [naive_knn_graph_loop(g @ q.T, k), naive_knn_graph_loop(g @ g.T, k)],
        ]
    )
    want = big @ x
    want /= np.maximum(np.linalg.norm(want, axis=1, keepdims=True), 1e-12)
    out = np.concatenate([np.asarray(qp), np.asarray(gp)])
    assert np.isfinite(out).all()
    assert (out[2] == 0).all()
    np.testing.assert_allclose(out, want, atol=1e-6)
    d = CMFP(k=k, mode=mode, mixed=mixed).rerank(q, g)
    assert np.isfinite(np.asarray(d)).all()
