"""Resuming continues the run it names, with the recipe it started with, and keeps the
record of how it started (users_pain: "resumes that don't")."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
import yaml
from train_fixtures import killed_at_epoch, run_killed_at

from uvireid.cli import main
from uvireid.config import load_recipe
from uvireid.engine.run_folder import RunFolder, check_resume, recipe_changes
from uvireid.engine.runner import run_recipe
from uvireid.errors import ConfigError


def _folder(root, name, mtime):
    path = root / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("name: x\n")
    os.utime(path, (mtime, mtime))
    return path


def test_latest_takes_only_the_recipes_own_folders(tmp_path):
    own = _folder(tmp_path, "tiny-20261126-101500", 1_000)
    again = _folder(tmp_path, "tiny-20261126-101500-2", 2_000)
    _folder(tmp_path, "tiny-lowlr-20261126-101600", 3_000)  # another recipe, newer
    _folder(tmp_path, "tiny-20261126-1016", 4_000)  # not a name create() makes
    (tmp_path / "tiny-20261126-101700").mkdir()  # no config.yaml: not a run
    assert RunFolder.latest(tmp_path, "tiny").path == again
    # the run that started last, as its name records, whatever was written where since
    # (a report into an older run once made --resume pick that finished run)
    os.utime(own, (9_000, 9_000))
    assert RunFolder.latest(tmp_path, "tiny").path == again
    tenth = _folder(tmp_path, "tiny-20261126-101500-10", 100)  # -10 after -2, not before
    assert RunFolder.latest(tmp_path, "tiny").path == tenth
    later = _folder(tmp_path, "tiny-20261127-000001", 50)
    assert RunFolder.latest(tmp_path, "tiny").path == later
    assert RunFolder.latest(tmp_path, "tiny-lowlr").path.name == "tiny-lowlr-20261126-101600"
    assert RunFolder.latest(tmp_path, "other") is None


def test_latest_is_the_run_started_last_across_a_clock_change(tmp_path):
    """Folder names are local time: the hour repeated when daylight saving ends, or a
    scheduler's TZ=UTC, named the later run earlier, and --resume took the older one.
    The manifests' start (with its UTC offset) orders the runs where every run has one;
    else the names do (a manifest's time beside a name's would misorder a copied run)."""

    def run(name, started=None):
        path = _folder(tmp_path, name, 1_000)
        if started is not None:
            (path / "manifest.json").write_text(json.dumps({"started": started}))
        return path

    first = run("tiny-20261025-025000", "2026-10-25T02:50:00+0200")  # summer time
    second = run("tiny-20261025-021000", "2026-10-25T02:10:00+0100")  # 20 min later
    assert RunFolder.latest(tmp_path, "tiny").path == second
    assert [r.path for r in RunFolder.runs_of(tmp_path, "tiny")] == [second, first]
    # a name written under TZ=UTC beside one in UTC+8: the manifests say which is later
    utc = run("tiny-20261026-020000", "2026-10-26T02:00:00+0000")  # 10:00 in UTC+8
    local = run("tiny-20261026-090000", "2026-10-26T09:00:00+0800")  # 01:00 UTC
    assert [r.path for r in RunFolder.runs_of(tmp_path, "tiny")] == [utc, local, second, first]
    # a run without a manifest (stopped before it was written): the names order them all
    bare = run("tiny-20261027-000000")
    names = [r.path for r in RunFolder.runs_of(tmp_path, "tiny")]
    assert names == [bare, local, utc, first, second]


def test_recipe_changes_lists_every_changed_leaf_but_the_free_ones():
    old = {
        "seed": 1,
        "device": "cpu",
        "train": {"lr": 1e-4, "lr_steps": [20, 60], "threads": 1},
        "stages": [{"name": "a", "epochs": 2}, {"name": "b", "epochs": 3}],
        "evaluation": {"every": 1},
        "clusterer": {"type": "dbscan", "eps": 0.6},
    }
    new = {
        "seed": 1,
        "device": "cuda",  # free
        "train": {"lr": 1e-4, "lr_steps": [20], "threads": 4},  # threads free
        "stages": [{"name": "a", "epochs": 2}, {"name": "b", "epochs": 5}],
        "evaluation": {"every": 2},  # free
        "clusterer": {"type": "dbscan", "eps": 0.5, "k1": 20},
    }
    assert recipe_changes(old, new) == {
        "clusterer.eps": (0.6, 0.5),
        "clusterer.k1": ("<absent>", 20),
        "stages.1.epochs": (3, 5),
        "train.lr_steps": ([20, 60], [20]),
    }
    assert recipe_changes(old, old) == {}


def test_a_changed_recipe_is_refused_on_resume_and_recorded_when_allowed(recipe_file, capsys):
    cfg = load_recipe(recipe_file)
    part = run_killed_at(cfg)
    first = json.loads((part.path / "manifest.json").read_text())

    longer = load_recipe(recipe_file, ["stages.1.epochs=2", "clusterer.eps=0.5"])
    with pytest.raises(ConfigError) as err:
        run_recipe(longer, resume=True, progress=False)
    for line in ("stages.1.epochs: 1 -> 2", "clusterer.eps: 0.6 -> 0.5", "--allow-changes"):
        assert line in str(err.value)
    # speed and evaluation settings are not changes of the recipe
    assert check_resume(part, load_recipe(recipe_file, ["train.threads=2"])) == {}
    # the identities trained and tested on are not changed even with --allow-changes: the
    # model trained on the val ids would be tested on them as a validation result (FD)
    held_out = load_recipe(recipe_file, ["data.validation=true"])
    with pytest.raises(ConfigError, match="data.validation: False -> True changes which"):
        check_resume(part, held_out, allow_changes=True)
    assert yaml.safe_load((part.path / "config.yaml").read_text())["clusterer"]["eps"] == 0.6

    # the run folder itself, with an override of its recipe: allowed, then recorded
    argv = ["run", str(part.path), "stages.1.epochs=2", "--resume", "--allow-changes"]
    assert main([*argv, "--no-report"]) == 0
    assert part.path.name in capsys.readouterr().out
    manifest = json.loads((part.path / "manifest.json").read_text())
    assert manifest["started"] == first["started"]
    assert manifest["command"] == first["command"]
    (entry,) = manifest["resumes"]
    # numbered as metrics.jsonl numbers epochs (audit L: "after_epoch 4" of epochs 0..3)
    assert entry["after_epoch"] == 0 and entry["epochs_done"] == 1
    assert entry["changes"] == {"stages.1.epochs": [1, 2], "train.epochs": [2, 3]}
    assert [m["epoch"] for m in part.read_metrics()] == [0, 1, 2]
    assert yaml.safe_load((part.path / "config.yaml").read_text())["train"]["epochs"] == 3


def test_a_run_folder_is_only_resumed(tmp_path, capsys):
    run = _folder(tmp_path, "tiny-20261126-101500", 1_000)
    assert main(["run", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is a run folder: add --resume" in err and "config.yaml" in err
    assert main(["run", "demo", "--allow-changes"]) == 2
    assert "--allow-changes goes with --resume" in capsys.readouterr().err
    assert main(["run", str(tmp_path), "--dry-run"]) == 2
    assert "without config.yaml" in capsys.readouterr().err


def test_a_run_stopped_after_an_epoch_says_how_to_resume_it(recipe_file, monkeypatch, capsys):
    """Ctrl-C, or an error after the first epoch (here a loss that turns NaN in the second
    stage), names the run folder to resume; it keeps its checkpoint."""
    from uvireid.losses.cluster_contrast import DualClusterContrastLoss

    with killed_at_epoch(1):
        assert main(["run", str(recipe_file), "--no-report"]) == 130
    err = capsys.readouterr().err
    cfg = load_recipe(recipe_file)
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    assert "interrupted; the run keeps its last finished epoch's checkpoint" in err
    assert f"`uvireid run {folder.path} --resume`" in err
    assert "after fixing the cause" not in err  # a stop is not an error (audit AV)
    assert "stopped (Ctrl-C / SIGINT) after epoch 0" in (folder.path / "log.txt").read_text()
    monkeypatch.setattr(
        DualClusterContrastLoss, "forward", lambda self, o, t: o.feat_v.sum() * float("nan")
    )
    assert main(["run", str(folder.path), "--resume", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "TrainingError" in err and f"`uvireid run {folder.path} --resume`" in err

    # an error that is not uvireid's (here torch's out-of-memory): its traceback, then
    # the same way back
    def oom(self, o, t):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(DualClusterContrastLoss, "forward", oom)
    assert main(["run", str(folder.path), "--resume", "--no-report"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "OutOfMemoryError: CUDA out of memory" in err
    assert err.rstrip().endswith(f"`uvireid run {folder.path} --resume`")


def test_a_run_stopped_before_its_first_checkpoint_names_its_folder(recipe_file, capsys):
    """Audit AV: stopped in epoch 0, the message was a bare "interrupted", although
    `--resume` starts the run again in its folder."""
    with killed_at_epoch(0):
        assert main(["run", str(recipe_file), "--no-report"]) == 130
    err = capsys.readouterr().err
    cfg = load_recipe(recipe_file)
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    assert f"interrupted; the run in {folder.path} has no finished epoch yet" in err
    assert f"`uvireid run {folder.path} --resume` starts it again there" in err
    assert "stopped (Ctrl-C / SIGINT) after no epoch" in (folder.path / "log.txt").read_text()
    # resumed (and stopped in epoch 0 again): the start from scratch is said, not silent
    with killed_at_epoch(0):
        assert main(["run", str(folder.path), "--resume", "--no-report"]) == 130
    assert f"resume: {folder.path} has no checkpoint yet" in (folder.path / "log.txt").read_text()


def test_an_error_before_any_epoch_gives_no_resume_hint(monkeypatch, capsys):
    from uvireid.engine import runner

    def failing(cfg, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_recipe", failing)
    assert main(["run", "demo", "--no-report"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_a_builtin_recipe_name_is_not_shadowed_by_a_folder_of_that_name(
    tmp_path, monkeypatch, capsys
):
    """`uvireid run demo output_dir=demo` leaves ./demo/ behind; `uvireid run demo` must
    still mean the built-in recipe, not that folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "notes.txt").write_text("not a recipe")
    assert load_recipe("demo")["name"] == "demo"
    assert main(["run", "demo", "--dry-run"]) == 0
    assert "# resolved recipe 'demo'" in capsys.readouterr().out
    (tmp_path / "mine").mkdir()  # a folder that names no built-in recipe is no recipe
    with pytest.raises(ConfigError, match="is a folder without config.yaml"):
        load_recipe("mine")


