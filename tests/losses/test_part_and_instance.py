"""FGSAL (part module, part contrast) and GPCR (instance neighbours) against naive loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_oracles import (
    attention_loop,
    centroid_loop,
    global_sets,
    gpcr_loop,
    mean_nll,
    momentum_loop,
    nce_mean,
    neighbour_nll,
    part_queries_loop,
)

from uvireid.losses import (
    EpochContext,
    InstanceNeighbourLoss,
    PartContrastLoss,
    StepOutputs,
    StepTargets,
)
from uvireid.losses.part import INFRARED_QUERY_ROWS, VISIBLE_QUERY_ROWS
from uvireid.models.parts import (
    PartQuery,
    part_queries,
    query_attention,
    query_attention_many,
    stripes,
)

TAU = 0.05
MAPS = "var"


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _unit(*shape, seed=0):
    x = torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=-1)


def test_part_queries_and_attention_equal_eq_9_to_11():
    fmap = torch.randn(2, 5, 4, 2, generator=_gen(0), dtype=torch.float64).relu()
    tokens = torch.randn(3, 5, generator=_gen(1), dtype=torch.float64)
    other = torch.randn(2, 5, 4, 2, generator=_gen(2), dtype=torch.float64).relu()
    st_ref, q_ref = part_queries_loop(fmap, tokens)
    st_other, _ = part_queries_loop(other, tokens)
    st = stripes(fmap, 3)  # 8 pixels, floor(8 / 3) = 2 per part
    assert st.shape == (2, 3, 2, 5)
    q = part_queries(st, tokens)
    assert torch.allclose(q, q_ref, atol=1e-12)
    parts = query_attention(q, stripes(other, 3))
    for i in range(2):
        for p in range(3):
            assert torch.allclose(parts[i, p], attention_loop(q_ref[i, p], st_other[i][p]))
    # several query sets on the same stripes (the part module's nine pairs, read in place)
    q2 = part_queries(stripes(other, 3), tokens)
    many = query_attention_many(torch.stack([q, q2]), stripes(other, 3))
    for j, qs in enumerate((q_ref, part_queries_loop(other, tokens)[1])):
        for i in range(2):
            for p in range(3):
                assert torch.allclose(many[j, i, p], attention_loop(qs[i, p], st_other[i][p]))


@pytest.mark.parametrize(
    "tokens, logits",
    [
        ([[-11.0, -8.0]], "-35, -30, -60, -73: float32 sigmoids below 1e-12, none 0"),
        ([[-1.0, -1.0]], "-3 .. -8: ordinary weights"),
        ([[-30.0, -30.0]], "-60 .. -240: float32 sigmoids 0 from -104 down"),
    ],
)
def test_part_queries_are_eq_9_for_very_negative_logits(tokens, logits):
    """Float32 queries against Eq. 9 with loops in float64 (whose sigmoids stay normal
    down to logits of -700): the weighted mean of the stripe's pixels, inside their range,
    however small the sigmoids (a clamped denominator shrank the query towards 0)."""
    fmap = torch.tensor([[1.0, 2.0, 4.0, 3.0], [3.0, 1.0, 2.0, 5.0]])[None, :, None]  # 1x2x1x4
    tok = torch.tensor(tokens)
    _, want = part_queries_loop(fmap.double(), tok.double())
    got = part_queries(stripes(fmap, 1), tok)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert float(got.min()) >= 1 - 1e-5 and float(got.max()) <= 5 + 1e-5


def test_part_module_gives_nine_pairs_and_trains_its_tokens():
    torch.manual_seed(0)
    mod = PartQuery(6, 3)
    maps = [torch.randn(4, 6, 3, 2).relu() for _ in range(3)]
    out = mod.pairs(*maps)
    assert set(out) == {(q, m) for q in MAPS for m in MAPS}
    assert all(v.shape == (4, 3, 6) for v in out.values())
    sum(v.pow(2).sum() * torch.rand(()) for v in out.values()).backward()
    assert mod.tokens.grad is not None and mod.tokens.grad.abs().sum() > 0
    assert sum(p.numel() for p in mod.parameters()) == 3 * 6 * 3  # tokens + BN (w, b)
    selfp = mod.self_parts(maps[0])
    assert torch.allclose(selfp.norm(dim=-1), torch.ones(4, 3))


def _context(nv=10, nr=8, kv=3, kr=2, p=2, d=4, **kw):
    lv = np.array([0, 1, 2, 0, 1, 2, 0, -1, 1, 2])[:nv]
    lr = np.array([0, 1, 0, 1, 0, 1, -1, 1])[:nr]
    return EpochContext(
        feats_v=_unit(nv, d, seed=1),
        feats_r=_unit(nr, d, seed=2),
        vis_in_v=lv,
        vis_in_r=np.where(lv >= 0, (lv + 1) % kr, -1),
        ir_in_r=lr,
        ir_in_v=np.where(lr >= 0, (lr + 2) % kv, -1),
        init_v=lv,
        init_r=lr,
        num_v=kv,
        num_r=kr,
        parts_v=_unit(nv, p, d, seed=3),
        parts_r=_unit(nr, p, d, seed=4),
        **kw,
    )


def test_official_part_memories_are_centroids_of_the_jointly_normalised_vector():
    """Audit M (session 16): the official code seeds its part memories with
    L2n(slice_p(mean over the cluster of L2n([parts ‖ global]))), each image weighed by its
    part's share of the joint norm; uvireid averaged per-part normalised parts (every
    image weighed 1; prototype cosines 0.94-0.995 against the official ones)."""
    g = _gen(11)
    nv, nr, p, d = 10, 8, 2, 4
    raw_v = (
        torch.randn(nv, p, d, generator=g, dtype=torch.float64)
        * torch.rand(nv, p, 1, generator=g, dtype=torch.float64)
        * 3
    )
    raw_r = (
        torch.randn(nr, p, d, generator=g, dtype=torch.float64)
        * torch.rand(nr, p, 1, generator=g, dtype=torch.float64)
        * 3
    )
    glob_v = torch.randn(nv, d, generator=g, dtype=torch.float64)
    glob_r = torch.randn(nr, d, generator=g, dtype=torch.float64)

    def weights(raw, glob):
        norms = raw.norm(dim=-1)
        return norms / torch.sqrt(norms.square().sum(1) + glob.square().sum(1))[:, None]

    ctx = _context(nv, nr, p=p, d=d)
    ctx.parts_v = torch.nn.functional.normalize(raw_v, dim=-1)
    ctx.parts_r = torch.nn.functional.normalize(raw_r, dim=-1)
    ctx.part_weights_v, ctx.part_weights_r = weights(raw_v, glob_v), weights(raw_r, glob_r)
    quirks = PartContrastLoss(num_parts=p, official_quirks=True)
    quirks.reset(ctx)
    for raw, glob, labels, k, mem in (
        (raw_v, glob_v, ctx.init_v, 3, quirks.hat_v),
        (raw_r, glob_r, ctx.init_r, 2, quirks.hat_r),
    ):
        joint = torch.cat([raw.reshape(len(raw), -1), glob], 1)  # [parts ‖ global]
        joint = joint / joint.norm(dim=1, keepdim=True)
        for c in range(k):
            mean = joint[torch.from_numpy(labels == c)].mean(0)
            for q in range(p):
                want = mean[q * d : (q + 1) * d]
                assert torch.allclose(mem[q, c], want / want.norm(), atol=1e-12)
    # the paper's seeding ignores the weights
    paper = PartContrastLoss(num_parts=p)
    paper.reset(ctx)
    assert torch.allclose(paper.hat_v[0], centroid_loop(ctx.parts_v[:, 0], ctx.vis_in_v, 3))


def _step(s=3, p=2, d=4, seed=5):
    g = _gen(seed)
    feats = [torch.randn(s, d, generator=g, dtype=torch.float64) for _ in range(3)]
    parts = {
        (q, m): torch.randn(s, p, d, generator=g, dtype=torch.float64) for q in MAPS for m in MAPS
    }
    t = StepTargets(
        vis_in_v=torch.tensor([0, 2, 1]),
        vis_in_r=torch.tensor([1, 0, -1]),
        ir_in_r=torch.tensor([1, 0, 1]),
        ir_in_v=torch.tensor([2, -1, 0]),
        idx_v=torch.tensor([0, 2, 4]),
        idx_r=torch.tensor([1, 3, 5]),
        paired=True,
    )
    return StepOutputs(*feats, parts), t


def test_part_memories_start_at_the_papers_centroids():
    ctx = _context()
    loss = PartContrastLoss(num_parts=2)
    loss.reset(ctx)
    for p in range(2):
        assert torch.allclose(loss.hat_v[p], centroid_loop(ctx.parts_v[:, p], ctx.vis_in_v, 3))
        assert torch.allclose(loss.hat_r[p], centroid_loop(ctx.parts_v[:, p], ctx.vis_in_r, 2))
        assert torch.allclose(loss.chk_v[p], centroid_loop(ctx.parts_r[:, p], ctx.ir_in_v, 3))
        assert torch.allclose(loss.chk_r[p], centroid_loop(ctx.parts_r[:, p], ctx.ir_in_r, 2))
    quirks = PartContrastLoss(num_parts=2, official_quirks=True)
    quirks.reset(ctx)
    assert torch.equal(quirks.chk_v, quirks.hat_v)
    assert torch.allclose(quirks.hat_r[0], centroid_loop(ctx.parts_r[:, 0], ctx.ir_in_r, 2))


def _part_reference(loss, out, t, vis_rows):
    total = 0
    for p in range(loss.num_parts):
        xv = torch.cat([out.parts[k][:, p] for k in vis_rows])
        xr = torch.cat([out.parts[k][:, p] for k in INFRARED_QUERY_ROWS])
        n_v, n_r = len(vis_rows), len(INFRARED_QUERY_ROWS)
        total = total + nce_mean(xv, loss.hat_v[p], t.vis_in_v.tolist() * n_v, TAU)
        total = total + nce_mean(xv, loss.hat_r[p], t.vis_in_r.tolist() * n_v, TAU)
        total = total + nce_mean(xr, loss.chk_v[p], t.ir_in_v.tolist() * n_r, TAU)
        total = total + nce_mean(xr, loss.chk_r[p], t.ir_in_r.tolist() * n_r, TAU)
    return total / loss.num_parts


def test_part_contrast_value_and_gradients_equal_eq_12_to_15():
    ctx = _context()
    out, t = _step()
    loss = PartContrastLoss(num_parts=2)
    loss.reset(ctx)
    a = {k: v.clone().requires_grad_(True) for k, v in out.parts.items()}
    b = {k: v.clone().requires_grad_(True) for k, v in out.parts.items()}
    ours = loss(StepOutputs(out.feat_v, out.feat_a, out.feat_r, a), t)
    ref = _part_reference(
        loss, StepOutputs(out.feat_v, out.feat_a, out.feat_r, b), t, VISIBLE_QUERY_ROWS
    )
    assert torch.allclose(ours, ref, rtol=1e-10)
    ours.backward()
    ref.backward()
    for k in a:
        assert torch.allclose(a[k].grad, b[k].grad, rtol=1e-8, atol=1e-12), k
    quirks = PartContrastLoss(num_parts=2, official_quirks=True)
    quirks.reset(ctx)
    slip = list(VISIBLE_QUERY_ROWS)
    slip[3] = ("a", "v")
    assert torch.allclose(quirks(out, t), _part_reference(quirks, out, t, slip), rtol=1e-10)


@pytest.mark.parametrize("shuffle", [True, False])
def test_part_memories_update_each_part_by_the_momentum_loop_in_their_order(shuffle):
    """Eq. 7 per part and memory, one row after the other: in a random permutation of the
    memory's rows (the official part memories, cross=True), or in the fixed row order."""
    from uvireid.losses.memory import batch_permutation

    ctx = _context()
    out, t = _step()
    loss = PartContrastLoss(num_parts=2, shuffle_updates=shuffle)
    loss.reset(ctx)
    before = {name: getattr(loss, name).clone() for name in ("hat_v", "hat_r", "chk_v", "chk_r")}
    loss.update(out, t)
    rows = {
        "hat_v": (VISIBLE_QUERY_ROWS, t.vis_in_v),
        "hat_r": (VISIBLE_QUERY_ROWS, t.vis_in_r),
        "chk_v": (INFRARED_QUERY_ROWS, t.ir_in_v),
        "chk_r": (INFRARED_QUERY_ROWS, t.ir_in_r),
    }
    for name, (keys, y) in rows.items():
        labels = np.array(y.tolist() * len(keys))
        seq = batch_permutation(labels) if shuffle else np.arange(len(labels))
        for p in range(2):
            x = torch.cat([out.parts[k][:, p] for k in keys])
            want = momentum_loop(before[name][p], x[seq], labels[seq].tolist(), 0.1)
            assert torch.allclose(getattr(loss, name)[p], want, atol=1e-12), (name, p)
    if shuffle:  # the order changes the result (momentum 0.1)
        fixed = PartContrastLoss(num_parts=2, shuffle_updates=False)
        fixed.reset(ctx)
        fixed.update(out, t)
        assert not torch.allclose(fixed.hat_v, loss.hat_v)


