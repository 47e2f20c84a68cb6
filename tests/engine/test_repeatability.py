"""What makes a run repeat, and what a resume must not lose (audit AQ, session 18)."""

from __future__ import annotations

import json
import logging
import os

import torch
import yaml
from train_fixtures import run_killed_at, tiny_recipe

from uvireid.config import load_recipe
from uvireid.engine.runner import run_recipe


def test_config_yaml_records_the_data_root_absolute(tmp_path, monkeypatch):
    """A relative data.root is relative to the cwd at run time, which no file records:
    config.yaml must hold the absolute path, or extract/--resume from another folder read
    (or, for the synthetic set, silently generate) another dataset."""
    rec = tiny_recipe(tmp_path)
    monkeypatch.chdir(tmp_path)
    rec["data"]["root"] = os.path.relpath(rec["data"]["root"], tmp_path)  # "SYSU-MM01"
    path = tmp_path / "rel.yaml"
    path.write_text(yaml.safe_dump(rec))
    folder = run_recipe(load_recipe(path), progress=False)
    saved = yaml.safe_load((folder.path / "config.yaml").read_text())
    assert os.path.isabs(saved["data"]["root"]), saved["data"]["root"]


def test_resume_with_another_cpu_thread_count_is_warned(recipe_file, tmp_path, caplog):
    """torch's CPU kernels (conv backward) sum in another order with another thread count:
    a resume with train.threads changed does not continue the run exactly; say so. The
    count compared is the one the run trains with (train.threads, applied by fit() after
    the restore), not the process's (audit BE)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the process's count differs from the recipe's train.threads=1
    try:
        cfg = load_recipe(recipe_file, [f"output_dir={tmp_path / 'b'}"])
        assert cfg["train"]["threads"] == 1
        run_killed_at(cfg)
        with caplog.at_level(logging.WARNING):
            run_recipe(cfg, resume=True, progress=False)  # the same recipe: no warning
        assert not [r for r in caplog.records if "CPU thread" in r.getMessage()]
        run_killed_at(cfg)
        cfg2 = load_recipe(recipe_file, [f"output_dir={tmp_path / 'b'}", "train.threads=2"])
        with caplog.at_level(logging.WARNING):
            run_recipe(cfg2, resume=True, progress=False)
    finally:
        torch.set_num_threads(before)
    warned = [r.getMessage() for r in caplog.records if "CPU thread" in r.getMessage()]
    assert len(warned) == 1 and "trained on 1 CPU thread(s), this process has 2" in warned[0]


def test_restart_without_checkpoint_does_not_duplicate_the_untrained_record(recipe_file, tmp_path):
    """A run killed after its untrained evaluation and before its first checkpoint is
    restarted from scratch by --resume: metrics.jsonl then holds epoch -1 twice."""
    cfg = load_recipe(recipe_file, [f"output_dir={tmp_path / 'c'}", "evaluation.at_start=true"])
    folder = run_killed_at(cfg, epoch=0)
    run_recipe(cfg, resume=True, progress=False)
    epochs = [
        json.loads(x)["epoch"] for x in (folder.path / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs.count(-1) == 1, epochs
