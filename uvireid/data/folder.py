"""Your own visible and infrared images, one sub-folder per camera; no labels needed.

Layout::

    ROOT/
      visible/<camera>/.../*.jpg|png|bmp     any depth below the camera folder
      infrared/<camera>/.../*.jpg|png|bmp

With ``with_ids=True`` one identity level is read below the camera folder:
``ROOT/<modality>/<camera>/<pid>/<image>`` with integer ``<pid>`` folder names.

**Camera numbers.** The camera folder names of both modalities together are sorted in
natural order (``cam2`` before ``cam10``) and numbered 1, 2, 3, ...; a name that
appears under both ``visible/`` and ``infrared/`` is one camera with one number (as in
LLCM, where one camera shoots visible by day and infrared by night). So
``visible/{a,b}`` and ``infrared/{b,c}`` give a=1, b=2 (both modalities), c=3.
:attr:`FolderDataset.camera_names` maps the numbers back to names.

Every image is a training image (pid -1 unless ``with_ids``); ``test`` is empty and
there are no evaluation protocols.
"""

from __future__ import annotations

import logging
import os
import re

from uvireid.data.base import VIDataset, listing, require_root
from uvireid.data.images import SEE_README, list_images
from uvireid.errors import DatasetError
from uvireid.registry import DATASETS
from uvireid.types import INFRARED, MODALITY_NAMES, VISIBLE, ImageRecord

logger = logging.getLogger(__name__)

LAYOUT = """\
ROOT/
  visible/<camera>/.../<image>.jpg     one folder per camera, any depth below it
  infrared/<camera>/.../<image>.jpg
  (with_ids=True: <modality>/<camera>/<integer pid>/<image>.jpg)"""


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``cam2`` < ``cam10``."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _subfolders(folder: str) -> list[str]:
    """The sub-folders of ``folder`` (linked ones too), hidden ones left out.

    Raises:
        DatasetError: a link among them whose target does not exist (a disk not mounted):
            left out, its images would be lost without a word and every camera after it
            renumbered (audit OG).
    """
    with os.scandir(folder) as entries:
        found = [e for e in entries if not e.name.startswith(".")]
    for e in found:
        if e.is_symlink() and not os.path.exists(e.path):
            if re.fullmatch(r"\.[A-Za-z]+", os.path.splitext(e.name)[1]):
                # README.txt, labels.json: named as a file, never a camera (review OR)
                logger.warning("%s is a link to a missing file; left out", e.path)
                continue
            raise DatasetError(
                f"{e.path} is a link to {os.readlink(e.path)}, which does not exist (a disk "
                f"not mounted?); mount it, or remove the link: a folder left out would lose "
                f"its images and renumber the cameras after it"
            )
    return sorted(e.name for e in found if e.is_dir())


@DATASETS.register("folder")
class FolderDataset(VIDataset):
    """Unlabelled visible and infrared images laid out as ``ROOT/<modality>/<camera>/``.

    Args:
        root: the folder holding ``visible/`` and ``infrared/``.
        with_ids: read an identity folder level ``<camera>/<pid>/`` (integer names) and
            use it as the pid; otherwise every pid is -1.

    Attributes:
        camera_names: camera number -> camera folder name.
    """

    name = "folder"
    title = "folder dataset"
    layout = LAYOUT
    PROTOCOLS = ()

    def __init__(self, root: str | os.PathLike[str], *, with_ids: bool = False):
        super().__init__(root)
        require_root(self.root, self.title, LAYOUT)
        cam_dirs: dict[int, list[str]] = {}
        for modality in (VISIBLE, INFRARED):
            top = os.path.join(self.root, MODALITY_NAMES[modality])
            if not os.path.isdir(top):
                raise DatasetError(
                    f"{self.title} root {self.root} has no {MODALITY_NAMES[modality]}/ folder "
                    f"(looked for {top}); expected both modalities, laid out as:\n{LAYOUT}\n"
                    f"Create it with one sub-folder per camera — {SEE_README}"
                )
            loose = list_images(top)
            if loose:
                raise DatasetError(
                    f"{top} holds images directly ({listing(loose)}); expected them in one "
                    f"sub-folder per camera, e.g. {top}/cam1/. Move them into camera folders "
                    f"— {SEE_README}"
                )
            cam_dirs[modality] = _subfolders(top)
        names = sorted(set(cam_dirs[VISIBLE]) | set(cam_dirs[INFRARED]), key=natural_key)
        number = {name: i for i, name in enumerate(names, start=1)}
        self.camera_names: dict[int, str] = {i: name for name, i in number.items()}
        real: dict[str, str] = {}
        for modality, cams in cam_dirs.items():  # one folder linked as two cameras (audit OG)
            for cam_name in cams:
                camdir = os.path.join(self.root, MODALITY_NAMES[modality], cam_name)
                other = real.setdefault(os.path.realpath(camdir), camdir)
                if other != camdir:
                    raise DatasetError(
                        f"{camdir} and {other} are one folder ({os.path.realpath(camdir)}): "
                        f"its images would be read twice, as two cameras; remove one of them"
                    )
        for modality, cams in cam_dirs.items():
            top = os.path.join(self.root, MODALITY_NAMES[modality])
            for cam_name in cams:
                camdir = os.path.join(top, cam_name)
                records = self._camera_records(camdir, number[cam_name], modality, with_ids)
                if not records:
                    logger.warning("%s: camera folder %s holds no images", self.title, camdir)
                self.train.extend(records)
        self.train.sort(key=lambda r: r.path)
        for modality in (VISIBLE, INFRARED):
            if not any(r.modality == modality for r in self.train):
                mod = MODALITY_NAMES[modality]
                raise DatasetError(
                    f"{self.title} root {self.root} has no {mod} images (found none under "
                    f"{os.path.join(self.root, mod)}); expected images of both modalities, "
                    f"laid out as:\n{LAYOUT}\nAdd {mod} images in camera sub-folders "
                    f"— {SEE_README}"
                )

    @staticmethod
    def _camera_records(camdir: str, cam: int, modality: int, with_ids: bool) -> list[ImageRecord]:
        if not with_ids:
            return [
                ImageRecord(path=p, pid=-1, cam=cam, modality=modality)
                # a linked sub-folder (a second recording day on another disk) is read,
                # not skipped without a word (audit KC); each real folder once
                for p in list_images(camdir, recursive=True, follow_links=True)
            ]
        loose = list_images(camdir)
        if loose:
            raise DatasetError(
                f"{camdir} holds images directly ({listing(loose)}); with_ids=True expects "
                f"<camera>/<integer pid>/<image>. Move them into identity folders, or open the "
                f"dataset with with_ids=False — {SEE_README}"
            )
        out, named = [], {}
        for pid_name in _subfolders(camdir):
            if not (pid_name.isascii() and pid_name.isdigit()):  # '³' would pass isdigit
                raise DatasetError(
                    f"identity folder {os.path.join(camdir, pid_name)} is not an integer; "
                    f"with_ids=True expects <camera>/<integer pid>/<image>. Rename it, or open "
                    f"the dataset with with_ids=False — {SEE_README}"
                )
            first = named.setdefault(int(pid_name), pid_name)
            if first != pid_name:  # '1' and '01' (audit OG: merged without a word)
                raise DatasetError(
                    f"identity folders {first} and {pid_name} in {camdir} are both pid "
                    f"{int(pid_name)}; merge them into one folder, or rename one"
                )
            out.extend(
                ImageRecord(path=p, pid=int(pid_name), cam=cam, modality=modality)
                for p in list_images(
                    os.path.join(camdir, pid_name), recursive=True, follow_links=True
                )
            )
        return out
