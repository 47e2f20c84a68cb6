"""t-SNE of a few identities, colour = identity, marker = modality (SALCR Fig. 10).

Identities seen in both modalities are drawn (seeded choice), at most ``per_id`` images of
each identity and modality, and embedded together with scikit-learn's ``TSNE`` (cosine
metric, PCA initialisation, seeded). Visible images are circles, infrared images
triangles; a good cross-modality feature puts both shapes of one colour in one group.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from uvireid.errors import FeatureFileError
from uvireid.features import Features
from uvireid.types import INFRARED, VISIBLE
from uvireid.viz import new_figure, save

__all__ = ["DPI", "FIGSIZE", "embed", "plot_tsne", "tsne_sample"]

logger = logging.getLogger(__name__)

#: (width, height) in inches of the t-SNE figure
FIGSIZE = (8.0, 6.5)
DPI = 100
#: up to this many points t-SNE uses exact gradients, above it Barnes-Hut
EXACT_MAX = 500
MARKERS = {VISIBLE: ("o", "visible"), INFRARED: ("^", "infrared")}
#: identities the legend lists (two columns fit the figure); beyond, colours only
LEGEND_IDS = 48


def tsne_sample(features: Features, n_ids: int = 12, per_id: int = 10, seed: int = 0) -> np.ndarray:
    """(M,) sorted row indices: ``n_ids`` identities present in both modalities (seeded
    choice) and up to ``per_id`` images of each (identity, modality)."""
    vis = set(features.pids[features.modality == VISIBLE].tolist())
    ir = set(features.pids[features.modality == INFRARED].tolist())
    both = np.asarray(sorted(vis & ir), dtype=np.int64)
    if len(both) == 0:
        raise FeatureFileError(
            f"{features.source or 'features'} has no identity with images in both modalities; "
            f"the t-SNE plot needs some; fix: extract both modalities of the test set"
        )
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(both, size=min(n_ids, len(both)), replace=False))
    rows = []
    for pid in ids.tolist():
        for modality in (VISIBLE, INFRARED):
            idx = np.flatnonzero((features.pids == pid) & (features.modality == modality))
            if len(idx) > per_id:
                idx = np.sort(rng.choice(idx, size=per_id, replace=False))
            rows.append(idx)
    return np.sort(np.concatenate(rows))


def embed(feats: np.ndarray, seed: int = 0) -> np.ndarray:
    """(M, 2) t-SNE embedding of ``feats`` (M, d); perplexity min(30, (M - 1) / 3), exact
    gradients up to :data:`EXACT_MAX` points."""
    from sklearn.manifold import TSNE

    m = len(feats)
    if m < 4:
        raise FeatureFileError(f"t-SNE needs at least 4 images, got {m}")
    x = np.asarray(feats, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():  # no direction: cosine distances are NaN, sklearn's error bare
        raise FeatureFileError(
            f"t-SNE: {int((norms == 0).sum())} of the {m} sampled features are all zero (no "
            f"direction for the cosine metric); the model's features collapsed"
        )
    unit = x / norms[:, None]
    if np.ptp(unit, axis=0).max() < 1e-9:  # PCA's initialisation divides by a zero spread
        raise FeatureFileError(
            f"t-SNE: the {m} sampled features point the same way (the model collapsed to "
            f"one feature); nothing to embed"
        )
    perplexity = float(min(30.0, max(1.0, (m - 1) / 3)))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        metric="cosine",
        init="pca",
        random_state=seed,
        # exact gradients: faster than Barnes-Hut up to a few hundred points, and free of
        # its OpenMP threads (which crawl on a busy machine)
        method="exact" if m <= EXACT_MAX else "barnes_hut",
    )
    return tsne.fit_transform(x)


def plot_tsne(
    features: Features,
    path: str | os.PathLike,
    *,
    n_ids: int = 12,
    per_id: int = 10,
    seed: int = 0,
    dpi: int = DPI,
) -> Path:
    """Draw the t-SNE of ``n_ids`` identities into a PNG of :data:`FIGSIZE` inches.

    Args:
        features: the test set.
        path: PNG to write.
        n_ids: identities to draw (those in both modalities; fewer if fewer exist).
        per_id: at most this many images per (identity, modality).
        seed: identity choice and t-SNE seed.
        dpi: resolution.
    """
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    rows = tsne_sample(features, n_ids, per_id, seed)
    xy = embed(features.feats[rows], seed)
    pids, modality = features.pids[rows], features.modality[rows]
    ids = np.unique(pids)
    if len(ids) <= 20:
        cmap = colormaps["tab20"] if len(ids) > 10 else colormaps["tab10"]
        color = {pid: cmap(i) for i, pid in enumerate(ids.tolist())}
    else:  # more than a qualitative palette holds: evenly spaced hues (the colour map's
        # 256 levels: none repeated up to 256 identities)
        cmap = colormaps["turbo"]
        color = {pid: cmap(i / (len(ids) - 1)) for i, pid in enumerate(ids.tolist())}

    fig = new_figure(*FIGSIZE)
    ax = fig.add_subplot()
    for code, (marker, _name) in MARKERS.items():
        sel = modality == code
        ax.scatter(
            xy[sel, 0],
            xy[sel, 1],
            c=[color[p] for p in pids[sel].tolist()],
            marker=marker,
            s=36,
            edgecolors="black",
            linewidths=0.4,
        )
    shapes = [
        Line2D([], [], marker=m, linestyle="", color="gray", markeredgecolor="black", label=n)
        for m, n in MARKERS.values()
    ]
    swatches = [
        Line2D([], [], marker="s", linestyle="", color=color[p], label=f"id {p}")
        for p in ids.tolist()
    ]
    blank = Line2D([], [], linestyle="", label=" ")
    if len(ids) > LEGEND_IDS:  # a legend that long is cut off by the figure: none
        swatches = [Line2D([], [], linestyle="", label=f"({len(ids)} identities)")]
    # one legend outside the axes (constrained layout makes room for it): modality markers,
    # a gap, then the identity colours
    fig.legend(
        handles=[*shapes, blank, *swatches],
        title="marker = modality\ncolour = identity",
        fontsize=8,
        title_fontsize=8,
        ncols=1 if len(ids) <= 16 else 2,
        loc="outside right upper",
    )
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(f"t-SNE of {len(ids)} identities ({len(rows)} images)")
    return save(fig, path, dpi)