def test_instance_neighbour_value_and_gradients_equal_eq_16_to_27():
    ctx = _context()
    out, t = _step()
    loss = InstanceNeighbourLoss(k=3, num_parts=2)
    loss.reset(ctx)
    assert loss.inst_v.shape == (9, 4) and loss.inst_r.shape == (7, 4)  # outliers left out
    grads = []
    values = []
    for fn in (lambda o: loss(o, t), lambda o: gpcr_loop(loss, o, 3, loss.num_parts, TAU)):
        o = StepOutputs(
            *(x.clone().requires_grad_(True) for x in (out.feat_v, out.feat_a, out.feat_r)),
            {kk: v.clone().requires_grad_(True) for kk, v in out.parts.items()},
        )
        val = fn(o)
        val.backward()
        values.append(val)
        grads.append(
            [
                o.feat_v.grad,
                o.feat_a.grad,
                o.feat_r.grad,
                *[o.parts[kk].grad for kk in sorted(o.parts)],
            ]
        )
    assert torch.allclose(values[0], values[1], rtol=1e-10)
    for g1, g2 in zip(*grads):
        assert (g1 is None and g2 is None) or torch.allclose(g1, g2, rtol=1e-8, atol=1e-12)
    quirks = InstanceNeighbourLoss(k=3, num_parts=2, parts=False, official_quirks=True)
    quirks.reset(ctx)
    ref = 0
    for s in ("v", "r"):
        inst = getattr(quirks, f"inst_{s}")
        _, inter = global_sets(out, inst, 3, True, TAU)
        ref = ref + mean_nll(
            [
                neighbour_nll(f[n], inst, inter[n], TAU) if inter[n] else None
                for f in (out.feat_v, out.feat_a, out.feat_r)
                for n in range(3)
            ]
        )
    assert torch.allclose(quirks(out, t), torch.as_tensor(ref, dtype=torch.float64))


