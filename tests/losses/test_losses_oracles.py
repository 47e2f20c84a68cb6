"""Edges of cluster_nce, the DCL/DAGL/ACCL/MBCCM losses, the batch-hard triplet and GeM.

Every expected value is an independent computation: a float64 loop over the rows
(SALCR Eq. 1-2, Eq. 7; Hermans et al. Eq. 5), the KL written with ``math``, or
``torch.autograd.gradcheck``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_oracles import momentum_loop, nce_mean, partner_context

from uvireid.errors import ConfigError
from uvireid.losses import (
    AlternateCrossContrastLoss,
    ClusterContrastLoss,
    ModalityAgnosticLoss,
    StepOutputs,
    StepTargets,
    TripletLoss,
    symmetric_kl,
)
from uvireid.losses.cluster_contrast import cluster_nce
from uvireid.losses.triplet import batch_hard_triplet_masked
from uvireid.models.pooling import GeM, gem

TAU = 0.05


def _nce_loop(x, memory, labels, tau):
    """Mean over rows with a label >= 0 of -log softmax(<x^, M_k> / tau)[y], in float64."""
    return float(nce_mean(x.double(), memory.double(), [int(y) for y in labels], tau))


def _rows(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def _unit(n, d, seed):
    return F.normalize(_rows(n, d, seed), dim=1)


# ----------------------------------------------------------------------------- cluster_nce


def test_cluster_nce_part_memory_without_clusters_is_zero_with_a_gradient_path():
    """(P, 0, d) part memories (a modality without clusters this epoch) give 0 like the
    (0, d) global one: the check is on the cluster axis (-2), not on the first axis,
    which for part memories holds the parts."""
    x = _rows(4, 3 * 5, 0).reshape(4, 3, 5).requires_grad_(True)
    out = cluster_nce(
        x, torch.zeros(3, 0, 5, dtype=torch.float64), torch.tensor([0, 1, -1, 0]), TAU
    )
    assert out.shape == () and out.item() == 0.0
    out.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_cluster_nce_passes_no_gradient_into_a_memory_that_requires_one():
    """The memory is a constant of the loss (Cluster-Contrast: gradient w.r.t. f only), even
    when the caller's memory tensor requires a gradient."""
    x = _rows(5, 4, 1).requires_grad_(True)
    memory = _unit(3, 4, 2).requires_grad_(True)
    labels = torch.tensor([0, 2, 1, -1, 2])
    out = cluster_nce(x, memory, labels, TAU)
    assert math.isclose(
        out.item(),
        _nce_loop(x.detach(), memory.detach(), labels.tolist(), TAU),
        rel_tol=1e-9,
    )
    out.backward()
    assert memory.grad is None and x.grad is not None


def test_cluster_nce_casts_the_memory_to_the_features_dtype():
    """float64 features against a float32 memory (a checkpointed buffer): the product runs in
    the features' dtype, and the value is the loop's on the float32 prototypes."""
    x = _rows(4, 6, 3)
    memory = _unit(3, 6, 4).float()
    labels = torch.tensor([2, 0, 1, 1])
    out = cluster_nce(x, memory, labels, TAU)
    assert out.dtype == torch.float64
    assert math.isclose(
        out.item(), _nce_loop(x, memory.double(), labels.tolist(), TAU), rel_tol=1e-9
    )


def test_cluster_nce_refuses_a_label_past_the_memory():
    """A label >= K is a caller's error: it raises rather than scoring a wrong prototype."""
    with pytest.raises(ConfigError, match=r"label 2 is outside the memory's 2 clusters"):
        cluster_nce(_rows(3, 4, 5), _unit(2, 4, 6), torch.tensor([0, 2, 1]), TAU)


