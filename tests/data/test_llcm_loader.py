from __future__ import annotations

import shutil

import pytest

from uvireid.data import LLCM
from uvireid.data.fixtures import make_llcm_tree
from uvireid.data.llcm import camera_from_path
from uvireid.errors import DatasetError
from uvireid.types import INFRARED, VISIBLE


def test_llcm_train_from_idx_lists_and_test_from_folders(llcm_root):
    ds = LLCM(llcm_root)
    assert ds.protocols == ["llcm-v2i", "llcm-i2v", "llcm-v2i-deen"]
    assert sorted({r.pid for r in ds.train}) == [1, 2, 3, 4]
    assert sorted({r.pid for r in ds.test}) == [5, 6, 7]
    assert len(ds.train) == 4 * (9 + 8)
    assert len(ds.test) == 3 * (9 + 8)
    assert ds.declared_ids["test"].ids == (5, 6, 7)


def test_llcm_cameras_are_shared_across_modalities(llcm_root):
    ds = LLCM(llcm_root)
    vis = {r.cam for r in ds.train if r.modality == VISIBLE}
    nir = {r.cam for r in ds.train if r.modality == INFRARED}
    assert vis == set(range(1, 10)) and nir == vis - {3}
    assert {r.cam for r in ds.test if r.modality == INFRARED} == nir


def test_llcm_camera_parsed_from_components_not_text_after_cam():
    assert camera_from_path("nir/0001/0001_c07_s185535_f7010_nir.jpg") == 7
    assert camera_from_path("camera/cam3/0001/0002.jpg") == 3
    assert camera_from_path("scam/0001/x_y.jpg") == 0


def test_llcm_root_containing_cam_is_harmless(tmp_path):
    root = make_llcm_tree(tmp_path / "camera" / "cam5LLCM", train_ids=2, test_ids=2)
    ds = LLCM(root)
    assert {r.cam for r in ds.test} == set(range(1, 10))
    assert {r.pid for r in ds.test} == {3, 4}


def test_llcm_empty_nir_cam3_is_accepted_but_other_empty_cameras_are_not(llcm_root):
    assert (llcm_root / "test_nir" / "cam3").is_dir()
    LLCM(llcm_root)
    shutil.rmtree(llcm_root / "test_nir" / "cam5")
    (llcm_root / "test_nir" / "cam5").mkdir()
    with pytest.raises(
        DatasetError, match=r"(?s)infrared test camera folder .*test_nir/cam5 holds no images"
    ):
        LLCM(llcm_root)


def test_llcm_missing_test_camera_folder_is_an_error(llcm_root):
    shutil.rmtree(llcm_root / "test_vis" / "cam9")
    with pytest.raises(DatasetError, match=r"(?s)test_vis/cam9 does not exist.*README"):
        LLCM(llcm_root)
    assert 9 not in {r.cam for r in LLCM(llcm_root, verify=False).test if r.modality == VISIBLE}


def test_llcm_missing_split_file_shows_layout(llcm_root):
    (llcm_root / "idx" / "test_id.txt").unlink()
    with pytest.raises(DatasetError, match=r"(?s)has no idx/test_id\.txt.*test_nir/cam1"):
        LLCM(llcm_root)


def test_llcm_list_pointing_to_missing_file_is_an_error(llcm_root):
    shutil.rmtree(llcm_root / "nir" / "0002")
    with pytest.raises(DatasetError, match=r"8 image\(s\) listed in .*train_nir\.txt do not"):
        LLCM(llcm_root)


def test_llcm_images_outside_deens_camera_lists_are_left_out_with_a_warning(llcm_root, caplog):
    """DEEN's process_query_llcm/process_gallery_llcm read test_nir/cam1,2,4..9 only: an
    image put into test_nir/cam3 (or a cam10) must not join the query set or the gallery."""
    before = LLCM(llcm_root).test
    pid_dir = next((llcm_root / "test_nir" / "cam1").iterdir())
    for cam in ("cam3", "cam10"):
        (llcm_root / "test_nir" / cam / pid_dir.name).mkdir(parents=True)
        src = next(pid_dir.iterdir())
        shutil.copy(src, llcm_root / "test_nir" / cam / pid_dir.name / src.name)
    with caplog.at_level("WARNING", logger="uvireid.data.llcm"):
        after = LLCM(llcm_root).test
    assert [r.path for r in after] == [r.path for r in before]
    assert "test_nir/cam3 are left out" in caplog.text and "test_nir/cam10" in caplog.text
