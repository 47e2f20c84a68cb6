"""Mutation audit OE: checkpoint.py's contracts (format refusal, fingerprints, best links, RNG round
trips, a full disk during a save)."""

from __future__ import annotations

import errno
import io
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from uvireid.engine import checkpoint as C
from uvireid.errors import CheckpointError


def test_a_checkpoint_of_a_newer_format_is_named_as_such(tmp_path):
    """A checkpoint written by a newer uvireid (format 2) is a uvireid checkpoint: the error
    names its format, as ``backbone.pretrained`` does, instead of calling it no uvireid
    checkpoint and advising ``pretrained`` (which then refuses it for its format)."""
    torch.save({"format": C.FORMAT + 1, "epoch": 3, "model": {}}, tmp_path / "latest.pt")
    with pytest.raises(CheckpointError) as info:
        C.load_checkpoint(tmp_path / "latest.pt")
    msg = str(info.value)
    assert f"format {C.FORMAT + 1}" in msg
    assert "not a uvireid training checkpoint" not in msg


def test_a_dict_without_a_checkpoints_shape_is_still_no_uvireid_checkpoint(tmp_path):
    """Plain weights, or a dict with a 'format' key of its own but not a checkpoint's
    entries: the advice to load plain weights through 'pretrained' as before."""
    torch.save({"format": "other", "w": torch.ones(2)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="not a uvireid training checkpoint"):
        C.load_checkpoint(tmp_path / "w.pt")


class _ModuleChild(nn.Module):
    """A child named ``module`` beside parameters of the child's own names."""

    def __init__(self):
        super().__init__()
        self.module = nn.Linear(2, 2)
        self.weight = nn.Parameter(torch.zeros(2, 2))
        self.bias = nn.Parameter(torch.zeros(2))


def test_weights_sha1_tells_apart_models_that_differ_in_any_tensor():
    """A model's own child named ``module`` keeps its tensors apart from the parent's of the
    same names (the prefix was dropped from every name: ``module.weight`` and ``weight``
    became one entry, and two different models had one weights_sha1); a DDP-style wrapper's
    prefix, on every name, is still dropped."""
    a = _ModuleChild()
    b = _ModuleChild()
    b.load_state_dict(a.state_dict())
    assert C.weights_sha1(a) == C.weights_sha1(b)
    with torch.no_grad():
        b.weight.fill_(5.0)
    assert not torch.equal(a.weight, b.weight)
    assert C.weights_sha1(a) != C.weights_sha1(b)
    wrapped = {f"module.{k}": v for k, v in a.state_dict().items()}
    assert C.weights_sha1(wrapped) == C.weights_sha1(a)


def test_keep_as_best_twice_leaves_no_temporary_file(tmp_path):
    """``best.pt`` already the same file as ``latest.pt``: no temporary link is left (POSIX
    rename of one file's two names does nothing, and the temporary name stayed, holding a
    whole checkpoint's space once latest.pt moved on)."""
    C.save_checkpoint(tmp_path, {"epoch": 1, "w": torch.ones(3)})
    C.keep_as_best(tmp_path)
    C.keep_as_best(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "latest.pt"]
    assert C.load_checkpoint(tmp_path / "best.pt")["epoch"] == 1


def test_keep_as_best_twice_keeps_best_the_same_file_as_latest(tmp_path):
    C.save_checkpoint(tmp_path, {"epoch": 1})
    C.keep_as_best(tmp_path)
    C.keep_as_best(tmp_path)
    assert os.path.samefile(tmp_path / "best.pt", tmp_path / "latest.pt")


def test_a_full_disk_during_the_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """ENOSPC in the middle of torch.save's stream (after 4 KiB): a DiskFullError, the
    previous latest.pt as it was, no temporary file."""
    from uvireid import fileio
    from uvireid.errors import DiskFullError

    C.save_checkpoint(tmp_path, {"epoch": 1, "w": torch.ones(4)})
    real = os.fdopen

    class Full(io.FileIO):
        written = 0

        def write(self, b):
            Full.written += len(b)
            if Full.written > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(b)

    def fdopen(fd, mode="r", *args, **kwargs):
        return Full(fd, "wb") if "w" in mode else real(fd, mode, *args, **kwargs)

    monkeypatch.setattr(fileio.os, "fdopen", fdopen)
    with pytest.raises(DiskFullError, match="previous file is unchanged"):
        C.save_checkpoint(tmp_path, {"epoch": 2, "w": torch.zeros(1 << 14)})
    monkeypatch.undo()
    got = C.load_checkpoint(tmp_path / "latest.pt")
    assert got["epoch"] == 1 and torch.equal(got["w"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_a_truncated_checkpoint_is_unreadable_and_names_its_path(tmp_path):
    path = C.save_checkpoint(tmp_path, {"epoch": 1, "w": torch.arange(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable") as info:
        C.load_checkpoint(path)
    assert info.value.checkpoint == str(path.resolve())


def test_rng_states_round_trip_through_a_checkpoint_file(tmp_path):
    """Python's, NumPy's and torch's streams saved in a checkpoint file and restored from
    the file draw what they drew after the save; no CUDA state where CUDA is not in use."""
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    random.random(), np.random.rand(2), torch.rand(2)  # not at the seeds' start
    path = C.save_checkpoint(tmp_path, {"epoch": 1, "rng": C.rng_state()})
    want = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # every stream elsewhere
    C.set_rng_state(C.load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == want
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        assert "cuda" not in C.load_checkpoint(path)["rng"]


@pytest.mark.parametrize("which", ["python", "numpy", "torch"])
def test_each_stream_is_restored_on_its_own(which):
    """Only one stream moved after the save: set_rng_state brings it back (a restore that
    skipped it would leave it moved on)."""
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    saved = C.rng_state()
    draw = {
        "python": lambda: [random.random() for _ in range(3)],
        "numpy": lambda: np.random.rand(3).tolist(),
        "torch": lambda: torch.rand(3).tolist(),
    }[which]
    first = draw()
    draw()
    C.set_rng_state(saved)
    assert draw() == first


def test_a_gpu_checkpoints_cuda_state_is_skipped_without_cuda(monkeypatch):
    """A checkpoint of a GPU run resumed where CUDA is absent: the CUDA states are not
    touched (no error), the other streams are restored."""
    called = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: called.append(s))
    torch.manual_seed(11)
    state = {**C.rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)]}
    want = torch.rand(2)
    torch.rand(5)
    C.set_rng_state(state)
    assert called == [] and torch.equal(torch.rand(2), want)


def test_a_cuda_state_for_a_missing_device_index_is_a_warning(monkeypatch, caplog):
    """``set_rng_state_all`` of more states than GPUs can fail with an IndexError: warned,
    not raised."""

    def refuse(states):
        raise IndexError("list index out of range")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse)
    with caplog.at_level("WARNING", logger=C.logger.name):
        C.set_rng_state({**C.rng_state(), "cuda": ["a", "b"]})
    assert "CUDA RNG state not restored" in caplog.text


def test_nested_wrapper_prefixes_are_dropped_and_a_double_prefix_hashes_the_same():
    """torch.compile(DDP(m)) names keys '_orig_mod.module.'; both the load and the
    fingerprint see the plain names."""
    plain = nn.Linear(2, 2)
    state = {
        f"_orig_mod.module.{k}": torch.full_like(v, 0.5) for k, v in plain.state_dict().items()
    }
    C.load_state_strict(plain, state)
    assert torch.equal(plain.weight, torch.full((2, 2), 0.5))
    assert C.weights_sha1(state) == C.weights_sha1(plain)


def test_weights_sha1_of_tensors_that_require_grad():
    """A plain dict of parameters (requires_grad) hashes as their detached values."""
    lin = nn.Linear(3, 2)
    params = dict(lin.named_parameters())
    assert all(p.requires_grad for p in params.values())
    assert C.weights_sha1(params) == C.weights_sha1(lin)


def test_rng_state_does_not_start_cuda_where_the_run_never_used_it(monkeypatch):
    """A CPU run on a machine with a GPU: reading the CUDA states would initialise CUDA (a
    context on the GPU for nothing); they are recorded only once CUDA is initialised."""
    read = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: read.append(1) or ["s"])
    assert "cuda" not in C.rng_state() and read == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert C.rng_state()["cuda"] == ["s"]


def test_backbone_state_takes_only_keys_that_start_with_the_prefix():
    """A nested module's ``...backbone.`` keys (a teacher's, a head's) are not the
    backbone's."""
    w, other = torch.ones(2), torch.zeros(2)
    state = {"model": {"backbone.w": w, "teacher.backbone.w": other, "head.backbone_w": other}}
    assert C.backbone_state(state) == {"w": w}


class _Named(nn.Module):
    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


def test_a_refused_checkpoint_names_its_keys_as_the_file_spells_them():
    """The model's own keys carry ``module.``: the checkpoint's keys are not stripped, and
    the unexpected ones are listed as they are in the file."""
    model = _Named(module=nn.Linear(2, 2))
    state = {"module.w": torch.zeros(2, 2), "module.b": torch.zeros(2)}
    with pytest.raises(CheckpointError) as info:
        C.load_state_strict(model, state)
    assert "2 missing key(s): module.bias, module.weight" in str(info.value)
    assert "2 unexpected key(s): module.b, module.w" in str(info.value)


def test_a_missing_checkpoint_names_its_resolved_path_for_the_cli(tmp_path, monkeypatch):
    """The CLI's hint reads ``err.checkpoint``: the absolute path of the missing file."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint at") as info:
        C.load_checkpoint("run/checkpoints/latest.pt")
    assert info.value.checkpoint == str(tmp_path.resolve() / "run/checkpoints/latest.pt")
