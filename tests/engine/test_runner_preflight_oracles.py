"""The runner's preflight and check_parts at their edges: the start weights of a RegDB
recipe without a split, the official sampler under ``auto``, an evaluation-only recipe
with nothing to do, an evaluation-only resume, a refine part, a folder another process
holds, ``image_cache: auto``."""

from __future__ import annotations

import pytest
from train_fixtures import write_eval_recipe

from uvireid.errors import ConfigError


def _ckpt(tmp_path, monkeypatch, record):
    import uvireid.models.backbone as backbone

    ckpt = tmp_path / "latest.pt"
    ckpt.write_bytes(b"x")
    monkeypatch.setattr(backbone, "uvireid_checkpoint_dataset", lambda path: dict(record))
    return ckpt


def test_a_regdb_recipe_without_data_split_is_split_one_for_the_start_weights(
    tmp_path, monkeypatch
):
    """RegDB(split=1) is the default: a recipe whose data section leaves split out
    trains and tests on split 1, so split 1's checkpoint fits it and split 2's does not,
    and the refusal names split 1 (not None)."""
    from uvireid.engine.runner import _check_start_weights

    ckpt = _ckpt(tmp_path, monkeypatch, {"dataset": "regdb", "split": 1})
    cfg = {"data": {"type": "regdb"}, "backbone": {"pretrained": str(ckpt)}}
    _check_start_weights(cfg)  # split 1 on split 1: fine
    ckpt = _ckpt(tmp_path, monkeypatch, {"dataset": "regdb", "split": 2})
    with pytest.raises(
        ConfigError, match=r"trained on split 2's training ids, some of them split 1's"
    ):
        _check_start_weights(cfg)


def test_the_official_sampler_with_protocol_auto_of_an_unknown_dataset_is_left_to_the_run(
    tmp_path,
):
    """`auto` where the dataset type lists no PROTOCOLS (not registered, or a factory)
    cannot be resolved before the dataset is built: the preflight leaves it to the run
    instead of refusing it as a non-SYSU protocol; a named non-SYSU protocol is refused."""
    from uvireid.engine.runner import _check_sampler

    perm = tmp_path / "rand_perm_cam.mat"
    perm.write_bytes(b"x")
    ev = {"protocol": "auto", "sampler": "official", "perm_file": str(perm), "shot": "single"}
    _check_sampler(dict(ev), None)
    _check_sampler(dict(ev), "no-such-dataset-type")
    with pytest.raises(ConfigError, match="exists for SYSU-MM01 only; protocol regdb-v2i uses"):
        _check_sampler(dict(ev, protocol="regdb-v2i", trials=1), None)


def _eval_recipe(tmp_path, **evaluation):
    from uvireid.config import load_recipe

    return load_recipe(write_eval_recipe(tmp_path, evaluation=evaluation))


def test_an_evaluation_only_recipe_with_protocol_none_is_refused_before_any_folder(tmp_path):
    """No stages, no losses and evaluation.protocol none: nothing to train and nothing
    to measure. run_recipe refuses it, naming both fixes, and leaves no run folder."""
    from uvireid.engine.runner import run_recipe

    cfg = _eval_recipe(tmp_path, protocol="none")
    with pytest.raises(
        ConfigError, match="nothing to do. Add stages to train, or choose a protocol"
    ):
        run_recipe(cfg, progress=False)
    assert not (tmp_path / "runs").exists()


def test_an_evaluation_only_run_resumed_records_no_epoch_and_a_finished_one_is_left(tmp_path):
    """An evaluation-only run stopped before its results.json, resumed: the first manifest
    is kept with one resume record of 0 epochs done (after_epoch -1, nothing trained), and
    its metrics line is the evaluation-only one (epoch -1). Resumed once finished, the run
    is left as it is (results.json and metrics.jsonl untouched)."""
    import json

    from uvireid.engine.runner import run_recipe

    cfg = _eval_recipe(tmp_path)
    folder = run_recipe(cfg, progress=False)
    first = json.loads((folder.path / "manifest.json").read_text())
    (folder.path / "results.json").unlink()  # as if killed before the end
    (folder.path / "metrics.jsonl").unlink()
    again = run_recipe(cfg, resume=True, progress=False)
    assert again.path == folder.path
    manifest = json.loads((folder.path / "manifest.json").read_text())
    assert manifest["started"] == first["started"]
    (entry,) = manifest["resumes"]
    assert (entry["epochs_done"], entry["after_epoch"]) == (0, -1)
    lines = [json.loads(x) for x in (folder.path / "metrics.jsonl").read_text().splitlines()]
    assert [(m["epoch"], m["stage"]) for m in lines] == [(-1, "evaluation only")]
    results = folder.path / "results.json"
    stamp, metrics = results.stat().st_mtime_ns, (folder.path / "metrics.jsonl").read_text()
    done = run_recipe(cfg, resume=True, progress=False)
    assert done.path == folder.path
    assert results.stat().st_mtime_ns == stamp
    assert (folder.path / "metrics.jsonl").read_text() == metrics
    assert len(json.loads((folder.path / "manifest.json").read_text())["resumes"]) == 1


def test_a_refine_part_a_constructor_refuses_is_refused_by_the_preflight(tmp_path):
    """refine: is built by check_parts as the re-ranker is, so a value its constructor
    refuses fails in --dry-run (named 'refine (cmfp)'), not when the refinement starts."""
    from uvireid.config import load_recipe
    from uvireid.engine.runner import preflight

    over = [f"output_dir={tmp_path / 'runs'}"]
    preflight(load_recipe("demo", over + ["refine={type: cmfp}"]))  # a fitting one passes
    cfg = load_recipe("demo", over + ["refine={type: cmfp, mode: bogus}"])
    with pytest.raises(ConfigError, match=r"^refine \(cmfp\): .*mode must be one of"):
        preflight(cfg)


def test_a_resume_of_a_run_another_process_holds_is_refused_before_the_dataset(
    tmp_path, monkeypatch
):
    """`--resume` of a run folder another process trains in is refused at once, before the
    dataset is built (or generated: minutes), not when the folder is taken."""
    import fcntl

    from uvireid.config import dump, load_recipe
    from uvireid.engine import runner
    from uvireid.errors import RunFolderError

    cfg = load_recipe("demo", [f"output_dir={tmp_path / 'runs'}"])
    run = tmp_path / "runs" / "demo-20260101-000000"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump(cfg))
    built = []
    monkeypatch.setattr(runner.DATASETS, "build", lambda spec: built.append(spec) or 1 / 0)
    with open(run / ".lock", "w") as other:
        other.write("4242")
        other.flush()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the other process does
        with pytest.raises(RunFolderError, match=r"is in use by another process \(pid 4242\)"):
            runner.train_recipe(cfg, resume=run, progress=False)
    assert built == []


def test_an_image_cache_auto_is_not_read_as_a_folder_named_auto(tmp_path, monkeypatch):
    """train.image_cache: auto means $UVIREID_CACHE/images, not ./auto: a file named
    'auto' in the working folder does not make the preflight refuse it; an explicit
    cache path that is a file is refused."""
    from uvireid.config import load_recipe
    from uvireid.engine.runner import preflight

    monkeypatch.chdir(tmp_path)
    (tmp_path / "auto").write_text("not a folder")
    over = [f"output_dir={tmp_path / 'runs'}"]
    preflight(load_recipe("demo", over + ["train.image_cache=auto"]))
    with pytest.raises(ConfigError, match=r"train.image_cache: .*auto is a file, not a folder"):
        preflight(load_recipe("demo", over + [f"train.image_cache={tmp_path / 'auto'}"]))
