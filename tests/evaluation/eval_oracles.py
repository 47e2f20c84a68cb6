"""Deliberately naive re-statements of the reference evaluators, for tests only.

Written from notes/eval_datasets.md §2 (not from uvireid and not copied from the reference
repositories): one Python loop per query, the argsort of the whole matrix, removal by a
boolean mask, identity deduplication by a Python loop over the ranked list, float32 CMC rows
summed after ``np.asarray`` (so ragged rows raise ``ValueError`` and uniformly short rows give
a short CMC, as the reference does), ``AssertionError`` when no query is valid.
"""

from __future__ import annotations

import numpy as np


def _per_query(
    distmat,
    q_pids,
    g_pids,
    q_cams,
    g_cams,
    max_rank,
    removal,
    dedup,
    kind=None,
):
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    order_all = np.argsort(distmat, axis=1, kind=kind)
    cmc_rows = []
    aps = []
    inps = []
    num_valid = 0.0
    for i in range(num_q):
        order = order_all[i]
        if removal == "sysu":
            remove = (q_cams[i] == 3) & (g_cams[order] == 2)
        elif removal == "llcm":
            remove = (g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i])
        else:
            remove = np.zeros(num_g, dtype=bool)
        kept_labels = g_pids[order][~remove]

        relevant = (kept_labels == q_pids[i]).astype(np.int32)
        if dedup:
            seen = set()
            unique_labels = []
            for label in kept_labels.tolist():
                if label not in seen:
                    seen.add(label)
                    unique_labels.append(label)
            unique_rel = (np.array(unique_labels) == q_pids[i]).astype(np.int32)
            cmc_rows.append(np.cumsum(unique_rel)[:max_rank])

        if relevant.sum() == 0:
            continue
        num_valid += 1.0
        if not dedup:
            std = np.cumsum(relevant)
            std[std > 1] = 1
            cmc_rows.append(std[:max_rank])
        hit_positions = [p + 1 for p in range(len(relevant)) if relevant[p] == 1]
        k_total = len(hit_positions)
        precision = 0.0
        for k, p in enumerate(hit_positions, start=1):
            precision += k / p
        aps.append(precision / k_total)
        inps.append(k_total / hit_positions[-1])

    assert num_valid > 0, "no valid query"
    cmc = np.asarray(cmc_rows).astype(np.float32)  # ValueError when ragged
    cmc = cmc.sum(0) / num_valid
    return cmc, float(np.mean(aps)), float(np.mean(inps))


def naive_eval_sysu(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=20, kind=None):
    """mangye16 eval_sysu restated: cam3 queries drop all cam2 gallery; dedup CMC."""
    return _per_query(distmat, q_pids, g_pids, q_cams, g_cams, max_rank, "sysu", True, kind)


def naive_eval_llcm(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=20, kind=None):
    """DEEN eval_llcm restated: same id and same camera removed; dedup CMC."""
    return _per_query(distmat, q_pids, g_pids, q_cams, g_cams, max_rank, "llcm", True, kind)


def naive_eval_regdb(distmat, q_pids, g_pids, max_rank=20, kind=None):
    """mangye16 eval_regdb restated: nothing removed; standard CMC over valid queries."""
    return _per_query(distmat, q_pids, g_pids, None, None, max_rank, "none", False, kind)
