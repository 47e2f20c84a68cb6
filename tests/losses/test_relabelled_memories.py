"""SALCR part and instance memories on an epoch whose associator
relabelled the training targets (``vis_in_v`` / ``ir_in_r`` differ from the clusterer's
``init_v`` / ``init_r``). ``salcr_reference.md`` Sec. 5.2, 6.5 and 7.1: the memories are
seeded from the DBSCAN partition (and the instance memories keep its non-outliers), the
targets use the relabelled labels. The existing tests' contexts have init == targets,
so a seeding from the targets passed them (mutation audit ND)."""

from __future__ import annotations

import numpy as np
import torch
from loss_oracles import centroid_loop, unit_rows

from uvireid.losses import EpochContext, InstanceNeighbourLoss, PartContrastLoss


def _relabelled(p=2, d=4):
    init_v = np.array([0, 0, 1, 1, 2, 2, 0, 1, -1])
    init_r = np.array([0, 1, 0, 1, 1, 0, -1, 1])
    return EpochContext(
        feats_v=unit_rows(9, d, seed=2),
        feats_r=unit_rows(8, d, seed=3),
        vis_in_v=np.array([1, 0, 2, 1, 0, 2, 2, -1, 1]),  # relabelled, another outlier
        vis_in_r=np.array([0, 1, -1, 0, 1, 1, 0, -1, 1]),
        ir_in_r=np.array([1, 1, 0, 0, 1, -1, 0, 1]),
        ir_in_v=np.array([2, 0, 1, -1, 0, 1, 2, 0]),
        init_v=init_v,
        init_r=init_r,
        num_v=3,
        num_r=2,
        parts_v=unit_rows(9, p, d, seed=4),
        parts_r=unit_rows(8, p, d, seed=5),
    )


def test_part_memories_of_the_own_space_start_from_the_clusterers_partition():
    ctx = _relabelled()
    loss = PartContrastLoss(num_parts=2)
    loss.reset(ctx)
    for p in range(2):
        want_v = centroid_loop(ctx.parts_v[:, p], ctx.init_v, 3)
        want_r = centroid_loop(ctx.parts_r[:, p], ctx.init_r, 2)
        assert torch.allclose(loss.hat_v[p], want_v, atol=1e-12)
        assert torch.allclose(loss.chk_r[p], want_r, atol=1e-12)
        # the cross-space memories: the other modality's assigned labels
        assert torch.allclose(loss.hat_r[p], centroid_loop(ctx.parts_v[:, p], ctx.vis_in_r, 2))
        assert torch.allclose(loss.chk_v[p], centroid_loop(ctx.parts_r[:, p], ctx.ir_in_v, 3))
        # the relabelled targets give other centroids, so the checks above can fail
        assert not torch.allclose(want_v, centroid_loop(ctx.parts_v[:, p], ctx.vis_in_v, 3))
        assert not torch.allclose(want_r, centroid_loop(ctx.parts_r[:, p], ctx.ir_in_r, 2))


def test_instance_memories_hold_the_clusterers_non_outliers_in_image_order():
    ctx = _relabelled()
    loss = InstanceNeighbourLoss(k=2, num_parts=2)
    loss.reset(ctx)
    for s, feats, parts, init in (
        ("v", ctx.feats_v, ctx.parts_v, ctx.init_v),
        ("r", ctx.feats_r, ctx.parts_r, ctx.init_r),
    ):
        kept = [i for i in range(len(init)) if init[i] >= 0]
        assert torch.allclose(getattr(loss, f"inst_{s}"), feats[kept], atol=1e-12)
        assert torch.allclose(getattr(loss, f"part_{s}"), parts[kept], atol=1e-12)
        rows = getattr(loss, f"row_{s}").tolist()
        assert rows == [kept.index(i) if i in kept else -1 for i in range(len(init))]
