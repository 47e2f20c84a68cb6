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

import contextlib
import hashlib
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from uvireid.errors import ConfigError, DatasetError
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
    "to_device",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: what ChannelRandomErasing writes, in normalised space as the reference does
ERASE_FILL = (0.4914, 0.4822, 0.4465)


# --------------------------------------------------------------------------------------
# decoding, once
# --------------------------------------------------------------------------------------
def _cache_key(
    records: Sequence[ImageRecord], height: int, width: int, resize: str = "bilinear"
) -> str:
    # the filter joins the key only when it is not the default: the caches of earlier
    # versions (all bilinear) keep their names
    size = f"{height}x{width}" + ("" if resize == "bilinear" else f" {resize}")
    h = hashlib.sha1(f"{size}\n".encode())
    for r in records:
        try:
            st = os.stat(r.path)
            line = f"{r.path}\t{st.st_size}\t{st.st_mtime_ns}\n"
        except OSError:
            line = f"{r.path}\tmissing\n"
        # a file name that is not UTF-8 is text with surrogates (os.fsdecode): its bytes
        h.update(line.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:20]


def _pil_filters() -> dict[str, int]:
    from PIL import Image

    filters = getattr(Image, "Resampling", Image)  # Pillow < 9.1: the module's constants
    return {
        "bilinear": filters.BILINEAR,
        "bicubic": filters.BICUBIC,
        "lanczos": filters.LANCZOS,
    }


#: ``train.resize`` names -> PIL resampling filters
_FILTERS = _pil_filters()


def check_resize(resize: str) -> str:
    """``resize`` if it names a filter (``bilinear``, ``bicubic``, ``lanczos``).

    Raises:
        ConfigError: another name.
    """
    if resize not in _FILTERS:
        raise ConfigError(f"resize must be one of {', '.join(_FILTERS)}, got {resize!r}")
    return resize


def _decode(
    records: Sequence[ImageRecord],
    height: int,
    width: int,
    resize: str = "bilinear",
    quiet: bool = False,
):

    from uvireid.data.images import read_image
    from uvireid.rerank.inputs import ensure_fits

    # the decoded images stay in host memory (SYSU-MM01's 34k training images at 288 x
    # 144: 4.0 GiB, its test images 1.2 GiB): a host without that room is told now, not
    # killed part way through the decode (audit Y, session 17)
    ensure_fits(
        len(records) * 3 * height * width,
        torch.device("cpu"),
        f"decoding {len(records)} images at {height} x {width} (uint8, in host memory)",
        "free host memory, or lower train.height / train.width",
    )
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
        # = torchvision Resize((h, w), interpolation) on a PIL image (PIL's filter)
        img = img.resize((width, height), _FILTERS[resize])
        out[i] = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    if bad and not quiet:
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
    resize: str = "bilinear",
    quiet: bool = False,
) -> tuple[torch.Tensor, np.ndarray]:
    """All ``records`` decoded and resized: ``(images, ok)``.

    Args:
        records: the images, in the order the engine indexes them.
        height, width: size after the resize.
        resize: PIL's resampling filter: ``bilinear`` (torchvision's default),
            ``bicubic`` or ``lanczos`` (part of the cache key).
        quiet: no warning about unreadable images (the caller reports them).
        cache_dir: folder of ``.npy`` caches (None: decode in memory only). A cache is
            keyed by the paths, their sizes and modification times and the size, so an
            edited or replaced file is decoded again.

    Returns:
        ``images``: (N, 3, height, width) uint8 tensor (memory-mapped from the cache when
        there is one); ``ok``: (N,) bool, False for unreadable images (left black).
    """
    check_resize(resize)
    if cache_dir is None:
        arr, ok = _decode(records, height, width, resize, quiet)
        return torch.from_numpy(arr), ok
    folder = Path(cache_dir)
    _remove_abandoned(folder)
    key = _cache_key(records, height, width, resize)
    img_path = folder / f"images-{key}.npy"
    ok_path = folder / f"images-{key}.ok.npy"
    if img_path.exists() and ok_path.exists():
        try:
            arr = np.load(img_path, mmap_mode="r")
            ok = np.load(ok_path)
            if arr.shape == (len(records), 3, height, width) and len(ok) == len(records):
                logger.info("decoded images: %s (cached)", img_path)
                with contextlib.suppress(OSError):  # its time is its last use: prunable
                    os.utime(img_path)
                    os.utime(ok_path)
                with warnings.catch_warnings():  # read-only map: never written to
                    warnings.simplefilter("ignore", UserWarning)
                    return torch.from_numpy(arr), ok
        except (OSError, ValueError):
            logger.warning("image cache %s is unreadable; decoding again", img_path)
    arr, ok = _decode(records, height, width, resize, quiet)
    from uvireid.fileio import atomic_write

    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(ok_path, lambda fh: np.save(fh, ok))
        atomic_write(img_path, lambda fh: np.save(fh, arr))
    except OSError as exc:  # a read-only or full cache: the decoded images are still good
        logger.warning(
            "image cache %s cannot be written (%s); the images stay decoded in memory "
            "(set train.image_cache to a writable folder, or null)",
            folder,
            exc,
        )
        return torch.from_numpy(arr), ok
    entries = list(folder.glob("images-*.npy"))
    logger.info(
        "decoded %d images into %s (the cache holds %d files, %.1f GiB; an entry whose "
        "images were moved, touched or resized is never used again: delete the folder, "
        "or its files unused for long, e.g. find %s -name 'images-*' -mtime +30 -delete)",
        len(records),
        img_path,
        len(entries),
        _total_size(entries) / 2**30,
        folder,
    )
    return torch.from_numpy(arr), ok


