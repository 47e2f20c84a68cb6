"""Cross-Modality Feature Propagation (CMFP), SALCR (IJCV 2025) Sec. 3.5, Eq. 28-29.

Four k-NN affinity blocks, each row-normalised on its own, propagate the features::

    G = [[K(S_qq, k), K(S_qg, k)],
         [K(S_gq, k), K(S_gg, k)]],      f' = normalize(G f),   f = [query; gallery]

with ``S_ab = F_a F_b^T`` (inner products of the features as given) and ``K(S, k)`` the
official ``knn_graph`` (SALCR ``evaluator.py`` / ``cross_association.py``):

1. ``thr_i`` = the k-th largest value of row i;
2. keep ``S_ij`` where ``S_ij >= thr_i`` (a tie at the k-th value keeps every tied entry,
   so a row can keep more than k), zero elsewhere. A tie is one of the computed values:
   the query-query and gallery-gallery blocks are exactly symmetric, but a matrix
   product can give entries equal in exact arithmetic (bit-identical rows, quantised
   features) values one rounding apart, in any block, and then only some of them are
   kept at the k-th place. Which ones depends on how the product was summed: the
   official code keeps all four of a four-way tie with numpy's product and two with
   torch's (audit GB, session 24), and the mixed path below may keep others than the
   float64 one. Entries decided by more than a rounding are kept by every path;
3. clamp at 0 (negative similarities inside the top-k become 0);
4. divide each row by its sum.

Every row of G therefore sums to 2 (each block contributes 1). The test-time version
(CMFP(te)) is this with query := query set, gallery := gallery set (transductive: it uses
query-query neighbours); the training-time version (CMFP(tr)) is the same with the visible
and infrared training features. After it the official test code ranks by the squared
Euclidean distance of the propagated features, which is what :meth:`CMFP.rerank` returns.

Differences from the official code, all where it fails:

- k is clamped to each block's column count (the official code raises ``IndexError`` when
  k exceeds a block's width, e.g. k=30 with a 12-image gallery);
- a row whose kept entries are all <= 0 (possible only in the cross blocks, or for
  unnormalised input) sums to 0: the official code divides 0 by 0 and returns NaN for that
  image; here the block contributes nothing to that row (all-zero propagated features stay
  zero instead of NaN).

Two paths give the same propagated features (to float rounding):

- ``mode="dense"``: the four similarity blocks as dense matrices (the query-query and
  gallery-gallery blocks computed once for both triangles), the threshold from ``topk``,
  and a sparse product ``G f``. Memory O(N^2); this is the official algorithm, vectorised.
- ``mode="sparse"``: the neighbours of each block from :func:`uvireid.clustering.knn.knn`
  (blocked exact search, or faiss), sparse affinities and a sparse product. Memory
  O(N * (k + d) + block * N); never an N x N matrix.
- ``mode="auto"`` picks dense when its similarity matrices take at most 2 GiB and fit in
  the free memory of the device; a forced ``mode="dense"`` that cannot fit stops at once.

Complexity (N = Nq + Ng): O(N^2 d) for the similarities in both paths (about half of it
for the dense path, which computes each symmetric block once), O(N^2) for the selection,
O(N k d) for the propagation. The official code adds full sorts (O(N^2 log N)) and a dense
N x N x d product.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from uvireid.clustering.knn import check_backend, ivf_within, knn
from uvireid.errors import ConfigError, FeatureFileError, non_finite_rows
from uvireid.registry import RERANKERS
from uvireid.rerank import workspace
from uvireid.rerank.distances import gram_symmetric, squared_euclidean
from uvireid.rerank.inputs import (
    as_tensor,
    check_k,
    check_pair,
    ensure_fits,
    to_output,
)

__all__ = [
    "CMFP",
    "MODES",
    "knn_affinity",
    "affinity_blocks",
    "propagate",
    "cmfp_distance",
]

logger = logging.getLogger(__name__)

MODES = ("auto", "dense", "sparse")
#: ``mode="auto"`` goes dense while the dense similarity blocks take at most this
DENSE_MAX_BYTES = 2 * 2**30
#: extra neighbours the sparse path asks for, to see ties at the k-th value
_TIE_MARGIN = 8
#: feature columns per sparse product on the CPU
_SPMM_COLS = 64


def knn_affinity(sim: Any, k: int) -> Any:
    """One dense block ``K(S, k)`` of CMFP: the official ``knn_graph``, vectorised.

    Args:
        sim: (n, m) similarities (numpy or torch).
        k: neighbours per row, clamped to m.

    Returns:
        (n, m) dense affinity, same type/device/dtype as ``sim``: entries ``>=`` the row's
        k-th largest value (ties kept), clamped at 0, each row divided by its sum (rows
        summing to 0 stay 0 where the official code gives NaN).

    Raises:
        FeatureFileError: NaN or +inf similarities (-inf masks an entry).
    """
    s, was_numpy = as_tensor(sim, "knn_affinity: sim")
    # a NaN threshold would keep nothing: the row silently all zeros (audit GB); -inf
    # masks an entry (it is never kept above 0), as in the official knn_graph
    bad = non_finite_rows(s, allow_neg_inf=True)
    if bad is not None:
        raise FeatureFileError(
            f"knn_affinity: the similarities contain NaN or +inf in {bad[0]} row(s) "
            f"(first: row {bad[1][0]}); pass finite similarities (-inf masks an entry)"
        )
    kc = min(check_k(k, "k", "cmfp"), s.shape[1])
    thr = torch.topk(s, kc, dim=1).values[:, -1:]
    a = torch.where(s >= thr, s, torch.zeros((), dtype=s.dtype, device=s.device)).clamp(min=0)
    tot = a.sum(1, keepdim=True)
    a = a / torch.where(tot > 0, tot, torch.ones_like(tot))
    return to_output(a, was_numpy)


# --------------------------------------------------------------------------------------
# one block as CSR parts


class _Block:
    """CSR parts of one affinity block: ``crow (n+1,)``, ``col (nnz,)``, ``val (nnz,)``."""

    __slots__ = ("crow", "col", "val", "shape")

    def __init__(self, crow, col, val, shape):
        self.crow, self.col, self.val, self.shape = crow, col, val, shape

    def csr(self) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(
                self.crow, self.col, self.val, self.shape, check_invariants=False
            )

    def dense(self) -> torch.Tensor:
        return self.csr().to_dense()


def _crow_of(r: torch.Tensor, n: int) -> torch.Tensor:
    """CSR row pointers (n + 1,) for entries with row indices ``r`` (once they are sorted
    by row)."""
    crow = torch.zeros(n + 1, dtype=torch.long, device=r.device)
    torch.cumsum(torch.bincount(r, minlength=n), 0, out=crow[1:])
    return crow


def _threshold_entries(s: torch.Tensor, kc: int) -> tuple:
    """``(row, column, value)`` of the entries ``>=`` each row's kc-th largest value of
    the dense rows ``s`` (every tie at the threshold kept), row-major."""
    thr = torch.topk(s, kc, dim=1).values[:, -1:]
    r, c = (s >= thr).nonzero(as_tuple=True)
    return r, c, s[r, c]


def _entries_to_block(r, c, v, n: int, m: int) -> _Block:
    """CSR block from kept entries (row, column, similarity): sorted by row then column,
    clamped at 0, each row divided by its sum (rows summing to 0 stay 0)."""
    order = torch.argsort(r * m + c)
    r, c, v = r[order], c[order], v[order].clamp(min=0)
    crow = _crow_of(r, n)
    sums = torch.zeros(n, dtype=v.dtype, device=v.device).index_add_(0, r, v)
    safe = torch.where(sums > 0, sums, torch.ones_like(sums))
    return _Block(crow, c, v / safe[r], (n, m))


def _select(
    vals: torch.Tensor,
    idx: torch.Tensor,
    kc: int,
    n_cols: int,
    full_rows,
    has_ties: bool | None = None,
) -> _Block:
    """Keep, per row, the entries ``>=`` the kc-th value, clamp at 0, row-normalise.

    Args:
        vals, idx: (n, kk) candidates of each row sorted best first, kk >= kc. Unless
            kk == kc == n_cols, kk > kc, so that a tie at the kc-th value reaching past the
            kc-th place shows as ``vals[:, kc] == vals[:, kc-1]``.
        kc: k clamped to the block width.
        n_cols: block width.
        full_rows: ``f(rows) -> (len(rows), n_cols)`` exact similarities of those rows,
            called only for the rows with such a tie.
        has_ties: whether any row has such a tie, when the caller has already read it
            back (:func:`_tie_flags`, one read-back for several blocks); None: read here.

    Rows without a straddling tie keep exactly their first kc candidates (negative ones as
    explicit zeros), so the CSR is regular; tied rows keep every entry ``>=`` their
    threshold, found on the full row.
    """
    n, kk = vals.shape
    dev = vals.device
    tied = None
    if kk > kc:
        tied_mask = vals[:, kc] == vals[:, kc - 1]
        if has_ties is None:
            has_ties = bool(tied_mask.any())
        if has_ties:
            tied = tied_mask.nonzero().squeeze(1)
    # ordinary rows: the first kc candidates, columns in increasing order
    col, perm = idx[:, :kc].sort(dim=1)
    val = vals[:, :kc].gather(1, perm).clamp(min=0)
    if tied is None:
        sums = val.sum(1)
        safe = torch.where(sums > 0, sums, torch.ones_like(sums))
        val = val / safe[:, None]
        crow = torch.arange(0, n * kc + 1, kc, dtype=torch.long, device=dev)
        return _Block(crow, col.reshape(-1), val.reshape(-1), (n, n_cols))
    # rows with ties at the threshold: every entry >= the kc-th value of the full row
    tr, tc, tv = _threshold_entries(full_rows(tied), kc)
    return _merge_tied(col, val, tied, tr, tc, tv.to(val.dtype), n_cols)


def _merge_tied(col, val, tied, tr, tc, tv, n_cols: int) -> _Block:
    """The CSR block of :func:`_select` when some rows are tied: the (n, kc) ordinary
    entries ``col, val`` (columns increasing, clamped) except at the ``tied`` rows
    (increasing), which take the row-major entries ``(tied[tr], tc, tv)``; clamped at 0,
    each row divided by its sum.

    The same arrays, to the bit, as sorting every entry by (row, column) into
    :func:`_entries_to_block`, without the sort: each entry's place is its row's start
    plus its rank in the row (the sort of 30 M entries took 3 s of a 1 M-image CMFP).
    """
    n, kc = col.shape
    dev = col.device
    tcount = torch.bincount(tr, minlength=tied.numel())
    counts = torch.full((n,), kc, dtype=torch.long, device=dev)
    counts[tied] = tcount
    crow = torch.zeros(n + 1, dtype=torch.long, device=dev)
    torch.cumsum(counts, 0, out=crow[1:])
    c = torch.empty(int(crow[-1]), dtype=torch.long, device=dev)
    v = torch.empty(c.numel(), dtype=val.dtype, device=dev)
    ordinary = torch.ones(n, dtype=torch.bool, device=dev)
    ordinary[tied] = False
    rows = ordinary.nonzero().squeeze(1)
    at = (crow[rows, None] + torch.arange(kc, device=dev)).reshape(-1)
    c[at], v[at] = col[rows].reshape(-1), val[rows].reshape(-1)
    first = torch.cumsum(tcount, 0) - tcount  # each tied row's first entry in tr
    at = crow[tied[tr]] + torch.arange(tr.numel(), device=dev) - first[tr]
    c[at], v[at] = tc, tv.clamp(min=0)
    r = torch.repeat_interleave(torch.arange(n, device=dev), counts)
    sums = torch.zeros(n, dtype=v.dtype, device=dev).index_add_(0, r, v)
    safe = torch.where(sums > 0, sums, torch.ones_like(sums))
    return _Block(crow, c, v / safe[r], (n, n_cols))


def _tie_flags(tops: list[tuple[torch.Tensor, int]]) -> list[bool]:
    """For each ``(vals, kc)``, whether some row ties at its kc-th value past the kc-th
    place: read back from the device once for all of them (one wait on a GPU, not one
    per block)."""
    checks = [
        (v[:, kc] == v[:, kc - 1]).any() if v.shape[1] > kc else v.new_zeros((), dtype=torch.bool)
        for v, kc in tops
    ]
    return [bool(x) for x in torch.stack(checks).tolist()] if checks else []


def _dense_blocks(sims: dict[str, torch.Tensor], k: int) -> dict[str, _Block]:
    """The dense path's blocks: every block's top-k first, then one read-back of the
    tie flags, then the selection."""
    tops = {}
    for name, sim in sims.items():
        m = sim.shape[1]
        kc = min(k, m)
        tops[name] = (*torch.topk(sim, min(kc + 1, m), dim=1, sorted=True), kc)
    flags = _tie_flags([(v, kc) for v, _, kc in tops.values()])
    return {
        name: _select(v, i, kc, sims[name].shape[1], lambda rows, s=sims[name]: s[rows], flag)
        for (name, (v, i, kc)), flag in zip(tops.items(), flags)
    }


def float32_bound(d: int) -> float:
    """``c`` with ``|fl32(a . b) - a . b| <= c |a| |b|`` (+ an underflow term, see
    :func:`_screen_slack`) for float64 vectors of length ``d`` rounded to float32 and
    multiplied in float32 in any summation order, with or without FMA.

    Rounding the inputs costs ``2u + u^2`` per product, the float32 dot product
    ``gamma_d = d u / (1 - d u)`` of ``sum |a_i b_i|`` (Higham, *Accuracy and Stability of
    Numerical Algorithms*, 2nd ed., Eq. 3.5), and ``sum |a_i b_i| <= |a| |b|``
    (Cauchy-Schwarz); ``u = 2^-24``. d = 2048: 1.2e-4 (a worst case: the typical error of
    unit vectors is about 1e-6)."""
    u = 2.0**-24
    if d * u >= 0.5:
        return math.inf
    gamma = d * u / (1 - d * u)
    return (2 * u + u * u) + gamma * (1 + u) ** 2


def _screen_slack(na: torch.Tensor, nb_max: float, d: int) -> torch.Tensor:
    """(n,) bound on the float32 error of every product of a row (norms ``na``) with any
    row of a set whose largest norm is ``nb_max``: ``float32_bound(d) |a_i| max_j |b_j|``
    plus the rounding of values in float32's subnormal range (at most 2^-149 each), 1 %
    over for the norms' own rounding."""
    tiny = 2.0**-148 * (d + math.sqrt(d) * (na + nb_max))
    return 1.01 * (float32_bound(d) * na * nb_max + tiny)


