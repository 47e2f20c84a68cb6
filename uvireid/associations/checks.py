"""The boundary of clusterers and associators: input checks, and the associators' output.

Features and labels are validated once, where they enter a clusterer or an associator,
so that NaN, inf, ragged shapes or float labels are refused with a message that names the
problem and the fix *before* they reach DBSCAN, the Hungarian solver or Sinkhorn. Inside,
the numerical code trusts its input (STYLE.md "Errors a user can act on").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from uvireid.errors import ConfigError, FeatureFileError, non_finite_rows
from uvireid.rerank.inputs import as_tensor
from uvireid.types import CrossLabels

__all__ = [
    "as_features",
    "as_labels",
    "check_finite",
    "compact_labels",
    "resolve_device",
    "Modality",
    "prepare",
    "cluster_means",
    "empty_result",
    "build",
]

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None, like: torch.Tensor) -> torch.device:
    """``device`` as a :class:`torch.device`, or ``like``'s device when ``None``;
    ``"auto"`` is CUDA when torch sees a GPU, else the CPU, as a recipe's top-level
    ``device: auto`` (the recipe check accepts it for a part too: audit NG found
    ``torch.device("auto")`` raising at the first association, hours into a run).

    Raises:
        ConfigError: CUDA is asked for but not available.
    """
    if device is None:
        return like.device
    if device == "auto":
        from uvireid.config import resolve_device as resolve_auto

        device = resolve_auto("auto")
    if isinstance(device, str):
        from uvireid.config import check_device

        check_device(device, "device")  # 'gpu', 'coda:1', a missing GPU index, ...
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device '{device}' was asked for but torch sees no CUDA device; "
            "use device='cpu' (or leave it unset to compute where the features are)"
        )
    return dev


def as_features(x: Any, who: str, *, allow_empty: bool = False) -> torch.Tensor:
    """(N, d) floating tensor view of ``x`` (numpy array or torch tensor, any device).

    Integer input becomes float64 (numpy) or float32 (torch), float16/bfloat16 become
    float32; float32 and float64 are kept. NaN and inf are refused.

    Raises:
        FeatureFileError: not 2-D, not numeric, empty (unless ``allow_empty``), or not
            finite.
    """
    t, _ = as_tensor(x, f"{who}:")  # 2-D numeric, a view where possible
    if t.shape[0] == 0 and not allow_empty:
        raise FeatureFileError(f"{who}: got 0 feature rows; pass at least one image")
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    check_finite(t, who, "features")
    return t


def check_finite(t: torch.Tensor | np.ndarray, who: str, what: str) -> None:
    """Raise :class:`FeatureFileError` when ``t`` holds NaN or inf (names how many rows,
    and which)."""
    bad = non_finite_rows(t)
    if bad is not None:
        raise FeatureFileError(
            f"{who}: {what} hold NaN or inf in {bad[0]} row(s) (first: {bad[1]}); "
            "check the feature extractor (e.g. a diverged model or a division by a zero "
            "norm) and pass finite values"
        )


def as_labels(y: Any, n: int, who: str) -> np.ndarray:
    """(N,) int64 numpy copy of cluster labels ``y``; ``-1`` marks an outlier.

    Raises:
        FeatureFileError: wrong length, not 1-D, non-integer values, or labels < -1.
    """
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1 or len(arr) != n:
        raise FeatureFileError(
            f"{who}: labels must be 1-D with one entry per feature row ({n}), got shape "
            f"{arr.shape}; pass the clusterer's labels for exactly these features"
        )
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise FeatureFileError(f"{who}: labels have dtype {arr.dtype}; pass integer labels")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise FeatureFileError(
                f"{who}: labels must be whole numbers (-1 = outlier), got non-integer or "
                "NaN values; pass the integer labels a clusterer returns"
            )
    arr = arr.astype(np.int64)
    if n and arr.min() < -1:
        raise FeatureFileError(
            f"{who}: labels below -1 ({int(arr.min())}); only -1 marks an outlier, clusters "
            "are numbered from 0"
        )
    return arr


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, compact)``: the sorted distinct cluster ids (K,) and, per instance, the
    index of its id in ``ids`` (``-1`` for outliers).

    Label spaces may have gaps (an emptied cluster); associators work on the K present
    clusters and map results back through ``ids``.
    """
    keep = labels >= 0
    ids = np.unique(labels[keep])
    compact = np.full(len(labels), -1, dtype=np.int64)
    compact[keep] = np.searchsorted(ids, labels[keep])
    return ids.astype(np.int64), compact


# --------------------------------------------------------------------------------------
# the boundary every associator shares: validated inputs in, CrossLabels out
# --------------------------------------------------------------------------------------
@dataclass
class Modality:
    """One modality's side of an association, validated.

    Attributes:
        feats: (N, d) float tensor (possibly refined), on the association device.
        labels: (N,) int64 labels as given (-1 = outlier).
        ids: (K,) sorted distinct cluster ids present in ``labels``.
        compact: (N,) index into ``ids`` per instance (-1 = outlier).
        space: size of the label space, ``max(labels) + 1`` (0 when no cluster).
    """

    feats: torch.Tensor
    labels: np.ndarray
    ids: np.ndarray
    compact: np.ndarray
    space: int

    @property
    def k(self) -> int:
        """Number of clusters present."""
        return len(self.ids)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def kept(self) -> np.ndarray:
        """Indices of the clustered (non-outlier) instances."""
        return np.flatnonzero(self.compact >= 0)


