"""LLCM (Zhang & Wang, CVPR 2023 "DEEN"), read from the raw release folder.

Layout and protocol follow notes/eval_datasets.md §1.3 and notes/salcr_reference.md
§1.4: 1,064 identities from 9 cameras, each shooting visible (VIS) by day and near-
infrared (NIR) by night, so **camera numbers are shared across modalities**
(visible cam 4 and infrared cam 4 are the same camera).

- train: ``idx/train_vis.txt`` and ``idx/train_nir.txt``, lines
  ``<relative path> <label>``; the pid is the label, as released; the camera is read
  from the path: a folder named ``cam<N>``, else a file-name field ``c<N>`` (release
  names look like ``0001_c01_s185535_f7010_nir.jpg``), else 0 (unknown, logged);
- test: the ids of ``idx/test_id.txt`` (one comma-separated line), every image of
  ``test_vis/cam<N>/<pid %04d>/`` and ``test_nir/cam<N>/<pid %04d>/`` for the cameras of
  DEEN's fixed lists (:data:`TEST_FOLDERS`: visible 1-9, infrared 1, 2, 4-9); the release's
  ``test_nir/cam3`` is empty (ZYK100/LLCM #12). Images in a camera folder outside those
  lists are left out, with a warning naming the folder, because the protocol's query set
  and sampled gallery are DEEN's only over DEEN's folders.

Pids and cameras come from path components, never from the text after the first
"cam" in a path (the reference loaders' way, which breaks on a root such as
``/data/camera/LLCM``).
"""

from __future__ import annotations

import logging
import os
import re

from uvireid.data.base import (
    IdList,
    VIDataset,
    every_fifth,
    read_id_file,
    read_index_file,
    require_file,
    require_listed_files,
    require_root,
)
from uvireid.data.images import SEE_README, list_images
from uvireid.errors import DatasetError
from uvireid.registry import DATASETS
from uvireid.types import INFRARED, MODALITY_NAMES, VISIBLE, ImageRecord

logger = logging.getLogger(__name__)

#: test folder -> (modality, the cameras DEEN's test lists read); images in other camN
#: folders (e.g. a filled ``test_nir/cam3``) are left out with a warning, as DEEN leaves them
TEST_FOLDERS = {
    "test_vis": (VISIBLE, (1, 2, 3, 4, 5, 6, 7, 8, 9)),
    "test_nir": (INFRARED, (1, 2, 4, 5, 6, 7, 8, 9)),
}
TRAIN_LISTS = {"idx/train_vis.txt": VISIBLE, "idx/train_nir.txt": INFRARED}

LAYOUT = """\
LLCM/
  idx/
    train_vis.txt  train_nir.txt           lines '<relative path> <label>', e.g.
                                           'vis/0001/0001_c01_s185535_f7010_vis.jpg 1'
    test_id.txt                            one line of comma-separated test pids
  test_vis/cam1 .. cam9/<pid as 4 digits>/<files>
  test_nir/cam1 cam2 cam4 .. cam9/<pid as 4 digits>/<files>    (cam3 is empty)"""

_CAM_FOLDER = re.compile(r"cam(\d+)")
_CAM_FIELD = re.compile(r"c(\d+)")


def camera_from_path(relpath: str) -> int:
    """Camera number of a train image from its path components (0 when none is found).

    A folder named ``cam<N>`` wins (the nearest to the file); otherwise an
    underscore-separated field ``c<N>`` of the file name (``0001_c01_s1_f2_vis.jpg``).
    """
    parts = relpath.replace("\\", "/").split("/")
    for part in reversed(parts[:-1]):
        m = _CAM_FOLDER.fullmatch(part)
        if m:
            return int(m.group(1))
    stem = os.path.splitext(parts[-1])[0]
    for field in stem.split("_"):
        m = _CAM_FIELD.fullmatch(field)
        if m:
            return int(m.group(1))
    return 0


