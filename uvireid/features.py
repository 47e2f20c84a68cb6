"""The features file: test-set features and labels, so protocols run without a model.

A features file is an ``.npz`` (written by :func:`save_features`, read by
:func:`load_features`) holding, for N images::

    feats     (N, d) float     one feature vector per image (L2-normalised by convention)
    pids      (N,)   int       ground-truth identity
    cams      (N,)   int       camera number as in the dataset release (SYSU-MM01: 1..6)
    modality  (N,)   int       0 = visible, 1 = infrared (uvireid.types.VISIBLE / INFRARED)
    paths     (N,)   str       optional: image paths (needed by the official SYSU sampler)
    meta      ()     str       optional: a JSON object, e.g. {"dataset": "sysu",
                               "split": "test", "train_split": ..., "feature_head": "global",
                               "produced_by": "uvireid 0.1.0"}

Features from another codebase can be evaluated and re-ranked by exporting these arrays with
``numpy.savez`` (or :func:`save_features`). Every file is checked when read: missing arrays,
arrays of different lengths, non-finite features, modality codes other than 0/1, features
that are not an (N, d) matrix with N, d >= 1 and a path given twice are
:class:`~uvireid.errors.FeatureFileError` naming the file, the problem and the fix; writing
non-finite numbers into the meta is one too, and those of a file written elsewhere
(Python's ``json.dumps`` writes NaN) are read as null, with a warning. (The SYSU-MM01
protocols also check ``cams`` and ``pids`` against SYSU-MM01 paths.)
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from uvireid.errors import FeatureFileError, non_finite_rows
from uvireid.evaluation.metrics import to_numpy
from uvireid.fileio import write_output
from uvireid.types import INFRARED, VISIBLE, FeatureBank

__all__ = [
    "REQUIRED_ARRAYS",
    "OPTIONAL_ARRAYS",
    "Features",
    "features_from_arrays",
    "load_features",
    "save_features",
]

logger = logging.getLogger(__name__)

REQUIRED_ARRAYS = ("feats", "pids", "cams", "modality")
OPTIONAL_ARRAYS = ("paths", "meta")
_FIX = (
    "re-export it with uvireid.save_features(path, feats, pids, cams, modality, paths=..., "
    "**meta) or numpy.savez with the arrays feats (N, d), pids (N,), cams (N,), modality (N,)"
)


@dataclass(frozen=True)
class Features:
    """Features of a test set, with labels and provenance.

    Attributes:
        feats: (N, d) float32/float64 numpy array (integer and float16 features are read
            as float32).
        pids: (N,) int64 identities.
        cams: (N,) int64 camera numbers.
        modality: (N,) int64, 0 visible / 1 infrared.
        paths: (N,) numpy str array of image paths, or ``None``.
        meta: free-form provenance (dataset, split, train_split, feature_head, produced_by, ...).
        source: the file these were read from (``None`` when built in memory).
    """

    feats: np.ndarray
    pids: np.ndarray
    cams: np.ndarray
    modality: np.ndarray
    paths: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.pids)

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        return int(self.feats.shape[1])

    @property
    def has_paths(self) -> bool:
        return self.paths is not None

    def select(self, mask: Any) -> Features:
        """The subset given by a (N,) bool mask or an integer index array (order kept)."""
        idx = np.asarray(mask)
        if idx.size == 0 and idx.dtype != bool:  # [] is float64 to numpy: no rows, not an error
            idx = idx.astype(np.int64)
        if idx.dtype == bool and idx.shape != (len(self),):
            raise FeatureFileError(
                f"select() got a bool mask of shape {idx.shape}; expected ({len(self)},)"
            )
        return replace(
            self,
            feats=self.feats[idx],
            pids=self.pids[idx],
            cams=self.cams[idx],
            modality=self.modality[idx],
            paths=None if self.paths is None else self.paths[idx],
        )

    def of_modality(self, modality: int) -> Features:
        """The images of one modality (``VISIBLE`` or ``INFRARED``)."""
        return self.select(self.modality == modality)

    def to_bank(self) -> FeatureBank:
        """The same data as a :class:`uvireid.types.FeatureBank`."""
        return FeatureBank(
            feats=self.feats,
            modality=self.modality,
            cams=self.cams,
            pids=self.pids,
            paths=None if self.paths is None else [str(p) for p in self.paths],
        )

    def describe(self) -> str:
        """One line: file, size, modalities, ids."""
        nv = int((self.modality == VISIBLE).sum())
        nr = int((self.modality == INFRARED).sum())
        src = str(self.source) if self.source else "<memory>"
        return (
            f"{src}: {len(self)} images x {self.dim}-d ({nv} visible, {nr} infrared), "
            f"{len(np.unique(self.pids))} ids, cams {sorted(np.unique(self.cams).tolist())}"
        )


def _beyond_int64(name: str, where: str, top: object) -> FeatureFileError:
    """The error for labels an int64 cannot hold (converted, they would wrap or merge)."""
    return FeatureFileError(
        f"{where}: '{name}' holds values beyond the 64-bit integer range (up to {top}); "
        f"fix: number them, e.g. {name} = np.unique({name}, return_inverse=True)[1]"
    )


def _as_int(arr: np.ndarray, name: str, where: str) -> np.ndarray:
    if arr.ndim != 1:
        raise FeatureFileError(
            f"{where}: '{name}' has shape {arr.shape}; expected a 1-D (N,) array of integers; "
            f"fix: flatten it ({name}.reshape(-1)) before saving"
        )
    numeric = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr))
    )
    if numeric and arr.size and arr.dtype != np.int64:
        # beyond int64 the conversion wraps (uint64 2**64-1 -> -1, "unknown") or saturates
        # (every float >= 2**63 -> -2**63, one identity): labels silently merged (audit ME)
        if np.issubdtype(arr.dtype, np.unsignedinteger):  # exact: 2**63 - 1 fits (audit MI)
            top = arr.max()
            beyond = int(top) > np.iinfo(np.int64).max
        else:
            top = np.abs(arr).max()
            beyond = np.issubdtype(arr.dtype, np.floating) and float(top) >= 2.0**63
        if beyond:
            raise _beyond_int64(name, where, top)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)):
        if np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
    if arr.dtype == object:  # Python numbers (a pandas nullable column): numbers
        values = arr.tolist()
        if values and all(isinstance(v, int) for v in values):  # bools are ints
            top = max(abs(v) for v in values)
            if top > np.iinfo(np.int64).max:
                raise _beyond_int64(name, where, top)
            return np.asarray(values, dtype=np.int64)
        try:
            numbers = np.asarray(values)
        except (ValueError, TypeError, OverflowError):
            numbers = None
        # outside the try: the check of the numbers (a fraction, a NaN, beyond int64)
        # raises a FeatureFileError, a ValueError, that would be read as "text" (audit PM)
        if numbers is not None and numbers.dtype.kind in "iufb" and numbers.ndim == 1:
            return _as_int(numbers, name, where)
    if arr.dtype.kind in "USO":  # text labels ('0042', 'cam3'): numbering them keeps them apart
        if name == "pids":
            fix = f"number them, e.g. {name} = np.unique({name}, return_inverse=True)[1]"
        elif name == "modality":  # 'visible'/'infrared' got the cameras' fix (audit FE)
            fix = "0 = visible, 1 = infrared, e.g. modality = (modality == 'infrared').astype(int)"
        else:
            fix = "store the numbers they name as integers (e.g. 'cam3' -> 3)"
        raise FeatureFileError(
            f"{where}: '{name}' holds text (dtype {arr.dtype}, e.g. {arr.reshape(-1)[:1].tolist()}); "
            f"expected integer labels; fix: {fix}"
        )
    raise FeatureFileError(
        f"{where}: '{name}' has dtype {arr.dtype} with non-integer values; expected integer "
        f"labels; fix: store {name} as integers (e.g. {name}.astype('int64'))"
    )


def _validated(
    arrays: dict[str, Any], meta: dict, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Check the arrays of a features file; returns (feats, pids, cams, modality, paths)."""
    feats = arrays["feats"]
    if feats.ndim == 1:
        raise FeatureFileError(
            f"{where}: 'feats' is 1-D, shape {feats.shape}: one value per image? Expected the "
            f"(N, d) matrix, one row of d features per image; fix: save the feature matrix "
            f"itself, not a score or a norm per image"
        )
    if feats.ndim != 2:
        raise FeatureFileError(
            f"{where}: 'feats' has shape {feats.shape}; expected a 2-D (N, d) array, one row "
            f"per image; fix: flatten each image's features to one row "
            f"(feats.reshape(len(feats), -1))"
        )
    if not np.issubdtype(feats.dtype, np.floating):
        if np.issubdtype(feats.dtype, np.integer):
            feats = feats.astype(np.float32)
        else:
            fix = (
                "feats.astype('float32')"
                if feats.dtype == bool
                else "save the real-valued (N, d) feature matrix (float32 or float64)"
            )
            raise FeatureFileError(
                f"{where}: 'feats' has dtype {feats.dtype}; expected float32 or float64; fix: {fix}"
            )
    elif feats.dtype.itemsize < 4:
        # float16 (as mixed-precision extraction writes): numpy has no float16 product (100x
        # slower) and its distances overflow at |f|^2 > 65504, so the plain ranking would be
        # wrong where the re-rankers (which compute in float32) are right; float32 holds
        # every float16 exactly
        feats = feats.astype(np.float32)
    elif feats.dtype.itemsize > 8:
        # long double (float128): torch has no such dtype, and the class documents
        # float32/float64 (audit ME)
        feats = feats.astype(np.float64)
    if feats.shape[0] == 0:
        raise FeatureFileError(f"{where}: holds no image (feats has 0 rows); {_FIX}")
    if feats.shape[1] == 0:
        raise FeatureFileError(
            f"{where}: 'feats' has {feats.shape[0]} rows of 0 features (shape {feats.shape}); "
            f"expected (N, d) with d >= 1; fix: check the extraction's output"
        )
    pids = _as_int(arrays["pids"], "pids", where)
    cams = _as_int(arrays["cams"], "cams", where)
    modality = _as_int(arrays["modality"], "modality", where)
    paths = arrays.get("paths")
    if paths is not None:
        if paths.dtype.kind == "S":  # bytes, as numpy.savez of encoded names or h5py give
            # as the file system decodes them: a Latin-1 name is kept (and told apart
            # from another), not replaced by U+FFFD (audit ME)
            paths = np.asarray([_bytes_path(bytes(b)) for b in paths.tolist()])
        elif paths.dtype == object:
            paths = np.asarray([_path_text(p) for p in paths.tolist()])
        if paths.ndim != 1 or not np.issubdtype(paths.dtype, np.str_):
            raise FeatureFileError(
                f"{where}: 'paths' has shape {paths.shape} and dtype {paths.dtype}; expected a "
                f"1-D array of N strings; fix: pass paths as a list of str"
            )
    n = feats.shape[0]
    lengths = {"feats": n, "pids": len(pids), "cams": len(cams), "modality": len(modality)}
    if paths is not None:
        lengths["paths"] = len(paths)
    bad = {k: v for k, v in lengths.items() if v != n}
    if bad:
        listing = ", ".join(f"{k} has {v}" for k, v in lengths.items())
        others = {v for k, v in lengths.items() if k != "feats"}
        transposed = (
            f"; feats is ({n}, {feats.shape[1]}) and the labels have {feats.shape[1]} "
            f"entries: transposed? (save feats.T)"
            if others == {feats.shape[1]} and n != feats.shape[1]
            else ""
        )
        raise FeatureFileError(
            f"{where}: arrays of mismatched length: {listing} (feats has {n} rows); "
            f"{', '.join(bad)} must have one entry per image, in the order of feats' rows"
            f"{transposed}"
        )
    if paths is not None and len(paths):
        named = paths[~np.isin(paths, ["", "None", "nan", "NaN"])]  # no path given
        uniq, count = np.unique(named, return_counts=True)
        if (count > 1).any():
            twice = uniq[count > 1]
            raise FeatureFileError(
                f"{where}: {int((count - 1).sum())} row(s) repeat a path already in the file "
                f"({len(twice)} path(s) more than once, e.g. '{twice[0]}'); each image must "
                f"appear once (a repeated query counts twice in the mean, a repeated gallery "
                f"image changes the ranks); fix: save each image's full path (SYSU-MM01's "
                f"file names repeat across camera and identity folders: cam3/0001/0001.jpg), "
                f"and check for the same features concatenated twice"
            )
    bad = non_finite_rows(feats)
    if bad is not None:
        raise FeatureFileError(
            f"{where}: 'feats' has non-finite values (NaN or inf) in {bad[0]} row(s), e.g. "
            f"rows {bad[1]}; fix: check the extraction (a diverged model gives NaN) "
            f"and re-export"
        )
    odd = sorted(set(np.unique(modality).tolist()) - {VISIBLE, INFRARED})
    if odd:
        raise FeatureFileError(
            f"{where}: 'modality' has values {odd}; expected {VISIBLE} (visible) or "
            f"{INFRARED} (infrared) as in uvireid.types; fix: recode it, e.g. "
            f"modality = (is_infrared).astype(int)"
        )
    if not isinstance(meta, dict):
        raise FeatureFileError(
            f"{where}: 'meta' is a JSON {type(meta).__name__}; expected a JSON object "
            f'such as {{"dataset": "sysu", "split": "test"}}'
        )
    return feats, pids, cams, modality, paths


