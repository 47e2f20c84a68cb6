"""``train.image_cache: ~/folder`` is the folder in $HOME, where the preflight checks it
and where the run writes its decoded-image cache (not a folder named '~' under the
current one), as output_dir, data.root and perm_file are."""

from __future__ import annotations

import numpy as np
from PIL import Image

from uvireid.config import load_recipe
from uvireid.data.transforms import load_images
from uvireid.engine.runner import preflight
from uvireid.engine.trainer import image_cache_dir
from uvireid.types import ImageRecord


def test_an_image_cache_under_the_home_folder_is_written_where_the_preflight_checked(
    tmp_path, monkeypatch
):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    cfg = load_recipe("demo", ["train.image_cache=~/img_cache", f"output_dir={tmp_path / 'runs'}"])
    preflight(cfg)  # checks $HOME (writable): passes
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(img)
    load_images(
        [ImageRecord(str(img), 0, 1, 0)], 8, 4, cache_dir=image_cache_dir(cfg["train"]), quiet=True
    )
    assert not (work / "~").exists(), "the run made a folder named '~' in the current folder"
    assert list((home / "img_cache").glob("images-*.npy")), "no cache in ~/img_cache"