def test_instance_memories_move_with_the_batch_unless_official():
    ctx = _context()
    out, t = _step()
    paper, official = (
        InstanceNeighbourLoss(k=3, num_parts=2),
        InstanceNeighbourLoss(k=3, num_parts=2, official_quirks=True),
    )
    for loss in (paper, official):
        loss.reset(ctx)
    before = paper.inst_v.clone()
    paper.update(out, t)
    official.update(out, t)
    assert torch.equal(official.inst_v, before)
    rows = paper.row_v[t.idx_v]
    changed = (paper.inst_v != before).any(1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted(rows.tolist())
    x = torch.nn.functional.normalize(out.feat_v[0], dim=0)
    expect = 0.1 * before[rows[0]] + 0.9 * x
    assert torch.allclose(paper.inst_v[rows[0]], expect / expect.norm())


def test_instance_loss_is_zero_on_unpaired_batches():
    ctx = _context()
    out, t = _step()
    t.paired = False
    loss = InstanceNeighbourLoss(k=3, num_parts=2)
    loss.reset(ctx)
    assert loss(out, t).item() == 0


def test_instance_loss_is_zero_on_an_empty_batch():
    """Audit H (session 16): an empty batch (a custom loop's) raised a raw reshape error."""
    import dataclasses

    ctx = _context()
    out, t = _step()
    empty = StepOutputs(
        *(x[:0] for x in (out.feat_v, out.feat_a, out.feat_r)),
        {k: v[:0] for k, v in out.parts.items()},
    )
    t = dataclasses.replace(t, **{f: getattr(t, f)[:0] for f in ("vis_in_v", "vis_in_r",
        "ir_in_r", "ir_in_v", "idx_v", "idx_r")})  # fmt: skip
    loss = InstanceNeighbourLoss(k=3, num_parts=2)
    loss.reset(ctx)
    value = loss(empty, t)
    assert value.item() == 0 and value.ndim == 0


def _waits(fn) -> list[str]:
    from uvireid.engine.profiling import profile_ops

    return profile_ops(fn)[0]


def test_salcr_losses_never_wait_for_the_device_and_updates_use_the_host_labels():
    """An H100 SALCR step was bound by 324 host-device waits (benchmarks/RESULTS.md): the
    losses' forward and backward have none, and the memory updates group their rows from
    the targets' host copy. Here the device-side labels of the update are meta tensors,
    which hold no data: reading them would raise. The memories must come out as an update
    from ordinary targets leaves them. (Not seen here: the one copy to the host of an
    update's Gram matrix, in the memories' Gram path; a copy is no op on the CPU, so the
    profiler cannot count it: profile_ops' blind spot, audit MC.)"""
    import copy
    import dataclasses

    from uvireid.losses import ClusterContrastLoss, DualClusterContrastLoss

    ctx = _context()
    losses = [
        ClusterContrastLoss(),
        DualClusterContrastLoss(),
        PartContrastLoss(num_parts=2),
        InstanceNeighbourLoss(k=3, num_parts=2),
    ]
    for loss in losses:
        loss.reset(ctx)
    out, t = _step()
    leaves = [out.feat_v, out.feat_a, out.feat_r, *out.parts.values()]
    for x in leaves:
        x.requires_grad_(True)

    def forward_backward():
        sum(loss(out, t) for loss in losses).backward()

    assert _waits(forward_backward) == []
    assert all(x.grad is not None for x in leaves)
    det = out.detach()
    unreadable = {
        f.name: torch.empty_like(getattr(t, f.name), device="meta")
        for f in dataclasses.fields(t)
        if isinstance(getattr(t, f.name), torch.Tensor)
    }
    hosted = dataclasses.replace(t, **unreadable, host=t)
    for loss in losses:
        before = {n: b.clone() for n, b in loss.named_buffers()}
        ref = copy.deepcopy(loss)
        ref.update(det, t)
        assert _waits(lambda loss=loss: loss.update(det, hosted)) == []
        for (name, got), (_, want) in zip(loss.named_buffers(), ref.named_buffers()):
            torch.testing.assert_close(got, want, msg=name)
        assert any(not torch.equal(b, before[n]) for n, b in loss.named_buffers())
    with pytest.raises((NotImplementedError, RuntimeError)):
        losses[0].update(det, dataclasses.replace(hosted, host=None))  # the meta labels


def test_an_epoch_with_one_modality_without_clusters_trains_every_loss():
    """An epoch whose visible clusterer found nothing (labels all -1, num_v = 0) trains on
    the infrared labels: every loss gives a finite value and updates its memories (the
    part loss's two empty memories were taken for one memory given twice, the instance
    loss returned NaN from a top-k over no row). Labels beyond the clusters are named."""
    from uvireid.errors import ConfigError
    from uvireid.losses import EpochContext, StepOutputs, StepTargets
    from uvireid.registry import LOSSES

    torch.manual_seed(0)
    d, p, s = 16, 3, 4

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)

    lab, none = np.repeat(np.arange(4), 3), np.full(12, -1)
    ctx = EpochContext(
        vis_in_v=none, vis_in_r=none, ir_in_r=lab, ir_in_v=none, init_v=none, init_r=lab,
        num_v=0, num_r=4, feats_v=unit(12, d), feats_r=unit(12, d),
        parts_v=unit(12, p, d), parts_r=unit(12, p, d),
    )  # fmt: skip
    out = StepOutputs(
        torch.randn(s, d), torch.randn(s, d), torch.randn(s, d),
        {(a, b): torch.randn(s, p, d) for a in "var" for b in "var"},
    )  # fmt: skip
    y, n = torch.arange(s), torch.full((s,), -1)
    tgt = StepTargets(n, n, y, n, torch.arange(s), torch.arange(s), paired=True)
    names = ["cluster_contrast", "dual_cluster_contrast", "part_contrast",
             "instance_neighbour", "modality_agnostic", "alternate_cross_contrast"]  # fmt: skip
    for name in names:
        loss = LOSSES.build({"type": name})
        loss.reset(ctx)
        assert torch.isfinite(loss(out, tgt)), name
        loss.update(out, tgt)
    bad = EpochContext(**{**ctx.__dict__, "ir_in_v": lab})  # labels in a space of 0 clusters
    with pytest.raises(ConfigError, match=r"labels range over 0..3 but there are 0 clusters"):
        LOSSES.build({"type": "part_contrast"}).reset(bad)
    loss = LOSSES.build({"type": "part_contrast"})
    loss.reset(ctx)
    missing = StepOutputs(out.feat_v, out.feat_a, out.feat_r, {("v", "v"): out.parts["v", "v"]})
    with pytest.raises(ConfigError, match=r"part_contrast needs the part features of the"):
        loss(missing, tgt)


