"""Mutation audit MC: the loss contract's containers (StepOutputs.detach, StepTargets.on_host,
EpochContext.of) and require_parts' error."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from uvireid.errors import ConfigError
from uvireid.losses import EpochContext, EpochLabels, StepOutputs, StepTargets
from uvireid.losses.contract import require_parts


def _grad(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).requires_grad_() * 1.0


def test_detach_keeps_every_field_in_place_and_cuts_the_graph():
    fields = [_grad(4, 3, seed=i) for i in range(6)]
    parts = {("v", "r"): _grad(4, 2, 3, seed=10), ("r", "v"): _grad(4, 2, 3, seed=11)}
    out = StepOutputs(*fields[:3], parts, *fields[3:])
    det = out.detach()
    names = ["feat_v", "feat_a", "feat_r", "pool_v", "pool_a", "pool_r"]
    for name, want in zip(names, fields):
        got = getattr(det, name)
        assert torch.equal(got, want) and not got.requires_grad, name
        assert got.data_ptr() == want.data_ptr(), name  # a view, not a copy
    assert det.parts.keys() == parts.keys()
    for k, v in parts.items():
        assert torch.equal(det.parts[k], v) and not det.parts[k].requires_grad


def test_detach_without_pools_or_parts_keeps_them_absent():
    out = StepOutputs(*[_grad(2, 3, seed=i) for i in range(3)])
    det = out.detach()
    assert det.parts == {} and det.pool_v is None and det.pool_a is None
    assert det.pool_r is None


def test_on_host_returns_the_host_copy_when_there_is_one():
    cols = [torch.arange(3) for _ in range(6)]
    host = StepTargets(*[c.clone() for c in cols], paired=True)
    t = StepTargets(*cols, paired=True, host=host)
    assert t.on_host() is host
    assert host.on_host() is host


def test_targets_are_unpaired_unless_said():
    t = StepTargets(*[torch.arange(3) for _ in range(6)])
    assert t.paired is False and t.host is None


def test_epoch_context_of_carries_every_label_field():
    labels = EpochLabels(
        vis_in_v=np.array([0, 1]),
        vis_in_r=np.array([1, -1]),
        ir_in_r=np.array([0, 0, 1]),
        ir_in_v=np.array([1, 0, -1]),
        init_v=np.array([0, 1]),
        init_r=np.array([0, 0, 1]),
        num_v=2,
        num_r=2,
        has_cross=False,
        info={"matched": 1},
        matches=np.array([[0, 1]]),
    )
    ctx = EpochContext.of(labels, feats_v=torch.zeros(2, 4), feats_r=torch.zeros(3, 4), epoch=3)
    for f in dataclasses.fields(EpochLabels):
        assert getattr(ctx, f.name) is getattr(labels, f.name), f.name
    assert ctx.epoch == 3 and ctx.feats_r.shape == (3, 4)


def test_require_parts_names_a_single_missing_pair():
    parts = {("v", "v"): torch.zeros(1)}
    with pytest.raises(ConfigError, match=r"PCL needs .*\('r', 'v'\).*it has \('v', 'v'\)"):
        require_parts(parts, [("v", "v"), ("r", "v")], "PCL")
    require_parts(parts, [("v", "v")], "PCL")  # nothing missing: no error


def test_require_parts_says_none_when_there_are_no_parts():
    with pytest.raises(ConfigError, match=r"it has none\)"):
        require_parts({}, [("v", "r")], "FGSAL")
