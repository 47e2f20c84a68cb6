"""Test protocols of SYSU-MM01, RegDB and LLCM on a features file (DESIGN.md "Protocol").

A protocol picks the query and gallery images of a :class:`~uvireid.features.Features`
object per trial, ranks the gallery for each query (``distance = -(q @ g.T)`` on the stored
features, as mangye16 and DEEN do, or a re-ranker's distance), scores it with the reference
metric and averages the trials. The rules follow notes/eval_datasets.md §1 and §2.5:

SYSU-MM01 (``sysu-all``, ``sysu-indoor``)
    query = every infrared image of cameras 3 and 6 (the same set in both modes); gallery =
    visible images of cameras [1, 2, 4, 5] (all-search) or [1, 2] (indoor-search), sampled
    per trial: one image (``shot="single"``) or ten (``"multi"``) per (identity, camera).
    Metric: :func:`~uvireid.evaluation.metrics.eval_sysu`.

    * ``sampler="seeded"``: the mangye16 sampler, exactly. Trial t seeds Python's Mersenne
      Twister (``random.Random(t)``, the same stream as ``random.seed(t)``); identities are
      visited in ascending order and cameras in the order above; every *existing*
      (identity, camera) group draws one ``choice`` over its images sorted by path string
      (absent groups draw nothing). Without paths the images are ordered by their row in the
      file (the provenance says so). Multi-shot, which mangye16 does not have, draws
      ``sample(group, min(10, n))`` from the same stream and keeps the picks in path order.
    * ``sampler="official"``: the dataset authors' ``rand_perm_cam.mat``. The trial-t
      gallery of (camera c, identity p) is the first 1 or 10 entries of row t of
      ``rand_perm_cam{c}{p}``: 1-based image indices naming ``cam{c}/{p:04d}/{idx:04d}.jpg``.
      It needs the image paths, and has 10 trials.

RegDB (``regdb-v2i``, ``regdb-i2v``)
    One features file per test split; query = every test visible image and gallery = every
    test thermal image (``v2i``), or the reverse (``i2v``); no sampling. Several files (one per
    split) are the trials and are averaged. A file whose ``meta`` says the model was trained
    on another split than the test split is refused: that gallery contains training images.
    Metric: :func:`~uvireid.evaluation.metrics.eval_regdb`.

LLCM (``llcm-v2i``, ``llcm-i2v``, ``llcm-v2i-deen``)
    ``v2i`` = every visible image is a query against a sampled infrared gallery; ``i2v`` =
    every infrared image is a query against a sampled visible gallery (DEEN's "IR to VIS"
    branch, its default). The sampled side is drawn with the seeded sampler above over the
    cameras present, ascending. DEEN's own "VIS to IR" branch (``test_mode = [2, 1]`` of
    its ``test.py``) transposes the distance matrix, so its sampled infrared images are the
    queries and every visible image the gallery (notes §1.3, §4.16): that is
    ``llcm-v2i-deen``, whose numbers are the ones comparable with LLCM "VIS to IR" results
    published from DEEN-derived code; ``llcm-v2i`` is the direction its name says.
    Metric: :func:`~uvireid.evaluation.metrics.eval_llcm`.

The mean over trials is the arithmetic mean of the per-trial values (mangye16 ``test.py``);
the standard deviation is the population one (``ddof=0``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from uvireid._suggest import did_you_mean, ordered_by_closeness
from uvireid.errors import ProtocolError
from uvireid.evaluation.metrics import evaluate, to_numpy
from uvireid.features import Features, identical_rows, load_features
from uvireid.types import INFRARED, VISIBLE

__all__ = [
    "METRIC_KEYS",
    "PROTOCOLS",
    "SYSU_GALLERY_CAMS",
    "SYSU_QUERY_CAMS",
    "ProtocolResult",
    "ProtocolSpec",
    "get_protocol",
    "llcm_indices",
    "load_rand_perm",
    "official_gallery",
    "regdb_indices",
    "run_protocol",
    "seeded_gallery",
    "sysu_gallery_indices",
    "sysu_query_indices",
    "trial_indices",
]

logger = logging.getLogger(__name__)

SYSU_QUERY_CAMS = (3, 6)
SYSU_GALLERY_CAMS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
SYSU_VISIBLE_CAMS = (1, 2, 4, 5)
SHOTS = {"single": 1, "multi": 10}
SAMPLERS = ("seeded", "official")
OFFICIAL_TRIALS = 10
METRIC_KEYS = ("R1", "R5", "R10", "R20", "mAP", "mINP")
_MODALITY = {"visible": VISIBLE, "infrared": INFRARED}


def _direction(direction: Any) -> tuple[str, str]:
    """``("visible", "infrared")`` from ``"visible->infrared"``, else a ProtocolError
    naming the two valid directions (``"v2i"`` raised a bare KeyError: audit BF)."""
    parts = str(direction).split("->")
    if len(parts) != 2 or not all(p in _MODALITY for p in parts) or parts[0] == parts[1]:
        raise ProtocolError(
            f"direction {direction!r} is not 'visible->infrared' or 'infrared->visible' "
            f"(the protocols' v2i / i2v)"
        )
    return parts[0], parts[1]


@dataclass(frozen=True)
class ProtocolSpec:
    """What a protocol name means."""

    name: str
    dataset: str  # "sysu" | "regdb" | "llcm"
    dataset_name: str
    mode: str | None  # SYSU "all" / "indoor"
    query_modality: str  # "visible" | "infrared"
    metric: str  # rule passed to metrics.evaluate
    sampled: str = "gallery"  # the side drawn per trial (SYSU, LLCM): "gallery" | "query"

    @property
    def gallery_modality(self) -> str:
        return "visible" if self.query_modality == "infrared" else "infrared"

    @property
    def direction(self) -> str:
        return f"{self.query_modality}->{self.gallery_modality}"


PROTOCOLS: dict[str, ProtocolSpec] = {
    "sysu-all": ProtocolSpec("sysu-all", "sysu", "SYSU-MM01", "all", "infrared", "sysu"),
    "sysu-indoor": ProtocolSpec("sysu-indoor", "sysu", "SYSU-MM01", "indoor", "infrared", "sysu"),
    "regdb-v2i": ProtocolSpec("regdb-v2i", "regdb", "RegDB", None, "visible", "regdb"),
    "regdb-i2v": ProtocolSpec("regdb-i2v", "regdb", "RegDB", None, "infrared", "regdb"),
    "llcm-v2i": ProtocolSpec("llcm-v2i", "llcm", "LLCM", None, "visible", "llcm"),
    "llcm-i2v": ProtocolSpec("llcm-i2v", "llcm", "LLCM", None, "infrared", "llcm"),
    # DEEN's "VIS to IR" as its test.py computes it: sampled infrared queries, visible gallery
    "llcm-v2i-deen": ProtocolSpec(
        "llcm-v2i-deen", "llcm", "LLCM", None, "infrared", "llcm", sampled="query"
    ),
}


def get_protocol(name: str) -> ProtocolSpec:
    """The :class:`ProtocolSpec` of ``name``; an unknown name lists the valid ones."""
    spec = PROTOCOLS.get(name)
    if spec is None:
        valid = ", ".join(ordered_by_closeness(str(name), PROTOCOLS))
        raise ProtocolError(
            f"unknown protocol '{name}'{did_you_mean(str(name), PROTOCOLS) or ';'} valid protocols "
            f"(closest first): {valid}"
        )
    return spec


# -- sampling ---------------------------------------------------------------------------------
def _where(features: Features) -> str:
    return f"features file {features.source}" if features.source else "features (in memory)"


def _shot_count(shot: str) -> int:
    if shot not in SHOTS:
        raise ProtocolError(
            f"unknown shot '{shot}'{did_you_mean(str(shot), SHOTS)}; use 'single' (1 gallery "
            f"image per identity and camera) or 'multi' (10)"
        )
    return SHOTS[shot]


def _groups(
    features: Features, candidates: np.ndarray, cams: Sequence[int], camera_major: bool = False
):
    """Yield ``(pid, cam, rows)`` for every existing group, in sampler order.

    Identities ascending (numerically: mangye16 sorts ``%04d`` strings, the same order
    for ids below 10,000), cameras in the given order within each identity (the mangye16
    and DEEN samplers); with ``camera_major``, cameras outer and identities ascending within each
    (the official kit's ``get_testing_set.m``). ``rows`` (indices into ``features``) sorted by
    path string, or by row when the file has no paths.
    """
    pids = features.pids[candidates]
    gcams = features.cams[candidates]
    ids = np.unique(pids).tolist()
    order = (
        [(p, c) for c in cams for p in ids] if camera_major else [(p, c) for p in ids for c in cams]
    )
    for pid, cam in order:
        rows = candidates[(pids == pid) & (gcams == cam)]
        if len(rows) == 0:
            continue  # an absent (id, camera) folder draws no random number
        if features.paths is not None:
            rows = rows[np.argsort(features.paths[rows], kind="stable")]
        yield pid, cam, rows


def _check_trial(trial: Any) -> int:
    """A trial number: an integer >= 0 (trial -1 read the official file's last row, or
    seeded Python's generator as trial 1; 1.5 was taken or failed inside numpy)."""
    if isinstance(trial, bool) or not isinstance(trial, (int, np.integer)) or trial < 0:
        raise ProtocolError(f"trial must be an integer >= 0 (0..trials-1), got {trial!r}")
    return int(trial)


def seeded_gallery(
    features: Features,
    candidates: np.ndarray,
    cams: Sequence[int],
    trial: int,
    shot: str = "single",
) -> np.ndarray:
    """The mangye16 seeded gallery sample of one trial (notes/eval_datasets.md §1.1).

    Args:
        features: the test set.
        candidates: (M,) indices of the images the gallery may use.
        cams: camera numbers in visiting order.
        trial: seed of ``random.Random`` (equivalent to ``random.seed(trial)``).
        shot: ``"single"`` (one ``choice`` per group) or ``"multi"`` (``sample`` of
            ``min(10, n)``, kept in path order).

    Returns:
        (G,) int64 indices into ``features``, group by group in visiting order.
    """
    trial = _check_trial(trial)
    n_shot = _shot_count(shot)
    rng = random.Random(trial)
    chosen: list[int] = []
    for _pid, _cam, rows in _groups(features, candidates, cams):
        group = rows.tolist()
        if n_shot == 1:
            chosen.append(rng.choice(group))
        else:
            picked = rng.sample(range(len(group)), min(n_shot, len(group)))
            chosen.extend(group[i] for i in sorted(picked))
    return np.asarray(chosen, dtype=np.int64)


@lru_cache(maxsize=4)
def _load_rand_perm_cached(path: str, mtime: float) -> dict[tuple[int, int], np.ndarray]:
    import scipy.io

    where = f"official permutation file {path}"
    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types for a bad file
        raise ProtocolError(
            f"{where} cannot be read as a MATLAB file ({type(exc).__name__}: {exc}); expected "
            f"rand_perm_cam.mat of the SYSU-MM01 evaluation kit (exp/rand_perm_cam.mat)"
        ) from None
    if "rand_perm_cam" not in mat:
        have = ", ".join(k for k in mat if not k.startswith("__"))
        raise ProtocolError(
            f"{where} has no variable 'rand_perm_cam' (it has: {have}); expected the SYSU-MM01 "
            f"kit's rand_perm_cam.mat"
        )
    cells = mat["rand_perm_cam"]
    perms: dict[tuple[int, int], np.ndarray] = {}
    for cam_index in range(cells.size):
        per_pid = cells.reshape(-1)[cam_index]
        per_pid = per_pid.reshape(-1) if isinstance(per_pid, np.ndarray) else []
        for pid_index, entry in enumerate(per_pid):
            arr = np.asarray(entry)
            if arr.size == 0:
                continue
            perms[(cam_index + 1, pid_index + 1)] = np.atleast_2d(arr).astype(np.int64)
    if not perms:
        raise ProtocolError(f"{where}: rand_perm_cam holds no permutation")
    return perms


def load_rand_perm(perm_file: str | os.PathLike) -> dict[tuple[int, int], np.ndarray]:
    """Read SYSU-MM01's ``rand_perm_cam.mat``.

    The file holds a 6 x 1 cell array (one per camera) of cells indexed by identity: for
    camera c and identity p, ``rand_perm_cam{c}{p}`` is a (trials, n) array whose rows are
    permutations of the 1-based image indices 1..n of folder ``cam{c}/{p:04d}/``.

    Returns:
        ``{(cam, pid): (trials, n) int64}`` for every non-empty entry.
    """
    path = Path(perm_file)
    if not path.is_file():
        raise ProtocolError(
            f"official permutation file {path} does not exist; it ships with SYSU-MM01 as "
            f"exp/rand_perm_cam.mat; fix: pass perm_file=<root>/exp/rand_perm_cam.mat"
        )
    return _load_rand_perm_cached(str(path.resolve()), path.stat().st_mtime)


def _path_key(path: str) -> str:
    """``cam{c}/{pid}/{idx}`` from the last three components of an image path (no suffix)."""
    parts = PurePosixPath(str(path).replace("\\", "/")).parts[-3:]
    if len(parts) < 3:
        return str(path)
    return f"{parts[0]}/{parts[1]}/{PurePosixPath(parts[2]).stem}"


def official_gallery(
    features: Features,
    candidates: np.ndarray,
    cams: Sequence[int],
    trial: int,
    shot: str,
    perm_file: str | os.PathLike,
) -> np.ndarray:
    """The SYSU-MM01 official gallery of one trial from ``rand_perm_cam.mat``.

    For every camera (in order) and identity (ascending), the official kit's order
    (``get_testing_set.m``: camera outer, so that a stable sort breaks distance ties as its
    MATLAB ``sort`` does), the gallery takes the images named ``cam{c}/{p:04d}/{idx:04d}``
    for ``idx`` in the first 1 or 10 entries of row ``trial`` (0-based; MATLAB row
    ``trial + 1``) of ``rand_perm_cam{c}{p}``, in permutation order.

    Returns:
        (G,) int64 indices into ``features``.
    """
    trial = _check_trial(trial)
    n_shot = _shot_count(shot)
    where = _where(features)
    if features.paths is None:
        raise ProtocolError(
            f"{where} has no 'paths'; the official SYSU-MM01 sampler picks images by file name "
            f"(cam{{c}}/{{pid:04d}}/{{idx:04d}}.jpg); fix: export the features with paths="
            f"[image paths], or use sampler='seeded'"
        )
    perms = load_rand_perm(perm_file)
    chosen: list[int] = []
    missing: list[str] = []
    pids = features.pids[candidates]
    for pid in np.unique(features.pids).tolist():  # every test id of the file
        have_cams = set(features.cams[candidates[pids == pid]].tolist())
        for cam in cams:
            if (cam, pid) in perms and cam not in have_cams:
                raise ProtocolError(
                    f"{where} has no visible image of identity {pid} in camera {cam}, but the "
                    f"official gallery samples from cam{cam}/{pid:04d}; the features must hold "
                    f"every test image; fix: re-extract the full test set"
                )
    for pid, cam, rows in _groups(features, candidates, cams, camera_major=True):
        perm = perms.get((cam, pid))
        if perm is None:
            raise ProtocolError(
                f"{where} has images of identity {pid} in camera {cam}, but {perm_file} has no "
                f"permutation for cam{cam}/{pid:04d}; is this SYSU-MM01's test set with its "
                f"original identity numbers?"
            )
        if trial >= perm.shape[0]:
            raise ProtocolError(
                f"{perm_file} has {perm.shape[0]} trials for cam{cam}/{pid:04d}; trial {trial} "
                f"does not exist; use trials <= {perm.shape[0]} with the official sampler"
            )
        by_name = {_path_key(features.paths[r]): int(r) for r in rows}
        for idx in perm[trial, :n_shot].tolist():
            name = f"cam{cam}/{pid:04d}/{idx:04d}"
            if name in by_name:
                chosen.append(by_name[name])
            else:
                missing.append(name)
    if missing:
        raise ProtocolError(
            f"{where}: {len(missing)} image(s) the official gallery of trial {trial} needs are "
            f"not in the file's paths (by their last three path components), e.g. "
            f"{', '.join(missing[:5])}; the paths must end in cam<c>/<pid:04d>/<idx:04d>.jpg "
            f"as in the SYSU-MM01 release"
        )
    return np.asarray(chosen, dtype=np.int64)


_SYSU_PATH = re.compile(r"(?:^|/)cam([1-6])/(\d+)/[^/]+$")


def _check_sysu_paths(features: Features, where: str) -> None:
    """Where the paths are SYSU-MM01's (``.../cam{c}/{pid}/{file}``), the cams must be the
    paths' cameras and the pids one-to-one with the paths' identities (a test set may be
    relabelled, consistently). Labels parsed off by a character position gave plausible
    figures: R1 63 instead of 98 for shifted pids (audit AR, session 18)."""
    if features.paths is None or not len(features.paths):
        return
    rows, path_cam, path_pid = [], [], []
    for i, p in enumerate(features.paths):
        m = _SYSU_PATH.search(str(p).replace("\\", "/"))
        if m:
            rows.append(i)
            path_cam.append(int(m.group(1)))
            path_pid.append(int(m.group(2)))
    if not rows:
        return
    rows_a = np.asarray(rows)
    cams, pids = np.asarray(features.cams)[rows_a], np.asarray(features.pids)[rows_a]
    bad = np.flatnonzero(cams != np.asarray(path_cam))
    if len(bad):
        i = rows[bad[0]]
        raise ProtocolError(
            f"{where}: {len(bad)} image(s) have a camera that contradicts their path, e.g. row "
            f"{i} ({features.paths[i]}) has cams {int(features.cams[i])}; SYSU-MM01's cameras "
            f"decide the gallery (and the cam-3 exclusion); fix the cams array (the number in "
            f"the path's camN folder)"
        )
    pairs = np.unique(np.stack([np.asarray(path_pid), pids]), axis=1)
    for side, name in ((0, "path identity"), (1, "pid")):
        values, count = np.unique(pairs[side], return_counts=True)
        if (count > 1).any():
            v = int(values[count > 1][0])
            other = pairs[1 - side][pairs[side] == v].tolist()
            raise ProtocolError(
                f"{where}: the pids do not follow the images' identity folders: {name} {v} "
                f"goes with {'pids' if side == 0 else 'identity folders'} {other[:5]}; each "
                f"identity folder must have one pid (renumbered or not); fix the pids array "
                f"(the number of the path's identity folder)"
            )


def _check_sysu(features: Features) -> None:
    where = _where(features)
    odd = sorted(set(np.unique(features.cams).tolist()) - set(range(1, 7)))
    if odd:
        raise ProtocolError(
            f"{where} has camera numbers {odd}; SYSU-MM01 cameras are 1..6; is this a SYSU-MM01 "
            f"features file, and are cams stored as in the release (cam1..cam6)?"
        )
    ir_cam = np.isin(features.cams, SYSU_QUERY_CAMS)
    wrong = (ir_cam & (features.modality != INFRARED)) | (~ir_cam & (features.modality == INFRARED))
    if wrong.any():
        raise ProtocolError(
            f"{where}: {int(wrong.sum())} image(s) have a modality that contradicts their "
            f"camera (SYSU-MM01 cameras 3 and 6 are infrared, 1, 2, 4, 5 visible); fix the "
            f"modality array (0 visible, 1 infrared)"
        )


def sysu_query_indices(features: Features) -> np.ndarray:
    """(Q,) indices of the SYSU-MM01 queries: every infrared image of cameras 3 and 6.
    Checks the file once for a protocol run: the labels against the paths here (about
    50 ms at SYSU-MM01's test size), not again for each trial's gallery."""
    _check_sysu(features)
    _check_sysu_paths(features, _where(features))
    idx = np.flatnonzero((features.modality == INFRARED) & np.isin(features.cams, SYSU_QUERY_CAMS))
    if len(idx) == 0:
        raise ProtocolError(
            f"{_where(features)} has no infrared image of cameras 3 or 6, so SYSU-MM01 has no "
            f"query; fix: extract the features of the whole test set (both modalities)"
        )
    return idx


def sysu_gallery_indices(
    features: Features,
    mode: str = "all",
    trial: int = 0,
    shot: str = "single",
    sampler: str = "seeded",
    perm_file: str | os.PathLike | None = None,
) -> np.ndarray:
    """(G,) indices of the SYSU-MM01 gallery of one trial.

    Args:
        mode: ``"all"`` (visible cameras 1, 2, 4, 5) or ``"indoor"`` (1, 2).
        trial: 0-based trial (seed of the seeded sampler, row of the official one).
        shot: ``"single"`` or ``"multi"``.
        sampler: ``"seeded"`` (mangye16) or ``"official"`` (``rand_perm_cam.mat``).
        perm_file: the official ``rand_perm_cam.mat`` (official sampler only).
    """
    if mode not in SYSU_GALLERY_CAMS:
        raise ProtocolError(f"unknown SYSU-MM01 mode '{mode}'; use 'all' or 'indoor'")
    _check_sysu(features)
    cams = SYSU_GALLERY_CAMS[mode]
    candidates = np.flatnonzero((features.modality == VISIBLE) & np.isin(features.cams, cams))
    if len(candidates) == 0:
        raise ProtocolError(
            f"{_where(features)} has no visible image of cameras {list(cams)}, so the SYSU-MM01 "
            f"{mode}-search gallery is empty; fix: extract the whole test set"
        )
    if sampler == "seeded":
        return seeded_gallery(features, candidates, cams, trial, shot)
    if sampler == "official":
        if perm_file is None:
            raise ProtocolError(
                "sampler='official' needs perm_file=<SYSU-MM01 root>/exp/rand_perm_cam.mat"
            )
        return official_gallery(features, candidates, cams, trial, shot, perm_file)
    raise ProtocolError(
        f"unknown sampler '{sampler}'{did_you_mean(str(sampler), SAMPLERS)}; use 'seeded' "
        f"(mangye16, Python random.seed(trial)) or 'official' (rand_perm_cam.mat)"
    )


def regdb_indices(features: Features, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """(query, gallery) indices of a RegDB test split: all of one modality vs all the other.

    ``direction`` is ``"visible->infrared"`` or ``"infrared->visible"``.
    """
    q_mod, g_mod = (_MODALITY[s] for s in _direction(direction))
    query = np.flatnonzero(features.modality == q_mod)
    gallery = np.flatnonzero(features.modality == g_mod)
    for name, idx, mod in (("query", query, q_mod), ("gallery", gallery, g_mod)):
        if len(idx) == 0:
            kind = "visible" if mod == VISIBLE else "thermal (infrared)"
            raise ProtocolError(
                f"{_where(features)} has no {kind} image, so the RegDB {name} is empty; fix: "
                f"export both test_visible and test_thermal of the split"
            )
    return query, gallery


def trial_indices(
    features: Features,
    spec: ProtocolSpec,
    trial: int = 0,
    shot: str = "single",
    sampler: str = "seeded",
    perm_file: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(query, gallery) indices of trial ``trial`` of the protocol ``spec``, as
    :func:`run_protocol` evaluates it (the figures of :mod:`uvireid.viz` draw the same
    ones: they once sampled LLCM's gallery where DEEN's protocol samples the query)."""
    if spec.dataset == "sysu":
        q = sysu_query_indices(features)
        return q, sysu_gallery_indices(features, spec.mode, trial, shot, sampler, perm_file)
    if spec.dataset == "regdb":
        return regdb_indices(features, spec.direction)
    return llcm_indices(features, spec.direction, trial, shot, spec.sampled)


def llcm_indices(
    features: Features,
    direction: str,
    trial: int = 0,
    shot: str = "single",
    sampled: str = "gallery",
) -> tuple[np.ndarray, np.ndarray]:
    """(query, gallery) indices of one LLCM trial.

    ``direction`` names the query and gallery modalities (``"visible->infrared"``). The
    ``sampled`` side (``"gallery"``, or ``"query"`` for DEEN's transposed "VIS to IR"
    branch) is drawn with :func:`seeded_gallery` over its cameras in ascending order; the
    other side is taken whole.
    """
    if sampled not in ("gallery", "query"):
        raise ProtocolError(f"sampled must be 'gallery' or 'query', got {sampled!r}")
    q_name, g_name = _direction(direction)
    query = np.flatnonzero(features.modality == _MODALITY[q_name])
    gallery = np.flatnonzero(features.modality == _MODALITY[g_name])
    for name, idx, mod in (("query", query, q_name), ("gallery", gallery, g_name)):
        if len(idx) == 0:
            raise ProtocolError(
                f"{_where(features)} has no {mod} image, so the LLCM {name} is empty; fix: "
                f"export both test_vis and test_nir"
            )
    pool = gallery if sampled == "gallery" else query
    drawn = seeded_gallery(
        features, pool, sorted(np.unique(features.cams[pool]).tolist()), trial, shot
    )
    return (query, drawn) if sampled == "gallery" else (drawn, gallery)


# -- results ----------------------------------------------------------------------------------
def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


@dataclass
class ProtocolResult:
    """Metrics of a protocol run, per trial and averaged, with what produced them.

    Attributes:
        per_trial: one dict per trial: ``trial`` (RegDB: the split), R1, R5, R10, R20, mAP,
            mINP in percent, ``num_query``, ``num_gallery``, ``num_valid``.
        mean, std: over trials, of each metric (percent; population std).
        cmc: (max_rank,) mean CMC curve over trials, in percent.
        provenance: dataset, protocol, mode, shot, direction, trials, sampler, feature_head,
            reranker, counts, features file(s) and their meta.
    """

    per_trial: list[dict]
    mean: dict[str, float]
    std: dict[str, float]
    cmc: list[float]
    provenance: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable copy."""
        return _jsonable(
            {
                "provenance": self.provenance,
                "mean": self.mean,
                "std": self.std,
                "cmc": self.cmc,
                "per_trial": self.per_trial,
            }
        )

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as a strict JSON string (non-finite numbers as null;
        ``kwargs`` go to ``json.dumps``, e.g. ``indent=2``)."""
        from uvireid.fileio import dumps_json

        return dumps_json(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """The provenance as one line."""
        p = self.provenance
        parts = [p["protocol"], p["dataset"]]
        if p.get("mode"):
            parts.append(f"{p['mode']}-search")
        plural = "s" if p["trials"] != 1 else ""
        if p.get("splits") is not None:  # RegDB: every test image, one trial per split
            parts += [
                "all test images",
                p["direction"],
                f"{p['trials']} split{plural} {p['splits']}",
            ]
        else:
            parts += [
                f"{p['shot']}-shot",
                p["direction"],
                f"{p['trials']} trial{plural} ({p['sampler']} sampler)",
            ]
        parts += [
            f"feature head: {p['feature_head']}",
            f"reranker: {p['reranker']}",
            f"queries {p['num_query']} (valid {p['num_valid']}), gallery {p['num_gallery']}",
        ]
        metas = p.get("features_meta")
        if isinstance(metas, list):  # several files (RegDB's splits): each one's notes
            notes = [_meta_notes(m if isinstance(m, dict) else {}) for m in metas]
            splits = p.get("splits") or [None] * len(notes)
            for note in dict.fromkeys(n for ns in notes for n in ns):  # in order, once
                having = [s for s, ns in zip(splits, notes) if note in ns]
                if len(having) == len(notes):
                    parts.append(note)  # common to every file
                else:
                    parts.append(f"split {', '.join(map(str, having))}: {note}")
        else:
            parts += _meta_notes(metas if isinstance(metas, dict) else {})
        if p.get("identical_trials"):
            parts.append("every trial drew the same images (one trial's gallery saved?)")
        return " | ".join(str(x) for x in parts)

    def table(self) -> str:
        """Aligned per-trial table (percent) under the provenance line, mean ± std last."""
        width = 16  # "100.00 ± 13.34" and a gap
        first = "split" if self.provenance.get("splits") is not None else "trial"
        head = first.ljust(10) + "".join(f"{k:>6}".ljust(width) for k in METRIC_KEYS)
        lines = [self.summary(), head.rstrip()]
        for row in self.per_trial:
            cells = "".join(f"{row[k]:6.2f}".ljust(width) for k in METRIC_KEYS)
            lines.append((str(row["trial"]).ljust(10) + cells).rstrip())
        cells = "".join(
            f"{self.mean[k]:6.2f} ± {self.std[k]:<5.2f}".ljust(width) for k in METRIC_KEYS
        )
        lines.append(("mean±std".ljust(10) + cells).rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# -- running ----------------------------------------------------------------------------------
def _as_features(x: Any) -> Features:
    if isinstance(x, Features):
        if x.source is not None:  # read by load_features: checked then
            return x
        # built in memory: checked (and its labels made int64) as a file would be; list
        # or int32 labels ended in a raw TypeError inside the protocol
        from uvireid.features import features_from_arrays

        meta = x.meta if isinstance(x.meta, dict) else {}
        return features_from_arrays(x.feats, x.pids, x.cams, x.modality, x.paths, **meta)
    if isinstance(x, (str, os.PathLike)):
        return load_features(x)
    if isinstance(x, Mapping):  # {"feats": ..., "pids": ..., "cams": ..., "modality": ...}
        from uvireid.features import decode_meta, features_from_arrays

        need = ("feats", "pids", "cams", "modality")
        missing = [k for k in need if k not in x]
        if missing:
            raise ProtocolError(
                f"a mapping of features needs the keys {', '.join(need)} (optional: paths, "
                f"meta); missing: {', '.join(missing)}"
            )
        meta = decode_meta(x.get("meta"), "the mapping of arrays")
        if not isinstance(meta, dict):
            raise ProtocolError(
                f"the mapping's 'meta' is a JSON {type(meta).__name__}; expected a JSON object "
                f'such as {{"dataset": "sysu", "split": "test"}}'
            )
        return features_from_arrays(*(x[k] for k in need), paths=x.get("paths"), **meta)
    raise ProtocolError(
        f"expected a Features object, the path of a features file or a mapping of arrays "
        f"(feats, pids, cams, modality), got {type(x).__name__}"
    )


def _norm_dataset(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _meta_notes(meta: Mapping) -> list[str]:
    """What a features file's meta adds to a result's provenance line: the run's epoch,
    a start chosen on the test set, changes from the run, a copy that is not the release."""
    notes = []
    if meta.get("epoch") is not None:  # a run's evaluation
        notes.append(epoch_label(meta))
    for start in meta.get("started_from") or []:
        if isinstance(start, dict):
            notes.append(
                f"stage {start.get('stage')} started from epoch {start.get('epoch')} "
                f"chosen on the {start.get('selected_on', 'test set')}"
            )
    changes = meta.get("changes")
    if isinstance(changes, Mapping) and changes:  # extract's {key: "a -> b"}
        notes.append("changed from the run: " + ", ".join(f"{k} {v}" for k, v in changes.items()))
    elif changes:
        notes.append(f"changed from the run: {', '.join(map(str, changes))}")
    if (meta.get("dataset_check") or {}).get("ok") is False:
        notes.append("test set differs from the official release")
    if _flag(meta.get("validation")):
        notes.append(f"the validation ids ({_validation_ids(meta)}), not the test set")
    return notes


def _validation_ids(meta: Mapping) -> str:
    """Which ids a validation file holds: its meta's ``validation_ids``; a file without
    (written before the key, or by another codebase) of SYSU-MM01's layout holds those of
    ``exp/val_id.txt``, one of another dataset held-out training ids."""
    if meta.get("validation_ids"):
        return str(meta["validation_ids"])
    if _norm_dataset(meta.get("dataset") or "") in ("sysu", "synthetic"):
        return "exp/val_id.txt"
    return "held-out training ids; the meta does not say which"


def _held_out_images(meta: Mapping) -> str:
    """What the images of a RegDB file are: the test images, or held-out training ones."""
    return "held-out training images" if _flag(meta.get("validation")) else "the test images"


def epoch_label(meta: Mapping) -> str:
    """``epoch N (stage, final | not the final epoch[, chosen on the test set])`` of a
    run's features meta (its ``epoch`` set)."""
    last = "final" if meta.get("final") else "not the final epoch"
    if meta.get("selected_on"):
        last += f", chosen on the {meta['selected_on']}"
    stage = f"{meta['stage']}, " if meta.get("stage") else ""
    return f"epoch {meta['epoch']} ({stage}{last})"


def _dataset_label(files: list[Features], spec: ProtocolSpec) -> str:
    """The provenance's dataset: the protocol's, or, for files whose meta names another
    dataset laid out as the protocol's (the synthetic one), that dataset "(SYSU-MM01
    protocol)": a demo number used to read as a SYSU-MM01 result."""
    names = {_norm_dataset((f.meta or {}).get("dataset") or "") for f in files} - {""}
    held = " validation ids" if any(_flag((f.meta or {}).get("validation")) for f in files) else ""
    # the protocol's dataset by its own spellings only ("sysu", "SYSU-MM01"; not a variant
    # such as "SYSU-MM01-C", whose title names it: audit FE)
    own = {spec.dataset, _norm_dataset(spec.dataset_name)}
    if names <= own:
        return spec.dataset_name + held
    titles = sorted(
        {
            str((f.meta or {}).get("title") or (f.meta or {}).get("dataset"))
            for f in files
            if (f.meta or {}).get("title") or (f.meta or {}).get("dataset")
        }
    )
    return f"{' + '.join(titles)}{held} ({spec.dataset_name} protocol)"


def _flag(value: Any) -> bool | None:
    """A meta flag as a boolean: true/false, 1/0, "true"/"false" (a file of another
    codebase may write any), None when absent or of any other form."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


def _check_meta(features: Features, spec: ProtocolSpec) -> None:
    """Refuse a file whose meta names another known dataset, or a non-test split.

    A dataset name uvireid does not know (e.g. a synthetic set laid out like SYSU-MM01) and a
    missing or ``None`` split pass; the provenance records the meta as it is.
    """
    meta = features.meta or {}
    where = _where(features)
    name = _norm_dataset(meta.get("dataset", ""))
    known = {p.dataset for p in PROTOCOLS.values()}
    other = [d for d in known if name.startswith(d) and d != spec.dataset]
    if other:
        raise ProtocolError(
            f"{where} holds features of dataset '{meta['dataset']}' (its meta says so), but "
            f"protocol '{spec.name}' is for {spec.dataset_name}; pick a {other[0]}-* "
            f"protocol or the right file"
        )
    listed = meta.get("protocols")
    if isinstance(listed, (list, tuple)) and listed and spec.name not in listed:
        raise ProtocolError(
            f"{where} lists the protocols {', '.join(map(str, listed))} (its meta says so: "
            f"the dataset it was extracted from has them), not '{spec.name}'; pick one of "
            f"those, or the right file"
        )
    if spec.dataset == "llcm":
        _check_llcm_cameras(features, where, spec)
    if _flag(meta.get("validation")):
        left_out = _flag(meta.get("train_validation"))
        if left_out is None and "train_validation" not in meta:
            logger.warning(
                "%s: meta says these are the validation ids but not whether the model left "
                "them out of its training (train_validation); cannot check that it did "
                "(the release's arrangement trains on them)",
                where,
            )
        elif not left_out:  # false, 0, "false", or a value that says nothing
            held_ids = _validation_ids(meta)
            raise ProtocolError(
                f"{where} holds the validation ids ({held_ids}; its meta says so), and "
                f"the model trained on them (train_validation "
                f"{meta.get('train_validation')!r}: in the release's arrangement, the "
                f"training ids include them), so the numbers would include training images. Fix: "
                f"choose settings with runs of data.validation=true, whose models leave "
                f"these ids out, or evaluate the test set"
            )
    split = meta.get("split")
    if spec.dataset == "regdb":
        _check_split_numbers(meta, where)
    if spec.dataset != "regdb" and _int_or_none(split) is not None:
        raise ProtocolError(
            f"{where} names split {split} (its meta says so): a numbered split is RegDB's "
            f"(1..10), not a {spec.dataset_name} test set; evaluate it with --protocol "
            f"regdb-v2i or regdb-i2v"
        )
    numbered = spec.dataset == "regdb" and _int_or_none(split) is not None
    if split is not None and not numbered and str(split).lower() != "test":
        # RegDB's files name their split by number (or "test"); a "train" file is refused
        # as for the other datasets (audit AR: it was evaluated, with a warning that the
        # meta did not say the test split)
        held = (
            " (validation ids are evaluated as a test set whose meta says "
            "validation: true and, for a model that left them out, train_validation: true: "
            "data.validation=true)"
            if str(split).lower() in ("val", "validation")
            else ""
        )
        raise ProtocolError(
            f"{where} holds the '{split}' split (its meta says so); {spec.dataset_name} "
            f"protocols evaluate the test split only; fix: extract the test set{held}"
        )


def _check_llcm_cameras(features: Features, where: str, spec: ProtocolSpec) -> None:
    """LLCM's nine cameras shoot both modalities, so its visible and infrared images share
    camera numbers; a file whose two modalities use disjoint cameras is another dataset
    (SYSU-MM01's visible 1, 2, 4, 5 and infrared 3, 6, say), whose numbers an LLCM protocol
    would label LLCM."""
    vis = set(features.cams[features.modality == VISIBLE].tolist())
    ir = set(features.cams[features.modality == INFRARED].tolist())
    if vis and ir and not vis & ir:
        raise ProtocolError(
            f"{where}: its visible images come from cameras {sorted(vis)} and its infrared "
            f"ones from {sorted(ir)}, no camera in both; in LLCM every camera shoots both "
            f"(visible by day, infrared by night), so this is not an LLCM test set "
            f"(SYSU-MM01's cameras look like this: sysu-*); '{spec.name}' would label its "
            f"numbers LLCM"
        )


def _int_or_none(x: Any) -> int | None:
    """A split number: an integer, or a string or float that is exactly one (a bool or
    3.7 is none: 3.7 was read as split 3, true as split 1; audit FE)."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, np.integer)):
        return int(x)
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return int(value) if value.is_integer() else None


def _check_split_numbers(meta: Mapping, where: str) -> None:
    """A RegDB file's split numbers are whole numbers (or "test"): 3.7 was read as split 3
    and true as split 1 (audit FE)."""
    for key in ("test_split", "split", "train_split"):
        value = meta.get(key)
        numeric = isinstance(value, (bool, float, np.floating))  # a name ('train') is not
        if numeric and _int_or_none(value) is None:
            raise ProtocolError(
                f"{where}: its meta's {key} is {value!r}, not a RegDB split number (1..10); "
                f"fix the meta (the split the file's test images or the model come from)"
            )


def _regdb_split(features: Features) -> int | None:
    """The test split of a RegDB file, refusing a model trained on another split."""
    meta = features.meta or {}
    where = _where(features)
    _check_split_numbers(meta, where)
    split = _int_or_none(meta.get("test_split", meta.get("split")))
    train_split = _int_or_none(meta.get("train_split"))
    if split is not None and train_split is not None and split != train_split:
        raise ProtocolError(
            f"{where}: the model was trained on RegDB split {train_split} but these are "
            f"{_held_out_images(meta)} of split {split}; they are training identities of "
            f"split {train_split}, so the numbers would include training images. "
            f"Fix: evaluate split {split} with the model trained on split {split} (or test "
            f"split {train_split} with this model)"
        )
    if split is None or train_split is None:
        logger.warning(
            "%s: meta does not say %s; cannot check that the model was trained on the split it "
            "is tested on (RegDB split i goes with the model trained on split i)",
            where,
            "the test split" if split is None else "the training split (train_split)",
        )
    return split


def _reranker_name(reranker: Any) -> str:
    """A re-ranker's ``name`` (the built-ins': ``cmfp(k=30)``); for one without (a
    plugin's), its registered name and the settings it was built with, so that two
    settings are two rows (audit BO); else its class name."""
    if reranker is None:
        return "none"
    name = getattr(reranker, "name", None)
    if name:
        return str(name)
    spec = getattr(reranker, "_uvireid_spec", None)  # (OnDevice has a name: its inner's)
    if isinstance(spec, tuple) and len(spec) == 2:
        settings = ", ".join(f"{k}={v}" for k, v in sorted(spec[1].items()))
        return f"{spec[0]}({settings})" if settings else str(spec[0])
    return type(reranker).__name__


def _median_norm(feats: Any) -> float | None:
    """The median row norm of (N, d) ``feats`` (None for no rows), without an (N, d)
    temporary."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or not len(feats):
        return None
    return float(np.median(np.sqrt(np.einsum("ij,ij->i", feats, feats, dtype=np.float64))))


def _warn_unnormalised(files: list[Features]) -> None:
    """Warn, once for all ``files``, where rows are not unit vectors (median norm outside
    [0.9, 1.1], as the clusterers' check): the protocols rank by ``-q.g`` (mangye16's
    ``-(q @ g.T)`` on the extractors' L2-normalised features), which is the cosine only
    on unit rows, so rows of other lengths are ranked by their length too (features saved
    before the extractor's l2norm). PGM's mean of two normalised flipped views (a little
    shorter) passes quietly."""
    medians = [(f, _median_norm(f.feats)) for f in files]
    off = [(f, m) for f, m in medians if m is not None and not 0.9 <= m <= 1.1]
    if not off:
        return
    where = (
        _where(off[0][0])
        if len(files) == 1
        else f"{len(off)} of the {len(files)} features files (e.g. {_where(off[0][0])})"
    )
    norms = sorted(m for _, m in off)
    shown = f"{norms[0]:.3g}" if len(norms) == 1 else f"{norms[0]:.3g} to {norms[-1]:.3g}"
    logger.warning(
        "%s: the features are not L2-normalised (median row norm %s); the protocol ranks "
        "by -q.g, the cosine only for unit rows, so the rows' lengths change the ranking: "
        "normalise them (as the extractors' l2norm does) or re-rank",
        where,
        shown,
    )


def _distance(query: np.ndarray, gallery: np.ndarray, reranker: Any) -> np.ndarray:
    if reranker is None:
        return -(query @ gallery.T)
    if not hasattr(reranker, "rerank"):
        raise ProtocolError(
            f"reranker {type(reranker).__name__} has no rerank(query, gallery) method; pass a "
            f"re-ranker object (e.g. uvireid.registry.RERANKERS.build('cmfp')) or None"
        )
    dist = to_numpy(reranker.rerank(query, gallery))
    if dist.shape != (len(query), len(gallery)):
        raise ProtocolError(
            f"reranker {_reranker_name(reranker)} returned a {dist.shape} matrix for "
            f"{len(query)} queries and {len(gallery)} gallery images; expected "
            f"({len(query)}, {len(gallery)}) distances"
        )
    return dist


def _trial_row(trial: Any, cmc: np.ndarray, m_ap: float, m_inp: float, nq, ng, nv) -> dict:
    row = {"trial": trial}
    for k, r in zip(("R1", "R5", "R10", "R20"), (1, 5, 10, 20), strict=True):
        row[k] = float(cmc[r - 1]) * 100.0
    row["mAP"] = m_ap * 100.0
    row["mINP"] = m_inp * 100.0
    row.update(num_query=int(nq), num_gallery=int(ng), num_valid=int(nv))
    row["cmc"] = [float(v) * 100.0 for v in cmc]
    return row


def _same_or_list(values: list) -> Any:
    return values[0] if all(v == values[0] for v in values) else values


def run_protocol(
    features: Features | str | os.PathLike | Sequence[Features | str | os.PathLike],
    protocol: str,
    *,
    trials: int = 10,
    shot: str = "single",
    sampler: str = "seeded",
    perm_file: str | os.PathLike | None = None,
    reranker: Any = None,
    feature_head: str | None = None,
    stable: bool = False,
) -> ProtocolResult:
    """Evaluate features with a named protocol, over trials, with its provenance.

    Args:
        features: a :class:`Features` (or the path of a features file); for RegDB also a
            list of them, one per test split, which are the trials.
        protocol: a name of :data:`PROTOCOLS`: ``sysu-all``, ``sysu-indoor``,
            ``regdb-v2i``, ``regdb-i2v``, ``llcm-v2i``, ``llcm-i2v`` or ``llcm-v2i-deen``
            (see the module docstring).
        trials: gallery samples (SYSU-MM01, LLCM): trial t uses seed / permutation row t,
            t = 0..trials-1. RegDB: unused (one trial per split file).
        shot: ``"single"`` (1 gallery image per identity and camera) or ``"multi"`` (10).
        sampler: ``"seeded"`` (mangye16) or ``"official"`` (SYSU-MM01 ``rand_perm_cam.mat``).
        perm_file: ``rand_perm_cam.mat``, needed by the official sampler.
        reranker: ``None`` (distance ``-(q @ g.T)`` on the stored features, as mangye16), an
            object with ``rerank(query (nq, d), gallery (ng, d)) -> (nq, ng)`` distances
            (numpy or torch; it receives numpy arrays), or a re-ranker of
            :data:`~uvireid.registry.RERANKERS` by name (``"cmfp"``; ``"none"``: None) or
            spec (``{"type": "cmfp", "k": 8}``).
        feature_head: recorded in the provenance (default: the file's ``meta``, else
            "unknown").
        stable: rank with a stable sort (see :mod:`uvireid.evaluation.metrics`).

    Returns:
        :class:`ProtocolResult`.

    Raises:
        ProtocolError: unknown protocol, an impossible or dishonest request (no query
            images, perm_file without paths, more than 10 official trials, a RegDB model
            tested on another split, ...).
        RegistryError: a re-ranker name or spec the registry does not know.
    """
    spec = get_protocol(protocol)
    _shot_count(shot)
    if isinstance(reranker, (str, Mapping)):  # a name or spec, as the CLI and recipes take
        from uvireid.registry import RERANKERS

        named = reranker.get("type") if isinstance(reranker, Mapping) else reranker
        if isinstance(named, str) and named.lower() == "none":
            reranker = None
        else:
            reranker = RERANKERS.build(
                {"type": reranker} if isinstance(reranker, str) else reranker
            )
    if sampler not in SAMPLERS:
        raise ProtocolError(
            f"unknown sampler '{sampler}'{did_you_mean(str(sampler), SAMPLERS)}; use 'seeded' "
            f"(mangye16, Python random.seed(trial)) or 'official' (SYSU-MM01 rand_perm_cam.mat)"
        )
    if isinstance(features, (Features, str, os.PathLike, Mapping)):
        files = [_as_features(features)]
    else:
        files = [_as_features(f) for f in features]
    if not files:
        raise ProtocolError("no features given; pass a Features object or a features file")
    if spec.dataset != "regdb" and len(files) > 1:
        raise ProtocolError(
            f"{len(files)} features files given for {spec.name}; {spec.dataset_name} is "
            f"evaluated on one test set (its trials resample the gallery); several files are "
            f"only averaged for RegDB (one per split)"
        )
    stated = {f.meta.get("feature_head") for f in files} - {None}
    if feature_head and stated and stated != {feature_head}:  # before any trial runs
        raise ProtocolError(
            f"feature_head {feature_head!r} contradicts the features file's meta "
            f"(feature_head {', '.join(sorted(map(str, stated)))}); the flag labels files "
            f"that do not say which feature they hold: leave it out here"
        )
    varied = []
    for f in files:
        _check_meta(f, spec)
        if identical_rows(f.feats) is not None:
            logger.warning(
                "%s: every feature is the same; the metrics below measure only the order "
                "in which ties are broken (a collapsed model, or the wrong array saved?)",
                _where(f),
            )
        else:
            varied.append(f)
    if reranker is None:
        _warn_unnormalised(varied)
    if len(stated) > 1:
        # averaging other features split by split (audit AX: labelled "feature head: unknown")
        raise ProtocolError(
            f"the files hold different features (feature_head "
            f"{', '.join(sorted(map(str, stated)))} in their meta); average files of one "
            f"feature head: re-extract the others with evaluation.feature_head=..."
        )
    flips = {f.meta.get("test_flip") for f in files} - {None}
    if len(flips) > 1:
        raise ProtocolError(
            "the files hold different features (test_flip true and false in their meta: "
            "flip-averaged and single-pass); average files extracted alike: re-extract the "
            "others with evaluation.flip=..."
        )
    for key, fix in (("test_size", "train.height/width"), ("test_resize", "train.test_resize")):
        # images of another size or filter are other features (audit FE: averaged silently)
        values = {json.dumps((f.meta or {}).get(key)) for f in files if key in (f.meta or {})}
        if len(values) > 1:
            raise ProtocolError(
                f"the files hold different features ({key} {', '.join(sorted(values))} in "
                f"their meta); average files extracted alike: re-extract the others with "
                f"{fix}=..."
            )
    own = {spec.dataset, _norm_dataset(spec.dataset_name)}  # "sysu" is "SYSU-MM01" (FF)
    named = {
        spec.dataset if n in own else n
        for n in (_norm_dataset((f.meta or {}).get("dataset") or "") for f in files)
        if n
    }
    if len(named) > 1:
        raise ProtocolError(
            f"the files are of different datasets ("
            f"{', '.join(sorted(str((f.meta or {}).get('dataset')) for f in files if (f.meta or {}).get('dataset')))}"
            f" in their meta); average the split files of one dataset"
        )
    if spec.dataset == "regdb":
        lengths = {(f.meta or {}).get("total_epochs") for f in files} - {None}
        if len(lengths) > 1:
            logger.warning(
                "the split files come from runs of different lengths (total_epochs %s); a "
                "RegDB figure averages the splits of one recipe",
                ", ".join(map(str, sorted(lengths))),
            )
        if shot != "single" or sampler != "seeded" or perm_file is not None:
            raise ProtocolError(
                "RegDB has no gallery sampling: every test image of the split is used; drop "
                "shot/sampler/perm_file (the trials are the split files)"
            )
    else:
        if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
            raise ProtocolError(f"trials must be a positive integer, got {trials!r}")
        if perm_file is not None and sampler != "official":
            raise ProtocolError(
                "perm_file is given but sampler is 'seeded'; pass sampler='official' to use "
                "the official rand_perm_cam.mat, or drop perm_file"
            )
        if sampler == "official":
            if spec.dataset != "sysu":
                raise ProtocolError(
                    f"the official sampler (rand_perm_cam.mat) exists for SYSU-MM01 only; "
                    f"{spec.dataset_name} uses sampler='seeded'"
                )
            if perm_file is None:
                raise ProtocolError(
                    "sampler='official' needs perm_file=<SYSU-MM01 root>/exp/rand_perm_cam.mat"
                )
            if trials > OFFICIAL_TRIALS:
                raise ProtocolError(
                    f"the official rand_perm_cam.mat has {OFFICIAL_TRIALS} trials; {trials} "
                    f"asked; use trials <= {OFFICIAL_TRIALS}, or sampler='seeded'"
                )
            if files[0].paths is None:
                raise ProtocolError(
                    f"{_where(files[0])} has no 'paths'; the official SYSU-MM01 sampler picks "
                    f"images by file name; fix: export the features with paths=[image paths], "
                    f"or use sampler='seeded'"
                )

    rows: list[dict] = []
    draws: list[tuple[np.ndarray, np.ndarray]] = []
    identical = False
    splits: list[int | None] = []
    seen: dict[str, str] = {}
    if spec.dataset == "regdb":
        for f in files:
            cams = np.unique(f.cams).tolist()
            if len(cams) > 2:
                raise ProtocolError(
                    f"{_where(f)} holds {len(cams)} cameras ({cams}); RegDB has one visible "
                    f"and one thermal camera: is this a RegDB test set? Pick the protocol of "
                    f"the file's dataset (sysu-*, llcm-*)"
                )
            split = _regdb_split(f)
            if split is not None and split in splits:
                raise ProtocolError(
                    f"RegDB split {split} is given twice ({_where(f)}); averaging a split with "
                    f"itself is not the 10-split protocol; pass each split once"
                )
            digest = hashlib.sha1(np.ascontiguousarray(f.feats).tobytes()).hexdigest()
            if digest in seen:
                # the same features under another name or meta (a file without its split)
                raise ProtocolError(
                    f"{_where(f)} holds the same features as {seen[digest]}: one split given "
                    f"twice; pass each split once"
                )
            seen[digest] = _where(f)
            splits.append(split)
            q, g = regdb_indices(f, spec.direction)
            rows.append(_run_one(f, q, g, spec, reranker, stable, split))
    else:
        f = files[0]
        for t in range(int(trials)):
            q, g = trial_indices(f, spec, t, shot, sampler, perm_file)
            draws.append((np.sort(q), np.sort(g)))
            rows.append(_run_one(f, q, g, spec, reranker, stable, t))
        # (multi-shot takes every image of a group of 10 or fewer: identical draws there
        # are the protocol's, not a sign of a saved gallery; audit BD)
        identical = (
            SHOTS[shot] == 1
            and len(draws) > 1
            and all(
                np.array_equal(a[0], draws[0][0]) and np.array_equal(a[1], draws[0][1])
                for a in draws[1:]
            )
        )
        if identical:
            # a file that holds one trial's sampled gallery (one image per identity and
            # camera: what a peer's loop holds after process_gallery_sysu) gives the same
            # figures N times, "± 0.00" (audit BC, session 18)
            logger.warning(
                "%s: all %d trials drew the same %s; the file holds one image per identity "
                "and camera on the sampled side, as the gallery of ONE trial would, so the "
                "mean is that trial's. Save the features of every test image",
                _where(f),
                len(draws),
                "gallery" if spec.sampled == "gallery" else "sampled side",
            )

    mean = {k: float(np.mean([r[k] for r in rows])) for k in METRIC_KEYS}
    extra = {"identical_trials": True} if identical else {}
    std = {k: float(np.std([r[k] for r in rows])) for k in METRIC_KEYS}
    cmc = np.mean(np.asarray([r["cmc"] for r in rows]), axis=0).tolist()
    head = feature_head or (stated.pop() if len(stated) == 1 else None) or "unknown"
    no_paths = any(f.paths is None for f in files)
    provenance = {
        "dataset": _dataset_label(files, spec),
        "protocol": spec.name,
        "mode": spec.mode,
        "shot": "single" if spec.dataset == "regdb" else shot,
        "shots_per_id_camera": None if spec.dataset == "regdb" else SHOTS[shot],
        "direction": spec.direction,
        "sampled_side": "none" if spec.dataset == "regdb" else spec.sampled,
        "trials": len(rows),
        "sampler": "none" if spec.dataset == "regdb" else sampler,
        "sampler_detail": _sampler_detail(spec, sampler, perm_file, no_paths, shot),
        "metric": f"eval_{spec.metric}",
        "distance": "reranker" if reranker is not None else "-(q @ g.T)",
        "ranking": "stable argsort" if stable else "numpy default argsort (as the reference)",
        "feature_head": head,
        "reranker": _reranker_name(reranker),
        "num_query": _same_or_list([r["num_query"] for r in rows]),
        "num_gallery": _same_or_list([r["num_gallery"] for r in rows]),
        "num_valid": _same_or_list([r["num_valid"] for r in rows]),
        "std": "population (ddof=0) over trials",
        "features_file": _same_or_list([str(f.source) if f.source else None for f in files]),
        "features_meta": _same_or_list([dict(f.meta) for f in files]),
        **extra,
    }
    if spec.dataset == "regdb":
        provenance["splits"] = splits
    logger.info("%s: R1 %.2f mAP %.2f", spec.name, mean["R1"], mean["mAP"])
    return ProtocolResult(rows, mean, std, cmc, _jsonable(provenance))


def _sampler_detail(
    spec: ProtocolSpec, sampler: str, perm_file: Any, no_paths: bool, shot: str
) -> str:
    if spec.dataset == "regdb":
        return "no sampling: all test images of each split"
    if sampler == "official":
        return f"rand_perm_cam.mat row t, first {SHOTS[shot]} entries ({perm_file})"
    order = "row order in the file (no paths)" if no_paths else "path order"
    side = (
        " of the query side (DEEN's transposed 'VIS to IR' branch)"
        if spec.sampled == "query"
        else ""
    )
    if shot == "multi":
        return (
            f"uvireid's seeded multi-shot (no reference has one; not comparable with published "
            f"multi-shot results, which use sampler='official'): random.seed(t), ids "
            f"ascending, cameras in fixed order, random.sample of min(10, n) images per "
            f"existing (id, camera) group{side}, over its images in {order}, kept in that order"
        )
    return (
        f"mangye16: random.seed(t), ids ascending, cameras in fixed order, one draw per existing "
        f"(id, camera) group{side} over its images in {order}"
    )


def _run_one(
    f: Features,
    q: np.ndarray,
    g: np.ndarray,
    spec: ProtocolSpec,
    reranker: Any,
    stable: bool,
    trial: Any,
) -> dict:
    dist = _distance(f.feats[q], f.feats[g], reranker)
    cmc, m_ap, m_inp, n_valid = evaluate(
        dist,
        f.pids[q],
        f.pids[g],
        f.cams[q],
        f.cams[g],
        rule=spec.metric,
        max_rank=20,
        stable=stable,
    )
    return _trial_row(trial, cmc, m_ap, m_inp, len(q), len(g), n_valid)
