"""Edges of the augmentations (audit GD, session 24: a mutation test of the data
parts; these tests killed its surviving mutants): gray probabilities, erasing rectangles,
images no rectangle fits, the jitter ranges."""

from __future__ import annotations

import math

import torch

from uvireid.data.transforms import _rectangles, channel_adaptive_gray, ltg, random_erasing


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _kind(out: torch.Tensor, x: torch.Tensor) -> str:
    if torch.equal(out, x):
        return "same"
    if torch.equal(out[0], out[1]) and any(torch.equal(out[0], x[c]) for c in range(3)):
        return "channel"
    lum = 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    assert torch.allclose(out[0], lum) and torch.equal(out[0], out[2])
    return "gray"


def test_channel_adaptive_gray_probability_is_that_of_the_luminance():
    """salcr_reference.md Sec. 3.4 ChannelAdapGray(p): idx uniform in {0..3}; for 3, with
    probability p the luminance, else unchanged. p=1: never unchanged; p=0: never gray."""
    x = torch.randn(200, 3, 2, 2, generator=_gen(0))
    always = channel_adaptive_gray(x, 1.0, _gen(1))
    never = channel_adaptive_gray(x, 0.0, _gen(1))
    k1 = [_kind(always[i], x[i]) for i in range(200)]
    k0 = [_kind(never[i], x[i]) for i in range(200)]
    assert set(k1) == {"channel", "gray"}
    assert set(k0) == {"channel", "same"}
    # the same draws: the images that got the luminance at p=1 are unchanged at p=0
    assert [a == "gray" for a in k1] == [b == "same" for b in k0]
    assert 25 < k1.count("gray") < 75  # ~ 1/4 of 200


def _reference_rectangles(b, h, w, gen, tries=100):
    """ChannelRandomErasing's per-image rejection loop (area fraction U(0.02, 0.4),
    aspect U(0.3, 1/0.3), the first draw with rh < h and rw < w; top-left corner uniform
    over the h - rh + 1 and w - rw + 1 positions), fed the same uniform numbers."""
    ua = torch.rand(b, tries, generator=gen, dtype=torch.float64)
    ur = torch.rand(b, tries, generator=gen, dtype=torch.float64)
    u = torch.rand(b, 2, generator=gen, dtype=torch.float64)
    out = []
    for i in range(b):
        row = None
        for t in range(tries):
            area = h * w * (0.02 + (0.4 - 0.02) * float(ua[i, t]))
            aspect = 0.3 + (1 / 0.3 - 0.3) * float(ur[i, t])
            rh = round(math.sqrt(area * aspect))
            rw = round(math.sqrt(area / aspect))
            if 0 < rh < h and 0 < rw < w:
                y = math.floor(float(u[i, 0]) * (h - rh + 1))
                x = math.floor(float(u[i, 1]) * (w - rw + 1))
                row = [y, x, rh, rw, 1]
                break
        out.append(row)
    return out


def test_rectangles_equal_the_reference_rejection_loop():
    """_rectangles against the reference loop on the same draws: area bounds, aspect
    bounds, the first fitting draw and the corner's range all enter."""
    for h, w, seed in ((32, 16, 0), (288, 144, 1), (6, 3, 2)):
        got = _rectangles(300, h, w, _gen(seed)).tolist()
        want = _reference_rectangles(300, h, w, _gen(seed))
        for g, r in zip(got, want):
            if r is None:
                assert g[4] == 0
            else:
                assert g == r, (h, w, g, r)


def test_an_image_no_rectangle_fits_is_left_unchanged():
    """Images one pixel high: no rectangle has 0 < rh < h, so ChannelRandomErasing (and
    LTG, which draws its patch the same way) leaves every one unchanged, even at p=1."""
    x = torch.rand(300, 3, 1, 12, generator=_gen(3))
    assert not _rectangles(300, 1, 12, _gen(4))[:, 4].any()
    assert torch.equal(random_erasing(x, 1.0, _gen(5)), x)
    assert torch.equal(ltg(x, 1.0, _gen(6)), x)


def test_jitter_factors_span_the_documented_ranges():
    """torchvision's ColorJitter(s, s, s, hue): brightness, contrast and saturation
    uniform on [max(0, 1 - s), 1 + s], the hue shift uniform on [-hue, hue] (both signs)."""
    from uvireid.data.transforms import jitter_params

    for s, hue in ((0.5, 0.5), (1.5, 0.2)):
        f, order = jitter_params(4000, s, hue, _gen(7))
        lo, hi = max(0.0, 1 - s), 1 + s
        for k in range(3):
            assert lo <= float(f[:, k].min()) < lo + 0.02 and hi - 0.02 < float(f[:, k].max()) <= hi
            assert abs(float(f[:, k].mean()) - (lo + hi) / 2) < 0.05
        h = f[:, 3]
        assert -hue <= float(h.min()) < -0.95 * hue and 0.95 * hue < float(h.max()) <= hue
        assert abs(float(h.mean())) < 0.02 * max(hue, 0.5)
        assert all(sorted(o.tolist()) == [0, 1, 2, 3] for o in order[:50])