def test_a_finished_run_is_not_extended_by_a_resume_with_changes(recipe_file, capsys):
    """``--resume --allow-changes stages.1.epochs=3`` on a finished run announced the
    changes as recorded, trained nothing and exited 0; now it says the run has finished
    and how to train with the changes. Without changes, "already finished" as before."""
    cfg = load_recipe(recipe_file)
    folder = run_recipe(cfg, progress=False)
    manifest = (folder.path / "manifest.json").read_text()
    rc = main(["run", str(folder.path), "--resume", "--allow-changes", "stages.1.epochs=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "has finished (results.json)" in err and "stages.1.epochs: 1 -> 3" in err
    assert f"uvireid run {folder.path / 'config.yaml'} KEY=VALUE" in err
    assert (folder.path / "manifest.json").read_text() == manifest  # nothing recorded
    assert main(["run", str(folder.path), "--resume", "--no-report"]) == 0


def test_a_damaged_checkpoint_is_not_offered_as_the_way_back(recipe_file, capsys):
    """Resuming from a damaged latest.pt says so, without the usual "continue with
    --resume" line, which would point at the same damaged file."""
    cfg = load_recipe(recipe_file)
    folder = run_killed_at(cfg)
    (folder.checkpoints / "latest.pt").write_bytes(b"\x80 damaged")
    assert main(["run", str(folder.path), "--resume", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "is unreadable" in err and "Restore it from a copy" in err
    assert "--resume`" not in err


def test_the_losses_of_a_stage_not_yet_started_may_change_on_resume(recipe_file):
    """Killed after the DCL stage: the SALCR stage has not started, so its losses hold
    nothing trained and ``--allow-changes`` may change them (the strict load of their
    state used to blame another architecture)."""
    cfg = load_recipe(recipe_file)
    part = run_killed_at(cfg)  # epoch 0 (DCL) done, SALCR not started
    fewer = load_recipe(
        recipe_file,
        ["stages.1.losses=[{type: dual_cluster_contrast}, {type: part_contrast, num_parts: 2}]"],
    )
    run_recipe(fewer, resume=part.path, allow_changes=True, progress=False)
    last = part.read_metrics()[-1]
    assert last["epoch"] == 1 and set(last["loss"]) == {
        "total",
        "dual_cluster_contrast",
        "part_contrast",
    }


def test_a_refused_resume_builds_no_dataset(recipe_file, monkeypatch):
    """A resume refused for a changed recipe stops before the dataset is built (a
    synthetic one was generated in full, then refused)."""
    from uvireid.registry import DATASETS

    cfg = load_recipe(recipe_file)
    part = run_killed_at(cfg)
    built = []
    real = DATASETS.build
    monkeypatch.setattr(
        DATASETS, "build", lambda spec, **kw: built.append(spec) or real(spec, **kw)
    )
    with pytest.raises(ConfigError, match="the recipe differs"):
        run_recipe(load_recipe(recipe_file, ["seed=4"]), resume=part.path, progress=False)
    assert built == []


def _killed_while_its_trainer_is_built(cfg):
    """Run ``cfg`` until it is killed while its trainer is built (before any epoch)."""
    from uvireid.engine import trainer as trainer_mod

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt("killed while building the prior")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod.Trainer, "__init__", killed)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(cfg, progress=False)


def test_a_run_killed_while_its_trainer_is_built_is_a_run_folder_to_resume(recipe_file):
    """Audit G (session 16): building the starting weights takes minutes before the first
    epoch; killed then, the folder had log.txt only, so `report` and `--resume` called it
    "not a run folder" and every later --resume started another folder."""
    from uvireid.engine import trainer as trainer_mod

    cfg = load_recipe(recipe_file)
    real = trainer_mod.Trainer.__init__
    _killed_while_its_trainer_is_built(cfg)
    assert trainer_mod.Trainer.__init__ is real
    stopped = RunFolder.latest(cfg["output_dir"], cfg["name"])
    assert stopped is not None and not (stopped.path / "checkpoints" / "latest.pt").exists()
    folder = run_recipe(cfg, resume=True, progress=False)
    assert folder.path == stopped.path and (folder.path / "results.json").exists()


def test_a_resume_removes_the_partial_files_a_kill_left(recipe_file):
    """Audit L: a SIGKILL in torch.save left checkpoints/.latest.pt.*.tmp (72 MB of a
    136 MB checkpoint) behind, one more for every kill."""
    from train_fixtures import run_killed_at

    cfg = load_recipe(recipe_file)
    folder = run_killed_at(cfg)
    stale = [folder.checkpoints / ".latest.pt.abcd1234.tmp", folder.path / ".features.npz.x.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)
    run_recipe(cfg, resume=True, progress=False)
    assert not any(p.exists() for p in stale)


def _run_from_before_the_optimizer(cfg: dict, **train_keys) -> RunFolder:
    """A run folder whose config.yaml is ``cfg``'s without the train keys of session 21
    (optimizer, momentum, warm-up), with ``train_keys`` added to its train section."""
    folder = RunFolder.create(cfg["output_dir"], cfg["name"])
    folder.write_config(cfg)
    old = yaml.safe_load((folder.path / "config.yaml").read_text())
    for key in ("optimizer", "momentum", "warmup_epochs", "warmup_factor"):
        del old["train"][key]
    old["train"].update(train_keys)
    (folder.path / "config.yaml").write_text(yaml.safe_dump(old))
    return folder


def test_a_resume_with_another_optimizer_is_refused_even_with_allow_changes(recipe_file):
    """The checkpoint holds the optimiser's state (Adam's moments); another optimiser
    cannot take it up, so --allow-changes does not let train.optimizer change. A run from
    before the setting (no train.optimizer in its config.yaml) reads as Adam."""
    cfg = load_recipe(recipe_file)
    folder = _run_from_before_the_optimizer(cfg)
    assert check_resume(folder, cfg) == {}
    sgd = load_recipe(recipe_file, ["train.optimizer=sgd"])
    with pytest.raises(ConfigError, match=r"train.optimizer differs .*'adam' -> 'sgd'"):
        check_resume(folder, sgd, allow_changes=True)
    warm = load_recipe(recipe_file, ["train.warmup_epochs=1"])
    assert check_resume(folder, warm, allow_changes=True) == {"train.warmup_epochs": (0, 1)}


def test_a_run_from_before_train_optimizer_is_not_refused_as_another_optimizer(recipe_file):
    """A config.yaml this version cannot resolve (here a key since removed) is compared as
    written, without train.optimizer: that run trained with Adam, so --allow-changes
    continues it (with the removed key reported), not 'train.optimizer differs'."""
    cfg = load_recipe(recipe_file)
    folder = _run_from_before_the_optimizer(cfg, removed_knob=1)
    changes = check_resume(folder, cfg, allow_changes=True)
    assert "train.removed_knob" in changes


def test_resume_passes_over_a_later_run_stopped_before_its_first_checkpoint(tmp_path, caplog):
    """Audit FC: the latest run folder of a recipe held no checkpoint (started again by
    mistake and stopped while it built its model); --resume trained it from epoch 0 and
    left the earlier run's epochs behind without a word. It now resumes the latest run
    that holds a checkpoint, unless a finished run lies between them, and says so."""
    from uvireid.engine.checkpoint import LATEST
    from uvireid.engine.run_folder import resume_target

    cfg = {"output_dir": str(tmp_path), "name": "tiny"}

    def run(name, *files, recipe=cfg):
        path = _folder(tmp_path, f"tiny-{name}", 0)
        (path / "config.yaml").write_text(yaml.safe_dump(recipe))  # the recipe it ran
        for f in files:
            (path / f).parent.mkdir(parents=True, exist_ok=True)
            (path / f).write_text("x")
        return path

    ckpt = f"checkpoints/{LATEST}"
    assert resume_target(cfg, True) is None
    a = run("20261126-100000", ckpt)
    assert resume_target(cfg, True).path == a
    b = run("20261126-110000")  # stopped before its first checkpoint
    with caplog.at_level(logging.WARNING):
        assert resume_target(cfg, True).path == a
    assert f"{b}, the latest run of 'tiny', stopped before its first checkpoint" in caplog.text
    assert f"resuming {a}, the latest with one" in caplog.text and f"--resume {b}" in caplog.text
    c = run("20261126-120000", "metrics.jsonl")
    (c / "metrics.jsonl").write_text(json.dumps({"epoch": -1, "eval": {}}) + "\n")
    assert resume_target(cfg, True).path == a  # an evaluation at the start is no epoch
    (c / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "loss": {}}) + "\n")
    assert resume_target(cfg, True).path == c  # trained, its checkpoint lost: its own
    (c / "metrics.jsonl").unlink()
    (c / "results.json").write_text("{}")  # a finished run between: the latest is started
    d = run("20261126-130000")
    assert resume_target(cfg, True).path == d
    assert resume_target(cfg, str(b)).path == b  # a folder named is the one resumed
    # audit FD: two empty runs after a checkpointed one lead back to it; a metrics.jsonl
    # created but empty is no progress
    e = run("20261126-140000", ckpt)
    run("20261126-150000")
    run("20261126-160000", "metrics.jsonl")
    (tmp_path / "tiny-20261126-160000" / "metrics.jsonl").write_text("")
    assert resume_target(cfg, True).path == e
    # audit FF: a run of the recipe before a change is not one to continue: the newest
    # (of the changed recipe, stopped early) starts again
    run("20261126-170000", ckpt, recipe={**cfg, "seed": 5})
    g = run("20261126-180000")
    assert resume_target(cfg, True).path == g


def test_resume_continues_the_run_with_a_checkpoint_past_a_later_empty_one(recipe_file, caplog):
    """The same end to end: run A killed after its first epoch, run B killed while its
    trainer was built; --resume continues A from its checkpoint."""

    cfg = load_recipe(recipe_file)
    a = run_killed_at(cfg, epoch=1)
    _killed_while_its_trainer_is_built(cfg)
    b = RunFolder.latest(cfg["output_dir"], cfg["name"])
    assert b.path != a.path
    with caplog.at_level(logging.INFO):
        folder = run_recipe(cfg, resume=True, progress=False)
    assert folder.path == a.path and (a.path / "results.json").exists()
    assert "resumed from" in caplog.text and f"resuming {a.path}" in caplog.text
    assert not (b.path / "metrics.jsonl").exists()  # B left as it was


def test_resume_without_a_run_folder_does_not_call_the_new_run_stopped(recipe_file, caplog):
    """`uvireid run RECIPE --resume` with no run of the recipe yet: a warning says so and
    a new run starts; the new folder is not said to have stopped before its first
    checkpoint (it never ran)."""
    caplog.set_level(logging.WARNING)
    with killed_at_epoch(0):
        assert main(["run", str(recipe_file), "--resume", "--no-report"]) == 130
    cfg = load_recipe(recipe_file)
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    log = (folder.path / "log.txt").read_text()
    assert "starting a new run" in caplog.text
    assert "has no checkpoint yet" not in caplog.text + log
