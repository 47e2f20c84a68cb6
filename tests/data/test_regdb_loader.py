from __future__ import annotations

import os

import pytest

from uvireid.data import RegDB
from uvireid.errors import ConfigError, DatasetError
from uvireid.registry import DATASETS
from uvireid.types import INFRARED, VISIBLE


def test_regdb_reads_the_four_lists_of_a_split(regdb_root):
    ds = RegDB(regdb_root, split=1)
    assert ds.split == 1 and ds.protocols == ["regdb-v2i", "regdb-i2v"]
    assert len(ds.train) == 4 * 2 * 2 and len(ds.test) == 4 * 2 * 2
    assert {(r.cam, r.modality) for r in ds.train} == {(1, VISIBLE), (2, INFRARED)}
    # pids are the lists' labels, visible list first, in file order
    first_thermal = next(i for i, r in enumerate(ds.train) if r.modality == INFRARED)
    assert all(r.modality == VISIBLE for r in ds.train[:first_thermal])
    assert sorted({r.pid for r in ds.train}) == [0, 1, 2, 3]
    assert all(os.path.isfile(r.path) and os.path.isabs(r.path) for r in ds.test)
    assert ds.consistency_problems() == []


def test_regdb_splits_differ_and_so_do_their_fingerprints(regdb_root):
    one, two = RegDB(regdb_root, split=1), RegDB(regdb_root, split=2)
    assert {r.path for r in one.train} != {r.path for r in two.train}
    assert one.fingerprint()["sha1"] != two.fingerprint()["sha1"]
    assert one.fingerprint()["split"] == 1


def test_regdb_registered_with_split_keyword(regdb_root):
    ds = DATASETS.build({"type": "regdb", "root": str(regdb_root), "split": 2})
    assert ds.meta()["split"] == 2


def test_regdb_missing_split_file_lists_the_splits_found(regdb_root):
    with pytest.raises(
        DatasetError, match=r"(?s)has no idx/train_visible_3\.txt.*Splits found in idx/: 1, 2"
    ) as err:
        RegDB(regdb_root, split=3)
    # the recipe key `uvireid run` takes (it refuses split=N and --split N; audit CA)
    assert "data.split=N" in str(err.value)


def test_regdb_missing_root_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)RegDB root .* does not exist.*idx/"):
        RegDB(tmp_path / "RegDB")


def test_regdb_list_naming_a_missing_file_lists_the_first_few(regdb_root):
    listfile = regdb_root / "idx" / "test_thermal_1.txt"
    lines = listfile.read_text().splitlines()
    lines += [f"Thermal/99/gone_{k}.bmp 7" for k in range(8)]
    listfile.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DatasetError,
        match=r"8 image\(s\) listed in .*test_thermal_1\.txt do not exist: .*gone_0\.bmp.*"
        r"and 3 more",
    ):
        RegDB(regdb_root, split=1)
    assert len(RegDB(regdb_root, split=1, verify=False).test) == 16 + 8


def test_regdb_malformed_line_names_file_and_line(regdb_root):
    listfile = regdb_root / "idx" / "train_visible_1.txt"
    listfile.write_text(listfile.read_text() + "Visible/1/no_label.bmp\n")
    with pytest.raises(DatasetError, match=r"train_visible_1\.txt line 9 reads"):
        RegDB(regdb_root, split=1)


def test_regdb_split_must_be_a_positive_trial_number(regdb_root):
    with pytest.raises(ConfigError, match=r"split must be a trial number.*set data\.split=1"):
        RegDB(regdb_root, split=0)


def test_regdb_lists_with_different_identities_are_inconsistent(regdb_root):
    listfile = regdb_root / "idx" / "train_thermal_1.txt"
    kept = [line for line in listfile.read_text().splitlines() if not line.endswith(" 3")]
    listfile.write_text("\n".join(kept) + "\n")
    problems = RegDB(regdb_root, split=1).consistency_problems()
    assert len(problems) == 1
    assert "only visible: 3; only thermal: -" in problems[0]