#: mixed precision keeps to features whose row norms are at most this (float32 products
#: of such rows neither overflow nor reach the subnormal range that matters)
_MIXED_MAX_NORM = 2.0**50
#: ... and at least this, but for all-zero rows (below, the products of two such rows
#: reach float32's subnormal range, and kept float32 weights lose their precision:
#: 5e-3 from float64 at norms of 1e-21, audit PK)
_MIXED_MIN_NORM = 2.0**-30


def mixed_available(x: torch.Tensor) -> bool:
    """Whether CMFP can run on these features in mixed precision (``mixed=True``):
    float64 input and float32 products at full precision (no TF32 or bfloat16:
    ``torch.get_float32_matmul_precision() == "highest"``). Features with row norms above
    2^50 or (not zero) below 2^-30 are then done in float64 after all (checked on the
    norms the bound needs)."""
    return x.dtype == torch.float64 and torch.get_float32_matmul_precision() == "highest"


#: candidates beyond the k-th that the mixed-precision selection looks at (rows whose
#: uncertain band reaches past them are recomputed in float64)
_SCREEN_EXTRA = 16


def _sampled_products(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor, c: torch.Tensor):
    """``(a[r_i] . b[c_i])_i`` in ``a``'s dtype without gathering rows: torch's sampled
    dense-dense product (``torch.sparse.sampled_addmm``) on the CSR pattern of the pairs
    (SYSU-MM01 test scale, 8.6k pairs of d = 2048: 11 ms against 190 ms gathered)."""
    if r.numel() == 0:
        return a.new_zeros(0)
    n, m = a.shape[0], b.shape[0]
    order = torch.argsort(r * m + c)
    crow = _crow_of(r, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(
            crow, c[order], a.new_zeros(r.numel()), (n, m), check_invariants=False
        )
        vals = torch.sparse.sampled_addmm(pattern, a, b.T, beta=0.0).values()
    out = torch.empty_like(vals)
    out[order] = vals
    return out


def _screened_block(
    a: torch.Tensor, b: torch.Tensor, sim32: torch.Tensor, k: int, slack: torch.Tensor
) -> tuple:
    """One block's kNN affinity from float32 similarities ``sim32 ~ a b^T`` (rows' error
    bounds ``slack``), selecting exactly the entries the float64 products select (see
    :func:`_screened_dense_blocks`). Returns the block and the number of rows recomputed
    in float64."""
    n, m = sim32.shape
    kc = min(k, m)
    kk = min(kc + _SCREEN_EXTRA, m)
    v32, idx = torch.topk(sim32, kk, dim=1, sorted=True)
    v = v32.double()
    dev = v.device
    if kk == kc:  # every column is kept
        rows = torch.arange(n, device=dev).repeat_interleave(kc)
        return _entries_to_block(rows, idx.reshape(-1), v.reshape(-1), n, m), 0
    # T, the float64 k-th value, is within delta of the float32 one (order statistics
    # move no more than the values): entries above thr + 2 delta are kept, entries below
    # thr - 2 delta dropped, the band between is decided on float64 values
    slack = 2.0 * slack[:, None]
    thr = v[:, kc - 1 : kc]
    band = (v - thr).abs() <= slack
    surely = v > thr + slack
    redo = band[:, -1].clone() if kk < m else torch.zeros(n, dtype=torch.bool, device=dev)
    band &= ~redo[:, None]
    surely &= ~redo[:, None]
    br, bc = band.nonzero(as_tuple=True)
    exact = torch.full_like(v, -math.inf)
    exact[br, bc] = _sampled_products(a, b, br, idx[br, bc])
    need = kc - surely.sum(1)  # band entries to reach k, >= 1 for every row not redone
    ranked = exact.sort(dim=1, descending=True).values
    t64 = ranked.gather(1, (need - 1).clamp(min=0)[:, None])
    keep = surely | (band & (exact >= t64))
    kr, kcol = keep.nonzero(as_tuple=True)
    vals = torch.where(band, exact, v)[kr, kcol]
    parts_r, parts_c, parts_v = [kr], [idx[kr, kcol]], [vals]
    rows = redo.nonzero().squeeze(1)
    if rows.numel():  # the band may reach past the candidates: the whole row in float64
        fr, fc, fv = _threshold_entries(a[rows] @ b.T, kc)
        parts_r.append(rows[fr])
        parts_c.append(fc)
        parts_v.append(fv)
    block = _entries_to_block(torch.cat(parts_r), torch.cat(parts_c), torch.cat(parts_v), n, m)
    return block, int(rows.numel())


def _screened_dense_blocks(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    q32: torch.Tensor | None = None,
    g32: torch.Tensor | None = None,
):
    """The dense path's blocks in mixed precision: the neighbours of float64 features
    chosen exactly from float32 products.

    Per block and row, the float32 top-(k+16) is found, and the float64 k-th value ``T``
    is within the row's error bound ``delta`` (:func:`float32_bound`) of the float32 k-th
    value. Entries more than ``2 delta`` above it are kept and entries more than ``2
    delta`` below it dropped, as float64 products would; the few in between (about 2 per
    row at SYSU-MM01 test scale) are recomputed in float64 (:func:`_sampled_products`),
    and ``T`` and the ties at it are decided on those exact values. A row whose band
    reaches past its candidates is recomputed in float64 whole. So the selected entries
    are those of float64 products, except among entries within a float64 rounding of
    the k-th value (ties in exact arithmetic that products summed in another order
    separate by an ulp; module doc, step 2); kept entries outside the band
    keep their float32 values (about 1e-7 from float64, at most ``delta``). ``q32`` and
    ``g32`` are the features in float32 when the caller has them. Returns the blocks and
    the number of rows recomputed whole, or None where a row norm exceeds 2^50 or, not
    zero, is below 2^-30 (then float64 products are the way).
    """
    d = query.shape[1]
    nq = torch.linalg.vector_norm(query, dim=1)
    ng = torch.linalg.vector_norm(gallery, dim=1)
    mq = float(nq.max()) if nq.numel() else 0.0
    mg = float(ng.max()) if ng.numel() else 0.0
    if not max(mq, mg) <= _MIXED_MAX_NORM:
        return None
    norms = torch.cat([nq, ng])
    if bool(((norms > 0) & (norms < _MIXED_MIN_NORM)).any()):
        return None
    q32 = query.float() if q32 is None else q32
    g32 = gallery.float() if g32 is None else g32
    s_qg = q32 @ g32.T
    n = q32.shape[0]
    # the (Nq, Nq) similarities are a reused workspace (kreciprocal.re_ranking says why):
    # the blocks hold copies of the selected entries, never a view of it
    with workspace.borrow((n, n), q32.dtype, q32.device) as buf:
        sims = {
            "qq": (query, query, gram_symmetric(q32, out=buf), _screen_slack(nq, mq, d)),
            "qg": (query, gallery, s_qg, _screen_slack(nq, mg, d)),
            "gq": (gallery, query, s_qg.T.contiguous(), _screen_slack(ng, mq, d)),
            "gg": (gallery, gallery, gram_symmetric(g32), _screen_slack(ng, mg, d)),
        }
        out, redone = {}, 0
        for name in ("qq", "qg", "gq", "gg"):
            a, b, sim, slack = sims.pop(name)
            out[name], r = _screened_block(a, b, sim, k, slack)
            redone += r
    return out, redone


def _resolve_mixed(mixed: bool | None, query: torch.Tensor, gallery: torch.Tensor) -> bool:
    available = mixed_available(query) and mixed_available(gallery)
    if mixed is None:  # measured on CPUs only; on a GPU float64 stays the default for now
        return available and query.device.type == "cpu"
    if mixed and not available:
        raise ConfigError(
            "cmfp: mixed=True needs float64 features (these are "
            f"{query.dtype}/{gallery.dtype}) and torch.get_float32_matmul_precision() == "
            f"'highest' (now {torch.get_float32_matmul_precision()!r}); pass mixed=None to "
            "choose automatically"
        )
    return bool(mixed)


def _width(k: int, m: int) -> int:
    """Candidates a sparse block asks the kNN for: k (clamped to m) plus the tie margin."""
    return min(min(k, m) + _TIE_MARGIN, m)


def _sparse_block(
    x: torch.Tensor,
    base: torch.Tensor,
    k: int,
    backend: str,
    block_rows: int | None,
    found: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> _Block:
    m = base.shape[0]
    kc = min(k, m)
    if found is None:
        found = knn(x, base, _width(k, m), metric="ip", backend=backend, block_rows=block_rows)
    vals, idx = found
    vals = vals.to(x.dtype)  # faiss scores are float32
    return _select(vals, idx, kc, m, lambda rows: x[rows] @ base.T)


def _sparse_blocks_one_index(
    query: torch.Tensor, gallery: torch.Tensor, k: int, backend: str
) -> dict[str, _Block]:
    """The four sparse blocks with one index per base set: both sides' rows searched at
    once against the query set, then against the gallery set (an approximate backend
    builds and trains its index once per base instead of twice)."""
    nq = query.shape[0]
    both = torch.cat([query, gallery])
    out = {}
    for base, rows, (top, bottom) in (
        (query, slice(0, nq), ("qq", "gq")),
        (gallery, slice(nq, None), ("qg", "gg")),
    ):
        width = _width(k, base.shape[0])
        if backend == "ivf":  # the base's cells from the rows' own probes (both hold it)
            vals, idx = ivf_within(both, rows, width)
        else:
            vals, idx = knn(both, base, width, metric="ip", backend=backend)
        out[top] = _sparse_block(query, base, k, backend, None, (vals[:nq], idx[:nq]))
        out[bottom] = _sparse_block(gallery, base, k, backend, None, (vals[nq:], idx[nq:]))
    return {name: out[name] for name in ("qq", "qg", "gq", "gg")}


def affinity_blocks(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    *,
    mode: str = "auto",
    backend: str = "auto",
    block_rows: int | None = None,
    mixed: bool | None = None,
) -> dict[str, _Block]:
    """The four row-normalised kNN affinity blocks ``{"qq", "qg", "gq", "gg"}`` (CSR parts).

    Args:
        query: (Nq, d) tensor; gallery: (Ng, d) tensor, same device and dtype.
        k: neighbours per row and block (clamped to each block's width).
        mode: ``"dense"``, ``"sparse"`` or ``"auto"`` (see the module docstring).
        backend: kNN backend of the sparse path (:func:`uvireid.clustering.knn.knn`);
            ``"ivf"`` (uvireid's torch inverted file, any device) and ``"faiss-ivf"``
            are approximate (sub-quadratic time; the blocks then hold approximate
            neighbours; a row whose found candidates tie at the k-th place is still
            re-scored against the whole base set to keep every tied entry, O(Nb d) for
            each such row, as on the exact path).
        block_rows: rows per similarity tile of the sparse path.
        mixed: dense path, float64 features: the neighbours chosen as float64 products
            choose them (up to ties within a rounding: module doc) from float32 products, the
            affinity values in float32 (:func:`_screened_dense_blocks`). None (default):
            on the CPU where :func:`mixed_available`; False: float64 throughout.
    """
    _check_backend(backend)
    _check_options(mixed, block_rows)
    mode = _resolve_mode(mode, query.shape[0], gallery.shape[0], query.element_size(), query.device)
    if mode == "dense":
        if _resolve_mixed(mixed, query, gallery):
            found = _screened_dense_blocks(query, gallery, k)
            if found is not None:
                return found[0]
        s_qg = query @ gallery.T
        n = query.shape[0]
        with workspace.borrow((n, n), query.dtype, query.device) as buf:  # as above
            sims = {
                "qq": gram_symmetric(query, out=buf),
                "qg": s_qg,
                "gq": s_qg.T.contiguous(),
                "gg": gram_symmetric(gallery),
            }
            return _dense_blocks(sims, k)
    if backend in ("faiss-ivf", "ivf"):
        return _sparse_blocks_one_index(query, gallery, k, backend)
    return {
        "qq": _sparse_block(query, query, k, backend, block_rows),
        "qg": _sparse_block(query, gallery, k, backend, block_rows),
        "gq": _sparse_block(gallery, query, k, backend, block_rows),
        "gg": _sparse_block(gallery, gallery, k, backend, block_rows),
    }


def _check_backend(backend: str) -> None:
    """A kNN backend name is checked on every path (the dense path does not use it, so a
    typo would otherwise surface only once an input grows large enough to go sparse)."""
    check_backend(backend, "cmfp: backend")


def _check_options(mixed: Any, block_rows: Any) -> None:
    if not isinstance(mixed, (bool, type(None))):
        raise ConfigError(f"cmfp: mixed must be true, false or null, got {mixed!r}")
    if block_rows is not None:
        check_k(block_rows, "block_rows", "cmfp")


def _resolve_mode(mode: str, nq: int, ng: int, itemsize: int, device=None) -> str:
    """The path for ``mode`` (``auto``: dense up to 2 GiB of similarities, where they fit
    on ``device``). A forced dense path that cannot fit stops here, saying so (the four
    similarity blocks and their top-k temporaries), before any of them is allocated."""
    from uvireid.rerank.inputs import fits_in_memory

    if mode not in MODES:
        raise ConfigError(f"cmfp: mode must be one of {', '.join(MODES)}, got {mode!r}")
    dense_bytes = (nq * nq + 2 * nq * ng + ng * ng) * itemsize
    if mode == "auto":  # dense where it fits: checked here, once
        fits = device is None or fits_in_memory(1.1 * dense_bytes, torch.device(device))
        chosen = "dense" if dense_bytes <= DENSE_MAX_BYTES and fits else "sparse"
        logger.debug("cmfp: mode=auto -> %s (%d x %d)", chosen, nq, ng)
        return chosen
    if mode == "dense" and device is not None:
        ensure_fits(
            1.1 * dense_bytes,
            torch.device(device),
            f"CMFP's dense path for {nq} queries x {ng} gallery images",
            "use mode='sparse' (or 'auto', which takes it above 2 GiB of similarities)",
        )
    return mode


def _spmm(block: _Block, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``A x`` for one block, or ``out + A x`` accumulated in place into ``out`` (the
    second block of a row of blocks: no zero-filled product and no separate sum, 25 ms
    of a 0.7 s CMFP(te) on one CPU thread)."""
    if block.val.numel() == 0:
        return x.new_zeros((block.shape[0], x.shape[1])) if out is None else out
    if block.val.dtype != x.dtype:  # mixed precision: float64 blocks, float32 features
        block = _Block(block.crow, block.col, block.val.to(x.dtype), block.shape)
    a = block.csr()
    d = x.shape[1]
    if x.device.type != "cpu" or d <= _SPMM_COLS or x.dtype != torch.float64:
        return torch.sparse.mm(a, x) if out is None else out.addmm_(a, x)
    # float64 on the CPU, a few feature columns at a time: the rows each product gathers
    # then stay in cache (3803 x 2048 CMFP(te) query block: 0.12 -> 0.08 s; no gain in
    # float32)
    if out is None:
        out = x.new_zeros((block.shape[0], d))
    for s in range(0, d, _SPMM_COLS):
        out[:, s : s + _SPMM_COLS].addmm_(a, x[:, s : s + _SPMM_COLS].contiguous())
    return out


def propagate(
    query: Any,
    gallery: Any,
    k: int = 30,
    *,
    mode: str = "auto",
    backend: str = "auto",
    block_rows: int | None = None,
    mixed: bool | None = None,
) -> tuple[Any, Any]:
    """CMFP: propagated, L2-normalised query and gallery features (SALCR Eq. 28-29).

    The official ``agg_feature(query, gallery, k)``: no normalisation of the input (the
    official test path L2-normalises the features before; :class:`CMFP` does that by
    default), inner-product similarities, four kNN blocks, ``normalize(G [q; g])``.

    Args:
        query: (Nq, d) float numpy array or torch tensor (e.g. the infrared queries).
        gallery: (Ng, d), same kind (e.g. the visible gallery).
        k: neighbours per block (paper: 30 on SYSU-MM01, 8 on RegDB); clamped to each
            block's width.
        mode, backend, block_rows: see :func:`affinity_blocks`.
        mixed: dense path with float64 features: mixed precision. The neighbours are
            chosen as float64 products would choose them (up to ties within a rounding:
            module doc, step 2), the
            products and the propagation run in float32: the output is about 1e-7 from
            the float64 computation (the official code's), 1.3-1.4x faster on a CPU. None
            (default): on the CPU where :func:`mixed_available` (float64 input,
            full-precision float32 products); False: float64 throughout; True: required (a
            :class:`~uvireid.errors.ConfigError` where unavailable or the path is sparse).

    Returns:
        ``(query', gallery')``: (Nq, d) and (Ng, d), unit rows, same type (numpy or torch),
        device and dtype as the input (float16 and bfloat16 inputs are computed and
        returned in float32; with one numpy and one torch input, torch).
    """
    q, g, was_numpy = check_pair(query, gallery, "cmfp")
    k = check_k(k, "k", "cmfp")
    _check_backend(backend)
    _check_options(mixed, block_rows)
    nq = q.shape[0]
    mode = _resolve_mode(mode, q.shape[0], g.shape[0], q.element_size(), q.device)
    if mode == "sparse" and mixed:
        raise ConfigError(
            "cmfp: mixed=True is for the dense path; this input takes the sparse path "
            "(mode='auto' chooses it above 2 GiB of similarities); leave mixed=None"
        )
    b, xq, xg = None, q, g
    if mode == "dense" and _resolve_mixed(mixed, q, g):
        xq, xg = q.float(), g.float()
        found = _screened_dense_blocks(q, g, k, xq, xg)
        if found is None:  # norms beyond float32's comfortable range: float64 after all
            xq, xg = q, g
        else:
            b, redone = found
            logger.debug("cmfp: mixed precision, %d rows recomputed in float64", redone)
    if b is None:
        b = affinity_blocks(q, g, k, mode=mode, backend=backend, block_rows=block_rows, mixed=False)
    q_new = _spmm(b["qq"], xq, _spmm(b["qg"], xg))
    g_new = _spmm(b["gg"], xg, _spmm(b["gq"], xq))
    # normalised in the input's precision (in float32 the output of the mixed path would
    # move from 1e-7 to 9e-7 of the official one's, for 3 % of its time), in place: the
    # same values as F.normalize without its second (N, d) temporary (30 ms of 0.7 s on
    # one CPU thread at SYSU-MM01 test scale)
    q_new, g_new = _unit_rows(q_new.to(q.dtype)), _unit_rows(g_new.to(q.dtype))
    assert q_new.shape[0] == nq
    return to_output(q_new, was_numpy), to_output(g_new, was_numpy)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=1)`` (``x / max(|x|, 1e-12)``, bit for bit) in place."""
    if x.numel() == 0:
        return x
    return x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_(min=1e-12))


def cmfp_distance(query: Any, gallery: Any, k: int = 30, **kwargs: Any) -> Any:
    """(Nq, Ng) squared Euclidean distance between CMFP-propagated features.

    This is what the official test path ranks by after ``agg_feature``. Keywords are those
    of :func:`propagate`.
    """
    qp, gp = propagate(query, gallery, k, **kwargs)
    if isinstance(qp, torch.Tensor):
        return squared_euclidean(qp, gp)
    return squared_euclidean(torch.from_numpy(qp), torch.from_numpy(gp)).numpy()


@RERANKERS.register("cmfp")
class CMFP:
    """Cross-modality feature propagation (SALCR, IJCV 2025, Sec. 3.5, Eq. 28-29).

    Args:
        k: neighbours per affinity block (SALCR: 30 on SYSU-MM01, 8 on RegDB); clamped to
            each block's width, so tiny inputs work.
        normalize: L2-normalise the input features first, as the official test path does
            (its ``agg_feature`` itself does not).
        mode: ``"auto"``, ``"dense"`` or ``"sparse"`` (memory O(N^2) vs O(N (k + d))).
        backend: kNN backend of the sparse path: ``"auto"``, ``"torch"`` or ``"faiss"``
            (exact), or ``"ivf"`` / ``"faiss-ivf"`` (approximate, for millions of images;
            ``"ivf"`` needs no faiss and runs on the input's device).
        mixed: float64 features on the dense path in mixed precision: the neighbours
            exactly as float64 products choose them, the arithmetic in float32 (output
            about 1e-7 from float64; see :func:`propagate`). None = where available,
            False = float64 throughout.

    ``propagate(query, gallery)`` returns the propagated features, ``rerank(query,
    gallery)`` the (Nq, Ng) squared Euclidean distance between them. Inputs are numpy
    arrays or torch tensors; the work runs on their device.

    :attr:`propagated_distance` says that ``rerank`` is that distance of ``propagate``'s
    output, so a caller ranking a large gallery (:func:`uvireid.engine.matching.top_matches`)
    propagates once and ranks a block of queries at a time, without the (Nq, Ng) matrix.
    """

    propagated_distance = "squared_euclidean"

    def __init__(
        self,
        k: int = 30,
        normalize: bool = True,
        mode: str = "auto",
        backend: str = "auto",
        mixed: bool | None = None,
    ):
        self.k = check_k(k, "k", "cmfp")
        if mode not in MODES:
            raise ConfigError(f"cmfp: mode must be one of {', '.join(MODES)}, got {mode!r}")
        _check_backend(backend)
        _check_options(mixed, None)
        if not isinstance(normalize, bool):  # bool("false") would be True
            raise ConfigError(f"cmfp: normalize must be true or false, got {normalize!r}")
        self.normalize = normalize
        self.mode = mode
        self.backend = backend
        self.mixed = mixed

    @property
    def name(self) -> str:
        """Short description recorded in evaluation provenance: ``k``, and the settings
        that change the result (an approximate backend's neighbours, inputs used without
        normalisation), so that two such settings are two rows (audit CJ)."""
        extra = [f"backend={self.backend}"] if self.backend in ("ivf", "faiss-ivf") else []
        if not self.normalize:
            extra.append("normalize=False")
        return f"cmfp({', '.join([f'k={self.k}', *extra])})"

    def __repr__(self) -> str:
        return (
            f"CMFP(k={self.k}, normalize={self.normalize}, mode={self.mode!r}, "
            f"backend={self.backend!r})"
        )

    def propagate(self, query: Any, gallery: Any) -> tuple[Any, Any]:
        """``(query', gallery')``, propagated and L2-normalised (same shapes as the input)."""
        q, g, was_numpy = check_pair(query, gallery, "cmfp")
        if self.normalize:
            q, g = F.normalize(q, dim=1), F.normalize(g, dim=1)
        qp, gp = propagate(q, g, self.k, mode=self.mode, backend=self.backend, mixed=self.mixed)
        return to_output(qp, was_numpy), to_output(gp, was_numpy)

    def rerank(self, query: Any, gallery: Any) -> Any:
        """(Nq, Ng) squared Euclidean distance between the propagated features."""
        q, g, was_numpy = check_pair(query, gallery, "cmfp")
        qp, gp = self.propagate(q, g)
        return to_output(squared_euclidean(qp, gp), was_numpy)
