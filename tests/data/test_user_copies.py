"""Datasets as users' copies come: files from Windows, roots one level off, renamed
folders (audit F, session 16). Every case here was an error pointing at the wrong fix, a
crash, or silently wrong records before."""

from __future__ import annotations

import logging
import os

import pytest
from PIL import Image

from uvireid.data.check import check_dataset
from uvireid.data.fixtures import make_folder_tree, make_regdb_tree, make_sysu_tree
from uvireid.data.folder import FolderDataset
from uvireid.data.regdb import RegDB
from uvireid.data.sysu import SYSUMM01
from uvireid.errors import DatasetError


def _bom(path):
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())


def test_split_and_index_files_with_a_byte_order_mark_read_as_without(tmp_path):
    """Windows editors write a BOM; it stayed in the first entry: '(\\ufeff1) is not an
    integer', or a listed image that exists 'does not exist'."""
    sysu = make_sysu_tree(tmp_path / "s")
    before = [(r.path, r.pid) for r in SYSUMM01(sysu).train]
    for stem in ("train_id", "val_id", "test_id"):
        _bom(sysu / "exp" / f"{stem}.txt")
    assert [(r.path, r.pid) for r in SYSUMM01(sysu).train] == before
    regdb = make_regdb_tree(tmp_path / "r")
    before = [(r.path, r.pid) for r in RegDB(regdb).train]
    _bom(regdb / "idx" / "train_visible_1.txt")
    assert [(r.path, r.pid) for r in RegDB(regdb).train] == before


def test_a_split_file_in_another_encoding_is_named_with_the_fix(tmp_path):
    """UTF-16 (PowerShell's '>') was 'dataset sysu refused its settings ...
    UnicodeDecodeError', naming neither the file nor a fix."""
    root = make_sysu_tree(tmp_path / "s")
    f = root / "exp" / "test_id.txt"
    f.write_text(f.read_text(), encoding="utf-16")
    with pytest.raises(DatasetError, match=r"exp/test_id.txt is not UTF-8 text.*re-save it"):
        SYSUMM01(root)
    regdb = make_regdb_tree(tmp_path / "r")
    (regdb / "idx" / "test_thermal_1.txt").write_bytes(b"Thermal/\xc4\xe3.bmp 1\n")
    with pytest.raises(DatasetError, match=r"index file .*test_thermal_1.txt is not UTF-8"):
        RegDB(regdb)


@pytest.mark.parametrize("offset", ["too_high", "too_low"])
def test_a_root_one_level_off_is_told_where_the_dataset_is(tmp_path, offset):
    """The commonest root mistake was told to 'Copy the split files from the release'."""
    real = make_sysu_tree(tmp_path / "data" / "SYSU-MM01")
    root = tmp_path / "data" if offset == "too_high" else real / "cam1"
    with pytest.raises(DatasetError, match=f"It is at .*: set data.root={real}"):
        SYSUMM01(root)
    regdb = make_regdb_tree(tmp_path / "x" / "RegDB")
    with pytest.raises(DatasetError, match=f"set data.root={regdb}"):
        RegDB(tmp_path / "x")


def test_a_root_among_several_copies_or_of_another_dataset_is_said(tmp_path):
    """Audit FC: two copies under the root given got the release's 'Copy the split files'
    advice, and so did a folder of another dataset given as this one."""
    from uvireid.data.fixtures import make_llcm_tree
    from uvireid.data.llcm import LLCM

    a = make_sysu_tree(tmp_path / "data" / "SYSU-MM01")
    b = make_sysu_tree(tmp_path / "data" / "SYSU-MM01-copy")
    with pytest.raises(DatasetError, match=f"It is in 2 folders next to it \\({a}, {b}\\)"):
        SYSUMM01(tmp_path / "data")
    llcm = make_llcm_tree(tmp_path / "LLCM")
    regdb = make_regdb_tree(tmp_path / "RegDB")
    cases = [
        (SYSUMM01, llcm, "idx/train_vis.txt, as LLCM does: if it is LLCM, set data.type=llcm"),
        (LLCM, a, "exp/train_id.txt, as SYSU-MM01 does: if it is SYSU-MM01, set data.type=sysu"),
        (
            SYSUMM01,
            regdb,
            "idx/train_visible_1.txt, as RegDB does: if it is RegDB, set data.type=regdb",
        ),
    ]
    for cls, root, said in cases:
        with pytest.raises(DatasetError) as info:
            cls(root)
        assert f"{root} holds {said}" in str(info.value)
    # a SYSU-MM01 copy without one split file is told to copy it, not called SYSU-MM01 (FD)
    (a / "exp" / "test_id.txt").unlink()
    with pytest.raises(DatasetError) as info:
        SYSUMM01(a)
    assert "Copy the split files" in str(info.value) and "data.type=" not in str(info.value)


def test_a_file_name_that_is_not_utf8_does_not_stop_the_fingerprint(tmp_path):
    """A zip made with GBK names gave a UnicodeEncodeError in every run's manifest."""
    root = make_folder_tree(tmp_path / "f")
    n = len(FolderDataset(root).train)
    name = os.fsencode(str(root / "visible" / "cam1")) + b"/\xc4\xe3\xba\xc3.jpg"
    Image.new("RGB", (4, 8)).save(name)
    fp = FolderDataset(root).fingerprint()
    assert fp["train_images"] == n + 1 and len(fp["sha1"]) == 40
    assert fp["sha1"] != FolderDataset(make_folder_tree(tmp_path / "g")).fingerprint()["sha1"]


def test_windows_separators_in_an_index_list_are_read(tmp_path):
    root = make_regdb_tree(tmp_path / "r")
    before = [(r.path, r.pid) for r in RegDB(root).train]
    f = root / "idx" / "train_visible_1.txt"
    f.write_text(f.read_text().replace("/", "\\"))
    assert [(r.path, r.pid) for r in RegDB(root).train] == before


def test_an_image_listed_twice_is_warned_and_reported_by_check(tmp_path, caplog):
    """A list concatenated twice made every image two records, and data check said OK."""
    root = make_regdb_tree(tmp_path / "r")
    assert check_dataset(RegDB(root), official=False).ok
    f = root / "idx" / "train_visible_1.txt"
    f.write_text(f.read_text() * 2)
    with caplog.at_level(logging.WARNING):
        report = check_dataset(RegDB(root), official=False)
    assert "more than once" in caplog.text
    assert not report.ok
    assert any("listed more than once" in p for p in report.problems)


def test_unpadded_sysu_identity_folders_are_named(tmp_path):
    root = make_sysu_tree(tmp_path / "s")
    for cam in range(1, 7):
        for d in os.listdir(root / f"cam{cam}"):
            os.rename(root / f"cam{cam}" / d, root / f"cam{cam}" / str(int(d)))
    with pytest.raises(DatasetError, match=r"without zero padding \(\d+, not \d{4}\): rename"):
        SYSUMM01(root)
