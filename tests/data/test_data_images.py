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


@pytest.mark.parametrize("ending", [".png", ".tif"])
def test_read_image_stretches_a_16_bit_thermal_image_to_8_bits(tmp_path, ending):
    """Audit F (session 16): Pillow's convert("RGB") clips 16-bit values above 255, so a
    radiometric image (27000..31000) came out flat white, and nothing said so."""
    import numpy as np

    a = np.random.default_rng(0).integers(27000, 31000, (16, 8)).astype(np.uint16)
    path = tmp_path / f"t{ending}"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I;16")
    out = np.asarray(read_image(path))
    assert out.shape == (16, 8, 3) and (out[..., 0] == out[..., 2]).all()
    # the image's own range stretched to 0..255: the oracle, computed here in float64
    lo, hi = a.min(), a.max()
    expected = np.round((a.astype(np.float64) - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    assert (out[..., 0] == expected).all()
    # a 16-bit image whose values already lie in 0..255 keeps them
    small = (a % 200).astype(np.uint16)
    Image.fromarray(small).save(path)
    assert (np.asarray(read_image(path))[..., 1] == small).all()


def test_list_images_reads_tiff_and_webp_and_names_other_image_files(tmp_path, caplog):
    """A folder of .tif crops used to "hold no images"; a .gif among them was dropped
    without a word."""
    import logging

    for name in ["a.tif", "b.TIFF", "c.webp", "d.gif", "e.jpg"]:
        (tmp_path / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        got = list_images(tmp_path)
    assert [p.rsplit("/", 1)[1] for p in got] == ["a.tif", "b.TIFF", "c.webp", "e.jpg"]
    assert "1 image file(s) in" in caplog.text and "d.gif" in caplog.text


def _stretch(a):
    """The documented reduction of a wide image: its own range to 0..255, in float64."""
    import numpy as np

    a = a.astype(np.float64)
    return np.round((a - a.min()) * 255.0 / (a.max() - a.min())).astype(np.uint8)


def test_read_image_stretches_a_32_bit_integer_image(tmp_path):
    """Through Pillow's convert a 32-bit thermal image clips to white (mutation audit BZ)."""
    import numpy as np

    a = np.random.default_rng(1).integers(1000, 40000, (16, 8)).astype(np.int32)
    path = tmp_path / "t.tif"
    Image.fromarray(a, mode="I").save(path)
    assert Image.open(path).mode == "I"
    out = np.asarray(read_image(path))
    assert (out[..., 0] == _stretch(a)).all()


def test_read_image_stretches_a_float_image_in_0_1(tmp_path):
    """A float TIFF normalised to 0..1 (as radiometric exports often are), kept as it is,
    would round to 0 and 1: a black image (mutation audit BZ)."""
    import numpy as np

    a = np.random.default_rng(2).uniform(0.05, 0.95, (16, 8)).astype(np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(a, mode="F").save(path)
    assert Image.open(path).mode == "F"
    out = np.asarray(read_image(path))
    assert (out[..., 0] == _stretch(a)).all()
    assert out.max() == 255 and out.min() == 0


def test_a_16_bit_image_whose_values_reach_255_keeps_them(tmp_path):
    """A wide image already in 0..255 is kept as it is, up to exactly 255 (mutation audit BZ)."""
    import numpy as np

    a = np.random.default_rng(3).integers(20, 256, (16, 8)).astype(np.uint16)
    a[0, 0], a[0, 1] = 20, 255  # lowest 20, highest exactly 255
    path = tmp_path / "s.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I;16")
    out = np.asarray(read_image(path))
    assert (out[..., 0] == a).all()
