"""Tiny dataset folders in the real release layouts, for tests and examples.

Each builder writes real (decodable) images of a few pixels, so loaders, ``read_image``
and ``uvireid data check`` can be exercised in milliseconds::

    from uvireid.data.fixtures import make_sysu_tree
    root = make_sysu_tree(tmp_path / "SYSU-MM01", ids=12)
    ds = SYSUMM01(root)

Visible images are RGB; infrared images are single-channel ("L"), as some releases
store them, so readers must convert. Everything is seeded.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image

#: (width, height) of fixture images
IMAGE_SIZE = (4, 8)


def _id_list(ids: int | Sequence[int]) -> list[int]:
    return list(range(1, ids + 1)) if isinstance(ids, int) else sorted(ids)


def write_image(path: str | Path, rng: random.Random, gray: bool = False) -> None:
    """Write a tiny image (format from the file-name ending): a random colour, brighter
    towards the right and with a random texture, so that a flip or a resize changes its
    pixels (an image of one colour would let a test of either pass whatever they did)."""
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    w, h = IMAGE_SIZE
    channels = 1 if gray else 3
    base = [rng.randrange(40, 176) for _ in range(channels)]
    pixels = [
        tuple(min(255, b + 20 * x + rng.randrange(24)) for b in base)
        for y in range(h)
        for x in range(w)
    ]
    img = Image.new("L" if gray else "RGB", IMAGE_SIZE)
    img.putdata([p[0] for p in pixels] if gray else pixels)
    img.save(path)


def make_sysu_tree(
    root: str | Path,
    ids: int | Sequence[int] = 12,
    cams: Iterable[int] = (1, 2, 3, 4, 5, 6),
    images_per: int = 2,
    *,
    test_ids: Sequence[int] | None = None,
    val_ids: Sequence[int] | None = None,
    skip: Iterable[tuple[int, int]] = (),
    seed: int = 0,
) -> Path:
    """A SYSU-MM01 release folder: ``cam<C>/<pid %04d>/<k %04d>.jpg`` and ``exp/*.txt``.

    Args:
        root: folder to create (or fill).
        ids: how many identities (pids 1..n) or the pids themselves.
        cams: camera folders to create (1, 2, 4, 5 visible; 3, 6 infrared).
        images_per: images per (camera, identity) folder, named 0001.jpg, 0002.jpg, ...
        test_ids: pids of ``exp/test_id.txt``; default every third pid (3rd, 6th, ...).
        val_ids: pids of ``exp/val_id.txt``; default every fourth non-test pid.
        skip: (camera, pid) folders not to create, as not every person meets every camera.
        seed: colour seed.

    Returns:
        ``root`` as a Path. ``exp/train_id.txt`` holds the remaining pids.
    """
    root = Path(root)
    pids = _id_list(ids)
    test = sorted(test_ids) if test_ids is not None else pids[2::3]
    rest = [p for p in pids if p not in set(test)]
    val = sorted(val_ids) if val_ids is not None else rest[3::4]
    train = [p for p in rest if p not in set(val)]
    (root / "exp").mkdir(parents=True, exist_ok=True)
    for stem, values in (("train_id", train), ("val_id", val), ("test_id", test)):
        (root / "exp" / f"{stem}.txt").write_text(",".join(map(str, values)) + "\n")
    rng = random.Random(seed)
    skipped = set(skip)
    for cam in cams:
        (root / f"cam{cam}").mkdir(parents=True, exist_ok=True)
        for pid in pids:
            if (cam, pid) in skipped:
                continue
            for k in range(1, images_per + 1):
                write_image(root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.jpg", rng, cam in (3, 6))
    return root


def make_regdb_tree(
    root: str | Path,
    ids: int = 8,
    images_per: int = 2,
    *,
    splits: Iterable[int] = (1,),
    seed: int = 0,
) -> Path:
    """A RegDB release folder: ``Visible/<pid>/``, ``Thermal/<pid>/`` (.bmp) and ``idx/``.

    Each split ``t`` draws a random half of the identities for training (seeded by
    ``seed + t``) and writes the four lists ``idx/{train,test}_{visible,thermal}_{t}.txt``
    with lines ``<relative path> <label>``. As in the release's training lists, labels
    are the position of the pid in the split's sorted id list (0..K-1), in training and
    test lists alike, so train and test labels overlap as numbers.

    Args:
        root: folder to create (or fill).
        ids: number of identities (pids 1..n; n even).
        images_per: images per identity and modality.
        splits: the trial numbers to write lists for.
        seed: split and colour seed.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    pids = _id_list(ids)
    rng = random.Random(seed)
    files: dict[tuple[str, int], list[str]] = {}
    for kind, folder, prefix in (("visible", "Visible", "v"), ("thermal", "Thermal", "t")):
        for pid in pids:
            names = [f"{folder}/{pid}/{prefix}_{pid:04d}_{k}.bmp" for k in range(images_per)]
            for name in names:
                write_image(root / name, rng, gray=kind == "thermal")
            files[(kind, pid)] = names
    (root / "idx").mkdir(parents=True, exist_ok=True)
    for t in splits:
        order = pids[:]
        random.Random(seed + t).shuffle(order)
        half = len(order) // 2
        for split, members in (("train", order[:half]), ("test", order[half:])):
            members = sorted(members)
            for kind in ("visible", "thermal"):
                lines = [
                    f"{name} {label}"
                    for label, pid in enumerate(members)
                    for name in files[(kind, pid)]
                ]
                (root / "idx" / f"{split}_{kind}_{t}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_llcm_tree(
    root: str | Path,
    train_ids: int = 4,
    test_ids: int = 3,
    images_per: int = 1,
    *,
    vis_cams: Iterable[int] = (1, 2, 3, 4, 5, 6, 7, 8, 9),
    nir_cams: Iterable[int] = (1, 2, 4, 5, 6, 7, 8, 9),
    seed: int = 0,
) -> Path:
    """An LLCM release folder: ``vis/``, ``nir/`` train images, ``idx/``, ``test_*/``.

    Train images are ``{vis,nir}/<pid %04d>/<pid %04d>_c<cam %02d>_s<n>_f<k>_{vis,nir}.jpg``
    for every camera of ``vis_cams`` / ``nir_cams``, listed in ``idx/train_vis.txt`` and
    ``idx/train_nir.txt`` with the pid as label. Test ids follow the train ids; test
    images are ``test_{vis,nir}/cam<C>/<pid %04d>/<k>.jpg``. As in the release,
    ``test_nir/cam3`` exists and is empty when 3 is not in ``nir_cams``.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    rng = random.Random(seed)
    train = list(range(1, train_ids + 1))
    test = list(range(train_ids + 1, train_ids + test_ids + 1))
    modalities = (("vis", list(vis_cams), False), ("nir", list(nir_cams), True))
    (root / "idx").mkdir(parents=True, exist_ok=True)
    serial = 0
    for mod, cams, gray in modalities:
        lines = []
        for pid in train:
            for cam in cams:
                for k in range(images_per):
                    serial += 1
                    rel = f"{mod}/{pid:04d}/{pid:04d}_c{cam:02d}_s{serial:06d}_f{k:04d}_{mod}.jpg"
                    write_image(root / rel, rng, gray)
                    lines.append(f"{rel} {pid}")
        (root / "idx" / f"train_{mod}.txt").write_text("\n".join(lines) + "\n")
    (root / "idx" / "test_id.txt").write_text(",".join(map(str, test)) + "\n")
    for mod, cams, gray in modalities:
        for cam in sorted(set(cams) | {3}):
            camdir = root / f"test_{mod}" / f"cam{cam}"
            camdir.mkdir(parents=True, exist_ok=True)
            if cam not in cams:
                continue
            for pid in test:
                for k in range(images_per):
                    write_image(camdir / f"{pid:04d}" / f"{k + 1:04d}.jpg", rng, gray)
    return root


