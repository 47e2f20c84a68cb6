"""Decoded-image cache and batched augmentations."""

from __future__ import annotations

import numpy as np
import torch

from uvireid.data.transforms import (
    ERASE_FILL,
    Augmenter,
    channel_adaptive_gray,
    channel_exchange,
    load_images,
    normalize,
    random_erasing,
)
from uvireid.types import ImageRecord


def _records(tmp_path, n=4):
    from PIL import Image

    recs = []
    for i in range(n):
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(np.full((20, 10, 3), 40 * i, np.uint8)).save(p)
        recs.append(ImageRecord(str(p), i, 1, 0))
    return recs


def test_load_images_decodes_resizes_and_caches(tmp_path):
    recs = _records(tmp_path)
    imgs, ok = load_images(recs, 8, 4, cache_dir=tmp_path / "cache")
    assert imgs.shape == (4, 3, 8, 4) and imgs.dtype == torch.uint8 and ok.all()
    assert abs(int(imgs[2].float().mean()) - 80) <= 2
    assert len(list((tmp_path / "cache").glob("images-*.npy"))) == 2
    again, _ = load_images(recs, 8, 4, cache_dir=tmp_path / "cache")
    assert torch.equal(imgs, again)


def test_unreadable_images_are_skipped_and_flagged(tmp_path, caplog):
    recs = _records(tmp_path)
    open(recs[1].path, "wb").write(b"not a jpeg")
    imgs, ok = load_images(recs, 8, 4)
    assert ok.tolist() == [True, False, True, True]
    assert "could not be read and are skipped" in caplog.text


def test_channel_exchange_copies_one_channel():
    x = torch.randn(6, 3, 4, 2)
    out = channel_exchange(x, torch.Generator().manual_seed(0))
    for i in range(6):
        assert any(torch.equal(out[i, 0], x[i, c]) for c in range(3))
        assert torch.equal(out[i, 0], out[i, 1]) and torch.equal(out[i, 1], out[i, 2])


def test_channel_adaptive_gray_replicates_a_channel_or_luminance_or_keeps():
    x = torch.randn(40, 3, 2, 2)
    out = channel_adaptive_gray(x, 0.5, torch.Generator().manual_seed(0))
    kinds = set()
    for i in range(40):
        if torch.equal(out[i], x[i]):
            kinds.add("same")
        elif any(torch.equal(out[i, 0], x[i, c]) for c in range(3)):
            kinds.add("channel")
        else:
            lum = 0.2989 * x[i, 0] + 0.587 * x[i, 1] + 0.114 * x[i, 2]
            assert torch.allclose(out[i, 0], lum)
            kinds.add("gray")
    assert kinds == {"same", "channel", "gray"}


def test_random_erasing_fills_a_rectangle_with_the_fill_values():
    x = torch.zeros(1, 3, 16, 8)
    out = random_erasing(x, 1.0, torch.Generator().manual_seed(1))
    changed = (out != 0).any(0)
    assert changed.any()
    for c in range(3):
        vals = out[0, c][changed[c]]
        assert torch.allclose(vals, torch.full_like(vals, ERASE_FILL[c]))


def test_augmenter_is_seeded_and_its_state_round_trips():
    imgs = torch.randint(0, 256, (4, 3, 16, 8), dtype=torch.uint8)
    a, b = Augmenter(pad=2, seed=3, ltg_p=0.5), Augmenter(pad=2, seed=3, ltg_p=0.5)
    for kind in ("visible", "visible_ca", "infrared"):
        assert torch.equal(a(imgs, kind, "cpu"), b(imgs, kind, "cpu"))
    state = a.state_dict()
    first = a(imgs, "infrared", "cpu")
    a.load_state_dict(state)
    assert torch.equal(a(imgs, "infrared", "cpu"), first)
    assert torch.allclose(a(imgs, "test", "cpu"), normalize(imgs.float() / 255))
