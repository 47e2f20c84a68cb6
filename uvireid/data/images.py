"""Finding and reading image files, with errors that name the file.

Every loader lists images through :func:`list_images` (so "what counts as an image" is
decided in one place) and every reader goes through :func:`read_image` (so a corrupt
file is reported by name instead of as a bare PIL traceback deep inside a DataLoader
worker).
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from uvireid.errors import DatasetError

#: file-name endings (lower case) that count as images; anything else in a folder is ignored
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

SEE_README = 'see README "Datasets"'


def is_image_file(name: str) -> bool:
    """True when ``name`` ends with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str | Path, recursive: bool = False) -> list[str]:
    """Image files in ``folder``, as absolute paths sorted by their full path string.

    Sorting full path strings is what the reference loaders do (``sorted`` over
    ``folder + "/" + name``), so per-folder random draws of the evaluation protocols
    see the same order. Hidden files and non-image files are skipped; a missing folder
    gives an empty list (callers decide whether that is an error).

    Args:
        folder: the folder to list.
        recursive: also list images in sub-folders, at any depth.

    Returns:
        list of N absolute path strings.
    """
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        return []
    out: list[str] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            out.extend(
                os.path.join(dirpath, f)
                for f in filenames
                if is_image_file(f) and not f.startswith(".")
            )
    else:
        with os.scandir(folder) as entries:
            out.extend(
                e.path
                for e in entries
                if is_image_file(e.name) and not e.name.startswith(".") and e.is_file()
            )
    return sorted(out)


def read_image(path: str | Path) -> Image.Image:
    """Read an image file fully and return it as an RGB ``PIL.Image``.

    Single-channel infrared/thermal images are replicated to three channels, which the
    models' 3-channel normalisation needs.

    Raises:
        DatasetError: the file is missing, truncated, corrupt or not an image; the
            message names the file.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in a worker
            return img.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(
            f"image {path} does not exist; the dataset's file lists name it. Restore the "
            f"file from the release archive or re-create the lists — {SEE_README}"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); expected a readable "
            f"JPEG/PNG/BMP file. The file is corrupt or truncated: re-extract it from the "
            f"release archive — {SEE_README}"
        ) from exc
