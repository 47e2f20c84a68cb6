"""Decoded-image cache and batched augmentations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from uvireid.data.transforms import (
    ERASE_FILL,
    Augmenter,
    _rectangles,
    apply_jitter,
    channel_adaptive_gray,
    channel_exchange,
    color_jitter,
    hsv_to_rgb,
    jitter_params,
    load_images,
    ltg,
    normalize,
    pad_crop_flip,
    random_erasing,
    rgb_to_hsv,
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


def test_a_cache_that_cannot_be_written_leaves_the_images_in_memory(tmp_path, caplog):
    """A read-only or impossible cache folder (here under a file) is a warning: the
    decoded images are used as they are, not lost to an OSError."""
    recs = _records(tmp_path)
    (tmp_path / "afile").write_text("x")
    imgs, ok = load_images(recs, 8, 4, cache_dir=tmp_path / "afile" / "cache")
    want, _ = load_images(recs, 8, 4)
    assert torch.equal(imgs, want) and ok.all()
    assert "cannot be written" in caplog.text and "decoded in memory" in caplog.text


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


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pad_crop_flip_gives_a_window_of_the_padded_image_per_image():
    """Each output is one (H, W) window of its zero-padded image, flipped or not, with
    offsets and flips that vary over the batch (checked by searching every window)."""
    torch.manual_seed(0)
    x = torch.rand(24, 3, 10, 6)
    pad = 2
    out = pad_crop_flip(x, pad, _gen(4))
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    seen = set()
    for i in range(len(x)):
        found = [
            (oy, ox, flip)
            for oy in range(2 * pad + 1)
            for ox in range(2 * pad + 1)
            for flip in (False, True)
            if torch.equal(
                out[i],
                (lambda win: win.flip(2) if flip else win)(xp[i, :, oy : oy + 10, ox : ox + 6]),
            )
        ]
        assert found, i
        seen.add(found[0])
    assert len(seen) > 10


def test_rectangles_follow_the_erasing_distribution():
    r = _rectangles(4000, 32, 16, _gen(0))
    y, x, rh, rw, found = r.T
    assert found.all()  # at 32 x 16 some draw always fits
    assert ((rh > 0) & (rh < 32) & (rw > 0) & (rw < 16)).all()
    assert ((y >= 0) & (y + rh <= 32) & (x >= 0) & (x + rw <= 16)).all()
    frac = (rh * rw).double() / (32 * 16)
    assert 0.01 < float(frac.min()) and float(frac.max()) < 0.5
    assert 0.15 < float(frac.mean()) < 0.25  # uniform 2-40 %, less the draws that do not fit
    # every offset can be drawn: the top-left corner and the far edge both occur
    assert (y == 0).any() and (y + rh == 32).any() and (x == 0).any() and (x + rw == 16).any()


def test_random_erasing_and_ltg_equal_their_per_image_loops():
    """The batched versions against the reference's loop over images, fed the same draws."""
    torch.manual_seed(1)
    x = torch.rand(40, 3, 16, 8)
    x[3] = 0  # an all-zero patch keeps its scale 1 in LTG
    p = 0.6
    out_e = random_erasing(x, p, _gen(7))
    g = _gen(7)
    hit = (torch.rand(40, generator=g) < p).tolist()
    rects = _rectangles(40, 16, 8, g)
    ref = x.clone()
    for i in range(40):
        y, xx, rh, rw, ok = rects[i].tolist()
        if hit[i] and ok:
            for c in range(3):
                ref[i, c, y : y + rh, xx : xx + rw] = ERASE_FILL[c]
    assert torch.equal(out_e, ref)
    assert 10 < sum(hit) < 35

    out_l = ltg(x, p, _gen(9))
    g = _gen(9)
    hit = (torch.rand(40, generator=g) < p).tolist()
    rects = _rectangles(40, 16, 8, g)
    n = torch.randn(40, 3, 2, generator=g) ** 2
    beta = n[..., 0] / (n.sum(-1) + 1e-12)
    ref = x.clone()
    for i in range(40):
        y, xx, rh, rw, ok = rects[i].tolist()
        if hit[i] and ok:
            for c in range(3):
                patch = x[i, c, y : y + rh, xx : xx + rw]
                if float(patch.max()) > 0:
                    ref[i, c, y : y + rh, xx : xx + rw] = patch * (beta[i, c] / patch.max())
    torch.testing.assert_close(out_l, ref, rtol=1e-6, atol=1e-7)
    changed = [i for i in range(40) if not torch.equal(out_l[i], x[i])]
    assert changed and 3 not in changed


