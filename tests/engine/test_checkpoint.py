"""Checkpoints: resume equals an uninterrupted run, strict loading, NaN keeps the last good."""

from __future__ import annotations

import logging

import pytest
import torch
from train_fixtures import run_killed_at

from uvireid.config import load_recipe
from uvireid.engine.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from uvireid.engine.run_folder import RunFolder
from uvireid.engine.runner import run_recipe
from uvireid.engine.trainer import Trainer
from uvireid.errors import CheckpointError, TrainingError
from uvireid.losses.cluster_contrast import DualClusterContrastLoss


def _final(folder: RunFolder) -> dict:
    return load_checkpoint(folder.checkpoints / "latest.pt")


def _assert_same_weights_and_memories(a: dict, b: dict) -> None:
    """Two checkpoints hold bit-identical model weights and SALCR-stage memories."""
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["losses"]["salcr"].items():
        assert torch.equal(value, b["losses"]["salcr"][key]), key


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(recipe_file, tmp_path):
    whole = run_recipe(load_recipe(recipe_file, [f"output_dir={tmp_path / 'a'}"]), progress=False)
    cfg = load_recipe(recipe_file, [f"output_dir={tmp_path / 'b'}"])
    part = run_killed_at(cfg)
    assert _final(part)["epoch"] == 1 and not (part.path / "results.json").exists()
    resumed = run_recipe(cfg, resume=True, progress=False)
    assert resumed.path == part.path
    a, b = _final(whole), _final(resumed)
    assert b["epoch"] == 2
    _assert_same_weights_and_memories(a, b)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert [m["epoch"] for m in resumed.read_metrics()] == [0, 1]


def test_resume_warns_when_seed_or_data_differ(recipe_file, tmp_path, caplog):
    from uvireid.registry import DATASETS

    cfg = load_recipe(recipe_file)
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    tr.epoch = 1
    state = tr.state_dict()
    state["dataset"] = {"sha1": "another"}
    state["source"] = {"commit": "0123456789abcdef", "dirty": False}
    path = save_checkpoint(tmp_path / "ck", state)
    other = Trainer(load_recipe(recipe_file, ["seed=99"]), tr.dataset, "cpu", None, progress=False)
    other.source = {"commit": "fedcba9876543210", "dirty": True}
    with caplog.at_level(logging.WARNING):
        other.restore(path)
    assert "seed 3, this recipe has seed 99" in caplog.text
    assert "dataset differs from the checkpoint's" in caplog.text
    assert "at commit 0123456789ab, this is fedcba987654 with uncommitted changes" in caplog.text
    assert other.epoch == 1


def test_loading_weights_with_missing_or_unexpected_keys_lists_them():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    sd = model.state_dict()
    del sd["1.running_mean"]
    sd["2.weight"] = torch.zeros(1)
    with pytest.raises(
        CheckpointError,
        match=r"1 missing key\(s\): 1.running_mean; "
        r"1 unexpected key\(s\): 2.weight",
    ):
        load_state_strict(model, sd)
    good = {f"module.{k}": v for k, v in model.state_dict().items()}
    load_state_strict(model, good)  # DataParallel prefix accepted
    # the same keys with another shape (a checkpoint of a wider layer): named with both
    # shapes, and nothing loaded (torch's own check copies the tensors that fit first)
    wide = dict(model.state_dict(), **{"0.weight": torch.zeros(3, 2), "0.bias": torch.ones(2)})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        CheckpointError,
        match=r"1 tensor\(s\) of another shape: 0\.weight \(checkpoint \[3, 2\], model \[2, 2\]\)",
    ):
        load_state_strict(model, wide)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "latest.pt"
    bad.write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.pt")
    # plain weights (a state dict, as other codebases save them) are not a training state
    weights = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), weights)
    with pytest.raises(CheckpointError, match="not a uvireid training checkpoint.*'pretrained'"):
        load_checkpoint(weights)


