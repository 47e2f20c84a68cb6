"""Mutation audit MH: checkpoint.py's contracts its mutants showed untested (strict loading's
listings and shape checks, the atomic save, the backbone's weights of a checkpoint)."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from uvireid.engine.checkpoint import (
    backbone_state,
    load_checkpoint,
    load_state_strict,
    save_checkpoint,
)
from uvireid.errors import CheckpointError


class _Named(nn.Module):
    """Children under the given names (as DDP names its child ``module``)."""

    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


def _snapshot(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _unchanged(module: nn.Module, before: dict) -> bool:
    return all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def test_only_missing_keys_are_listed_and_nothing_is_loaded():
    """A checkpoint that lacks keys but has no extra one is refused all the same (not a
    KeyError, not torch's message): the missing keys named, the model untouched."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    before = _snapshot(model)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items() if k != "1.weight"}
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): 1\.weight\)") as info:
        load_state_strict(model, state)
    assert "unexpected" not in str(info.value)
    assert _unchanged(model, before)
    extra = dict(model.state_dict(), **{"2.bias": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"\(1 unexpected key\(s\): 2\.bias\)"):
        load_state_strict(model, extra)


def test_a_long_listing_shows_eight_keys_and_counts_the_rest():
    """``_SHOWN`` = 8 keys named (sorted), then "and N more"; 8 exactly: no "and"."""
    model = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(10)])
    names = sorted(model.state_dict())  # 0.weight .. 9.weight
    with pytest.raises(CheckpointError) as info:
        load_state_strict(model, {})
    assert f"10 missing key(s): {', '.join(names[:8])} and 2 more)" in str(info.value)
    with pytest.raises(CheckpointError) as info:
        load_state_strict(model, {k: v for k, v in model.state_dict().items() if k in names[8:]})
    assert f"8 missing key(s): {', '.join(names[:8])})" in str(info.value)
    assert " more" not in str(info.value)


def test_a_parameter_of_the_same_size_but_another_shape_is_refused_before_loading():
    """A [3, 2] weight for a [2, 3] one has as many elements: still another shape, named
    with both shapes, and no tensor of the checkpoint is copied (torch's own check would
    have copied the bias that fits first)."""
    model = nn.Linear(3, 2)
    before = _snapshot(model)
    state = {"weight": torch.ones(3, 2), "bias": torch.full((2,), 7.0)}
    with pytest.raises(
        CheckpointError,
        match=r"1 tensor\(s\) of another shape: weight \(checkpoint \[3, 2\], model \[2, 3\]\)",
    ):
        load_state_strict(model, state)
    assert _unchanged(model, before)


def test_a_tensor_torch_refuses_is_a_checkpoint_error_with_torchs_message():
    """What the key and shape checks let through and torch refuses (a buffer of another
    size, a parameter that is no tensor) is a CheckpointError, not torch's RuntimeError."""

    class WithBuffer(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.register_buffer("table", torch.zeros(n))

    with pytest.raises(
        CheckpointError, match=r"(?s)does not fit the model: .*size mismatch for table"
    ):
        load_state_strict(WithBuffer(3), {"table": torch.zeros(4)})
    lin = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"(?s)does not fit the model: .*\"weight\""):
        load_state_strict(lin, {"weight": [[1.0, 2.0], [3.0, 4.0]], "bias": torch.zeros(2)})


def test_the_module_prefix_is_dropped_only_when_every_key_carries_it():
    """A model with a child named ``module`` beside others loads its own state: the
    DDP prefix is dropped only when all keys carry it."""
    model = _Named(module=nn.Linear(2, 2), head=nn.Linear(2, 1))
    state = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    load_state_strict(model, state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_model_whose_keys_all_start_with_module_loads_its_own_state():
    """A model whose only child is named ``module`` (a DataParallel/DDP wrapper itself, or
    a plugin's naming) loads its own ``state_dict``: the prefix is dropped from the
    checkpoint's keys only where the model's keys do not carry it. A torch.compile'd
    model's ``_orig_mod.`` keys load into the plain model."""
    model = _Named(module=nn.Linear(2, 2))
    state = {k: torch.full_like(v, 0.25) for k, v in model.state_dict().items()}
    load_state_strict(model, state)
    assert torch.equal(model.module.weight, torch.full((2, 2), 0.25))
    plain = nn.Linear(2, 2)
    compiled = {f"_orig_mod.{k}": torch.full_like(v, 0.75) for k, v in plain.state_dict().items()}
    load_state_strict(plain, compiled)
    assert torch.equal(plain.weight, torch.full((2, 2), 0.75))


def test_save_checkpoint_marks_the_format_and_load_reads_it_back(tmp_path):
    path = save_checkpoint(tmp_path, {"epoch": 2, "w": torch.arange(3)})
    assert path == tmp_path / "latest.pt"
    raw = torch.load(path, weights_only=False)
    assert raw["format"] == 1 and raw["epoch"] == 2
    got = load_checkpoint(path)
    assert got["epoch"] == 2 and torch.equal(got["w"], torch.arange(3))
    # a directory where the file should be is no checkpoint (not torch's IsADirectoryError)
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "dir.pt")
    # a pickle that is not torch's zip format (another error type than a truncation)
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"format": 1}, protocol=2)[:-3])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "pickle.pt")
    # a dict holding another format number, and a non-dict
    torch.save({"format": 99, "epoch": 1}, tmp_path / "future.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    for name in ("future.pt", "list.pt"):
        with pytest.raises(CheckpointError, match="not a uvireid training checkpoint"):
            load_checkpoint(tmp_path / name)


def test_a_state_holding_its_own_format_key_is_still_readable(tmp_path):
    """``save_checkpoint`` puts its format first and lets the caller's ``format`` key
    override it: the file it writes is then refused by ``load_checkpoint``."""
    path = save_checkpoint(tmp_path, {"epoch": 1, "format": "npz"})
    assert load_checkpoint(path)["epoch"] == 1


class _Exploding:
    """Fails while torch.save pickles it, after the tensors before it were written."""

    def __reduce_ex__(self, protocol):
        raise RuntimeError("disk went away")


def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint_readable(tmp_path):
    """A half-written checkpoint is never read: the save writes a temporary file and
    renames it, so a failure during the write keeps the last complete latest.pt, and no
    temporary file is left."""
    save_checkpoint(tmp_path, {"epoch": 1, "w": torch.ones(4)})
    with pytest.raises(RuntimeError, match="disk went away"):
        save_checkpoint(tmp_path, {"epoch": 2, "w": torch.zeros(1 << 16), "x": _Exploding()})
    got = load_checkpoint(tmp_path / "latest.pt")
    assert got["epoch"] == 1 and torch.equal(got["w"], torch.ones(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_backbone_state_is_the_models_backbone_entries_without_the_prefix():
    w = torch.ones(2)
    state = {"model": {"backbone.conv.weight": w, "head.weight": torch.zeros(1), "x": 1}}
    assert backbone_state(state) == {"conv.weight": w}
    assert backbone_state({"model": {"head.weight": w}}) == {}
    assert backbone_state({"epoch": 1}) == {} and backbone_state({"model": None}) == {}
