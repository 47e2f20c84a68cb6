"""Augmentations against hand computations and torchvision:
normalisation in float64, the channel exchange's three channels, colour jitter without a
hue shift, and the official LTG loop against a per-image loop on the same draws."""

from __future__ import annotations

import pytest
import torch

from uvireid.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LTG_MAX_ROUNDS,
    LTG_STOP,
    Augmenter,
    _rectangles,
    channel_adaptive_gray,
    channel_exchange,
    color_jitter,
    jitter_params,
    ltg,
    normalize,
    pad_crop_flip,
    random_erasing,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_normalize_works_in_each_dtype_with_its_own_constants():
    """float64 images are normalised with float64 constants (not float32 ones rounded at
    1e-8), whichever dtype was normalised before; float32 stays float32."""
    x64 = torch.rand(2, 3, 4, 5, generator=_gen(0), dtype=torch.float64)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)[None, :, None, None]
    want = (x64 - mean) / std
    for first in (torch.float32, torch.float64):
        normalize(x64.to(first))  # fills the constants' cache for that dtype
        got = normalize(x64)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
        got32 = normalize(x64.float())
        assert got32.dtype == torch.float32
        torch.testing.assert_close(got32, want.float(), rtol=0, atol=1e-6)


def test_channel_exchange_copies_each_of_r_g_b_about_a_third_of_the_time():
    """ChannelExchange(gray=2): idx uniform in {0, 1, 2} (salcr_reference.md Sec. 3.4), for
    the function and for the Augmenter's CA view (constant images, no crop, no erasing,
    no jitter: the output is the normalised value of the chosen channel everywhere)."""
    n = 600
    x = torch.tensor([1.0, 2.0, 3.0])[None, :, None, None].expand(n, 3, 2, 2).contiguous()
    chosen = channel_exchange(x, _gen(3))[:, 0, 0, 0]
    counts = [int((chosen == c + 1).sum()) for c in range(3)]
    assert sum(counts) == n and min(counts) > n / 3 - 60, counts

    rgb = torch.tensor([30, 120, 210], dtype=torch.uint8)
    images = rgb[None, :, None, None].expand(n, 3, 4, 2).contiguous()
    aug = Augmenter(pad=0, erasing_p=0.0, jitter=0.0, hue=0.0, seed=4)
    out = aug(images, "visible_ca", "cpu")
    assert torch.equal(out, out[:, :1].expand_as(out))  # one channel in all three
    norm = normalize(rgb.float()[None, :, None, None] / 255.0)[0, :, 0, 0]
    which = (out[:, 0, 0, 0, None] == norm[None]).float()
    assert (which.sum(1) == 1).all()
    per_channel = which.sum(0)
    assert per_channel.min() > n / 3 - 60, per_channel


def test_color_jitter_without_a_hue_shift_still_jitters():
    """ColorJitter(0.5, 0.5, 0.5, 0): brightness, contrast and saturation in the drawn
    order, as torchvision's functionals image by image; a hue shift alone also changes
    the images. The Augmenter's infrared view with hue=0 is that jitter."""
    tf = pytest.importorskip("torchvision.transforms.functional")
    x = torch.rand(12, 3, 8, 4, generator=_gen(5))
    got = color_jitter(x, 0.5, _gen(6), hue=0.0)
    factors, order = jitter_params(12, 0.5, 0.0, _gen(6))
    assert torch.equal(factors[:, 3], torch.zeros(12, dtype=factors.dtype))
    ops = [tf.adjust_brightness, tf.adjust_contrast, tf.adjust_saturation]
    want = []
    for i in range(12):
        y = x[i]
        for op in order[i].tolist():
            if op < 3:
                y = ops[op](y, float(factors[i, op]))
        want.append(y)
    torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=0)
    assert (got - x).abs().amax() > 0.05
    hue_only = color_jitter(x, 0.0, _gen(7), hue=0.3)
    assert (hue_only - x).abs().amax() > 0.05

    images = torch.randint(0, 256, (6, 3, 16, 8), dtype=torch.uint8, generator=_gen(8))
    aug = Augmenter(pad=2, seed=9, jitter=0.5, hue=0.0)
    gen = _gen(9)
    y = pad_crop_flip(images.float() / 255.0, 2, gen)
    y = random_erasing(normalize(color_jitter(y, 0.5, gen, hue=0.0)), 0.5, gen)
    want_ir = channel_adaptive_gray(y, 0.5, gen)
    assert torch.equal(aug(images, "infrared", "cpu"), want_ir)


