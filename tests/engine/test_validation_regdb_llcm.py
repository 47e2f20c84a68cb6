"""data.validation on RegDB and LLCM end to end with the fixture trees (review HA,
session 24): held-out people never train; a RegDB run resumed on another trial is
refused, as is one started from another trial's weights; a validation file of LLCM that
does not say which ids it holds is not said to hold SYSU-MM01's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from train_fixtures import run_killed_at, tiny_recipe

from uvireid.cli import main
from uvireid.config import load_recipe
from uvireid.data import LLCM, RegDB
from uvireid.data.fixtures import make_llcm_tree, make_regdb_tree
from uvireid.features import save_features


def _person(record) -> str:
    """The RegDB fixture's person: the identity folder (labels are per trial)."""
    return os.path.basename(os.path.dirname(record.path))


@pytest.fixture(scope="module")
def regdb_killed(tmp_path_factory):
    """A tiny RegDB validation run of split 1 killed after its first epoch: its
    checkpoint trained on split 1's training ids less every fifth one."""
    tmp = tmp_path_factory.mktemp("ha_regdb")
    root = make_regdb_tree(tmp / "RegDB", ids=40, images_per=3, splits=(1, 2))
    data = {"type": "regdb", "root": str(root), "split": 1, "validation": True}
    rec = tiny_recipe(
        tmp, name="rk", data=data, evaluation={"protocol": "regdb-v2i", "trials": 1, "every": 0}
    )
    rec["clusterer"]["eps"] = 0.9
    (tmp / "rk.yaml").write_text(yaml.safe_dump(rec))
    folder = run_killed_at(load_recipe(tmp / "rk.yaml"), 1)
    return tmp, root, rec, folder.path


def test_regdb_held_out_people_never_train_and_the_fixture_trials_share_people(regdb_killed):
    """The held-out labels are people none of the training images show; and split 1's
    training people are among split 2's test and validation people (what the bugs below
    rely on)."""
    _, root, _, _ = regdb_killed
    for split in (1, 2):
        ds = RegDB(root, split=split, validation=True)
        assert {_person(r) for r in ds.test}.isdisjoint({_person(r) for r in ds.train})
        labels = sorted({r.pid for r in RegDB(root, split=split).train})
        assert sorted({r.pid for r in ds.test}) == labels[4::5]
    train1 = {_person(r) for r in RegDB(root, split=1).train}
    assert train1 & {_person(r) for r in RegDB(root, split=2).test}
    assert train1 & {_person(r) for r in RegDB(root, split=2, validation=True).test}


def test_resume_with_another_regdb_split_is_refused_even_with_allow_changes(
    regdb_killed, tmp_path, capsys
):
    import shutil

    _, _, _, folder = regdb_killed
    run = tmp_path / folder.name
    shutil.copytree(folder, run)
    code = main(["run", str(run), "--resume", "data.split=2", "--allow-changes"])
    err = capsys.readouterr().err
    assert code != 0 and "--resume: data.split: 1 -> 2 changes which identities" in err
    assert not (run / "results.json").exists()


def test_a_regdb_run_refuses_the_weights_of_another_trial(regdb_killed, tmp_path, capsys):
    _, root, rec, folder = regdb_killed
    ev = {
        "description": "evaluation only",
        "device": "cpu",
        "seed": 3,
        "output_dir": str(tmp_path / "runs"),
        "data": {"type": "regdb", "root": str(root), "split": 1, "validation": False},
        "backbone": {**rec["backbone"], "pretrained": str(folder / "checkpoints" / "latest.pt")},
        "train": {k: rec["train"][k] for k in ("height", "width", "image_cache", "threads")},
        "evaluation": {"protocol": "regdb-v2i", "trials": 1},
    }
    # control: split 1's test people never trained this model
    (tmp_path / "s1.yaml").write_text(yaml.safe_dump(ev))
    assert main(["run", str(tmp_path / "s1.yaml")]) == 0
    capsys.readouterr()
    ev["data"]["split"] = 2
    ev["output_dir"] = str(tmp_path / "runs2")
    (tmp_path / "s2.yaml").write_text(yaml.safe_dump(ev))
    assert main(["run", str(tmp_path / "s2.yaml")]) != 0  # split 2's test ids include
    err = capsys.readouterr().err  # people this model trained on
    assert "is the checkpoint of a run that trained on split 1's training ids" in err
    assert not list((tmp_path / "runs2").glob("*/features.npz"))


def test_an_llcm_validation_message_does_not_name_sysu_files(tmp_path, capsys):
    root = make_llcm_tree(tmp_path / "LLCM", train_ids=10, test_ids=2)
    ds = LLCM(root, validation=True)
    test = ds.test
    rng = np.random.default_rng(1)
    path = save_features(
        tmp_path / "other.npz",
        rng.normal(size=(len(test), 8)).astype(np.float32),
        np.array([r.pid for r in test]),
        np.array([r.cam for r in test]),
        np.array([r.modality for r in test]),
        dataset="llcm",
        split="test",
        validation=True,
        train_validation=False,  # another codebase's file: no validation_ids
    )
    assert main(["eval", str(path), "--protocol", "llcm-v2i"]) != 0
    err = capsys.readouterr().err
    assert "holds the validation ids (held-out training ids; the meta does not say which" in err
    assert "exp/val_id.txt" not in err


def test_release_of_a_validation_split_counts_the_release(tmp_path):
    """release() gives back the release's arrangement for RegDB and LLCM, counted from
    the index files by hand."""
    root = make_regdb_tree(tmp_path / "RegDB", ids=20, images_per=2, splits=(1,))
    lines = [
        line.rsplit(" ", 1)
        for name in ("train_visible_1.txt", "train_thermal_1.txt")
        for line in (Path(root) / "idx" / name).read_text().splitlines()
    ]
    rel = RegDB(root, split=1, validation=True).release()
    assert rel.validation is False
    assert len(rel.train) == len(lines)
    assert {r.pid for r in rel.train} == {int(lab) for _, lab in lines}
    assert rel.stats()["train"]["ids"] == len({lab for _, lab in lines})


def test_a_regdb_validation_file_of_another_split_is_said_to_hold_training_images(tmp_path, capsys):
    """The refusal of another split's model named held-out training images "the test
    images of split 2" (review HA)."""
    rng = np.random.default_rng(2)
    n = 8
    path = save_features(
        tmp_path / "v.npz",
        rng.normal(size=(n, 4)).astype(np.float32),
        np.repeat(np.arange(4), 2),
        np.tile([1, 2], 4),
        np.tile([0, 1], 4),
        dataset="regdb",
        split=2,
        train_split=1,
        validation=True,
        train_validation=True,
    )
    assert main(["eval", str(path), "--protocol", "regdb-v2i"]) != 0
    err = capsys.readouterr().err
    assert "trained on RegDB split 1 but these are held-out training images of split 2" in err


def test_a_dataset_marked_validation_without_hold_out_still_gives_its_meta(tmp_path):
    """A plugin dataset that sets ``validation`` itself (as SYSU-MM01 did before
    ``hold_out``) got an AttributeError from meta() (review HA)."""
    from uvireid.data.base import VIDataset

    ds = VIDataset(tmp_path)
    ds.validation = True
    meta = ds.meta()
    assert meta["validation"] is True and "validation_ids" not in meta
