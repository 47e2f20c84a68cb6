"""Naive re-statements of the reference re-ranking algorithms (test oracles).

Loops over rows and dense matrices, as in the original code, written independently of
``uvireid.rerank`` (never import it here). Where the originals sort with numpy's unstable
default, the oracles sort stably (ties by index), which is what uvireid documents.

- :func:`official_agg_feature`: SALCR ``evaluator.agg_feature`` / ``knn_graph`` (CMFP).
- :func:`zhong_re_ranking`: Zhong et al. k-reciprocal re-ranking (Cluster-Contrast
  ``rerank.py``, distance matrices in).
- :func:`mult_re_ranking_cross`: MULT/SALCR ``cross_modality_rerank.re_ranking_cross``
  (CMRR), with its float16 storage as an option (``store``).
- :func:`saai_aim`: SAAI ``models/AIM.py`` (affinity inference).
"""

from __future__ import annotations

import numpy as np
import torch


def stable_argsort(a: np.ndarray) -> np.ndarray:
    return np.argsort(a, axis=1, kind="stable")


# ----------------------------------------------------------------------------- CMFP
def official_knn_graph(init_graph: torch.Tensor, k: int) -> torch.Tensor:
    """Full descending sort, threshold at the k-th value, keep >=, clamp at 0, row-normalise."""
    threshold = init_graph.sort(dim=1, descending=True)[0][:, k - 1]
    mask = torch.as_tensor(init_graph >= threshold.unsqueeze(1), dtype=torch.float)
    graph = mask * init_graph
    graph = graph.clamp(min=0)
    return graph / graph.sum(1).unsqueeze(1)  # 0/0 -> NaN, as in the original


def official_agg_feature(f_a: torch.Tensor, f_b: torch.Tensor, k: int) -> torch.Tensor:
    """(Na+Nb, d) propagated features: dense A (N x N) times the stacked features."""
    a_aa = official_knn_graph(f_a.mm(f_a.t()), k)
    a_ab = official_knn_graph(f_a.mm(f_b.t()), k)
    a_ba = official_knn_graph(f_b.mm(f_a.t()), k)
    a_bb = official_knn_graph(f_b.mm(f_b.t()), k)
    big = torch.cat((torch.cat((a_aa, a_ab), dim=1), torch.cat((a_ba, a_bb), dim=1)), dim=0)
    out = big.mm(torch.cat((f_a, f_b), dim=0))
    return torch.nn.functional.normalize(out, dim=1)


def naive_knn_graph_loop(sim: np.ndarray, k: int) -> np.ndarray:
    """Row by row in plain Python: the same semantics, k clamped, 0-sum rows left at 0."""
    n, m = sim.shape
    k = min(k, m)
    out = np.zeros_like(sim, dtype=np.float64)
    for i in range(n):
        row = sorted(sim[i].tolist(), reverse=True)
        thr = row[k - 1]
        kept = [max(v, 0.0) if v >= thr else 0.0 for v in sim[i].tolist()]
        tot = sum(kept)
        if tot > 0:
            out[i] = np.array(kept) / tot
    return out


# ----------------------------------------------------------------------------- k-reciprocal
def _reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    fwd = rank[i, : k + 1]
    bwd = rank[fwd, : k + 1]
    hit = np.where(bwd == i)[0]
    return fwd[hit]


