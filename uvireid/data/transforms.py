"""Decoded-image cache and batched, seeded training augmentations on tensors.

Images are decoded once, resized to the training size and kept as one uint8 tensor
(N, 3, H, W) (:func:`load_images`); with a cache folder the array is also written as a
``.npy`` file keyed by the file list, their sizes and times, and the size, and
memory-mapped on the next run (what the peers' hand-made ``.npy`` pre-processing does,
made automatic and checked). Every augmentation then works on a batch of tensors, on the
model's device, with its random draws taken from one ``torch.Generator`` on the CPU, so
a seed gives the same batches on every device and a checkpoint can store the state.

Pipelines (``shared/notes/salcr_reference.md`` Sec. 3.4; ``notes/peers.md`` Sec. 0.4)::

    visible      pad-crop, flip -> [LTG] -> normalise -> channel random erasing
    visible_ca   pad-crop, flip -> colour jitter -> normalise -> erasing -> channel exchange
    infrared     pad-crop, flip -> colour jitter -> normalise -> erasing -> channel-adaptive gray

Differences from the torchvision/PIL pipelines of the reference code: the colour jitter
works on float images (PIL rounds to 8 bits after each of its operations), and LTG
rescales one patch per image, the paper's description (the official code repeats patches
until some pixel's gain is near zero, §11 item 14: ``train.ltg_official``).

Corrupt image files are skipped with a warning: :func:`load_images` returns a mask of
the images it could read, the warning names the first few and the trainer counts them in
its metrics; training and clustering ignore the unreadable ones.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from uvireid.errors import DatasetError
from uvireid.types import ImageRecord

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ERASE_FILL",
    "Augmenter",
    "load_images",
    "normalize",
    "pad_crop_flip",
    "color_jitter",
    "jitter_params",
    "apply_jitter",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "ltg",
    "random_erasing",
    "channel_exchange",
    "channel_adaptive_gray",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: what ChannelRandomErasing writes, in normalised space as the reference does
ERASE_FILL = (0.4914, 0.4822, 0.4465)


# --------------------------------------------------------------------------------------
# decoding, once
# --------------------------------------------------------------------------------------
def _cache_key(records: Sequence[ImageRecord], height: int, width: int) -> str:
    h = hashlib.sha1(f"{height}x{width}\n".encode())
    for r in records:
        try:
            st = os.stat(r.path)
            h.update(f"{r.path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{r.path}\tmissing\n".encode())
    return h.hexdigest()[:20]


def _decode(records: Sequence[ImageRecord], height: int, width: int):
    from PIL import Image

    from uvireid.data.images import read_image

    out = np.zeros((len(records), 3, height, width), dtype=np.uint8)
    ok = np.ones(len(records), dtype=bool)
    bad: list[str] = []
    for i, r in enumerate(records):
        try:
            img = read_image(r.path)
        except DatasetError as exc:
            ok[i] = False
            bad.append(r.path)
            logger.debug("%s", exc)
            continue
        # = torchvision Resize((h, w)) on a PIL image (bilinear), as the test transform
        img = img.resize((width, height), Image.BILINEAR)
        out[i] = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    if bad:
        logger.warning(
            "%d of %d images could not be read and are skipped (first: %s); re-extract "
            "them from the release archive",
            len(bad),
            len(records),
            ", ".join(bad[:3]),
        )
    return out, ok


def load_images(
    records: Sequence[ImageRecord],
    height: int,
    width: int,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """All ``records`` decoded and resized: ``(images, ok)``.

    Args:
        records: the images, in the order the engine indexes them.
        height, width: size after a bilinear resize (PIL, as the test transform).
        cache_dir: folder of ``.npy`` caches (None: decode in memory only). A cache is
            keyed by the paths, their sizes and modification times and the size, so an
            edited or replaced file is decoded again.

    Returns:
        ``images``: (N, 3, height, width) uint8 tensor (memory-mapped from the cache when
        there is one); ``ok``: (N,) bool, False for unreadable images (left black).
    """
    if cache_dir is None:
        arr, ok = _decode(records, height, width)
        return torch.from_numpy(arr), ok
    folder = Path(cache_dir)
    key = _cache_key(records, height, width)
    img_path = folder / f"images-{key}.npy"
    ok_path = folder / f"images-{key}.ok.npy"
    if img_path.exists() and ok_path.exists():
        try:
            arr = np.load(img_path, mmap_mode="r")
            ok = np.load(ok_path)
            if arr.shape == (len(records), 3, height, width) and len(ok) == len(records):
                logger.info("decoded images: %s (cached)", img_path)
                with warnings.catch_warnings():  # read-only map: never written to
                    warnings.simplefilter("ignore", UserWarning)
                    return torch.from_numpy(arr), ok
        except (OSError, ValueError):
            logger.warning("image cache %s is unreadable; decoding again", img_path)
    arr, ok = _decode(records, height, width)
    from uvireid.fileio import atomic_write

    atomic_write(ok_path, lambda fh: np.save(fh, ok))
    atomic_write(img_path, lambda fh: np.save(fh, arr))
    logger.info("decoded %d images into %s", len(records), img_path)
    return torch.from_numpy(arr), ok


# --------------------------------------------------------------------------------------
# batched augmentations: x (B, 3, H, W) float, draws from a CPU generator
# --------------------------------------------------------------------------------------
def _rand(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen)


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> ImageNet-normalised images."""
    mean = x01.new_tensor(IMAGENET_MEAN)[None, :, None, None]
    std = x01.new_tensor(IMAGENET_STD)[None, :, None, None]
    return (x01 - mean) / std