def test_cluster_nce_gradcheck_float64_with_parts_and_unlabelled_rows():
    memory = _unit(2 * 3, 4, 7).reshape(2, 3, 4)
    labels = torch.tensor([0, -1, 2, 1, 2])
    x = _rows(5, 2 * 4, 8).reshape(5, 2, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: cluster_nce(t, memory, labels, TAU), (x,))
    # and the value is the mean of the two parts' loops (labelled rows only)
    want = sum(_nce_loop(x[:, p].detach(), memory[p], labels.tolist(), TAU) for p in range(2)) / 2
    assert math.isclose(cluster_nce(x, memory, labels, TAU).item(), want, rel_tol=1e-9)


# ----------------------------------------------------------------------------- DCL / ACCL / MBCCM


def _ctx(epoch=0, d=5):
    fv, fr = _unit(9, d, 11), _unit(8, d, 12)
    init_v = np.array([0, 1, 2, 0, 1, 2, 0, 1, -1])
    init_r = np.array([0, 1, 0, 1, 0, 1, 1, -1])
    v2r, r2v = {0: 0, 1: 1, 2: -1, -1: -1}, {0: 0, 1: 2, -1: -1}
    return partner_context(fv, fr, init_v, init_r, v2r, r2v, epoch)


def _step(seed=13, d=5):
    fv, fa, fr = _rows(4, d, seed), _rows(4, d, seed + 1), _rows(4, d, seed + 2)
    t = StepTargets(
        vis_in_v=torch.tensor([0, 0, 1, 2]),
        vis_in_r=torch.tensor([0, 0, 1, -1]),
        ir_in_r=torch.tensor([1, 1, 0, -1]),
        ir_in_v=torch.tensor([2, 2, 0, -1]),
        idx_v=torch.arange(4),
        idx_r=torch.arange(4),
    )
    return StepOutputs(fv, fa, fr), t


def test_dcl_ca_joint_update_follows_the_joint_batch_order():
    """With ca_joint (ADCA/PGM's one call over [f^v; f^a]) the visible memory is updated in
    that batch's order, [f^v; f^a]; without it in the reference's backward order [f^a; f^v].
    Two rows per label make the order show (mu = 0.5)."""
    for joint, order in ((True, "va"), (False, "av")):
        loss = ClusterContrastLoss(momentum=0.5, ca_joint=joint)
        ctx = _ctx()
        loss.reset(ctx)
        start = loss.memory_v.features.clone()
        out, t = _step()
        loss.update(out, t)
        views = {"v": out.feat_v, "a": out.feat_a}
        feats = torch.cat([views[c] for c in order])
        want = momentum_loop(start, feats, torch.cat([t.vis_in_v, t.vis_in_v]), 0.5)
        torch.testing.assert_close(loss.memory_v.features, want, rtol=1e-9, atol=1e-12)


def test_dcl_hard_updates_with_the_least_similar_row_of_each_label():
    """hard: each prototype takes only its batch's least similar row (PGM stage 2)."""
    loss = ClusterContrastLoss(momentum=0.5, hard=True, use_ca=False)
    loss.reset(_ctx())
    start_v = loss.memory_v.features.clone()
    out, t = _step()
    loss.update(out, t)
    want = start_v.clone()
    for y in t.vis_in_v.unique().tolist():
        rows = [i for i in range(4) if int(t.vis_in_v[i]) == y]
        sims = [float(F.normalize(out.feat_v[i], dim=0) @ start_v[y]) for i in rows]
        i = rows[int(np.argmin(sims))]
        want = momentum_loop(want, out.feat_v[i : i + 1], [y], 0.5)
    torch.testing.assert_close(loss.memory_v.features, want, rtol=1e-9, atol=1e-12)


def test_accl_update_writes_the_cross_rows_before_the_intra_rows():
    """PGM's cross term is its last memory call, so its update runs first: on an odd epoch
    the IR rows (in their visible labels) go into M^v before the visible views."""
    loss = AlternateCrossContrastLoss(momentum=0.5, use_ca=False)
    loss.reset(_ctx(epoch=1))
    start_v = loss.memory_v.features.clone()
    out, t = _step()
    loss.update(out, t)
    want = momentum_loop(start_v, out.feat_r, t.ir_in_v, 0.5)
    want = momentum_loop(want, out.feat_v, t.vis_in_v, 0.5)
    torch.testing.assert_close(loss.memory_v.features, want, rtol=1e-9, atol=1e-12)


