"""The SYSU-MM01, RegDB and LLCM loaders against naive listings of fixture trees in the
release layouts (notes/eval_datasets.md §1)."""

from __future__ import annotations

import os
import random
import re
import shutil

import pytest

from uvireid.data import LLCM, SYSUMM01, RegDB
from uvireid.data.fixtures import make_llcm_tree, make_regdb_tree, make_sysu_tree, write_image
from uvireid.data.llcm import camera_from_path
from uvireid.data.regdb import available_splits
from uvireid.errors import ConfigError, DatasetError
from uvireid.types import INFRARED, VISIBLE


def _ids(path):
    return {int(t) for t in open(path).read().replace(",", " ").split()}


def _rows(records):
    return [(r.path, r.pid, r.cam, r.modality) for r in records]


def test_sysu_records_equal_a_naive_walk_of_the_release_tree(tmp_path):
    """Every image under cam<C>/<pid %04d>/ of a listed id, nothing else, sorted by full
    path; 3000/10000 (test) and 2000/11000 (train) make numeric order differ from path
    order ("10000" < "3000")."""
    pids = [1, 2, 3, 4, 5, 7, 2000, 3000, 10000, 11000]
    root = make_sysu_tree(
        tmp_path / "SYSU",
        ids=pids,
        images_per=2,
        test_ids=[3, 3000, 10000],
        val_ids=[2000, 5],
        skip=[(1, 3), (6, 7), (2, 2000)],
    )
    # an unlisted identity folder, a non-image file and a hidden image: none is a record
    (root / "exp" / "train_id.txt").write_text("1,2,4,7,11000\n")
    write_image(root / "cam1" / "0099" / "0001.jpg", random.Random(1))
    (root / "cam2" / "0001" / "notes.txt").write_text("x")
    write_image(root / "cam3" / "0001" / ".0009.jpg", random.Random(2))
    exp = root / "exp"
    train_ids = _ids(exp / "train_id.txt") | _ids(exp / "val_id.txt")
    test_ids = _ids(exp / "test_id.txt")
    want = {"train": [], "test": []}
    for cam in range(1, 7):
        for pid_dir in os.listdir(root / f"cam{cam}"):
            for name in os.listdir(root / f"cam{cam}" / pid_dir):
                if name.startswith(".") or not name.endswith(".jpg"):
                    continue
                pid = int(pid_dir)
                split = "train" if pid in train_ids else "test" if pid in test_ids else None
                if split:
                    path = str(root / f"cam{cam}" / pid_dir / name)
                    want[split].append((path, pid, cam, INFRARED if cam in (3, 6) else VISIBLE))
    ds = SYSUMM01(root)
    assert _rows(ds.train) == sorted(want["train"])
    assert _rows(ds.test) == sorted(want["test"])
    assert {r[1] for r in want["test"]} == {3, 3000, 10000}


def test_regdb_records_equal_the_four_lists_read_by_hand(tmp_path):
    root = make_regdb_tree(tmp_path / "RegDB", ids=6, images_per=2, splits=(1,))
    ds = RegDB(root, split=1)
    for split in ("train", "test"):
        want = []
        for kind, modality, cam in (("visible", VISIBLE, 1), ("thermal", INFRARED, 2)):
            for line in (root / "idx" / f"{split}_{kind}_1.txt").read_text().splitlines():
                rel, label = line.split(" ")
                want.append((os.path.normpath(os.path.join(root, rel)), int(label), cam, modality))
        assert _rows(getattr(ds, split)) == want


def test_llcm_records_equal_lists_and_a_naive_walk_of_the_test_folders(tmp_path):
    """Train: the idx lists in order, camera from the file name's c<N> field even under a
    root that has a cam<N> folder; test: test_{vis,nir}/cam<C>/<pid> of the test ids for
    DEEN's cameras, sorted by full path."""
    root = make_llcm_tree(tmp_path / "cam5" / "LLCM", train_ids=2, test_ids=2, images_per=1)
    ds = LLCM(root)
    want = []
    for mod, modality in (("vis", VISIBLE), ("nir", INFRARED)):
        for line in (root / "idx" / f"train_{mod}.txt").read_text().splitlines():
            rel, label = line.split(" ")
            cam = int(re.search(r"_c(\d+)_", rel).group(1))
            want.append((str(root / rel), int(label), cam, modality))
    assert _rows(ds.train) == want
    assert {r.cam for r in ds.train} == set(range(1, 10))
    test_ids = _ids(root / "idx" / "test_id.txt")
    want = []
    for folder, modality, cams in (
        ("test_vis", VISIBLE, range(1, 10)),
        ("test_nir", INFRARED, (1, 2, 4, 5, 6, 7, 8, 9)),
    ):
        for cam in cams:
            camdir = root / folder / f"cam{cam}"
            for pid_dir in os.listdir(camdir):
                if int(pid_dir) in test_ids:
                    for name in os.listdir(camdir / pid_dir):
                        want.append((str(camdir / pid_dir / name), int(pid_dir), cam, modality))
    assert _rows(ds.test) == sorted(want)


@pytest.mark.parametrize(
    ("relpath", "cam"),
    [
        ("cam1/cam2/x.jpg", 2),  # the folder nearest to the file wins
        ("nir\\cam3\\0001\\x.jpg", 3),  # a list written on Windows
        ("nir/0001/0001_s1_c07.jpg", 7),  # the field last, before the extension
        ("cam5x/0001/0001_c02_s1.jpg", 2),  # cam5x is no camera folder
        ("nir/0001/0001_c02x_c03.jpg", 3),  # c02x is no camera field
    ],
)
def test_llcm_camera_from_path_follows_its_documented_rule(relpath, cam):
    assert camera_from_path(relpath) == cam


