"""--resume of a finished run (results.json) trains, evaluates and writes nothing
(mutation audit CE)."""

from __future__ import annotations

import pytest
from train_fixtures import write_eval_recipe

from uvireid.config import load_recipe
from uvireid.engine.runner import run_recipe


def _files(folder):
    return {
        name: (folder.path / name).read_bytes()
        for name in ("results.json", "metrics.jsonl", "manifest.json", "config.yaml")
    }


def test_resuming_a_finished_training_run_changes_nothing(recipe_file, monkeypatch):
    from uvireid.engine import trainer as trainer_mod

    cfg = load_recipe(recipe_file)
    folder = run_recipe(cfg, progress=False)
    before = _files(folder)
    built = []
    real = trainer_mod.Trainer.__init__

    def spy(self, *a, **k):
        built.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(trainer_mod.Trainer, "__init__", spy)
    again = run_recipe(cfg, resume=str(folder.path), progress=False)
    assert again.path == folder.path
    assert built == []  # no trainer: nothing rebuilt, nothing evaluated again
    assert _files(folder) == before


def test_resuming_a_finished_evaluation_run_changes_nothing(tmp_path, monkeypatch):
    import uvireid.engine.runner as runner

    cfg = load_recipe(write_eval_recipe(tmp_path))
    folder = run_recipe(cfg, progress=False)
    before = _files(folder)
    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    again = run_recipe(cfg, resume=str(folder.path), progress=False)
    assert again.path == folder.path
    assert _files(folder) == before
