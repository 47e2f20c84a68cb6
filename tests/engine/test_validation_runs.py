"""Runs around data.validation, compare and --resume against one trained tiny run of the
release's arrangement (review FF, session 23): weights that trained on the val ids are
refused as a validation run's start; an older run folder is grouped with its seeds; a
changed recipe's empty run is not passed over; a gallery of a training-only override is
taken; a validation run logs its best as chosen on the validation ids; evaluation.every
is a setting where a stage starts from the best epoch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from train_fixtures import tiny_recipe

from uvireid.cli import main
from uvireid.config import load_recipe
from uvireid.engine.compare import compare_runs
from uvireid.engine.run_folder import RunFolder, resume_target
from uvireid.engine.runner import run_recipe
from uvireid.errors import ConfigError
from uvireid.features import load_features


def _run(tmp: Path, rec: dict, name: str = "tiny.yaml") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / name).write_text(yaml.safe_dump(rec))
    return run_recipe(load_recipe(tmp / name), progress=False).path


@pytest.fixture(scope="module")
def release_run(tmp_path_factory):
    """A tiny run in the release's arrangement (it trains on the val ids too)."""
    tmp = tmp_path_factory.mktemp("ff_release")
    rec = tiny_recipe(tmp)
    return tmp, rec, _run(tmp, rec)


def test_eval_only_run_of_release_weights_is_not_a_validation_result(release_run, tmp_path):
    """An evaluation-only run with data.validation=true whose backbone.pretrained is the
    checkpoint of a run that trained on the val ids stamps train_validation=True on its
    features (runner.evaluate's setdefault), so the protocol evaluates the val ids with
    a model that trained on them and calls it 'SYSU-MM01 validation ids'. `uvireid
    extract RUN data.validation=true` of the same weights is refused by every protocol."""
    _, rec, run = release_run
    ev = {
        "description": "evaluation only",
        "device": "cpu",
        "seed": 3,
        "output_dir": str(tmp_path / "runs"),
        "data": {**rec["data"], "validation": True},
        "backbone": {**rec["backbone"], "pretrained": str(run / "checkpoints" / "latest.pt")},
        "train": {k: rec["train"][k] for k in ("height", "width", "image_cache", "threads")},
        "evaluation": {"protocol": "sysu-all", "trials": 1},
    }
    with pytest.raises(ConfigError, match="is the checkpoint of a run that trained on the val"):
        _run(tmp_path, ev, "evalonly.yaml")
    assert not (tmp_path / "runs").exists()  # refused before any folder
    # without data.validation the same weights evaluate the test ids
    ev["data"]["validation"] = False
    assert (_run(tmp_path, ev, "evalonly.yaml") / "results.json").exists()


def test_compare_groups_an_older_run_folder_with_its_seeds(release_run, tmp_path):
    """A run of an earlier version has no train.resize in its config.yaml (the key came
    later; its default, bilinear, is the earlier behaviour, which check_resume knows via
    _resolved_config). compare makes it a setting of its own: no mean over the two seeds,
    and a 'best' setting train.resize=bilinear on the validation ids."""
    tmp, rec, run = release_run
    other = _run(tmp / "seed4", {**rec, "seed": 4, "output_dir": str(tmp / "seed4" / "runs")})
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(run, old)
    shutil.copytree(other, new)
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    assert cfg["train"].pop("resize") == "bilinear"  # as an earlier version wrote it
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    report = compare_runs([old, new])
    groups = report["groups"]["none"]
    # the same recipe, seeds 3 and 4: one setting, its mean over both runs
    assert len(groups) == 1, [g["settings"] for g in groups]
    mean = groups[0]["aggregate"]["none"]["mAP"]["mean"]
    maps = [r["results"]["none"]["mAP"] for r in report["runs"]]
    assert mean == pytest.approx(float(np.mean(maps)))


def test_resume_does_not_jump_to_an_older_run_of_another_recipe(release_run, tmp_path):
    """The recipe was changed (train.lr) and its new run stopped before its first
    checkpoint; `--resume` now passes over it to the older run of the other settings,
    whose check then refuses the resume ('the recipe differs'), advising --allow-changes,
    which would continue the OLD run with the new lr. Before, the new run was resumed
    (from epoch 0, with its own settings)."""
    tmp, rec, run = release_run
    out = tmp_path / "runs"
    older = out / "tiny-20261128-080000"
    shutil.copytree(run, older)
    (older / "results.json").unlink()  # an unfinished run with a checkpoint
    changed = {**rec, "output_dir": str(out), "train": {**rec["train"], "lr": 0.001}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(changed))
    cfg = load_recipe(tmp_path / "tiny.yaml")
    newest = out / "tiny-20261128-090000"
    newest.mkdir()
    RunFolder(newest).write_config(cfg)  # the changed recipe's run, stopped early
    target = resume_target(cfg, True)
    assert target.path == newest


def test_match_gallery_of_a_training_only_override_is_accepted(release_run, tmp_path, capsys):
    """`uvireid extract RUN -o g.npz train.lr=0.5` embeds with the run's weights, size,
    filter, head and flip: the override changes no feature, yet match --gallery refuses
    the file for its 'changes'."""
    _, _, run = release_run
    gallery = tmp_path / "g.npz"
    assert main(["extract", str(run), "-o", str(gallery), "train.lr=0.5"]) == 0
    feats = load_features(gallery)
    assert feats.meta["changes"] == {"train.lr": "0.00035 -> 0.5"}
    ir = [str(p) for p, m in zip(feats.paths, feats.modality) if m == 1]
    probe = tmp_path / "probe.jpg"
    shutil.copy(ir[0], probe)
    capsys.readouterr()
    rc = main(["match", str(run), "--infrared", str(probe), "--gallery", str(gallery)])
    assert rc == 0, capsys.readouterr().err


def test_validation_run_does_not_log_its_best_as_chosen_on_the_test_set(release_run):
    """A validation run's best.pt is recorded with selected_on 'validation ids' (c789d94),
    but the trainer's log line still says '(chosen on the test set; ...)'."""
    tmp, rec, _ = release_run
    rec = {
        **rec,
        "output_dir": str(tmp / "kb" / "runs"),
        "data": {**rec["data"], "validation": True},
        "evaluation": {**rec["evaluation"], "every": 1, "keep_best": True},
    }
    folder = _run(tmp / "kb", rec)
    best = [
        m["best"]
        for m in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
        if "best" in m
    ]
    assert best and best[0]["selected_on"] == "validation ids"
    log = (folder / "log.txt").read_text()
    lines = [line for line in log.splitlines() if "checkpoints/best.pt: epoch" in line]
    assert lines and not any("chosen on the test set" in line for line in lines), lines


def test_compare_evaluation_every_is_a_setting_where_a_stage_starts_from_best(
    release_run, tmp_path
):
    """compare calls evaluation.every a key that 'changes no final number'. Where a stage
    starts from the best evaluated epoch (pgm.yaml: start_from: best, keep_best), the
    evaluated epochs are the candidates, so every=1 and every=5 start stage 2 from
    different checkpoints: two settings, which compare averages as one."""
    _, _, run = release_run
    runs = []
    for every in (1, 5):
        folder = tmp_path / f"every{every}"
        shutil.copytree(run, folder)
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        cfg["evaluation"].update(every=every, keep_best=True)
        cfg["stages"][1]["start_from"] = "best"
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
        runs.append(folder)
    groups = compare_runs(runs)["groups"]["none"]
    assert len(groups) == 2, [g["settings"] for g in groups]
