"""What every dataset exposes, and the helpers the loaders share.

A dataset is opened from its raw release folder: construction lists files (it never
decodes an image) and checks the layout, raising :class:`~uvireid.errors.DatasetError`
with the expected layout when something is missing. Every dataset then offers:

- ``train`` / ``test``: lists of :class:`~uvireid.types.ImageRecord` (absolute paths,
  pids and camera numbers as in the release, modality ``VISIBLE``/``INFRARED``);
- ``protocols``: the evaluation protocol names it supports;
- ``meta()``, ``stats()``, ``fingerprint()``: small JSON-ready dicts for logs, for
  ``uvireid data check`` and for run manifests;
- ``declared_ids``: the identities its split files list (used to find identities that
  have no image at all).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from uvireid.data.images import SEE_README
from uvireid.errors import DatasetError
from uvireid.types import INFRARED, MODALITY_NAMES, VISIBLE, ImageRecord

#: an integer as the release's text files write one: ASCII digits, an optional minus
#: (``str.isdigit`` also takes '³', which ``int`` refuses: audit GD, session 24)
INTEGER = re.compile(r"-?[0-9]+")

__all__ = [
    "SEE_README",
    "IdList",
    "VIDataset",
    "join_relpath",
    "listing",
    "read_id_file",
    "read_index_file",
    "require_file",
    "as_root",
    "every_fifth",
    "require_root",
    "require_listed_files",
    "summarize",
]

#: at most this many items are listed in an error message ("... and 37 more")
MAX_LISTED = 5

logger = logging.getLogger(__name__)


def listing(items: Sequence[Any], limit: int = MAX_LISTED) -> str:
    """``"a, b, c and 4 more"``: the first ``limit`` items of a long list."""
    shown = ", ".join(str(x) for x in items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


@dataclass(frozen=True)
class IdList:
    """The identities a split file declares.

    Attributes:
        ids: sorted pids, as written in the file.
        source: the file(s) they were read from, relative to the dataset root.
    """

    ids: tuple[int, ...]
    source: str


def as_root(root: object, title: str) -> str:
    """``root`` as an absolute path (``~`` expanded; symbolic links kept), else a
    :class:`DatasetError`: a recipe's ``data.root=123`` or a list is not a folder."""
    if not isinstance(root, (str, os.PathLike)):
        raise DatasetError(
            f"{title} root must be a folder path, got {type(root).__name__} {root!r}; "
            "set data.root=/path/to/the/dataset"
        )
    text = os.fspath(root)
    if not str(text).strip():  # abspath("") is the current folder (audit MC)
        raise DatasetError(
            f"{title} root is empty; set data.root=/path/to/the/dataset ('.' for the "
            "current folder)"
        )
    return os.path.abspath(os.path.expanduser(text))


def require_root(root: str, title: str, layout: str) -> None:
    """Raise :class:`DatasetError` when ``root`` is not an existing folder."""
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise DatasetError(
            f"{title} root {root} {what}; expected a folder laid out as:\n{layout}\n"
            f"Pass the folder that holds these entries — {SEE_README}"
        )


def require_file(root: str, relpath: str, title: str, layout: str, hint: str = "") -> str:
    """Absolute path of ``root/relpath``; a :class:`DatasetError` when it is missing.

    ``hint`` replaces the default fix ("Copy the split files from the release").
    """
    path = os.path.join(root, relpath)
    if not os.path.isfile(path):
        fix = hint or "Copy the split files from the release"
        found = _root_nearby(root, relpath)
        other = _other_dataset(root, title)
        if len(found) == 1:  # the commonest mistake: the root one level too high or too low
            fix = f"It is at {os.path.join(found[0], relpath)}: set data.root={found[0]}"
        elif found:
            fix = (
                f"It is in {len(found)} folders next to it ({', '.join(found)}): set "
                f"data.root to the one you mean"
            )
        elif other:  # a folder of another dataset given as this one
            fix = (
                f"{root} holds {other[1]}, as {other[0]} does: if it is {other[0]}, set "
                f"data.type={other[2]}"
            )
        raise DatasetError(
            f"{title} root {root} has no {relpath} (looked for {path}); expected the "
            f"official layout:\n{layout}\n{fix} — {SEE_README}"
        )
    return path


