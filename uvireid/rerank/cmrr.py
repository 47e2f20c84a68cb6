"""Cross-modality re-ranking (CMRR) of H2H (Liang et al., TIP 2021), as in MULT/SALCR.

The reference is ``re_ranking_cross`` of FranklinLingfeng/code_for_MULT (also shipped with
SALCR, ``cross_modality_rerank.py``), called by their evaluators with k = 15 (SYSU-MM01)
or 8 (RegDB) and eta = 0.1. With Q the queries (one modality) and G the gallery (the
other), all distances squared Euclidean::

    n_ab   = d(A, B) / column max                       for the four blocks qq, qg, gq, gg
    rr_qq  = intra re-ranking of n_qq (Zhong et al. on one set: k1 = k, k2 = 6, lambda = 0.3,
             Jaccard over all pairs, clipped at 0)          and likewise rr_gg
    rank_qq, rank_gg = ranks of rr_qq, rr_gg;  rank_qg, rank_gq = ranks of n_qg, n_gq
    V_qq = encode(n_qq; fwd = bwd = expansion = QE = rank_qq)
    V_gg = encode(n_gg; rank_gg)
    V_qg = encode(n_qg; fwd = rank_qg, bwd = rank_gq, expansion = rank_gg, QE = rank_qq)
    V_gq = encode(n_gq; fwd = rank_gq, bwd = rank_qg, expansion = rank_qq, QE = rank_gg)
    V    = [[V_qq, V_qg], [V_gq, V_gg]], each row divided by its sum
    d*   = (1 - eta) J(V)[q, g] + eta d(Q, G)       (J the Jaccard distance, d unnormalised)

``encode`` is Zhong et al.'s k-reciprocal feature with k1 = k and query expansion over k
(not 6) same-modality neighbours: a query's cross-modality neighbour g must also see the
query among its own top k+1 ("cycle-modality search"), and the expansion and query
expansion use same-modality ranks ("self-modality search").

Differences from the reference, on purpose:

- the reference stores V and the Jaccard distances in float16 (errors up to ~1e-3); here
  they are float64 (float32 input: float32), so results equal a float32 restatement of the
  reference to 1e-4 and the float16 original only to about 1e-2;
- ties in the ranks are broken by index (the reference's numpy argsort is unstable);
- a column whose maximum distance is 0 (a single query, or all-identical features) is
  left unnormalised instead of becoming NaN, and a row of V that sums to 0 stays 0.

The self distances (query-query, gallery-gallery) are computed exactly symmetric (each
off-diagonal tile once); the reference's two separate products can differ from that in the
last bit, which matters only for exact ties.

Complexity (Nq queries, Ng gallery): O((Nq + Ng)^2 d) for the distances, O(Nq^2 + Ng^2 +
Nq Ng) memory (dense distance blocks), O(N k^3) for the reciprocal sets and
O(sum_c nnz(c)^2) for the two Jaccard steps (the intra one over all pairs of a set). The
reference runs five Python loops over all rows and full argsorts. Inputs whose dense blocks
cannot fit stop at once with an error saying how much memory they need.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from uvireid.clustering.knn import topk_stable
from uvireid.registry import RERANKERS
from uvireid.rerank.distances import squared_euclidean, squared_euclidean_self
from uvireid.rerank.inputs import check_k, check_pair, ensure_fits, to_output
from uvireid.rerank.kreciprocal import (
    column_max_normalize,
    min_sum,
    reciprocal_encode,
    round_half_even,
)

__all__ = ["CMRR", "cmrr_distance", "intra_re_ranking"]

logger = logging.getLogger(__name__)


def _ranks(d: torch.Tensor, width: int) -> torch.Tensor:
    """(n, min(width, m)) indices of the smallest entries of each row, ties by index."""
    return topk_stable(d, width, largest=False)[1]


def _divide_by(d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``d / m`` (broadcast), leaving entries whose divisor is 0 as they are."""
    return d / torch.where(m > 0, m, torch.ones_like(m))


