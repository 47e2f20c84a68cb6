"""Pseudo-label quality against ground-truth identities.

The four external clustering indices SALCR (IJCV 2025) plots per epoch in Fig. 7: Adjusted Rand
Index (Hubert & Arabie 1985), Fowlkes-Mallows Index (Fowlkes & Mallows 1983), Adjusted Mutual
Information (Vinh et al. 2010) and V-measure (Rosenberg & Hirschberg 2007), all computed by
scikit-learn (``sklearn.metrics``).

Outliers (label ``-1``, e.g. DBSCAN noise) are not a cluster. Two treatments:

* ``ignore_outliers=False`` (default): every outlier is its own singleton cluster, so all
  instances are scored and leaving an instance unclustered costs what splitting it off
  costs. Numbers are comparable between clusterers with different outlier rates.
* ``ignore_outliers=True``: outliers are dropped and only the clustered instances are
  scored; read these numbers together with ``outlier_fraction``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from uvireid.errors import ProtocolError
from uvireid.evaluation.metrics import to_numpy

__all__ = ["QUALITY_KEYS", "label_quality", "singletons_for_outliers"]

logger = logging.getLogger(__name__)

QUALITY_KEYS = ("ari", "fmi", "ami", "v_measure", "homogeneity", "completeness")


def singletons_for_outliers(labels: np.ndarray) -> np.ndarray:
    """(N,) int64 labels where every ``-1`` becomes a new label of its own.

    The new labels are ``max(labels) + 1, max(labels) + 2, ...`` in order of appearance.
    """
    labels = np.asarray(labels, dtype=np.int64).copy()
    out = labels < 0
    base = int(labels[~out].max()) + 1 if (~out).any() else 0
    labels[out] = base + np.arange(int(out.sum()), dtype=np.int64)
    return labels


def label_quality(pred: Any, gt: Any, *, ignore_outliers: bool = False) -> dict[str, float]:
    """ARI, FMI, AMI and V-measure of pseudo-labels against ground-truth identities.

    Args:
        pred: (N,) int pseudo-labels, ``-1`` = outlier (numpy, list or torch).
        gt: (N,) int ground-truth identities.
        ignore_outliers: drop outliers instead of scoring each as a singleton (module doc).

    Returns:
        ``{"ari", "fmi", "ami", "v_measure", "homogeneity", "completeness"}`` (floats, 1 is
        perfect; NaN when no instance is left to score), plus ``num_clusters`` (outliers
        excluded), ``num_outliers``, ``outlier_fraction``, ``num_scored`` and
        ``ignore_outliers``.
    """
    from sklearn import metrics as skm

    p = to_numpy(pred)
    g = to_numpy(gt)
    if p.ndim != 1 or g.ndim != 1 or len(p) != len(g):
        raise ProtocolError(
            f"label_quality needs pred and gt of the same length (N,), got shapes "
            f"{np.shape(p)} and {np.shape(g)}; pass one pseudo-label per ground-truth label"
        )
    if len(p) == 0:
        raise ProtocolError("label_quality got no labels; pass at least one instance")
    from uvireid.associations.checks import as_labels

    p = as_labels(p, len(p), "label_quality: pred")  # whole numbers >= -1 (0.5 is no label)
    outlier = p < 0
    n_out = int(outlier.sum())
    info: dict[str, Any] = {
        "num_clusters": int(len(np.unique(p[~outlier]))),
        "num_outliers": n_out,
        "outlier_fraction": n_out / len(p),
        "ignore_outliers": bool(ignore_outliers),
    }
    if ignore_outliers:
        p_s, g_s = p[~outlier], g[~outlier]
    else:
        p_s, g_s = singletons_for_outliers(p), g
    info["num_scored"] = int(len(p_s))
    if len(p_s) == 0:
        logger.warning("label_quality: every instance is an outlier; nothing to score")
        return {**dict.fromkeys(QUALITY_KEYS, float("nan")), **info}
    hom, com, v = skm.homogeneity_completeness_v_measure(g_s, p_s)
    scores = {
        "ari": float(skm.adjusted_rand_score(g_s, p_s)),
        "fmi": float(skm.fowlkes_mallows_score(g_s, p_s)),
        "ami": float(skm.adjusted_mutual_info_score(g_s, p_s)),
        "v_measure": float(v),
        "homogeneity": float(hom),
        "completeness": float(com),
    }
    return {**scores, **info}
