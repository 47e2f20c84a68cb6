"""SYSU-MM01 (Wu et al., ICCV 2017), read straight from the raw release folder.

Layout, split files and camera roles follow notes/eval_datasets.md §1.1 and
notes/salcr_reference.md §1.1:

- cameras 1, 2, 4, 5 are visible (RGB) and 3, 6 infrared;
- ``exp/{train,val,test}_id.txt`` hold one line of comma-separated pids; identity
  folders are the pid formatted ``%04d``;
- **train = the ids of train_id.txt ∪ val_id.txt** (296 + 99 = 395 in the release), as
  in every peer codebase (mangye16 ``pre_process_sysu.py``, SALCR, PGM, ...): the
  validation ids are trained on and there is no validation split;
- test = the ids of test_id.txt, every image of all six cameras; the protocols
  (``sysu-all``, ``sysu-indoor``) pick the infrared queries and visible galleries.

Pids and cameras come from the folder structure (``cam<C>/<pid>/``), never from
character positions in a path, so a data root containing "cam" is harmless. A
(camera, id) folder that does not exist is skipped (not every person is seen by every
camera). Records are sorted by their full path string, as the reference loaders sort.
"""

from __future__ import annotations

import logging
import os

from uvireid.data.base import (
    IdList,
    VIDataset,
    read_id_file,
    require_file,
    require_root,
)
from uvireid.data.images import SEE_README, list_images
from uvireid.errors import DatasetError
from uvireid.registry import DATASETS
from uvireid.types import INFRARED, VISIBLE, ImageRecord

logger = logging.getLogger(__name__)

VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)
CAMERAS = (1, 2, 3, 4, 5, 6)

LAYOUT = """\
SYSU-MM01/
  cam1/ cam2/ cam4/ cam5/        visible (RGB) cameras
  cam3/ cam6/                    infrared cameras
    0006/0001.jpg ...            <pid as 4 digits>/<image index>.jpg
  exp/
    train_id.txt                 one line of comma-separated pids, e.g. 1,2,4,5
    val_id.txt
    test_id.txt"""


def modality_of_camera(cam: int) -> int:
    """:data:`VISIBLE` for SYSU-MM01 cameras 1, 2, 4, 5 and :data:`INFRARED` for 3, 6."""
    return INFRARED if cam in INFRARED_CAMS else VISIBLE


@DATASETS.register("sysu")
class SYSUMM01(VIDataset):
    """SYSU-MM01: 491 identities, 6 cameras (4 visible, 2 infrared).

    Args:
        root: the release folder, holding ``cam1`` .. ``cam6`` and ``exp/``.
        verify: check that every camera folder exists and holds images of the listed
            identities (a missing or empty camera is a :class:`DatasetError`). With
            ``False`` a missing camera is skipped with a warning.
        validation: train on the ids of ``train_id.txt`` alone and test on those of
            ``val_id.txt`` (99 in the release): a split to choose settings on (a sweep's
            DBSCAN eps, say) without looking at the test identities. Its results are
            marked as validation results everywhere, and a model that trained on the
            validation ids (the usual arrangement) is refused on them.
    """

    name = "sysu"
    title = "SYSU-MM01"
    layout = LAYOUT
    PROTOCOLS = ("sysu-all", "sysu-indoor")

    def __init__(
        self, root: str | os.PathLike[str], *, verify: bool = True, validation: bool = False
    ):
        super().__init__(root)
        SYSUMM01.check_args(None, validation)  # not a subclass's, of other keywords
        require_root(self.root, self.title, LAYOUT)
        ids = {
            stem: read_id_file(require_file(self.root, f"exp/{stem}.txt", self.title, LAYOUT))
            for stem in ("train_id", "val_id", "test_id")
        }
        train_ids = sorted(set(ids["train_id"]) | set(ids["val_id"]))
        self.declared_ids = {
            "train": IdList(tuple(train_ids), "exp/train_id.txt + exp/val_id.txt"),
            "test": IdList(tuple(ids["test_id"]), "exp/test_id.txt"),
        }
        for cam in CAMERAS:
            camdir = os.path.join(self.root, f"cam{cam}")
            if not os.path.isdir(camdir):
                if verify:
                    raise DatasetError(
                        f"{self.title} root {self.root} has no camera folder cam{cam} "
                        f"(looked for {camdir}); expected the official layout:\n{LAYOUT}\n"
                        f"Extract the whole release into this folder — {SEE_README}"
                    )
                logger.warning("%s: no camera folder %s; skipped", self.title, camdir)
                continue
            found = 0
            for split, declared in self.declared_ids.items():
                records = self._camera_records(camdir, cam, declared.ids)
                getattr(self, split).extend(records)
                found += len(records)
            if verify and found == 0:
                pid = train_ids[0] if train_ids else 1
                unpadded = [
                    d
                    for d in os.listdir(camdir)
                    if d.isascii() and d.isdigit() and len(d) < 4 and int(d) > 0
                ]
                fix = (
                    f"Its identity folders are named without zero padding ({unpadded[0]}, "
                    f"not {int(unpadded[0]):04d}): rename them to 4 digits"
                    if unpadded
                    else f"Re-extract cam{cam} from the release"
                )
                raise DatasetError(
                    f"{self.title} camera folder {camdir} holds no images of the identities "
                    f"listed in exp/; expected folders such as {camdir}/{pid:04d}/0001.jpg. "
                    f"{fix} — {SEE_README}"
                )
        self.train.sort(key=lambda r: r.path)
        self.test.sort(key=lambda r: r.path)
        self._warn_missing_ids()
        if validation:
            self.hold_out(ids["val_id"], "exp/val_id.txt", "exp/train_id.txt")

    @staticmethod
    def _camera_records(camdir: str, cam: int, pids: tuple[int, ...]) -> list[ImageRecord]:
        """Images of ``pids`` in one camera folder; absent identity folders are skipped."""
        modality = modality_of_camera(cam)
        return [
            ImageRecord(path=path, pid=pid, cam=cam, modality=modality)
            for pid in pids
            for path in list_images(os.path.join(camdir, f"{pid:04d}"))
        ]