def _jaccard(s: torch.Tensor) -> torch.Tensor:
    """``1 - s / (2 - s)`` in place on ``s`` (one temporary instead of three)."""
    den = torch.rsub(s, 2.0)
    return s.div_(den).neg_().add_(1.0)


def intra_re_ranking(
    dist: torch.Tensor, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> torch.Tensor:
    """MULT's ``intra_modality_re_ranking``: k-reciprocal re-ranking inside one set.

    Args:
        dist: (n, n) distances (column-normalised by the caller, as in CMRR).
        k1, k2, lambda_value: as in Zhong et al.

    Returns:
        (n, n) ``(1 - lambda) max(J, 0) + lambda dist'`` over ALL pairs, where
        ``dist' = (dist / column max)^T``.
    """
    return _intra_core(column_max_normalize(dist).T.contiguous(), k1, k2, lambda_value)


def _intra_core(d: torch.Tensor, k1: int, k2: int, lambda_value: float) -> torch.Tensor:
    """:func:`intra_re_ranking` from ``d = (dist / column max)^T`` (contiguous)."""
    n = d.shape[0]
    half = round_half_even(k1 / 2)
    rank = _ranks(d, max(k1 + 1, k2, half + 1))
    v = reciprocal_encode(d, rank, rank, rank, rank, k1, k2)
    jac = _jaccard(min_sum(v, v)).clamp_(min=0).to(d.dtype)
    assert jac.shape == (n, n)
    return jac.mul_(1 - lambda_value).add_(d, alpha=lambda_value)


def _self_block(
    x: torch.Tensor, k: int, k2: int, lambda_value: float, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One set against itself: ``(n_xx, rank_xx)``, the column-normalised self distances
    and the ranks of their intra-modality re-ranking.

    The self distances are exactly symmetric (one GEMM half), so column max = row max
    and ``(d / column max)^T = d / row max`` bit for bit: the intra re-ranking gets its
    input without a transpose, and without normalising ``n_xx`` again (its maxima are
    exactly 1, a division by 1.0).
    """
    d = squared_euclidean_self(x)
    m = d.max(dim=1).values
    rank = _ranks(_intra_core(_divide_by(d, m[:, None]), k, k2, lambda_value), width)
    return _divide_by(d, m[None, :]), rank


def _row_normalize_pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[a, b] / row sums`` as one sparse CSR matrix (b's columns after a's)."""
    n, shift = a.shape
    dev = a.device
    ca, cb = a.crow_indices(), b.crow_indices()
    count_a, count_b = ca.diff(), cb.diff()
    crow = ca + cb
    rows_a = torch.repeat_interleave(torch.arange(n, device=dev), count_a)
    rows_b = torch.repeat_interleave(torch.arange(n, device=dev), count_b)
    pos_a = crow[rows_a] + (torch.arange(rows_a.numel(), device=dev) - ca[rows_a])
    pos_b = crow[rows_b] + count_a[rows_b] + (torch.arange(rows_b.numel(), device=dev) - cb[rows_b])
    col = torch.empty(int(crow[-1]), dtype=torch.long, device=dev)
    val = torch.empty(int(crow[-1]), dtype=torch.float64, device=dev)
    col[pos_a], col[pos_b] = a.col_indices(), b.col_indices() + shift
    val[pos_a], val[pos_b] = a.values().double(), b.values().double()
    tot = torch.zeros(n, dtype=torch.float64, device=dev)
    tot.index_add_(0, rows_a, a.values().double()).index_add_(0, rows_b, b.values().double())
    tot = torch.where(tot > 0, tot, torch.ones_like(tot))
    val /= torch.repeat_interleave(tot, count_a + count_b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow, col, val, (n, shift + b.shape[1]), check_invariants=False
        )


def cmrr_distance(
    query: Any,
    gallery: Any,
    k: int = 15,
    eta: float = 0.1,
    *,
    k2_intra: int = 6,
    lambda_intra: float = 0.3,
) -> Any:
    """CMRR re-ranked (Nq, Ng) distance from features (MULT/SALCR ``re_ranking_cross``).

    Args:
        query: (Nq, d) features of one modality (SYSU-MM01: infrared queries); numpy or
            torch. Used as given (the SALCR test path passes L2-normalised features).
        gallery: (Ng, d) features of the other modality.
        k: neighbourhood size of every block (15 SYSU-MM01, 8 RegDB).
        eta: weight of the raw squared distance (0.1).
        k2_intra, lambda_intra: query expansion and lambda of the intra-modality
            re-ranking (6, 0.3 in the reference).

    Returns:
        (Nq, Ng) distances in the input dtype (numpy for numpy input).
    """
    q, g, was_numpy = check_pair(query, gallery, "cmrr")
    k = check_k(k, "k", "cmrr")
    k2_intra = check_k(k2_intra, "k2_intra", "cmrr")
    nq, ng = q.shape[0], g.shape[0]
    ensure_fits(
        8.0 * (4 * nq * nq + 4 * ng * ng + 6 * nq * ng),
        q.device,
        f"CMRR re-ranking of {nq} queries x {ng} gallery images",
        "use --reranker cmfp (sparse, linear memory) or re-rank fewer images "
        "(e.g. the query set in parts)",
    )
    d_qg = squared_euclidean(q, g)
    n_qg = column_max_normalize(d_qg)
    # (d_qg^T / its column max) = (d_qg / its row max)^T: a contiguous reduction
    n_gq = _divide_by(d_qg, d_qg.max(dim=1, keepdim=True).values).T.contiguous()
    width = k + 1
    n_qq, rank_qq = _self_block(q, k, k2_intra, lambda_intra, width)
    n_gg, rank_gg = _self_block(g, k, k2_intra, lambda_intra, width)
    rank_qg = _ranks(n_qg, width)
    rank_gq = _ranks(n_gq, width)

    v_qq = reciprocal_encode(n_qq, rank_qq, rank_qq, rank_qq, rank_qq, k, k)
    v_gg = reciprocal_encode(n_gg, rank_gg, rank_gg, rank_gg, rank_gg, k, k)
    v_qg = reciprocal_encode(n_qg, rank_qg, rank_gq, rank_gg, rank_qq, k, k)
    v_gq = reciprocal_encode(n_gq, rank_gq, rank_qg, rank_qq, rank_gg, k, k)

    vq = _row_normalize_pair(v_qq, v_qg)  # (nq, nq + ng)
    vg = _row_normalize_pair(v_gq, v_gg)  # (ng, nq + ng)
    jac = _jaccard(min_sum(vq, vg)).to(q.dtype)
    out = jac.mul_(1 - eta).add_(d_qg, alpha=eta)
    return to_output(out, was_numpy)


@RERANKERS.register("cmrr")
class CMRR:
    """Cross-modality re-ranking of H2H (TIP 2021) as implemented by MULT/SALCR.

    Args:
        k: neighbourhood size (MULT/SALCR: 15 on SYSU-MM01, 8 on RegDB).
        eta: weight of the raw squared Euclidean distance in the result (0.1).
        k2_intra: query expansion of the intra-modality re-ranking (6).
        lambda_intra: lambda of the intra-modality re-ranking (0.3).

    ``rerank(query, gallery)`` returns the (Nq, Ng) re-ranked distance. All sizes are
    clamped to the sets they index, so tiny inputs work.
    """

    def __init__(self, k: int = 15, eta: float = 0.1, k2_intra: int = 6, lambda_intra: float = 0.3):
        self.k = k
        self.eta = eta
        self.k2_intra = k2_intra
        self.lambda_intra = lambda_intra

    @property
    def name(self) -> str:
        """Short description recorded in evaluation provenance."""
        return f"cmrr(k={self.k},eta={self.eta})"

    def __repr__(self) -> str:
        return f"CMRR(k={self.k}, eta={self.eta})"

    def rerank(self, query: Any, gallery: Any) -> Any:
        """(Nq, Ng) re-ranked distances (numpy for numpy input)."""
        return cmrr_distance(
            query,
            gallery,
            self.k,
            self.eta,
            k2_intra=self.k2_intra,
            lambda_intra=self.lambda_intra,
        )