def test_official_part_seeding_without_part_weights_warns(caplog):
    """Audit AT: official_quirks seeding needs the context's part weights; without them
    the memories are not the official ones, and the loss says so."""
    import logging

    g = torch.Generator().manual_seed(0)
    parts_v = F.normalize(torch.randn(6, 2, 4, generator=g, dtype=torch.float64), dim=-1)
    parts_r = F.normalize(torch.randn(5, 2, 4, generator=g, dtype=torch.float64), dim=-1)
    lv, lr = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 2])
    ctx = EpochContext(
        vis_in_v=lv,
        vis_in_r=np.array([0, 1, 2, 0, 1, 2]),
        ir_in_r=lr,
        ir_in_v=np.array([0, 1, 2, 0, 1]),
        init_v=lv,
        init_r=lr,
        num_v=3,
        num_r=3,
        feats_v=F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1),
        feats_r=F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1),
        parts_v=parts_v,
        parts_r=parts_r,
    )
    with caplog.at_level(logging.WARNING):
        PartContrastLoss(num_parts=2, official_quirks=True).reset(ctx)
    assert any("part_weights" in r.getMessage() for r in caplog.records)
    caplog.clear()
    ctx.part_weights_v = torch.ones(6, 2, dtype=torch.float64)
    ctx.part_weights_r = torch.ones(5, 2, dtype=torch.float64)
    with caplog.at_level(logging.WARNING):
        PartContrastLoss(num_parts=2, official_quirks=True).reset(ctx)
    assert not any("part_weights" in r.getMessage() for r in caplog.records)


