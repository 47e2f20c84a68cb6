"""CMC, mAP and mINP for VI-ReID, equal to the community reference evaluators.

Sources (read as specifications, not copied): ``eval_sysu`` and ``eval_regdb`` of
mangye16/Cross-Modal-Re-ID-baseline (``eval_metrics.py``, commit e817a26) and ``eval_llcm``
of ZYK100/LLCM (``DEEN/eval_metrics.py``, commit 886e27c); the maths is restated in
``notes/eval_datasets.md`` §2. For one query i, with the gallery ranked by ascending distance
``π_i = argsort(D[i])`` and some entries removed (the dataset's rule, below)::

    m_i      = relevance of the kept entries in rank order, positions p_1 < ... < p_K
    AP_i     = (1/K) Σ_k k / p_k                          (non-interpolated)
    INP_i    = K / p_K                                    (Ye et al., TPAMI 2021)
    CMC_i[r] = 1 if the first hit is within rank r+1      (standard, RegDB)
    dCMC_i[r]= 1 if the query's id is among the first r+1 *distinct* ids of the kept list
               (identity-deduplicated, SYSU-MM01 and LLCM; the "author's released code" rule)

A query without any kept positive is *invalid*: it is skipped by every metric and the
denominators count the N_valid valid queries only. The CMC is summed in float32 and divided
by N_valid like the reference (the sum of 0/1 values is exact in float32, so the result is
the correctly rounded float32 fraction); mAP and mINP are float64.

Removal rules:

* SYSU-MM01: a query from camera 3 drops *every* gallery entry of camera 2, whatever its
  identity (cam2 and cam3 share a room); nothing else is removed.
* LLCM: entries with the query's identity *and* camera are dropped.
* RegDB: nothing is removed.

Everything is vectorised over blocks of queries (no Python loop per query). The identity
deduplication needs, per query, the number of distinct gallery ids ranked before the first
kept hit: with ``rank[i, j]`` the position of gallery item j in query i's ranking (removed
items set to ``ng``), the first position of every id is a ``minimum.reduceat`` over the
gallery columns grouped by id, and the deduplicated rank of the hit is one plus the number of
ids whose first position comes earlier.

Cases the reference leaves undefined or answers oddly, and what is done here:

* no valid query: the reference fails an ``assert``; here :class:`ProtocolError`.
* fewer than ``max_rank`` gallery items, or fewer than ``max_rank`` distinct ids left after
  removal for some queries: the reference returns a shorter CMC (equal counts) or raises
  ``ValueError`` (ragged rows). Here the CMC always has ``max_rank`` entries: each query's
  curve is extended with its last value (a found hit stays found), so the first
  ``min(max_rank, ng)`` entries equal the reference wherever the reference is defined.
* ties: ``argsort`` uses numpy's default kind like the reference, so tied distances order
  identically on the same machine (numpy's default sort is not stable and its tie order
  depends on the CPU); ``stable=True`` sorts stably (ties go to the lower gallery index, as
  MATLAB's ``sort`` in the official SYSU-MM01 kit; with the official sampler the gallery is
  in that kit's camera-major order, so the two rank ties alike).
* pids and cameras may be lists, numpy arrays or torch tensors (the reference needs numpy).
* NaN distances are refused (their rank is meaningless).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from uvireid.errors import ProtocolError

__all__ = ["RULES", "eval_llcm", "eval_regdb", "eval_sysu", "evaluate", "to_numpy"]

#: removal rule and CMC kind of each reference evaluator
RULES = ("sysu", "llcm", "regdb")

#: elements of the (queries x gallery) block processed at once; bounds the memory use
_BLOCK_ELEMENTS = 1 << 21


def to_numpy(x: Any) -> np.ndarray:
    """``x`` (numpy array, torch tensor, list) as a numpy array, dtype kept; a bfloat16
    tensor (numpy has no bfloat16: a raw TypeError before) as float32, which holds every
    bfloat16 value exactly."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def _labels(x: Any, name: str, n: int, what: str) -> np.ndarray:
    arr = to_numpy(x)
    if arr.ndim != 1 or len(arr) != n:
        raise ProtocolError(
            f"{name} has shape {arr.shape}; expected one entry per {what} ({n},) to match the "
            f"distance matrix; pass the labels in the order of the distance matrix's "
            f"{'rows' if what == 'query' else 'columns'}"
        )
    return arr


def _check_distmat(distmat: Any) -> np.ndarray:
    dist = to_numpy(distmat)
    if dist.ndim != 2:
        raise ProtocolError(
            f"distmat has shape {dist.shape}; expected a 2-D (num_query, num_gallery) matrix "
            f"of distances (smaller = more similar)"
        )
    if dist.shape[0] == 0 or dist.shape[1] == 0:
        raise ProtocolError(
            f"distmat has shape {dist.shape}: no query or no gallery item to evaluate; "
            f"check the query/gallery selection"
        )
    if np.issubdtype(dist.dtype, np.floating) and np.isnan(dist).any():
        raise ProtocolError(
            f"distmat has {int(np.isnan(dist).sum())} NaN entries; NaN distances cannot be "
            f"ranked; check the features for NaN (load_features refuses them) or the re-ranker"
        )
    return np.ascontiguousarray(dist)


