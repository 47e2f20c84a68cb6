"""uvireid.engine.export.export_features: what the features file records about a
checkpoint, with checkpoints built by hand (no training): a backbone of the recipe with
seeded random weights saved in a uvireid checkpoint's format, and the checkpoint's own
records (epoch, stage, dataset, best, precision) set per test. Each expected value is
written out from export.py's docstrings and the run's own features.npz conventions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from train_fixtures import tiny_recipe

from uvireid.config import load_recipe
from uvireid.data.fixtures import make_sysu_tree
from uvireid.engine.checkpoint import FORMAT
from uvireid.engine.export import export_features
from uvireid.features import load_features
from uvireid.registry import BACKBONES


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A resolved tiny recipe (sysu fixture tree, one DCL stage of 1 epoch) and the
    backbone weights of a hand-made checkpoint."""
    tmp = tmp_path_factory.mktemp("export_handmade")
    rec = tiny_recipe(tmp)
    rec["stages"] = rec["stages"][:1]
    # one image per (camera, id): 24 test images, so that each extraction takes ~0.3 s
    rec["data"]["root"] = str(make_sysu_tree(tmp / "small", ids=12, images_per=1))
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(rec))
    cfg = load_recipe(path)
    torch.manual_seed(0)
    backbone = BACKBONES.build({**cfg["backbone"], "pretrained": False})
    model = {f"backbone.{k}": v.detach().clone() for k, v in backbone.state_dict().items()}
    return tmp, path, cfg, model


def _checkpoint(folder: Path, model: dict, name="c.pt", **records) -> Path:
    """A uvireid training checkpoint with ``model`` and the given records (epoch 1 of the
    one-epoch recipe, stage dcl, trained on this sysu tree's split None, float32 by default)."""
    state = {
        "model": model,
        "epoch": 1,
        "stage": "dcl",
        "dataset": {"dataset": "sysu", "split": None},
        "best": None,
        "started_from": None,
        "precision": "float32",
        "format": FORMAT,
    }
    state.update(records)
    out = folder / name
    torch.save(state, out)
    return out


def _meta(cfg, out, **kw):
    return load_features(export_features(cfg, out, **kw)).meta


def test_an_explicit_train_split_is_not_replaced_by_the_checkpoints(setup, tmp_path):
    """train_split= is "the split the weights were trained on" as the caller says it:
    the checkpoint's own record only fills it in when the caller gives none."""
    _, _, cfg, model = setup
    ckpt = _checkpoint(tmp_path, model, dataset={"dataset": "sysu", "split": 1})
    assert _meta(cfg, tmp_path / "given.npz", checkpoint=ckpt, train_split=7)["train_split"] == 7
    # none given: the checkpoint's (same dataset)
    assert _meta(cfg, tmp_path / "own.npz", checkpoint=ckpt)["train_split"] == 1


def test_a_checkpoint_past_the_recipes_last_epoch_is_not_final(setup, tmp_path):
    """final is "this checkpoint is the run's last epoch" (checkpoint epoch == the recipe's
    total): a 3-epoch checkpoint extracted with a recipe of 1 epoch (shortened since) is
    not the recipe's final epoch; the 1-epoch checkpoint is."""
    _, _, cfg, model = setup
    meta = _meta(cfg, tmp_path / "past.npz", checkpoint=_checkpoint(tmp_path, model, epoch=3))
    assert (meta["epoch"], meta["total_epochs"], meta["final"]) == (2, 1, False)
    meta = _meta(cfg, tmp_path / "at.npz", checkpoint=_checkpoint(tmp_path, model, "d.pt"))
    assert (meta["epoch"], meta["total_epochs"], meta["final"]) == (0, 1, True)


def test_a_recipe_without_training_names_no_total_and_no_final_epoch(setup, tmp_path):
    """An evaluation-only recipe (no stages, no losses) has no epoch count: the file has
    no total_epochs and the checkpoint is not called the final epoch of anything."""
    tmp, path, _, model = setup
    rec = yaml.safe_load(path.read_text())
    del rec["stages"]
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(rec))
    cfg = load_recipe(tmp_path / "eval.yaml")
    assert not cfg.get("stages") and not cfg.get("losses")
    meta = _meta(cfg, tmp_path / "f.npz", checkpoint=_checkpoint(tmp_path, model, epoch=2))
    assert meta["epoch"] == 1
    assert "total_epochs" not in meta
    assert meta["final"] is False


def test_selected_on_is_the_checkpoints_own_record(setup, tmp_path):
    """best.pt of a run that went on: selected_on says what the best epoch was chosen on,
    as the checkpoint's best record says ("validation ids" for a data.validation run);
    "test set" only where the record says nothing."""
    _, path, _, model = setup
    cfg = load_recipe(path, ["stages.0.epochs=3"])  # epoch 0 of 3: not final
    best = {"epoch": 0, "mAP": 0.5, "selected_on": "validation ids"}
    ckpt = _checkpoint(tmp_path, model, best=best)
    meta = _meta(cfg, tmp_path / "v.npz", checkpoint=ckpt)
    assert meta["final"] is False
    assert meta["selected_on"] == "validation ids"
    ckpt = _checkpoint(tmp_path, model, "old.pt", best={"epoch": 0, "mAP": 0.5})
    assert _meta(cfg, tmp_path / "t.npz", checkpoint=ckpt)["selected_on"] == "test set"