def test_instance_update_maps_image_indices_to_memory_rows_past_outliers():
    """The instance memories hold the clustered images only (outliers left out), so the
    batch's image index must go through the image -> row map: visible image 7 and
    infrared image 6 are outliers, so visible images 8, 9 sit in rows 7, 8 and infrared
    image 7 in row 6; an outlier image in the batch updates nothing."""
    ctx = _context()
    out, t = _step()
    t.idx_v = torch.tensor([8, 9, 2])
    t.idx_r = torch.tensor([7, 6, 0])  # 6: an outlier
    loss = InstanceNeighbourLoss(k=3, num_parts=2)
    loss.reset(ctx)
    inst_v, inst_r = loss.inst_v.clone(), loss.inst_r.clone()
    part_v = loss.part_v.clone()
    loss.update(out, t)
    assert torch.allclose(
        loss.inst_v, momentum_loop(inst_v, out.feat_v, [7, 8, 2], 0.1), atol=1e-12
    )
    assert torch.allclose(
        loss.inst_r, momentum_loop(inst_r, out.feat_r, [6, -1, 0], 0.1), atol=1e-12
    )
    for p in range(2):
        ref = momentum_loop(part_v[:, p], out.parts["v", "v"][:, p], [7, 8, 2], 0.1)
        assert torch.allclose(loss.part_v[:, p], ref, atol=1e-12)


