"""triplet / cross_triplet: batch-hard triplet on the pre-BN pooled features (Hermans et
al., 2017), against a loop over the anchors in float64 (the trainer's side, the features
before the BN neck: tests/engine/test_epoch_records.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uvireid.errors import ConfigError
from uvireid.losses import CrossTripletLoss, StepOutputs, StepTargets, TripletLoss
from uvireid.registry import LOSSES


def _batch_hard_loop(feat: np.ndarray, labels: np.ndarray, margin):
    """(sum over valid anchors, count) by a loop: the hardest positive among the other
    rows of the anchor's label, the hardest negative among the labelled rows of other
    labels; -1 rows take no part."""
    total, count = 0.0, 0
    for i in range(len(labels)):
        if labels[i] < 0:
            continue
        pos = [
            np.linalg.norm(feat[i] - feat[j])
            for j in range(len(labels))
            if j != i and labels[j] == labels[i]
        ]
        neg = [
            np.linalg.norm(feat[i] - feat[j])
            for j in range(len(labels))
            if labels[j] >= 0 and labels[j] != labels[i]
        ]
        if not pos or not neg:
            continue
        gap = max(pos) - min(neg)
        total += math.log1p(math.exp(gap)) if margin is None else max(0.0, gap + margin)
        count += 1
    return total, count


def _batch(seed: int, s: int = 9, d: int = 6):
    rng = np.random.default_rng(seed)
    pool = [rng.normal(size=(s, d)) for _ in range(3)]
    pool[1][0] = pool[0][0]  # a duplicate row: the CA view equal to its image
    pool[2][3] = pool[0][2]  # a duplicate across modalities, a positive in the visible space
    pool[2][5] = pool[0][0]  # and one of another label: a negative at distance 0
    # labels with outliers (-1), a singleton label and ties of distance
    vis_in_v = np.array([0, 0, 1, 1, 2, -1, 3, 3, -1])
    ir_in_r = np.array([0, 0, 0, 1, -1, 2, 2, 4, 5])
    ir_in_v = np.array([0, 0, 1, 1, -1, 3, 3, -1, 2])
    feats = [torch.tensor(p, requires_grad=True) for p in pool]
    t = StepTargets(
        *(torch.from_numpy(x) for x in (vis_in_v, vis_in_v, ir_in_r, ir_in_v)),
        torch.arange(s),
        torch.arange(s),
        paired=False,
    )
    outputs = StepOutputs(*[torch.zeros(s, d)] * 3, {}, *feats)
    return pool, (vis_in_v, ir_in_r, ir_in_v), outputs, t


@pytest.mark.parametrize("margin", [0.3, 0.0, 2.5, None])
@pytest.mark.parametrize("seed", [0, 1])
def test_triplet_equals_a_loop_over_the_anchors(margin, seed):
    pool, (vis_in_v, ir_in_r, _), outputs, targets = _batch(seed)
    got = TripletLoss(margin=margin)(outputs, targets)
    s_vis, n_vis = _batch_hard_loop(
        np.concatenate([pool[0], pool[1]]), np.concatenate([vis_in_v, vis_in_v]), margin
    )
    s_ir, n_ir = _batch_hard_loop(pool[2], ir_in_r, margin)
    want = (s_vis / n_vis + s_ir / n_ir) / 2
    assert float(got.detach()) == pytest.approx(want, rel=1e-9, abs=1e-12)
    got.backward()
    assert all(torch.isfinite(f.grad).all() for f in (outputs.pool_v, outputs.pool_r))


@pytest.mark.parametrize("margin", [0.3, None])
def test_cross_triplet_equals_a_loop_in_the_visible_space(margin):
    pool, (vis_in_v, _, ir_in_v), outputs, targets = _batch(2)
    got = CrossTripletLoss(margin=margin)(outputs, targets)
    total, count = _batch_hard_loop(
        np.concatenate(pool), np.concatenate([vis_in_v, vis_in_v, ir_in_v]), margin
    )
    assert float(got.detach()) == pytest.approx(total / count, rel=1e-9)
    got.backward()
    assert torch.isfinite(outputs.pool_r.grad).all() and outputs.pool_r.grad.abs().sum() > 0


def test_a_group_without_a_valid_anchor_is_left_out_and_none_gives_zero():
    pool, (vis_in_v, _, _), outputs, targets = _batch(3)
    targets.ir_in_r = torch.full_like(targets.ir_in_r, -1)  # no infrared label at all
    got = TripletLoss()(outputs, targets)
    s_vis, n_vis = _batch_hard_loop(
        np.concatenate([pool[0], pool[1]]), np.concatenate([vis_in_v, vis_in_v]), 0.3
    )
    assert float(got.detach()) == pytest.approx(s_vis / n_vis, rel=1e-9)  # not halved
    targets.vis_in_v = torch.zeros_like(targets.vis_in_v)  # one label: no negative
    zero = TripletLoss()(outputs, targets)
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_triplet_settings_and_missing_pool_features_are_clear_errors():
    with pytest.raises(ConfigError, match="margin must be a number >= 0 or null"):
        LOSSES.build({"type": "triplet", "margin": -1})
    with pytest.raises(ConfigError, match="margin must be a number >= 0 or null"):
        LOSSES.build({"type": "cross_triplet", "margin": True})
    _, _, outputs, targets = _batch(0)
    outputs.pool_v = None
    with pytest.raises(ConfigError, match="needs_pool = True"):
        TripletLoss()(outputs, targets)
    assert CrossTripletLoss.needs_cross_labels and not getattr(TripletLoss, "needs_cross_labels", 0)
