"""An example uvireid plugin: alpha-weighted query expansion (alpha-QE) as a re-ranker.

Radenovic, Tolias and Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation",
TPAMI 2019, Sec. 4.3: each query is replaced by the L2-normalised sum of itself and its
k nearest gallery features, each weighted by its cosine similarity to the query raised
to the power alpha (negative similarities count 0). Across modalities this moves an
infrared query towards the visible images it already matches best.

Installing this package (``pip install -e examples/plugin``) makes ``alpha_qe`` a part
like any other: ``uvireid list`` shows it, a recipe names it (``reranker: {type: alpha_qe,
k: 2, alpha: 3}``) and ``uvireid rerank FEATURES.npz --reranker alpha_qe --set k=2``
evaluates it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uvireid.registry import RERANKERS
from uvireid.rerank.inputs import check_k, check_pair, check_real, to_output

__all__ = ["AlphaQE", "expand"]


def expand(query: torch.Tensor, gallery: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """(Nq, d) expanded, L2-normalised queries: ``normalize(q + sum_i max(q.g_i, 0)^alpha
    g_i)`` over the k gallery rows most similar to ``q`` (cosine; k clamped to Ng)."""
    q, g = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
    sim = q @ g.T
    top, idx = sim.topk(min(int(k), g.shape[0]), dim=1)
    weights = top.clamp(min=0) ** alpha  # (Nq, k)
    return F.normalize(q + torch.einsum("qk,qkd->qd", weights, g[idx]), dim=1)


@RERANKERS.register("alpha_qe")
class AlphaQE:
    """Alpha-weighted query expansion (Radenovic et al., TPAMI 2019): queries expanded
    with their k nearest gallery features weighted by similarity^alpha; distance
    ``2 - 2 cos``. O(Nq Ng d) time, O(Nq Ng) memory.

    Args:
        k: gallery neighbours per query (1-3 in the paper's retrieval setting).
        alpha: weight exponent (3 in the paper).
    """

    def __init__(self, k: int = 2, alpha: float = 3.0):
        # uvireid's checks raise ConfigError, which the CLI reports as one line naming the
        # value (a plain ValueError would be wrapped the same way by the registry)
        self.k = check_k(k, "k", "alpha_qe")
        self.alpha = check_real(alpha, "alpha", "alpha_qe", 0.0)

    @property
    def name(self) -> str:
        """Short description with the settings (evaluation provenance, tables)."""
        return f"alpha_qe(k={self.k},alpha={self.alpha})"

    def rerank(self, query, gallery):
        """(Nq, Ng) distance between the expanded queries and the gallery."""
        q, g, was_numpy = check_pair(query, gallery, "alpha_qe")
        qe = expand(q, g, self.k, self.alpha)
        return to_output(2.0 - 2.0 * qe @ F.normalize(g, dim=1).T, was_numpy)
