"""The tiny training recipe of the engine tests (a fixture SYSU-MM01 tree, 32x16 images)."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from uvireid.data.fixtures import make_sysu_tree


def tiny_recipe(tmp_path, **top) -> dict:
    root = make_sysu_tree(tmp_path / "SYSU-MM01", ids=12, images_per=3)
    rec = {
        "description": "tiny training",
        "device": "cpu",
        "seed": 3,
        "output_dir": str(tmp_path / "runs"),
        "data": {"type": "sysu", "root": str(root)},
        "backbone": {"type": "two_stream_resnet", "arch": "resnet18"},
        "clusterer": {"type": "dbscan", "eps": 0.6, "min_samples": 2, "k1": 5, "k2": 2},
        "train": {
            "height": 32,
            "width": 16,
            "iters_per_epoch": 2,
            "image_cache": None,
            "lr_steps": [1],
            "pad": 2,
            "threads": 1,
        },
        "evaluation": {"protocol": "sysu-all", "trials": 1, "every": 0},
        "stages": [
            {
                "name": "dcl",
                "epochs": 1,
                "ltg_p": 0.5,
                "sampler": {"type": "identity", "ids": 2, "images": 2},
                "associator": None,
                "losses": [{"type": "cluster_contrast"}],
            },
            {
                "name": "salcr",
                "epochs": 1,
                "sampler": {"type": "paired", "ids": 2, "images": 2},
                "associator": {"type": "otla_dual"},
                "losses": [
                    {"type": "dual_cluster_contrast", "weight": 1.0},
                    {"type": "part_contrast", "num_parts": 2},
                    {"type": "instance_neighbour", "weight": 0.5, "k": 5, "num_parts": 2},
                ],
            },
        ],
    }
    rec.update(top)
    return rec


def write_eval_recipe(tmp_path, data: dict | None = None, **sections) -> Path:
    """The tiny evaluation-only recipe (no stages: one evaluation of the starting
    backbone), written to ``tmp_path/tiny.yaml``. ``data`` defaults to a fixture SYSU-MM01
    tree; each of ``sections`` updates that section (``train={"test_resize": ...}``) or
    adds it (``reranker={...}``)."""
    if data is None:
        root = make_sysu_tree(tmp_path / "SYSU-MM01", ids=12, images_per=2)
        data = {"type": "sysu", "root": str(root)}
    rec = {
        "description": "tiny",
        "device": "cpu",
        "output_dir": str(tmp_path / "runs"),
        "data": data,
        "backbone": {"type": "two_stream_resnet", "arch": "resnet18"},
        "train": {"height": 32, "width": 16, "workers": 0},
        "evaluation": {"protocol": "sysu-all", "trials": 1},
    }
    for key, value in sections.items():
        rec[key] = {**rec[key], **value} if isinstance(rec.get(key), dict) else value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(rec))
    return path


@contextlib.contextmanager
def killed_at_epoch(epoch: int = 1):
    """Inside the block, a run stops with KeyboardInterrupt (a kill) when it reaches
    ``epoch``: the epochs before it are trained and checkpointed."""
    from uvireid.engine.trainer import Trainer

    real = Trainer.train_epoch

    def killed(self, e):
        if e == epoch:
            raise KeyboardInterrupt("killed")
        return real(self, e)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "train_epoch", killed)
        yield


def run_killed_at(cfg: dict, epoch: int = 1):
    """Run ``cfg`` until it is killed at ``epoch``; returns its run folder."""
    from uvireid.engine.run_folder import RunFolder
    from uvireid.engine.runner import run_recipe

    with killed_at_epoch(epoch), pytest.raises(KeyboardInterrupt):
        run_recipe(cfg, progress=False)
    return RunFolder.latest(cfg["output_dir"], cfg["name"])


def eval_seed_runs(tmp_path, seeds) -> list[Path]:
    """Evaluation-only runs of the tiny evaluation recipe (two trials), one per seed: the
    starting backbone's random weights differ, so do the numbers. Their folders."""
    from uvireid.config import load_recipe
    from uvireid.engine.runner import run_recipe

    path = write_eval_recipe(tmp_path, evaluation={"trials": 2})
    return [run_recipe(load_recipe(path, [f"seed={s}"]), progress=False).path for s in seeds]


def edit_json(path, change) -> None:
    """``change(data)`` applied to the JSON file at ``path``, in place."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def copy_run(run, dest, config=None, manifest=None, results=None):
    """A copy of ``run`` with its config.yaml / manifest.json / results.json edited."""
    shutil.copytree(run, dest)
    if config:
        cfg = yaml.safe_load((dest / "config.yaml").read_text())
        config(cfg)
        (dest / "config.yaml").write_text(yaml.safe_dump(cfg))
    for name, edit in (("manifest.json", manifest), ("results.json", results)):
        if edit:
            edit_json(dest / name, edit)
    return dest