def _root_nearby(root: str, relpath: str) -> list[str]:
    """The folders next to ``root`` (its sub-folders, and its parent) that hold
    ``relpath``."""
    try:
        subs = sorted(e.path for e in os.scandir(root) if e.is_dir())
    except OSError:
        subs = []
    parent = os.path.dirname(os.path.abspath(root))
    return [d for d in [*subs, parent] if os.path.isfile(os.path.join(d, relpath))]


#: (title, index file, data.type) of each real dataset: a folder holding one of the index
#: files given as another dataset is said to be that one
_INDEX_FILES = (
    ("SYSU-MM01", "exp/train_id.txt", "sysu"),
    ("LLCM", "idx/train_vis.txt", "llcm"),
    ("RegDB", "idx/train_visible_1.txt", "regdb"),
)


def _other_dataset(root: str, title: str) -> tuple[str, str, str] | None:
    """``(title, index file, data.type)`` of the other dataset ``root`` looks like."""
    for entry in _INDEX_FILES:
        if entry[0] != title and os.path.isfile(os.path.join(root, entry[1])):
            return entry
    return None


def read_text(path: str, what: str) -> str:
    """A split or index file's text: UTF-8, with or without the byte-order mark Windows
    editors write (it used to stay in the first entry: "non-integer entries (1)").

    Raises:
        DatasetError: the file is not UTF-8 text (UTF-16 from PowerShell's ``>``, GBK),
            naming it and the fix.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save "
            f"it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8, or your editor's 'UTF-8' "
            f"encoding) or restore it from the release — {SEE_README}"
        ) from None


def read_id_file(path: str) -> list[int]:
    """Identities in a split file such as SYSU-MM01's ``exp/test_id.txt``.

    The release writes one line of comma-separated integers without zero padding
    (``6,10,17,...``); commas, spaces and line breaks are all accepted as separators.

    Returns:
        sorted list of distinct pids.
    """
    text = read_text(path, "split file")
    tokens = [t for t in text.replace(",", " ").split() if t]
    bad = [t for t in tokens if not INTEGER.fullmatch(t)]
    if bad:
        raise DatasetError(
            # ascii(): an invisible character pasted in (a zero-width space) shows (audit KC)
            f"split file {path} holds non-integer entries "
            f"({listing([t if t.isascii() else ascii(t) for t in bad])}); expected one "
            f"line of comma-separated identity numbers such as 6,10,17. Restore the file "
            f"from the release — {SEE_README}"
        )
    if not tokens:
        raise DatasetError(
            f"split file {path} is empty; expected comma-separated identity numbers such "
            f"as 6,10,17. Restore the file from the release — {SEE_README}"
        )
    return sorted({int(t) for t in tokens})


def join_relpath(root: str, relpath: str) -> str:
    """``root/relpath`` as a normalised absolute path (a leading ``/`` or ``./`` is
    ignored; Windows ``\\`` separators, from lists written on Windows, read as ``/``)."""
    relpath = relpath.replace("\\", "/")
    return os.path.normpath(os.path.join(root, relpath.lstrip("/")))


def read_index_file(path: str, root: str) -> list[tuple[str, int]]:
    """Lines ``<relative path> <label>`` of an index file (RegDB ``idx/``, LLCM ``idx/``).

    The label is the last whitespace-separated field, so paths containing spaces work
    (the reference loaders split on the first space and break on them). Blank lines are
    skipped.

    Returns:
        list of (absolute image path, label) in file order.
    """
    out: list[tuple[str, int]] = []
    for lineno, raw in enumerate(read_text(path, "index file").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not INTEGER.fullmatch(parts[1]):
            raise DatasetError(
                f"index file {path} line {lineno} reads {line!r}; expected "
                f"'<relative image path> <integer label>', e.g. "
                f"'Visible/1/img.bmp 0'. Restore the file from the release — {SEE_README}"
            )
        out.append((join_relpath(root, parts[0]), int(parts[1])))
    twice = listed_twice(p for p, _ in out)
    if twice:  # each copy would be a record: drawn twice as often, a duplicate gallery entry
        logger.warning(
            "index file %s lists %d image(s) more than once, e.g. %s; each copy is read as "
            "one more image (uvireid data check reports them); restore the file from the "
            "release",
            path,
            len(twice),
            twice[0],
        )
    return out


def listed_twice(paths: Iterable[str]) -> list[str]:
    """The paths that occur more than once, sorted (an index list concatenated twice)."""
    return sorted(p for p, c in Counter(paths).items() if c > 1)


def require_listed_files(paths: Iterable[str], listfile: str) -> None:
    """Raise :class:`DatasetError` naming the first few ``paths`` that do not exist."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetError(
            f"{len(missing)} image(s) listed in {listfile} do not exist: {listing(missing)}; "
            f"expected every listed path (relative to the dataset root) to be an image file. "
            f"Pass the dataset root the list was written for, or restore the images "
            f"— {SEE_README}"
        )