KeepFn = Callable[[slice], np.ndarray]


def _evaluate(
    dist: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    keep_fn: KeepFn | None,
    dedup: bool,
    max_rank: int,
    stable: bool,
) -> tuple[np.ndarray, float, float, int]:
    """Shared core: (cmc[max_rank] float32, mAP, mINP, N_valid) given a removal rule.

    Args:
        dist: (nq, ng) distances, C-contiguous, dtype as given by the caller.
        q_pids, g_pids: (nq,), (ng,) identity labels.
        keep_fn: maps a slice of query rows to their (b, ng) bool keep mask in gallery
            order; ``None`` keeps everything.
        dedup: identity-deduplicated CMC (SYSU, LLCM) instead of the standard one (RegDB).
    """
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ProtocolError(f"max_rank must be an integer >= 1, got {max_rank!r}")
    nq, ng = dist.shape
    kind = "stable" if stable else None

    # identities as compact ints: gallery ids 0..P-1, query ids absent from the gallery -1
    g_ids, g_lab = np.unique(g_pids, return_inverse=True)
    g_lab = g_lab.reshape(-1)
    where = np.searchsorted(g_ids, q_pids)
    where_c = np.minimum(where, len(g_ids) - 1)
    q_lab = np.where(g_ids[where_c] == q_pids, where_c, -1)
    if dedup:  # gallery columns grouped by id, for the per-id first positions
        col_order = np.argsort(g_lab, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(g_lab[col_order]) != 0])

    hit_rank = np.zeros(nq, dtype=np.int64)  # 1-based (dedup) rank of the first hit; 0 = none
    ap = np.zeros(nq, dtype=np.float64)
    inp = np.zeros(nq, dtype=np.float64)
    block = max(1, _BLOCK_ELEMENTS // ng)
    positions = np.arange(ng, dtype=np.int32)
    g_lab = g_lab.astype(np.int32)
    for start in range(0, nq, block):  # blocks of queries bound the memory, not a per-query loop
        rows = slice(start, min(start + block, nq))
        b = rows.stop - rows.start
        order = np.argsort(dist[rows], axis=1, kind=kind)  # (b, ng) gallery index by rank
        lab_q = q_lab[rows]
        match = g_lab[order] == lab_q[:, None]  # a query id absent from the gallery is -1
        keep_g = None if keep_fn is None else keep_fn(rows)  # (b, ng) in gallery order
        keep = None if keep_g is None else np.take_along_axis(keep_g, order, axis=1)
        if keep is not None:
            match &= keep
        # the positives, row by row in rank order: (row, column in the ranked list)
        r_pos, c_pos = np.nonzero(match)
        n_pos = np.bincount(r_pos, minlength=b)
        valid = n_pos > 0
        if keep is None:  # 1-based position among the kept entries
            p_pos = c_pos + 1
        else:
            p_pos = np.cumsum(keep, axis=1, dtype=np.int32)[r_pos, c_pos]
        row_start = np.cumsum(n_pos) - n_pos
        k_pos = np.arange(1, len(r_pos) + 1) - np.repeat(row_start, n_pos)  # k-th positive
        ap_sum = np.bincount(r_pos, weights=k_pos / p_pos, minlength=b)
        first = row_start[valid]
        last = first + n_pos[valid] - 1
        ap_b = np.zeros(b)
        inp_b = np.zeros(b)
        ap_b[valid] = ap_sum[valid] / n_pos[valid]
        inp_b[valid] = n_pos[valid] / p_pos[last]
        ap[rows] = ap_b
        inp[rows] = inp_b
        hit_b = np.zeros(b, dtype=np.int64)
        if not dedup:
            hit_b[valid] = p_pos[first]
        else:
            # rank[i, j]: position of gallery item j in row i's ranking (removed: ng)
            rank = np.empty(order.shape, dtype=np.int32)
            np.put_along_axis(rank, order, np.broadcast_to(positions, order.shape), axis=1)
            if keep_g is not None:
                rank[~keep_g] = ng
            first_pos = np.minimum.reduceat(rank[:, col_order], starts, axis=1)  # (b, P)
            hit_col = c_pos[first]  # ranked-list column of the first kept hit
            hit_b[valid] = (first_pos[valid] < hit_col[:, None]).sum(axis=1) + 1
        hit_rank[rows] = hit_b

    is_valid = hit_rank > 0
    n_valid = int(is_valid.sum())
    if n_valid == 0:
        raise ProtocolError(
            f"none of the {nq} queries has a positive in the gallery (after the removal "
            f"rule): there is nothing to measure. Check that query and gallery hold the same "
            f"identities (test ids) and that pids are encoded the same way on both sides"
        )
    # counts[r] = number of valid queries whose hit is within rank r+1 (exact integers)
    hist = np.bincount(np.minimum(hit_rank[is_valid], max_rank + 1), minlength=max_rank + 2)
    counts = np.cumsum(hist[1 : max_rank + 1])
    cmc = counts.astype(np.float32) / np.float32(n_valid)
    return cmc, float(np.mean(ap[is_valid])), float(np.mean(inp[is_valid])), n_valid


def evaluate(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any = None,
    g_camids: Any = None,
    *,
    rule: str,
    max_rank: int = 20,
    stable: bool = False,
) -> tuple[np.ndarray, float, float, int]:
    """One of the three evaluators by name, also returning the number of valid queries.

    Args:
        rule: ``"sysu"`` (:func:`eval_sysu`), ``"llcm"`` (:func:`eval_llcm`) or ``"regdb"``
            (:func:`eval_regdb`, cameras unused).

    Returns:
        ``(cmc, mAP, mINP, num_valid)``.
    """
    if rule not in RULES:
        raise ProtocolError(f"unknown metric rule {rule!r}; expected one of {', '.join(RULES)}")
    dist = _check_distmat(distmat)
    nq, ng = dist.shape
    qp = _labels(q_pids, "q_pids", nq, "query")
    gp = _labels(g_pids, "g_pids", ng, "gallery item")
    if rule == "regdb":
        return _evaluate(dist, qp, gp, None, False, max_rank, stable)
    if q_camids is None or g_camids is None:
        raise ProtocolError(f"the {rule} rule needs q_camids and g_camids; pass both")
    qc = _labels(q_camids, "q_camids", nq, "query")
    gc = _labels(g_camids, "g_camids", ng, "gallery item")
    if rule == "sysu":
        for name, cams in (("q_camids", qc), ("g_camids", gc)):
            odd = sorted(set(np.unique(cams).tolist()) - set(range(1, 7)))
            if odd:  # 0-based cameras would silently drop the cam-3 / cam-2 rule
                raise ProtocolError(
                    f"the SYSU-MM01 rule: {name} holds camera numbers {odd}; its cameras are "
                    f"1..6 as in the release (cam1..cam6); 0-based numbers would move the "
                    f"rule that a camera-3 query ignores camera 2 onto other cameras"
                )
        q_cam3 = qc == 3
        g_cam2 = gc == 2

        def keep_fn(rows: slice) -> np.ndarray:
            return ~(q_cam3[rows, None] & g_cam2[None, :])

    else:

        def keep_fn(rows: slice) -> np.ndarray:
            return ~((qp[rows, None] == gp[None, :]) & (qc[rows, None] == gc[None, :]))

    return _evaluate(dist, qp, gp, keep_fn, True, max_rank, stable)


def eval_sysu(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 20,
    *,
    stable: bool = False,
) -> tuple[np.ndarray, float, float]:
    """SYSU-MM01 metrics, equal to mangye16 ``eval_sysu`` (notes/eval_datasets.md §2.2).

    Args:
        distmat: (nq, ng) distances, smaller = more similar (mangye16 passes ``-(q @ g.T)``).
        q_pids, g_pids: (nq,), (ng,) identities.
        q_camids, g_camids: (nq,), (ng,) SYSU camera numbers 1..6; a camera-3 query ignores
            every camera-2 gallery entry, whatever its identity.
        max_rank: length of the returned CMC.
        stable: sort stably (ties to the lower gallery index) instead of numpy's default.

    Returns:
        ``(cmc, mAP, mINP)``: cmc (max_rank,) float32 identity-deduplicated CMC in [0, 1];
        mAP and mINP floats in [0, 1], over the valid queries.
    """
    out = evaluate(
        distmat, q_pids, g_pids, q_camids, g_camids, rule="sysu", max_rank=max_rank, stable=stable
    )
    return out[:3]


def eval_llcm(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 20,
    *,
    stable: bool = False,
) -> tuple[np.ndarray, float, float]:
    """LLCM metrics, equal to DEEN ``eval_llcm`` (notes/eval_datasets.md §2.3).

    Gallery entries with the query's identity and camera number are removed; the CMC is
    identity-deduplicated. Arguments and returns as :func:`eval_sysu`.
    """
    out = evaluate(
        distmat, q_pids, g_pids, q_camids, g_camids, rule="llcm", max_rank=max_rank, stable=stable
    )
    return out[:3]


def eval_regdb(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    max_rank: int = 20,
    *,
    stable: bool = False,
) -> tuple[np.ndarray, float, float]:
    """RegDB metrics, equal to mangye16 ``eval_regdb`` (notes/eval_datasets.md §2.4).

    Nothing is removed and the CMC is the standard (not deduplicated) one. Arguments and
    returns as :func:`eval_sysu`, without cameras.
    """
    out = evaluate(distmat, q_pids, g_pids, rule="regdb", max_rank=max_rank, stable=stable)
    return out[:3]
