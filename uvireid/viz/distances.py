"""Cross-modality positive / negative distance distributions (SALCR Fig. 9).

For the queries and gallery of a protocol (trial 0) every (query, gallery) pair is a
*positive* (same identity) or a *negative* (different identity); pairs the protocol's
metric removes (SYSU-MM01: a camera-3 query ignores camera 2; LLCM: same identity and
camera) are left out. The histograms of the two sets, before and after a re-ranker, show
how far apart a method pushes the identities across modalities; the AUC printed on each
panel is the probability that a random positive pair is closer than a random negative one
(1 = perfectly separated, 0.5 = chance).

Distances: *before* is the squared Euclidean distance of the L2-normalised features
(``2 - 2 cos``, the same ranking as the protocols' ``-(q @ g.T)``); *after* is what the
re-ranker's ``rerank(query, gallery)`` returns (its own scale: each panel has its own axis).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from uvireid.errors import ProtocolError
from uvireid.features import Features
from uvireid.types import INFRARED, VISIBLE
from uvireid.viz import new_figure, save

__all__ = [
    "DPI",
    "FIGSIZE",
    "kept_pairs",
    "pair_distances",
    "plot_distance_histograms",
    "query_gallery",
    "reranker_label",
    "separation_auc",
]

logger = logging.getLogger(__name__)

#: (width, height) in inches of the histogram figure (two panels)
FIGSIZE = (10.0, 4.0)
DPI = 100


def query_gallery(
    features: Features, protocol: str | None = None, gallery: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(query, gallery) row indices of trial 0 of ``protocol``.

    Args:
        features: the test set.
        protocol: a protocol name (``sysu-all``, ``regdb-v2i``, ...; see
            :mod:`uvireid.evaluation.protocols`), or ``None``: every infrared image against
            every visible one.
        gallery: how the run drew its gallery, the keywords ``shot``, ``sampler`` and
            ``perm_file`` of :func:`~uvireid.evaluation.protocols.trial_indices` (default:
            single-shot, seeded), so that the figures show the gallery the table measured.

    Returns:
        ``(q, g)``: (Q,) and (G,) int64 indices into ``features``.
    """
    from uvireid.evaluation.protocols import get_protocol, trial_indices

    if protocol is None:
        q = np.flatnonzero(features.modality == INFRARED)
        g = np.flatnonzero(features.modality == VISIBLE)
        if len(q) == 0 or len(g) == 0:
            raise ProtocolError(
                f"{features.source or 'features'} holds {len(g)} visible and {len(q)} "
                f"infrared images; cross-modality plots need both; fix: extract both "
                f"modalities of the test set"
            )
        return q, g
    return trial_indices(features, get_protocol(protocol), 0, **dict(gallery or {}))


def trial_label(protocol: str | None, gallery: Mapping[str, Any] | None = None) -> str:
    """``sysu-all, trial 0`` (``, multi-shot`` where the gallery is): a figure's title."""
    shot = (gallery or {}).get("shot", "single")
    return f"{protocol}, trial 0{', multi-shot' if shot == 'multi' else ''}"


def kept_pairs(
    features: Features, q: np.ndarray, g: np.ndarray, protocol: str | None = None
) -> np.ndarray:
    """(Q, G) bool: the pairs the protocol's metric keeps (see the module docstring)."""
    q_cams, g_cams = features.cams[q][:, None], features.cams[g][None, :]
    dataset = protocol.split("-")[0] if protocol else None
    if dataset == "sysu":
        return ~((q_cams == 3) & (g_cams == 2))
    if dataset == "llcm":
        return ~((q_cams == g_cams) & (features.pids[q][:, None] == features.pids[g][None, :]))
    return np.ones((len(q), len(g)), dtype=bool)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reranker_label(reranker: Any) -> str:
    """The name a re-ranker records in provenance (``cmfp(k=30)``), else its class name."""
    name = getattr(reranker, "name", None)
    return str(name) if name else type(reranker).__name__