def prepare(
    feats_v: Any,
    labels_v: Any,
    feats_r: Any,
    labels_r: Any,
    who: str,
    device: str | torch.device | None = None,
) -> tuple[Modality, Modality]:
    """Validate an association's four inputs (the boundary of every associator).

    Raises:
        FeatureFileError: NaN/inf or non-2-D features, feature dims that differ, labels of
            the wrong length or type. Nothing reaches a solver before these checks.
    """
    fv = as_features(feats_v, f"{who}: visible", allow_empty=True)
    fr = as_features(feats_r, f"{who}: infrared", allow_empty=True)
    if fv.shape[1] != fr.shape[1]:
        raise FeatureFileError(
            f"{who}: visible features have d={fv.shape[1]} but infrared d={fr.shape[1]}; "
            "both modalities must come from the same extractor and feature head"
        )
    if fv.shape[1] == 0:  # every centroid 0: the labels would be a tie-break (audit FA)
        raise FeatureFileError(
            f"{who}: the features have no column (shape {tuple(fv.shape)}); pass the "
            f"(N, d) features of the extractor, d >= 1"
        )
    dev = resolve_device(device, fv)
    dtype = torch.promote_types(fv.dtype, fr.dtype)
    fv, fr = fv.to(dev, dtype), fr.to(dev, dtype)
    sides = []
    for name, f, y in (("visible", fv, labels_v), ("infrared", fr, labels_r)):
        lab = as_labels(y, f.shape[0], f"{who}: {name}")
        if len(lab) and int(lab.max()) >= len(lab):
            # every label space (CrossLabels, the memories) is sized largest id + 1: an id
            # near 2^40 asked for terabytes; no clustering of N points needs an id >= N
            raise FeatureFileError(
                f"{who}: {name} cluster id {int(lab.max())} is not below the number of "
                f"instances ({len(lab)}); number the clusters 0..K-1 (e.g. "
                f"numpy.unique(labels, return_inverse=True), keeping -1 for outliers)"
            )
        ids, compact = compact_labels(lab)
        space = int(lab.max()) + 1 if len(lab) and lab.max() >= 0 else 0
        sides.append(Modality(f, lab, ids, compact, space))
    return sides[0], sides[1]


def cluster_means(feats: torch.Tensor, compact: np.ndarray, k: int) -> torch.Tensor:
    """(K, d) plain mean of the features of each cluster (outliers ignored), float64.

    Deterministic on every device: ``index_add_`` on the CPU, a one-hot matrix product on
    a GPU (float atomics there would make the sums depend on the thread order).
    """
    dev = feats.device
    keep = torch.from_numpy(np.flatnonzero(compact >= 0)).to(dev)
    lab = torch.from_numpy(compact).to(dev)[keep]
    x = feats[keep].double()
    counts = torch.bincount(lab, minlength=k).double().clamp(min=1)
    if dev.type == "cpu":
        sums = torch.zeros((k, x.shape[1]), dtype=torch.float64).index_add_(0, lab, x)
    else:
        onehot = torch.zeros((k, len(lab)), dtype=torch.float64, device=dev)
        onehot[lab, torch.arange(len(lab), device=dev)] = 1.0
        sums = onehot @ x
    return sums / counts[:, None]


def empty_result(v: Modality, r: Modality, who: str, info: dict) -> CrossLabels:
    """The outcome when a modality has no cluster: own labels only, no cross labels.

    Every cross label is -1, ``matches`` is empty and ``has_cross_links`` is False; the
    event is logged as a warning and recorded in ``info["policy"]``.
    """
    empty = [name for name, m in (("visible", v), ("infrared", r)) if m.k == 0]
    msg = (
        f"{who}: no cluster in the {' and '.join(empty)} modality (all outliers or no "
        "images); no cross-modal labels this time, train on intra-modality labels"
    )
    logger.warning(msg)
    info = {**info, "policy": msg, "num_matches": 0}
    return build(v, r, np.full(v.n, -1), np.full(r.n, -1), np.zeros((0, 2), np.int64), info)


def build(
    v: Modality,
    r: Modality,
    r_label_of_v: np.ndarray,
    v_label_of_r: np.ndarray,
    matches: np.ndarray,
    info: dict,
    *,
    own_v: np.ndarray | None = None,
    own_r: np.ndarray | None = None,
) -> CrossLabels:
    """Assemble :class:`CrossLabels` (visible instances first, then infrared).

    Args:
        r_label_of_v: (Nv,) infrared-space label of each visible instance (-1 none).
        v_label_of_r: (Nr,) visible-space label of each infrared instance (-1 none).
        matches: (M, 2) (visible id, infrared id) pairs.
        own_v, own_r: own-space labels if the associator changed them (default: as
            given).
    """
    own_v = v.labels if own_v is None else own_v
    own_r = r.labels if own_r is None else own_r
    out_v = np.where(own_v >= 0, r_label_of_v, -1)
    out_r = np.where(own_r >= 0, v_label_of_r, -1)
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    if len(matches):
        matches = np.unique(matches, axis=0)
    info = {"k_v": v.k, "k_r": r.k, "n_v": v.n, "n_r": r.n, **info}
    return CrossLabels(
        labels_in_v=np.concatenate([own_v, out_r]).astype(np.int64),
        labels_in_r=np.concatenate([out_v, own_r]).astype(np.int64),
        matches=matches,
        unified=False,
        info=info,
        num_visible=v.n,
        num_clusters_v=max(v.space, int(own_v.max()) + 1 if len(own_v) else 0),
        num_clusters_r=max(r.space, int(own_r.max()) + 1 if len(own_r) else 0),
    )