def test_regdb_available_splits_are_numbers_in_numeric_order_under_any_root(tmp_path):
    root = tmp_path / "Reg[DB]*"  # glob metacharacters in the root
    (root / "idx").mkdir(parents=True)
    for name in ("train_visible_10.txt", "train_visible_2.txt", "train_visible_1.txt"):
        (root / "idx" / name).write_text("")
    (root / "idx" / "train_visible_x.txt").write_text("")
    assert available_splits(str(root)) == [1, 2, 10]


def test_regdb_split_true_is_refused_not_read_as_trial_1(tmp_path):
    root = make_regdb_tree(tmp_path / "RegDB", ids=4, images_per=1)
    with pytest.raises(ConfigError, match="trial number"):
        RegDB(root, split=True)


def test_regdb_an_empty_list_and_a_missing_thermal_image_are_errors(tmp_path):
    root = make_regdb_tree(tmp_path / "RegDB", ids=4, images_per=1)
    thermal = root / "idx" / "test_thermal_1.txt"
    text = thermal.read_text()
    thermal.write_text("\n")
    with pytest.raises(DatasetError, match=r"test_thermal_1\.txt lists no images"):
        RegDB(root)
    thermal.write_text(text + "Thermal/9/gone.bmp 1\n")
    with pytest.raises(DatasetError, match=r"test_thermal_1\.txt do not exist: .*gone\.bmp"):
        RegDB(root)


def test_regdb_consistency_names_each_side_correctly(tmp_path):
    root = make_regdb_tree(tmp_path / "RegDB", ids=4, images_per=1)
    vis = root / "idx" / "test_visible_1.txt"
    label = vis.read_text().splitlines()[0].rsplit(" ", 1)[1]
    kept = [ln for ln in vis.read_text().splitlines() if not ln.endswith(f" {label}")]
    vis.write_text("\n".join(kept) + "\n")
    (problem,) = RegDB(root).consistency_problems()
    assert f"only visible: -; only thermal: {label})" in problem


def test_sysu_validation_tests_on_every_val_id(tmp_path):
    root = make_sysu_tree(tmp_path / "S", ids=12, images_per=1, val_ids=[1, 4, 7, 10])
    val = SYSUMM01(root, validation=True)
    assert sorted({r.pid for r in val.test}) == [1, 4, 7, 10]
    assert not {r.pid for r in val.train} & {1, 4, 7, 10}


def test_sysu_empty_camera_message_blames_padding_only_for_short_nonzero_names(tmp_path):
    """The zero-padding hint is for folders such as '6' (not '0006'); a 4-digit folder of
    an unlisted id or a folder '00' gets the re-extract advice."""
    root = make_sysu_tree(tmp_path / "S", ids=6, images_per=1, cams=(1, 2, 3, 4, 5, 6))
    for pid in range(1, 7):
        shutil.rmtree(root / "cam2" / f"{pid:04d}")
    for name in ("0099", "00"):
        write_image(root / "cam2" / name / "0001.jpg", random.Random(3))
    with pytest.raises(DatasetError, match="Re-extract cam2 from the release"):
        SYSUMM01(root)
    write_image(root / "cam2" / "6" / "0001.jpg", random.Random(4))
    with pytest.raises(DatasetError, match=r"without zero padding \(6, not 0006\)"):
        SYSUMM01(root)


@pytest.mark.parametrize("cam", [1, 6])
def test_sysu_missing_or_empty_first_and_last_camera_is_an_error(tmp_path, cam):
    root = make_sysu_tree(tmp_path / "S", ids=6, images_per=1)
    shutil.rmtree(root / f"cam{cam}")
    with pytest.raises(DatasetError, match=rf"no camera folder cam{cam}"):
        SYSUMM01(root)
    (root / f"cam{cam}").mkdir()
    with pytest.raises(DatasetError, match=rf"cam{cam} holds no images.*cam{cam}/0001/0001\.jpg"):
        SYSUMM01(root)


def test_regdb_validation_ids_are_every_fifth_of_all_training_labels(tmp_path):
    """every_fifth over the ids of both training lists: a label listed only in the thermal
    list still counts (labels 0..4: the fifth is 4)."""
    root = make_regdb_tree(tmp_path / "RegDB", ids=10, images_per=1)
    vis = root / "idx" / "train_visible_1.txt"
    vis.write_text("\n".join(ln for ln in vis.read_text().splitlines() if not ln.endswith(" 0")))
    ds = RegDB(root, validation=True)
    assert {r.pid for r in ds.test} == {4}
    assert {r.pid for r in ds.train} == {0, 1, 2, 3}


def test_llcm_a_stray_file_named_like_a_camera_folder_is_ignored(tmp_path):
    root = make_llcm_tree(tmp_path / "LLCM", train_ids=2, test_ids=1)
    before = _rows(LLCM(root).test)
    (root / "test_vis" / "cam01").write_text("not a folder")
    assert _rows(LLCM(root).test) == before


def test_llcm_validation_ids_are_every_fifth_of_both_training_lists(tmp_path):
    """Pid 5 is listed in train_nir.txt only: it still is a training id, the fifth."""
    root = make_llcm_tree(tmp_path / "LLCM", train_ids=5, test_ids=1)
    vis = root / "idx" / "train_vis.txt"
    vis.write_text("\n".join(ln for ln in vis.read_text().splitlines() if not ln.endswith(" 5")))
    ds = LLCM(root, validation=True)
    assert {r.pid for r in ds.test} == {5}
    assert {r.pid for r in ds.train} == {1, 2, 3, 4}
