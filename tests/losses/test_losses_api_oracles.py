"""The memory losses as a library user calls them: a pseudo-label outside the memory's
clusters is refused by the forward of every cluster-memory loss as clearly as by its
update (not torch's IndexError, a device-side assert on CUDA); the instance memory
refuses batch indices outside the epoch's images (past the end, or negative: which
would wrap and move other images' entries) and updates in-range ones by the paper's
momentum rule, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uvireid  # noqa: F401
from uvireid.losses import EpochContext, StepOutputs, StepTargets
from uvireid.losses.instance import InstanceNeighbourLoss
from uvireid.registry import LOSSES

MEMORY_LOSSES = [
    "cluster_contrast",
    "dual_cluster_contrast",
    "alternate_cross_contrast",
    "modality_agnostic",
]


def _context(k: int = 4, d: int = 8) -> EpochContext:
    g = torch.Generator().manual_seed(0)
    fv = torch.nn.functional.normalize(torch.randn(20, d, generator=g), dim=1)
    fr = torch.nn.functional.normalize(torch.randn(16, d, generator=g), dim=1)
    yv, yr = np.arange(20) % k, np.arange(16) % k
    return EpochContext(
        vis_in_v=yv,
        vis_in_r=yv,
        ir_in_r=yr,
        ir_in_v=yr,
        init_v=yv,
        init_r=yr,
        num_v=k,
        num_r=k,
        feats_v=fv,
        feats_r=fr,
    )


def _step(labels: torch.Tensor, d: int = 8):
    g = torch.Generator().manual_seed(1)
    b = len(labels)
    x, xa, xr = (torch.randn(b, d, generator=g) for _ in range(3))
    out = StepOutputs(x, xa, xr, pool_v=x, pool_a=xa, pool_r=xr)
    tg = StepTargets(labels, labels, labels, labels, torch.arange(b), torch.arange(b))
    return out, tg


@pytest.mark.parametrize("name", MEMORY_LOSSES)
@pytest.mark.parametrize("bad", [9, -2])
def test_forward_refuses_label_outside_memory_clearly(name, bad):
    loss = LOSSES.build({"type": name})
    loss.reset(_context(k=4))
    out, tg = _step(torch.tensor([0, 1, 2, bad, 0, 1]))
    with pytest.raises(uvireid.UvireidError, match=str(bad)):
        loss(out, tg)


@pytest.mark.parametrize("name", MEMORY_LOSSES)
def test_update_already_refuses_it(name):
    """What the forward should match: ``update`` names the label and the range."""
    loss = LOSSES.build({"type": name})
    loss.reset(_context(k=4))
    out, tg = _step(torch.tensor([0, 1, 2, 9, 0, 1]))
    with pytest.raises(ValueError, match="label 9 is outside"):
        loss.update(out.detach(), tg)


@pytest.mark.parametrize("name", MEMORY_LOSSES)
def test_valid_labels_still_train(name):
    loss = LOSSES.build({"type": name})
    loss.reset(_context(k=4))
    out, tg = _step(torch.tensor([0, 1, 2, 3, -1, 1]))
    value = loss(out, tg)
    assert value.ndim == 0 and torch.isfinite(value)


NV, NR, D, B = 20, 16, 8, 6


def _loss():
    ctx = _context(k=4, d=D)  # NV visible, NR infrared images
    loss = LOSSES.build({"type": "instance_neighbour", "parts": False, "k": 3})
    loss.reset(ctx)
    return loss


def _inst_step(idx_v):
    g = torch.Generator().manual_seed(1)
    x, xa, xr = (torch.randn(B, D, generator=g) for _ in range(3))
    lb = torch.tensor([0, 1, 2, 3, 0, 1])
    return StepOutputs(x, xa, xr), StepTargets(lb, lb, lb, lb, idx_v, torch.arange(B), paired=True)


def test_in_range_update_moves_only_the_batch_rows():
    """Control (passes): the paper's momentum update, checked by hand."""
    loss = _loss()
    before = loss.inst_v.clone()
    out, tg = _inst_step(torch.arange(B))
    loss.update(out, tg)
    m = loss.momentum
    expect = before.clone()
    for i in range(B):
        v = m * before[i] + (1 - m) * out.feat_v[i] / out.feat_v[i].norm()
        expect[i] = v / v.norm()
    assert torch.allclose(loss.inst_v, expect, atol=1e-6)