def make_folder_tree(
    root: str | Path,
    visible: dict[str, int] | None = None,
    infrared: dict[str, int] | None = None,
    *,
    seed: int = 0,
) -> Path:
    """A folder dataset ``ROOT/{visible,infrared}/<camera>/<k>.png``.

    Args:
        visible: camera name -> number of images; default ``{"cam1": 2, "cam2": 2}``.
        infrared: camera name -> number of images; default ``{"cam2": 2, "ir3": 2}``.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    rng = random.Random(seed)
    visible = {"cam1": 2, "cam2": 2} if visible is None else visible
    infrared = {"cam2": 2, "ir3": 2} if infrared is None else infrared
    for mod, cams in (("visible", visible), ("infrared", infrared)):
        (root / mod).mkdir(parents=True, exist_ok=True)
        for cam, n in cams.items():
            (root / mod / cam).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                write_image(root / mod / cam / f"{k:04d}.png", rng, gray=mod == "infrared")
    return root


def example_kwargs(name: str, root: str | Path) -> dict | None:
    """Keywords that build the built-in dataset ``name`` on a tiny tree made under ``root``.

    Used by the registry-wide parts test; returns None for a dataset it does not know
    (a plugin's dataset).
    """
    root = Path(root)
    if name == "sysu":
        return {"root": str(make_sysu_tree(root / "sysu"))}
    if name == "regdb":
        return {"root": str(make_regdb_tree(root / "regdb"))}
    if name == "llcm":
        return {"root": str(make_llcm_tree(root / "llcm"))}
    if name == "folder":
        return {"root": str(make_folder_tree(root / "folder"))}
    if name == "synthetic":
        return {"root": str(root / "synthetic"), "ids": 8}
    return None
