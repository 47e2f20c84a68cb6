"""MBCCM: many-to-many bilateral cross-modality cluster matching (Cheng et al., ACM MM 2023).

Source: MBCCM Sec. 3.2 and the official ``FranklinLingfeng/MBCCM-master-MM-23``
``trainer.py`` (``mbccm_matching``), ``shared/notes/peers.md`` Sec. 3.1. With
L2-normalised centroids and ``D[i, v] = ||c^r_i - c^v_v||^2`` (K_r x K_v)::

    K_v >= K_r:  P1 = Hungarian(D)                      every IR cluster gets a distinct RGB one
                 P2 = Hungarian(D stacked k times),    k = floor(K_v / K_r) + 1,
                      rows taken mod K_r                every RGB cluster gets an IR one
    K_v <  K_r:  the same on D^T (P1: every RGB gets a distinct IR; P2: every IR an RGB)

    A1[i, {v' : D[i, v'] <= D[i, v]}] = 1   for (i, v) in P1   (row expansion)
    A2[{i' : D[i', v] <= D[i, v]}, v] = 1   for (i, v) in P2   (column expansion)
    A = A1 OR A2                                                (K_r x K_v mask)

"Bilateral": one Hungarian anchored on each side; "many-to-many": each match is expanded
to every cluster at least as close as the Hungarian partner. As in the official code,
the expansions run along the infrared row for P1 and the visible column for P2 in both
cases (for K_v < K_r too). The mask is returned visible-major as ``matches`` (pairs) and
:meth:`uvireid.types.CrossLabels.match_mask`; the per-instance cross label is the
*primary* partner: the Hungarian match that covers the instance's cluster (P2 for the
larger side, P1 for the smaller; for K_v == K_r, P2 for visible and P1 for infrared).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from uvireid.associations.centroid import CentroidAssociator
from uvireid.associations.checks import check_finite
from uvireid.errors import ConfigError
from uvireid.registry import ASSOCIATORS

__all__ = ["bilateral_matching", "MBCCM"]

logger = logging.getLogger(__name__)


def bilateral_matching(dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MBCCM's many-to-many mask and primary partners (MM 2023 Sec. 3.2).

    Args:
        dist: (K_r, K_v) finite squared distances between infrared (rows) and visible
            (columns) centroids, K_r, K_v >= 1.

    Returns:
        ``(mask, r2v, v2r)``: (K_r, K_v) bool mask A, and the primary partner of every
        infrared cluster (K_r,) and of every visible cluster (K_v,), int64, total.

    Raises:
        FeatureFileError: NaN or inf in ``dist``. ConfigError: a side without clusters.
    """
    check_finite(dist, "mbccm", "the centroid distances")
    k_r, k_v = dist.shape
    if min(k_r, k_v) == 0:  # K_v // K_r divided by zero
        raise ConfigError(
            f"mbccm: a matching needs a cluster on each side; the distances are {k_r} x "
            f"{k_v} (the associator itself leaves an epoch without clusters in a modality "
            f"unmatched)"
        )
    from scipy.optimize import linear_sum_assignment  # not at `import uvireid`

    if k_v >= k_r:
        k = k_v // k_r + 1
        i1, v1 = linear_sum_assignment(dist)  # every IR row gets a distinct RGB column
        i2, v2 = linear_sum_assignment(np.tile(dist, (k, 1)))  # every RGB column gets an IR
        i2 = i2 % k_r
    else:
        k = k_r // k_v + 1
        v1, i1 = linear_sum_assignment(dist.T)  # every RGB gets a distinct IR
        v2, i2 = linear_sum_assignment(np.tile(dist.T, (k, 1)))  # every IR gets an RGB
        v2 = v2 % k_v
    # A1: along the infrared row of each P1 pair, every visible cluster at least as close;
    # A2: along the visible column of each P2 pair, every infrared cluster at least as
    # close. A row (column) hit by several pairs ORs their sets = the largest threshold.
    row_thr = np.full(k_r, -np.inf)
    np.maximum.at(row_thr, i1, dist[i1, v1])
    col_thr = np.full(k_v, -np.inf)
    np.maximum.at(col_thr, v2, dist[i2, v2])
    mask = (dist <= row_thr[:, None]) | (dist <= col_thr[None, :])
    r2v = np.full(k_r, -1, dtype=np.int64)
    v2r = np.full(k_v, -1, dtype=np.int64)
    if k_v >= k_r:
        r2v[i1], v2r[v2] = v1, i2
    else:
        v2r[v1], r2v[i2] = i1, v2
    return mask, r2v, v2r


@ASSOCIATORS.register("mbccm")
class MBCCM(CentroidAssociator):
    """Many-to-many bilateral cluster matching (Cheng et al., ACM MM 2023).

    Args:
        k_tr: CMFP(tr) neighbours before the centroids are taken; None (default, as in
            MBCCM) = no refinement.
        device: where to compute the centroids (default: the visible features' device).

    ``associate(feats_v, labels_v, feats_r, labels_r) -> CrossLabels``: ``matches`` is the
    many-to-many mask as (visible, infrared) pairs (``match_mask()`` gives it dense, for
    MBCCM's assignment sampler); per instance, the cross label is the cluster's primary
    (Hungarian) partner. Total for any ratio of cluster counts.
    """

    name = "mbccm"
    title = "MBCCM"

    def match(self, cv: torch.Tensor, cr: torch.Tensor, info: dict):
        """Bilateral Hungarian on squared L2 distances, expanded to many-to-many."""
        dist = (cr * cr).sum(1)[:, None] + (cv * cv).sum(1)[None, :] - 2.0 * (cr @ cv.T)
        mask, r2v, v2r = bilateral_matching(dist.cpu().numpy())
        ir, iv = np.nonzero(mask)
        info.update(
            {
                "num_matches": int(mask.sum()),
                "mean_partners_r": float(mask.sum(1).mean()),
                "mean_partners_v": float(mask.sum(0).mean()),
            }
        )
        logger.info(
            "mbccm: %d visible / %d infrared clusters, %d matched pairs (mean partners: "
            "IR %.2f, RGB %.2f)",
            len(v2r),
            len(r2v),
            info["num_matches"],
            info["mean_partners_r"],
            info["mean_partners_v"],
        )
        return v2r, r2v, np.stack([iv, ir], 1)