def _total_size(files: list[Path]) -> int:
    """Bytes of ``files``, those another process removed meanwhile left out (the cache is
    shared: a prune may run at any time)."""
    total = 0
    for f in files:
        with contextlib.suppress(OSError):
            total += f.stat().st_size
    return total


#: a cache temporary this old has no live writer (a writer rewrites it continuously; the
#: largest, SYSU-MM01's training images, takes minutes)
_ABANDONED_SECONDS = 6 * 3600


def _remove_abandoned(folder: Path) -> None:
    """Delete what killed writers left in the image cache (``.images-*.tmp``, up to a
    4 GiB file each): the cache is shared by runs on several hosts, so no lock says who
    writes; a temporary untouched for six hours is abandoned."""
    now = time.time()
    for tmp in folder.glob(".images-*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > _ABANDONED_SECONDS:
                size = tmp.stat().st_size
                tmp.unlink()
                logger.info("removed %s (%.1f MiB), left by a killed run", tmp, size / 2**20)


# --------------------------------------------------------------------------------------
# batched augmentations: x (B, 3, H, W) float, draws from a CPU generator
# --------------------------------------------------------------------------------------
# Each augmentation is split into its draws (host, from the CPU generator: ``*_params``)
# and its arithmetic on the device (``_apply_*``), which reads no value back and has no
# shape that depends on the draws: the Augmenter can replay a view's whole arithmetic as
# one CUDA graph (``Augmenter.cuda_graphs``), its draws copied in beforehand.
def _rand(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen)


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _const(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """``values`` as a (1, C, 1, 1) tensor on ``like``'s device and dtype, made once per
    device and dtype (a host-to-device copy per call would be a launch and, inside a CUDA
    graph's capture, an error)."""
    key = (tuple(values), like.device, like.dtype)
    t = _CONSTANTS.get(key)
    if t is None:
        t = torch.tensor(values, dtype=like.dtype).to(like.device)[None, :, None, None]
        _CONSTANTS[key] = t
    return t


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> ImageNet-normalised images."""
    return (x01 - _const(IMAGENET_MEAN, x01)) / _const(IMAGENET_STD, x01)


def _crop_flip_params(b: int, pad: int, gen: torch.Generator, flip_p: float = 0.5) -> dict:
    p = {}
    if pad > 0:
        p["offsets"] = torch.randint(0, 2 * pad + 1, (2, b), generator=gen)
    p["flip"] = _rand(b, gen) < flip_p
    return p


def _apply_crop_flip(x: torch.Tensor, pad: int, p: dict) -> torch.Tensor:
    b, _, h, w = x.shape
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        offsets = p["offsets"].to(x.device)
        rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # (b, h)
        cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # (b, w)
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    flip = p["flip"].to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def pad_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator, flip_p: float = 0.5):
    """Zero-pad by ``pad``, crop back to (H, W) at a random offset, flip with ``flip_p``.

    The whole batch in one gather (no per-image slices: on a GPU each would be a launch).
    """
    return _apply_crop_flip(x, pad, _crop_flip_params(x.shape[0], pad, gen, flip_p))


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
    (a rotation of the HSV hue by the shift, in turns).

    The whole batch at once, in a fixed set of kernels (no per-image or per-operation
    gathers, no value read back, no shape that depends on the draws: what a CUDA graph
    needs): each image's one hue step splits its operations into the linear ones before
    it, the hue rotation and the linear ones after it. Four linear steps over the batch,
    each ``a x + b gray(x) + c mean(gray(x))`` with per-image coefficients that give an
    image its operation's formula, or ``1 x + 0 + 0`` (exactly x) where it has none at
    that step; one hue rotation of the batch; four linear steps again."""
    x = x01
    f = factors.to(x.device, x.dtype)
    order = order.to(x.device)
    hue_step = (order == 3).long().argmax(1, keepdim=True)  # (b, 1)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)

    def linear(x: torch.Tensor, step: int, on: torch.Tensor) -> torch.Tensor:
        op = order[:, step : step + 1]
        fo = f.gather(1, op)
        rest = 1 - fo
        a = torch.where(on, fo, torch.ones_like(fo))[:, :, None, None]
        gw = torch.where(on & (op == 2), rest, zero)[:, :, None, None]  # saturation
        mw = torch.where(on & (op == 1), rest, zero)[:, :, None, None]  # contrast
        g = _gray(x)
        return (a * x + gw * g + mw * g.mean((2, 3), keepdim=True)).clamp(0, 1)

    for step in range(4):
        x = linear(x, step, step < hue_step)
    hsv = rgb_to_hsv(x)
    hsv = torch.cat([((hsv[:, 0] + f[:, 3, None, None]) % 1.0)[:, None], hsv[:, 1:]], 1)
    x = hsv_to_rgb(hsv).clamp(0, 1)
    for step in range(4):
        x = linear(x, step, step > hue_step)
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


def _erasing_params(b: int, h: int, w: int, p: float, gen: torch.Generator) -> dict:
    hit = _rand(b, gen) < p
    return {"erase_hit": hit, "erase_rects": _rectangles(b, h, w, gen)}


def _apply_erasing(x: torch.Tensor, p: dict, fill: Sequence[float] = ERASE_FILL):
    _, _, h, w = x.shape
    mask = _rect_mask(p["erase_rects"], p["erase_hit"], h, w, x.device)
    return torch.where(mask, _const(fill, x), x)


def random_erasing(
    x: torch.Tensor, p: float, gen: torch.Generator, fill: Sequence[float] = ERASE_FILL
) -> torch.Tensor:
    """Channel random erasing (Zhong et al., AAAI 2020): with probability ``p`` one
    rectangle is filled with ``fill[c]`` in channel c (in normalised space, as the peers).
    The batch in a few kernels (one mask), not one fill per image."""
    if p <= 0:
        return x
    b, _, h, w = x.shape
    return _apply_erasing(x, _erasing_params(b, h, w, p, gen), fill)


def _apply_exchange(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    idx = idx.to(x.device)
    return x[torch.arange(b, device=x.device), idx][:, None].expand_as(x).contiguous()


def channel_exchange(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Channel augmentation (Ye et al., ICCV 2021, ``gray=2``): one of R, G, B, uniformly,
    copied into all three channels."""
    return _apply_exchange(x, torch.randint(0, 3, (x.shape[0],), generator=gen))


def _adaptive_gray_params(b: int, p: float, gen: torch.Generator) -> dict:
    idx = torch.randint(0, 4, (b,), generator=gen)
    return {"gray_idx": idx, "gray_draw": _rand(b, gen) < p}


def _apply_adaptive_gray(x: torch.Tensor, p: dict) -> torch.Tensor:
    b = x.shape[0]
    idx = p["gray_idx"].to(x.device)
    one = x[torch.arange(b, device=x.device), idx.clamp(max=2)][:, None]
    lum = _gray(x)
    use_one = (idx < 3)[:, None, None, None]
    use_gray = ((idx == 3) & p["gray_draw"].to(x.device))[:, None, None, None]
    out = torch.where(use_one, one.expand_as(x), x)
    return torch.where(use_gray, lum.expand_as(x), out)


def channel_adaptive_gray(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """ChannelAdapGray for infrared images: with probability 3/4 one channel replicated,
    else with probability ``p`` the luminance 0.2989 R + 0.587 G + 0.114 B, else unchanged."""
    return _apply_adaptive_gray(x, _adaptive_gray_params(x.shape[0], p, gen))


def _ltg_params(b: int, c: int, h: int, w: int, gen: torch.Generator) -> dict:
    rects = _rectangles(b, h, w, gen)
    # Beta(1/2, 1/2) from the generator: n1^2 / (n1^2 + n2^2) with n1, n2 ~ N(0, 1)
    n = torch.randn(b, c, 2, generator=gen) ** 2
    return {"ltg_rects": rects, "ltg_g": n[..., 0] / (n.sum(-1) + 1e-12)}


def _apply_ltg_patch(x01: torch.Tensor, on: torch.Tensor, p: dict):
    """One LTG rescaling on the images ``on`` (b,) with the drawn ``p``: ``(x, gain)``, the
    gain (b, c, h, w) of every pixel (1 outside the patches)."""
    _, _, h, w = x01.shape
    g = p["ltg_g"].to(x01.device, x01.dtype)
    mask = _rect_mask(p["ltg_rects"], on, h, w, x01.device)
    zero = torch.zeros((), dtype=x01.dtype, device=x01.device)
    mx = torch.where(mask, x01, zero).amax((2, 3))
    scale = torch.where(mx > 0, g / mx.clamp(min=1e-12), torch.ones_like(mx))
    gain = torch.where(mask, scale[:, :, None, None], torch.ones_like(zero))
    return x01 * gain, gain


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
    :data:`LTG_MAX_ROUNDS` rounds (a loop that reads the device back each round: never
    part of a CUDA graph).
    """
    if p <= 0:
        return x01
    b, c, h, w = x01.shape
    hit = _rand(b, gen) < p
    if not official:
        return _apply_ltg_patch(x01, hit, _ltg_params(b, c, h, w, gen))[0]
    x, total = x01, torch.ones_like(x01)
    # an all-black image (an unreadable file left black) has no channel to rescale: it
    # would never stop, and hold the whole batch for LTG_MAX_ROUNDS rounds (audit PH)
    active = hit & (x01.flatten(1).amax(1) > 0).cpu()
    for _ in range(LTG_MAX_ROUNDS):
        if not bool(active.any()):
            break
        params = _ltg_params(b, c, h, w, gen)
        x, gain = _apply_ltg_patch(x, active, params)
        total = total * gain
        applied = active & (params["ltg_rects"][:, 4] > 0)
        done = (total.flatten(1).amin(1) <= LTG_STOP).cpu() & applied
        active &= ~done
    return x


def to_device(t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait: on CUDA through pinned
    memory, asynchronously (a copy from pageable memory stages through the driver, and a
    blocking ``.to`` waits for every queued kernel)."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


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
        cuda_graphs: on CUDA, replay each view's arithmetic as a CUDA graph (captured per
            view, again when its batch shape changes), its draws copied in: a few launches
            a view instead of hundreds. The draws, so the batches, are the eager path's.
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
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        odd = set(self.jitter_views) - {"visible_ca", "infrared"}
        if odd:  # the visible view is never jittered: naming it would do nothing
            raise ConfigError(
                f"Augmenter: jitter_views {sorted(odd)} cannot be jittered; the jittered views "
                f"are visible_ca and infrared"
            )
        if isinstance(self.pad, bool) or not isinstance(self.pad, int) or self.pad < 0:
            raise ConfigError(f"Augmenter: pad must be an integer >= 0, got {self.pad!r}")
        for name in ("erasing_p", "gray_p", "ltg_p"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value <= 1
            ):
                raise ConfigError(
                    f"Augmenter: {name} must be a probability in [0, 1], got {value!r}"
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"Augmenter: seed must be an integer >= 0, got {self.seed!r}")
        self.gen = torch.Generator().manual_seed(int(self.seed))
        self._graphs: dict[str, tuple] = {}  # view -> (its shapes, its graph and buffers)
        self.graph_failed: str | None = None

    def draw(self, kind: str, shape: Sequence[int]) -> dict[str, torch.Tensor]:
        """The random draws of one ``kind`` of view for a batch of ``shape`` (B, C, H, W),
        on the host, in the order the pipeline takes them from the generator."""
        if kind not in ("visible", "visible_ca", "infrared"):
            raise ValueError(f"unknown pipeline {kind!r}")
        b, c, h, w = shape
        p = _crop_flip_params(b, self.pad, self.gen)
        if kind == "visible":
            if self.ltg_p > 0 and not self.ltg_official:
                p["ltg_hit"] = _rand(b, self.gen) < self.ltg_p
                p.update(_ltg_params(b, c, h, w, self.gen))
        elif kind in self.jitter_views and (self.jitter > 0 or self.hue > 0):
            p["jitter_f"], p["jitter_order"] = jitter_params(b, self.jitter, self.hue, self.gen)
        if self.erasing_p > 0:
            p.update(_erasing_params(b, h, w, self.erasing_p, self.gen))
        if kind == "visible_ca":
            p["channel"] = torch.randint(0, 3, (b,), generator=self.gen)
        elif kind == "infrared":
            p.update(_adaptive_gray_params(b, self.gray_p, self.gen))
        return p

    def apply(self, images: torch.Tensor, kind: str, p: dict) -> torch.Tensor:
        """The arithmetic of one view on ``images`` (uint8, on their device) with the
        draws ``p`` (:meth:`draw`, on the same device): every kernel's shape fixed by the
        batch's, as a CUDA graph needs."""
        x = images.float() / 255.0
        x = _apply_crop_flip(x, self.pad, p)
        if "ltg_rects" in p:
            x = _apply_ltg_patch(x, p["ltg_hit"].to(x.device), p)[0]
        elif "jitter_f" in p:
            x = apply_jitter(x, p["jitter_f"], p["jitter_order"])
        x = normalize(x)
        if "erase_rects" in p:
            x = _apply_erasing(x, p)
        if "channel" in p:
            x = _apply_exchange(x, p["channel"])
        elif "gray_idx" in p:
            x = _apply_adaptive_gray(x, p)
        return x

    def __call__(self, images: torch.Tensor, kind: str, device: str | torch.device):
        """(B, 3, H, W) uint8 -> (B, 3, H, W) float32 normalised, on ``device``.

        ``kind``: ``"visible"``, ``"visible_ca"``, ``"infrared"`` or ``"test"`` (no
        augmentation).
        """
        device = torch.device(device)
        if images.dim() != 4 or images.shape[1] != 3:  # one channel indexed as three
            raise ConfigError(
                f"Augmenter: expected (B, 3, H, W) images (uint8 as load_images gives them), "
                f"got shape {tuple(images.shape)}"
            )
        # pixel values are 0..255 (they are divided by 255): floats already in [0, 1]
        # would come out near black (checked off the training path, whose batches are uint8);
        # an all-black batch is black on either scale, and taken
        if images.is_floating_point() and images.numel():
            low, high = float(images.min()), float(images.max())
            if low < 0:  # normalised already: normalised again, silently
                raise ConfigError(
                    f"Augmenter: these float images hold negative values (down to {low:.3g}: "
                    f"normalised already?); pass pixel values 0..255 (uint8, as load_images "
                    f"gives them, or floats times 255)"
                )
            if 0 < high <= 1.0:
                raise ConfigError(
                    "Augmenter: these float images lie in [0, 1]; pass pixel values 0..255 "
                    "(uint8, as load_images gives them, or floats times 255)"
                )
        if kind == "test":
            return normalize(images.to(device, non_blocking=True).float() / 255.0)
        if kind == "visible" and self.ltg_official and self.ltg_p > 0:
            return self._official_ltg_view(images, device)
        p = self.draw(kind, images.shape)
        if self.cuda_graphs and device.type == "cuda" and self.graph_failed is None:
            try:
                return self._replay(images, kind, p, device)
            except Exception as exc:  # noqa: BLE001 - an op the capture refuses
                self.graph_failed = f"{type(exc).__name__}: {exc}"
                self._graphs.clear()
                logger.warning(
                    "train.cuda_graphs: the augmentation could not be captured as a CUDA "
                    "graph (%s); this run goes on with the eager augmentation",
                    self.graph_failed,
                )
        x = images.to(device, non_blocking=True)
        return self.apply(x, kind, {k: to_device(v, device) for k, v in p.items()})

    def _official_ltg_view(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The visible view with the official LTG loop, eagerly (the loop reads the device
        back each round, a number of rounds no graph can hold): the same draws, in the
        same order, as :meth:`draw` and :meth:`apply` take them for the other views."""
        x = images.to(device, non_blocking=True).float() / 255.0
        x = pad_crop_flip(x, self.pad, self.gen)
        x = ltg(x, self.ltg_p, self.gen, official=True)
        return random_erasing(normalize(x), self.erasing_p, self.gen)

    def _replay(self, images: torch.Tensor, kind: str, p: dict, device: torch.device):
        """``apply`` as a CUDA graph of this view and shape: the images and the draws are
        copied into the graph's input buffers, the graph replayed, its output copied out
        (the next replay overwrites it). One graph per view: another shape (the next
        stage's batch) replaces it, and its memory pool is released."""
        key = (tuple(images.shape), device, self.pad)
        key += tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(p.items()))
        held = self._graphs.get(kind)
        entry = held[1] if held is not None and held[0] == key else None
        if entry is None:
            self._graphs.pop(kind, None)
            static_x = torch.empty(images.shape, dtype=images.dtype, device=device)
            static_p = {k: torch.empty(v.shape, dtype=v.dtype, device=device) for k, v in p.items()}
        else:
            graph, static_x, static_p, static_out = entry
        static_x.copy_(images, non_blocking=True)
        for k, v in p.items():
            static_p[k].copy_(v.pin_memory(), non_blocking=True)
        if entry is None:  # capture, on this call's inputs
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up, as the capture wants
                for _ in range(2):
                    self.apply(static_x, kind, static_p)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.apply(static_x, kind, static_p)
            self._graphs[kind] = (key, (graph, static_x, static_p, static_out))
        graph.replay()
        return static_out.clone()

    def state_dict(self) -> dict:
        """The augmentation generator's state (kept in checkpoints: a resumed run draws
        the augmentations the killed one would have)."""
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the generator from :meth:`state_dict`."""
        self.gen.set_state(state["gen"])
