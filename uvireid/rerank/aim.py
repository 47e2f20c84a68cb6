"""Affinity Inference Module (AIM) of SAAI (Fang, Yang, Fu; ICCV 2023), as a re-ranker.

The reference is ``AIM(qf, gf, k1, k2)`` in xiaoye-hhh/SAAI ``models/AIM.py`` (also in
SALCR's ``evaluator.py``)::

    q, g   = L2-normalise(Q), L2-normalise(G)
    A_qg   = q g^T, keeping per row the entries >= the row's k1-th largest (others 0)
    A_gg   = g g^T, sparsified the same way, then each row replaced by the mean of the
             rows of its first k2 top-k1 gallery neighbours (itself included)
    D      = -normalize(A_qg) normalize(A_gg)^T - q g^T

A query is compared with a gallery image through the gallery image's same-modality
neighbourhood, which sidesteps the modality gap. Negative similarities inside the top-k1
are kept (no clamp), ties at the k1-th value keep every tied entry (ties of the computed
products: two identical gallery rows can get similarities one rounding apart, and then
only one is tied), and the k2 smoothing
rows are the first k2 of the top-k1 list (so k2 > k1 acts as k2 = k1), as in the
reference. Differences: k1 is clamped to the gallery size (the reference's ``topk``
raises), ties in the smoothing list are ordered by index (``topk`` leaves them
unspecified), and the input is not moved to ``cuda`` (the work runs on its device).

SAAI's settings (tuned on the test sets): SYSU-MM01 all-search single-shot k1=4, k2=1;
indoor single-shot 2/2; multi-shot 20/6; RegDB 8/2.

Complexity: O(Nq Ng d + Ng^2 d) for the similarities, O(Nq Ng^2) for the affinity product,
O(Ng^2 + Nq Ng) memory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from uvireid.clustering.knn import topk_stable
from uvireid.registry import RERANKERS
from uvireid.rerank.inputs import check_k, check_pair, ensure_fits, to_output

__all__ = ["AIM", "affinity_inference"]


def _sparsify(sim: torch.Tensor, k1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries >= the row's k1-th largest kept, others 0; and the top-k1 list (ties by index)."""
    vals, rank = topk_stable(sim, min(k1, sim.shape[1]), largest=True)
    kept = torch.where(sim >= vals[:, -1:], sim, sim.new_zeros(()))
    return kept, rank


def affinity_inference(query: Any, gallery: Any, k1: int = 4, k2: int = 1) -> Any:
    """SAAI's AIM distance (Nq, Ng): smaller is more similar.

    Args:
        query: (Nq, d) features (numpy or torch); L2-normalised here.
        gallery: (Ng, d) features of the other modality.
        k1: neighbours kept per affinity row (clamped to Ng).
        k2: gallery rows averaged per gallery row (first k2 of the top-k1 list).

    Returns:
        (Nq, Ng) distances in the input dtype; values lie in [-2, 2].
    """
    q, g, was_numpy = check_pair(query, gallery, "aim")
    k1 = check_k(k1, "k1", "aim")
    k2 = check_k(k2, "k2", "aim")
    nq, ng = q.shape[0], g.shape[0]
    ensure_fits(
        # raw, a_qg, the propagated queries, the output and a mask (nq x ng); the gallery
        # blocks (ng x ng)
        q.element_size() * (4.25 * nq * ng + (3.0 + min(k2, k1)) * ng * ng),
        q.device,
        f"AIM for {nq} queries x {ng} gallery images",
        "re-rank the query set in parts, or use --reranker cmfp",
    )
    q, g = F.normalize(q, dim=1), F.normalize(g, dim=1)
    raw = q @ g.T
    a_qg, _ = _sparsify(raw, k1)
    a_gg, rank = _sparsify(g @ g.T, k1)
    rows = rank[:, : min(k2, rank.shape[1])]
    smooth = torch.zeros_like(a_gg)
    for p in range(rows.shape[1]):  # k2 iterations (1-6), each a full-matrix gather
        smooth += a_gg[rows[:, p]]
    smooth /= rows.shape[1]
    new_q, new_g = F.normalize(a_qg, dim=1), F.normalize(smooth, dim=1)
    dist = (new_q @ new_g.T).neg_().sub_(raw)
    return to_output(dist, was_numpy)


@RERANKERS.register("aim")
class AIM:
    """Affinity inference (SAAI, ICCV 2023) as a training-free re-ranker.

    Args:
        k1: neighbours kept per affinity row (SAAI: 4 on SYSU-MM01 all-search
            single-shot, 8 on RegDB); clamped to the gallery size.
        k2: gallery neighbours averaged per gallery row (SAAI: 1 SYSU, 2 RegDB).

    ``rerank(query, gallery)`` returns the (Nq, Ng) AIM distance.
    """

    def __init__(self, k1: int = 4, k2: int = 1):
        self.k1 = check_k(k1, "k1", "aim")
        self.k2 = check_k(k2, "k2", "aim")

    @property
    def name(self) -> str:
        """Short description recorded in evaluation provenance."""
        return f"aim(k1={self.k1},k2={self.k2})"

    def __repr__(self) -> str:
        return f"AIM(k1={self.k1}, k2={self.k2})"

    def rerank(self, query: Any, gallery: Any) -> Any:
        """(Nq, Ng) AIM distances (numpy for numpy input)."""
        return affinity_inference(query, gallery, self.k1, self.k2)