#: the three BN passes of salcr_reference.md Sec. 6.3 (query image, map image), written out
SPEC_PASSES = (
    (("v", "v"), ("a", "a"), ("r", "r")),  # part_feat (self)
    (("v", "r"), ("a", "r"), ("r", "v")),  # part_feat1
    (("v", "a"), ("a", "v"), ("r", "a")),  # part_feat2
)


def test_part_tokens_and_part_neck_start_as_the_reference():
    """salcr_reference.md Sec. 6.1/3.2: tokens kaiming_normal with fan_in = C, std sqrt(2/C);
    the part BN's weight ~ N(1, 0.01), bias 0 and frozen."""
    torch.manual_seed(0)
    c, p = 2048, 3
    mod = PartQuery(c, p)
    t = mod.tokens.detach().double()
    n = t.numel()
    # the std of n normal draws is within 5 standard errors (sigma / sqrt(2n)) of sigma
    sigma = math.sqrt(2 / c)
    assert abs(float(t.std()) - sigma) < 5 * sigma / math.sqrt(2 * n)
    assert abs(float(t.mean())) < 5 * sigma / math.sqrt(n)
    w = mod.neck.weight.detach().double()
    assert abs(float(w.mean()) - 1.0) < 5 * 0.01 / math.sqrt(w.numel())
    assert abs(float(w.std()) - 0.01) < 5 * 0.01 / math.sqrt(2 * w.numel())
    assert float(mod.neck.bias.abs().max()) == 0.0 and not mod.neck.bias.requires_grad


