"""``data.validation`` on RegDB and LLCM, which release no validation split: every fifth
training id is held out and tested on (session 24); SYSU-MM01's released split is tested
in test_sysu_loader.py and tests/engine/test_validation_runs.py."""

from __future__ import annotations

import os

import pytest

from uvireid.data import LLCM, RegDB
from uvireid.data.base import every_fifth
from uvireid.data.fixtures import make_llcm_tree, make_regdb_tree
from uvireid.errors import DatasetError
from uvireid.types import INFRARED, VISIBLE


def _listed(root, *names):
    """(path, label) of the lines of the index files ``names``, read by hand."""
    out = []
    for name in names:
        for line in (root / "idx" / name).read_text().splitlines():
            rel, label = line.rsplit(" ", 1)
            out.append((os.path.normpath(os.path.join(root, rel)), int(label)))
    return out


def test_every_fifth_is_the_fifth_tenth_and_so_on_of_the_sorted_ids():
    assert every_fifth([9, 3, 1, 7, 5, 2, 4, 8, 6, 10, 11, 3]) == [5, 10]
    assert every_fifth(range(206)) == list(range(4, 206, 5)) and len(every_fifth(range(206))) == 41
    assert every_fifth([1, 2, 3, 4]) == []


def test_regdb_validation_tests_every_fifth_training_id_and_trains_on_the_rest(tmp_path):
    root = make_regdb_tree(tmp_path / "RegDB", ids=20, images_per=2, splits=(1, 2))
    train = _listed(root, "train_visible_2.txt", "train_thermal_2.txt")
    labels = sorted({label for _, label in train})
    held = labels[4::5]
    assert held == [4, 9]  # 10 training ids, labelled 0..9 as in the release
    ds = RegDB(root, split=2, validation=True)
    assert sorted((r.path, r.pid) for r in ds.test) == sorted(
        (p, lab) for p, lab in train if lab in held
    )
    assert sorted((r.path, r.pid) for r in ds.train) == sorted(
        (p, lab) for p, lab in train if lab not in held
    )
    # both modalities of each held-out id, as the RegDB protocols need
    assert {(r.pid, r.modality) for r in ds.test} == {
        (p, m) for p in held for m in (VISIBLE, INFRARED)
    }
    meta = ds.meta()
    assert meta["validation"] is True and meta["split"] == 2
    assert meta["validation_ids"] == "every fifth id of idx/train_*_2.txt"
    assert meta["test_ids"] == 2 and meta["train_ids"] == 8
    assert ds.declared_ids["test"].ids == (4, 9)
    release = RegDB(root, split=2)
    assert ds.fingerprint()["validation"] is True
    assert ds.fingerprint()["sha1"] != release.fingerprint()["sha1"]
    again = ds.release()  # the release's arrangement, for the check against the release
    assert [r.path for r in again.train] == [r.path for r in release.train]
    assert [r.path for r in again.test] == [r.path for r in release.test]
    assert again.fingerprint() == release.fingerprint() and again.validation is False


def test_llcm_validation_tests_every_fifth_training_id_on_its_training_images(tmp_path):
    root = make_llcm_tree(tmp_path / "LLCM", train_ids=10, test_ids=2)
    train = _listed(root, "train_vis.txt", "train_nir.txt")
    held = sorted({label for _, label in train})[4::5]
    ds = LLCM(root, validation=True)
    assert sorted(r.path for r in ds.test) == sorted(p for p, lab in train if lab in held)
    assert {r.pid for r in ds.train} == {lab for _, lab in train} - set(held)
    assert {r.cam for r in ds.test if r.modality == INFRARED} == {1, 2, 4, 5, 6, 7, 8, 9}
    meta = ds.meta()
    assert meta["validation"] is True
    assert meta["validation_ids"] == "every fifth id of idx/train_vis.txt + idx/train_nir.txt"
    assert [r.path for r in ds.release().test] == [r.path for r in LLCM(root).test]


@pytest.mark.parametrize("kind", [RegDB, LLCM])
def test_validation_must_be_a_boolean(tmp_path, kind):
    root = (
        make_regdb_tree(tmp_path / "RegDB", ids=4)
        if kind is RegDB
        else make_llcm_tree(tmp_path / "LLCM")
    )
    with pytest.raises(DatasetError, match="validation must be true or false, got 'yes'"):
        kind(root, validation="yes")
    with pytest.raises(DatasetError, match="validation must be true or false, got 1"):
        kind.check_args(root, validation=1)
