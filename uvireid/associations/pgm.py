"""PGM: progressive graph matching of visible and infrared clusters (Wu & Ye, CVPR 2023).

Source: PGM Sec. 3.2 and the official ``zesenwu23/USL-VI-ReID`` (``shared/notes/peers.md``
Sec. 2.1). With L2-normalised cluster centroids ``C_v`` (K_v x d) and ``C_r`` (K_r x d)::

    cost = exp(-C_v C_r^T)                              (K_v x K_r; the code's 1 / exp(S))
    round 1: Hungarian on cost -> a one-to-one match that covers the smaller side
    round t: Hungarian on cost[unmatched clusters of the larger side, :] -> each of them
             gets a partner on the smaller side (which may now have several)
    until every cluster of the larger side has a partner.

Round 1 gives the smaller side's map (one-to-one, total); all rounds together give the
larger side's map (many-to-one, total). A visible instance of cluster ``a`` gets the
infrared label ``v2r[a]``; an infrared instance of cluster ``b`` the visible label
``r2v[b]`` (what PGM's alternate cross-memory loss uses).

Fixes over the official code (``peers.md`` Sec. 2.1 pitfalls): it runs exactly two rounds,
so past a 2:1 ratio some clusters stay unmatched and the trainer raises ``KeyError``; and
the SYSU script does nothing at all when K_v < K_r. Here the rounds repeat until every
cluster is matched (``ceil(K_large / K_small)`` rounds) and both directions are handled
the same way, so the matching is total for any ratio. The Hungarian solver is scipy's
``linear_sum_assignment`` on the rectangular cost, which is the official zero-cost dummy
padding without the dummies.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from uvireid.associations.centroid import CentroidAssociator
from uvireid.associations.checks import check_finite
from uvireid.errors import ConfigError
from uvireid.registry import ASSOCIATORS

__all__ = ["progressive_matching", "PGM"]

logger = logging.getLogger(__name__)


def progressive_matching(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Progressive Hungarian matching of the rows and columns of ``cost`` (PGM Sec. 3.2).

    Args:
        cost: (K_a, K_b) finite float cost, K_a, K_b >= 1.

    Returns:
        ``(a2b, b2a, rounds)``: (K_a,) and (K_b,) int64 partner indices, both total;
        the smaller side's map is the first round's one-to-one match, the larger side's
        comes from all rounds (for K_a == K_b both are the one-to-one match).

    Raises:
        FeatureFileError: NaN or inf in ``cost``. ConfigError: a side without clusters.
    """
    check_finite(cost, "pgm", "the matching cost")
    ka, kb = cost.shape
    if min(ka, kb) == 0:  # no round could give the larger side a partner: it never ended
        raise ConfigError(
            f"pgm: a matching needs a cluster on each side; the cost is {ka} x {kb} (the "
            f"associator itself leaves an epoch without clusters in a modality unmatched)"
        )
    from scipy.optimize import linear_sum_assignment  # not at `import uvireid`

    transpose = ka < kb  # work with rows = the larger side
    c = cost.T if transpose else cost
    n_large, n_small = c.shape
    large2small = np.full(n_large, -1, dtype=np.int64)
    small2large = np.full(n_small, -1, dtype=np.int64)
    rows, cols = linear_sum_assignment(c)
    large2small[rows] = cols
    small2large[cols] = rows
    rounds = 1
    while (large2small < 0).any():
        left = np.flatnonzero(large2small < 0)
        r, col = linear_sum_assignment(c[left])
        large2small[left[r]] = col
        rounds += 1
    if transpose:
        return small2large, large2small, rounds
    return large2small, small2large, rounds


@ASSOCIATORS.register("pgm")
class PGM(CentroidAssociator):
    """Progressive graph matching of cluster centroids (Wu & Ye, CVPR 2023).

    Args:
        k_tr: CMFP(tr) neighbours before the centroids are taken (SALCR's refinement);
            None (default, as in PGM) = no refinement.
        device: where to compute the centroids (default: the visible features' device).

    ``associate(feats_v, labels_v, feats_r, labels_r) -> CrossLabels``: every clustered
    instance gets its own label and its cluster's partner label in the other space; the
    matching covers every cluster of both modalities for any ratio of cluster counts.
    ``matches`` holds every (visible, infrared) pair of every round.
    """

    name = "pgm"
    title = "PGM"

    def match(self, cv: torch.Tensor, cr: torch.Tensor, info: dict):
        """Progressive Hungarian on the cost exp(-cos) until every cluster has a partner."""
        cost = torch.exp(-(cv @ cr.T)).cpu().numpy()
        v2r, r2v, rounds = progressive_matching(cost)
        pairs = np.concatenate(
            [
                np.stack([np.arange(len(v2r)), v2r], 1),
                np.stack([r2v, np.arange(len(r2v))], 1),
            ]
        )
        info.update({"rounds": rounds, "num_matches": len(np.unique(pairs, axis=0))})
        logger.info(
            "pgm: %d visible / %d infrared clusters matched in %d round(s)",
            len(v2r),
            len(r2v),
            rounds,
        )
        return v2r, r2v, pairs