def pair_distances(
    features: Features,
    reranker: Any = None,
    protocol: str | None = None,
    gallery: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Distances of the positive and the negative cross-modality pairs.

    Args:
        features: the test set.
        reranker: ``None`` (squared Euclidean of L2-normalised features) or an object with
            ``rerank(query (Q, d), gallery (G, d)) -> (Q, G)`` distances.
        protocol: chooses query, gallery and removed pairs (:func:`query_gallery`).
        gallery: how the gallery is drawn (:func:`query_gallery`).

    Returns:
        ``(positive, negative)``: 1-D float64 arrays of distances.
    """
    from uvireid.evaluation.metrics import to_numpy

    q, g = query_gallery(features, protocol, gallery)
    if reranker is None:
        fq, fg = _normalised(features.feats[q]), _normalised(features.feats[g])
        dist = np.maximum(2.0 - 2.0 * fq @ fg.T, 0.0)
    else:
        dist = np.asarray(to_numpy(reranker.rerank(features.feats[q], features.feats[g])))
        dist = dist.astype(np.float64)
    same = features.pids[q][:, None] == features.pids[g][None, :]
    kept = kept_pairs(features, q, g, protocol)
    return dist[same & kept], dist[~same & kept]


def separation_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a random positive distance < a random negative one), ties counting one half."""
    from scipy.stats import rankdata

    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([positive, negative]))
    # Mann-Whitney: U of the negatives = how many (pos, neg) pairs have neg > pos
    u_neg = ranks[len(positive) :].sum() - len(negative) * (len(negative) + 1) / 2
    return float(u_neg / (len(positive) * len(negative)))


def _panel(ax: Any, positive: np.ndarray, negative: np.ndarray, title: str, xlabel: str) -> None:
    both = np.concatenate([positive, negative])
    low, high = float(both.min()), float(both.max())
    if high <= low:
        high = low + 1e-6
    bins = np.linspace(low, high, 50)
    ax.hist(negative, bins=bins, density=True, alpha=0.55, color="tab:red", label="negative")
    ax.hist(positive, bins=bins, density=True, alpha=0.55, color="tab:green", label="positive")
    auc = separation_auc(positive, negative)
    ax.set_title(
        f"{title}\nAUC {auc:.3f}, mean pos {positive.mean():.3f} / neg {negative.mean():.3f}"
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(
        [f"negative pairs ({len(negative)})", f"positive pairs ({len(positive)})"],
        fontsize=8,
        loc="best",
    )
    ax.grid(True, alpha=0.3)


def plot_distance_histograms(
    features: Features,
    path: str | os.PathLike,
    *,
    reranker: Any = None,
    protocol: str | None = None,
    gallery: Mapping[str, Any] | None = None,
    dpi: int = DPI,
) -> Path:
    """Positive vs negative distance histograms: one panel without re-ranking and, when a
    re-ranker is given, one with it. The figure is :data:`FIGSIZE` either way. ``gallery``:
    how the gallery is drawn (:func:`query_gallery`).

    Raises:
        ProtocolError: the features have no cross-modality positive pair (no identity in
            both query and gallery) or no negative pair.
    """
    panels = [(None, "without re-ranking", "squared Euclidean distance (L2-normalised)")]
    if reranker is not None:
        label = reranker_label(reranker)
        panels.append((reranker, f"with {label}", f"{label} distance"))
    fig = new_figure(*FIGSIZE)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (part, title, xlabel) in zip(axes, panels, strict=True):
        positive, negative = pair_distances(features, part, protocol, gallery)
        if len(positive) == 0 or len(negative) == 0:
            raise ProtocolError(
                f"{features.source or 'features'}: {len(positive)} positive and "
                f"{len(negative)} negative cross-modality pairs; the histograms need both "
                f"(identities seen in both modalities, and more than one identity)"
            )
        _panel(ax, positive, negative, title, xlabel)
    where = f" ({trial_label(protocol, gallery)})" if protocol else " (all infrared vs all visible)"
    fig.suptitle(f"Cross-modality distances{where}")
    return save(fig, path, dpi)
