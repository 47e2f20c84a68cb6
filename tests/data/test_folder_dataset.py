from __future__ import annotations

import random

import pytest

from uvireid.data import FolderDataset
from uvireid.data.fixtures import make_folder_tree, write_image
from uvireid.errors import DatasetError
from uvireid.registry import DATASETS
from uvireid.types import INFRARED, VISIBLE


def test_folder_cameras_numbered_jointly_in_natural_order(tmp_path):
    root = make_folder_tree(tmp_path / "d", {"cam10": 1, "cam2": 1}, {"cam2": 1, "ir": 1})
    ds = FolderDataset(root)
    assert ds.camera_names == {1: "cam2", 2: "cam10", 3: "ir"}
    cams = {(r.modality, r.cam) for r in ds.train}
    assert cams == {(VISIBLE, 1), (VISIBLE, 2), (INFRARED, 1), (INFRARED, 3)}
    assert all(r.pid == -1 for r in ds.train)
    assert ds.test == [] and ds.protocols == []


def test_folder_reads_images_at_any_depth_below_the_camera(folder_root):
    write_image(folder_root / "visible" / "cam1" / "day2" / "x.jpg", random.Random(0))
    ds = DATASETS.build({"type": "folder", "root": str(folder_root)})
    assert len(ds.train) == 9
    assert ds.stats()["train"]["ids"] == 0


def test_folder_with_ids_reads_identity_level(tmp_path):
    rng = random.Random(0)
    for mod, cam, pid in [("visible", "a", 7), ("infrared", "b", 7), ("infrared", "b", 9)]:
        write_image(tmp_path / mod / cam / str(pid) / "0.png", rng)
    ds = FolderDataset(tmp_path, with_ids=True)
    assert sorted((r.modality, r.cam, r.pid) for r in ds.train) == [
        (VISIBLE, 1, 7),
        (INFRARED, 2, 7),
        (INFRARED, 2, 9),
    ]


@pytest.mark.parametrize("name", ["alice", "²", "-3"])
def test_folder_with_ids_rejects_non_integer_identity_folder(tmp_path, name):
    write_image(tmp_path / "visible" / "cam1" / name / "0.png", random.Random(0))
    write_image(tmp_path / "infrared" / "cam1" / "1" / "0.png", random.Random(0))
    with pytest.raises(DatasetError, match=rf"identity folder .*cam1/{name} is not an integer"):
        FolderDataset(tmp_path, with_ids=True)


def test_folder_with_ids_rejects_images_directly_in_camera_folder(folder_root):
    with pytest.raises(DatasetError, match=r"cam1 holds images directly .*with_ids=True expects"):
        FolderDataset(folder_root, with_ids=True)


def test_empty_folder_dataset_is_an_error(tmp_path):
    (tmp_path / "visible" / "cam1").mkdir(parents=True)
    (tmp_path / "infrared" / "cam1").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"(?s)has no visible images.*README"):
        FolderDataset(tmp_path)


def test_folder_without_infrared_folder_is_an_error(tmp_path):
    make_folder_tree(tmp_path, infrared={})
    (tmp_path / "infrared").rmdir()
    with pytest.raises(DatasetError, match=r"has no infrared/ folder"):
        FolderDataset(tmp_path)


def test_folder_images_outside_camera_folders_are_an_error(folder_root):
    write_image(folder_root / "infrared" / "loose.jpg", random.Random(0))
    with pytest.raises(DatasetError, match=r"holds images directly .*loose\.jpg"):
        FolderDataset(folder_root)