def test_a_nan_step_inside_a_read_window_is_named(recipe_file, monkeypatch):
    """The loss values are read back a window of steps at a time (the host does not wait
    for the device every step); a non-finite step in the middle of a window is still
    found and named, and the epoch is not saved."""
    from uvireid.engine import trainer as trainer_mod

    calls = {"n": 0}
    forward = DualClusterContrastLoss.forward

    def nan_from_the_fourth(self, outputs, targets):
        calls["n"] += 1
        value = forward(self, outputs, targets)
        return value * float("nan") if calls["n"] >= 4 else value

    monkeypatch.setattr(DualClusterContrastLoss, "forward", nan_from_the_fourth)
    read = []
    original = trainer_mod.Trainer._read_losses

    def spy(self, pending, sums, first_step):
        read.append((first_step, len(pending)))
        return original(self, pending, sums, first_step)

    monkeypatch.setattr(trainer_mod.Trainer, "_read_losses", spy)
    cfg = load_recipe(recipe_file, ["stages.1.iters_per_epoch=12"])
    with pytest.raises(TrainingError, match="epoch 1, step 3: the loss is nan"):
        run_recipe(cfg, progress=False)
    assert read[-1] == (0, trainer_mod.READ_EVERY)  # one read-back for the first 10 steps
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    assert _final(folder)["epoch"] == 1
    assert len(folder.read_metrics()) == 1


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(recipe_file, monkeypatch):
    def nan_forward(self, outputs, targets):
        return outputs.feat_v.sum() * float("nan")

    monkeypatch.setattr(DualClusterContrastLoss, "forward", nan_forward)
    cfg = load_recipe(recipe_file)
    with pytest.raises(TrainingError, match="the loss is nan.*last good checkpoint is kept"):
        run_recipe(cfg, progress=False)
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    assert _final(folder)["epoch"] == 1
    assert len(folder.read_metrics()) == 1


def _uvireid(*args, **kw):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "uvireid", "run", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kw,
    )


@pytest.mark.slow
def test_sigkilled_process_resumes_to_the_uninterrupted_weights(tmp_path):
    """A real ``kill -9`` of ``uvireid run`` after its first checkpoint, then ``--resume``
    in a new process: the final weights equal an uninterrupted run's, bit for bit."""
    import time

    import yaml
    from train_fixtures import tiny_recipe

    rec = tiny_recipe(tmp_path)
    rec["train"]["iters_per_epoch"] = 4
    rec["stages"][1]["epochs"] = 3
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(rec))
    # the uninterrupted run beside the one to kill (a core each: the tiny recipe trains
    # on one thread)
    whole = _uvireid(path, f"output_dir={tmp_path / 'a'}")
    out_b = tmp_path / "b"
    victim = _uvireid(path, f"output_dir={out_b}")
    latest = None
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        found = sorted(out_b.glob("**/checkpoints/latest.pt"))
        if found:
            latest = found[0]
            try:
                if load_checkpoint(latest)["epoch"] >= 1:
                    break
            except CheckpointError:
                pass  # being replaced right now: the rename is atomic, read again
        time.sleep(0.05)
    victim.kill()  # SIGKILL: no handler, no cleanup
    victim.wait(timeout=60)
    assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()[-2000:]
    assert latest is not None, "the run wrote no checkpoint"
    run_dir = latest.parent.parent
    done = load_checkpoint(latest)["epoch"]
    assert 1 <= done < 4, f"the kill came too late (epoch {done}); lengthen the run"
    assert not (run_dir / "results.json").exists()

    resumed = _uvireid(path, f"output_dir={out_b}", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    (a_ckpt,) = (tmp_path / "a").glob("**/checkpoints/latest.pt")
    a, b = load_checkpoint(a_ckpt), load_checkpoint(latest)
    assert b["epoch"] == a["epoch"] == 4
    _assert_same_weights_and_memories(a, b)
    assert (run_dir / "results.json").exists()


@pytest.mark.parametrize("links", [True, False])
def test_best_checkpoint_keeps_its_epoch_when_latest_moves_on(tmp_path, monkeypatch, links):
    """``keep_as_best``: best.pt is latest.pt as it was (a hard link, or a copy where the
    file system has none); the next latest.pt is a new file and leaves best.pt alone; no
    temporary file is left behind."""
    from uvireid.engine.checkpoint import keep_as_best

    if not links:

        def no_link(*args, **kwargs):
            raise OSError("hard links not supported")

        monkeypatch.setattr("os.link", no_link)
    save_checkpoint(tmp_path, {"epoch": 1, "w": torch.ones(3)})
    best = keep_as_best(tmp_path)
    save_checkpoint(tmp_path, {"epoch": 2, "w": torch.zeros(3)})
    assert load_checkpoint(best)["epoch"] == 1 and torch.equal(
        load_checkpoint(best)["w"], torch.ones(3)
    )
    assert load_checkpoint(tmp_path / "latest.pt")["epoch"] == 2
    keep_as_best(tmp_path)  # replaces the old best
    assert load_checkpoint(best)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "latest.pt"]


