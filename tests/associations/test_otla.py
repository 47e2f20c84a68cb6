"""Log-domain Sinkhorn against POT, and the OTLA-dual associator."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from assoc_oracles import gaussian_modalities

from uvireid.associations.otla import OTLADual, sinkhorn_log, squared_distances, transport_plan
from uvireid.errors import ConfigError, FeatureFileError


def _uniform(n: int, k: int):
    return np.full(n, 1.0 / n), np.full(k, 1.0 / k)


@pytest.mark.parametrize("n,k,lam", [(40, 7, 5.0), (150, 30, 5.0), (60, 90, 5.0), (80, 10, 25.0)])
def test_plan_equals_pot_sinkhorn_log(n, k, lam):
    rng = np.random.default_rng(n + k)
    cost = rng.uniform(0, 4, size=(n, k))
    a, b = _uniform(n, k)
    ref = ot.sinkhorn(
        a, b, cost, reg=1 / lam, method="sinkhorn_log", numItermax=100000, stopThr=1e-14, warn=False
    )
    res = sinkhorn_log(torch.from_numpy(cost), lam, max_iter=100000, tol=1e-12)
    plan = transport_plan(torch.from_numpy(cost), lam, res).numpy()
    assert res.converged
    np.testing.assert_allclose(plan, ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(plan * n * k, ref * n * k, rtol=0, atol=1e-6)  # relative scale
    np.testing.assert_allclose(plan.sum(1), a, rtol=1e-9)


def _official_sinkhorn(cost, lam, max_iter, tol):
    """SALCR's official ``sinkhorn_solver`` (salcr_reference.md Sec. 5.1), restated with
    numpy: b starts uniform; a, then b; the check every 10 iterations; stop at err <= tol."""
    n, k = cost.shape
    km = np.exp(-lam * cost)
    b = np.ones(k) / k
    err, it = np.inf, 0
    while err > tol and it < max_iter:
        a = (1.0 / n) / (km @ b)
        b_new = (1.0 / k) / (km.T @ a)
        if it % 10 == 0:
            err = np.nansum(np.abs(b / b_new - 1))
        b = b_new
        it += 1
    return a[:, None] * km * b[None, :], it


def test_iterates_equal_pot_at_any_iteration_count():
    rng = np.random.default_rng(1)
    cost = rng.uniform(0, 4, size=(50, 12))
    a, b = _uniform(50, 12)
    for iters in (1, 3, 17):
        ref = ot.sinkhorn(
            a, b, cost, reg=0.2, method="sinkhorn_log", numItermax=iters, stopThr=0.0, warn=False
        )
        res = sinkhorn_log(torch.from_numpy(cost), 5.0, max_iter=iters, tol=0.0)
        np.testing.assert_allclose(
            transport_plan(torch.from_numpy(cost), 5.0, res).numpy(), ref, rtol=1e-10, atol=0
        )


def test_official_order_iterates_equal_the_official_solver_at_any_iteration_count():
    rng = np.random.default_rng(1)
    cost = rng.uniform(0, 4, size=(50, 12))
    for iters in (1, 3, 17):
        ref, _ = _official_sinkhorn(cost, 5.0, iters, 0.0)
        res = sinkhorn_log(
            torch.from_numpy(cost), 5.0, max_iter=iters, tol=0.0, official_order=True
        )
        np.testing.assert_allclose(
            transport_plan(torch.from_numpy(cost), 5.0, res).numpy(), ref, rtol=1e-10, atol=0
        )


def test_official_order_gives_the_official_labels_at_its_tolerance():
    """Audits M and N (session 16): in POT's order the solver stops at tol 0.1 on another
    plan than SALCR's, and a few labels differ (28 of 200 random problems had one);
    ``official_order`` (``otla_dual.official_solver``) reproduces the official ones."""
    for seed in range(60):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(40, 8))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        c = rng.normal(size=(5, 8)) * 0.4
        cost = ((x[:, None] - c[None]) ** 2).sum(-1)
        ref, iters = _official_sinkhorn(cost, 5.0, 500, 0.1)
        res = sinkhorn_log(torch.from_numpy(cost), 5.0, max_iter=500, tol=0.1, official_order=True)
        plan = transport_plan(torch.from_numpy(cost), 5.0, res).numpy()
        assert res.n_iter == iters, seed
        np.testing.assert_array_equal(plan.argmax(1), ref.argmax(1), err_msg=f"seed {seed}")
        np.testing.assert_allclose(plan, ref, rtol=1e-9, atol=0)
    # through the associator: its labels are the plan's row argmax
    x = torch.from_numpy(np.random.default_rng(7).normal(size=(40, 8)))
    c = torch.from_numpy(np.random.default_rng(8).normal(size=(5, 8)) * 0.4)
    cost = squared_distances(x, c).double().numpy()
    labels, _ = OTLADual(max_iter=500, tol=0.1, official_solver=True)._solve(x, c)
    np.testing.assert_array_equal(labels, _official_sinkhorn(cost, 5.0, 500, 0.1)[0].argmax(1))


def test_plan_equals_pot_standard_sinkhorn_where_it_does_not_underflow():
    rng = np.random.default_rng(2)
    cost = rng.uniform(0, 4, size=(70, 9))
    a, b = _uniform(70, 9)
    ref = ot.sinkhorn(a, b, cost, reg=0.2, numItermax=100000, stopThr=1e-14, warn=False)
    res = sinkhorn_log(torch.from_numpy(cost), 5.0, max_iter=100000, tol=1e-12)
    np.testing.assert_allclose(
        transport_plan(torch.from_numpy(cost), 5.0, res).numpy(), ref, rtol=0, atol=1e-6
    )


def test_huge_lambda_does_not_underflow():
    # exp(-1000 * 4) is 0 in float64: the plain Sinkhorn divides by zero, the log domain not
    rng = np.random.default_rng(3)
    cost = torch.from_numpy(rng.uniform(0, 4, size=(30, 6)))
    res = sinkhorn_log(cost, 1000.0, max_iter=3000, tol=0.05)
    plan = transport_plan(cost, 1000.0, res)
    assert torch.isfinite(plan).all() and res.converged
    np.testing.assert_allclose(plan.sum(1).numpy(), 1 / 30, rtol=1e-9)
    np.testing.assert_allclose(plan.sum(0).numpy(), 1 / 6, rtol=0.05)
    # the official order ends on the column update: columns exact, rows within the tolerance
    res = sinkhorn_log(cost, 1000.0, max_iter=3000, tol=0.05, official_order=True)
    plan = transport_plan(cost, 1000.0, res)
    assert torch.isfinite(plan).all() and res.converged
    np.testing.assert_allclose(plan.sum(0).numpy(), 1 / 6, rtol=1e-9)
    np.testing.assert_allclose(plan.sum(1).numpy(), 1 / 30, rtol=0.05)


def test_nan_cost_is_refused_before_solving():
    cost = torch.ones(4, 3, dtype=torch.float64)
    cost[1, 2] = float("nan")
    with pytest.raises(FeatureFileError, match="cost matrix hold NaN or inf in 1 row"):
        sinkhorn_log(cost)
    with pytest.raises(ConfigError, match="lambda_ot > 0"):
        sinkhorn_log(torch.ones(2, 2), 0.0)


def test_otla_labels_are_the_argmax_of_the_pot_plan_rows():
    fv, gv, fr, gr = gaussian_modalities(seed=4, ids=6, per_id=8, d=16, noise=1.0, shift=1.0)
    out = OTLADual(tol=1e-10, max_iter=100000).associate(fv, gv, fr, gr)
    nv = len(gv)
    for x, other_x, other_lab, got in (
        (fv, fr, gr, out.labels_in_r[:nv]),
        (fr, fv, gv, out.labels_in_v[nv:]),
    ):
        protos = np.stack([other_x[other_lab == c].astype(np.float64).mean(0) for c in range(6)])
        cost = squared_distances(torch.from_numpy(x), torch.from_numpy(protos).float()).double()
        a, b = _uniform(len(x), 6)
        plan = ot.sinkhorn(
            a,
            b,
            cost.numpy(),
            reg=0.2,
            method="sinkhorn_log",
            numItermax=100000,
            stopThr=1e-12,
            warn=False,
        )
        np.testing.assert_array_equal(got, plan.argmax(1))
    # the easy case is solved: every instance finds its own identity across modalities
    np.testing.assert_array_equal(out.labels_in_r[:nv], gv)
    np.testing.assert_array_equal(out.labels_in_v[nv:], gr)


def test_intra_relabel_follows_the_official_code():
    fv, gv, fr, gr = gaussian_modalities(seed=5, ids=4, per_id=6, d=16, noise=0.8)
    noisy = gv.copy()
    noisy[:3] = (noisy[:3] + 1) % 4  # three mislabelled visible instances
    out = OTLADual(intra_relabel=True).associate(fv, noisy, fr, gr)
    cents = np.stack([fv[noisy == c].astype(np.float64).mean(0) for c in range(4)])
    np.testing.assert_array_equal(out.labels_in_v[: len(gv)], (fv @ cents.T).argmax(1))


def test_features_whose_distances_overflow_float32_are_named_so():
    """Audit H (session 16): finite float32 features with norms near 1e20 overflowed in the
    cost, reported as a NaN/inf cost with advice about a diverged model."""
    fv, gv, fr, gr = gaussian_modalities(seed=4, ids=3, per_id=4, d=8)
    big = torch.from_numpy(fv).float() * 1e20
    with pytest.raises(FeatureFileError, match=r"overflow torch.float32 \(feature norms reach"):
        OTLADual().associate(big, gv, torch.from_numpy(fr).float(), gr)


def test_intra_relabel_relabels_the_infrared_side_too():
    fv, gv, fr, gr = gaussian_modalities(seed=5, ids=4, per_id=6, d=16, noise=0.8)
    noisy = gr.copy()
    noisy[:3] = (noisy[:3] + 1) % 4  # three mislabelled infrared instances
    out = OTLADual(intra_relabel=True).associate(fv, gv, fr, noisy)
    cents = np.stack([fr[noisy == c].astype(np.float64).mean(0) for c in range(4)])
    np.testing.assert_array_equal(out.labels_in_r[len(gv) :], (fr @ cents.T).argmax(1))
