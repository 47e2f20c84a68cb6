"""Edges of the losses and memories (audit GA, session 24: a mutation test of
``uvireid/losses``; these tests killed its surviving mutants). Each test checks the code
against an independent computation written here (naive loops over rows, the spec's
formulas) or against documented behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uvireid.errors import ConfigError
from uvireid.losses import (
    AlternateCrossContrastLoss,
    ClusterContrastLoss,
    DualClusterContrastLoss,
    EpochContext,
    ModalityAgnosticLoss,
    StepOutputs,
    StepTargets,
)
from uvireid.losses.memory import centroids

TAU = 0.05


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(
        torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1
    )


def _centroid_loop(feats, labels, k):
    """Normalised mean of the rows of each label 0..k-1 (zeros when empty), by loops."""
    rows = []
    for c in range(k):
        members = [feats[i] for i in range(len(labels)) if int(labels[i]) == c]
        if not members:
            rows.append(torch.zeros(feats.shape[1], dtype=feats.dtype))
            continue
        mean = sum(members) / len(members)
        rows.append(mean / math.sqrt(float((mean * mean).sum())))
    return torch.stack(rows)


# -- centroids' range check on the labels -------------------------------------------
@pytest.mark.parametrize("bad", [-2, -5])
def test_centroids_refuse_labels_below_minus_one(bad):
    """Labels are 0..k-1 with -1 for an outlier (docstring); any other negative label is
    a caller's bug and must not be silently dropped like an outlier."""
    feats = _unit(4, 3, seed=1)
    with pytest.raises(ConfigError, match="-1 marks an outlier"):
        centroids(feats, np.array([0, 1, bad, 0]), 2)
    # -1 itself is accepted and ignored
    got = centroids(feats, np.array([0, 1, -1, 0]), 2)
    assert torch.allclose(got, _centroid_loop(feats, [0, 1, -1, 0], 2), atol=1e-12)


# -- the cluster memories start from the clusterer's partition (init_*) -------------
def _relabelled_context():
    """An epoch whose associator relabelled the targets: ``vis_in_v`` / ``ir_in_r`` differ
    from the clusterer's ``init_v`` / ``init_r`` (salcr_reference Sec. 5.2: the memories
    use the DBSCAN partition, the training targets the relabelled labels)."""
    fv, fr = _unit(9, 5, seed=2), _unit(8, 5, seed=3)
    init_v = np.array([0, 0, 1, 1, 2, 2, 0, 1, -1])
    init_r = np.array([0, 1, 0, 1, 1, 0, -1, 1])
    vis_in_v = np.array([1, 0, 2, 1, 0, 2, 2, -1, 1])  # relabelled: not init_v
    ir_in_r = np.array([1, 1, 0, 0, 1, -1, 0, 1])
    return EpochContext(
        feats_v=fv,
        feats_r=fr,
        vis_in_v=vis_in_v,
        vis_in_r=np.array([0, 1, -1, 0, 1, 1, 0, -1, 1]),
        ir_in_r=ir_in_r,
        ir_in_v=np.array([2, 0, 1, -1, 0, 1, 2, 0]),
        init_v=init_v,
        init_r=init_r,
        num_v=3,
        num_r=2,
    )


@pytest.mark.parametrize(
    "cls", [ClusterContrastLoss, DualClusterContrastLoss, AlternateCrossContrastLoss]
)
def test_cluster_memories_start_from_the_clusterers_partition(cls):
    ctx = _relabelled_context()
    loss = cls()
    loss.reset(ctx)
    want_v = _centroid_loop(ctx.feats_v, ctx.init_v, 3)
    want_r = _centroid_loop(ctx.feats_r, ctx.init_r, 2)
    assert torch.allclose(loss.memory_v.features, want_v, atol=1e-12)
    assert torch.allclose(loss.memory_r.features, want_r, atol=1e-12)
    # the relabelled targets give other centroids, so the check above can fail
    assert not torch.allclose(want_v, _centroid_loop(ctx.feats_v, ctx.vis_in_v, 3))
    assert not torch.allclose(want_r, _centroid_loop(ctx.feats_r, ctx.ir_in_r, 2))


def test_modality_agnostic_memories_start_from_the_clusterers_partition():
    ctx = _relabelled_context()
    loss = ModalityAgnosticLoss()
    loss.reset(ctx)
    want_v = _centroid_loop(ctx.feats_v, ctx.init_v, 3)
    want_r = _centroid_loop(ctx.feats_r, ctx.init_r, 2)
    for got, want in (
        (loss.memory_v.features, want_v),
        (loss.memory_va.features, want_v),
        (loss.memory_r.features, want_r),
        (loss.memory_ra.features, want_r),
    ):
        assert torch.allclose(got, want, atol=1e-12)


# -- MBCCM's consistency pairs read the agnostic memories, not the intra ones ----
def _nce_loop(x, memory, labels, tau):
    """Mean over rows with a label >= 0 of -log softmax(<x^, M_k> / tau)_y (0 when none)."""
    rows = []
    for i, y in enumerate(labels):
        if y < 0:
            continue
        xh = x[i] / math.sqrt(float((x[i] * x[i]).sum()))
        s = [(xh * memory[k]).sum() / tau for k in range(memory.shape[0])]
        rows.append(-(s[y] - torch.logsumexp(torch.stack(s), 0)))
    return sum(rows) / len(rows) if rows else torch.zeros((), dtype=x.dtype)


