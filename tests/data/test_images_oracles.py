"""``read_image`` and ``list_images`` against Pillow and numpy computations done by hand
(uvireid/data/images.py docstrings)."""

from __future__ import annotations

import logging
import os

import numpy as np
from PIL import Image

from uvireid.data.images import list_images, read_image


def _gray(path):
    out = np.asarray(read_image(path))
    assert out.shape[2] == 3 and (out[..., 0] == out[..., 1]).all()
    return out[..., 0]


def test_big_endian_16_bit_tiff_is_stretched_like_little_endian(tmp_path):
    a = np.arange(27000, 27000 + 32 * 37, 37, dtype=np.uint16).reshape(8, 4)
    img = Image.frombytes("I;16B", (4, 8), a.astype(">u2").tobytes())
    img.save(tmp_path / "b.tif")
    assert Image.open(tmp_path / "b.tif").mode == "I;16B"
    lo, hi = float(a.min()), float(a.max())
    want = np.round((a - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    assert (_gray(tmp_path / "b.tif") == want).all()


def test_constant_wide_image_is_black_and_integral_float_image_is_kept(tmp_path):
    Image.fromarray(np.full((8, 4), 1000, np.uint16)).save(tmp_path / "c.png")
    assert (_gray(tmp_path / "c.png") == 0).all()
    f = np.arange(32, dtype=np.float32).reshape(8, 4) * 7  # integers 0..217
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    assert (_gray(tmp_path / "f.tif") == f.astype(np.uint8)).all()


def test_non_finite_float_pixels_take_the_finite_extremes(tmp_path):
    """+inf takes the highest finite value, NaN and -inf the lowest (docstring of _to_8bit)."""
    f = np.linspace(500.0, 1500.0, 32).reshape(8, 4).astype(np.float32)
    f[0, 0], f[0, 1], f[0, 2] = np.inf, np.nan, -np.inf
    Image.fromarray(f, mode="F").save(tmp_path / "n.tif")
    fixed = f.astype(np.float64)
    finite = fixed[np.isfinite(fixed)]
    fixed[0, 0], fixed[0, 1], fixed[0, 2] = finite.max(), finite.min(), finite.min()
    want = np.round((fixed - fixed.min()) * 255.0 / (fixed.max() - fixed.min()))
    assert (_gray(tmp_path / "n.tif") == want.astype(np.uint8)).all()
    Image.fromarray(np.full((8, 4), np.inf, np.float32), mode="F").save(tmp_path / "i.tif")
    assert (_gray(tmp_path / "i.tif") == 0).all()  # no finite value: an all-zero image


def test_rgba_and_la_images_come_back_rgb_as_pillow_converts_them(tmp_path):
    rgba = Image.new("RGBA", (4, 8), (10, 20, 30, 0))
    rgba.save(tmp_path / "x.png")
    got = read_image(tmp_path / "x.png")
    assert got.mode == "RGB" and (np.asarray(got) == np.asarray(rgba.convert("RGB"))).all()
    Image.new("LA", (4, 8), (77, 0)).save(tmp_path / "la.png")
    assert (_gray(tmp_path / "la.png") == 77).all()


def test_recursive_listing_skips_hidden_files_and_folders(tmp_path):
    for rel in ("a/1.jpg", "a/.2.jpg", ".b/3.jpg", "c/.d/4.jpg", "c/5.PNG"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    want = sorted(str(tmp_path / rel) for rel in ("a/1.jpg", "c/5.PNG"))
    assert list_images(tmp_path, recursive=True) == want


def test_uppercase_unread_endings_are_named_and_a_dangling_link_is_listed(tmp_path, caplog):
    (tmp_path / "a.GIF").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"")
    os.symlink(tmp_path / "missing.jpg", tmp_path / "c.jpg")
    with caplog.at_level(logging.WARNING):
        got = list_images(tmp_path)
    assert got == [str(tmp_path / "b.jpg"), str(tmp_path / "c.jpg")]
    assert "a.GIF" in caplog.text


def test_a_linked_folder_is_listed_once_when_following_links(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.jpg").write_bytes(b"")
    os.symlink(tmp_path / "a", tmp_path / "b")
    got = list_images(tmp_path, recursive=True, follow_links=True)
    assert [os.path.basename(p) for p in got] == ["1.jpg"]


def test_a_header_claiming_a_huge_size_is_a_dataset_error_naming_the_file(tmp_path):
    """A corrupt PNG header (20000 x 20000) makes Pillow raise DecompressionBombError (a
    bare Exception subclass): a DatasetError naming the file, as for any unreadable one."""
    import struct
    import zlib

    import pytest

    from uvireid.errors import DatasetError

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(png)
    with pytest.raises(DatasetError, match=r"bomb\.png"):
        read_image(tmp_path / "bomb.png")
