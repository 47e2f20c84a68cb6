"""PGM's alternate cross-memory loss and MBCCM's modality-agnostic loss against naive
re-statements of their equations (shared/notes/peers.md Sec. 2.2 and 3.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from loss_oracles import (
    centroid_loop,
    momentum_loop,
    nce_mean,
    partner_context,
    softmax_row,
    unit_rows,
)

from uvireid.errors import ConfigError
from uvireid.losses import (
    AlternateCrossContrastLoss,
    ModalityAgnosticLoss,
    StepOutputs,
    StepTargets,
    symmetric_kl,
)

TAU = 0.05


def _context(epoch=0):
    fv, fr = unit_rows(12, 5, seed=1), unit_rows(10, 5, seed=2)
    init_v = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, -1, 0, 1])
    init_r = np.array([0, 1, 0, 1, 0, 1, -1, 0, 1, 1])
    # partner labels: visible clusters 0,1,2 -> IR 0,1,-1 ; IR clusters 0,1 -> visible 0,1
    v2r = {0: 0, 1: 1, 2: -1, -1: -1}
    r2v = {0: 0, 1: 1, -1: -1}
    return partner_context(fv, fr, init_v, init_r, v2r, r2v, epoch)


def _batch(seed=3):
    g = torch.Generator().manual_seed(seed)
    fv = torch.randn(4, 5, generator=g, dtype=torch.float64)
    fa = torch.randn(4, 5, generator=g, dtype=torch.float64)
    fr = torch.randn(4, 5, generator=g, dtype=torch.float64)
    t = StepTargets(
        vis_in_v=torch.tensor([0, 2, 1, -1]),
        vis_in_r=torch.tensor([0, -1, 1, -1]),
        ir_in_r=torch.tensor([1, 0, -1, 1]),
        ir_in_v=torch.tensor([2, 1, -1, 0]),  # another space than ir_in_r: a swap shows
        idx_v=torch.arange(4),
        idx_r=torch.arange(4),
    )
    return fv, fa, fr, t


def _leaves(*xs):
    return [x.clone().requires_grad_(True) for x in xs]


@pytest.mark.parametrize("epoch", [0, 1, 2, 3])
def test_accl_value_gradient_and_update_follow_pgm(epoch):
    ctx = _context(epoch)
    loss = AlternateCrossContrastLoss(temperature=TAU, momentum=0.2, cross_weight=0.25)
    loss.reset(ctx)
    mv = centroid_loop(ctx.feats_v, ctx.init_v, 3)
    mr = centroid_loop(ctx.feats_r, ctx.init_r, 2)
    fv, fa, fr, t = _batch()
    a = _leaves(fv, fa, fr)
    b = _leaves(fv, fa, fr)
    ours = loss(StepOutputs(*a), t)
    yv, yr = t.vis_in_v.tolist(), t.ir_in_r.tolist()
    ref = nce_mean(b[0], mv, yv, TAU) + nce_mean(b[1], mv, yv, TAU) + nce_mean(b[2], mr, yr, TAU)
    odd = epoch % 2 == 1
    if odd:  # PGM: odd epochs, IR features against the visible memory with i2r labels
        ref = ref + 0.25 * nce_mean(b[2], mv, t.ir_in_v.tolist(), TAU)
    else:  # even epochs, both visible views against the IR memory with r2i labels
        zv = torch.cat([b[0], b[1]])
        ref = ref + 0.25 * nce_mean(zv, mr, t.vis_in_r.tolist() * 2, TAU)
    assert torch.allclose(ours, ref, rtol=1e-10)
    ours.backward()
    ref.backward()
    for x, y in zip(a, b):
        assert torch.allclose(x.grad, y.grad, rtol=1e-8, atol=1e-12)
    # update: the cross rows first (cross_update; PGM's cross term is its last memory call,
    # whose backward autograd runs first), then intra (visible: f^a then f^v, one memory
    # call per view, last call first; IR)
    loss.update(StepOutputs(fv, fa, fr), t)
    exp_v, exp_r = mv, mr
    if odd:
        exp_v = momentum_loop(exp_v, fr, t.ir_in_v.tolist(), 0.2)
    else:
        exp_r = momentum_loop(exp_r, torch.cat([fv, fa]), t.vis_in_r.tolist() * 2, 0.2)
    exp_v = momentum_loop(exp_v, torch.cat([fa, fv]), yv * 2, 0.2)
    exp_r = momentum_loop(exp_r, fr, yr, 0.2)
    assert torch.allclose(loss.memory_v.features, exp_v, atol=1e-12)
    assert torch.allclose(loss.memory_r.features, exp_r, atol=1e-12)


def test_accl_without_cross_update_leaves_the_other_memory_alone_and_both_schedule():
    ctx = _context(1)
    loss = AlternateCrossContrastLoss(cross_update=False, schedule="both", use_ca=False)
    loss.reset(ctx)
    assert loss.directions() == (True, True)
    mv = loss.memory_v.features.clone()
    fv, fa, fr, t = _batch()
    loss.update(StepOutputs(fv, fa, fr), t)
    assert torch.allclose(loss.memory_v.features, momentum_loop(mv, fv, t.vis_in_v.tolist(), 0.1))
    with pytest.raises(ConfigError, match="schedule must be 'alternate' or 'both'"):
        AlternateCrossContrastLoss(schedule="odd")


def _skl_loop(a, b, eps=1e-12):
    """Mean over rows of (KL(p||q) + KL(q||p)) / 2 (MBCCM's KLDivLoss: (loss1 + loss2) / 2),
    softmax by hand, each probability clamped at ``eps`` before the logs as there."""
    rows = []
    for i in range(a.shape[0]):
        p = [pj.clamp(min=eps) for pj in softmax_row(list(a[i]))]
        q = [qj.clamp(min=eps) for qj in softmax_row(list(b[i]))]
        rows.append(
            (
                sum(pj * torch.log(pj / qj) for pj, qj in zip(p, q))
                + sum(qj * torch.log(qj / pj) for pj, qj in zip(p, q))
            )
            / 2
        )
    return sum(rows) / len(rows)


def _check_symmetric_kl_against_the_loop(a, b):
    """symmetric_kl (default clamp) equals :func:`_skl_loop` in value and in both inputs'
    gradients; returns its value."""
    a1, b1 = _leaves(a, b)
    a2, b2 = _leaves(a, b)
    ours, ref = symmetric_kl(a1, b1), _skl_loop(a2, b2)
    assert torch.allclose(ours, ref, rtol=1e-10)
    ours.backward()
    ref.backward()
    assert torch.allclose(a1.grad, a2.grad, atol=1e-12) and torch.allclose(b1.grad, b2.grad)
    return ours.detach()


def test_symmetric_kl_equals_the_definition():
    a, b = unit_rows(3, 4, seed=5) * 7, unit_rows(3, 4, seed=6) * 3
    _check_symmetric_kl_against_the_loop(a, b)
    assert float(symmetric_kl(a, a)) == pytest.approx(0.0, abs=1e-14)
    exact = symmetric_kl(a, b, eps=0.0)  # log-softmax: no clamp reached at these logits
    assert torch.allclose(exact, _skl_loop(a, b, eps=0.0), rtol=1e-10)


def test_symmetric_kl_clamps_probabilities_as_mbccm_at_large_logits():
    """Audit R (session 17): MBCCM's plain logits of the raw feature (norm ~45, tau 0.05)
    span hundreds; its KLDivLoss clamps the probabilities at 1e-12, the exact KL does not
    (17x the value at that scale)."""
    a, b = unit_rows(3, 6, seed=5) * 900, unit_rows(3, 6, seed=6) * 300
    ours = _check_symmetric_kl_against_the_loop(a, b)
    assert float(symmetric_kl(a, b, eps=0.0)) > 3 * float(ours)  # the clamp is reached


def _mem_logits(x, m):
    """normalize(x) M^T / tau, by rows."""
    return torch.stack([x[i] / x[i].norm() for i in range(x.shape[0])]) @ m.T / TAU


@pytest.mark.parametrize("scale", [1.0, 45.0])  # 45: a train-mode BN-neck feature's norm
def test_modality_agnostic_value_gradient_and_update_follow_mbccm(scale):
    ctx = _context()
    loss = ModalityAgnosticLoss(temperature=TAU, momentum=0.1, alpha=0.9, beta=0.5)
    loss.reset(ctx)
    mv = centroid_loop(ctx.feats_v, ctx.init_v, 3)
    mr = centroid_loop(ctx.feats_r, ctx.init_r, 2)
    fv, fa, fr, t = _batch()
    fv, fa, fr = fv * scale, fa * scale, fr * scale
    a = _leaves(fv, fa, fr)
    b = _leaves(fv, fa, fr)
    ours = loss(StepOutputs(*a), t)
    # M^va = M^v and M^ra = M^r at the epoch start
    yv = {0: t.vis_in_v, 1: t.vis_in_v, 2: t.ir_in_v}
    yr = {0: t.vis_in_r, 1: t.vis_in_r, 2: t.ir_in_r}
    l_ma = sum(
        nce_mean(b[i], mv, yv[i].tolist(), TAU) + nce_mean(b[i], mr, yr[i].tolist(), TAU)
        for i in range(3)
        if (yv[i] >= 0).any()
    )
    l_cc = 0
    for i in (0, 1):  # visible views
        kv, kr = yv[i] >= 0, yr[i] >= 0
        x = b[i]
        l_cc = l_cc + _skl_loop(_mem_logits(x[kv], mv), _mem_logits(x[kv], mv))
        l_cc = l_cc + _skl_loop(_mem_logits(x[kr], mr), x[kr] @ mr.T / TAU)
    kv, kr = yv[2] >= 0, yr[2] >= 0
    x = b[2]
    l_cc = l_cc + _skl_loop(_mem_logits(x[kv], mv), x[kv] @ mv.T / TAU)
    l_cc = l_cc + _skl_loop(_mem_logits(x[kr], mr), _mem_logits(x[kr], mr))
    ref = 0.9 * l_ma + 0.5 * l_cc
    assert torch.allclose(ours, ref, rtol=1e-9)
    ours.backward()
    ref.backward()
    for x, y in zip(a, b):
        assert torch.allclose(x.grad, y.grad, rtol=1e-7, atol=1e-10)
    loss.update(StepOutputs(fv, fa, fr), t)
    # MBCCM calls each memory on f^v, f^a, f^r; autograd runs the last call's update
    # first: f^r, f^a, f^v (the original visible rows last)
    z = torch.cat([fr, fa, fv])
    assert torch.allclose(
        loss.memory_va.features,
        momentum_loop(mv, z, torch.cat([yv[2], yv[1], yv[0]]).tolist(), 0.1),
        atol=1e-12,
    )
    assert torch.allclose(
        loss.memory_ra.features,
        momentum_loop(mr, z, torch.cat([yr[2], yr[1], yr[0]]).tolist(), 0.1),
        atol=1e-12,
    )
    assert torch.allclose(
        loss.memory_v.features,
        momentum_loop(mv, torch.cat([fa, fv]), yv[0].tolist() * 2, 0.1),
        atol=1e-12,
    )
    assert torch.allclose(loss.memory_r.features, momentum_loop(mr, fr, yr[2].tolist(), 0.1))
    # after the update the agnostic memories differ from the intra ones, and the
    # consistency term is no longer zero on identical logits
    assert not torch.allclose(loss.memory_va.features, loss.memory_v.features)
    assert math.isfinite(float(loss(StepOutputs(fv, fa, fr), t)))


@pytest.mark.parametrize("bad", [-1e-12, 0.5, 1.5, float("nan"), "tiny"])
def test_a_kl_clamp_that_would_flatten_the_term_is_refused(bad):
    """Audit AH (session 17): kl_eps >= 1 clamped every probability to it, and L_cc was
    exactly 0 without a word."""
    with pytest.raises(
        ConfigError, match=r"modality_agnostic: kl_eps must be a finite number in \[0.0, 0.01\]"
    ):
        ModalityAgnosticLoss(kl_eps=bad)
    ModalityAgnosticLoss(kl_eps=0.0)
