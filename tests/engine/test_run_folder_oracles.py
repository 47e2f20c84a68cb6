"""Mutation audit OD: run-folder discovery (latest / runs_of), names, the lock, the manifest."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from uvireid.engine.run_folder import RunFolder, build_manifest, dataset_meta
from uvireid.errors import ConfigError


def _run(root, name, started=None, config=True):
    p = root / name
    p.mkdir()
    if config:
        (p / "config.yaml").write_text("name: x\n")
    if started is not None:
        (p / "manifest.json").write_text(json.dumps({"started": started}))
    return p


def test_a_second_folder_of_the_same_second_is_numbered_two(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-120000")
    first = RunFolder.create(tmp_path, "x")
    second = RunFolder.create(tmp_path, "x")
    assert first.path.name == "x-20260101-120000"
    assert second.path.name == "x-20260101-120000-2"


@pytest.mark.parametrize("listing", [sorted, lambda ps: sorted(ps, reverse=True)])
def test_without_manifests_the_names_order_the_runs_numbered_ones_last(
    tmp_path, monkeypatch, listing
):
    real = type(tmp_path).iterdir
    monkeypatch.setattr(type(tmp_path), "iterdir", lambda self: iter(listing(real(self))))
    _run(tmp_path, "x-20260101-120000")
    _run(tmp_path, "x-20260101-120000-2")
    _run(tmp_path, "x-20251231-235959-3")
    got = [r.path.name for r in RunFolder.runs_of(tmp_path, "x")]
    assert got == ["x-20260101-120000-2", "x-20260101-120000", "x-20251231-235959-3"]


@pytest.mark.parametrize("listing", [sorted, lambda ps: sorted(ps, reverse=True)])
def test_with_manifests_the_recorded_start_orders_the_runs(tmp_path, monkeypatch, listing):
    # names in local time misorder runs across a time-zone change; the manifests do not
    real = type(tmp_path).iterdir
    monkeypatch.setattr(type(tmp_path), "iterdir", lambda self: iter(listing(real(self))))
    _run(tmp_path, "x-20260101-130000", started="2026-01-01T12:30:00+0000")
    _run(tmp_path, "x-20260101-120000", started="2026-01-01T13:00:00+0000")
    _run(tmp_path, "x-20260101-110000", started="2026-01-01T12:30:00+0000")
    _run(tmp_path, "x-20260101-110000-2", started="2026-01-01T12:30:00+0000")
    got = [r.path.name for r in RunFolder.runs_of(tmp_path, "x")]
    assert got[0] == "x-20260101-120000"
    # equal starts: the numbered folder (made later in that second) first
    assert got.index("x-20260101-110000-2") < got.index("x-20260101-110000")
    assert RunFolder.latest(tmp_path, "x").path.name == "x-20260101-120000"


def test_only_complete_run_folders_named_as_runs_of_the_recipe_are_found(tmp_path):
    _run(tmp_path, "x-20260101-120000")
    _run(tmp_path, "x-20260102-120000", config=False)  # killed before its config.yaml
    _run(tmp_path, "x-20260103-120000-copy")  # a copy, not a run folder name
    _run(tmp_path, "x-lowlr-20260104-120000")  # another recipe
    assert [r.path.name for r in RunFolder.runs_of(tmp_path, "x")] == ["x-20260101-120000"]


_PROBE = """
import fcntl, sys
fh = open(sys.argv[1])
try:
    fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
except BlockingIOError:
    print("blocked")
else:
    print("free")
