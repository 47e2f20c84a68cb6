"""``uvireid extract`` (engine/export.py): what the features file records about the
checkpoint, and the evaluation settings it extracts with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from train_fixtures import tiny_recipe

import uvireid
from uvireid.cli import main
from uvireid.config import load_recipe
from uvireid.engine.export import export_features
from uvireid.engine.runner import run_recipe
from uvireid.features import load_features


def _texture(root, seed=0):
    """Random, non-symmetric pixels in every image of the tree (the fixture's images are
    of one colour, so a flip would leave their features alike)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for path in sorted(Path(root).rglob("*")):
        if path.suffix.lower() in (".jpg", ".png", ".bmp"):
            Image.fromarray(rng.integers(0, 256, (45, 23, 3), np.uint8)).save(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One trained tiny run (its DCL stage: one epoch of two steps) on textured images."""
    tmp = tmp_path_factory.mktemp("la_export")
    rec = tiny_recipe(tmp)
    rec["stages"] = rec["stages"][:1]
    _texture(rec["data"]["root"])
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(rec))
    return run_recipe(load_recipe(path), progress=False).path


def _latest(run_dir):
    return run_dir / "checkpoints" / "latest.pt"


def _edited_checkpoint(run_dir, tmp_path, change):
    state = torch.load(_latest(run_dir), weights_only=False)
    change(state)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    return path


def test_a_checkpoint_before_the_runs_last_epoch_is_not_final(run_dir, tmp_path):
    """latest.pt after epoch 1 of 2 (a run that goes on): the features are epoch 0's, of a
    run of 2 epochs, not its final ones; of a run of 1 epoch they are the final ones."""
    longer = load_recipe(run_dir / "config.yaml", ["stages.0.epochs=2"])
    meta = load_features(
        export_features(longer, tmp_path / "a.npz", checkpoint=_latest(run_dir))
    ).meta
    assert (meta["epoch"], meta["total_epochs"], meta["final"]) == (0, 2, False)
    own = load_recipe(run_dir / "config.yaml")
    meta = load_features(export_features(own, tmp_path / "b.npz", checkpoint=_latest(run_dir))).meta
    assert (meta["epoch"], meta["total_epochs"], meta["final"]) == (0, 1, True)


def test_the_final_epochs_checkpoint_is_not_called_chosen_on_the_test_set(run_dir, tmp_path):
    """The last epoch's weights are the run's result whether or not its best evaluation
    was that epoch: only a checkpoint before the end (best.pt of a run that went on) is
    'chosen on the test set'."""
    best = {"epoch": 0, "mAP": 1.0, "selected_on": "test set"}
    ckpt = _edited_checkpoint(run_dir, tmp_path, lambda s: s.update(best=best))
    cfg = load_recipe(run_dir / "config.yaml")
    meta = load_features(export_features(cfg, tmp_path / "f.npz", checkpoint=ckpt)).meta
    assert meta["final"] is True
    assert "selected_on" not in meta


def test_a_training_split_is_taken_from_a_checkpoint_of_the_same_dataset_only(run_dir, tmp_path):
    """The checkpoint's dataset record gives train_split where it is the dataset extracted
    (a checkpoint of split 3 of this dataset), not where the weights trained on another
    dataset (RegDB's split 3 says nothing of a SYSU-MM01 file)."""
    state = torch.load(_latest(run_dir), weights_only=False)
    own = dict(state["dataset"])
    assert own["dataset"] == "sysu"
    cfg = load_recipe(run_dir / "config.yaml")
    same = _edited_checkpoint(run_dir, tmp_path, lambda s: s.update(dataset={**own, "split": 3}))
    meta = load_features(export_features(cfg, tmp_path / "same.npz", checkpoint=same)).meta
    assert meta["train_split"] == 3
    other = {**own, "dataset": "regdb", "split": 3}
    ckpt = _edited_checkpoint(run_dir, tmp_path, lambda s: s.update(dataset=other))
    meta = load_features(export_features(cfg, tmp_path / "other.npz", checkpoint=ckpt)).meta
    assert "train_split" not in meta


def test_extract_follows_evaluation_flip_and_records_it(run_dir, tmp_path):
    """evaluation.flip=false: single-pass features, as load_model gives with flip off,
    recorded as test_flip False; they differ from the run's flip-averaged own file."""
    cfg = load_recipe(run_dir / "config.yaml", ["evaluation.flip=false"])
    got = load_features(export_features(cfg, tmp_path / "f.npz", checkpoint=_latest(run_dir)))
    own = load_features(run_dir / "features.npz")
    assert got.meta["test_flip"] is False and own.meta["test_flip"] is True
    model = uvireid.load_model(run_dir)
    model.flip = False
    want = model.features(list(got.paths), got.modality)
    np.testing.assert_allclose(got.feats, want, atol=1e-5, rtol=0)
    assert np.abs(got.feats - own.feats).max() > 1e-4  # the flip matters on these images


def test_extract_records_the_runs_image_size_as_height_width(run_dir, tmp_path):
    """test_size is [train.height, train.width] (32x16 here), as the run's own file says:
    compare and eval --runs refuse files of another test_size."""
    cfg = load_recipe(run_dir / "config.yaml")
    meta = load_features(export_features(cfg, tmp_path / "f.npz", checkpoint=_latest(run_dir))).meta
    own = load_features(run_dir / "features.npz").meta
    assert list(meta["test_size"]) == list(own["test_size"]) == [32, 16]


def test_validation_features_of_weights_that_trained_on_the_val_ids_are_marked(
    run_dir, tmp_path, capsys
):
    """A run without data.validation trained on the val ids (its checkpoint's dataset
    record has no 'validation'): extracted with data.validation=true, the file says
    train_validation False, and the protocol refuses to evaluate it."""
    cfg = load_recipe(run_dir / "config.yaml", ["data.validation=true"])
    out = export_features(cfg, tmp_path / "val.npz", checkpoint=_latest(run_dir))
    meta = load_features(out).meta
    assert meta["validation"] and meta["train_validation"] is False
    assert main(["eval", str(out), "--protocol", "sysu-all", "--trials", "1"]) == 2
    assert "train" in capsys.readouterr().err


def test_a_stage_started_from_best_is_recorded(run_dir, tmp_path):
    """A checkpoint whose stage began from best.pt (chosen on the test set) says so in
    the features file it gives."""
    started = [{"stage": "dcl", "epoch": 0, "selected_on": "test set"}]
    ckpt = _edited_checkpoint(run_dir, tmp_path, lambda s: s.update(started_from=started))
    cfg = load_recipe(run_dir / "config.yaml")
    meta = load_features(export_features(cfg, tmp_path / "f.npz", checkpoint=ckpt)).meta
    assert meta["started_from"] == started


@pytest.mark.skipif(
    not __import__("uvireid.engine.trainer", fromlist=["x"]).cpu_bf16_native(),
    reason="needs a CPU with native bf16 (train.amp runs in float32 elsewhere)",
)
def test_extract_of_an_amp_run_extracts_in_bf16_as_its_evaluation(tmp_path):
    """train.amp=true where bf16 is native: the run evaluated in bf16, and extract gives
    its own features (precision bfloat16), not float32 ones (which differ here)."""
    rec = tiny_recipe(tmp_path)
    rec["stages"] = rec["stages"][:1]
    rec["train"]["amp"] = True
    _texture(rec["data"]["root"])
    path = tmp_path / "amp.yaml"
    path.write_text(yaml.safe_dump(rec))
    folder = run_recipe(load_recipe(path), progress=False).path
    own = load_features(folder / "features.npz")
    cfg = load_recipe(folder / "config.yaml")
    got = load_features(export_features(cfg, tmp_path / "f.npz", checkpoint=_latest(folder)))
    assert got.meta["precision"] == own.meta["precision"] != "float32"
    np.testing.assert_allclose(got.feats, own.feats, atol=1e-5, rtol=0)
    model = uvireid.load_model(folder)
    model.amp = False  # float32 features: the check above can fail
    f32 = model.features(list(own.paths), own.modality)
    assert np.abs(f32 - own.feats).max() > 1e-4


def test_a_checkpoint_of_no_finished_epoch_names_no_epoch(run_dir, tmp_path):
    """checkpoint_epoch counts the epochs a checkpoint finished: at 0 there is no last
    trained epoch to name (no 'epoch' -1, no 'final')."""
    ckpt = _edited_checkpoint(run_dir, tmp_path, lambda s: s.update(epoch=0))
    cfg = load_recipe(run_dir / "config.yaml")
    meta = load_features(export_features(cfg, tmp_path / "f.npz", checkpoint=ckpt)).meta
    assert meta["checkpoint_epoch"] == 0
    assert "epoch" not in meta and "final" not in meta
