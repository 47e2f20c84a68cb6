"""Mutation audit OE: ``uvireid extract RUN data.*=...`` records only model changes as ``changes``
(the extraction itself stubbed: what the command passes to export_features is checked)."""

from __future__ import annotations

import argparse
import types

import numpy as np
import yaml
from train_fixtures import tiny_recipe

from uvireid.cli import extract_cmd


def test_data_overrides_of_a_run_are_not_recorded_as_changes(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    (run / "checkpoints" / "latest.pt").write_bytes(b"")  # not read: the export is stubbed
    other = tmp_path / "copy"
    other.mkdir()
    seen = {}

    def export_features(cfg, out, **kwargs):
        seen.update(kwargs, cfg=cfg)
        return out

    monkeypatch.setattr("uvireid.engine.export.export_features", export_features)
    monkeypatch.setattr(
        "uvireid.features.load_features",
        lambda path: types.SimpleNamespace(pids=np.zeros(2), feats=np.zeros((2, 4)), meta={}),
    )
    args = argparse.Namespace(
        source=str(run),
        overrides=[f"data.root={other}", "train.height=64"],
        out=str(tmp_path / "f.npz"),
        checkpoint=None,
        device="cpu",
        force=False,
    )
    assert extract_cmd.run(args) == 0
    assert seen["cfg"]["data"]["root"] == str(other)
    assert seen["changes"] == {"train.height": (32, 64)}  # data.root: no change of the model
    assert seen["checkpoint"] == run / "checkpoints" / "latest.pt"


def test_the_runs_split_is_passed_only_for_the_runs_own_weights(tmp_path, monkeypatch):
    """A RegDB run extracted with its own latest.pt: its data.split is the training split.
    With --checkpoint another file, the split is the checkpoint's to say (export reads it
    from the file's dataset record), not the run folder's."""
    from uvireid.data.fixtures import make_regdb_tree

    root = make_regdb_tree(tmp_path / "RegDB", ids=8, images_per=2, splits=(2,))
    rec = tiny_recipe(tmp_path)
    rec["data"] = {"type": "regdb", "root": str(root), "split": 2}
    rec["evaluation"]["protocol"] = "regdb-v2i"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(rec))
    (run / "checkpoints" / "latest.pt").write_bytes(b"")
    (tmp_path / "other.pt").write_bytes(b"")
    seen = []
    monkeypatch.setattr(
        "uvireid.engine.export.export_features", lambda cfg, out, **kw: seen.append(kw) or out
    )
    monkeypatch.setattr(
        "uvireid.features.load_features",
        lambda path: types.SimpleNamespace(pids=np.zeros(2), feats=np.zeros((2, 4)), meta={}),
    )
    for i, checkpoint in enumerate((None, str(tmp_path / "other.pt"))):
        args = argparse.Namespace(
            source=str(run),
            overrides=[],
            out=str(tmp_path / f"f{i}.npz"),
            checkpoint=checkpoint,
            device="cpu",
            force=False,
        )
        assert extract_cmd.run(args) == 0
    assert [kw["train_split"] for kw in seen] == [2, None]
    assert seen[1]["checkpoint"] == str(tmp_path / "other.pt")