def test_a_relative_checkpoint_path_is_recorded_absolute(setup, tmp_path, monkeypatch):
    """The file names the checkpoint that made it wherever the command ran: a relative
    path given is recorded resolved (absolute)."""
    _, _, cfg, model = setup
    (tmp_path / "sub").mkdir()
    _checkpoint(tmp_path / "sub", model, "rel.pt")
    monkeypatch.chdir(tmp_path)
    meta = _meta(cfg, tmp_path / "f.npz", checkpoint=Path("sub") / "rel.pt")
    assert meta["checkpoint"] == str((tmp_path / "sub" / "rel.pt").resolve())
    assert Path(meta["checkpoint"]).is_absolute()


def test_changes_are_recorded_as_reprs(setup, tmp_path):
    """changes {key: (run's, used)} are written "'gem' -> 'avg'" (the repr of each value,
    as extract's warning prints them): a string 'None' and None, or '1' and 1, stay
    apart."""
    _, _, cfg, model = setup
    ckpt = _checkpoint(tmp_path, model)
    changes = {"backbone.pooling": ("gem", "avg"), "train.width": (16, 24), "x.y": (None, "None")}
    meta = _meta(cfg, tmp_path / "f.npz", checkpoint=ckpt, changes=changes)
    assert dict(meta["changes"]) == {
        "backbone.pooling": "'gem' -> 'avg'",
        "train.width": "16 -> 24",
        "x.y": "None -> 'None'",
    }
    assert "changes" not in _meta(cfg, tmp_path / "g.npz", checkpoint=ckpt, changes={})


def test_train_validation_only_where_the_extracted_dataset_has_validation(setup, tmp_path):
    """train_validation tells, for features of the validation ids, whether the weights
    left them out; features of the test set (no data.validation) carry no such record,
    whatever the checkpoint trained with."""
    _, path, cfg, model = setup
    ckpt = _checkpoint(
        tmp_path, model, dataset={"dataset": "sysu", "split": None, "validation": True}
    )
    meta = _meta(cfg, tmp_path / "test.npz", checkpoint=ckpt)
    assert not meta.get("validation")
    assert "train_validation" not in meta
    val = load_recipe(path, ["data.validation=true"])
    meta = _meta(val, tmp_path / "val.npz", checkpoint=ckpt)
    assert meta["validation"] and meta["train_validation"] is True


# the hand-made checkpoint is what is extracted
def test_the_handmade_checkpoints_weights_are_the_ones_extracted(setup, tmp_path):
    """The features come from the checkpoint's weights (not the recipe's starting ones):
    two checkpoints of different weights give different features, the same one the same."""
    _, _, cfg, model = setup
    other = {
        k: (v + 0.05 * torch.randn_like(v)) if v.is_floating_point() else v
        for k, v in model.items()
    }
    a = load_features(
        export_features(cfg, tmp_path / "a.npz", checkpoint=_checkpoint(tmp_path, model, "a.pt"))
    )
    b = load_features(
        export_features(cfg, tmp_path / "b.npz", checkpoint=_checkpoint(tmp_path, other, "b.pt"))
    )
    a2 = load_features(
        export_features(cfg, tmp_path / "a2.npz", checkpoint=_checkpoint(tmp_path, model, "a2.pt"))
    )
    np.testing.assert_array_equal(a.feats, a2.feats)
    assert np.abs(a.feats - b.feats).max() > 1e-4
    assert a.meta["weights_sha1"] == a2.meta["weights_sha1"] != b.meta["weights_sha1"]


def test_weights_of_another_dataset_are_not_said_to_have_trained_on_these_val_ids(setup, tmp_path):
    """A RegDB run's weights (no data.validation there) extracted on SYSU-MM01's validation
    ids: they never saw these ids, so the file must not say train_validation False (which
    the protocols refuse as "trained on them"); with nothing recorded, eval runs it."""
    from uvireid.cli import main

    _, path, _, model = setup
    ckpt = _checkpoint(tmp_path, model, dataset={"dataset": "regdb", "split": 1})
    val = load_recipe(path, ["data.validation=true"])
    out = export_features(val, tmp_path / "val.npz", checkpoint=ckpt)
    meta = load_features(out).meta
    assert meta["validation"] and "train_validation" not in meta
    assert "train_split" not in meta  # RegDB's split 1 says nothing of this file
    assert main(["eval", str(out), "--protocol", "sysu-all", "--trials", "1"]) == 0
