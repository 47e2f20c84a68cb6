"""AIM, CMRR, k-reciprocal and the workspace at their edges. Each test compares with an
independent computation (the reference loops of ``rerank_oracles``, composed here with
settings the shared oracle hard-codes) or asserts documented behaviour (output dtypes,
"k2 > k1 acts as k2 = k1", the memory check covering the matrices a method holds at
once, the workspace's bound)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rerank_oracles import (
    _cal_v,
    _intra_re_ranking,
    clustered_pair,
    saai_aim,
    sq_dist,
    stable_argsort,
    zhong_re_ranking,
)

from uvireid.rerank import (
    AIM,
    CMRR,
    affinity_inference,
    cmrr_distance,
    inputs,
    k_reciprocal_distance,
    re_ranking,
    workspace,
)
from uvireid.rerank import aim as aim_mod


def _clustered(nq, ng, d, seed=0, ids=6, noise=0.5):
    return clustered_pair(nq, ng, d, seed, ids, noise)


# ----------------------------------------------------------------------------- CMRR


def _mult_cross(q, g, k, eta, k2_intra, lam_intra):
    """MULT's ``re_ranking_cross`` with the intra re-ranking's k2 and lambda as settings
    (``rerank_oracles.mult_re_ranking_cross`` hard-codes 6 and 0.3); float64 storage."""
    d_qg = sq_dist(q, g)
    d_gq = d_qg.T
    d_qq, d_gg = sq_dist(q, q), sq_dist(g, g)
    n_qg, n_gq = d_qg / d_qg.max(0), d_gq / d_gq.max(0)
    n_qq, n_gg = d_qq / d_qq.max(0), d_gg / d_gg.max(0)
    rank_qq = stable_argsort(_intra_re_ranking(n_qq, k, k2_intra, lam_intra, np.float64))
    rank_gg = stable_argsort(_intra_re_ranking(n_gg, k, k2_intra, lam_intra, np.float64))
    rank_qg, rank_gq = stable_argsort(n_qg), stable_argsort(n_gq)
    f64 = np.float64
    v_qq = _cal_v(n_qq, rank_qq, rank_qq, rank_qq, rank_qq, k, k, f64)
    v_gg = _cal_v(n_gg, rank_gg, rank_gg, rank_gg, rank_gg, k, k, f64)
    v_qg = _cal_v(n_qg, rank_qq, rank_qg, rank_gq, rank_gg, k, k, f64)
    v_gq = _cal_v(n_gq, rank_gg, rank_gq, rank_qg, rank_qq, k, k, f64)
    v = np.block([[v_qq, v_qg], [v_gq, v_gg]])
    v = v / v.sum(1, keepdims=True)
    nq = q.shape[0]
    s = np.array([[np.minimum(v[i], v[j]).sum() for j in range(nq, len(v))] for i in range(nq)])
    return (1 - s / (2 - s)) * (1 - eta) + sq_dist(q, g) * eta


def test_cmrr_intra_settings_reach_both_intra_re_rankings():
    """k2_intra and lambda_intra change the intra-modality ranks of BOTH sets (queries and
    gallery), through the function and the class; the shared oracle only has 6 and 0.3, so
    no test passed any other value end to end. Duplicated rows make the settings matter
    (which tied neighbour is taken), as do clusters."""
    k2_intra, lam_intra = 3, 0.8  # neither the default 6 nor 0.3
    q, g = _clustered(22, 18, 5, seed=7)
    q[2] = q[9]
    g[4] = g[11]
    want = _mult_cross(q, g, 4, 0.1, k2_intra, lam_intra)
    got = cmrr_distance(q, g, 4, 0.1, k2_intra=k2_intra, lambda_intra=lam_intra)
    assert np.abs(got - want).max() < 1e-6
    cls = CMRR(k=4, eta=0.1, k2_intra=k2_intra, lambda_intra=lam_intra).rerank(q, g)
    assert np.array_equal(cls, got)
    # the settings change the result here (so the comparison above tells them apart)
    assert np.abs(got - cmrr_distance(q, g, 4, 0.1)).max() > 1e-3


def test_cmrr_query_identical_to_the_only_gallery_image_stays_finite():
    """A gallery row whose distances to every query are 0 (one gallery image, equal to
    every query's feature): the row maximum of d_qg is 0, so n_gq is left unnormalised
    ("instead of becoming NaN", cmrr's docstring), as is the column of n_qg. Exact
    arithmetic on small integer features: every distance is exactly 0."""
    q = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    g = np.array([[1.0, 0.0, 0.0]])
    got = cmrr_distance(q, g, 3, 0.1)
    assert np.isfinite(got).all()
    # both queries see the same single gallery image through the same sets: J = 0
    np.testing.assert_allclose(got, np.zeros((2, 1)), atol=1e-12)


# ----------------------------------------------------------------------------- AIM


def test_aim_with_fewer_queries_than_k1_keeps_k1_gallery_neighbours():
    """k1 is clamped to the gallery size (the columns of the affinity rows), not to the
    number of rows: 3 queries, 20 gallery images, k1 = 8. SAAI's loops."""
    q, g = _clustered(3, 20, 6, seed=2)
    for k1, k2 in ((8, 2), (5, 1)):
        want = saai_aim(torch.from_numpy(q), torch.from_numpy(g), k1, k2).numpy()
        assert np.abs(affinity_inference(q, g, k1, k2) - want).max() < 1e-9


def test_aim_returns_the_input_dtype():
    """'(Nq, Ng) distances in the input dtype': float32 in, float32 out (numpy and torch),
    equal to the float64 computation to float32 precision."""
    q, g = _clustered(7, 9, 5, seed=4)
    d64 = affinity_inference(q, g, 3, 2)
    d32 = affinity_inference(q.astype(np.float32), g.astype(np.float32), 3, 2)
    assert d64.dtype == np.float64 and d32.dtype == np.float32
    assert np.abs(d32 - d64).max() < 1e-5
    t32 = AIM(3, 2).rerank(torch.from_numpy(q).float(), torch.from_numpy(g).float())
    assert t32.dtype == torch.float32


class _Stop(Exception):
    pass


def _needs(monkeypatch, module, call) -> float:
    """The bytes ``call`` asks ``module.ensure_fits`` for (the call stops there)."""
    seen = []

    def spy(nbytes, *a, **k):
        seen.append(nbytes)
        raise _Stop

    monkeypatch.setattr(module, "ensure_fits", spy)
    with pytest.raises(_Stop):
        call()
    monkeypatch.undo()
    return seen[0]


def test_aim_memory_check_covers_the_matrices_it_holds(monkeypatch):
    """AIM holds at once the (Nq, Ng) raw similarities, their sparsified copy, the
    normalised copy and the output, and the (Ng, Ng) sparsified gallery affinities, their
    smoothed average and its normalised copy: the memory check must ask for at least
    that (else a run the check lets through can die of memory). Long and short sides both
    ways; features of one column (nothing is computed: the check is the first step)."""
    for nq, ng in ((4000, 10), (10, 3000)):
        q, g = torch.zeros(nq, 1), torch.zeros(ng, 1)
        need = _needs(monkeypatch, aim_mod, lambda q=q, g=g: affinity_inference(q, g, 4, 1))
        assert need >= 4 * (4 * nq * ng + 3 * ng * ng), (nq, ng)


def test_aim_k2_above_k1_is_refused_exactly_when_k2_equal_to_k1_is(monkeypatch):
    """'k2 > k1 acts as k2 = k1' (only the top-k1 list is averaged): the same work and
    result, so a run that fits with k2 = k1 must not be refused with a larger k2."""
    q, g = _clustered(12, 30, 6, seed=5)
    want = affinity_inference(q, g, 2, 2)
    need = _needs(monkeypatch, aim_mod, lambda: affinity_inference(q, g, 2, 2))
    monkeypatch.setattr(inputs, "available_memory", lambda device: int(need / 0.9) + 1)
    np.testing.assert_array_equal(affinity_inference(q, g, 2, 9), want)
    np.testing.assert_array_equal(AIM(k1=2, k2=50).rerank(q, g), want)


# ----------------------------------------------------------------------------- k-reciprocal


def test_kreciprocal_float64_features_give_float32_reference_values():
    """'(Nq, Ng) float32 re-ranked distance' for any input dtype: float64 features are
    re-ranked in the reference's float32 matrix (np.power(...).astype(float32)), not in
    float64. Zhong et al.'s loops on the float64 distances."""
    q, g = _clustered(14, 12, 6, seed=8)
    qq, gg = sq_dist(q, q), sq_dist(g, g)
    qq, gg = (qq + qq.T) / 2, (gg + gg.T) / 2  # the exactly symmetric self blocks
    want = zhong_re_ranking(
        np.sqrt(np.maximum(sq_dist(q, g), 0)),
        np.sqrt(np.maximum(qq, 0)),
        np.sqrt(np.maximum(gg, 0)),
        5,
        3,
        0.3,
    )
    got = k_reciprocal_distance(q, g, 5, 3, 0.3)
    assert got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5
    t = k_reciprocal_distance(torch.from_numpy(q), torch.from_numpy(g), 5, 3, 0.3)
    assert t.dtype == torch.float32


def test_re_ranking_transposes_self_blocks_wider_than_one_slab():
    """The reference transposes the whole squared matrix; here the self blocks are
    transposed a slab of 256 rows at a time. A gallery of 300 (two slabs) with asymmetric
    distances (another method's) must be transposed whole. Zhong et al.'s loops."""
    rng = np.random.default_rng(3)
    q, g = _clustered(3, 300, 6, seed=9)
    qg = np.sqrt(np.maximum(sq_dist(q, g), 0))
    qq = np.sqrt(np.maximum(sq_dist(q, q), 0))
    gg = np.sqrt(np.maximum(sq_dist(g, g), 0)) * rng.uniform(0.8, 1.2, (300, 300))
    want = zhong_re_ranking(qg, qq, gg, 4, 2, 0.3)
    workspace.release()  # a fresh buffer: nothing left from a previous call
    got = re_ranking(qg, qq, gg, 4, 2, 0.3)
    assert np.abs(got - want).max() < 1e-5


# ----------------------------------------------------------------------------- workspace


@pytest.fixture
def empty_workspace():
    workspace.release()
    yield
    workspace.release()


def test_workspace_keeps_nothing_off_the_cpu(empty_workspace):
    """'On a GPU torch's caching allocator already reuses memory: borrow then allocates':
    off the CPU nothing is kept (the meta device stands for one here)."""
    with workspace.borrow((64, 64), torch.float32, "meta") as a:
        assert a.device.type == "meta" and a.shape == (64, 64)
    assert workspace.kept_bytes() == 0


def test_workspace_drops_as_many_old_buffers_as_the_bound_needs(monkeypatch, empty_workspace):
    """A new buffer larger than the oldest one kept: the oldest ones are dropped until the
    total fits KEEP_BYTES again (here two of three), newest kept."""
    monkeypatch.setattr(workspace, "KEEP_BYTES", 3 * 4096)
    ptrs = {}
    for n in (1024, 1023, 1022):  # three keys of about 4 KiB each: about 12 KiB kept
        with workspace.borrow((n,), torch.float32) as t:
            ptrs[n] = t.data_ptr()
    assert workspace.kept_bytes() == 4 * (1024 + 1023 + 1022)
    with workspace.borrow((2000,), torch.float32):  # 8000 bytes more
        pass
    assert workspace.kept_bytes() == 4 * (1022 + 2000) <= workspace.KEEP_BYTES
    with workspace.borrow((1022,), torch.float32) as t:  # the newest of the three stays
        assert t.data_ptr() == ptrs[1022]


def test_re_ranking_names_non_finite_self_distances():
    """NaN or inf in either self block is refused by name (the gallery block's check was
    untested): a NaN in g_g_dist must not silently become a NaN row of the result."""
    from uvireid.errors import FeatureFileError

    rng = np.random.default_rng(0)
    d = rng.random((7, 7))
    qg, qq, gg = d[:3, 3:], d[:3, :3].copy(), d[3:, 3:].copy()
    gg[2, 1] = np.nan
    with pytest.raises(FeatureFileError, match=r"g_g_dist holds NaN or inf .* row 2"):
        re_ranking(qg, qq, gg)
    qq[0, 0] = np.inf
    with pytest.raises(FeatureFileError, match=r"q_q_dist holds NaN or inf .* row 0"):
        re_ranking(qg, qq, d[3:, 3:])


def _cmrr_enumerated_bytes(nq: int, ng: int, es: int) -> float:
    """The matrices cmrr_distance holds at once on its dense cross path, as its memory
    comment lists them: d_qq (kept in the workspace) and d_gg in the input's dtype
    (``es`` bytes), d_qg, n_qg, n_gq likewise; the cross sums (Nq, Ng) and the dense
    gallery side of V ((Nq + Ng), Ng), both float64 whatever the input."""
    return es * (nq * nq + ng * ng + 3 * nq * ng) + 8 * (nq * ng + (nq + ng) * ng)


def test_cmrr_memory_check_covers_its_matrices_float64(monkeypatch):
    """For float64 input the estimate covers every matrix listed (no work is done: the
    features have one column and the check stops the call)."""
    from uvireid.rerank import cmrr as cmrr_mod

    for nq, ng in ((10, 20000), (20000, 10), (5000, 5000)):
        q, g = torch.zeros(nq, 1, dtype=torch.float64), torch.zeros(ng, 1, dtype=torch.float64)
        need = _needs(monkeypatch, cmrr_mod, lambda q=q, g=g: cmrr_distance(q, g))
        assert need >= _cmrr_enumerated_bytes(nq, ng, 8), (nq, ng)


def test_cmrr_memory_check_counts_float32_inputs_float64_dense_gallery_side(monkeypatch):
    """For float32 input the float64 (Nq + Ng, Ng) dense gallery side of V and the float64
    cross sums are charged at 8 bytes an entry, not 4.5 (a large gallery on the dense
    cross path would pass the check and still need ~3 Ng^2 bytes more: 1.2 GB at
    Ng = 20,000)."""
    from uvireid.rerank import cmrr as cmrr_mod

    nq, ng = 10, 20000
    q, g = torch.zeros(nq, 1), torch.zeros(ng, 1)
    need = _needs(monkeypatch, cmrr_mod, lambda: cmrr_distance(q, g))
    assert need >= _cmrr_enumerated_bytes(nq, ng, 4)