def zhong_re_ranking(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Zhong et al. (CVPR 2017) re-ranking on plain (non-squared) distance matrices."""
    original = np.concatenate(
        [
            np.concatenate([q_q_dist, q_g_dist], axis=1),
            np.concatenate([q_g_dist.T, g_g_dist], axis=1),
        ],
        axis=0,
    )
    original = np.power(original, 2).astype(np.float32)
    original = np.transpose(1.0 * original / np.max(original, axis=0))
    v = np.zeros_like(original).astype(np.float32)
    rank = stable_argsort(original).astype(np.int32)
    nq = q_g_dist.shape[0]
    n = original.shape[0]
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        r = _reciprocal(rank, i, k1)
        expansion = r
        for c in r:
            rc = _reciprocal(rank, c, half)
            if len(np.intersect1d(rc, r)) > 2.0 / 3 * len(rc):
                expansion = np.append(expansion, rc)
        expansion = np.unique(expansion)
        w = np.exp(-original[i, expansion])
        v[i, expansion] = 1.0 * w / np.sum(w)
    original = original[:nq]
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=np.float32)
        for i in range(n):
            v_qe[i] = np.mean(v[rank[i, :k2], :], axis=0)
        v = v_qe
    jac = np.zeros_like(original, dtype=np.float32)
    for i in range(nq):
        s = np.zeros(n, dtype=np.float32)
        for j in range(n):
            s[j] = np.minimum(v[i], v[j]).sum()
        jac[i] = 1 - s / (2.0 - s)
    final = jac * (1 - lambda_value) + original * lambda_value
    return final[:, nq:]


# ----------------------------------------------------------------------------- CMRR
def _intra_re_ranking(dist: np.ndarray, k1: int, k2: int, lam: float, store) -> np.ndarray:
    """MULT's ``intra_modality_re_ranking``: all rows, J clipped at 0, ``store`` dtype."""
    n = dist.shape[0]
    dist = np.transpose(dist / np.max(dist, axis=0))
    v = np.zeros_like(dist).astype(store)
    rank = stable_argsort(dist).astype(np.int32)
    half = int(np.around(k1 / 2))
    for i in range(n):
        r = _reciprocal(rank, i, k1)
        expansion = r
        for c in r:
            rc = _reciprocal(rank, c, half)
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                expansion = np.append(expansion, rc)
        expansion = np.unique(expansion)
        w = np.exp(-dist[i, expansion])
        v[i, expansion] = w / np.sum(w)
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=store)
        for i in range(n):
            v_qe[i] = np.mean(v[rank[i, :k2], :], axis=0)
        v = v_qe
    jac = np.zeros_like(dist, dtype=store)
    for i in range(n):
        s = np.zeros(n, dtype=store)
        for j in range(n):
            s[j] = np.minimum(v[i], v[j]).sum()
        jac[i] = 1 - s / (2 - s)
    jac[jac < 0] = 0.0
    return jac * (1 - lam) + dist * lam


def _cal_v(dist, rank_qq, rank_qg, rank_gq, rank_gg, k1, k2, store) -> np.ndarray:
    nq = dist.shape[0]
    v = np.zeros_like(dist).astype(store)
    half = int(np.around(k1 / 2))
    for i in range(nq):
        fwd = rank_qg[i, : k1 + 1]
        r = fwd[np.where(rank_gq[fwd, : k1 + 1] == i)[0]]
        expansion = r
        for c in r:
            f2 = rank_gg[c, : half + 1]
            rc = f2[np.where(rank_gg[f2, : half + 1] == c)[0]]
            if len(np.intersect1d(rc, r)) > 2.0 / 3 * len(rc):
                expansion = np.append(expansion, rc)
        expansion = np.unique(expansion)
        w = np.exp(-dist[i, expansion])
        v[i, expansion] = w / np.sum(w)
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=np.float32)
        for i in range(nq):
            v_qe[i] = np.mean(v[rank_qq[i, :k2], :], axis=0)
        v = v_qe
    return v


def sq_dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """||x||^2 + ||y||^2 - 2 x.y in torch, as the reference ``cal_distmat``."""
    xt, yt = torch.tensor(x), torch.tensor(y)
    d = torch.pow(xt, 2).sum(1, keepdim=True) + torch.pow(yt, 2).sum(1, keepdim=True).t()
    return d.addmm_(xt, yt.t(), beta=1, alpha=-2).numpy()


