from __future__ import annotations

import random

import pytest
from PIL import Image

from uvireid.data.fixtures import write_image
from uvireid.data.images import list_images, read_image
from uvireid.errors import DatasetError


def test_read_image_converts_single_channel_infrared_to_rgb(tmp_path):
    path = tmp_path / "ir.jpg"
    write_image(path, random.Random(0), gray=True)
    img = read_image(path)
    assert img.mode == "RGB"
    assert img.size == (4, 8)


def test_read_image_names_a_corrupt_file(tmp_path):
    path = tmp_path / "cam1" / "0001" / "0001.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DatasetError, match=r"cannot read image .*cam1/0001/0001\.jpg.*README"):
        read_image(path)


def test_read_image_names_a_truncated_file(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DatasetError, match="big.png"):
        read_image(path)


def test_read_image_names_a_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nothere\.jpg does not exist"):
        read_image(tmp_path / "nothere.jpg")


def test_list_images_sorts_full_paths_and_skips_non_images(tmp_path):
    for name in ["0010.jpg", "0002.JPG", "0001.png", "notes.txt", ".hidden.jpg"]:
        (tmp_path / name).write_bytes(b"")
    got = list_images(tmp_path)
    assert [p.rsplit("/", 1)[1] for p in got] == ["0001.png", "0002.JPG", "0010.jpg"]
    assert all(p.startswith(str(tmp_path)) for p in got)
    assert list_images(tmp_path / "absent") == []