def _skl_loop(a, b, eps=1e-12):
    """Mean over rows of (KL(p||q) + KL(q||p)) / 2, probabilities clamped at eps."""
    out = []
    for i in range(a.shape[0]):
        p = torch.softmax(a[i], 0).clamp(min=eps)
        q = torch.softmax(b[i], 0).clamp(min=eps)
        kl_pq = sum(p[j] * torch.log(p[j] / q[j]) for j in range(len(p)))
        kl_qp = sum(q[j] * torch.log(q[j] / p[j]) for j in range(len(p)))
        out.append((kl_pq + kl_qp) / 2)
    return sum(out) / len(out)


def _mem_logits(x, m, tau=TAU):
    return torch.stack([x[i] / x[i].norm() for i in range(len(x))]) @ m.T / tau


def _mbccm_batch(seed):
    g = torch.Generator().manual_seed(seed)
    fv, fa, fr = (torch.randn(5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    t = StepTargets(
        vis_in_v=torch.tensor([0, 2, 1, -1, 0]),
        vis_in_r=torch.tensor([0, -1, 1, 1, 0]),
        ir_in_r=torch.tensor([1, 0, -1, 1, 0]),
        ir_in_v=torch.tensor([2, 1, 0, -1, 0]),
        idx_v=torch.arange(5),
        idx_r=torch.arange(5),
    )
    return fv, fa, fr, t


def test_modality_agnostic_consistency_pairs_follow_mbccm_once_the_memories_differ():
    """peers.md Sec. 3.2: L_cc pairs (RGB vs M_v)<->(RGB vs M_va), (RGB vs M_ra)<->(RGB M_r^T
    / tau), (IR vs M_va)<->(IR M_v^T / tau), (IR vs M_r)<->(IR vs M_ra). At an epoch's start
    M_va = M_v and M_ra = M_r, so a swap of an agnostic memory for an intra one shows only
    after updates: check the value then, from the loss's current memories."""
    ctx = _relabelled_context()
    loss = ModalityAgnosticLoss(temperature=TAU, momentum=0.1, alpha=0.9, beta=0.5)
    loss.reset(ctx)
    fv, fa, fr, t = _mbccm_batch(11)
    loss.update(StepOutputs(fv, fa, fr), t)
    mv, mr = loss.memory_v.features.clone(), loss.memory_r.features.clone()
    mva, mra = loss.memory_va.features.clone(), loss.memory_ra.features.clone()
    assert not torch.allclose(mva, mv) and not torch.allclose(mra, mr)  # the case at hand
    fv, fa, fr, t = _mbccm_batch(12)
    views = [
        (fv, t.vis_in_v, t.vis_in_r, True),
        (fa, t.vis_in_v, t.vis_in_r, True),
        (fr, t.ir_in_v, t.ir_in_r, False),
    ]
    l_ma = 0
    l_cc = 0
    for x, yv, yr, visible in views:
        l_ma = l_ma + _nce_loop(x, mva, yv.tolist(), TAU) + _nce_loop(x, mra, yr.tolist(), TAU)
        kv, kr = yv >= 0, yr >= 0
        if visible:
            l_cc = l_cc + _skl_loop(_mem_logits(x[kv], mv), _mem_logits(x[kv], mva))
            l_cc = l_cc + _skl_loop(_mem_logits(x[kr], mra), x[kr] @ mr.T / TAU)
        else:
            l_cc = l_cc + _skl_loop(_mem_logits(x[kv], mva), x[kv] @ mv.T / TAU)
            l_cc = l_cc + _skl_loop(_mem_logits(x[kr], mr), _mem_logits(x[kr], mra))
    ref = 0.9 * l_ma + 0.5 * l_cc
    assert torch.allclose(loss(StepOutputs(fv, fa, fr), t), ref, rtol=1e-9)


# -- a label out of range for one memory updated another -------------------------
def _momentum_loop(memory, feats, labels, mu):
    """Eq. 7 row by row: M_y <- normalize(mu M_y + (1 - mu) normalize(x)); -1 skipped."""
    mem = memory.clone()
    for x, y in zip(feats, labels):
        if y < 0:
            continue
        row = mu * mem[y] + (1 - mu) * x / x.norm()
        mem[y] = row / row.norm()
    return mem


def test_momentum_update_many_of_valid_labels_equals_the_loop_per_memory():
    """With labels in range, updating two memories together equals one loop per memory
    (Eq. 7)."""
    from uvireid.losses.memory import momentum_update_many

    mv, mr = _unit(3, 4, seed=20), _unit(2, 4, seed=21)
    xv, xr = _unit(4, 4, seed=22) * 3, _unit(3, 4, seed=23) * 2
    yv, yr = [2, 0, -1, 2], [1, 1, 0]
    want_v, want_r = _momentum_loop(mv, xv, yv, 0.1), _momentum_loop(mr, xr, yr, 0.1)
    momentum_update_many([(mv, xv, np.array(yv)), (mr, xr, np.array(yr))], 0.1)
    assert torch.allclose(mv, want_v, atol=1e-12) and torch.allclose(mr, want_r, atol=1e-12)


def test_momentum_update_many_refuses_a_label_out_of_its_memorys_range():
    """Alone, ``momentum_update`` of a 3-row memory with label 3 raised IndexError; updated
    together with a second memory (``ClusterMemory.update_together``, as DAGL, MBCCM and
    the part memories do), label 3 landed in the next memory's part of the shared label
    space and silently overwrote its row 0. Now refused, whichever memory it names."""
    from uvireid.losses.memory import momentum_update_many

    mv, mr = _unit(3, 4, seed=24), _unit(2, 4, seed=25)
    x = _unit(1, 4, seed=26)
    with pytest.raises(ValueError, match="label 3 is outside the memory's 2 rows"):
        momentum_update_many([(mv, x, np.array([0])), (mr, x, np.array([3]))], 0.1)
    mv2, mr2 = mv.clone(), mr.clone()
    with pytest.raises(ValueError, match="label 3 is outside the memory's 3 rows"):
        momentum_update_many([(mv2, x, np.array([3])), (mr2, x[:0], np.array([], int))], 0.1)
    assert torch.equal(mr2, mr) and torch.equal(mv2, mv)  # nothing updated
    with pytest.raises(ValueError, match="label -2 is outside"):
        momentum_update_many([(mv2, x, np.array([-2]))], 0.1)


# -- the instance memories hold L2-normalised rows (SALCR Sec. 7.1: I = L2n(...)) ---
def test_instance_memories_are_unit_rows_of_the_clustered_images_whatever_the_input_norm():
    from uvireid.losses import InstanceNeighbourLoss

    g = torch.Generator().manual_seed(30)
    fv = torch.randn(6, 4, generator=g, dtype=torch.float64) * 7  # not normalised
    fr = torch.randn(5, 4, generator=g, dtype=torch.float64) * 0.2
    pv = torch.randn(6, 2, 4, generator=g, dtype=torch.float64) * 3
    pr = torch.randn(5, 2, 4, generator=g, dtype=torch.float64) * 5
    init_v, init_r = np.array([0, -1, 1, 1, 0, -1]), np.array([0, 0, -1, 1, 1])
    ctx = EpochContext(
        feats_v=fv,
        feats_r=fr,
        parts_v=pv,
        parts_r=pr,
        vis_in_v=init_v,
        vis_in_r=init_v,
        ir_in_r=init_r,
        ir_in_v=init_r,
        init_v=init_v,
        init_r=init_r,
        num_v=2,
        num_r=2,
    )
    loss = InstanceNeighbourLoss(k=2, num_parts=2)
    loss.reset(ctx)
    for mem, feats, parts, init in (
        (("inst_v", "part_v"), fv, pv, init_v),
        (("inst_r", "part_r"), fr, pr, init_r),
    ):
        kept = [i for i in range(len(init)) if init[i] >= 0]
        want = torch.stack([feats[i] / feats[i].norm() for i in kept])
        want_p = torch.stack(
            [torch.stack([parts[i, p] / parts[i, p].norm() for p in range(2)]) for i in kept]
        )
        assert torch.allclose(getattr(loss, mem[0]), want, atol=1e-12)
        assert torch.allclose(getattr(loss, mem[1]), want_p, atol=1e-12)


# -- a NaN margin is refused like a negative one ------------------------------------
@pytest.mark.parametrize("cls", ["triplet", "cross_triplet"])
@pytest.mark.parametrize("bad", [float("nan"), -0.1])
def test_triplet_margin_nan_is_refused(cls, bad):
    """A NaN margin would make every hinge NaN (relu(gap + nan)); the docstring asks for a
    number >= 0, which NaN is not."""
    from uvireid.registry import LOSSES

    with pytest.raises(ConfigError, match="margin must be a number >= 0 or null"):
        LOSSES.build({"type": cls, "margin": bad})


# -- StepOutputs.detach keeps every field in its place -------------------------------
def test_step_outputs_detach_keeps_each_field():
    g = torch.Generator().manual_seed(40)
    t = [torch.randn(2, 3, generator=g, requires_grad=True) for _ in range(6)]
    parts = {("v", "r"): torch.randn(2, 2, 3, generator=g, requires_grad=True)}
    out = StepOutputs(t[0], t[1], t[2], parts, t[3], t[4], t[5])
    d = out.detach()
    pairs = [
        (d.feat_v, t[0]),
        (d.feat_a, t[1]),
        (d.feat_r, t[2]),
        (d.pool_v, t[3]),
        (d.pool_a, t[4]),
        (d.pool_r, t[5]),
        (d.parts["v", "r"], parts["v", "r"]),
    ]
    for got, src in pairs:
        assert torch.equal(got, src) and not got.requires_grad
    assert StepOutputs(t[0], t[1], t[2]).detach().pool_a is None
