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


def random_cross_labels(seed: int, nv: int, nr: int, ids: int, ok_v=None, ok_r=None):
    """``(gv, gr, labels, trainer)``: random ground-truth ids (``0..ids-1``), random dual pseudo-labels with outliers (-1; an instance without an
    in-modality label has no cross-modal one) and a stand-in for the trainer's image
    lists that :meth:`Trainer._quality` reads. ``ok_v`` / ``ok_r``: readable-image masks;
    the unreadable ones are never clustered (every label -1)."""
    from types import SimpleNamespace

    import numpy as np

    from uvireid.losses.contract import EpochLabels
    from uvireid.types import INFRARED, VISIBLE, ImageRecord

    rng = np.random.default_rng(seed)
    gv, gr = rng.integers(0, ids, nv), rng.integers(0, ids, nr)
    vis_in_v, ir_in_r = rng.integers(-1, 4, nv), rng.integers(-1, 3, nr)
    vis_in_r = np.where(vis_in_v >= 0, rng.integers(-1, 3, nv), -1)
    ir_in_v = np.where(ir_in_r >= 0, rng.integers(-1, 4, nr), -1)
    for y, ok in ((vis_in_v, ok_v), (vis_in_r, ok_v), (ir_in_r, ok_r), (ir_in_v, ok_r)):
        if ok is not None:
            y[~ok] = -1
    lab = EpochLabels(
        vis_in_v=vis_in_v,
        vis_in_r=vis_in_r,
        ir_in_r=ir_in_r,
        ir_in_v=ir_in_v,
        init_v=vis_in_v,
        init_r=ir_in_r,
        num_v=4,
        num_r=3,
        has_cross=True,
    )
    fake = SimpleNamespace(
        vis=[ImageRecord("v", int(p), 1, VISIBLE) for p in gv],
        ir=[ImageRecord("r", int(p), 3, INFRARED) for p in gr],
        ok_v=ok_v,
        ok_r=ok_r,
    )
    return gv, gr, lab, fake


def link_counts_loop(gv, gr, lab, vis_rows, ir_rows) -> tuple[dict, dict]:
    """``(same, total)`` by a loop over every (visible i, infrared j) pair of the given
    rows: ``v2r`` counts visible images linked into an infrared instance's cluster,
    ``r2v`` infrared images linked into a visible one's; ``same`` those of one person."""
    same, total = {"v2r": 0, "r2v": 0}, {"v2r": 0, "r2v": 0}
    for i in vis_rows:
        for j in ir_rows:
            if lab.vis_in_r[i] >= 0 and lab.vis_in_r[i] == lab.ir_in_r[j]:
                total["v2r"] += 1
                same["v2r"] += int(gv[i] == gr[j])
            if lab.ir_in_v[j] >= 0 and lab.ir_in_v[j] == lab.vis_in_v[i]:
                total["r2v"] += 1
                same["r2v"] += int(gv[i] == gr[j])
    return same, total


def singletons_loop(y):
    """Each -1 its own new label (label_quality's convention), written out by hand."""
    import numpy as np

    y = np.array(y, dtype=np.int64)
    nxt = int(y.max()) + 1 if (y >= 0).any() else 0
    for i in range(len(y)):
        if y[i] < 0:
            y[i] = nxt
            nxt += 1
    return y


def bare_stage(name: str, first: int, epochs: int, lr=None, lr_steps=None):
    """A trainer Stage with nothing but its epochs and learning-rate settings (for the
    schedule's tests)."""
    from uvireid.engine.trainer import Stage

    return Stage(
        name=name,
        epochs=epochs,
        iters=1,
        ltg_p=0.0,
        sampler={},
        clusterer={},
        associator=None,
        losses=[],
        first_epoch=first,
        lr=lr,
        lr_steps=lr_steps,
    )
