"""--resume of a finished run (results.json) trains, evaluates and writes nothing
(mutation audit CE)."""

from __future__ import annotations

import pytest
import yaml

from uvireid.config import load_recipe
from uvireid.data.fixtures import make_sysu_tree
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

    root = make_sysu_tree(tmp_path / "SYSU-MM01", ids=12, images_per=2)
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "description": "tiny",
                "device": "cpu",
                "output_dir": str(tmp_path / "runs"),
                "data": {"type": "sysu", "root": str(root)},
                "backbone": {"type": "two_stream_resnet", "arch": "resnet18"},
                "train": {"height": 32, "width": 16, "workers": 0},
                "evaluation": {"protocol": "sysu-all", "trials": 1},
            }
        )
    )
    cfg = load_recipe(path)
    folder = run_recipe(cfg, progress=False)
    before = _files(folder)
    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    again = run_recipe(cfg, resume=str(folder.path), progress=False)
    assert again.path == folder.path
    assert _files(folder) == before