@DATASETS.register("llcm")
class LLCM(VIDataset):
    """LLCM: 1,064 identities (713 train / 351 test), 9 cameras, VIS and NIR.

    Args:
        root: the release folder, holding ``idx/``, ``test_vis/``, ``test_nir/`` and the
            training images the ``idx`` lists name.
        verify: check that every listed training image exists and that every camera of
            the release (see :data:`TEST_FOLDERS`) has a non-empty test folder.
        validation: train on four fifths of the training ids and test on the training
            images of the rest (:func:`~uvireid.data.base.every_fifth`: 142 of 713 in the
            release) with the LLCM protocols: a split to choose settings on without
            looking at the test identities (LLCM releases none). Its results read as
            validation results everywhere.
    """

    name = "llcm"
    title = "LLCM"
    layout = LAYOUT
    PROTOCOLS = ("llcm-v2i", "llcm-i2v", "llcm-v2i-deen")

    def __init__(
        self, root: str | os.PathLike[str], *, verify: bool = True, validation: bool = False
    ):
        super().__init__(root)
        self.check_validation(self.title, validation)
        require_root(self.root, self.title, LAYOUT)
        unknown_cam = 0
        for relpath, modality in TRAIN_LISTS.items():
            listfile = require_file(self.root, relpath, self.title, LAYOUT)
            entries = read_index_file(listfile, self.root)
            if not entries:
                raise DatasetError(
                    f"{listfile} lists no images; expected lines '<relative path> <label>'. "
                    f"Restore it from the release — {SEE_README}"
                )
            if verify:
                require_listed_files((p for p, _ in entries), listfile)
            for path, label in entries:
                cam = camera_from_path(os.path.relpath(path, self.root))
                unknown_cam += cam == 0
                self.train.append(ImageRecord(path=path, pid=label, cam=cam, modality=modality))
        if unknown_cam:
            logger.warning(
                "%s: %d train images have no camera in their path (no cam<N> folder, no "
                "c<N> file-name field); their camera is 0",
                self.title,
                unknown_cam,
            )
        test_ids = read_id_file(require_file(self.root, "idx/test_id.txt", self.title, LAYOUT))
        self.declared_ids = {"test": IdList(tuple(test_ids), "idx/test_id.txt")}
        for folder, (modality, release_cams) in TEST_FOLDERS.items():
            self.test.extend(self._test_records(folder, modality, release_cams, test_ids, verify))
        self.test.sort(key=lambda r: r.path)
        self._warn_missing_ids()
        if validation:
            lists = "idx/train_vis.txt + idx/train_nir.txt"
            self.hold_out(
                every_fifth(r.pid for r in self.train),
                f"every fifth id of {lists}",
                f"{lists} less every fifth id",
            )

    def _test_records(
        self,
        folder: str,
        modality: int,
        release_cams: tuple[int, ...],
        pids: list[int],
        verify: bool,
    ) -> list[ImageRecord]:
        top = os.path.join(self.root, folder)
        if not os.path.isdir(top):
            raise DatasetError(
                f"{self.title} root {self.root} has no {folder}/ (looked for {top}); expected "
                f"the official layout:\n{LAYOUT}\nExtract the test images from the release "
                f"— {SEE_README}"
            )
        cams: dict[int, str] = {}
        with os.scandir(top) as entries:
            found = sorted(
                (e.name, e.path) for e in entries if _CAM_FOLDER.fullmatch(e.name) and e.is_dir()
            )
        for name, path in found:
            cam = int(_CAM_FOLDER.fullmatch(name).group(1))
            if cam in cams:  # audit NH: the folder listed last won, by directory order
                raise DatasetError(
                    f"{self.title}: {folder}/ has two folders of camera {cam} "
                    f"({os.path.basename(cams[cam])}/ and {name}/); keep one (the release "
                    f"names them cam1..cam9) — {SEE_README}"
                )
            cams[cam] = path
        out: list[ImageRecord] = []
        for cam in sorted(set(cams) | set(release_cams)):
            camdir = cams.get(cam, os.path.join(top, f"cam{cam}"))
            records = [
                ImageRecord(path=path, pid=pid, cam=cam, modality=modality)
                for pid in pids
                for path in list_images(os.path.join(camdir, f"{pid:04d}"))
            ]
            if cam not in release_cams:
                if records:
                    logger.warning(
                        "%s: %d test images in %s are left out: DEEN's test lists read %s/"
                        "cam%s only, and the LLCM protocols are DEEN's over those folders",
                        self.title,
                        len(records),
                        camdir,
                        folder,
                        ",".join(map(str, release_cams)),
                    )
                continue
            if verify and cam in release_cams and not records:
                what = "does not exist" if cam not in cams else "holds no images of the test ids"
                raise DatasetError(
                    f"{self.title} {MODALITY_NAMES[modality]} test camera folder {camdir} "
                    f"{what}; expected <pid as 4 digits>/<files> for the ids of "
                    f"idx/test_id.txt, as in the official layout:\n{LAYOUT}\n"
                    f"Re-extract {folder}/cam{cam} from the release — {SEE_README}"
                )
            out.extend(records)
        return out
