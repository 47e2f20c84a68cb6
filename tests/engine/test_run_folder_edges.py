"""The run folder and the resume checks at their edges (audit IC, session 25): a dangling
link as output_dir, ``~`` in it, a config.yaml broken or edited by hand, paths with spaces
in the launch lines, and the resume target, world size and lock."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest
import yaml
from train_fixtures import run_killed_at

from uvireid.config import load_recipe
from uvireid.engine.checkpoint import LATEST
from uvireid.engine.run_folder import (
    RunFolder,
    check_resume,
    check_world_size,
    resume_target,
    resumed_manifest,
)
from uvireid.engine.runner import run_recipe
from uvireid.errors import ConfigError, RunFolderError


def test_an_output_dir_behind_a_dangling_link_is_refused_not_a_hang(tmp_path):
    """output_dir a symlink whose target is gone (scratch space purged or not mounted):
    mkdir raises FileExistsError for the link itself, which create() reads as "this
    second's name is taken" and tried the next name, forever. preflight's writable check
    passes (the link's parent is writable), so `uvireid run` hung at 100% CPU."""
    (tmp_path / "runs").symlink_to(tmp_path / "purged" / "runs")
    code = textwrap.dedent(
        f"""
        from uvireid.engine.run_folder import RunFolder
        from uvireid.errors import ConfigError
        try:
            RunFolder.create({str(tmp_path / "runs")!r}, "x")
        except ConfigError as exc:
            print("ConfigError:", exc)
        """
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        pytest.fail("RunFolder.create did not return within 30 s (an endless loop)")
    assert "ConfigError:" in out.stdout and "output_dir" in out.stdout, out.stderr[-2000:]


def test_a_config_yaml_broken_by_hand_is_a_config_error_naming_it(tmp_path):
    """A config.yaml edited by hand into invalid YAML: --resume ended in a double traceback
    of yaml's ParserError (exit 1) that names "<unicode string>", not the file."""
    folder = tmp_path / "tiny-20260101-000000"
    folder.mkdir()
    (folder / "config.yaml").write_text("name: tiny\ntrain: {lr: 0.1\n")
    cfg = load_recipe("demo", [f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=re.escape(str(folder / "config.yaml"))):
        check_resume(RunFolder(folder), cfg)


def test_an_output_dir_under_the_home_folder_is_made_there(tmp_path, monkeypatch):
    """output_dir: ~/runs (YAML reads it as the string "~/runs") made a folder named "~"
    in the working directory, while preflight checked the real home folder; `rm -rf ~`
    is what a user then types to clean it up."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    cfg = load_recipe("demo", ["output_dir=~/runs"])
    folder = RunFolder.create(cfg["output_dir"], cfg["name"])
    assert not (work / "~").exists()
    assert folder.path.resolve().parent == (home / "runs").resolve()


def test_the_launch_line_of_a_world_size_refusal_pastes_back(tmp_path):
    """The message says which command continues the run; with a space in the folder's path
    (a recipe name may hold one) the unquoted path splits into two arguments. The CLI's own
    hint quotes it (shlex.quote)."""
    folder = tmp_path / "my runs" / "tiny lr-20260101-000000"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"world_size": 2}))
    with pytest.raises(ConfigError) as err:
        check_world_size(RunFolder(folder), 1)
    launch = re.search(r"Continue it as it ran: (.*?); or pass", str(err.value)).group(1)
    assert str(folder) in shlex.split(launch)


def test_a_config_yaml_edited_by_hand_is_not_a_silent_change(recipe_file):
    """config.yaml is the record of the run's recipe and also the reference a resume is
    checked against: edited by hand (stages.1.epochs 1 -> 2) and resumed with
    `uvireid run RUN --resume`, the run continues with the change, unrefused and
    unrecorded (the checkpoint keeps the seed but not the recipe), while config.yaml
    claims one recipe for the whole run."""
    cfg = load_recipe(recipe_file)
    part = run_killed_at(cfg)
    path = part.path / "config.yaml"
    edited = yaml.safe_load(path.read_text())
    edited["stages"][1]["epochs"] = 2
    path.write_text(yaml.safe_dump(edited))
    with pytest.raises(ConfigError, match=r"stages.1.epochs: 1 -> 2"):
        run_recipe(load_recipe(part.path), resume=part.path, progress=False)


def _run(root, name, *files, recipe):
    path = root / f"tiny-{name}"
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(recipe))
    for f in files:
        (path / f).parent.mkdir(parents=True, exist_ok=True)
        (path / f).write_text("x")
    return path


def test_resume_starts_the_newest_again_past_a_finished_run_with_its_checkpoint(tmp_path):
    """A finished run keeps checkpoints/latest.pt; a later run of the recipe stopped before
    its first checkpoint: --resume starts the later one again, not the finished run (which
    would only say "already finished")."""
    cfg = {"output_dir": str(tmp_path), "name": "tiny"}
    _run(tmp_path, "20261126-100000", f"checkpoints/{LATEST}", "results.json", recipe=cfg)
    b = _run(tmp_path, "20261126-110000", recipe=cfg)
    assert resume_target(cfg, True).path == b


def test_a_resume_on_more_processes_is_refused_too(tmp_path):
    """The global batch changes whether the world grows or shrinks."""
    (tmp_path / "manifest.json").write_text(json.dumps({"world_size": 1}))
    folder = RunFolder(tmp_path)
    with pytest.raises(ConfigError, match=r"trained with 1 process\(es\) .* this resume has 2"):
        check_world_size(folder, 2)
    assert check_world_size(folder, 2, allow_changes=True) == {"world_size": (1, 2)}
    assert check_world_size(folder, 1) == {}


def test_every_resume_is_kept_in_the_manifest_with_its_world_size(tmp_path):
    """Two resumes: both recorded in order, the first record kept; the next resume is
    checked against the world size of the last one."""
    folder = RunFolder(tmp_path)
    first = {"world_size": 1, "recipe": "r", "started": "t0", "command": "c0"}
    folder.write_manifest(first)
    now = {"world_size": 2, "command": "c1", "started": "t1", "batch": {"global": 8}}
    folder.write_manifest(resumed_manifest(folder, now, 2, {"world_size": (1, 2)}))
    now2 = {"world_size": 2, "command": "c2", "started": "t2"}
    folder.write_manifest(resumed_manifest(folder, now2, 5, {}))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {k: manifest[k] for k in first} == first
    assert [(r["command"], r["after_epoch"], r["epochs_done"]) for r in manifest["resumes"]] == [
        ("c1", 1, 2),
        ("c2", 4, 5),
    ]
    assert [r["world_size"] for r in manifest["resumes"]] == [2, 2]
    assert manifest["resumes"][0]["changes"] == {"world_size": [1, 2]}
    assert manifest["resumes"][0]["batch"] == {"global": 8}
    assert check_world_size(folder, 2) == {}
    with pytest.raises(ConfigError, match=r"trained with 2 process"):
        check_world_size(folder, 1)


def test_a_run_resumed_on_another_world_size_is_refused_before_training(recipe_file):
    """train_recipe checks the world size of the folder's manifest (here 2 processes; this
    resume has 1), before any dataset is built."""
    cfg = load_recipe(recipe_file)
    part = run_killed_at(cfg)
    manifest = json.loads((part.path / "manifest.json").read_text())
    manifest["world_size"] = 2
    (part.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"trained with 2 process\(es\)"):
        run_recipe(cfg, resume=part.path, progress=False)
    assert [m["epoch"] for m in part.read_metrics()] == [0]


def test_the_folder_is_held_while_the_run_trains(recipe_file, monkeypatch):
    """A second process (another open file of .lock) cannot take the folder while the
    run's epochs train: not only the early check_free, the whole run holds it."""
    from uvireid.engine.trainer import Trainer

    seen = []
    real = Trainer.fit

    def fit(self):
        try:
            RunFolder(self.folder.path).check_free()
            seen.append("free")
        except RunFolderError as exc:
            seen.append(str(exc))
        return real(self)

    monkeypatch.setattr(Trainer, "fit", fit)
    folder = run_recipe(load_recipe(recipe_file), progress=False)
    assert len(seen) == 1 and f"(pid {os.getpid()})" in seen[0]
    RunFolder(folder.path).check_free()  # released at the end


def test_a_path_without_config_yaml_is_not_resumed(tmp_path):
    """resume=<a folder> that is no run folder (no config.yaml) is refused as such, not
    read as a run (then a FileNotFoundError of its config.yaml)."""
    cfg = {"output_dir": str(tmp_path), "name": "tiny"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a run folder"):
        resume_target(cfg, str(tmp_path / "empty"))
    assert not RunFolder.is_run(tmp_path / "empty")
    (tmp_path / "empty" / "config.yaml").write_text("name: tiny\n")
    assert resume_target(cfg, str(tmp_path / "empty")).path == tmp_path / "empty"


def test_the_lock_names_this_process_over_a_longer_stale_pid(tmp_path):
    """.lock keeps the last holder's pid after it ends; the next holder's pid replaces it
    whole (a longer stale pid left its tail: "pid 4242\\n9")."""
    (tmp_path / ".lock").write_text("4242424242\n")
    folder = RunFolder(tmp_path)
    with folder.locked():
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


def test_only_the_temporaries_of_atomic_writes_are_removed(tmp_path):
    """A kill's half-written `.<name>.<random>.tmp` goes; complete files stay, the held
    .lock among them (removed, a second process would lock a new .lock of its own)."""
    from uvireid.fileio import remove_stale_temporaries

    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / ".features.npz.k3j2.tmp", tmp_path / "checkpoints/.latest.pt.a1.tmp"]
    kept = [tmp_path / ".lock", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    kept += [tmp_path / "checkpoints" / LATEST, tmp_path / "metrics.jsonl"]
    for i, p in enumerate(stale + kept):
        p.write_bytes(b"\0" * (100 + i))
    assert remove_stale_temporaries(tmp_path, tmp_path / "checkpoints") == 100 + 101
    assert [p.exists() for p in stale + kept] == [False] * 2 + [True] * 5


def test_a_held_folder_is_locked_and_cleared_of_a_killed_write(tmp_path, caplog):
    """How training and evaluation-only runs take their folder: locked (a second holder
    is refused while it is held), a killed write's temporaries gone, the MiB freed logged
    with the folder; nothing logged when nothing was freed."""
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / ".latest.pt.a1.tmp"
    stale.write_bytes(b"\0" * (3 * 2**20 // 2))  # 1.5 MiB
    folder = RunFolder(tmp_path)
    with caplog.at_level("INFO", logger="uvireid"), folder.held():
        assert not stale.exists()
        with pytest.raises(RunFolderError, match="in use by another process"):
            with RunFolder(tmp_path).locked():
                pass
    assert f"{tmp_path}: removed 1.5 MiB" in caplog.text
    with RunFolder(tmp_path).locked():  # released at the end
        pass
    caplog.clear()
    with caplog.at_level("INFO", logger="uvireid"), folder.held():
        pass
    assert "removed" not in caplog.text


def test_a_manifest_that_is_not_a_json_mapping_reads_as_none(tmp_path):
    """read_manifest, behind every reader of a run's manifest (resume checks, --resume's
    order, the dataset check): no file, no JSON, bytes that are not UTF-8 and JSON that
    is no mapping are all None, and the resume's record starts anew from them."""
    from uvireid.engine.run_folder import (
        RunFolder,
        check_world_size,
        read_manifest,
        resumed_manifest,
    )

    assert read_manifest(tmp_path) is None
    for raw in (b'{"seed": 1', b'{"seed": "\xff"}', b"[1, 2]", b'"text"'):
        (tmp_path / "manifest.json").write_bytes(raw)
        assert read_manifest(tmp_path) is None
        folder = RunFolder(tmp_path)
        assert check_world_size(folder, 2) == {}
        assert resumed_manifest(folder, {"seed": 3}, 2, {}) == {"seed": 3, "resumed_after_epoch": 1}
    (tmp_path / "manifest.json").write_text('{"seed": 1, "world_size": 1}')
    assert read_manifest(tmp_path) == {"seed": 1, "world_size": 1}