def test_accl_cross_term_without_the_ca_view_uses_the_original_rows_only():
    """use_ca false on an even epoch: the visible -> IR cross term and its update take f^v
    only (one row per image), never the CA view."""
    loss = AlternateCrossContrastLoss(momentum=0.5, use_ca=False, cross_weight=1.0)
    loss.reset(_ctx(epoch=0))
    start_r = loss.memory_r.features.clone()
    mv = loss.memory_v.features.clone()
    out, t = _step()
    got = loss(out, t)
    want = (
        _nce_loop(out.feat_v, mv, t.vis_in_v.tolist(), TAU)
        + _nce_loop(out.feat_r, start_r, t.ir_in_r.tolist(), TAU)
        + _nce_loop(out.feat_v, start_r, t.vis_in_r.tolist(), TAU)
    )
    assert math.isclose(got.item(), want, rel_tol=1e-9)
    loss.update(out, t)
    want_r = momentum_loop(start_r, out.feat_v, t.vis_in_r, 0.5)
    want_r = momentum_loop(want_r, out.feat_r, t.ir_in_r, 0.5)
    torch.testing.assert_close(loss.memory_r.features, want_r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bad", [-0.25, float("nan")])
def test_accl_refuses_a_negative_or_nan_cross_weight(bad):
    from uvireid.errors import ConfigError

    with pytest.raises(ConfigError, match="cross_weight"):
        AlternateCrossContrastLoss(cross_weight=bad)


def test_modality_agnostic_memories_update_in_batch_order_f_r_f_a_f_v():
    """MBCCM's agnostic memories: plain (unshuffled) updates, in its backward's order
    f^r, f^a, f^v; M^v by update_intra's [f^a; f^v] (one call per view in MBCCM)."""
    loss = ModalityAgnosticLoss(momentum=0.5)
    loss.reset(_ctx())
    mv, mva, mra = (m.features.clone() for m in (loss.memory_v, loss.memory_va, loss.memory_ra))
    out, t = _step()
    loss.update(out, t)
    z = torch.cat([out.feat_r, out.feat_a, out.feat_v])
    torch.testing.assert_close(
        loss.memory_va.features,
        momentum_loop(mva, z, torch.cat([t.ir_in_v, t.vis_in_v, t.vis_in_v]), 0.5),
        rtol=1e-9,
        atol=1e-12,
    )
    torch.testing.assert_close(
        loss.memory_ra.features,
        momentum_loop(mra, z, torch.cat([t.ir_in_r, t.vis_in_r, t.vis_in_r]), 0.5),
        rtol=1e-9,
        atol=1e-12,
    )
    torch.testing.assert_close(
        loss.memory_v.features,
        momentum_loop(mv, torch.cat([out.feat_a, out.feat_v]), torch.cat([t.vis_in_v] * 2), 0.5),
        rtol=1e-9,
        atol=1e-12,
    )


# ----------------------------------------------------------------------------- symmetric KL


def _skl_exact(lp, lq):
    """Mean over rows of (KL(p||q) + KL(q||p)) / 2 by math, in the log domain."""
    out = []
    for a, b in zip(lp.tolist(), lq.tolist()):
        la = [v - max(a) - math.log(sum(math.exp(u - max(a)) for u in a)) for v in a]
        lb = [v - max(b) - math.log(sum(math.exp(u - max(b)) for u in b)) for v in b]
        out.append(0.5 * sum((math.exp(x) - math.exp(y)) * (x - y) for x, y in zip(la, lb)))
    return sum(out) / len(out)


def test_symmetric_kl_exact_at_logits_spanning_a_thousand_is_finite_and_exact():
    """eps = 0 is the exact KL through log-softmax: probabilities that underflow to 0 even
    in float64 (e^-1000) still have finite logs (softmax clamped at 0 then logged gives
    -inf and an infinite term; a floor on the log-probabilities a wrong value)."""
    lp = torch.tensor([[0.0, 1000.0, -300.0], [50.0, -50.0, 0.0]], dtype=torch.float64)
    lq = torch.tensor([[10.0, 980.0, 0.0], [-40.0, 45.0, 1.0]], dtype=torch.float64)
    got = symmetric_kl(lp, lq, eps=0.0)
    assert math.isfinite(got.item())
    assert math.isclose(got.item(), _skl_exact(lp, lq), rel_tol=1e-9)


def test_symmetric_kl_gradcheck_on_both_sides():
    """Both predictions carry gradients (MBCCM's consistency term trains both)."""
    lp = _rows(2, 3, 21).requires_grad_(True)
    lq = _rows(2, 3, 22).requires_grad_(True)
    for eps in (0.0, 1e-12):
        assert torch.autograd.gradcheck(lambda a, b, e=eps: symmetric_kl(a, b, e), (lp, lq))
    symmetric_kl(lp, lq).backward()
    assert lq.grad is not None and float(lq.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------- batch-hard triplet


def _triplet_loop(feat, labels, margin):
    total, count = 0.0, 0
    f = feat.tolist()
    for i, yi in enumerate(labels):
        if yi < 0:
            continue
        dist = [math.dist(f[i], f[j]) for j in range(len(labels))]
        pos = [dist[j] for j, yj in enumerate(labels) if j != i and yj == yi]
        neg = [dist[j] for j, yj in enumerate(labels) if yj >= 0 and yj != yi]
        if pos and neg:
            gap = max(pos) - min(neg)
            soft = max(gap, 0.0) + math.log1p(math.exp(-abs(gap)))  # softplus, stable
            total += soft if margin is None else max(0.0, gap + margin)
            count += 1
    return total / max(count, 1), count


def test_batch_hard_keeps_float64_precision_of_nearby_rows():
    """Rows 1e-6 apart on a common offset of 1e3: float64 distances (the loop's), not a
    float32 product's, whose rounding (about 6e-5 here) would swamp the gaps."""
    base = _rows(6, 3, 31) * 1e-6 + 1e3
    labels = [0, 0, 1, 1, 2, 2]
    got, n = batch_hard_triplet_masked(base, torch.tensor(labels), margin=0.0)
    want, count = _triplet_loop(base, labels, 0.0)
    assert int(n) == count
    assert math.isclose(got.item(), want, rel_tol=1e-6, abs_tol=1e-15)
    assert got.item() > 0  # the gaps are of the scale of the rows' spread


def test_batch_hard_at_distances_of_a_million():
    """No finite sentinel caps the distances: pooled features far apart (distances ~1e6)
    still give the loop's hardest negative, for the hinge and the soft margin."""
    feat = _rows(6, 3, 35) * 1e6
    labels = [0, 0, 1, 1, 2, 2]
    for margin in (0.3, None):
        got, n = batch_hard_triplet_masked(feat, torch.tensor(labels), margin)
        want, count = _triplet_loop(feat, labels, margin)
        assert int(n) == count == 6
        assert math.isclose(got.item(), want, rel_tol=1e-9, abs_tol=1e-12)


def test_batch_hard_gradcheck_float64():
    feat = _rows(7, 3, 32).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 1, -1, 2])
    assert torch.autograd.gradcheck(lambda t: batch_hard_triplet_masked(t, labels, 0.3)[0], (feat,))
    assert torch.autograd.gradcheck(
        lambda t: batch_hard_triplet_masked(t, labels, None)[0], (feat,)
    )