def _official_ltg_loop(x01: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """salcr_reference.md Sec. 3.4 LinearTransform, one image at a time, fed the draws the
    batched version takes (hit per image; each round one rectangle and one Beta(1/2, 1/2)
    per channel for every image): an image still running rescales, per channel whose patch
    maximum is > 0, the patch so that its maximum is g, multiplies its cumulative gain M,
    and stops once min M <= 1e-6 (a round without a fitting rectangle changes nothing)."""
    b, c, h, w = x01.shape
    hit = (torch.rand(b, generator=gen) < p).tolist()
    out = x01.clone()
    gains = torch.ones_like(x01)
    running = list(hit)
    for _ in range(LTG_MAX_ROUNDS):
        if not any(running):
            break
        rects = _rectangles(b, h, w, gen)
        n = torch.randn(b, c, 2, generator=gen) ** 2
        beta = n[..., 0] / (n.sum(-1) + 1e-12)
        for i in range(b):
            y, xx, rh, rw, ok = rects[i].tolist()
            if not running[i] or not ok:
                continue
            for ch in range(c):
                patch = out[i, ch, y : y + rh, xx : xx + rw]
                top = float(patch.max())
                if top > 0:
                    scale = beta[i, ch] / top
                    out[i, ch, y : y + rh, xx : xx + rw] = patch * scale
                    gains[i, ch, y : y + rh, xx : xx + rw] *= scale
            if float(gains[i].min()) <= LTG_STOP:
                running[i] = False
    return out


def test_official_ltg_equals_a_per_image_loop_that_stops_at_the_first_tiny_gain():
    """ltg(official=True) against the per-image loop on the same draws: images not hit
    untouched, each hit image stopped at the first round its minimum cumulative gain
    reaches 1e-6 (not before, not after), black regions keeping gain 1."""
    x = torch.rand(16, 3, 12, 6, generator=_gen(10)) * 0.9 + 0.05
    x[2, 0, :, :3] = 0.0  # a channel black on its left half
    x[5, :, :6] = 0.0  # an image black on its top half
    # red only, on the left and right columns: a pixel between them is scaled by the
    # patches reaching either side and left alone by those with maximum 0 (gain 1)
    x[8:, 1:] = 0.0
    x[8:, 0, :, 1:5] = 0.0
    got = ltg(x.clone(), 0.7, _gen(11), official=True)
    want = _official_ltg_loop(x, 0.7, _gen(11))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-12)
    hit = (torch.rand(16, generator=_gen(11)) < 0.7).tolist()
    assert 0 < sum(hit) < 16
    for i in range(16):
        assert torch.equal(got[i], x[i]) != hit[i], i


def test_official_ltg_does_not_hold_a_batch_for_an_all_black_image(monkeypatch):
    """An all-black image has no channel to rescale, so its gain never reaches 1e-6: it
    leaves the loop at once, and the batch takes the rounds its other images need (the
    rounds of the same batch with a copy of the first image), not LTG_MAX_ROUNDS; the
    black image comes back black."""
    import uvireid.data.transforms as tf

    rounds = []
    real = tf._ltg_params
    monkeypatch.setattr(tf, "_ltg_params", lambda *a: rounds.append(1) or real(*a))
    a = torch.rand(1, 3, 12, 6, generator=_gen(20)) * 0.9 + 0.05
    ltg(torch.cat([a, a]), 1.0, _gen(21), official=True)
    twice = len(rounds)
    rounds.clear()
    got = ltg(torch.cat([a, torch.zeros_like(a)]), 1.0, _gen(21), official=True)
    assert len(rounds) == twice < LTG_MAX_ROUNDS
    assert torch.equal(got[1], torch.zeros_like(a[0]))