def test_negative_index_is_refused_not_wrapped():
    loss = _loss()
    before = loss.inst_v.clone()
    out, tg = _inst_step(torch.arange(B) - 3)  # -3, -2, -1, 0, 1, 2
    with pytest.raises(uvireid.UvireidError, match=r"idx_v runs from -3 to 2"):
        loss.update(out, tg)
    assert torch.equal(loss.inst_v, before)  # nothing moved


def test_index_past_the_epoch_is_a_clear_error():
    loss = _loss()
    out, tg = _inst_step(torch.arange(B) + NV - 2)  # 18, 19, 20, ...
    with pytest.raises(uvireid.UvireidError, match="idx"):
        loss.update(out, tg)


def test_numpy_labels_and_features_are_taken_as_the_tensors_the_losses_use():
    """EpochContext holds its labels as numpy arrays and its features as tensors, and
    StepTargets its labels as tensors: numpy (or lists) where a tensor is due are converted
    (long labels, the features' own dtype), and the loss gives the same value as with
    tensors."""
    ctx = _context(k=4)
    as_numpy = EpochContext(
        **{**{f: getattr(ctx, f) for f in ("vis_in_v", "vis_in_r", "ir_in_r", "ir_in_v")},
           "init_v": ctx.init_v, "init_r": ctx.init_r, "num_v": 4, "num_r": 4,
           "feats_v": ctx.feats_v.numpy(), "feats_r": ctx.feats_r.numpy()}
    )  # fmt: skip
    assert torch.equal(as_numpy.feats_v, ctx.feats_v) and as_numpy.feats_v.dtype == torch.float32
    labels = [0, 1, 2, 3, -1, 1]
    out, tg = _step(torch.tensor(labels))
    tg_np = StepTargets(*(np.asarray(labels),) * 4, list(range(6)), np.arange(6))
    assert tg_np.vis_in_v.dtype == torch.long and torch.equal(tg_np.idx_v, tg.idx_v)
    for name in MEMORY_LOSSES:
        a, b = LOSSES.build({"type": name}), LOSSES.build({"type": name})
        a.reset(ctx)
        b.reset(as_numpy)
        assert torch.equal(a(out, tg), b(out, tg_np)), name
    detached = StepOutputs(out.feat_v, None, out.feat_r).detach()  # no augmented view
    assert detached.feat_a is None and torch.equal(detached.feat_v, out.feat_v)


def _empty(d=8):
    z = torch.zeros(0, d)
    e = torch.zeros(0, dtype=torch.long)
    out = StepOutputs(feat_v=z, feat_a=z, feat_r=z)
    tg = StepTargets(vis_in_v=e, vis_in_r=e, ir_in_r=e, ir_in_v=e, idx_v=e, idx_r=e, paired=True)
    return out, tg


def test_an_empty_batch_update_is_a_no_op_even_before_reset():
    loss = InstanceNeighbourLoss(parts=False)
    out, tg = _empty()
    loss.update(out, tg)  # an empty batch: no index to check, nothing to move
    assert loss.inst_v.shape == (0, 0) and loss.inst_r.shape == (0, 0)


def test_memory_free_loss_with_no_indices():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 1, 1])
    out = StepOutputs(x, x, x, {}, x, x, x)
    t = StepTargets(y, y, y, y, None, None, paired=True)  # indices a loss never reads
    assert t.idx_v is None
    idx = torch.arange(4)
    with_idx = LOSSES.build({"type": "triplet"})(
        out, StepTargets(y, y, y, y, idx, idx, paired=True)
    )  # the triplet loss never reads idx_v / idx_r
    got = LOSSES.build({"type": "triplet"})(out, t)
    assert float(got) == float(with_idx)


@pytest.mark.parametrize("bad", [np.array([0.7, 1.9]), np.array([np.nan, 1.0]), [0.5, 1.0]])
def test_non_integral_labels_are_refused(bad):
    y = torch.tensor([0, 1])
    with pytest.raises(uvireid.UvireidError, match="StepTargets.vis_in_v: labels and indices"):
        StepTargets(bad, y, y, y, y, y)  # not truncated to other labels silently


def test_integral_float_and_int32_labels_still_convert():
    y = torch.tensor([0, 1])
    t = StepTargets(np.array([1.0, -1.0]), np.array([0, 1], np.int32), y, y, [0, 1], y)
    assert t.vis_in_v.tolist() == [1, -1] and t.vis_in_v.dtype == torch.long
    assert t.vis_in_r.dtype == torch.long and t.idx_v.tolist() == [0, 1]