def test_color_jitter_equals_torchvision_per_image_in_its_drawn_order():
    """Brightness, contrast, saturation and hue, each image in its own random order, as
    torchvision's tensor functionals applied one image at a time (the reference's
    ``ColorJitter(0.5, 0.5, 0.5, 0.5)``)."""
    tf = pytest.importorskip("torchvision.transforms.functional")
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(24, 3, 12, 6, generator=gen)
    x[0, :, :5] = 0.4  # gray pixels: hue and saturation 0
    x[1, :, 2:6] = 0.0  # black
    x[2, 0], x[2, 1] = x[2, 2], x[2, 2]  # a gray image
    factors, order = jitter_params(24, 0.5, 0.5, gen)
    assert sorted(order[5].tolist()) == [0, 1, 2, 3]
    assert len({tuple(o) for o in order.tolist()}) > 5  # orders differ between images
    assert factors[:, :3].min() >= 0.5 and factors[:, :3].max() <= 1.5
    assert factors[:, 3].abs().max() <= 0.5
    # strength > 1: uniform on [0, 1 + s] (torchvision), no mass at exactly 0
    wide, _ = jitter_params(4000, 1.5, 0.0, torch.Generator().manual_seed(1))
    assert (wide[:, :3] > 0).all() and wide[:, :3].max() <= 2.5
    assert abs(float((wide[:, :3] < 1.25).double().mean()) - 0.5) < 0.03
    ops = [tf.adjust_brightness, tf.adjust_contrast, tf.adjust_saturation, tf.adjust_hue]
    want = []
    for i in range(24):
        y = x[i]
        for op in order[i].tolist():
            y = ops[op](y, float(factors[i, op]))
        want.append(y)
    got = apply_jitter(x, factors, order)
    torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=0)
    # color_jitter draws exactly these from the generator
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    f2, o2 = jitter_params(24, 0.5, 0.5, g2)
    torch.testing.assert_close(color_jitter(x, 0.5, g1, hue=0.5), apply_jitter(x, f2, o2))


def test_hsv_round_trip_and_pure_colours():
    x = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.5, 0.5, 0.5]])
    hsv = rgb_to_hsv(x.T.reshape(1, 3, 5, 1)).reshape(3, 5).T
    torch.testing.assert_close(hsv[:, 0], torch.tensor([0.0, 1 / 3, 2 / 3, 1 / 6, 0.0]))
    torch.testing.assert_close(hsv[:, 1], torch.tensor([1.0, 1, 1, 1, 0]))
    gen = torch.Generator().manual_seed(0)
    y = torch.rand(4, 3, 9, 9, generator=gen)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(y)), y, atol=2e-6, rtol=0)
    # a half-turn hue shift of pure red is cyan
    red = torch.tensor([1.0, 0, 0]).reshape(1, 3, 1, 1)
    cyan = apply_jitter(red, torch.tensor([[1.0, 1, 1, 0.5]]), torch.tensor([[3, 0, 1, 2]]))
    torch.testing.assert_close(cyan.flatten(), torch.tensor([0.0, 1, 1]))