def _count(records: Sequence[ImageRecord]) -> dict[str, int]:
    return {"ids": len({r.pid for r in records if r.pid >= 0}), "images": len(records)}


def summarize(records: Sequence[ImageRecord]) -> dict[str, Any]:
    """Identity and image counts of ``records``, overall, per modality and per camera.

    ``ids`` counts distinct pids >= 0 (unlabelled images, pid -1, count as images only).

    Returns:
        ``{"ids", "images", "visible": {"ids", "images"}, "infrared": {...},
        "cameras": [{"cam", "modality", "ids", "images"}, ...]}`` with cameras sorted by
        (camera number, modality).
    """
    out: dict[str, Any] = _count(records)
    for mod in (VISIBLE, INFRARED):
        out[MODALITY_NAMES[mod]] = _count([r for r in records if r.modality == mod])
    groups: dict[tuple[int, int], list[ImageRecord]] = {}
    for r in records:
        groups.setdefault((r.cam, r.modality), []).append(r)
    out["cameras"] = [
        {"cam": cam, "modality": MODALITY_NAMES[mod], **_count(groups[(cam, mod)])}
        for cam, mod in sorted(groups)
    ]
    return out


def every_fifth(ids: Iterable[int]) -> list[int]:
    """The validation ids of a dataset without a released validation split (RegDB, LLCM):
    every fifth of its training ids in ascending order (the 5th, the 10th, ...), a fifth
    of them, spread over the id range, the same on every machine."""
    return sorted(set(ids))[4::5]


