"""OTLA's Sinkhorn against POT and naive log-domain loops (costs whose kernel overflows,
float32 costs solved in float64, the error reported when the official order runs out of
iterations, ``tol`` and the per-direction ``info``), PGM's float64 costs on a near tie
and its int64 outputs, CMFP(tr)'s defaults and ``mode``, and ``check_k_tr``'s refusals."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from assoc_oracles import cmfp_naive, official_sinkhorn_log, pot_sinkhorn_log
from scipy.optimize import linear_sum_assignment

from uvireid.associations.otla import OTLADual, sinkhorn_log, transport_plan
from uvireid.associations.pgm import PGM, progressive_matching
from uvireid.associations.refine import check_k_tr, cmfp_tr
from uvireid.errors import ConfigError

# ------------------------------------------------------------- naive references -------


def _positive_feats(seed, n, d=6):
    """Rows with a common positive direction: positive similarities, no tie."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    x[:, 0] += 2.0
    return x


# ------------------------------------------------------------- sinkhorn_log -----------
@pytest.mark.parametrize("official", [False, True])
def test_negative_costs_whose_kernel_overflows_give_the_shifted_problems_plan(official):
    """The docstring asks for a finite cost, not a non-negative one. Shifting the cost by
    a constant leaves Eq. 4's plan unchanged; at cost - 10 and lambda 100, exp(-lambda C)
    overflows (e^1000) and the log domain must still solve it: the plan equals POT's
    and that of the unshifted cost."""
    rng = np.random.default_rng(11)
    cost = rng.uniform(0, 4, size=(12, 5))
    kw = {"max_iter": 20000, "tol": 1e-9, "official_order": official}
    ref = sinkhorn_log(torch.from_numpy(cost), 100.0, **kw)
    res = sinkhorn_log(torch.from_numpy(cost - 10.0), 100.0, **kw)
    assert res.converged and ref.converged
    plan = transport_plan(torch.from_numpy(cost - 10.0), 100.0, res).numpy()
    assert np.isfinite(plan).all()
    np.testing.assert_allclose(
        plan, transport_plan(torch.from_numpy(cost), 100.0, ref).numpy(), rtol=0, atol=1e-9
    )
    a, b = np.full(12, 1 / 12), np.full(5, 1 / 5)
    pot = ot.sinkhorn(
        a,
        b,
        cost - 10.0,
        reg=0.01,
        method="sinkhorn_log",
        numItermax=20000,
        stopThr=1e-13,
        warn=False,
    )
    np.testing.assert_allclose(plan, pot, rtol=0, atol=1e-8)


