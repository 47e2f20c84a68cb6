"""Problems a run can see before it trains are reported before it trains: an unreadable
test image, a resume whose checkpoint is gone, a folder another process is using."""

from __future__ import annotations

import os

import pytest

from uvireid.config import load_recipe
from uvireid.engine.run_folder import RunFolder
from uvireid.engine.runner import run_recipe
from uvireid.engine.trainer import Trainer
from uvireid.errors import DatasetError, RunFolderError
from uvireid.registry import DATASETS


def test_an_unreadable_test_image_stops_the_run_before_the_first_epoch(recipe_file, monkeypatch):
    cfg = load_recipe(recipe_file)
    victim = DATASETS.build(cfg["data"]).test[5].path
    with open(victim, "wb") as fh:
        fh.write(b"not a jpeg")
    epochs = []
    real = Trainer.train_epoch
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, e: epochs.append(e) or real(self, e))
    with pytest.raises(DatasetError, match=r"1 test image\(s\) are unreadable"):
        run_recipe(cfg, progress=False)
    assert epochs == []
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    assert folder.read_metrics() == []
    assert not (folder.checkpoints / "latest.pt").exists()


def test_resume_without_the_checkpoint_of_trained_epochs_is_refused(recipe_file, monkeypatch):
    cfg = load_recipe(recipe_file)
    real = Trainer.train_epoch

    def killed_at_epoch_1(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", killed_at_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(cfg, progress=False)
    monkeypatch.setattr(Trainer, "train_epoch", real)
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    (folder.checkpoints / "latest.pt").unlink()
    with pytest.raises(RunFolderError, match=r"1 epoch\(s\) were trained .* is missing"):
        run_recipe(cfg, resume=True, progress=False)
    assert [m["epoch"] for m in folder.read_metrics()] == [0]


def test_a_folder_in_use_is_refused_with_the_holders_pid(recipe_file):
    cfg = load_recipe(recipe_file)
    folder = RunFolder.create(cfg["output_dir"], cfg["name"])
    (folder.path / "config.yaml").write_text((recipe_file).read_text())
    with folder.locked():
        assert (folder.path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunFolderError, match=f"in use by another process \\(pid {os.getpid()}"):
            run_recipe(cfg, resume=folder.path, progress=False, allow_changes=True)
    with folder.locked():  # released: taken again
        pass