class VIDataset:
    """Base class of the visible-infrared datasets (see the module docstring).

    Subclasses set :attr:`name` (the registry name), :attr:`title` (the release's name),
    ``PROTOCOLS`` and, in ``__init__``, fill :attr:`train`, :attr:`test` and
    :attr:`declared_ids`.

    Attributes:
        root: absolute path of the dataset folder (symbolic links are kept as given).
        split: the split in use (RegDB trial number) or ``None`` for a fixed split.
        train: training images, visible and infrared.
        test: every test image; protocols choose queries and galleries from them.
        declared_ids: split name -> :class:`IdList` for splits defined by id files.
    """

    name = "dataset"
    title = "dataset"
    #: the release's folder layout, quoted by the errors about a missing root or file
    layout = ""
    PROTOCOLS: tuple[str, ...] = ()

    @classmethod
    def check_args(
        cls, root: str | os.PathLike[str] | None = None, validation: bool = False, **kwargs: Any
    ) -> None:
        """What ``uvireid run --dry-run`` checks of this dataset's keywords without reading
        it: here, that ``root`` is a folder and ``validation`` (where the dataset takes
        it: :meth:`hold_out`) a boolean. Subclasses add their own keyword checks.

        Raises:
            DatasetError: naming the problem and the fix.
        """
        cls.check_validation(cls.title, validation)
        if root is not None:
            require_root(as_root(root, cls.title), cls.title, cls.layout)

    def __init__(self, root: str | os.PathLike[str]):
        self.root = as_root(root, self.title)
        self.split: int | None = None
        self.train: list[ImageRecord] = []
        self.test: list[ImageRecord] = []
        self.declared_ids: dict[str, IdList] = {}
        #: test on held-out training ids (:meth:`hold_out`) instead of the test set
        self.validation = False
        self.validation_source: str | None = None
        self._release: tuple | None = None

    @staticmethod
    def check_validation(title: str, validation: Any) -> None:
        """``validation`` (the ``data.validation`` key) is a boolean."""
        if not isinstance(validation, bool):
            raise DatasetError(f"{title}: validation must be true or false, got {validation!r}")

    def hold_out(self, held: Iterable[int], source: str, train_source: str) -> None:
        """Make this dataset its validation split: train on the training ids outside
        ``held`` and test on the training images of ``held`` (``source`` says where those
        ids come from, e.g. ``exp/val_id.txt``; ``train_source`` where the others do).
        Its results then read as validation results everywhere, and a model that trained
        on these ids is refused on them. The release's arrangement stays available as
        :meth:`release`."""
        held = set(held)
        self._release = (self.train, self.test, self.declared_ids)
        declared = self.declared_ids.get("train")
        train_ids = set(declared.ids) if declared else {r.pid for r in self.train}
        self.test = [r for r in self.train if r.pid in held]
        self.train = [r for r in self.train if r.pid not in held]
        self.declared_ids = {
            "train": IdList(tuple(sorted(train_ids - held)), train_source),
            "test": IdList(tuple(sorted(held)), f"{source} (validation)"),
        }
        self.validation = True
        self.validation_source = source

    def release(self) -> VIDataset:
        """This dataset in the release's arrangement (the test set as released): itself,
        or a copy of a validation split's (what ``data check`` and a run's check against
        the official figures count)."""
        if self._release is None:
            return self
        import copy

        out = copy.copy(self)
        out.train, out.test, out.declared_ids = self._release
        out.validation, out._release = False, None
        return out

    @property
    def protocols(self) -> list[str]:
        """Names of the evaluation protocols this dataset supports."""
        return list(self.PROTOCOLS)

    def splits(self) -> dict[str, list[ImageRecord]]:
        """``{"train": train, "test": test}``."""
        return {"train": self.train, "test": self.test}

    def missing_ids(self) -> dict[str, list[int]]:
        """Per split, the declared identities that have no image in any camera."""
        out: dict[str, list[int]] = {}
        for split, declared in self.declared_ids.items():
            present = {r.pid for r in self.splits().get(split, [])}
            missing = [pid for pid in declared.ids if pid not in present]
            if missing:
                out[split] = missing
        return out

    def _warn_missing_ids(self) -> None:
        """Log the declared identities that have no image (``data check`` reports them)."""
        for split, missing in self.missing_ids().items():
            logger.warning(
                "%s: %d of the %s identities listed in %s have no image in any camera: %s",
                self.title,
                len(missing),
                split,
                self.declared_ids[split].source,
                listing(missing),
            )

    def consistency_problems(self) -> list[str]:
        """Dataset-specific consistency problems for ``uvireid data check`` (none here)."""
        return []

    def meta(self) -> dict[str, Any]:
        """Dataset name, root, split, protocols and per-split counts."""
        out: dict[str, Any] = {
            "dataset": self.name,
            "title": self.title,
            "root": self.root,
            "split": self.split,
            "protocols": self.protocols,
        }
        if self.validation:
            out["validation"] = True
            if self.validation_source:
                out["validation_ids"] = self.validation_source
        for split, records in self.splits().items():
            c = summarize(records)
            out[f"{split}_ids"] = c["ids"]
            out[f"{split}_images"] = c["images"]
            out[f"{split}_visible"] = c["visible"]["images"]
            out[f"{split}_infrared"] = c["infrared"]["images"]
        return out

    def stats(self) -> dict[str, dict[str, Any]]:
        """``{split: summarize(records)}`` for train and test (see :func:`summarize`)."""
        return {split: summarize(records) for split, records in self.splits().items()}

    def fingerprint(self) -> dict[str, Any]:
        """Counts and a SHA-1 that identify exactly which files a run used.

        The hash covers the sorted lines ``"<split>\\t<path relative to root>"`` (paths
        with ``/`` separators), so it does not depend on where the dataset is mounted,
        and two RegDB trials over the same images still differ. File contents are not
        read.
        """
        lines = sorted(
            f"{split}\t{os.path.relpath(r.path, self.root).replace(os.sep, '/')}"
            for split, records in self.splits().items()
            for r in records
        )
        out: dict[str, Any] = {"dataset": self.name, "split": self.split}
        if self.validation:
            out["validation"] = True
        for split, records in self.splits().items():
            c = _count(records)
            out[f"{split}_ids"] = c["ids"]
            out[f"{split}_images"] = c["images"]
        # surrogateescape: a file name that is not UTF-8 (a zip made with GBK names)
        # hashes as its bytes instead of stopping every run with a UnicodeEncodeError
        out["sha1"] = hashlib.sha1("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
        return out

    def __repr__(self) -> str:
        split = f", split={self.split}" if self.split is not None else ""
        return (
            f"{type(self).__name__}(root={self.root!r}{split}; "
            f"train={len(self.train)} images, test={len(self.test)} images)"
        )