def test_batch_hard_single_row_is_zero_with_a_gradient_path():
    feat = _rows(1, 3, 33).requires_grad_(True)
    loss, count = batch_hard_triplet_masked(feat, torch.zeros(1, dtype=torch.long), 0.3)
    assert loss.item() == 0.0 and int(count) == 0
    loss.backward()
    assert torch.equal(feat.grad, torch.zeros_like(feat))


def test_triplet_with_a_modality_without_rows_is_the_other_groups_loss():
    """A modality without any cluster this epoch contributes no image to the batch (the
    identity sampler; the trainer then hands pool_r of 0 rows, see
    tests/engine/test_trainer_branches_edges.py). batch_hard_triplet_masked's documented
    result with no valid anchor is 0 with a gradient path, so the loss is the visible
    group's (not an IndexError from amax over an empty dimension)."""
    pv = _rows(4, 3, 34).requires_grad_(True)
    empty = torch.zeros(0, 3, dtype=torch.float64)
    y, none = torch.tensor([0, 0, 1, 1]), torch.zeros(0, dtype=torch.long)
    loss, count = batch_hard_triplet_masked(empty, none, 0.3)
    assert loss.item() == 0.0 and int(count) == 0
    out = StepOutputs(pv, pv, empty, {}, pv, pv, empty)
    t = StepTargets(y, torch.full_like(y, -1), none, none, torch.arange(4), none)
    want, _ = _triplet_loop(torch.cat([pv, pv]).detach(), [0, 0, 1, 1] * 2, 0.3)
    got = TripletLoss(0.3)(out, t)
    assert math.isclose(got.item(), want, rel_tol=1e-9)
    got.backward()
    assert pv.grad is not None