def mult_re_ranking_cross(
    query: np.ndarray, gallery: np.ndarray, k: int = 15, eta: float = 0.1, store=np.float32
) -> np.ndarray:
    """CMRR as called by SALCR/MULT's evaluator, from features; (Nq, Ng) distances.

    ``store=np.float16`` keeps the original's float16 V and Jaccard arrays; ``np.float32``
    is the same algorithm without that precision loss (what uvireid computes).
    """
    d_qg = sq_dist(query, gallery)
    d_gq = d_qg.T
    d_qq = sq_dist(query, query)
    d_gg = sq_dist(gallery, gallery)
    d_qg = d_qg / np.max(d_qg, axis=0)
    d_gq = d_gq / np.max(d_gq, axis=0)
    d_qq = d_qq / np.max(d_qq, axis=0)
    d_gg = d_gg / np.max(d_gg, axis=0)
    rr_qq = _intra_re_ranking(d_qq, k, 6, 0.3, store)
    rr_gg = _intra_re_ranking(d_gg, k, 6, 0.3, store)
    rank_qg = stable_argsort(d_qg).astype(np.int32)
    rank_gq = stable_argsort(d_gq).astype(np.int32)
    rank_qq = stable_argsort(rr_qq).astype(np.int32)
    rank_gg = stable_argsort(rr_gg).astype(np.int32)
    v_qq = _cal_v(d_qq, rank_qq, rank_qq, rank_qq, rank_qq, k, k, store)
    v_gg = _cal_v(d_gg, rank_gg, rank_gg, rank_gg, rank_gg, k, k, store)
    v_qg = _cal_v(d_qg, rank_qq, rank_qg, rank_gq, rank_gg, k, k, store)
    v_gq = _cal_v(d_gq, rank_gg, rank_gq, rank_qg, rank_qq, k, k, store)
    v_all = np.concatenate(
        [np.concatenate([v_qq, v_qg], axis=1), np.concatenate([v_gq, v_gg], axis=1)], axis=0
    )
    v_all = v_all / np.sum(v_all, axis=1, keepdims=True)
    nq, n = query.shape[0], v_all.shape[0]
    jac = np.zeros((nq, n - nq), dtype=store)
    for i in range(nq):
        for j in range(nq, n):
            s = np.minimum(v_all[i], v_all[j]).sum()
            jac[i, j - nq] = 1 - s / (2 - s)
    return jac * (1 - eta) + sq_dist(query, gallery) * eta


# ----------------------------------------------------------------------------- AIM
def saai_aim(qf: torch.Tensor, gf: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """SAAI's AIM with loops over rows; ties ordered by index (stable)."""
    qf = torch.nn.functional.normalize(qf, dim=1)
    gf = torch.nn.functional.normalize(gf, dim=1)

    def sparsify(x, y, mean):
        sim = x @ y.T
        out = torch.zeros_like(sim)
        order = []
        for i in range(sim.shape[0]):
            row = sim[i].numpy()
            rank = np.argsort(-row, kind="stable")
            thr = row[rank[k1 - 1]]
            out[i] = torch.from_numpy(np.where(row >= thr, row, 0.0))
            order.append(rank)
        if mean:
            smooth = torch.zeros_like(out)
            for i in range(out.shape[0]):
                smooth[i] = out[list(order[i][:k1][:k2])].mean(0)
            out = smooth
        return out

    new_q = torch.nn.functional.normalize(sparsify(qf, gf, False), dim=1)
    new_g = torch.nn.functional.normalize(sparsify(gf, gf, True), dim=1)
    return -new_q @ new_g.T - qf @ gf.T


def clustered_pair(nq, ng, d, seed=0, ids=6, noise=0.5):
    """(nq, d) queries and (ng, d) gallery, unit rows drawn around ``ids`` shared centres
    (ties are unlikely, neighbours meaningful)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(ids, d))
    q = c[rng.integers(0, ids, nq)] + noise * rng.normal(size=(nq, d))
    g = c[rng.integers(0, ids, ng)] + noise * rng.normal(size=(ng, d))
    return (
        q / np.linalg.norm(q, axis=1, keepdims=True),
        g / np.linalg.norm(g, axis=1, keepdims=True),
    )
