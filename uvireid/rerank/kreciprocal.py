"""k-reciprocal re-ranking, Zhong et al. (CVPR 2017), Sec. 3-4, Eq. 4-13; vectorised.

The reference is ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3)``
of zhunzhong07/person-re-ranking, as shipped by Cluster-Contrast (``rerank.py``)::

    d        = [[q_q, q_g], [q_g^T, g_g]]^2 / column max, transposed        (N x N, float32)
    R(p, k)  = { q in rank[p, :k+1] : p in rank[q, :k+1] }                    (Eq. 4)
    R*(p)    = R(p, k1) U { R(q, round(k1/2)) : q in R(p, k1),
                            |R(q, round(k1/2)) n R(p, k1)| > 2/3 |R(q, round(k1/2))| }  (Eq. 6)
    V[p, q]  = exp(-d[p, q]) / sum_{q' in R*(p)} exp(-d[p, q'])   for q in R*(p)       (Eq. 7)
    V[p]     <- mean_{q in rank[p, :k2]} V[q]             (local query expansion, Eq. 11)
    J[p, g]  = 1 - s / (2 - s),  s = sum_c min(V[p, c], V[g, c])                  (Eq. 10)
    d*       = (1 - lambda) J + lambda d,   restricted to [query rows, gallery columns]

``round`` is numpy's half-to-even. The reference loops over rows in Python; here every
step is a tensor operation over all rows (or a block of rows) at once: the reciprocal tests
are gathers of the rank table; R* is built in a (rows x N) membership bitmap (R(p) set,
the expansion test's intersections counted by bitmap look-ups, the accepted R(q) set too,
and the set bits read out row-major, which lists R* sorted and de-duplicated); V is
sparse, the query expansion is a sparse row average, and the Jaccard step pairs V's
nonzeros that share a column.

The building blocks (:func:`reciprocal_sets` + :func:`encode_sets` =
:func:`reciprocal_encode`, :func:`min_sum`, the exactly symmetric self distances) are
shared with CMRR (:mod:`uvireid.rerank.cmrr`), whose blocks use different rank tables for
the forward, backward, expansion and query-expansion steps.

Ties: the reference sorts with numpy's unstable default, whose order among equal distances
is unspecified; here equal distances are ordered by index (a stable sort).

Complexity (N = Nq + Ng): O(N^2 d) for the distances, O(N^2) memory for the dense
distance matrix, O(N^2) for the top-(k1+1) selection, O(N k1^2) look-ups and an N^2 / 8
word scan of the membership bitmap for the reciprocal sets, O(N k2 |R*|) for the
expansion and O(sum_c nnz_q(c) nnz_g(c)) for the Jaccard step. The reference adds an
O(N^2 log N) full argsort and N Python iterations with O(k1^2) work each.
Inputs whose dense matrices do not fit stop at once with an error saying how much memory
is needed (before any work).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch

from uvireid.clustering.knn import copy_transposed, topk_stable
from uvireid.errors import ConfigError, FeatureFileError, non_finite_rows
from uvireid.registry import RERANKERS
from uvireid.rerank import workspace
from uvireid.rerank.distances import self_distances, squared_norms
from uvireid.rerank.inputs import (
    as_tensor,
    check_k,
    check_pair,
    check_real,
    ensure_fits,
    to_output,
)

__all__ = [
    "KReciprocal",
    "re_ranking",
    "k_reciprocal_distance",
    "reciprocal_encode",
    "reciprocal_sets",
    "encode_sets",
    "min_sum",
    "round_half_even",
    "column_max_normalize",
]

logger = logging.getLogger(__name__)

#: elements of the largest temporary comparison tile and bytes of the membership bitmap
_TILE_ELEMENTS = 1 << 24


#: bitmap bits per set position above which the sets are sorted rather than scanned
_SCAN_FACTOR = 64


def round_half_even(x: float) -> int:
    """``int(numpy.around(x))``: 2.5 -> 2, 3.5 -> 4 (the reference's ``round(k1/2)``)."""
    return int(np.around(x))


def column_max_normalize(d: torch.Tensor) -> torch.Tensor:
    """``d / max over each column`` (columns whose max is 0 are left as they are)."""
    m = d.amax(0, keepdim=True)
    return d / torch.where(m > 0, m, torch.ones_like(m))


def _reciprocal_mask(fwd: torch.Tensor, bwd: torch.Tensor, k: int) -> torch.Tensor:
    """mask[i, p] = row i is among the first k+1 of ``bwd[fwd[i, p]]``.

    Args:
        fwd: (n, >= a) forward rank table, a = min(k + 1, its width) columns are used.
        bwd: (m, >= b) backward rank table of the columns, b = min(k + 1, its width).
    Returns:
        (n, a) bool: ``fwd[i, :a][mask[i]]`` is R(i, k) in the order of ``fwd``.
    """
    n = fwd.shape[0]
    a = min(k + 1, fwd.shape[1])
    b = min(k + 1, bwd.shape[1])
    f = fwd[:, :a]
    out = torch.empty((n, a), dtype=torch.bool, device=fwd.device)
    rows = max(1, _TILE_ELEMENTS // max(1, a * b))
    bw = bwd[:, :b]
    for s in range(0, n, rows):
        e = min(n, s + rows)
        me = torch.arange(s, e, device=fwd.device)[:, None, None]
        out[s:e] = (bw[f[s:e]] == me).any(2)
    return out


def reciprocal_encode(
    dist: torch.Tensor,
    fwd: torch.Tensor,
    bwd: torch.Tensor,
    expand: torch.Tensor,
    qe: torch.Tensor | None,
    k1: int,
    k2: int,
) -> torch.Tensor:
    """The k-reciprocal feature V of every row (Zhong et al. Eq. 4-11), as a sparse tensor.

    The reference's per-row loop, for all rows at once; the rank tables may differ (CMRR):

    Args:
        dist: (n, m) distances used in the weights ``exp(-dist)``.
        fwd: (n, >= k1+1) rank prefix of each row over the m columns (best first).
        bwd: (m, >= k1+1) rank prefix of each column over the n rows: ``R(i)`` keeps the
            forward neighbours c of i with ``i in bwd[c, :k1+1]``.
        expand: (m, >= h) rank prefix of the columns among themselves, h = round(k1/2)+1:
            the candidate sets ``R(c, round(k1/2))`` of the expansion.
        qe: (n, >= k2) rank prefix of the rows among themselves for the query expansion,
            or ``None`` (no expansion; also when k2 == 1).
        k1, k2: as in the paper.

    Returns:
        (n, m) sparse CSR tensor, rows summing to 1 (or 0 for an empty R*); the column
        order inside a row is unspecified.
    """
    r, c = reciprocal_sets(fwd, bwd, expand, k1, dist.shape[1])
    return encode_sets(r, c, dist[r, c], tuple(dist.shape), qe, k2)


def reciprocal_sets(
    fwd: torch.Tensor, bwd: torch.Tensor, expand: torch.Tensor, k1: int, m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The expanded sets R*(i) of :func:`reciprocal_encode` as a (row, column) list.

    Args:
        fwd, bwd, expand, k1: as in :func:`reciprocal_encode`; ``m`` is the number of
            columns.

    Returns:
        ``(r, c)``: int64 row and column indices, row-major, columns ascending inside a
        row, without duplicates.
    """
    n = fwd.shape[0]
    dev = fwd.device
    half = round_half_even(k1 / 2)
    a = min(k1 + 1, fwd.shape[1])
    f = fwd[:, :a]
    in_r = _reciprocal_mask(fwd, bwd, k1)  # (n, a)
    h = min(half + 1, expand.shape[1])
    ex = expand[:, :h]
    in_rc = _reciprocal_mask(expand, expand, half)  # (m, h): R(c, half) for every column c
    # the reference's float64 product 2/3 * |R(c)|, the bar of the expansion test
    bar = torch.tensor(2.0 / 3, dtype=torch.float64, device=dev) * in_rc.sum(1).double()
    # row blocks with a (rows x m) membership bitmap: R(i), then R*(i), one row per i
    width = -(-m // 8) * 8  # whole int64 words per bitmap row
    rows = max(1, min(n, _TILE_ELEMENTS // max(1, width, 8 * a * h)))
    member = torch.zeros((rows, width), dtype=torch.bool, device=dev)
    out_r, out_c = [], []
    flat = member.view(-1)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        b = e - s
        base = torch.arange(0, b * width, width, device=dev)[:, None]  # bitmap row starts
        f_b, own = f[s:e], in_r[s:e]
        own_pos = (f_b + base)[own]
        flat[own_pos] = True
        # |R(c) n R(i)| for every c = f[i, p]: bitmap look-ups of R(c)'s members
        at = ex[f_b].add_(base[:, :, None])  # (b, a, h) bitmap positions of R(c)'s candidates
        valid = in_rc[f_b]  # (b, a, h)
        hit = torch.take(flat, at).logical_and_(valid)
        cond = own & (hit.sum(2).double() > bar[f_b])
        grown = at[cond[:, :, None] & valid]
        if b * width <= _SCAN_FACTOR * (own_pos.numel() + grown.numel()):
            # R*(i) = R(i) U the accepted R(c): the bitmap's set bits, row-major, sorted
            flat[grown] = True
            r, c = _set_bits(member[:b])
            member[:b].zero_()
        else:  # a wide, sparse bitmap: sort the set positions instead of scanning it
            pos = torch.unique(torch.cat([own_pos, grown]), sorted=True)
            flat[own_pos] = False
            r, c = pos // width, pos % width
        out_r.append(r + s)
        out_c.append(c)
    if not out_r:
        z = torch.zeros(0, dtype=torch.long, device=dev)
        return z, z.clone()
    return torch.cat(out_r), torch.cat(out_c)


def _set_bits(bitmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``bitmap.nonzero()`` as ``(rows, cols)`` for a (rows, 8 w) contiguous bool tensor:
    the set int64 words first, then their bytes (a few words per row are set)."""
    width = bitmap.shape[1]
    words = bitmap.view(torch.int64).view(-1).nonzero().squeeze(1)
    bits = bitmap.view(-1, 8).index_select(0, words)  # (set words, 8), row-major order
    pos = (words[:, None] * 8 + torch.arange(8, device=bitmap.device))[bits]
    return pos // width, pos % width


def encode_sets(
    r: torch.Tensor,
    c: torch.Tensor,
    dvals: torch.Tensor,
    shape: tuple[int, int],
    qe: torch.Tensor | None,
    k2: int,
) -> torch.Tensor:
    """V from the sets of :func:`reciprocal_sets` and the distances ``dvals = dist[r, c]``.

    The second half of :func:`reciprocal_encode` (weights ``exp(-dist)`` normalised per
    row, then the query expansion), for callers that hold the distances of the set
    entries without a dense (n, m) matrix; ``dvals``' dtype is V's dtype.
    """
    n, m = shape
    dev = r.device
    w = torch.exp(-dvals)
    tot = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, r, w.double())
    v = (w.double() / tot[r]).to(dvals.dtype)
    crow = torch.zeros(n + 1, dtype=torch.long, device=dev)
    torch.cumsum(torch.bincount(r, minlength=n), 0, out=crow[1:])
    vmat = _csr(crow, c, v, (n, m))
    if qe is None or k2 == 1:
        return vmat
    return _query_expand(vmat, qe[:, : min(k2, qe.shape[1])])


def _csr(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, shape) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)


def _triples(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, vals) of a sparse CSR matrix, row-major."""
    crow = v.crow_indices()
    rows = torch.repeat_interleave(torch.arange(v.shape[0], device=crow.device), crow.diff())
    return rows, v.col_indices(), v.values()


def _query_expand(vmat: torch.Tensor, qe: torch.Tensor) -> torch.Tensor:
    """``V'[i] = mean_{j in qe[i]} V[j]`` (Eq. 11): one sparse product ``Q V``.

    ``Q`` holds ``1 / k2`` at ``(i, qe[i, p])``; every row of V is read, as in the
    reference, before any is replaced.
    """
    n = vmat.shape[0]
    k2 = qe.shape[1]
    dev = vmat.device
    crow = torch.arange(0, n * k2 + 1, k2, dtype=torch.long, device=dev)
    cols = qe.sort(dim=1).values  # increasing columns inside each row of Q
    qmat = _csr(
        crow,
        cols.reshape(-1),
        torch.full((n * k2,), 1.0 / k2, dtype=vmat.dtype, device=dev),
        (n, n),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return qmat @ vmat


def min_sum(va: torch.Tensor, vb: torch.Tensor, *, max_pairs: int = 1 << 23) -> torch.Tensor:
    """(na, nb) ``s[i, j] = sum_c min(va[i, c], vb[j, c])`` of two sparse nonnegative matrices.

    The Jaccard numerator of Zhong et al. (Eq. 10, with sum max = 2 - sum min for rows summing
    to 1). Only nonzeros sharing a column meet (the reference's inverted index), in chunks
    of at most ``max_pairs`` pairs; accumulated in float64.

    Args:
        va: (na, m) sparse CSR; vb: (nb, m) sparse CSR (see :func:`reciprocal_encode`).
    """
    na, m = va.shape
    nb = vb.shape[0]
    dev = va.device
    out = torch.zeros(na * nb, dtype=torch.float64, device=dev)
    ra, ca, xa = _triples(va)
    rb, cb, xb = _triples(vb)
    xa, xb = xa.double(), xb.double()
    order = torch.argsort(cb, stable=True)
    rb, cb, xb = rb[order], cb[order], xb[order]
    col_count = torch.bincount(cb, minlength=m)
    col_start = torch.cumsum(col_count, 0) - col_count
    rep_all = col_count[ca]
    csum = torch.cumsum(rep_all, 0)
    total = int(csum[-1]) if csum.numel() else 0
    s = 0
    nnz = ra.numel()
    while s < nnz:
        # the largest chunk [s, e) with at most max_pairs pairs (at least one entry)
        base = int(csum[s - 1]) if s > 0 else 0
        e = int(torch.searchsorted(csum, base + max_pairs, right=True))
        e = max(e, s + 1)
        rep = rep_all[s:e]
        p = int(rep.sum())
        if p:
            ia = torch.repeat_interleave(torch.arange(s, e, device=dev), rep)
            offs = torch.arange(p, device=dev) - torch.repeat_interleave(
                torch.cumsum(rep, 0) - rep, rep
            )
            jb = col_start[ca[ia]] + offs
            out.index_add_(0, ra[ia] * nb + rb[jb], torch.minimum(xa[ia], xb[jb]))
        s = e
    logger.debug("min_sum: %d x %d, %d pairs", na, nb, total)
    return out.view(na, nb)


def _select_rows(vmat: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows [lo, hi) of a sparse CSR matrix."""
    crow = vmat.crow_indices()
    a, b = int(crow[lo]), int(crow[hi])
    return _csr(
        crow[lo : hi + 1] - a,
        vmat.col_indices()[a:b],
        vmat.values()[a:b],
        (hi - lo, vmat.shape[1]),
    )


def _rerank_core(d: torch.Tensor, nq: int, k1: int, k2: int, lambda_value: float) -> torch.Tensor:
    """Steps 2-6 of the reference on the normalised float32 matrix ``d`` (N x N)."""
    n = d.shape[0]
    half = round_half_even(k1 / 2)
    width = min(n, max(k1 + 1, k2, half + 1))
    _, rank = topk_stable(d, width, largest=False)
    vmat = reciprocal_encode(d, rank, rank, rank, rank, k1, k2)
    s = min_sum(_select_rows(vmat, 0, nq), _select_rows(vmat, nq, n))
    jac = (1.0 - s / (2.0 - s)).to(d.dtype)
    return jac * (1 - lambda_value) + d[:nq, nq:] * lambda_value


def _put_squared_transposed(dst: torch.Tensor, src: torch.Tensor, tile: int = 256) -> None:
    """``dst[...] = src.T.square()`` (cast to ``dst``'s dtype), one row slab of ``src`` at a
    time, each transposed by :func:`~uvireid.clustering.knn.copy_transposed`."""
    for i in range(0, src.shape[0], tile):
        copy_transposed(dst[:, i : i + tile], src[i : i + tile].square(), sub=tile)


def _normalized_transposed(
    qg: torch.Tensor, qq: torch.Tensor, gg: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Step 1 of the reference: ``(A^2 in float32 / column max of A^2)^T``, one pass per block.

    ``A = [[qq, qg], [qg^T, gg]]``. Its transpose is ``[[qq^T, qg], [qg^T, gg^T]]``, so the
    result is that matrix squared (in the input dtype, then rounded to float32, as
    ``np.power(A, 2).astype(np.float32)``) divided by each row's maximum; no N x N float64
    copy is made (the transposed blocks are squared one slab of rows at a time).
    """
    nq, ng = qg.shape
    n = nq + ng
    d = torch.empty((n, n), dtype=torch.float32, device=qg.device) if out is None else out
    _put_squared_transposed(d[:nq, :nq], qq)
    d[:nq, nq:] = qg.square()
    _put_squared_transposed(d[nq:, :nq], qg)
    _put_squared_transposed(d[nq:, nq:], gg)
    m = d.max(dim=1, keepdim=True).values
    return d.div_(torch.where(m > 0, m, torch.ones_like(m)))


def _dense_bytes(n: int, nq: int) -> float:
    # d (N x N float32), its transposed copy, the top-k temporary, output and J (float64)
    return 4.0 * n * n * 2.5 + 12.0 * nq * (n - nq)


def re_ranking(
    q_g_dist: Any,
    q_q_dist: Any,
    g_g_dist: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> Any:
    """Zhong et al.'s ``re_ranking`` on distance matrices (the reference API), vectorised.

    Args:
        q_g_dist: (Nq, Ng) plain (not squared) distances; it squares them, as the
            reference does. Numpy or torch.
        q_q_dist: (Nq, Nq); g_g_dist: (Ng, Ng).
        k1, k2, lambda_value: as in the paper (20, 6, 0.3).

    Returns:
        (Nq, Ng) float32 re-ranked distances (numpy for numpy input).
    """
    qg, was_numpy = as_tensor(q_g_dist, "re_ranking: q_g_dist")
    qq, _ = as_tensor(q_q_dist, "re_ranking: q_q_dist")
    gg, _ = as_tensor(g_g_dist, "re_ranking: g_g_dist")
    nq, ng = qg.shape
    if qq.shape != (nq, nq) or gg.shape != (ng, ng):
        raise ConfigError(
            f"re_ranking: q_g_dist is {tuple(qg.shape)} so q_q_dist must be ({nq}, {nq}) and "
            f"g_g_dist ({ng}, {ng}); got {tuple(qq.shape)} and {tuple(gg.shape)}"
        )
    for name, t in (("q_g_dist", qg), ("q_q_dist", qq), ("g_g_dist", gg)):
        bad = non_finite_rows(t)
        if bad is not None:
            raise FeatureFileError(
                f"re_ranking: {name} holds NaN or inf distances in {bad[0]} row(s) (first: "
                f"row {bad[1][0]}); compute the distances from finite features"
            )
    k1, k2 = _check_ks(k1, k2, "kreciprocal")
    lambda_value = _check_lambda(lambda_value)
    dev = qg.device
    ensure_fits(
        _dense_bytes(nq + ng, nq),
        dev,
        f"k-reciprocal re-ranking of {nq} + {ng} images",
        "use --reranker cmfp (sparse, linear memory) or fewer images (e.g. a single-shot "
        "gallery, or the query set in parts)",
    )
    # the (N, N) matrix is a reused workspace: its page faults cost 14 % of a fresh one's
    # re-ranking (the protocols re-rank ten trials of one size in a row)
    with workspace.borrow((nq + ng, nq + ng), torch.float32, dev) as buf:
        d = _normalized_transposed(qg, qq, gg, out=buf)
        out = _rerank_core(d, nq, k1, k2, lambda_value)
    return to_output(out, was_numpy)


def _check_ks(k1: Any, k2: Any, who: str) -> tuple[int, int]:
    return check_k(k1, "k1", who, minimum=0), check_k(k2, "k2", who)


def _check_lambda(value: Any) -> float:
    return check_real(value, "lambda_value", "kreciprocal", 0.0, 1.0)


def k_reciprocal_distance(
    query: Any, gallery: Any, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> Any:
    """k-reciprocal re-ranked (Nq, Ng) distance from features.

    Equals ``re_ranking(|q-g|, |q-q|, |g-g|, ...)`` with Euclidean distances: the squared
    distances are computed directly (``(|x|^2 + |y|^2) - 2 x.y``, each off-diagonal tile
    once and mirrored, so exactly symmetric; clamped at 0) in the input dtype, then cast
    to float32 as in the reference.
    """
    q, g, was_numpy = check_pair(query, gallery, "kreciprocal")
    k1, k2 = _check_ks(k1, k2, "kreciprocal")
    lambda_value = _check_lambda(lambda_value)
    nq, ng = q.shape[0], g.shape[0]
    # float32 input is re-ranked in the (N, N) matrix its distances are computed in;
    # other dtypes need that matrix besides the float32 one (counted in _dense_bytes)
    own = 0.0 if q.dtype == torch.float32 else q.element_size() * (nq + ng) ** 2
    ensure_fits(
        _dense_bytes(nq + ng, nq) + own,
        q.device,
        f"k-reciprocal re-ranking of {nq} + {ng} images",
        "use --reranker cmfp (sparse, linear memory) or fewer images (e.g. a single-shot "
        "gallery, or the query set in parts)",
    )
    # exactly symmetric, so column-max-normalise-and-transpose is a row normalisation
    x = torch.cat([q, g], 0)
    n = nq + ng

    def rerank(d: torch.Tensor) -> torch.Tensor:  # d: the float32 squared distances
        m = d.max(dim=1, keepdim=True).values
        return _rerank_core(
            d.div_(torch.where(m > 0, m, torch.ones_like(m))), nq, k1, k2, lambda_value
        )

    # reused workspaces (see re_ranking)
    with workspace.borrow((n, n), x.dtype, x.device) as full:
        sq = self_distances(x, squared_norms(x), out=full)[0].clamp_(min=0)
        if sq.dtype == torch.float32:
            out = rerank(sq)
        else:
            with workspace.borrow((n, n), torch.float32, x.device) as buf:
                out = rerank(buf.copy_(sq))
    return to_output(out, was_numpy)


@RERANKERS.register("kreciprocal")
class KReciprocal:
    """k-reciprocal encoding re-ranking (Zhong et al., CVPR 2017), vectorised.

    Args:
        k1: size of the k-reciprocal neighbourhoods (20).
        k2: neighbours of the local query expansion (6; 1 switches it off).
        lambda_value: weight of the original distance in the final one (0.3).

    ``rerank(query, gallery)`` returns the (Nq, Ng) float32 re-ranked distance. The
    neighbourhoods are over the joint query + gallery set, which in VI-ReID is biased
    towards same-modality neighbours (see :mod:`uvireid.rerank.cmrr` for the cross-modality
    variant).
    """

    def __init__(self, k1: int = 20, k2: int = 6, lambda_value: float = 0.3):
        self.k1, self.k2 = _check_ks(k1, k2, "kreciprocal")
        self.lambda_value = _check_lambda(lambda_value)

    @property
    def name(self) -> str:
        """Short description recorded in evaluation provenance."""
        return f"kreciprocal(k1={self.k1},k2={self.k2},lambda={self.lambda_value})"

    def __repr__(self) -> str:
        return f"KReciprocal(k1={self.k1}, k2={self.k2}, lambda_value={self.lambda_value})"

    def rerank(self, query: Any, gallery: Any) -> Any:
        """(Nq, Ng) re-ranked distances (numpy for numpy input)."""
        return k_reciprocal_distance(query, gallery, self.k1, self.k2, self.lambda_value)