def test_set_rng_state_restores_python_numpy_and_torch_streams():
    """A plugin (a clusterer, sklearn with random_state=None) may draw from Python's or
    NumPy's global stream: a resume must bring those back too (mutation audit BZ)."""
    import random

    import numpy as np

    from uvireid.engine.checkpoint import rng_state, set_rng_state

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    saved = rng_state()
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.random(), np.random.rand(5), torch.rand(5)  # every stream moves on
    set_rng_state(saved)
    again = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    assert again == first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_rng_state_round_trips():
    """A resumed run on a GPU draws the CUDA stream the killed one would have (dropout,
    on-device augmentation): the state is recorded once CUDA is initialised and restored
    (mutation audit MH: a restore dropped survived on the CPU)."""
    from uvireid.engine.checkpoint import rng_state, set_rng_state

    torch.cuda.manual_seed_all(3)
    torch.rand(1, device="cuda")  # CUDA initialised, its generator used
    saved = rng_state()
    assert "cuda" in saved and len(saved["cuda"]) == torch.cuda.device_count()
    first = torch.rand(5, device="cuda").cpu()
    torch.rand(7, device="cuda")  # the stream moves on
    set_rng_state(saved)
    assert torch.equal(torch.rand(5, device="cuda").cpu(), first)


def test_cuda_rng_state_of_another_gpu_count_is_a_warning(monkeypatch, caplog):
    """A checkpoint written on 2 GPUs and resumed on 1: CUDA refuses the other count of
    states; the resume goes on with the other streams restored and says so."""
    from uvireid.engine import checkpoint as C

    calls = []

    def refuse(states):
        calls.append(states)
        raise RuntimeError("Expected a state per device")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse)
    torch.manual_seed(5)
    state = {**C.rng_state(), "cuda": ["gpu0", "gpu1"]}
    want = torch.rand(3)
    torch.rand(4)
    with caplog.at_level(logging.WARNING, logger=C.logger.name):
        C.set_rng_state(state)
    assert calls == [["gpu0", "gpu1"]]
    assert torch.equal(torch.rand(3), want)  # the CPU stream restored all the same
    assert "CUDA RNG state not restored" in caplog.text


def test_weights_sha1_tells_weights_apart_and_ignores_wrappers_and_devices():
    """The fingerprint a features file records: the same for the same tensors however the
    module is wrapped (DDP's `module.`, torch.compile's `_orig_mod.`) or reached (its
    state dict, a checkpoint's), different for one changed element, dtype or name."""
    import hashlib

    from torch import nn

    from uvireid.engine.checkpoint import weights_sha1

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    same = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    same.load_state_dict(net.state_dict())
    sha = weights_sha1(net)
    assert len(sha) == 40 and int(sha, 16) >= 0
    assert weights_sha1(same) == sha == weights_sha1(net.state_dict())
    backwards = dict(reversed(list(net.state_dict().items())))  # another key order (FD)
    assert list(backwards) != list(net.state_dict()) and weights_sha1(backwards) == sha

    class Wrapper(nn.Module):  # as DDP and torch.compile name their child
        def __init__(self, name, inner):
            super().__init__()
            self.add_module(name, inner)

    assert weights_sha1(Wrapper("module", Wrapper("_orig_mod", net))) == sha
    assert weights_sha1(Wrapper("head", net)) != sha  # another name is another model
    with torch.no_grad():
        same[0].weight[1, 2] = torch.nextafter(same[0].weight[1, 2], torch.tensor(1.0))
    assert weights_sha1(same) != sha  # one ulp of one weight
    assert weights_sha1(net.double()) != weights_sha1(net.float())  # values equal, dtype not
    assert weights_sha1(net.bfloat16()) != sha  # any dtype hashes
    # the bytes it hashes, independently: one tensor's raw bytes after its header
    one = {"w": torch.arange(6, dtype=torch.int16).reshape(2, 3)}
    want = hashlib.sha1(b"w|torch.int16|(2, 3)|" + bytes([0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0]))
    assert weights_sha1(one) == want.hexdigest()
    if torch.cuda.is_available():
        net = net.float()
        assert weights_sha1(net.cuda()) == weights_sha1(net.cpu())
