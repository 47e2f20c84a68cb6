"""The precision a run (and `uvireid extract`) actually used is recorded: train.amp
falls back to float32 where bf16 is not native (audit BH, session 18)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from train_fixtures import run_killed_at

from uvireid.config import load_recipe
from uvireid.engine import trainer as trainer_mod
from uvireid.engine.checkpoint import load_checkpoint
from uvireid.engine.export import export_features
from uvireid.engine.runner import run_recipe


def test_manifest_and_checkpoint_record_that_amp_fell_back_to_float32(
    recipe_file, tmp_path, monkeypatch
):
    monkeypatch.setattr(trainer_mod, "cpu_bf16_native", lambda: False)
    cfg = load_recipe(recipe_file, ["train.amp=true", f"output_dir={tmp_path / 'r'}"])
    folder = run_recipe(cfg, progress=False)
    manifest = json.loads((folder.path / "manifest.json").read_text())
    # config.yaml says amp: true; what the run trained in must be said somewhere
    assert manifest["device"].get("precision") == "float32"
    state = load_checkpoint(folder.checkpoints / "latest.pt")
    assert state.get("precision") == "float32"
    meta = json.loads(str(np.load(folder.path / "features.npz")["meta"]))
    assert meta.get("precision") == "float32"


def test_resume_that_changes_the_effective_precision_is_warned_and_recorded(
    recipe_file, tmp_path, monkeypatch, caplog
):
    if not trainer_mod.cpu_bf16_native():
        pytest.skip("needs a CPU with native bf16 to start the run in bf16")
    cfg = load_recipe(recipe_file, ["train.amp=true", f"output_dir={tmp_path / 'r'}"])
    part = run_killed_at(cfg)  # trained epoch 0 in bf16 autocast
    monkeypatch.setattr(trainer_mod, "cpu_bf16_native", lambda: False)  # resumed elsewhere
    with caplog.at_level(logging.WARNING):
        run_recipe(cfg, resume=part.path, progress=False)
    # one warning that names the resume and both precisions (the fallback warning alone,
    # "train.amp=true has no effect on cpu", does not say the run changed precision)
    assert any(
        "resume" in r.getMessage().lower()
        and "bf16" in r.getMessage()
        and "float32" in r.getMessage()
        for r in caplog.records
    )
    manifest = json.loads((part.path / "manifest.json").read_text())
    assert manifest["resumes"][-1]["device"].get("precision") == "float32"


def test_extract_of_an_amp_run_says_when_it_cannot_use_bf16(
    recipe_file, tmp_path, monkeypatch, caplog
):
    cfg = load_recipe(
        recipe_file, ["train.amp=true", "evaluation.protocol=none", f"output_dir={tmp_path}"]
    )
    folder = run_recipe(cfg, progress=False)
    monkeypatch.setattr(trainer_mod, "cpu_bf16_native", lambda: False)
    with caplog.at_level(logging.WARNING):
        out = export_features(
            load_recipe(folder.path / "config.yaml", []),
            tmp_path / "f.npz",
            checkpoint=folder.checkpoints / "latest.pt",
        )
    assert "amp" in caplog.text and "float32" in caplog.text
    meta = json.loads(str(np.load(out)["meta"]))
    assert meta.get("precision") == "float32"