def identical_rows(feats: Any, rel: float = 1e-5) -> tuple[float, float] | None:
    """``(largest difference from the first row, largest magnitude)`` when every row of the
    (N, d) ``feats`` equals the first within ``rel`` of the largest magnitude (a collapsed
    model: retrieval metrics then measure only how ties are broken); None otherwise, and
    for fewer than two rows, non 2-D or non-finite input (other checks' business)."""
    f = np.asarray(feats)
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] == 0:
        return None
    # in float64 blocks of about 1 MiB: the whole matrix in float64 with its temporaries
    # took 6x the features (+0.5 GB at SYSU-MM01's test size, audit Z2), on every eval
    n, rows = f.shape[0], max(1, (1 << 20) // max(1, 8 * f.shape[1]))
    blocks = [slice(s, s + rows) for s in range(0, n, rows)]
    scale = 0.0
    for b in blocks:
        x = f[b].astype(np.float64)
        if not np.isfinite(x).all():
            return None
        scale = max(scale, float(np.abs(x).max()))
    first, spread = f[0].astype(np.float64), 0.0
    for b in blocks:
        spread = max(spread, float(np.abs(f[b].astype(np.float64) - first).max()))
        if scale > 0.0 and spread > rel * scale:
            return None  # rows differ: found in the first block, as a rule
    return spread, scale


def _checked_arrays(
    feats: Any,
    pids: Any,
    cams: Any,
    modality: Any,
    paths: Sequence[str] | None,
    meta: dict,
    where: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`_validated` of arrays or tensors given one by one (save and in-memory)."""
    arrays: dict[str, Any] = {
        "feats": to_numpy(feats),
        "pids": to_numpy(pids),
        "cams": to_numpy(cams),
        "modality": to_numpy(modality),
    }
    if paths is not None:
        arrays["paths"] = np.asarray([_path_text(p) for p in paths], dtype=str)  # [] too
    return _validated(arrays, meta, where)


def _non_finite(name: str) -> None:
    """``json.loads``'s hook for NaN/Infinity (Python's ``json.dumps`` writes them, and so
    did :func:`save_features` before 2026-11-27): read as null, with a warning, so that
    no non-finite number reaches a provenance (audit FE) and such a file stays readable
    (audit FF)."""
    logger.warning(
        "a features file's meta holds %s (not JSON; Python's json.dumps writes it): read as null",
        name,
    )
    return None


def decode_meta(raw: Any, where: str) -> Any:
    """A features file's ``meta`` as stored (a 0-d or 1-element str array holding JSON, as
    :func:`save_features` writes it), as a JSON string or bytes, already a mapping, or
    None (no meta: ``{}``), decoded. Not a JSON object: returned as decoded, for
    :func:`_validated` to name."""
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        if isinstance(raw, np.ndarray):
            raw = raw[()] if raw.ndim == 0 else raw.reshape(-1)[0]
        if isinstance(raw, (bytes, np.bytes_)):
            raw = bytes(raw).decode("utf-8")
        return json.loads(str(raw), parse_constant=_non_finite)
    except (ValueError, IndexError) as exc:
        raise FeatureFileError(
            f"{where}: 'meta' is not a JSON string ({exc}); expected e.g. "
            f'np.array(json.dumps({{"dataset": "sysu"}})); fix: re-export with '
            f"uvireid.save_features(..., dataset=..., split=...)"
        ) from None


def _bytes_path(raw: bytes) -> str:
    """A file name given as bytes, as the OS decodes it (non-UTF-8 bytes kept as
    surrogates on POSIX); where the OS refuses them (Windows), with U+FFFD for each."""
    try:
        return os.fsdecode(raw)
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace")


def _path_text(p: Any) -> str:
    """An image path as text: ``bytes`` decoded (``str(b"x")`` would store ``"b'x'"``)."""
    if isinstance(p, (bytes, bytearray, np.bytes_)):
        return _bytes_path(bytes(p))
    return os.fsdecode(p) if isinstance(p, os.PathLike) else str(p)


def _meta_json(meta: dict, where: str) -> str:
    """``meta`` as the JSON text a features file stores, else the error naming why."""
    try:
        return json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise FeatureFileError(
            f"{where}: meta is not JSON-serialisable ({exc}); fix: pass plain str/int/float/"
            f"list/dict values as meta keywords (finite numbers: NaN and inf are not JSON)"
        ) from None


def save_features(
    path: str | os.PathLike,
    feats: Any,
    pids: Any,
    cams: Any,
    modality: Any,
    paths: Sequence[str] | None = None,
    **meta: Any,
) -> Path:
    """Write a features file atomically (a temporary file, then ``os.replace``).

    Args:
        path: target file, conventionally ``*.npz`` (written as given).
        feats: (N, d) float array or tensor.
        pids, cams, modality: (N,) integer arrays or tensors; modality 0 visible, 1 infrared.
        paths: optional N image paths.
        **meta: JSON-serialisable provenance stored as the ``meta`` array, e.g.
            ``dataset="sysu", split="test", feature_head="global"``; ``produced_by`` defaults
            to ``"uvireid <version>"``.

    Returns:
        The path written.
    """
    target = Path(path)
    where = f"features file {target} (refusing to write it)"
    from uvireid import __version__

    meta = {"produced_by": f"uvireid {__version__}", **meta}
    meta_json = _meta_json(meta, where)
    feats_a, pids_a, cams_a, mod_a, paths_a = _checked_arrays(
        feats, pids, cams, modality, paths, meta, where
    )
    out = {"feats": feats_a, "pids": pids_a, "cams": cams_a, "modality": mod_a}
    if paths_a is not None:
        out["paths"] = paths_a
    out["meta"] = np.array(meta_json)
    # atomically, or through a link (into a shared folder: it stays a link), a pipe or
    # /dev/fd/N (bash's >(...)) (audits ME, MF)
    write_output(target, lambda fh: np.savez(fh, **out))
    logger.info("wrote %d features (%d-d) to %s", len(pids_a), feats_a.shape[1], target)
    return target


def features_from_arrays(
    feats: Any,
    pids: Any,
    cams: Any,
    modality: Any,
    paths: Sequence[str] | None = None,
    **meta: Any,
) -> Features:
    """A :class:`Features` in memory, checked as :func:`save_features` checks a file (the
    same arrays and errors; numpy arrays or torch tensors)."""
    where = "features (in memory)"
    _meta_json(meta, where)  # what a file would refuse (audit ME)
    f, p, c, m, pa = _checked_arrays(feats, pids, cams, modality, paths, meta, where)
    return Features(feats=f, pids=p, cams=c, modality=m, paths=pa, meta=dict(meta))


def load_features(path: str | os.PathLike) -> Features:
    """Read and check a features file.

    Raises:
        FeatureFileError: the file is missing or unreadable, lacks an array, has arrays of
            mismatched length, non-finite or non 2-D features, or modality codes not in {0, 1}.
    """
    src = Path(path)
    where = f"features file {src}"
    if not src.is_file():
        if src.exists() and not src.is_dir():  # a pipe, `<(...)`: np.load needs to seek
            raise FeatureFileError(
                f"{where} is not a regular file (a pipe or a device); an .npz archive is "
                f"read with seeks; fix: write it to a file first and pass that"
            )
        hint = " (it is a folder)" if src.is_dir() else ""
        raise FeatureFileError(
            f"{where} does not exist{hint}; expected an .npz written by uvireid.save_features "
            f"or `uvireid extract`; fix: check the path"
        )
    if src.stat().st_size == 0:
        raise FeatureFileError(f"{where} is empty (0 bytes): a write that did not finish?; {_FIX}")
    try:
        with open(src, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:  # no read permission (a bare PermissionError before; audit ME)
        raise FeatureFileError(
            f"{where} cannot be read ({exc.strerror or exc}); fix: check its permissions "
            f"(ls -l), or copy it somewhere readable"
        ) from None
    if not magic.startswith(b"PK") and magic != b"\x93NUMPY":
        # np.load would take it for a pickle and advise allow_pickle=True
        raise FeatureFileError(
            f"{where} is not an .npz archive (it starts with {magic!r}, not a zip file's "
            f"'PK'); {_FIX}"
        )
    try:
        npz = np.load(src, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FeatureFileError(
            f"{where} is not a readable .npz archive ({type(exc).__name__}: {exc}); {_FIX}"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise FeatureFileError(f"{where} holds a single array, not an .npz archive; {_FIX}")
    with npz:
        names = set(npz.files)
        missing = [k for k in REQUIRED_ARRAYS if k not in names]
        if missing:
            have = ", ".join(sorted(names)) or "nothing"
            if "modality" in missing and "cams" in names:
                # the array another codebase's test loop has no name for: on SYSU-MM01 the
                # cameras give it (cam3 and cam6 are the infrared ones)
                have += (
                    "; the modality of SYSU-MM01 follows from its cameras: modality = "
                    "np.isin(cams, [3, 6]).astype(int)"
                )
            raise FeatureFileError(
                f"{where} has no array {', '.join(repr(m) for m in missing)}; expected arrays "
                f"{', '.join(REQUIRED_ARRAYS)} (+ optional {', '.join(OPTIONAL_ARRAYS)}); "
                f"it has: {have}; fix: {_FIX}"
            )
        arrays: dict[str, Any] = {}
        for name in (*REQUIRED_ARRAYS, "paths", "meta"):
            if name not in names:
                continue
            try:
                arrays[name] = npz[name]
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                # a flipped bit or a cut copy: the zip's CRC is checked only as the array
                # is read (a bare BadZipFile before; audit ME)
                raise FeatureFileError(
                    f"{where}: array '{name}' is corrupted ({type(exc).__name__}: {exc}); "
                    f"the file was damaged in a copy or a download?; fix: copy or export it "
                    f"again"
                ) from None
            except ValueError as exc:  # object arrays need pickle, which is refused
                how = (
                    "store the meta as a JSON string: np.savez(..., meta=json.dumps({...}))"
                    if name == "meta"  # a dict, the likeliest way to get here (audit FE)
                    else "store it as a plain numeric or str array"
                )
                raise FeatureFileError(
                    f"{where}: array '{name}' cannot be read without pickle ({exc}); {how}; "
                    f"fix: {_FIX}"
                ) from None
            if not isinstance(arrays[name], np.ndarray):
                # numpy hands back a member that is no .npy array (a CSV zipped as
                # feats.npy, a damaged header) as its raw bytes (audit ME)
                raise FeatureFileError(
                    f"{where}: '{name}' is not a numpy array (.npy) inside the archive; fix: {_FIX}"
                )
    meta = decode_meta(arrays.pop("meta", None), where)
    feats, pids, cams, modality, paths = _validated(arrays, meta, where)
    return Features(feats, pids, cams, modality, paths, meta, src)
