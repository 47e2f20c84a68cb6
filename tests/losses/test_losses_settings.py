"""Loss settings beyond the defaults and the paths the defaults skip: ACCL's label spaces
and weight, hard prototypes, DAGL and MBCCM without CA, the memories' momentum and row
order, GPCR's infrared parts and official swap, memories of another size, kl_eps
(mutation audit CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loss_oracles import centroid_loop, momentum_loop, nce_mean, unit_rows
from test_cross_memory import TAU
from test_cross_memory import _context as _ctx_x
from test_part_and_instance import _context as _ctx_p
from test_part_and_instance import _step

from uvireid.losses import (
    AlternateCrossContrastLoss,
    ClusterContrastLoss,
    DualClusterContrastLoss,
    InstanceNeighbourLoss,
    ModalityAgnosticLoss,
    PartContrastLoss,
    StepOutputs,
    StepTargets,
)
from uvireid.losses.memory import ClusterMemory


def _batch_two_spaces(seed=3):
    """A batch whose labels differ between the two label spaces in every labelled row
    (visible space: 3 clusters, infrared space: 2), with repeated labels."""
    g = torch.Generator().manual_seed(seed)
    fv, fa, fr = (torch.randn(4, 5, generator=g, dtype=torch.float64) for _ in range(3))
    t = StepTargets(
        vis_in_v=torch.tensor([0, 2, 1, -1]),
        vis_in_r=torch.tensor([1, -1, 0, -1]),
        ir_in_r=torch.tensor([1, 0, -1, 1]),
        ir_in_v=torch.tensor([2, 1, -1, 0]),
        idx_v=torch.arange(4),
        idx_r=torch.arange(4),
    )
    return fv, fa, fr, t


# -- PGM's ACCL: the cross terms take the OTHER space's labels; cross_weight; use_ca -----
@pytest.mark.parametrize("epoch", [0, 1])
@pytest.mark.parametrize("use_ca", [True, False])
def test_accl_cross_terms_take_the_other_spaces_labels_and_the_weight(epoch, use_ca):
    ctx = _ctx_x(epoch)
    loss = AlternateCrossContrastLoss(
        temperature=TAU, momentum=0.2, cross_weight=0.5, use_ca=use_ca
    )
    loss.reset(ctx)
    mv = centroid_loop(ctx.feats_v, ctx.init_v, 3)
    mr = centroid_loop(ctx.feats_r, ctx.init_r, 2)
    fv, fa, fr, t = _batch_two_spaces()
    yv, yr = t.vis_in_v.tolist(), t.ir_in_r.tolist()
    vis = [fv, fa] if use_ca else [fv]
    ref = sum(nce_mean(f, mv, yv, TAU) for f in vis) + nce_mean(fr, mr, yr, TAU)
    if epoch % 2 == 1:  # IR rows against the visible memory, with their visible-space labels
        ref = ref + 0.5 * nce_mean(fr, mv, t.ir_in_v.tolist(), TAU)
    else:  # visible rows against the IR memory, with their IR-space labels
        ref = ref + 0.5 * nce_mean(torch.cat(vis), mr, t.vis_in_r.tolist() * len(vis), TAU)
    assert torch.allclose(loss(StepOutputs(fv, fa, fr), t), ref, rtol=1e-10)
    loss.update(StepOutputs(fv, fa, fr), t)
    exp_v, exp_r = mv, mr
    if epoch % 2 == 1:
        exp_v = momentum_loop(exp_v, fr, t.ir_in_v.tolist(), 0.2)
    else:
        exp_r = momentum_loop(exp_r, torch.cat(vis), t.vis_in_r.tolist() * len(vis), 0.2)
    exp_v = momentum_loop(exp_v, torch.cat(vis[::-1]), yv * len(vis), 0.2)
    exp_r = momentum_loop(exp_r, fr, yr, 0.2)
    assert torch.allclose(loss.memory_v.features, exp_v, atol=1e-12)
    assert torch.allclose(loss.memory_r.features, exp_r, atol=1e-12)


# -- hard updates (PGM stage 2): the flag must reach the memories -----------------------
def _hard_loop(mem, feats, labels):
    """Per label, keep only the row of least COSINE with its prototype (first on a tie)."""
    best = {}
    for i, y in enumerate(labels):
        if y < 0:
            continue
        c = float(feats[i] @ mem[y]) / float(feats[i].norm())
        if y not in best or c < best[y][0]:
            best[y] = (c, i)
    out = [-1] * len(labels)
    for y, (_, i) in best.items():
        out[i] = y
    return out


@pytest.mark.parametrize("cls", [ClusterContrastLoss, AlternateCrossContrastLoss])
def test_hard_losses_update_each_prototype_with_its_least_similar_row(cls):
    ctx = _ctx_x(0)
    kw = {"cross_update": False} if cls is AlternateCrossContrastLoss else {}
    loss = cls(momentum=0.2, use_ca=False, hard=True, **kw)
    loss.reset(ctx)
    mv = centroid_loop(ctx.feats_v, ctx.init_v, 3)
    mr = centroid_loop(ctx.feats_r, ctx.init_r, 2)
    g = torch.Generator().manual_seed(7)
    # rows of very different norms: the hardest by cosine is not the hardest by dot product
    scale = torch.tensor([[0.1], [5.0], [1.0], [20.0], [0.3], [2.0]], dtype=torch.float64)
    fv = torch.randn(6, 5, generator=g, dtype=torch.float64) * scale
    fr = torch.randn(6, 5, generator=g, dtype=torch.float64) * scale
    t = StepTargets(
        vis_in_v=torch.tensor([0, 0, 1, 1, 0, 1]),
        vis_in_r=torch.full((6,), -1),
        ir_in_r=torch.tensor([1, 1, 0, 0, 1, 0]),
        ir_in_v=torch.full((6,), -1),
        idx_v=torch.arange(6),
        idx_r=torch.arange(6),
    )
    loss.update(StepOutputs(fv, fv.clone(), fr), t)
    hv = _hard_loop(mv, fv, t.vis_in_v.tolist())
    hr = _hard_loop(mr, fr, t.ir_in_r.tolist())
    assert hv != t.vis_in_v.tolist()  # the hard rule keeps fewer rows
    assert torch.allclose(loss.memory_v.features, momentum_loop(mv, fv, hv, 0.2), atol=1e-12)
    assert torch.allclose(loss.memory_r.features, momentum_loop(mr, fr, hr, 0.2), atol=1e-12)


# -- DAGL without the CA view: the cross rows of both memories ---------------------------
def test_dagl_without_ca_scores_every_row_against_both_memories_with_its_dual_labels():
    ctx = _ctx_x(0)
    loss = DualClusterContrastLoss(temperature=TAU, use_ca=False)
    loss.reset(ctx)
    mv = centroid_loop(ctx.feats_v, ctx.init_v, 3)
    mr = centroid_loop(ctx.feats_r, ctx.init_r, 2)
    fv, fa, fr, t = _batch_two_spaces()
    z = torch.cat([fv, fr])
    ref = nce_mean(z, mv, t.vis_in_v.tolist() + t.ir_in_v.tolist(), TAU) + nce_mean(
        z, mr, t.vis_in_r.tolist() + t.ir_in_r.tolist(), TAU
    )
    assert torch.allclose(loss(StepOutputs(fv, fa, fr), t), ref, rtol=1e-10)


# -- MBCCM with a non-default momentum and without the CA view ---------------------------
def test_modality_agnostic_updates_at_its_momentum_without_ca():
    ctx = _ctx_x(0)
    loss = ModalityAgnosticLoss(momentum=0.3, use_ca=False)
    loss.reset(ctx)
    mv = centroid_loop(ctx.feats_v, ctx.init_v, 3)
    mr = centroid_loop(ctx.feats_r, ctx.init_r, 2)
    fv, fa, fr, t = _batch_two_spaces()
    loss.update(StepOutputs(fv, fa, fr), t)
    z = torch.cat([fr, fv])  # the MBCCM backward's order: f^r, then f^v
    yv = t.ir_in_v.tolist() + t.vis_in_v.tolist()
    yr = t.ir_in_r.tolist() + t.vis_in_r.tolist()
    assert torch.allclose(loss.memory_va.features, momentum_loop(mv, z, yv, 0.3), atol=1e-12)
    assert torch.allclose(loss.memory_ra.features, momentum_loop(mr, z, yr, 0.3), atol=1e-12)
    assert torch.allclose(
        loss.memory_v.features, momentum_loop(mv, fv, t.vis_in_v.tolist(), 0.3), atol=1e-12
    )


# -- FGSAL part memories: the spec's row order and a non-default momentum ----------------
def test_part_memories_follow_the_spec_row_order_at_their_momentum():
    """Rows spelled out from the spec (salcr_reference Sec. 6.5), not from the module's
    constants: V_p = [vv, aa, vr, ar, va, av], R_p = [rr, rv, ra]."""
    vis = [("v", "v"), ("a", "a"), ("v", "r"), ("a", "r"), ("v", "a"), ("a", "v")]
    ir = [("r", "r"), ("r", "v"), ("r", "a")]
    ctx = _ctx_p()
    out, t = _step()
    loss = PartContrastLoss(num_parts=2, momentum=0.3, shuffle_updates=False)
    loss.reset(ctx)
    before = {n: getattr(loss, n).clone() for n in ("hat_v", "hat_r", "chk_v", "chk_r")}
    loss.update(out, t)
    for name, keys, y in (
        ("hat_v", vis, t.vis_in_v),
        ("hat_r", vis, t.vis_in_r),
        ("chk_v", ir, t.ir_in_v),
        ("chk_r", ir, t.ir_in_r),
    ):
        for p in range(2):
            x = torch.cat([out.parts[k][:, p] for k in keys])
            want = momentum_loop(before[name][p], x, y.tolist() * len(keys), 0.3)
            assert torch.allclose(getattr(loss, name)[p], want, atol=1e-12), (name, p)


# -- GPCR: the infrared part memory moves with the r->r self parts, at its momentum ------
def test_instance_memories_of_both_modalities_move_with_their_self_features():
    ctx = _ctx_p()
    out, t = _step()
    loss = InstanceNeighbourLoss(k=3, num_parts=2, momentum=0.3)
    loss.reset(ctx)
    inst_v, inst_r = loss.inst_v.clone(), loss.inst_r.clone()
    part_v, part_r = loss.part_v.clone(), loss.part_r.clone()
    loss.update(out, t)

    def rows(init, idx):  # image -> memory row: the outliers (label -1) hold no row
        kept = [i for i in range(len(init)) if init[i] >= 0]
        return [kept.index(i) if i in kept else -1 for i in idx.tolist()]

    rv, rr = rows(ctx.init_v, t.idx_v), rows(ctx.init_r, t.idx_r)
    assert torch.allclose(loss.inst_v, momentum_loop(inst_v, out.feat_v, rv, 0.3), atol=1e-12)
    assert torch.allclose(loss.inst_r, momentum_loop(inst_r, out.feat_r, rr, 0.3), atol=1e-12)
    for p in range(2):
        want_v = momentum_loop(part_v[:, p], out.parts["v", "v"][:, p], rv, 0.3)
        want_r = momentum_loop(part_r[:, p], out.parts["r", "r"][:, p], rr, 0.3)
        assert torch.allclose(loss.part_v[:, p], want_v, atol=1e-12)
        assert torch.allclose(loss.part_r[:, p], want_r, atol=1e-12)


def test_official_instance_parts_never_read_the_a_to_r_part():
    """Spec Sec. 11 item 7: the official code uses a->v where the paper has a->r."""
    ctx = _ctx_p()
    out, t = _step()
    g = torch.Generator().manual_seed(99)
    other = dict(out.parts)
    other["a", "r"] = torch.randn(*out.parts["a", "r"].shape, generator=g, dtype=torch.float64)
    out2 = StepOutputs(out.feat_v, out.feat_a, out.feat_r, other)
    for quirks in (True, False):
        loss = InstanceNeighbourLoss(k=3, num_parts=2, official_quirks=quirks)
        loss.reset(ctx)
        a, b = loss(out, t), loss(out2, t)
        if quirks:
            assert torch.equal(a, b)
        else:  # the paper reads it (so the check above can fail)
            assert not torch.allclose(a, b)


# -- checkpoints: memories of another epoch's cluster count load ---------------------------
def test_memories_load_a_checkpoint_of_another_cluster_count():
    a = ClusterMemory()
    a.reset(unit_rows(6, 4, seed=1), np.array([0, 1, 2, 3, 4, 0]), 5)
    b = ClusterMemory()
    b.reset(unit_rows(6, 4, seed=2), np.array([0, 1, 0, 1, 2, 2]), 3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.features, a.features)
    for cls, kw in ((PartContrastLoss, {}), (InstanceNeighbourLoss, {"k": 3})):
        src, dst = cls(num_parts=2, **kw), cls(num_parts=2, **kw)
        src.reset(_ctx_p())
        dst.reset(_ctx_p(nv=8, nr=6, kv=4, kr=3))
        dst.load_state_dict(src.state_dict())
        for name, value in src.state_dict().items():
            assert torch.equal(dst.state_dict()[name], value), (cls.__name__, name)


# -- MBCCM: kl_eps reaches the consistency term --------------------------------------------
def test_modality_agnostic_consistency_uses_its_kl_eps():
    from test_cross_memory import _mem_logits, _skl_loop

    ctx = _ctx_x(0)
    loss = ModalityAgnosticLoss(temperature=TAU, alpha=0.9, beta=0.5, use_ca=False, kl_eps=0.0)
    loss.reset(ctx)
    mv = centroid_loop(ctx.feats_v, ctx.init_v, 3)
    mr = centroid_loop(ctx.feats_r, ctx.init_r, 2)
    fv, fa, fr, t = _batch_two_spaces()
    fv, fr = fv * 3, fr * 3  # plain logits span ~100: softmax entries far below 1e-12
    l_ma = (
        nce_mean(fv, mv, t.vis_in_v.tolist(), TAU)
        + nce_mean(fv, mr, t.vis_in_r.tolist(), TAU)
        + nce_mean(fr, mv, t.ir_in_v.tolist(), TAU)
        + nce_mean(fr, mr, t.ir_in_r.tolist(), TAU)
    )
    # at the epoch start M^va = M^v and M^ra = M^r: the memory-vs-memory pairs are 0
    kr, kv = t.vis_in_r >= 0, t.ir_in_v >= 0
    l_cc = _skl_loop(_mem_logits(fv[kr], mr), fv[kr] @ mr.T / TAU, eps=0.0) + _skl_loop(
        _mem_logits(fr[kv], mv), fr[kv] @ mv.T / TAU, eps=0.0
    )
    ref = 0.9 * l_ma + 0.5 * l_cc
    assert torch.allclose(loss(StepOutputs(fv, fa, fr), t), ref, rtol=1e-9)