def test_a_float32_cost_is_solved_in_float64():
    """Docstring: 'float64 is used inside', the potentials and the plan are float64. A
    float32 cost gives exactly what its float64 copy gives (rounding the exponent
    -lambda C in float32 moves the plan by about 1e-6 relative)."""
    rng = np.random.default_rng(12)
    c32 = torch.from_numpy(rng.uniform(0, 4, size=(30, 7)).astype(np.float32))
    res = sinkhorn_log(c32, 5.0, max_iter=200, tol=0.0)
    ref = sinkhorn_log(c32.double(), 5.0, max_iter=200, tol=0.0)
    assert res.log_u.dtype == res.log_v.dtype == torch.float64
    np.testing.assert_allclose(res.log_u.numpy(), ref.log_u.numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(res.log_v.numpy(), ref.log_v.numpy(), rtol=1e-13, atol=1e-13)
    plan = transport_plan(c32, 5.0, ref)
    assert plan.dtype == torch.float64
    np.testing.assert_allclose(
        plan.numpy(), transport_plan(c32.double(), 5.0, ref).numpy(), rtol=1e-12, atol=0
    )


def test_official_order_out_of_iterations_reports_the_last_checks_error():
    """SinkhornResult.err is 'the last marginal error checked': with max_iter 15 and a
    check every 10th iteration, that of iteration 11 (index 10), as the official solver
    measures it, and the run is not converged."""
    cost = np.random.default_rng(13).uniform(0, 4, size=(25, 6))
    res = sinkhorn_log(
        torch.from_numpy(cost), 5.0, max_iter=15, tol=1e-12, check_every=10, official_order=True
    )
    _, _, n_iter, err = official_sinkhorn_log(cost, 5.0, 15, 1e-12, 10)
    assert res.n_iter == n_iter == 15
    assert res.err == pytest.approx(err, rel=1e-9)
    assert not res.converged


# ------------------------------------------------------------- OTLADual ---------------
def test_otla_dual_runs_at_its_tol_and_reports_each_directions_iterations():
    """``tol`` reaches Sinkhorn; ``info['iterations']`` and ``info['marginal_error']`` are
    (visible->infrared, infrared->visible), each the naive stopping iteration of POT's
    order on that direction's cost."""
    rng = np.random.default_rng(14)
    fv, fr = rng.normal(size=(14, 5)), rng.normal(size=(9, 5))
    fv /= np.linalg.norm(fv, axis=1, keepdims=True)
    fr /= np.linalg.norm(fr, axis=1, keepdims=True)
    gv, gr = np.arange(14) % 4, np.arange(9) % 2
    out = OTLADual(tol=1e-7, max_iter=5000).associate(fv, gv, fr, gr)
    cv = np.stack([fv[gv == i].mean(0) for i in range(4)])
    cr = np.stack([fr[gr == i].mean(0) for i in range(2)])
    it_vr = pot_sinkhorn_log(((fv[:, None] - cr[None]) ** 2).sum(-1), 5.0, 5000, 1e-7)[2]
    it_rv = pot_sinkhorn_log(((fr[:, None] - cv[None]) ** 2).sum(-1), 5.0, 5000, 1e-7)[2]
    assert it_vr != it_rv  # the draw tells the two directions apart
    assert out.info["iterations"] == (it_vr, it_rv)
    assert max(out.info["marginal_error"]) < 1e-7 and out.info["converged"]


def test_intra_relabel_uses_unnormalised_centroids_with_normalize_centroids():
    """Class doc: ``intra_relabel`` relabels to the nearest '(inner-product,
    un-normalised) centroid, as the official SALCR code does'; ``normalize_centroids``
    normalises 'the prototypes' of the cross costs: with both on, the relabelling keeps
    to the un-normalised centroids."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 6))
    spread = np.array([0.3, 1.2, 0.6])  # clusters of different tightness
    g = np.repeat(np.arange(3), 5)
    x = centres[g] + spread[g, None] * rng.normal(size=(15, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = np.stack([x[g == i].mean(0) for i in range(3)])
    raw = (x @ c.T).argmax(1)
    unit = (x @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T).argmax(1)
    assert (raw != unit).any()  # the draw matters
    out = OTLADual(intra_relabel=True, normalize_centroids=True).associate(x, g, x, g)
    np.testing.assert_array_equal(out.labels_in_v[:15], raw)
    np.testing.assert_array_equal(out.labels_in_r[15:], raw)


# ------------------------------------------------------------- pgm.py -----------------
def test_pgm_decides_a_near_tie_on_the_float64_cost():
    """Two assignments whose exp(-cos) costs differ by 9e-9 (equal in float32): the match
    is the Hungarian optimum of the float64 cost (PGM Sec. 3.2 on the centroids given)."""

    def unit(t):
        return np.array([np.cos(t), np.sin(t), 0.0])

    a = np.stack([unit(0.0), unit(1.0)])
    b = np.stack([unit(0.3), unit(-2.6065636135291124)])
    cost = np.exp(-(a @ b.T))
    gap = cost[0, 0] + cost[1, 1] - cost[0, 1] - cost[1, 0]
    assert 1e-9 < gap < 1e-7
    _, ref = linear_sum_assignment(cost)
    assert ref.tolist() == [1, 0]
    assert linear_sum_assignment(cost.astype(np.float32))[1].tolist() == [0, 1]  # it matters
    ids = np.array([0, 1])
    out = PGM().associate(a, ids, b, ids)
    np.testing.assert_array_equal(out.labels_in_r[:2], ref)
    np.testing.assert_array_equal(out.labels_in_v[2:], np.argsort(ref))


@pytest.mark.parametrize("shape", [(5, 2), (2, 5), (3, 3)])
def test_progressive_matching_returns_int64_maps(shape):
    """Docstring: '(K_a,) and (K_b,) int64 partner indices'."""
    cost = np.random.default_rng(sum(shape)).uniform(0, 2, size=shape)
    a2b, b2a, _ = progressive_matching(cost)
    assert a2b.dtype == np.int64 and b2a.dtype == np.int64
    assert a2b.shape == (shape[0],) and b2a.shape == (shape[1],)


# ------------------------------------------------------------- refine.py --------------
def test_cmfp_tr_without_keep_propagates_every_row_of_both_sides():
    """Docstring: keep_v, keep_r 'Default: all'. Sides of different sizes."""
    fv, fr = _positive_feats(15, 7), _positive_feats(16, 4)
    out_v, out_r = cmfp_tr(torch.from_numpy(fv), torch.from_numpy(fr), 3)
    ref_v, ref_r = cmfp_naive(fv, fr, 3)
    # float64 on the CPU takes CMFP's mixed-precision path: about 1e-7 (rerank.cmfp)
    np.testing.assert_allclose(out_v.numpy(), ref_v, atol=1e-6)
    np.testing.assert_allclose(out_r.numpy(), ref_r, atol=1e-6)


def test_cmfp_tr_passes_its_mode_on():
    """``mode`` is that of :func:`uvireid.rerank.cmfp.affinity_blocks`: the sparse path
    gives the naive propagation (no ties here), an unknown mode is refused."""
    fv, fr = _positive_feats(17, 6), _positive_feats(18, 5)
    tv, tr = torch.from_numpy(fv), torch.from_numpy(fr)
    out_v, out_r = cmfp_tr(tv, tr, 2, keep_v=np.arange(1, 6), mode="sparse")
    ref_v, ref_r = cmfp_naive(fv[1:], fr, 2)
    np.testing.assert_allclose(out_v.numpy()[1:], ref_v, atol=1e-9)
    np.testing.assert_allclose(out_r.numpy(), ref_r, atol=1e-9)
    with pytest.raises(ConfigError, match="mode must be one of"):
        cmfp_tr(tv, tr, 2, mode="nope")


def test_check_k_tr_returns_a_python_int():
    """Docstring: '``k_tr`` as an int': a whole float from a recipe, a numpy integer."""
    for value in (8.0, np.int64(8), np.float64(8.0)):
        got = check_k_tr(value, "otla_dual")
        assert got == 8 and type(got) is int


@pytest.mark.parametrize("k_tr", [math.inf, math.nan, np.float64("inf")])
def test_check_k_tr_refuses_non_finite_values_with_a_config_error(k_tr):
    """A ConfigError for a bad k_tr, not ``int(inf)``'s OverflowError or ``int(nan)``'s
    ValueError (a recipe's ``k_tr: .inf`` would escape runner.check_parts as a raw
    traceback)."""
    with pytest.raises(ConfigError, match="k_tr must be a positive integer"):
        check_k_tr(k_tr, "otla_dual")


def test_check_k_tr_takes_a_huge_python_int():
    """An int too large for a float is a positive integer, not an OverflowError from the
    finiteness check (which is for floats)."""
    assert check_k_tr(10**400, "otla_dual") == 10**400
