"""RegDB (Nguyen et al., Sensors 2017), read through its ``idx/`` split lists.

Layout and protocol follow notes/eval_datasets.md §1.2 and notes/salcr_reference.md
§1.2: 412 identities, each with 10 visible and 10 thermal images from one dual camera;
ten random 206/206 identity splits ("trials") ``t = 1..10``, each described by four
lists ``idx/{train,test}_{visible,thermal}_{t}.txt`` with lines
``<path relative to the root> <label>``.

- the pid of a record is the list's label, as released;
- camera numbers: visible = 1, thermal = 2 (the peers set 0 for both; two numbers
  keep camera-aware code meaningful);
- thermal images have modality :data:`~uvireid.types.INFRARED`;
- records keep the list order, visible list first, then thermal.

Split ``t``'s test lists go with the model trained on split ``t`` (DESIGN.md).
"""

from __future__ import annotations

import glob
import os
import re

from uvireid.data.base import (
    VIDataset,
    every_fifth,
    listing,
    read_index_file,
    require_file,
    require_listed_files,
    require_root,
)
from uvireid.data.images import SEE_README
from uvireid.errors import ConfigError, DatasetError
from uvireid.registry import DATASETS
from uvireid.types import INFRARED, VISIBLE, ImageRecord

VISIBLE_CAM = 1
THERMAL_CAM = 2

LAYOUT = """\
RegDB/
  Visible/<pid>/<file>.bmp       visible images (the idx lists give the exact paths)
  Thermal/<pid>/<file>.bmp       thermal images
  idx/                           t = 1..10, lines '<relative path> <label>'
    train_visible_{t}.txt  train_thermal_{t}.txt
    test_visible_{t}.txt   test_thermal_{t}.txt"""

#: (split name, list kind, modality, camera) of the four lists of a trial
_LISTS = (
    ("train", "visible", VISIBLE, VISIBLE_CAM),
    ("train", "thermal", INFRARED, THERMAL_CAM),
    ("test", "visible", VISIBLE, VISIBLE_CAM),
    ("test", "thermal", INFRARED, THERMAL_CAM),
)


def available_splits(root: str) -> list[int]:
    """Trial numbers ``t`` for which ``root/idx/train_visible_{t}.txt`` exists."""
    out = []
    for path in glob.glob(os.path.join(glob.escape(root), "idx", "train_visible_*.txt")):
        m = re.fullmatch(r"train_visible_(\d+)\.txt", os.path.basename(path))
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


@DATASETS.register("regdb")
class RegDB(VIDataset):
    """RegDB: 412 identities, one visible and one thermal camera, 10 trial splits.

    Args:
        root: the release folder, holding ``idx/`` and the image folders.
        split: the trial ``t`` (1..10 in the release) whose four lists are read.
        verify: check that every listed image file exists (a missing one is a
            :class:`DatasetError` listing the first few).
        validation: train on four fifths of the trial's training ids and test on the
            rest (:func:`~uvireid.data.base.every_fifth`: 41 of 206 in the release), as
            two-modality queries and galleries of the RegDB protocols: a split to choose
            settings on without looking at the test identities (RegDB releases none).
            Its results read as validation results everywhere.
    """

    name = "regdb"
    title = "RegDB"
    layout = LAYOUT
    PROTOCOLS = ("regdb-v2i", "regdb-i2v")
    #: the trial splits present at a root (``uvireid data check --split all`` reads it)
    available_splits = staticmethod(available_splits)

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        split: int = 1,
        verify: bool = True,
        validation: bool = False,
    ):
        super().__init__(root)
        self.check_validation(self.title, validation)
        if isinstance(split, bool) or not isinstance(split, int) or split < 1:
            raise ConfigError(
                f"RegDB split must be a trial number 1..10, got {split!r}; "
                f"set data.split=1 (uvireid data check: --split 1)"
            )
        require_root(self.root, self.title, LAYOUT)
        self.split = split
        found = available_splits(self.root)
        hint = (
            f"Splits found in idx/: {', '.join(map(str, found))}; pick one of them with "
            f"data.split=N (uvireid data check: --split N), or copy the missing list from the "
            f"release"
            if found
            else "Copy the idx/ lists from the release"
        )
        for split_name, kind, modality, cam in _LISTS:
            relpath = f"idx/{split_name}_{kind}_{split}.txt"
            listfile = require_file(self.root, relpath, self.title, LAYOUT, hint=hint)
            entries = read_index_file(listfile, self.root)
            if not entries:
                raise DatasetError(
                    f"{listfile} lists no images; expected lines '<relative path> <label>' "
                    f"such as 'Visible/1/img.bmp 0'. Restore it from the release — {SEE_README}"
                )
            if verify:
                require_listed_files((p for p, _ in entries), listfile)
            getattr(self, split_name).extend(
                ImageRecord(path=p, pid=label, cam=cam, modality=modality) for p, label in entries
            )
        if validation:
            lists = f"idx/train_*_{split}.txt"
            self.hold_out(
                every_fifth(r.pid for r in self.train),
                f"every fifth id of {lists}",
                f"{lists} less every fifth id",
            )

    def consistency_problems(self) -> list[str]:
        """Each trial lists the same identities in its visible and thermal lists."""
        problems = []
        for split, records in self.splits().items():
            vis = {r.pid for r in records if r.modality == VISIBLE}
            ir = {r.pid for r in records if r.modality == INFRARED}
            if vis != ir:
                problems.append(
                    f"{split} split {self.split}: the visible and thermal lists name different "
                    f"identities (only visible: {listing(sorted(vis - ir)) or '-'}; only "
                    f"thermal: {listing(sorted(ir - vis)) or '-'}); expected every identity in "
                    f"both, as the dual camera captures both"
                )
        return problems
