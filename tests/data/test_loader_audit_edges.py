"""Dataset loaders: behaviour a second mutation audit (NH) found untested.

SYSU-MM01's error for an empty camera, its path order past 4-digit pids; RegDB's bool
and empty-list checks, two-digit trial numbers in the hint, thermal-only identities,
validation ids; LLCM's unknown train cameras, zero-padded test camera folders and
their listing order; ``read_image`` on flat and NaN images.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from uvireid.data import LLCM, SYSUMM01, RegDB
from uvireid.data.fixtures import make_llcm_tree, make_regdb_tree, make_sysu_tree
from uvireid.data.images import read_image
from uvireid.errors import ConfigError, DatasetError
from uvireid.types import VISIBLE

# ---------------------------------------------------------------- SYSU-MM01


def test_sysu_empty_camera_with_padded_folders_of_other_ids_asks_to_re_extract(tmp_path):
    """A camera folder holding only 4-digit folders of unlisted ids is not an unpadded
    copy: the fix is re-extracting, not renaming (the 'unpadded' test is len < 4)."""
    root = make_sysu_tree(tmp_path / "S", ids=6, images_per=1)
    shutil.rmtree(root / "cam2")
    (root / "cam2" / "0099").mkdir(parents=True)  # a 4-digit folder of no listed id
    with pytest.raises(DatasetError, match="holds no images") as err:
        SYSUMM01(root)
    assert "Re-extract cam2 from the release" in str(err.value)
    assert "zero padding" not in str(err.value)


def test_sysu_records_sorted_by_full_path_past_four_digit_pids(tmp_path):
    """Sorted by path string, as the reference loaders sort: '10000' comes before '9999'
    (a loop over ascending pids alone would put 9999 first)."""
    root = make_sysu_tree(
        tmp_path / "S", ids=[1, 2, 9999, 10000], images_per=1, test_ids=[1], val_ids=[2]
    )
    ds = SYSUMM01(root)
    paths = [r.path for r in ds.train]
    assert paths == sorted(paths)
    assert [r.pid for r in ds.train if r.cam == 1] == [2, 10000, 9999]  # '0002' < '10000' < '9999'


def test_check_reports_a_split_without_infrared_once_not_per_identity(tmp_path):
    """No identity has both modalities (both infrared cameras missing): the split-level
    problem is reported, not a second 'one modality only' problem for every identity."""
    from uvireid.data.check import check_dataset

    root = make_sysu_tree(tmp_path / "S", ids=6, images_per=1)
    shutil.rmtree(root / "cam3")
    shutil.rmtree(root / "cam6")
    problems = check_dataset(SYSUMM01(root, verify=False), official=False).problems
    assert "train has no infrared images; expected both modalities in every split" in problems
    assert "test has no infrared images; expected both modalities in every split" in problems
    assert not [p for p in problems if "one modality only" in p]
    # some identities with both: the one-sided ones are named
    root2 = make_sysu_tree(tmp_path / "S2", ids=6, images_per=1, skip=[(3, 1), (6, 1)])
    problems = check_dataset(SYSUMM01(root2), official=False).problems
    assert problems == [
        "train: 1 identity has images in one modality only: 1; expected every identity in "
        "both (a camera folder deleted or not extracted?)"
    ]


# ---------------------------------------------------------------- RegDB


@pytest.mark.parametrize("split", [True, 1.0, "1"])
def test_regdb_split_must_be_an_int_not_a_bool_or_other_type(tmp_path, split):
    root = make_regdb_tree(tmp_path / "R", ids=4, images_per=1)
    with pytest.raises(ConfigError, match=r"split must be a trial number 1\.\.10"):
        RegDB(root, split=split)


def test_regdb_hint_names_two_digit_trials(tmp_path):
    root = make_regdb_tree(tmp_path / "R", ids=4, images_per=1, splits=(1, 10))
    assert RegDB.available_splits(str(root)) == [1, 10]
    with pytest.raises(DatasetError, match=r"Splits found in idx/: 1, 10;"):
        RegDB(root, split=3)
    assert RegDB(root, split=10).split == 10


@pytest.mark.parametrize("listname", ["train_visible_1.txt", "test_thermal_1.txt"])
def test_regdb_empty_list_is_an_error_naming_it(tmp_path, listname):
    root = make_regdb_tree(tmp_path / "R", ids=4, images_per=1)
    (root / "idx" / listname).write_text("\n\n")
    with pytest.raises(DatasetError, match=rf"{listname} lists no images"):
        RegDB(root, split=1)


def test_regdb_thermal_only_identity_is_inconsistent(tmp_path):
    """The check is symmetric: an identity only in the thermal list is named too."""
    root = make_regdb_tree(tmp_path / "R", ids=8, images_per=1)
    listfile = root / "idx" / "test_visible_1.txt"
    kept = [line for line in listfile.read_text().splitlines() if not line.endswith(" 2")]
    listfile.write_text("\n".join(kept) + "\n")
    problems = RegDB(root, split=1).consistency_problems()
    assert len(problems) == 1
    assert "test split 1" in problems[0] and "only visible: -; only thermal: 2" in problems[0]


def test_regdb_validation_holds_out_every_fifth_training_id_not_test_labels(tmp_path):
    """The held-out ids come from the trial's training lists, whatever the test lists'
    labels are (here shifted by 100, so the two label ranges differ)."""
    root = make_regdb_tree(tmp_path / "R", ids=20, images_per=1)
    for kind in ("visible", "thermal"):
        listfile = root / "idx" / f"test_{kind}_1.txt"
        lines = [line.rsplit(" ", 1) for line in listfile.read_text().splitlines()]
        listfile.write_text("".join(f"{p} {int(label) + 100}\n" for p, label in lines))
    full = RegDB(root, split=1)
    train_labels = sorted({r.pid for r in full.train})
    held = train_labels[4::5]  # the 5th, 10th, ... training id
    val = RegDB(root, split=1, validation=True)
    assert held == [4, 9]
    assert sorted({r.pid for r in val.test}) == held
    assert sorted({r.pid for r in val.train}) == [p for p in train_labels if p not in held]
    assert {r.path for r in val.test} == {r.path for r in full.train if r.pid in held}


# ---------------------------------------------------------------- LLCM


def test_llcm_train_images_without_a_camera_get_0_and_are_counted_in_a_warning(tmp_path, caplog):
    root = make_llcm_tree(tmp_path / "LLCM", train_ids=1, test_ids=1)
    listfile = root / "idx" / "train_vis.txt"
    first = listfile.read_text().splitlines()[0].rsplit(" ", 1)[0]
    for k in range(2):  # release-like copies whose names carry no c<N> field
        shutil.copy(root / first, root / "vis" / "0001" / f"plain_{k}.jpg")
        listfile.write_text(listfile.read_text() + f"vis/0001/plain_{k}.jpg 1\n")
    with caplog.at_level("WARNING", logger="uvireid.data.llcm"):
        ds = LLCM(root)
    assert [r.cam for r in ds.train if "plain_" in r.path] == [0, 0]
    assert "2 train images have no camera in their path" in caplog.text


def test_llcm_zero_padded_test_camera_folder_is_read_as_its_camera(tmp_path):
    root = make_llcm_tree(tmp_path / "LLCM", train_ids=1, test_ids=2)
    os.rename(root / "test_vis" / "cam4", root / "test_vis" / "cam04")
    ds = LLCM(root)
    cam4 = [r for r in ds.test if r.modality == VISIBLE and r.cam == 4]
    assert len(cam4) == 2 and all("/test_vis/cam04/" in r.path for r in cam4)


# ---------------------------------------------------------------- read_image


def _save_16bit(path, values):
    Image.fromarray(np.asarray(values, dtype=np.uint16).reshape(1, -1)).save(path)
    assert Image.open(path).mode.startswith("I;16")


def test_flat_wide_image_above_255_reads_as_black(tmp_path):
    """No range to stretch: zeros, not 255 from clipping the raw values."""
    _save_16bit(tmp_path / "c.png", [1000, 1000, 1000])
    assert not np.asarray(read_image(tmp_path / "c.png")).any()


def test_float_image_with_one_nan_pixel_is_not_read_as_all_black(tmp_path):
    """A float ("F") thermal image with one invalid (NaN) pixel, as radiometric exports
    mark dead or masked pixels: its finite pixels should still be stretched over their
    own range (minimum to 0, maximum to 255), the NaN pixel as the minimum. Before the
    fix np.min/np.max returned NaN, ``hi > lo`` was False and the whole image read as
    zeros."""
    a = np.linspace(20.0, 40.0, 8, dtype=np.float32).reshape(1, 8)
    a[0, 3] = np.nan
    Image.fromarray(a, mode="F").save(tmp_path / "t.tif")
    got = np.asarray(read_image(tmp_path / "t.tif"))[0, :, 0].astype(int)
    finite = np.isfinite(a[0])
    lo, hi = a[0][finite].min(), a[0][finite].max()
    expected = np.round((a[0][finite] - lo) * 255.0 / (hi - lo)).astype(int)
    assert got[finite].tolist() == expected.tolist()
    assert got[finite].max() == 255 and got[3] == 0
    a[0, 3], a[0, 5] = np.inf, -np.inf  # a saturated pixel reads bright, -inf dark
    Image.fromarray(a, mode="F").save(tmp_path / "t.tif")
    got = np.asarray(read_image(tmp_path / "t.tif"))[0, :, 0].astype(int)
    assert (got[3], got[5]) == (255, 0) and got[7] == 255


def _scandir_sorted(reverse: bool):
    """os.scandir listing its entries by name, ascending or descending (the order of
    one file system or another)."""
    real = os.scandir

    class _Listing:
        def __init__(self, path="."):
            with real(path) as it:
                self.entries = sorted(it, key=lambda e: e.name, reverse=reverse)

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

    return _Listing


def test_llcm_cam1_and_cam01_test_folders_do_not_depend_on_listing_order(tmp_path, monkeypatch):
    """Two folders naming one camera (cam1 and a stray cam01 copy): which one is read
    must not depend on the order os.scandir lists them in. Before the fix the last one
    listed was kept and the other dropped without a word; now an error names both."""
    import uvireid.data.llcm as llcm_module

    root = make_llcm_tree(tmp_path / "LLCM", train_ids=1, test_ids=2)
    shutil.copytree(root / "test_vis" / "cam1", root / "test_vis" / "cam01")

    def load(reverse):
        with monkeypatch.context() as m:
            m.setattr(llcm_module.os, "scandir", _scandir_sorted(reverse))
            try:
                return sorted(r.path for r in LLCM(root).test)
            except DatasetError as exc:
                return str(exc)

    assert load(reverse=False) == load(reverse=True)
    assert "two folders of camera 1 (cam01/ and cam1/)" in load(reverse=False)