"""


def _probe(path):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip()


def test_a_locked_folder_refuses_even_a_shared_lock_of_another_process(tmp_path):
    folder = RunFolder(tmp_path)
    with folder.locked():
        assert (tmp_path / ".lock").read_text().strip() != ""
        assert _probe(tmp_path / ".lock") == "blocked"
        assert folder.holder() is None  # this process: not "another"
    assert _probe(tmp_path / ".lock") == "free"


def test_a_folder_this_user_cannot_write_is_a_run_folder_error(tmp_path, monkeypatch):
    """Another user's run folder (its .lock cannot be opened for writing): a RunFolderError
    that says so and how to go on, not a PermissionError traceback. The tests run as root,
    so the refusal of the file system is simulated."""
    import uvireid.engine.run_folder as rf
    from uvireid.errors import RunFolderError

    def refuse(path, mode="r", *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(rf, "open", refuse, raising=False)
    with pytest.raises(RunFolderError, match="cannot be written by this user.*cp -r"):
        with RunFolder(tmp_path).locked():
            pass


def test_holder_names_the_pid_of_another_process(tmp_path):
    script = (
        "import fcntl, sys, time\n"
        "fh = open(sys.argv[1], 'a+')\n"
        "fcntl.flock(fh, fcntl.LOCK_EX)\n"
        "fh.write('424242\\n'); fh.flush()\n"
        "print('held', flush=True)\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "held"
        folder = RunFolder(tmp_path)
        assert folder.holder() == "424242"
        from uvireid.errors import RunFolderError

        with pytest.raises(RunFolderError, match="pid 424242"), folder.locked():
            pass
    finally:
        child.kill()
        child.wait()


class _DS:
    name = "plugin_ds"

    def fingerprint(self):
        return "fp-123"


def test_the_manifest_records_the_batch_and_the_dataset_fingerprint():
    cfg = {"name": "r", "seed": 3, "train": {"batch_ids": 4, "images_per_id": 2, "amp": False}}
    m = build_manifest(cfg, "cpu", _DS(), world_size=3)
    per_gpu = 4 * 2 * 2  # ids x images per id x two modalities
    assert m["batch"] == {"per_gpu": per_gpu, "per_batchnorm": per_gpu, "global": 3 * per_gpu}
    assert m["world_size"] == 3 and m["seed"] == 3 and m["recipe"] == "r"
    assert m["dataset"] == "fp-123"
    assert m["config"] == cfg
    assert m["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    time.strptime(m["started"], "%Y-%m-%dT%H:%M:%S%z")


def test_dataset_meta_keeps_the_datasets_own_name_over_the_recipes():
    class Own:
        name = "sysu"

        def meta(self):
            return {"dataset": "own-sysu-copy", "split": "test"}

    assert dataset_meta(Own(), {"data": {"type": "folder"}})["dataset"] == "own-sysu-copy"

    class Named:
        name = "sysu"
        title = "SYSU-MM01"

    assert dataset_meta(Named(), {"data": {"type": "folder"}}) == {
        "dataset": "sysu",
        "title": "SYSU-MM01",
    }
    assert dataset_meta(object(), {"data": {"type": "folder"}}) == {"dataset": "folder"}


@pytest.fixture(scope="module")
def demo_cfg():
    from uvireid.config import load_recipe

    return load_recipe("demo")


def _resumable(root, stamp, cfg, *, ckpt=False, finished=False, epochs=()):
    from uvireid.config import dump

    p = root / f"{cfg['name']}-{stamp}"
    p.mkdir()
    (p / "config.yaml").write_text(dump(cfg))
    if ckpt:
        (p / "checkpoints").mkdir()
        (p / "checkpoints" / "latest.pt").write_bytes(b"x")
    if finished:
        (p / "results.json").write_text("{}")
    if epochs:
        (p / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in epochs))
    return p


@pytest.mark.parametrize(
    "newest_epochs,older,expect",
    [
        ((), {"ckpt": True}, "older"),  # the newest stopped before its first checkpoint
        ((0,), {"ckpt": True}, "newest"),  # the newest trained epoch 0
        ((-1,), {"ckpt": True}, "older"),  # an evaluation at the start is no epoch
        ((), {"ckpt": True, "finished": True}, "newest"),  # the older one is done
        ((), {"epochs": (0,)}, "newest"),  # nothing to resume from in the older one
    ],
)
def test_resume_picks_the_latest_run_with_something_to_resume(
    tmp_path, demo_cfg, newest_epochs, older, expect
):
    from uvireid.engine.run_folder import resume_target

    cfg = {**demo_cfg, "output_dir": str(tmp_path)}
    old = _resumable(tmp_path, "20260101-120000", cfg, **older)
    new = _resumable(tmp_path, "20260102-120000", cfg, epochs=newest_epochs)
    got = resume_target(cfg, True).path
    assert got == (old if expect == "older" else new)


def test_resume_does_not_fall_back_to_a_run_of_another_recipe(tmp_path, demo_cfg):
    from uvireid.engine.run_folder import resume_target

    cfg = {**demo_cfg, "output_dir": str(tmp_path)}
    _resumable(tmp_path, "20260101-120000", {**cfg, "seed": cfg["seed"] + 1}, ckpt=True)
    new = _resumable(tmp_path, "20260102-120000", cfg)
    assert resume_target(cfg, True).path == new


def _git_package(root, dirty):
    import shutil

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    pkg = root / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(root), "-c", "user.name=a", "-c", "user.email=a@b", *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    git("add", "pkg/__init__.py")
    git("commit", "-q", "-m", "one")
    (pkg / "untracked.py").write_text("")  # untracked files do not count
    if dirty:
        (pkg / "__init__.py").write_text("x = 2\n")
    return pkg, git("rev-parse", "HEAD")


@pytest.mark.parametrize("dirty", [False, True])
def test_the_source_revision_is_the_commit_and_whether_the_package_changed(tmp_path, dirty):
    from uvireid.engine.run_folder import source_revision

    pkg, head = _git_package(tmp_path, dirty)
    assert source_revision(str(pkg)) == {"commit": head, "dirty": dirty}
    # an untracked copy of a package (a venv inside a checkout): no revision
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "__init__.py").write_text("")
    assert source_revision(str(tmp_path / "copy")) is None


def test_a_test_image_listed_twice_is_refused_before_training():
    from types import SimpleNamespace

    from uvireid.engine.run_folder import refuse_split_overlap
    from uvireid.errors import DatasetError

    rec = SimpleNamespace
    once = SimpleNamespace(title="T", test=[rec(path="a.jpg"), rec(path="b.jpg")])
    refuse_split_overlap(once)  # no split files to compare: nothing else is checked
    twice = SimpleNamespace(title="T", test=[rec(path="a.jpg"), rec(path="a.jpg")])
    with pytest.raises(DatasetError, match=r"T: 1 test image\(s\) are listed more than once"):
        refuse_split_overlap(twice)


def test_recipe_changes_walk_lists_of_mappings_and_leave_the_free_keys_out():
    from uvireid.engine.run_folder import recipe_changes

    old = {
        "evaluation": {"protocol": "sysu-all", "every": 1},
        "train": {"lr": 0.1, "lr_steps": [10, 20], "threads": 2},
        "stages": [{"lr": 1}, {"lr": 2}],
        "mixed": [{"a": 1}, 2],
    }
    new = {
        "evaluation": {"protocol": "sysu-indoor", "every": 2},  # free: how it is evaluated
        "train": {"lr": 0.1, "lr_steps": [10, 30], "threads": 8},  # threads: free
        "stages": [{"lr": 1}, {"lr": 3}],
        "mixed": [{"a": 1}, 3],
    }
    assert recipe_changes(old, new) == {
        "mixed": ([{"a": 1}, 2], [{"a": 1}, 3]),  # not all mappings: one value
        "stages.1.lr": (2, 3),
        "train.lr_steps": ([10, 20], [10, 30]),
    }


def _folder_with_manifest(tmp_path, manifest, config_text="name: x\n"):
    run = tmp_path / "x-20260101-120000"
    run.mkdir()
    (run / "config.yaml").write_text(config_text)
    (run / "manifest.json").write_text(json.dumps(manifest))
    return RunFolder(run)


def test_a_resume_is_checked_against_the_recipe_of_the_last_resume(tmp_path, demo_cfg):
    import yaml

    from uvireid.config import dump
    from uvireid.engine.run_folder import check_resume

    first = yaml.safe_load(dump(demo_cfg))
    later = {**first, "seed": first["seed"] + 1}  # a resume --allow-changes took seed+1
    folder = _folder_with_manifest(
        tmp_path, {"config": first, "resumes": [{"config": later}]}, dump(demo_cfg)
    )
    assert check_resume(folder, {**demo_cfg, "seed": demo_cfg["seed"] + 1}) == {}
    with pytest.raises(ConfigError, match="seed"):
        check_resume(folder, demo_cfg)


def _recorded(folder_root, cfg, **manifest):
    import yaml

    from uvireid.config import dump

    return _folder_with_manifest(
        folder_root, {"config": yaml.safe_load(dump(cfg)), **manifest}, dump(cfg)
    )


def test_another_data_split_is_refused_even_with_allow_changes(tmp_path):
    from uvireid.config import load_recipe
    from uvireid.engine.run_folder import check_resume

    def regdb(split, seed=1):
        data = f"data={{type: regdb, root: /nonexist, split: {split}}}"
        return load_recipe("demo", [data, f"seed={seed}"])

    folder = _recorded(tmp_path, regdb(1))
    with pytest.raises(ConfigError, match=r"data.split: 1 -> 2 changes which identities"):
        check_resume(folder, regdb(2), allow_changes=True)
    # a change of another key is only a warning with allow_changes
    assert check_resume(folder, regdb(1, seed=5), allow_changes=True) == {"seed": (1, 5)}


def test_a_run_from_before_the_optimizer_key_resumes_with_adam(tmp_path, demo_cfg):
    import copy

    import yaml

    from uvireid.config import dump
    from uvireid.engine.run_folder import check_resume

    old = yaml.safe_load(dump(demo_cfg))
    # recorded before train.optimizer existed (Adam), with a key since removed
    del old["train"]["optimizer"]
    old["train"]["removed_knob"] = 1
    folder = _folder_with_manifest(tmp_path, {"config": old}, dump(demo_cfg))
    assert check_resume(folder, demo_cfg, allow_changes=True) == {
        "train.optimizer": ("<absent>", "adam"),
        "train.removed_knob": (1, "<absent>"),
    }
    sgd = copy.deepcopy(demo_cfg)
    sgd["train"]["optimizer"] = "sgd"
    with pytest.raises(ConfigError, match="train.optimizer differs"):
        check_resume(folder, sgd, allow_changes=True)


def test_a_finished_run_refuses_changes_that_would_do_nothing(tmp_path, demo_cfg):
    from uvireid.engine.run_folder import check_resume

    folder = _recorded(tmp_path, demo_cfg)
    (folder.path / "results.json").write_text("{}")
    assert check_resume(folder, demo_cfg) == {}
    with pytest.raises(ConfigError, match=r"has finished \(results.json\)"):
        check_resume(folder, {**demo_cfg, "seed": 9}, allow_changes=True)


def test_the_world_size_of_a_resume_is_the_last_process_counts(tmp_path):
    from uvireid.engine.run_folder import check_world_size

    folder = _folder_with_manifest(tmp_path, {"world_size": 2, "resumes": [{"world_size": 1}]})
    assert check_world_size(folder, 1) == {}
    with pytest.raises(ConfigError, match=r"uvireid run \S+ --resume \(one process, no torchrun\)"):
        check_world_size(folder, 2)
    assert check_world_size(folder, 2, allow_changes=True) == {"world_size": (1, 2)}


def test_a_resume_is_appended_to_the_first_manifest(tmp_path):
    from uvireid.engine.run_folder import resumed_manifest

    folder = _folder_with_manifest(tmp_path, {"started": "t0", "world_size": 1})
    now = {"command": "c", "started": "t1", "world_size": 1, "config": {"a": 1}, "extra": 5}
    got = resumed_manifest(folder, now, 3, {"seed": (1, 2)})
    assert got["started"] == "t0" and "extra" not in got
    (entry,) = got["resumes"]
    assert entry["after_epoch"] == 2 and entry["epochs_done"] == 3
    assert entry["changes"] == {"seed": [1, 2]} and entry["config"] == {"a": 1}
    (folder.path / "manifest.json").unlink()
    assert resumed_manifest(folder, now, 3, {}) == {**now, "resumed_after_epoch": 2}
