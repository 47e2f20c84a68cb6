"""Finding and reading image files, with errors that name the file.

Every loader lists images through :func:`list_images` (so "what counts as an image" is
decided in one place) and every reader goes through :func:`read_image` (so a corrupt
file is reported by name instead of as a bare PIL traceback deep inside a DataLoader
worker).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from uvireid.errors import DatasetError

#: file-name endings (lower case) that count as images; anything else in a folder is ignored
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: endings of other image formats: not read, but named in a warning (a folder of them
#: would otherwise "hold no images", and a mix would lose them without a word)
UNREAD_IMAGE_EXTENSIONS = (".gif", ".pgm", ".ppm", ".pnm", ".pbm", ".jp2", ".heic", ".avif")

#: Pillow modes of more than 8 bits per pixel (16-bit thermal images, 32-bit int, float)
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

SEE_README = 'see README "Datasets"'

logger = logging.getLogger(__name__)


def is_image_file(name: str) -> bool:
    """True when ``name`` ends with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(
    folder: str | Path, recursive: bool = False, follow_links: bool = False
) -> list[str]:
    """Image files in ``folder``, as absolute paths sorted by their full path string.

    Sorting full path strings is what the reference loaders do (``sorted`` over
    ``folder + "/" + name``), so per-folder random draws of the evaluation protocols
    see the same order. Hidden files and non-image files are skipped; a missing folder
    gives an empty list (callers decide whether that is an error).

    Args:
        folder: the folder to list.
        recursive: also list images in sub-folders, at any depth.
        follow_links: with ``recursive``, also enter linked sub-folders (each real
            folder once, so a link cycle ends); a sub-folder that cannot be read is
            warned about.

    Returns:
        list of N absolute path strings.
    """
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        return []
    names: list[str] = []
    if recursive:
        seen: set[str] = set()

        def unreadable(exc: OSError) -> None:
            logger.warning(
                "cannot read the folder %s (%s); its images are left out",
                exc.filename,
                exc.strerror,
            )

        walk = os.walk(
            folder, followlinks=follow_links, onerror=unreadable if follow_links else None
        )
        for dirpath, dirnames, filenames in walk:
            if follow_links:
                real = os.path.realpath(dirpath)
                if real in seen:  # a second link to a folder already listed, or a cycle
                    dirnames[:] = []
                    continue
                seen.add(real)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            names.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
            if follow_links:  # os.walk lists a link to a missing folder as a file (audit OG)
                for f in filenames:
                    p = os.path.join(dirpath, f)
                    hidden = f.startswith(".")
                    if hidden or is_image_file(f) or not os.path.islink(p) or os.path.exists(p):
                        continue
                    logger.warning(
                        "cannot read %s (a link to %s, which does not exist: a disk not "
                        "mounted?); any images below it are left out",
                        p,
                        os.readlink(p),
                    )
    else:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                try:
                    if e.is_file():
                        names.append(e.path)
                    elif e.is_symlink() and not e.is_dir():
                        # dangling: listed, so reading it names it rather than the image
                        # vanishing without a word (audit KC)
                        names.append(e.path)
                except OSError:  # a link loop (ELOOP): listed, and named when read
                    names.append(e.path)
    unread = [n for n in names if n.lower().endswith(UNREAD_IMAGE_EXTENSIONS)]
    if unread:
        logger.warning(
            "%d image file(s) in %s are not read, e.g. %s: accepted endings are %s; convert "
            "them (e.g. to PNG)",
            len(unread),
            folder,
            os.path.basename(sorted(unread)[0]),
            " ".join(IMAGE_EXTENSIONS),
        )
    return sorted(n for n in names if is_image_file(os.path.basename(n)))


def read_image(path: str | Path) -> Image.Image:
    """Read an image file fully and return it as an RGB ``PIL.Image``.

    Single-channel infrared/thermal images are replicated to three channels, which the
    models' 3-channel normalisation needs. Images of more than 8 bits per pixel (16-bit
    thermal PNG/TIFF, 32-bit integer or float images) are brought to 8 bits by stretching
    each image's own range (minimum to 0, maximum to 255), as thermal crops are usually
    shown; values that already lie in 0..255 are kept as they are. (Pillow's conversion
    clips every value above 255, which turned a radiometric image into flat white.)

    Raises:
        DatasetError: the file is missing, truncated, corrupt or not an image; the
            message names the file.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in a worker
            return as_rgb(img)
    except FileNotFoundError:
        raise DatasetError(
            f"image {path} does not exist; the dataset's file lists name it. Restore the "
            f"file from the release archive or re-create the lists — {SEE_README}"
        ) from None
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
    ) as exc:
        raise DatasetError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); expected a readable "
            f"JPEG/PNG/BMP file. The file is corrupt or truncated: re-extract it from the "
            f"release archive — {SEE_README}"
        ) from exc


def as_rgb(img: Image.Image) -> Image.Image:
    """A decoded image as 8-bit RGB, as :func:`read_image` reads its file: images of more
    than 8 bits a channel stretched over their own range (:func:`_to_8bit`), not clipped."""
    if img.mode in _WIDE_MODES:
        return _to_8bit(img).convert("RGB")
    return img.convert("RGB")


def _to_8bit(img: Image.Image) -> Image.Image:
    """A single-channel image of more than 8 bits as an 8-bit ("L") image: its values as
    they are when they lie in 0..255 (integers), else its range stretched to 0..255.
    Non-finite pixels of a float image (a thermal camera's dead or saturated pixels) take
    the highest finite value for +inf and the lowest for NaN and -inf, so one of them
    does not turn the whole image black."""
    a = np.asarray(img, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.all():  # audit NH: NaN made min/max NaN and the image all zeros
        low, high = (a[finite].min(), a[finite].max()) if finite.any() else (0.0, 0.0)
        a = np.where(np.isposinf(a), high, np.where(finite, a, low))
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    integral = img.mode != "F" or bool(np.all(a == np.round(a)))
    if not (lo >= 0 and hi <= 255 and integral):
        a = (a - lo) * 255.0 / (hi - lo) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), mode="L")