def test_jitter_views_choose_which_pipelines_are_jittered():
    """A view outside jitter_views is exactly the un-jittered pipeline (no draw), a view in
    it is jittered (PGM's stage 2 jitters only the CA view)."""
    images = torch.randint(
        0, 256, (4, 3, 16, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    only_ca = Augmenter(jitter=0.5, hue=0.5, seed=3, jitter_views=("visible_ca",))
    plain = Augmenter(jitter=0.0, hue=0.0, seed=3)
    both = Augmenter(jitter=0.5, hue=0.5, seed=3)
    assert torch.equal(only_ca(images, "infrared", "cpu"), plain(images, "infrared", "cpu"))
    assert not torch.equal(both(images, "infrared", "cpu"), only_ca(images, "infrared", "cpu"))
    a = Augmenter(jitter=0.5, hue=0.5, seed=4, jitter_views=("visible_ca",))
    b = Augmenter(jitter=0.0, hue=0.0, seed=4)
    assert not torch.equal(a(images, "visible_ca", "cpu"), b(images, "visible_ca", "cpu"))


def test_official_ltg_repeats_rescalings_until_a_pixel_gain_is_tiny():
    """train.ltg_official: the SALCR code's LinearTransform rescales overlapping patches
    until the cumulative gain of some pixel is <= 1e-6; the paper's LTG rescales one patch
    (a channel's output / input then takes at most two values: 1 and its scale)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 24, 12, generator=gen) * 0.9 + 0.05  # every pixel > 0
    out = ltg(x.clone(), 1.0, torch.Generator().manual_seed(1), official=True)
    gain = (out / x).flatten(1)
    assert (gain.amin(1) <= 1e-6 * 1.0001).all()  # each image stopped at the rule
    distinct = [len(torch.unique((out / x)[i, 0].round(decimals=6))) for i in range(12)]
    assert sum(d > 2 for d in distinct) >= 10  # several overlapping patches
    one = ltg(x.clone(), 1.0, torch.Generator().manual_seed(1))
    assert all(len(torch.unique((one / x)[i, 0].round(decimals=6))) <= 2 for i in range(12))
    assert torch.equal(ltg(x, 0.0, gen, official=True), x)


def _chain(images, kind, seed, pad=2, ltg_p=0.0, official=False):
    """The documented pipelines written out with the public functions and one generator
    (the module docstring's order), for the Augmenter's draw/apply split to equal."""
    gen = _gen(seed)
    x = pad_crop_flip(images.float() / 255.0, pad, gen)
    if kind == "visible":
        x = ltg(x, ltg_p, gen, official)
    else:
        x = color_jitter(x, 0.5, gen, hue=0.5)
    x = random_erasing(normalize(x), 0.5, gen)
    if kind == "visible_ca":
        x = channel_exchange(x, gen)
    elif kind == "infrared":
        x = channel_adaptive_gray(x, 0.5, gen)
    return x


@pytest.mark.parametrize("ltg_p, official", [(0.0, False), (0.7, False), (0.7, True)])
def test_augmenter_draws_and_applies_the_documented_pipelines(ltg_p, official):
    """Augmenter.draw (the host's draws) + Augmenter.apply (the arithmetic, what a CUDA
    graph replays) give, bit for bit, the pipelines composed of the public augmentations
    with one generator; ``cuda_graphs`` on the CPU changes nothing."""
    images = torch.randint(0, 256, (9, 3, 16, 8), dtype=torch.uint8, generator=_gen(0))
    for kind in ("visible", "visible_ca", "infrared"):
        want = _chain(images, kind, 5, ltg_p=ltg_p, official=official)
        for graphs in (False, True):
            aug = Augmenter(pad=2, seed=5, ltg_p=ltg_p, ltg_official=official, cuda_graphs=graphs)
            assert torch.equal(aug(images, kind, "cpu"), want), (kind, graphs)
        if not (official and kind == "visible"):  # the official loop has no draw/apply split
            aug = Augmenter(pad=2, seed=5, ltg_p=ltg_p)
            assert torch.equal(aug.apply(images, kind, aug.draw(kind, images.shape)), want)


def _grouped_jitter(x01, factors, order):
    """The jitter written the direct way: at each of the four steps, the images of each
    operation gathered and that operation computed on them alone (as torchvision's
    functionals would, image by image)."""
    x = x01.clone()
    for step in range(4):
        for op in range(4):
            rows = (order[:, step] == op).nonzero().squeeze(1)
            xi, fi = x[rows], factors[rows, op].to(x.dtype)[:, None, None, None]
            if op == 0:
                out = xi * fi
            elif op == 1:
                out = fi * xi + (1 - fi) * (
                    0.2989 * xi[:, 0] + 0.587 * xi[:, 1] + 0.114 * xi[:, 2]
                )[:, None].mean((2, 3), keepdim=True)
            elif op == 2:
                out = (
                    fi * xi
                    + (1 - fi) * (0.2989 * xi[:, 0] + 0.587 * xi[:, 1] + 0.114 * xi[:, 2])[:, None]
                )
            else:
                hsv = rgb_to_hsv(xi)
                hsv[:, 0] = (hsv[:, 0] + fi[:, 0]) % 1.0
                out = hsv_to_rgb(hsv)
            x[rows] = out.clamp(0, 1)
    return x


def test_whole_batch_jitter_equals_the_grouped_one_bit_for_bit():
    """apply_jitter (every step over the whole batch, one hue rotation) against the jitter
    computed operation group by operation group, on images with gray, black and saturated
    pixels and every order of the four operations."""
    gen = _gen(11)
    x = torch.rand(96, 3, 10, 6, generator=gen)
    x[0, :, :4] = 0.4
    x[1, :, 2:6] = 0.0
    x[2] = 1.0
    factors, _ = jitter_params(96, 0.9, 0.5, gen)
    order = torch.tensor(list(itertools.permutations(range(4))) * 4)  # every order, 4 times
    grouped = _grouped_jitter(x, factors, order)
    assert torch.equal(apply_jitter(x, factors, order), grouped)
    assert not torch.equal(grouped, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_augmentation_replayed_as_cuda_graphs_equals_the_eager_one():
    """Augmenter.cuda_graphs on CUDA: each view captured once, replayed with new images
    and new draws, equals the eager CUDA pipeline of the same seed (and the CPU's within
    float rounding); the official LTG loop stays eager. (The H200 run of 2026-11-27
    measured 3.5e-6 between graph and eager, when the eager jitter still gathered each
    operation's images: CUDA summed the contrast's means over a group and over the batch
    in another order. Both now take the same whole-batch kernels.)"""
    gen = _gen(0)
    graphed = Augmenter(pad=3, seed=7, ltg_p=0.5, cuda_graphs=True)
    eager = Augmenter(pad=3, seed=7, ltg_p=0.5)
    cpu = Augmenter(pad=3, seed=7, ltg_p=0.5)
    for _ in range(3):
        images = torch.randint(0, 256, (12, 3, 32, 16), dtype=torch.uint8, generator=gen)
        for kind in ("visible", "visible_ca", "infrared"):
            got = graphed(images.cuda(), kind, "cuda")
            assert graphed.graph_failed is None, graphed.graph_failed
            torch.testing.assert_close(got, eager(images.cuda(), kind, "cuda"), atol=1e-5, rtol=0)
            torch.testing.assert_close(got.cpu(), cpu(images, kind, "cpu"), atol=1e-4, rtol=0)
    assert len(graphed._graphs) == 3
    # another batch shape (the next stage's) replaces the view's graph
    small = torch.randint(0, 256, (8, 3, 32, 16), dtype=torch.uint8, generator=gen)
    got = graphed(small.cuda(), "infrared", "cuda")
    torch.testing.assert_close(got, eager(small.cuda(), "infrared", "cuda"), atol=1e-5, rtol=0)
    assert len(graphed._graphs) == 3 and graphed._graphs["infrared"][0][0] == (8, 3, 32, 16)
    official = Augmenter(pad=3, seed=7, ltg_p=0.5, ltg_official=True, cuda_graphs=True)
    official(images.cuda(), "visible", "cuda")
    assert not official._graphs


def test_augmenter_leaves_its_input_batch_as_it_was():
    images = torch.randint(0, 256, (4, 3, 16, 8), generator=_gen(2)).float()
    keep = images.clone()
    aug = Augmenter(pad=2, seed=1)
    for kind in ("test", "visible", "visible_ca", "infrared"):
        aug(images, kind, "cpu")
        assert torch.equal(images, keep), kind


def test_the_augmenter_refuses_what_it_would_do_wrong():
    """From the audit: ``jitter_views=("visible",)`` jittered nothing, float images were
    divided by 255 again (near black), a one-channel batch failed deep inside, and
    ``pad=-1`` / ``erasing_p=2`` / ``seed=None`` went through or gave a bare TypeError."""
    from uvireid.data.transforms import Augmenter
    from uvireid.errors import ConfigError

    for kw, said in (
        ({"jitter_views": ("visible",)}, r"jitter_views \['visible'\] cannot be jittered"),
        ({"pad": -1}, r"pad must be an integer >= 0"),
        ({"erasing_p": 2}, r"erasing_p must be a probability"),
        ({"seed": None}, r"seed must be an integer >= 0"),
    ):
        with pytest.raises(ConfigError, match=said):
            Augmenter(**kw)
    aug = Augmenter(seed=1)
    x = torch.randint(0, 256, (2, 3, 16, 8), dtype=torch.uint8)
    assert aug(x, "visible", "cpu").shape == (2, 3, 16, 8)
    assert torch.equal(aug(x.float(), "test", "cpu"), aug(x, "test", "cpu"))  # 0..255 floats
    with pytest.raises(ConfigError, match=r"float images lie in \[0, 1\]"):
        aug(x.float() / 255, "visible", "cpu")
    black = torch.zeros(2, 3, 16, 8)  # black on both scales: normalised as the uint8 zeros
    assert torch.equal(aug(black, "test", "cpu"), aug(black.to(torch.uint8), "test", "cpu"))
    with pytest.raises(ConfigError, match="hold negative values .*normalised already"):
        aug(torch.full((2, 3, 16, 8), -1.5), "test", "cpu")  # normalised dark images
    with pytest.raises(ConfigError, match=r"expected \(B, 3, H, W\) images"):
        aug(x[:, :1], "infrared", "cpu")


def test_a_decode_that_cannot_fit_in_memory_stops_before_reading_an_image(monkeypatch, tmp_path):
    """Audit Y (session 17): the decoded images (4.0 GiB for SYSU-MM01's training set)
    were never checked against the free memory: a small host was killed part way."""
    from uvireid.data import images
    from uvireid.data import transforms as T
    from uvireid.errors import ConfigError
    from uvireid.rerank import inputs
    from uvireid.types import ImageRecord

    reads = []
    monkeypatch.setattr(images, "read_image", lambda p: reads.append(p))
    monkeypatch.setattr(inputs, "available_memory", lambda device: 2**20)
    recs = [ImageRecord(str(tmp_path / f"{i}.jpg"), 0, 0, 0) for i in range(100)]
    with pytest.raises(ConfigError, match=r"decoding 100 images at 288 x 144 .* needs about"):
        T.load_images(recs, 288, 144)
    assert reads == []


def test_the_image_cache_removes_what_killed_writers_left_and_dates_entries_by_use(tmp_path):
    """Audit Z (session 17): a run killed while writing the shared image cache left its
    temporary (SYSU-MM01: 4 GiB) there for good; a hit now also dates its entry, so
    unused entries can be pruned by time."""
    import os
    import time

    from PIL import Image

    from uvireid.data.transforms import load_images

    recs = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((16, 8, 3), 40 * i, np.uint8)).save(path)
        recs.append(ImageRecord(str(path), i, 1, 0))
    cache = tmp_path / "cache"
    cache.mkdir()
    old, live = cache / ".images-0123.npy.abc.tmp", cache / ".images-4567.npy.def.tmp"
    for f in (old, live):
        f.write_bytes(b"x" * 1024)
    week = time.time() - 7 * 86400
    os.utime(old, (week, week))  # a writer killed a week ago; `live` is being written
    load_images(recs, 8, 4, cache_dir=cache)
    assert not old.exists() and live.exists()
    entry = next(cache.glob("images-*[0-9a-f].npy"))
    os.utime(entry, (week, week))
    load_images(recs, 8, 4, cache_dir=cache)  # a hit
    assert time.time() - entry.stat().st_mtime < 3600


def test_the_resize_filter_is_pils_and_part_of_the_cache_key(tmp_path):
    """Audit S (session 17): PGM resizes bicubically (and its test images with LANCZOS);
    every image was decoded bilinearly. The bilinear cache keeps its earlier key."""
    from PIL import Image

    from uvireid.data.transforms import _cache_key, load_images
    from uvireid.errors import ConfigError

    rng = np.random.default_rng(0)
    path = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)).save(path)
    recs = [ImageRecord(str(path), 0, 1, 0)]
    got = {}
    for name, pil in (
        ("bilinear", Image.Resampling.BILINEAR),
        ("bicubic", Image.Resampling.BICUBIC),
        ("lanczos", Image.Resampling.LANCZOS),
    ):
        want = np.asarray(Image.open(path).convert("RGB").resize((8, 16), pil)).transpose(2, 0, 1)
        for cache in (None, tmp_path / "cache"):
            imgs, ok = load_images(recs, 16, 8, cache_dir=cache, resize=name)
            assert ok.all() and np.array_equal(imgs[0].numpy(), want), (name, cache)
        got[name] = want
    assert not np.array_equal(got["bilinear"], got["bicubic"])
    keys = {name: _cache_key(recs, 16, 8, name) for name in got}
    assert len(set(keys.values())) == 3 and keys["bilinear"] == _cache_key(recs, 16, 8)
    assert len(list((tmp_path / "cache").glob("images-*[0-9a-f].npy"))) == 3
    with pytest.raises(ConfigError, match="resize must be one of bilinear, bicubic, lanczos"):
        load_images(recs, 16, 8, resize="nearest")


def test_normalize_matches_torchvision_imagenet_normalisation():
    """Checked only against itself before: a wrong constant or channel order would feed
    every ImageNet-pretrained backbone misscaled input (mutation audit BZ)."""
    from torchvision.transforms import Normalize

    from uvireid.data.transforms import normalize

    x = torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    ref = Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    expected = torch.stack([ref(img) for img in x])
    assert torch.allclose(normalize(x), expected, atol=1e-6)


def test_pad_crop_reaches_every_offset_including_the_last():
    """torchvision's RandomCrop(size, padding=pad), which the peers use, draws the corner
    uniformly in 0..2*pad inclusive: the window flush with the padded image's bottom and
    right edges too (mutation audit BZ)."""
    from uvireid.data.transforms import pad_crop_flip

    pad, h, w = 2, 6, 4
    x = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w) + 1
    x = x.expand(400, 1, h, w).contiguous()
    out = pad_crop_flip(x, pad, torch.Generator().manual_seed(0), flip_p=0.0)
    xp = torch.nn.functional.pad(x[:1], (pad, pad, pad, pad))[0]
    seen = set()
    for o in out:
        hit = [
            (oy, ox)
            for oy in range(2 * pad + 1)
            for ox in range(2 * pad + 1)
            if torch.equal(o, xp[:, oy : oy + h, ox : ox + w])
        ]
        assert len(hit) == 1
        seen.add(hit[0])
    assert seen == {(oy, ox) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)}