def pad_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator, flip_p: float = 0.5):
    """Zero-pad by ``pad``, crop back to (H, W) at a random offset, flip with ``flip_p``.

    The whole batch in one gather (no per-image slices: on a GPU each would be a launch).
    """
    b, _, h, w = x.shape
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=gen).to(x.device)
        rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # (b, h)
        cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # (b, w)
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    flip = (_rand(b, gen) < flip_p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


#: ``rgb_to_grayscale`` weights of torchvision's tensor ``ColorJitter``
_GRAY = (0.2989, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (_GRAY[0] * x[:, 0] + _GRAY[1] * x[:, 1] + _GRAY[2] * x[:, 2])[:, None]


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV, every channel in [0, 1] (hue in turns; hue and
    saturation 0 where the pixel is gray, saturation 0 where it is black)."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    c = v - x.min(1).values
    safe = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.where(
        v == r, ((g - b) / safe) % 6, torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    h = torch.where(c > 0, h / 6, torch.zeros_like(h)) % 1.0
    s = torch.where(v > 0, c / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: channel ``n`` (5 red, 3 green, 1 blue) is
    ``v - v s clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6``, the closed form
    of the hexcone model's six sectors (Smith, SIGGRAPH 1978)."""
    h, s, v = x.unbind(1)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + 6.0 * h) % 6.0
        out.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(out, 1)


def jitter_params(
    b: int, strength: float, hue: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: ``(factors (b, 4), order (b, 4))``. Factors: brightness, contrast and
    saturation drawn in ``[max(0, 1 - strength), 1 + strength]``, the hue shift in
    ``[-hue, hue]`` turns; order: a random permutation of the four operations (0
    brightness, 1 contrast, 2 saturation, 3 hue), as torchvision's ``ColorJitter`` draws
    them for each image."""
    u = torch.rand(b, 4, generator=gen, dtype=torch.float64)
    lo = max(0.0, 1.0 - strength)  # uniform on the clipped range, as torchvision draws
    f = lo + (1.0 + strength - lo) * u
    f[:, 3] = hue * (2 * u[:, 3] - 1)
    order = torch.argsort(torch.rand(b, 4, generator=gen), dim=1)
    return f, order


def apply_jitter(x01: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """:func:`color_jitter` with given ``factors`` and ``order`` (:func:`jitter_params`):
    each image gets its four operations in its own order. The operations are those of
    torchvision's tensor ``ColorJitter``: brightness ``f x``, contrast ``f x + (1 - f)
    mean(gray(x))``, saturation ``f x + (1 - f) gray(x)``, each clamped to [0, 1], and hue
    (a rotation of the HSV hue by the shift, in turns)."""
    x = x01.clone()
    f = factors.to(x.device, x.dtype)
    order = order.cpu()  # the rows of each (step, op) are found on the host: no device wait
    for step in range(4):
        for op in range(4):
            rows = (order[:, step] == op).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            rows = rows.to(x.device, non_blocking=True)
            xi, fi = x[rows], f[rows, op][:, None, None, None]
            if op == 0:
                out = xi * fi
            elif op == 1:
                out = fi * xi + (1 - fi) * _gray(xi).mean((2, 3), keepdim=True)
            elif op == 2:
                out = fi * xi + (1 - fi) * _gray(xi)
            else:
                hsv = rgb_to_hsv(xi)
                hsv[:, 0] = (hsv[:, 0] + fi[:, 0]) % 1.0
                out = hsv_to_rgb(hsv)
            x[rows] = out.clamp(0, 1)
    return x


def color_jitter(
    x01: torch.Tensor, strength: float, gen: torch.Generator, hue: float = 0.0
) -> torch.Tensor:
    """torchvision's ``ColorJitter(strength, strength, strength, hue)`` on a batch:
    brightness, contrast and saturation factors in ``[max(0, 1 - s), 1 + s]``, a hue shift in
    ``[-hue, hue]`` turns, applied in a random order drawn per image (the reference
    applies it image by image to PIL images: the same operations, up to PIL's 8-bit
    rounding between them)."""
    if strength <= 0 and hue <= 0:
        return x01
    factors, order = jitter_params(x01.shape[0], strength, hue, gen)
    return apply_jitter(x01, factors, order)


def _rectangles(b: int, h: int, w: int, gen: torch.Generator, tries: int = 100) -> torch.Tensor:
    """One random-erasing rectangle per image (area 2-40 %, aspect 0.3-3.33), drawn as the
    reference's rejection loop (the first of ``tries`` draws that fits), for the whole
    batch at once: (b, 5) int64 rows ``(y, x, rh, rw, found)``; ``found`` is 0 where no
    draw fitted (that image is left unchanged)."""
    area = h * w * (0.02 + 0.38 * torch.rand(b, tries, generator=gen, dtype=torch.float64))
    aspect = 0.3 + (1 / 0.3 - 0.3) * torch.rand(b, tries, generator=gen, dtype=torch.float64)
    rh = torch.round(torch.sqrt(area * aspect)).long()
    rw = torch.round(torch.sqrt(area / aspect)).long()
    fits = (rh > 0) & (rh < h) & (rw > 0) & (rw < w)
    first = fits.long().argmax(1, keepdim=True)  # the first fitting draw (0 if none)
    rh, rw = rh.gather(1, first).squeeze(1), rw.gather(1, first).squeeze(1)
    found = fits.any(1)
    u = torch.rand(b, 2, generator=gen, dtype=torch.float64)
    y = torch.floor(u[:, 0] * (h - rh + 1)).long().clamp(max=h - 1)
    xx = torch.floor(u[:, 1] * (w - rw + 1)).long().clamp(max=w - 1)
    return torch.stack([y, xx, rh, rw, found.long()], 1)


def _rect_mask(rects: torch.Tensor, hit: torch.Tensor, h: int, w: int, device) -> torch.Tensor:
    """(b, 1, h, w) bool: inside image i's rectangle, for the images with ``hit`` and a
    rectangle found."""
    r = rects.to(device)
    on = hit.to(device) & (r[:, 4] > 0)
    ys = torch.arange(h, device=device)[None, :]
    xs = torch.arange(w, device=device)[None, :]
    in_y = (ys >= r[:, 0:1]) & (ys < r[:, 0:1] + r[:, 2:3])  # (b, h)
    in_x = (xs >= r[:, 1:2]) & (xs < r[:, 1:2] + r[:, 3:4])  # (b, w)
    return (in_y[:, :, None] & in_x[:, None, :] & on[:, None, None])[:, None]


def random_erasing(
    x: torch.Tensor, p: float, gen: torch.Generator, fill: Sequence[float] = ERASE_FILL
) -> torch.Tensor:
    """Channel random erasing (Zhong et al., AAAI 2020): with probability ``p`` one
    rectangle is filled with ``fill[c]`` in channel c (in normalised space, as the peers).
    The batch in a few kernels (one mask), not one fill per image."""
    if p <= 0:
        return x
    b, _, h, w = x.shape
    hit = _rand(b, gen) < p
    mask = _rect_mask(_rectangles(b, h, w, gen), hit, h, w, x.device)
    val = x.new_tensor(fill)[None, :, None, None]
    return torch.where(mask, val, x)


def channel_exchange(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Channel augmentation (Ye et al., ICCV 2021, ``gray=2``): one of R, G, B, uniformly,
    copied into all three channels."""
    b = x.shape[0]
    idx = torch.randint(0, 3, (b,), generator=gen).to(x.device)
    return x[torch.arange(b, device=x.device), idx][:, None].expand_as(x).contiguous()


def channel_adaptive_gray(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """ChannelAdapGray for infrared images: with probability 3/4 one channel replicated,
    else with probability ``p`` the luminance 0.2989 R + 0.587 G + 0.114 B, else unchanged."""
    b = x.shape[0]
    idx = torch.randint(0, 4, (b,), generator=gen)
    gray_draw = _rand(b, gen) < p
    one = x[torch.arange(b, device=x.device), idx.clamp(max=2).to(x.device)][:, None]
    lum = _gray(x)
    use_one = (idx < 3).to(x.device)[:, None, None, None]
    use_gray = ((idx == 3) & gray_draw).to(x.device)[:, None, None, None]
    out = torch.where(use_one, one.expand_as(x), x)
    return torch.where(use_gray, lum.expand_as(x), out)


def _ltg_patch(x01: torch.Tensor, on: torch.Tensor, gen: torch.Generator):
    """One LTG rescaling on the images ``on`` (b,): ``(x, gain, applied)``, the gain
    (b, c, h, w) of every pixel (1 outside the patches) and which images had a patch."""
    b, c, h, w = x01.shape
    rects = _rectangles(b, h, w, gen)
    # Beta(1/2, 1/2) from the generator: n1^2 / (n1^2 + n2^2) with n1, n2 ~ N(0, 1)
    n = torch.randn(b, c, 2, generator=gen) ** 2
    g = (n[..., 0] / (n.sum(-1) + 1e-12)).to(x01.device, x01.dtype)
    mask = _rect_mask(rects, on, h, w, x01.device)
    mx = torch.where(mask, x01, torch.zeros((), dtype=x01.dtype, device=x01.device)).amax((2, 3))
    scale = torch.where(mx > 0, g / mx.clamp(min=1e-12), torch.ones_like(mx))
    gain = torch.where(
        mask, scale[:, :, None, None], torch.ones((), dtype=x01.dtype, device=x01.device)
    )
    return x01 * gain, gain, on & (rects[:, 4] > 0)


#: the official LTG loop stops when a pixel's gain is this small (its ``tmin`` is unused)
LTG_STOP = 1e-6
#: rescalings at most per image in the official loop (its own has no bound; a median of
#: 10 and a maximum of 21 were measured on uniform-random images)
LTG_MAX_ROUNDS = 200


def ltg(x01: torch.Tensor, p: float, gen: torch.Generator, official: bool = False) -> torch.Tensor:
    """Linear transformation generator (LTG, Tan et al. 2023) on [0, 1] images, the batch
    at once (masked maxima), not image by image.

    With probability ``p``: a random-erasing rectangle; each channel whose patch maximum
    is > 0 is scaled so that its new maximum is g ~ Beta(0.5, 0.5). The paper's
    description: one patch per image. ``official``: the SALCR code's ``LinearTransform``,
    which repeats such rescalings (overlapping, each on the image as the last left it)
    until some pixel's cumulative gain is at most 1e-6 (``shared/notes/
    salcr_reference.md`` Sec. 3.4 and Sec. 11 item 14); capped at
    :data:`LTG_MAX_ROUNDS` rounds.
    """
    if p <= 0:
        return x01
    b = x01.shape[0]
    hit = _rand(b, gen) < p
    if not official:
        return _ltg_patch(x01, hit, gen)[0]
    x, total = x01, torch.ones_like(x01)
    active = hit.clone()
    for _ in range(LTG_MAX_ROUNDS):
        if not bool(active.any()):
            break
        x, gain, applied = _ltg_patch(x, active, gen)
        total = total * gain
        done = (total.flatten(1).amin(1) <= LTG_STOP).cpu() & applied
        active &= ~done
    return x


@dataclass
class Augmenter:
    """The three training pipelines, on uint8 batches (see the module docstring).

    Attributes:
        pad: zero padding before the random crop (10).
        erasing_p: channel random erasing probability (0.5).
        jitter: colour-jitter strength (brightness, contrast, saturation) for the CA and
            infrared views (0.5).
        hue: colour-jitter hue shift, in turns, for the same views (0.5: the reference's
            ``ColorJitter(0.5, 0.5, 0.5, 0.5)``).
        gray_p: ChannelAdapGray's luminance probability (0.5).
        ltg_p: LTG probability on the visible view (0.5 in the DCL stage, 0 after).
        ltg_official: LTG as the SALCR code runs it (repeated rescalings, :func:`ltg`).
        jitter_views: the views the colour jitter applies to (``visible_ca``,
            ``infrared``; the trainer sets each stage's).
        seed: seed of the generator (its state is saved in checkpoints).
    """

    pad: int = 10
    erasing_p: float = 0.5
    jitter: float = 0.5
    hue: float = 0.5
    gray_p: float = 0.5
    ltg_p: float = 0.0
    ltg_official: bool = False
    seed: int = 0
    jitter_views: tuple[str, ...] = ("visible_ca", "infrared")

    def __post_init__(self) -> None:
        self.gen = torch.Generator().manual_seed(int(self.seed))

    def __call__(self, images: torch.Tensor, kind: str, device: str | torch.device):
        """(B, 3, H, W) uint8 -> (B, 3, H, W) float32 normalised, on ``device``.

        ``kind``: ``"visible"``, ``"visible_ca"``, ``"infrared"`` or ``"test"`` (no
        augmentation).
        """
        x = images.to(device, non_blocking=True).float().div_(255.0)
        if kind == "test":
            return normalize(x)
        if kind not in ("visible", "visible_ca", "infrared"):
            raise ValueError(f"unknown pipeline {kind!r}")
        x = pad_crop_flip(x, self.pad, self.gen)
        if kind == "visible":
            x = ltg(x, self.ltg_p, self.gen, self.ltg_official)
        elif kind in self.jitter_views:
            x = color_jitter(x, self.jitter, self.gen, self.hue)
        x = random_erasing(normalize(x), self.erasing_p, self.gen)
        if kind == "visible_ca":
            x = channel_exchange(x, self.gen)
        elif kind == "infrared":
            x = channel_adaptive_gray(x, self.gray_p, self.gen)
        return x

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