def test_part_bn_normalises_each_group_of_three_pairs_with_its_own_batch_statistics():
    """Train mode: the BN of each pass of Sec. 6.3 sees the 3*S rows of its three pairs,
    flattened p-major to (P*C,) (salcr_reference.md Sec. 6.3); checked against the loop
    oracles and a hand-written batch norm."""
    torch.manual_seed(0)
    s, c, p = 3, 4, 2
    mod = PartQuery(c, p).double().train()
    with torch.no_grad():
        mod.neck.weight.uniform_(0.5, 1.5)  # every feature its own scale
    maps = {k: torch.randn(s, c, 3, 2, dtype=torch.float64).relu() for k in "var"}
    out = mod.pairs(maps["v"], maps["a"], maps["r"])
    tokens = mod.tokens.detach()
    st = {k: part_queries_loop(f, tokens)[0] for k, f in maps.items()}
    q = {k: part_queries_loop(f, tokens)[1] for k, f in maps.items()}
    raw = {
        (a, b): torch.stack(
            [
                torch.stack([attention_loop(q[a][i, j], st[b][i][j]) for j in range(p)])
                for i in range(s)
            ]
        )
        for a in "var"
        for b in "var"
    }
    w, eps = mod.neck.weight.detach(), mod.neck.eps
    for group in SPEC_PASSES:
        rows = torch.cat([raw[pair].reshape(s, p * c) for pair in group])  # (3S, P*C)
        mean = rows.mean(0)
        var = ((rows - mean) ** 2).mean(0)  # biased, as batch norm in training
        bn = ((rows - mean) / torch.sqrt(var + eps) * w).reshape(3, s, p, c)
        for k, pair in enumerate(group):
            assert torch.allclose(out[pair].detach(), bn[k], atol=1e-8), pair


def test_self_parts_use_the_running_statistics_even_from_train_mode():
    """self_parts (test-time part features) = the part BN with its running statistics, by
    hand, on the loop oracles' parts; the module stays in train mode and its statistics
    are not moved."""
    torch.manual_seed(0)
    n, c, p = 3, 4, 2
    mod = PartQuery(c, p).double().train()
    with torch.no_grad():
        mod.neck.running_mean.uniform_(-1, 1)
        mod.neck.running_var.uniform_(0.5, 2)
    before = mod.neck.running_mean.clone()
    fmap = torch.randn(n, c, 3, 2, dtype=torch.float64).relu()
    got = mod.self_parts(fmap, normalize=False)
    st, q = part_queries_loop(fmap, mod.tokens.detach())
    raw = torch.stack(
        [torch.stack([attention_loop(q[i, j], st[i][j]) for j in range(p)]) for i in range(n)]
    ).reshape(n, p * c)
    bn = mod.neck
    expect = (raw - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight.detach()
    assert torch.allclose(got, expect.reshape(n, p, c).float(), atol=1e-5)
    assert mod.training and torch.equal(mod.neck.running_mean, before)
