"""Re-ranking speed: uvireid against faithful re-statements of the reference code.

Run ``python benchmarks/rerank_speed.py [--quick] [--device cpu|cuda]``. Each comparison
runs uvireid and the reference algorithm (re-stated below with the loops, dense matrices,
sorts and dtypes of the original, not imported from anywhere) in this one process, on the
same synthetic SYSU-MM01-sized features, and prints the time ratio and the max abs
difference of the outputs:

- CMFP(te), SALCR ``agg_feature``/``knn_graph`` + squared Euclidean distance: 3803
  queries x 301 gallery, d=2048, float64 (the official test path), against the official
  path and against one bare (Nq+Ng) x (Nq+Ng) x d matrix product (the floor);
- CMFP(tr) at SYSU train scale (22,258 + 11,909, d=2048, float32, k=30; GPU only unless
  ``--train-scale``): official dense path vs uvireid's sparse path, time and peak memory;
- k-reciprocal (Zhong et al. ``re_ranking`` on distance matrices) at SYSU scale;
- CMRR (MULT/SALCR ``re_ranking_cross``, float16 storage as in the original) at SYSU scale;
- scalable CMFP: time and peak memory with 10k / 100k / 1M gallery images of d=256
  (queries = gallery / 10), each size in a fresh subprocess (CPU peak = VmHWM).

Sizes are selectable (``--scalable-sizes 10000,100000``, ``--only cmfp,kreciprocal``);
``--knn-backend ivf`` (or ``faiss-ivf``) runs scalable CMFP on an approximate kNN (``--compare-exact``:
also the exact one, with the difference of the propagated features and of the rankings).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from uvireid.clustering.knn import knn  # noqa: E402
from uvireid.rerank.cmfp import mixed_available, propagate  # noqa: E402
from uvireid.rerank.cmrr import cmrr_distance  # noqa: E402
from uvireid.rerank.distances import squared_euclidean  # noqa: E402
from uvireid.rerank.kreciprocal import re_ranking  # noqa: E402

# ======================================================================================
# reference re-statements (as in the original code: loops, dense matrices, full sorts)


def ref_knn_graph(init_graph, k):
    threshold = init_graph.sort(dim=1, descending=True)[0][:, k - 1]
    mask = torch.as_tensor(init_graph >= threshold.unsqueeze(1), dtype=torch.float)
    graph = mask * init_graph
    graph = graph.clamp(min=0)
    return graph / graph.sum(1).unsqueeze(1)


def ref_agg_feature(features_a, features_b, k):
    a_vv = ref_knn_graph(features_a.mm(features_a.t()), k)
    a_vr = ref_knn_graph(features_a.mm(features_b.t()), k)
    a_rv = ref_knn_graph(features_b.mm(features_a.t()), k)
    a_rr = ref_knn_graph(features_b.mm(features_b.t()), k)
    big = torch.cat((torch.cat((a_vv, a_vr), dim=1), torch.cat((a_rv, a_rr), dim=1)), dim=0)
    feats = big.mm(torch.cat((features_a, features_b), dim=0))
    return big, F.normalize(feats, dim=1)


def ref_pairwise_distance(x, y):
    m, n = x.size(0), y.size(0)
    d = (
        torch.pow(x, 2).sum(dim=1, keepdim=True).expand(m, n)
        + torch.pow(y, 2).sum(dim=1, keepdim=True).expand(n, m).t()
    )
    return d.addmm_(x, y.t(), beta=1, alpha=-2)


def ref_cmfp_test_path(query, gallery, k):
    """SALCR evaluator.test with test_CMFF: agg_feature, re-normalise, pairwise distance."""
    nq = query.shape[0]
    _, feats = ref_agg_feature(query, gallery, k)
    qf = F.normalize(feats[:nq], dim=1)
    gf = F.normalize(feats[nq:], dim=1)
    return ref_pairwise_distance(qf, gf)


def ref_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """Zhong et al. / Cluster-Contrast rerank.py, float32, numpy default argsort."""
    original_dist = np.concatenate(
        [
            np.concatenate([q_q_dist, q_g_dist], axis=1),
            np.concatenate([q_g_dist.T, g_g_dist], axis=1),
        ],
        axis=0,
    )
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    query_num = q_g_dist.shape[0]
    all_num = original_dist.shape[0]
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, : k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, : k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            cand_fwd = initial_rank[candidate, : int(np.around(k1 / 2.0)) + 1]
            cand_bwd = initial_rank[cand_fwd, : int(np.around(k1 / 2.0)) + 1]
            fi_candidate = np.where(cand_bwd == candidate)[0]
            cand_k_rec = cand_fwd[fi_candidate]
            if len(np.intersect1d(cand_k_rec, k_reciprocal_index)) > 2.0 / 3 * len(cand_k_rec):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, cand_k_rec)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num,]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = []
    for i in range(all_num):
        invIndex.append(np.where(V[:, i] != 0)[0])
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(
                V[i, indNonZero[j]], V[indImages[j], indNonZero[j]]
            )
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def _ref_krec(rank, rank_t, i, k1):
    fwd = rank[i, : k1 + 1]
    bwd = rank_t[fwd, : k1 + 1]
    return fwd[np.where(bwd == i)[0]]


def ref_intra_re_ranking(original_dist, k1=20, k2=6, lambda_value=0.3):
    all_num = original_dist.shape[0]
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float16)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    for i in range(all_num):
        k_rec = _ref_krec(initial_rank, initial_rank, i, k1)
        expansion = k_rec
        for candidate in k_rec:
            cand = _ref_krec(initial_rank, initial_rank, candidate, int(np.around(k1 / 2)))
            if len(np.intersect1d(cand, k_rec)) > 2 / 3 * len(cand):
                expansion = np.append(expansion, cand)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float16)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    return (1 - lambda_value) * ref_jaccard(V, clip=True) + lambda_value * original_dist


def ref_jaccard(V, clip=False):
    all_num = V.shape[0]
    invIndex = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(V, dtype=np.float16)
    for i in range(all_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float16)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(
                V[i, indNonZero[j]], V[indImages[j], indNonZero[j]]
            )
        jaccard_dist[i] = 1 - temp_min / (2 - temp_min)
    if clip:
        jaccard_dist[jaccard_dist < 0] = 0.0
    return jaccard_dist


def ref_cal_v(original_dist, qq_rank, qg_rank, gq_rank, gg_rank, k1, k2):
    query_num = original_dist.shape[0]
    V = np.zeros_like(original_dist).astype(np.float16)
    for i in range(query_num):
        k_rec = _ref_krec(qg_rank, gq_rank, i, k1)
        expansion = k_rec
        for candidate in k_rec:
            cand = _ref_krec(gg_rank, gg_rank, candidate, int(np.around(k1 / 2)))
            if len(np.intersect1d(cand, k_rec)) > 2.0 / 3 * len(cand):
                expansion = np.append(expansion, cand)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(query_num):
            V_qe[i, :] = np.mean(V[qq_rank[i, :k2], :], axis=0)
        V = V_qe
    return V


def ref_re_ranking_cross(query, gallery, k=15, eta_value=0.1):
    """MULT/SALCR evaluator: cal_distmat x3, then re_ranking_cross (float16 V and J)."""
    d_ir_rgb = ref_pairwise_distance(torch.tensor(query), torch.tensor(gallery)).numpy()
    d_ir_ir = ref_pairwise_distance(torch.tensor(query), torch.tensor(query)).numpy()
    d_rgb_rgb = ref_pairwise_distance(torch.tensor(gallery), torch.tensor(gallery)).numpy()
    d_rgb_ir = d_ir_rgb.T
    raw = d_ir_rgb
    d_ir_rgb = d_ir_rgb / np.max(d_ir_rgb, axis=0)
    d_rgb_ir = d_rgb_ir / np.max(d_rgb_ir, axis=0)
    d_ir_ir = d_ir_ir / np.max(d_ir_ir, axis=0)
    d_rgb_rgb = d_rgb_rgb / np.max(d_rgb_rgb, axis=0)
    rr_ir = ref_intra_re_ranking(d_ir_ir, k1=k)
    rr_rgb = ref_intra_re_ranking(d_rgb_rgb, k1=k)
    rank_ir_rgb = np.argsort(d_ir_rgb, axis=1).astype(np.int32)
    rank_rgb_ir = np.argsort(d_rgb_ir, axis=1).astype(np.int32)
    rank_ir_ir = np.argsort(rr_ir, axis=1).astype(np.int32)
    rank_rgb_rgb = np.argsort(rr_rgb, axis=1).astype(np.int32)
    v_ii = ref_cal_v(d_ir_ir, rank_ir_ir, rank_ir_ir, rank_ir_ir, rank_ir_ir, k, k)
    v_rr = ref_cal_v(d_rgb_rgb, rank_rgb_rgb, rank_rgb_rgb, rank_rgb_rgb, rank_rgb_rgb, k, k)
    v_ir = ref_cal_v(d_ir_rgb, rank_ir_ir, rank_ir_rgb, rank_rgb_ir, rank_rgb_rgb, k, k)
    v_ri = ref_cal_v(d_rgb_ir, rank_rgb_rgb, rank_rgb_ir, rank_ir_rgb, rank_ir_ir, k, k)
    v_all = np.concatenate(
        [np.concatenate([v_ii, v_ir], axis=1), np.concatenate([v_ri, v_rr], axis=1)], axis=0
    )
    v_all = v_all / np.sum(v_all, axis=1, keepdims=True)
    jac = ref_jaccard(v_all)
    nq = query.shape[0]
    return jac[:nq, nq:] * (1 - eta_value) + raw * eta_value


# ======================================================================================
# data and timing


def synthetic(nq, ng, d, seed=0, ids=400, noise=0.8, dtype=torch.float64, device="cpu"):
    """Unit features around ``ids`` identity centres (gallery: one image per id first)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(ids, d, generator=gen, dtype=torch.float64)
    qi = torch.randint(0, ids, (nq,), generator=gen)
    gi = torch.arange(ng) % ids
    q = centres[qi] + noise * torch.randn(nq, d, generator=gen, dtype=torch.float64)
    g = centres[gi] + noise * torch.randn(ng, d, generator=gen, dtype=torch.float64)
    q, g = F.normalize(q, dim=1), F.normalize(g, dim=1)
    return q.to(device, dtype), g.to(device, dtype)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, repeat=1):
    """(best seconds over ``repeat`` runs, last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def maxdiff(a, b):
    a = a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.abs(a[ok] - b[ok]).max()) if ok.any() else float("nan")


ROWS: list[dict] = []


def report(name, ref_s, ours_s, diff, note=""):
    ratio = ref_s / ours_s if ref_s and ours_s else float("nan")
    ROWS.append(
        {"name": name, "ref_s": ref_s, "ours_s": ours_s, "ratio": ratio, "diff": diff, "note": note}
    )
    ref_txt = f"{ref_s:9.3f}" if ref_s else "        -"
    ratio_txt = f"{ratio:8.1f}x" if ref_s and ours_s else "        -"
    print(f"{name:44s} {ref_txt} {ours_s:9.3f} {ratio_txt} {diff:10.2e}  {note}", flush=True)


# ======================================================================================
# sections


def bench_cmfp(args, device):
    nq, ng, d = (1000, 100, 512) if args.quick else (3803, 301, 2048)
    q, g = synthetic(nq, ng, d, dtype=torch.float64, device=device)
    x = torch.cat([q, g])
    t_floor, _ = timed(lambda: x @ x.T, device, args.repeat)
    t_ref, ref = timed(lambda: ref_cmfp_test_path(q, g, args.k), device, args.repeat)

    def ours(mixed=None):  # None: the default (mixed precision on the CPU only)
        def run():
            qp, gp = propagate(q, g, args.k, mode="dense", mixed=mixed)
            return squared_euclidean(qp, gp)

        return run

    t_ours, out = timed(ours(), device, args.repeat)
    t_f64, out_f64 = timed(ours(False), device, args.repeat)
    label = f"CMFP(te) {nq}x{ng} d={d} f64 k={args.k}"
    report(label, t_ref, t_ours, maxdiff(out, ref), "vs the official agg_feature path")
    report("  the same, mixed=False (float64 arithmetic)", t_ref, t_f64, maxdiff(out_f64, ref))
    if device.type != "cpu" and mixed_available(q):  # the default keeps float64 off the CPU
        t_mixed, out_mixed = timed(ours(True), device, args.repeat)
        report("  the same, mixed=True (float32 products)", t_ref, t_mixed, maxdiff(out_mixed, ref))
        print(f"  -> mixed=True / floor = {t_mixed / t_floor:.2f}x", flush=True)
        ROWS.append({"name": "cmfp_mixed_floor_ratio", "ours": t_mixed / t_floor})
    report(f"  floor: one {nq + ng}^2 x {d} matmul", None, t_floor, 0.0, "")
    print(
        f"  -> uvireid / floor = {t_ours / t_floor:.2f}x, "
        f"official / floor = {t_ref / t_floor:.2f}x",
        flush=True,
    )
    if device.type == "cpu":  # the default computes its products in float32 here (audit MG)
        x32 = x.float()
        t_floor32, _ = timed(lambda: x32 @ x32.T, device, args.repeat)
        report("  floor in float32 (the default's products)", None, t_floor32, 0.0, "")
        print(f"  -> uvireid / float32 floor = {t_ours / t_floor32:.2f}x", flush=True)
    ROWS.append({"name": "cmfp_floor_ratio", "ours": t_ours / t_floor})


def bench_cmfp_train(args, device):
    nv, nr, d = (5000, 3000, 2048) if args.quick else (22258, 11909, 2048)
    a, b = synthetic(nv, nr, d, seed=1, ids=1000, dtype=torch.float32, device=device)
    x = torch.cat([a, b])
    t_floor, _ = timed(lambda: x @ x.T, device, args.repeat)
    del _
    on_gpu = str(device).startswith("cuda")

    def peak(fn):
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t, out = timed(fn, device, args.repeat)
        extra = (torch.cuda.max_memory_allocated() - base) / 2**30 if on_gpu else float("nan")
        return t, out, extra

    t_ref, ref, m_ref = peak(lambda: ref_agg_feature(a, b, args.k)[1])
    t_ours, out, m_ours = peak(
        lambda: torch.cat(propagate(a, b, args.k, mode="sparse", backend="torch"))
    )
    diff = maxdiff(out, ref)
    del ref, out
    label = f"CMFP(tr) {nv}+{nr} d={d} f32 k={args.k}"
    report(label, t_ref, t_ours, diff, f"peak GiB official {m_ref:.2f} / uvireid {m_ours:.2f}")
    report(f"  floor: one {nv + nr}^2 x {d} matmul", None, t_floor, 0.0, "")
    print(f"  -> uvireid / floor = {t_ours / t_floor:.2f}x", flush=True)


def bench_kreciprocal(args, device):
    nq, ng, d = (1000, 100, 512) if args.quick else (3803, 301, 2048)
    q, g = synthetic(nq, ng, d, seed=2, dtype=torch.float64)
    qg = squared_euclidean(q, g).clamp(min=0).sqrt().numpy()
    qq = squared_euclidean(q, q).clamp(min=0).sqrt().numpy()
    gg = squared_euclidean(g, g).clamp(min=0).sqrt().numpy()
    qq, gg = (qq + qq.T) / 2, (gg + gg.T) / 2
    tq = [torch.from_numpy(m).to(device) for m in (qg, qq, gg)]
    t_ours, out = timed(lambda: re_ranking(*tq), device, args.repeat)
    t_ref, ref = None, out
    if "kreciprocal" not in args.skip_ref:
        t_ref, ref = timed(lambda: ref_re_ranking(qg, qq, gg), "cpu", args.repeat)
    note = "reference on the CPU (numpy)" if str(device) != "cpu" else ""
    report(f"k-reciprocal {nq}x{ng} (k1=20,k2=6)", t_ref, t_ours, maxdiff(out, ref), note)


def bench_cmrr(args, device):
    nq, ng, d = (600, 100, 512) if args.quick else (3803, 301, 2048)
    q, g = synthetic(nq, ng, d, seed=3, dtype=torch.float64)
    t_ref, ref = None, None
    if "cmrr" not in args.skip_ref:
        with np.errstate(all="ignore"):
            t_ref, ref = timed(
                lambda: ref_re_ranking_cross(q.numpy(), g.numpy(), 15, 0.1), "cpu", args.repeat
            )
    qd, gd = q.to(device), g.to(device)
    t_ours, out = timed(lambda: cmrr_distance(qd, gd, 15, 0.1), device, args.repeat)
    if ref is None:
        ref = out
    report(
        f"CMRR {nq}x{ng} (k=15, eta=0.1)",
        t_ref,
        t_ours,
        maxdiff(out, ref),
        "diff vs the float16 original",
    )


def scalable_child(n_gallery, d, k, device, backend="auto", compare_exact=False):
    nq = max(1, n_gallery // 10)
    q, g = synthetic(
        nq,
        n_gallery,
        d,
        seed=4,
        ids=max(10, n_gallery // 10),
        noise=0.8,
        dtype=torch.float32,
        device=device,
    )
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t, out = timed(lambda: propagate(q, g, k, mode="sparse", backend=backend), device, 1)
    if str(device).startswith("cuda"):
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        where = "GPU (beyond the input)"
    else:
        with open("/proc/self/status") as fh:
            hwm = [ln for ln in fh if ln.startswith("VmHWM")][0].split()[1]
        peak = int(hwm) / 2**20
        where = "process RSS peak"
    info = {"n": n_gallery, "nq": nq, "seconds": t, "peak_gib": peak, "where": where}
    if compare_exact and backend != "auto":
        # an approximate kNN against the exact one: propagated features and query ranking
        t_ex, exact = timed(lambda: propagate(q, g, k, mode="sparse"), device, 1)
        diff = torch.cat([(a - b).norm(dim=1) for a, b in zip(out, exact)])
        top_a = torch.topk(out[0] @ out[1].T, 10, dim=1).indices
        top_e = torch.topk(exact[0] @ exact[1].T, 10, dim=1).indices
        # neighbour recall of the approximate kNN on up to 3,000 sampled rows: at k, in each
        # of the four blocks CMFP searches (query->query, query->gallery, gallery->query,
        # gallery->gallery; audit MG: recall@10 of one block said 1.000 where CMFP's was
        # 0.83), and recall@10 of the gallery block as before
        gen = torch.Generator().manual_seed(0)

        def recall(rows, base, kk):
            pick = torch.randperm(rows.shape[0], generator=gen)[:3000].to(rows.device)
            want = knn(rows[pick], base, kk, backend="auto")[1]
            got = knn(rows[pick], base, kk, backend=backend)[1]
            return float((got[:, :, None] == want[:, None, :]).any(-1).float().mean())

        blocks = {"qq": (q, q), "qg": (q, g), "gq": (g, q), "gg": (g, g)}
        info.update(
            {
                f"knn_recall{k}_{b}": recall(r, base, min(k, base.shape[0]))
                for b, (r, base) in blocks.items()
            }
        )
        both = torch.cat([q, g])
        info.update(
            knn_recall10=recall(both, g, 10),
            exact_seconds=t_ex,
            feat_diff_mean=float(diff.mean()),
            feat_diff_max=float(diff.max()),
            top10_overlap=float((top_a[:, :, None] == top_e[:, None, :]).any(-1).float().mean()),
        )
    print(json.dumps(info))


def bench_scalable(args, device):
    sizes = [int(s) for s in args.scalable_sizes.split(",") if s]
    prev = None
    for n in sizes:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--_child",
            str(n),
            "--device",
            str(device),
            "--k",
            str(args.k),
            "--knn-backend",
            args.knn_backend,
        ]
        if args.compare_exact:
            cmd.append("--compare-exact")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
        except subprocess.TimeoutExpired:
            print(f"scalable CMFP {n}: stopped after {args.child_timeout} s", flush=True)
            ROWS.append({"name": f"scalable_{n}", "timeout_s": args.child_timeout})
            continue
        if res.returncode != 0:
            print(f"scalable CMFP {n}: failed\n{res.stderr[-2000:]}", flush=True)
            continue
        info = json.loads(res.stdout.strip().splitlines()[-1])
        grow = f"  x{info['seconds'] / prev:.1f} time" if prev else ""
        prev = info["seconds"]
        vs = (
            f"; exact {info['exact_seconds']:.2f} s, |f' - f'exact| mean "
            f"{info['feat_diff_mean']:.4f} max {info['feat_diff_max']:.3f}, top-10 gallery "
            f"overlap {info['top10_overlap']:.3f}, kNN recall@10 {info['knn_recall10']:.3f}"
            + ", recall@k "
            + " ".join(
                f"{b} {v:.3f}"
                for key, v in info.items()
                if key.startswith("knn_recall")
                and (b := key.rsplit("_", 1)[-1]) in ("qq", "qg", "gq", "gg")
            )
            if "exact_seconds" in info
            else ""
        )
        print(
            f"scalable CMFP {info['nq']} q + {n} g d=256 k={args.k} ({args.knn_backend} kNN): "
            f"{info['seconds']:.2f} s, peak {info['peak_gib']:.2f} GiB ({info['where']}){grow}"
            f"{vs}",
            flush=True,
        )
        ROWS.append({"name": f"scalable_{n}", **info})


def check_device(device):
    """The re-rankers on ``device`` against the same calls on the CPU (small inputs)."""
    from uvireid.rerank.aim import affinity_inference
    from uvireid.rerank.kreciprocal import k_reciprocal_distance

    q, g = synthetic(300, 80, 32, seed=5, ids=40)
    calls = {
        "cmfp dense": lambda a, b: torch.cat(propagate(a, b, 10, mode="dense")),
        "cmfp sparse": lambda a, b: torch.cat(propagate(a, b, 10, mode="sparse")),
        "kreciprocal": lambda a, b: k_reciprocal_distance(a, b),
        "cmrr": lambda a, b: cmrr_distance(a, b, 15, 0.1),
        "aim": lambda a, b: affinity_inference(a, b, 4, 1),
    }
    for name, fn in calls.items():
        for dt in (torch.float64, torch.float32):
            want = fn(q.to(dt), g.to(dt))
            got = fn(q.to(device, dt), g.to(device, dt))
            assert got.device.type == torch.device(device).type, name
            print(f"check {name:12s} {str(dt):14s} max|{device} - cpu| = {maxdiff(got, want):.2e}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, a minute on a laptop")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--k", type=int, default=30, help="CMFP k (30 as on SYSU-MM01)")
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="best of N, for uvireid, the references and the floors alike (the references "
        "of k-reciprocal and CMRR ran once before session 27: audit MG)",
    )
    p.add_argument(
        "--only",
        default=None,
        help="comma list of: cmfp, train, kreciprocal, cmrr, scalable (default: all but "
        "train, plus train on CUDA or with --train-scale)",
    )
    p.add_argument("--train-scale", action="store_true", help="add the CMFP(tr) comparison")
    p.add_argument(
        "--scalable-sizes",
        default=None,
        help="gallery sizes (default 10000,100000,1000000; --quick: 10000)",
    )
    p.add_argument("--child-timeout", type=float, default=3600)
    p.add_argument(
        "--knn-backend",
        default="auto",
        help="kNN of scalable CMFP: auto (exact), or ivf / faiss-ivf (approximate)",
    )
    p.add_argument(
        "--compare-exact",
        action="store_true",
        help="with an approximate --knn-backend, also run the exact search and compare",
    )
    p.add_argument(
        "--skip-ref", default="", help="comma list of sections whose reference is not run"
    )
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--check", action="store_true", help="first compare --device with the CPU")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument("--_child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child is not None:
        scalable_child(args._child, 256, args.k, args.device, args.knn_backend, args.compare_exact)
        return 0
    if args.scalable_sizes is None:
        args.scalable_sizes = "10000" if args.quick else "10000,100000,1000000"
    only = set((args.only or "cmfp,kreciprocal,cmrr,scalable").split(","))
    if args.train_scale or (args.only is None and args.device.startswith("cuda")):
        only.add("train")
    device = torch.device(args.device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  device: {dev_name}  "
        f"CPU: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    if args.check:
        check_device(device)
    print(f"{'comparison':44s} {'ref s':>9s} {'uvireid s':>9s} {'ratio':>9s} {'max|diff|':>10s}")
    if "cmfp" in only:
        bench_cmfp(args, device)
    if "train" in only:
        bench_cmfp_train(args, device)
    if "kreciprocal" in only:
        bench_kreciprocal(args, device)
    if "cmrr" in only:
        bench_cmrr(args, device)
    if "scalable" in only:
        bench_scalable(args, device)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": dev_name, "cpu": cpu, "rows": ROWS}, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
