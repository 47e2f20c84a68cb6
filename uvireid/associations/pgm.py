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
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from uvireid.associations.checks import build, check_finite, cluster_means, empty_result, prepare
from uvireid.associations.refine import check_k_tr, cmfp_tr
from uvireid.registry import ASSOCIATORS
from uvireid.types import CrossLabels

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
        FeatureFileError: NaN or inf in ``cost``.
    """
    check_finite(cost, "pgm", "the matching cost")
    ka, kb = cost.shape
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
class PGM:
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

    def __init__(self, k_tr: int | None = None, device: str | None = None):
        self.k_tr = k_tr
        self.device = device

    def __repr__(self) -> str:
        return f"PGM(k_tr={self.k_tr})"

    def associate(self, feats_v: Any, labels_v: Any, feats_r: Any, labels_r: Any) -> CrossLabels:
        """Cross labels of every instance (visible first, then infrared); see the class."""
        k_tr = check_k_tr(self.k_tr, "pgm")
        v, r = prepare(feats_v, labels_v, feats_r, labels_r, "pgm", self.device)
        info: dict = {"associator": "pgm", "k_tr": k_tr}
        if v.k == 0 or r.k == 0:
            return empty_result(v, r, "pgm", info)
        fv, fr = v.feats, r.feats
        if k_tr is not None:
            fv, fr = cmfp_tr(fv, fr, k_tr, keep_v=v.kept, keep_r=r.kept)
        cv = torch.nn.functional.normalize(cluster_means(fv, v.compact, v.k), dim=1)
        cr = torch.nn.functional.normalize(cluster_means(fr, r.compact, r.k), dim=1)
        cost = torch.exp(-(cv @ cr.T)).cpu().numpy()
        v2r, r2v, rounds = progressive_matching(cost)
        r_of_v = np.full(v.n, -1, dtype=np.int64)
        v_of_r = np.full(r.n, -1, dtype=np.int64)
        r_of_v[v.kept] = r.ids[v2r[v.compact[v.kept]]]
        v_of_r[r.kept] = v.ids[r2v[r.compact[r.kept]]]
        pairs = np.concatenate(
            [
                np.stack([v.ids, r.ids[v2r]], 1),
                np.stack([v.ids[r2v], r.ids], 1),
            ]
        )
        info.update({"rounds": rounds, "num_matches": len(np.unique(pairs, axis=0))})
        logger.info(
            "pgm: %d visible / %d infrared clusters matched in %d round(s)", v.k, r.k, rounds
        )
        return build(v, r, r_of_v, v_of_r, pairs, info)