# ----------------------------------------------------------------------------- GeM


def test_gem_gradient_reaches_a_learnable_p():
    """gradcheck of gem in x and p (float64): d/dp flows through both the power and the
    1/p root (a float(p) in the root would cut it)."""
    x = (_rows(2 * 3 * 2 * 2, 1, 41).abs() + 0.1).reshape(2, 3, 2, 2).requires_grad_(True)
    p = torch.tensor([2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gem(a, b), (x, p))
    m = GeM(3.0, learnable=True).double()
    m(x).sum().backward()
    assert m.p.grad is not None and float(m.p.grad.abs()) > 0


def test_gem_fixed_p_load_leaves_the_callers_state_dict_alone(caplog):
    """A fixed p keeps its own value on load (and warns), without writing it into the
    caller's state dict (which may be the checkpoint that other modules load next)."""
    m = GeM(3.0)
    sd = {"p": torch.tensor([5.0])}
    with caplog.at_level(logging.WARNING, logger="uvireid.models.pooling"):
        m.load_state_dict(sd)
    assert float(m.p) == 3.0
    assert float(sd["p"]) == 5.0
    assert any("not the checkpoint's 5" in r.getMessage() for r in caplog.records)


def test_gem_loading_its_own_p_says_nothing(caplog):
    """The warning is for a p that differs: a checkpoint of the same p, even in float64,
    loads silently."""
    m = GeM(3.0)
    with caplog.at_level(logging.WARNING, logger="uvireid.models.pooling"):
        m.load_state_dict({"p": torch.tensor([3.0], dtype=torch.float64)})
        m.load_state_dict(GeM(3.0).state_dict())
    assert not caplog.records
    assert float(m.p) == 3.0


def test_gem_keeps_the_input_dtype_and_equals_the_formula():
    """float32 in, float32 out (p's buffer is float32), value by the formula."""
    x = torch.rand(2, 3, 4, 5) + 0.01
    out = GeM(3.0)(x)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    want = torch.tensor(
        [
            [(sum(float(v) ** 3 for v in x[b, c].flatten()) / 20) ** (1 / 3) for c in range(3)]
            for b in range(2)
        ]
    )
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-7)
    # non-contiguous input (channels-last view) pools the same
    xt = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not xt.is_contiguous()
    torch.testing.assert_close(GeM(3.0)(xt), out)
