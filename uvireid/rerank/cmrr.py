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
  ties of the computed values, that is: intra-modality scores equal in exact arithmetic
  (duplicated or quantised features) can come out some ulps apart, and then their order
  follows the rounding of the sums, not the index (the reference's float16 storage has
  the same property, much more so);
- a column whose maximum distance is 0 (a single query, or all-identical features) is
  left unnormalised instead of becoming NaN, and a row of V that sums to 0 stays 0.

The self distances (query-query, gallery-gallery) use the reference's formula
``(|x_i|^2 + |x_j|^2) - 2 x_i.x_j`` and are computed exactly symmetric (each off-diagonal
tile once, mirrored); the reference's two separate products can differ from that in the
last bit, which matters only for exact ties.

Where the work goes (Nq queries, Ng gallery, N either set):

- dense: the distances, O((Nq + Ng)^2 d) (the self blocks' upper tiles only), held once
  as d_qq (Nq x Nq), d_gg and the (Nq, Ng) blocks: O(Nq^2 + Ng^2 + Nq Ng) memory. A self
  block is kept only as (n_qq)^T = d / row max (normalised in place; d is exactly
  symmetric), from which n_qq is read at V's entries;
- dense: the top-(k+1) selections of the intra re-ranking, over d' = (n_qq)^T and, one
  row block at a time, over ``(1 - lambda) max(J, 0) + lambda d'`` for ALL pairs of a set
  (O(N^2) per set; pairs whose V rows share no column have J = 1 but still compete
  through ``lambda d'``);
- sparse: the reciprocal sets (O(N k^2) look-ups in a membership bitmap of a block of
  rows, then a scan of its N^2 / 8 words), V, and the intra Jaccard numerators
  ``s = sum_c min(V_ic, V_jc)``, accumulated from the pairs of V entries that share a
  column only (O(nnz(V) * widest column of V) work into one (rows x N) block at a time,
  not an N x N matrix);
- the final cross Jaccard (Nq x Ng): each query-side entry of V against its column of
  the gallery-side V held dense ((Nq + Ng) x Ng), O(nnz(V_q) * Ng) (when the gallery
  side's columns are narrow, the row-block accumulation of the intra step instead).

Every sum takes its terms in the same order as the plain pair-list computation
(:func:`~uvireid.rerank.kreciprocal.min_sum`), so the blocked, sparse steps give the
same values to the bit. The reference runs five Python loops over all rows and full
argsorts. Inputs whose dense blocks cannot fit stop at once with an error saying how much
memory they need.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from uvireid.clustering.knn import topk_stable
from uvireid.registry import RERANKERS
from uvireid.rerank import workspace
from uvireid.rerank.distances import self_distances, squared_norms
from uvireid.rerank.inputs import check_k, check_pair, check_real, ensure_fits, to_output
from uvireid.rerank.kreciprocal import (
    _triples,
    column_max_normalize,
    encode_sets,
    min_sum,
    reciprocal_encode,
    reciprocal_sets,
    round_half_even,
)

__all__ = ["CMRR", "cmrr_distance", "intra_re_ranking"]

logger = logging.getLogger(__name__)

#: bytes of one (rows x n) float64 working block: small enough to stay in the CPU caches,
#: large enough that the number of tensor operations (each one a parallel region) stays low
_BLOCK_BYTES = 1 << 22
#: (entry, partner) terms one block of :func:`_min_sum_rows` may generate
_BLOCK_TERMS = 1 << 20


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


def _block_rows(n: int) -> int:
    """Rows of an (rows x n) float64 block of about ``_BLOCK_BYTES`` (at least one)."""
    return max(1, _BLOCK_BYTES // max(1, 8 * n))


def _intra_ranks(
    dn: torch.Tensor, k1: int, k2: int, lambda_value: float, width: int
) -> torch.Tensor:
    """The first ``width`` ranks of :func:`intra_re_ranking`, given its input
    ``dn = (d / column max)^T = d / row max`` (d exactly symmetric, as from
    :func:`~uvireid.rerank.kreciprocal.self_distances`), without any other dense (n, n)
    matrix.

    V is formed at its entries only; the Jaccard numerators of a row block are accumulated
    from the pairs of V's entries that share a column (:func:`_min_sum_rows`) into one
    (rows x n) block that stays in the CPU caches, and the block's
    ``(1 - lambda) max(J, 0) + lambda dn`` goes straight into the top-``width``
    selection. Pairs without a shared column have ``s = 0`` (J = 1), as in the dense
    computation, so the ranks are the same.
    """
    n = dn.shape[0]
    half = round_half_even(k1 / 2)
    rank = _ranks(dn, max(k1 + 1, k2, half + 1))
    r, c = reciprocal_sets(rank, rank, rank, k1, n)
    v = encode_sets(r, c, dn[r, c], (n, n), rank, k2)
    width = min(width, n)
    out = torch.empty((n, width), dtype=torch.long, device=dn.device)
    for s, e, acc in _min_sum_rows(v, v):
        jac = _jaccard(acc).clamp_(min=0).to(dn.dtype)
        out[s:e] = _ranks(jac.mul_(1 - lambda_value).add_(dn[s:e], alpha=lambda_value), width)
    return out


def _column_lists(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """V's columns as padded lists ``(col_rows, col_vals)``, each (m, widest column):
    column c's entries in row order (the order of a stable sort of V's entries by column),
    padded with row 0 and value 0; values float64."""
    rows, cols, vals = _triples(v)
    m = v.shape[1]
    count = torch.bincount(cols, minlength=m)
    width = int(count.max()) if cols.numel() else 0
    order = torch.argsort(cols, stable=True)
    sc = cols[order]
    pos = torch.arange(sc.numel(), device=cols.device) - (torch.cumsum(count, 0) - count)[sc]
    col_rows = torch.zeros((m, width), dtype=torch.long, device=cols.device)
    col_vals = torch.zeros((m, width), dtype=torch.float64, device=cols.device)
    col_rows[sc, pos] = rows[order]
    col_vals[sc, pos] = vals[order].double()
    return col_rows, col_vals


def _min_sum_rows(va: torch.Tensor, vb: torch.Tensor):
    """Yield ``(s, e, block)``: rows [s, e) of ``min_sum(va, vb)`` as (e - s, nb) float64.

    Every entry (i, c) of ``va`` meets the entries of column c of ``vb`` (a padded column
    list; padding adds min(x, 0) = +0.0 to the block, which changes no sum). The terms of
    a pair are added one at a time in the order of row i's entries, as by
    :func:`~uvireid.rerank.kreciprocal.min_sum`, so the sums are the same to the bit.
    Work O(nnz(va) * widest column of vb); one (rows x nb) block at a time, reused (a
    block is only valid until the next one is asked for).
    """
    na = va.shape[0]
    nb = vb.shape[0]
    ra, ca, xa = _triples(va)
    xa = xa.double()
    col_rows, col_vals = _column_lists(vb)
    crow = va.crow_indices()
    widest_row = int(crow.diff().max()) if na else 0
    terms = max(1, col_rows.shape[1] * widest_row)
    rows = max(1, min(_block_rows(nb), _BLOCK_TERMS // terms))
    flat = torch.zeros(min(rows, na) * nb, dtype=torch.float64, device=va.device)
    for s in range(0, na, rows):
        e = min(na, s + rows)
        lo, hi = int(crow[s]), int(crow[e])
        acc = flat[: (e - s) * nb].zero_()
        if hi > lo and col_rows.shape[1]:
            cols = ca[lo:hi]
            key = col_rows[cols].add_(((ra[lo:hi] - s) * nb)[:, None])
            val = torch.minimum(col_vals[cols], xa[lo:hi, None])
            acc.index_add_(0, key.view(-1), val.view(-1))
        yield s, e, acc.view(e - s, nb)


def _min_sum_dense(va: torch.Tensor, vb: torch.Tensor) -> torch.Tensor:
    """``min_sum(va, vb)`` with ``vb`` held dense: (na, nb) float64.

    Each entry (i, c, x) of ``va`` adds ``min(x, vb[:, c])`` to row i of the result, the
    entries in row-major order (an accumulating ``index_put_`` adds them one after the
    other; unlike a 2-D ``index_add_`` it runs no parallel region per row), so each
    sum takes its terms in the order of :func:`~uvireid.rerank.kreciprocal.min_sum` and
    the zeros of ``vb`` add +0.0: the same sums to the bit. Work O(nnz(va) * nb), less
    than :func:`_min_sum_rows` when ``vb`` has few rows and wide columns (the gallery
    side of CMRR: a few hundred rows, each with hundreds of entries).
    """
    na, m = va.shape
    nb = vb.shape[0]
    dev = va.device
    ra, ca, xa = _triples(va)
    rb, cb, xb = _triples(vb)
    # entries whose column of vb is empty would add only zeros: left out
    keep = (torch.bincount(cb, minlength=m) > 0)[ca]
    ra, ca, xa = ra[keep], ca[keep], xa[keep].double()
    dense_t = torch.zeros((m, nb), dtype=torch.float64, device=dev)
    dense_t[cb, rb] = xb.double()
    out = torch.zeros((na, nb), dtype=torch.float64, device=dev)
    step = max(64, 4 * _BLOCK_BYTES // (8 * nb))  # entries per step (few, large steps)
    buf = torch.empty((min(step, max(1, ra.numel())), nb), dtype=torch.float64, device=dev)
    for s in range(0, ra.numel(), step):
        e = min(ra.numel(), s + step)
        t = buf[: e - s]
        torch.index_select(dense_t, 0, ca[s:e], out=t)
        torch.minimum(t, xa[s:e, None], out=t)
        out.index_put_((ra[s:e],), t, accumulate=True)
    return out


def _min_sum_cross(va: torch.Tensor, vb: torch.Tensor) -> torch.Tensor:
    """``min_sum(va, vb)`` (bit for bit) by :func:`_min_sum_dense` (work nnz(va) * nb)
    when ``vb``'s widest column holds at least half its rows, else :func:`_min_sum_rows`
    (work nnz(va) * widest column, with costlier scattered additions)."""
    nb = vb.shape[0]
    count = torch.bincount(vb.col_indices(), minlength=vb.shape[1])
    if vb.col_indices().numel() and nb <= 2 * int(count.max()):
        return _min_sum_dense(va, vb)
    out = torch.empty((va.shape[0], nb), dtype=torch.float64, device=va.device)
    for s, e, acc in _min_sum_rows(va, vb):
        out[s:e] = acc
    return out


def intra_re_ranking(
    dist: torch.Tensor, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> torch.Tensor:
    """MULT's ``intra_modality_re_ranking``: k-reciprocal re-ranking inside one set.

    Dense reference version of the step (CMRR itself only needs the ranks of its result,
    :func:`_intra_ranks`).

    Args:
        dist: (n, n) distances (column-normalised by the caller, as in CMRR).
        k1, k2, lambda_value: as in Zhong et al.

    Returns:
        (n, n) ``(1 - lambda) max(J, 0) + lambda dist'`` over ALL pairs, where
        ``dist' = (dist / column max)^T``.
    """
    d = column_max_normalize(dist).T.contiguous()
    n = d.shape[0]
    half = round_half_even(k1 / 2)
    rank = _ranks(d, max(k1 + 1, k2, half + 1))
    v = reciprocal_encode(d, rank, rank, rank, rank, k1, k2)
    jac = _jaccard(min_sum(v, v)).clamp_(min=0).to(d.dtype)
    assert jac.shape == (n, n)
    return jac.mul_(1 - lambda_value).add_(d, alpha=lambda_value)


def _row_normalize_pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[a, b] / row sums`` as one sparse CSR matrix (b's columns after a's)."""
    n, shift = a.shape
    dev = a.device
    # CUDA's sparse products may index in int32; every index below is int64
    ca, cb = a.crow_indices().long(), b.crow_indices().long()
    count_a, count_b = ca.diff(), cb.diff()
    crow = ca + cb
    rows_a = torch.repeat_interleave(torch.arange(n, device=dev), count_a)
    rows_b = torch.repeat_interleave(torch.arange(n, device=dev), count_b)
    pos_a = crow[rows_a] + (torch.arange(rows_a.numel(), device=dev) - ca[rows_a])
    pos_b = crow[rows_b] + count_a[rows_b] + (torch.arange(rows_b.numel(), device=dev) - cb[rows_b])
    col = torch.empty(int(crow[-1]), dtype=torch.long, device=dev)
    val = torch.empty(int(crow[-1]), dtype=torch.float64, device=dev)
    col[pos_a], col[pos_b] = a.col_indices().long(), b.col_indices().long() + shift
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
    eta = check_real(eta, "eta", "cmrr", 0.0)
    lambda_intra = check_real(lambda_intra, "lambda_intra", "cmrr", 0.0, 1.0)
    nq, ng = q.shape[0], g.shape[0]
    ensure_fits(
        # d_qq, d_gg; d_qg, n_qg, n_gq, the cross sums and the dense gallery side of V;
        # working blocks, bitmaps and V (a few tens of MiB)
        # (in the input's dtype; + 0.5 byte an entry for the float32 input's float64
        # sums, measured: audit Y); the cross sums and the dense gallery side of V,
        # (Nq + Ng, Ng), are float64 whatever the input: the rest of their 8 bytes (audit PB)
        (q.element_size() + 0.5) * (nq * nq + 2 * ng * ng + 6 * nq * ng)
        + max(0.0, 7.5 - q.element_size()) * (2 * nq * ng + ng * ng)
        + 64.0 * 2**20,
        q.device,
        f"CMRR re-ranking of {nq} queries x {ng} gallery images",
        "use --reranker cmfp (sparse, linear memory) or re-rank fewer images "
        "(e.g. the query set in parts)",
    )
    sq_q, sq_g = squared_norms(q), squared_norms(g)
    # the reference's cal_distmat: (|q|^2 + |g|^2) - 2 q.g
    d_qg = torch.add(sq_q[:, None], sq_g[None, :]).addmm_(q, g.T, beta=1, alpha=-2)
    n_qg = column_max_normalize(d_qg)
    # (d_qg^T / its column max) = (d_qg / its row max)^T: a contiguous reduction
    n_gq = _divide_by(d_qg, d_qg.max(dim=1, keepdim=True).values).T.contiguous()
    width = k + 1
    # the self blocks, d exactly symmetric with row (= column) maxima m, are kept only as
    # dn = d / m[:, None] = (d / column max)^T, the intra re-ranking's input, in place;
    # n_xx = d / column max is read at V's entries as n_xx[r, c] = dn[c, r]
    # the (Nq, Nq) block is a reused workspace (kreciprocal.re_ranking says why); nothing
    # returned is a view of it
    with workspace.borrow((nq, nq), q.dtype, q.device) as buf:
        d_qq, m_q = self_distances(q, sq_q, out=buf)
        dn_qq = d_qq.div_(m_q[:, None])
        rank_qq = _intra_ranks(dn_qq, k, k2_intra, lambda_intra, width)
        d_gg, m_g = self_distances(g, sq_g)
        dn_gg = d_gg.div_(m_g[:, None])
        rank_gg = _intra_ranks(dn_gg, k, k2_intra, lambda_intra, width)
        rank_qg = _ranks(n_qg, width)
        rank_gq = _ranks(n_gq, width)

        r, c = reciprocal_sets(rank_qq, rank_qq, rank_qq, k, nq)
        v_qq = encode_sets(r, c, dn_qq[c, r], (nq, nq), rank_qq, k)
        del d_qq, dn_qq
    r, c = reciprocal_sets(rank_gg, rank_gg, rank_gg, k, ng)
    v_gg = encode_sets(r, c, dn_gg[c, r], (ng, ng), rank_gg, k)
    v_qg = reciprocal_encode(n_qg, rank_qg, rank_gq, rank_gg, rank_qq, k, k)
    v_gq = reciprocal_encode(n_gq, rank_gq, rank_qg, rank_qq, rank_gg, k, k)

    vq = _row_normalize_pair(v_qq, v_qg)  # (nq, nq + ng)
    vg = _row_normalize_pair(v_gq, v_gg)  # (ng, nq + ng)
    jac = _jaccard(_min_sum_cross(vq, vg)).to(q.dtype)
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
        self.k = check_k(k, "k", "cmrr")
        self.eta = check_real(eta, "eta", "cmrr", 0.0)
        self.k2_intra = check_k(k2_intra, "k2_intra", "cmrr")
        self.lambda_intra = check_real(lambda_intra, "lambda_intra", "cmrr", 0.0, 1.0)

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
