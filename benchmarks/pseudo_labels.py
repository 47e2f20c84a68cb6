"""Pseudo-label benchmark: clustering speed/memory and association quality, one script.

    python benchmarks/pseudo_labels.py [--quick] [--part clustering|association|kmeans|all]
                                       [--sizes 5000,10000,22258] [--device cpu|cuda]

Part 1, clustering (CPU): Jaccard + DBSCAN (k1=30, k2=6, eps=0.6, min_samples=4) of
uvireid's sparse implementation against a faithful re-statement of Cluster-Contrast's
``compute_jaccard_distance`` written below (faiss ``IndexFlatL2`` on the CPU as the peers
call it, Python loops, three dense N x N float32 arrays) followed by scikit-learn's DBSCAN
on the dense matrix, at N = 5k, 10k, 22,258 (SYSU-MM01's visible training set size) with
d = 2048 random-but-clustered unit features. Also the bare exact kNN search (faiss flat,
k = 30), the floor any exact method pays, timed in the same process just before
uvireid's run. Each (method, N) runs in a fresh subprocess after a small warm-up run;
peak memory is the rise of the process's resident set (``VmHWM`` after ``clear_refs``)
over the features already loaded. The partitions of the
two implementations are compared (identical labels, adjusted Rand index).

Part 2, association (CPU): every clusterer (DBSCAN, HDBSCAN on the sparse Jaccard
distance, k-means given each modality's true identity count, and the ground-truth
identities as a perfect clusterer) with every associator
(``otla_dual``, ``pgm``, ``mbccm``), with and without CMFP(tr), on two feature sets:
a controlled Gaussian model (identities seen in two modalities with a shared shift and an
identity-specific modality deviation) and images of the synthetic dataset
(``uvireid.data.synthetic``) through a fixed hand-made extractor (gradient-orientation
histograms of the grey, centre-cropped image, mean-centred per camera). Quality against
the true identities: ARI per modality, ARI of every instance in the visible label space
(``cross_v``) and in the infrared one (``cross_r``), and the link precision (fraction of
cross-modal instance links joining the same identity), plus the association time.

Part 3, k-means (CPU): uvireid's ``kmeans`` against scikit-learn's ``KMeans`` (Lloyd, one
k-means++ seeding each) on 20k clustered features (d = 256, K = 500), time and inertia.

``--device cuda``: the GPU check. kNN (torch exact search; no faiss needed) + Jaccard +
DBSCAN of 22,258 clustered features (d = 2048) on the GPU, end to end, best of three after
a warm-up, with the bare kNN search for comparison, peak GPU memory, and the partition
compared with the same run on the CPU. Prints the card's name. One command, < 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from uvireid.clustering.dbscan import DBSCANClusterer  # noqa: E402
from uvireid.clustering.knn import knn  # noqa: E402

K1, K2, EPS, MIN_SAMPLES = 30, 6, 0.6, 4


# ======================================================================================
# features
def clustered_features(n: int, d: int = 2048, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 unit features around random identity centres, SYSU-like sizes.

    About 56 images per identity (SYSU-MM01: 22,258 visible images of 395 ids), sizes
    varying 4x, per-identity spread varying, and 3% of points drawn from nowhere.
    """
    rng = np.random.default_rng(seed)
    ids = max(1, round(n / 56))
    sizes = rng.uniform(0.5, 2.0, ids)
    sizes = np.maximum(1, np.round(sizes / sizes.sum() * n * 0.97)).astype(int)
    gt = np.repeat(np.arange(ids), sizes)[:n]
    gt = np.concatenate([gt, np.full(n - len(gt), -1)])
    centres = rng.normal(size=(ids, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.7, 1.1, ids).astype(np.float32)
    # np.float32: with NumPy 2 a float64 scalar made the whole array float64 (NEP 50), and
    # every figure of this script before session 27 was measured on float64 features
    x = rng.normal(size=(n, d)).astype(np.float32) / np.float32(np.sqrt(d))
    real = gt >= 0
    x[real] = centres[gt[real]] + spread[gt[real], None] * x[real]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)
    assert x.dtype == np.float32
    return np.ascontiguousarray(x[perm]), gt[perm]


def gaussian_modalities(
    seed: int = 0,
    ids: int = 150,
    per_v: int = 30,
    per_r: int = 15,
    d: int = 128,
    spread: float = 0.5,
    noise: float = 0.8,
    shift: float = 0.5,
    deviation: float = 1.5,
) -> tuple[np.ndarray, ...]:
    """Controlled cross-modality model (all vectors scaled to unit-norm at the end).

    Identity centres ``mu + spread * z_i`` (a shared component makes identities close:
    cosine about ``1 / (1 + spread^2)``); infrared adds a global shift and an
    identity-specific deviation of norms ``shift`` and ``deviation``; every image adds
    isotropic noise of norm about ``noise``. Visible ~``per_v``, infrared ~``per_r``
    images per identity (counts vary 0.5x-1.5x).
    """
    rng = np.random.default_rng(seed)

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    centres = unit(unit(rng.normal(size=d)) + spread * unit(rng.normal(size=(ids, d))))
    mod_shift = shift * unit(rng.normal(size=d))
    dev = deviation * unit(rng.normal(size=(ids, d)))
    out = []
    for modality, per in ((0, per_v), (1, per_r)):
        counts = rng.integers(per // 2, per * 3 // 2 + 1, ids)
        g = np.repeat(np.arange(ids), counts)
        base = centres[g] + (mod_shift + dev[g] if modality else 0.0)
        x = unit(base + noise * rng.normal(size=(len(g), d)) / np.sqrt(d))
        out += [x.astype(np.float32), g]
    return tuple(out)


def synthetic_image_features(ids: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Images of the synthetic dataset (rendered in memory) through a fixed extractor."""
    import torch.nn.functional as F

    from uvireid.data.synthetic import (
        CAM_MODALITY,
        camera_counts,
        draw_conditions,
        make_identity,
        render,
    )

    imgs, pids, cams = [], [], []
    for pid in range(1, ids + 1):
        ident = make_identity(pid, seed)
        for cam, count in camera_counts(pid, seed).items():
            for i in range(count):
                imgs.append(render(ident, draw_conditions(seed, pid, cam, i + 1), seed=seed))
                pids.append(pid)
                cams.append(cam)
    x = torch.from_numpy(np.stack(imgs)).float().mean(-1)[:, None] / 255.0
    x = F.interpolate(x[:, :, 8:120, 12:52], size=(64, 32), mode="area")  # centre crop
    x = (x - x.mean((2, 3), keepdim=True)) / (x.std((2, 3), keepdim=True) + 1e-6)
    gx = F.pad(x[..., :, 2:] - x[..., :, :-2], (1, 1, 0, 0))
    gy = F.pad(x[..., 2:, :] - x[..., :-2, :], (0, 0, 1, 1))
    bins = (torch.atan2(gy, gx) % np.pi / np.pi * 9).long().clamp(max=8)
    hog = torch.zeros(x.shape[0], 9, 64, 32).scatter_(1, bins, (gx**2 + gy**2).sqrt())
    f = torch.nn.functional.avg_pool2d(hog, 8).flatten(1).sqrt()
    cams_a = np.array(cams)
    for c in np.unique(cams_a):  # camera-wise mean-centring (cameras are known)
        f[torch.from_numpy(cams_a == c)] -= f[torch.from_numpy(cams_a == c)].mean(0)
    f = torch.nn.functional.normalize(f, dim=1).numpy()
    mods = np.array([CAM_MODALITY[c] for c in cams])
    pids_a = np.array(pids)
    return f[mods == 0], pids_a[mods == 0], f[mods == 1], pids_a[mods == 1]


# ======================================================================================
# reference: Cluster-Contrast compute_jaccard_distance re-stated (loops, dense arrays)
def _reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = rank[i, : k + 1]
    backward = rank[forward, : k + 1]
    return forward[np.where(backward == i)[0]]


def reference_jaccard(
    features: torch.Tensor, k1: int = K1, k2: int = K2, timings: dict | None = None
) -> np.ndarray:
    """Cluster-Contrast ``compute_jaccard_distance(search_option=3)``: dense N x N float32."""
    import faiss

    n = features.size(0)
    t0 = time.perf_counter()
    index = faiss.IndexFlatL2(features.size(-1))
    index.add(features.cpu().numpy())
    _, rank = index.search(features.cpu().numpy(), k1)
    if timings is not None:
        timings["knn"] = time.perf_counter() - t0
    near, near_half = [], []
    for i in range(n):
        near.append(_reciprocal(rank, i, k1))
        near_half.append(_reciprocal(rank, i, int(np.around(k1 / 2))))
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        expansion = near[i]
        for c in near[i]:
            cand = near_half[c]
            if len(np.intersect1d(cand, near[i])) > 2 / 3 * len(cand):
                expansion = np.append(expansion, cand)
        expansion = np.unique(expansion)
        dist = 2 - 2 * torch.mm(features[i].unsqueeze(0).contiguous(), features[expansion].t())
        v[i, expansion] = torch.softmax(-dist, dim=1).view(-1).cpu().numpy()
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=np.float32)
        for i in range(n):
            v_qe[i, :] = np.mean(v[rank[i, :k2], :], axis=0)
        v = v_qe
        del v_qe
    inv = [np.where(v[:, i] != 0)[0] for i in range(n)]
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        temp_min = np.zeros((1, n), dtype=np.float32)
        nz = np.where(v[i, :] != 0)[0]
        for j in range(len(nz)):
            rows = inv[nz[j]]
            temp_min[0, rows] = temp_min[0, rows] + np.minimum(v[i, nz[j]], v[rows, nz[j]])
        jac[i] = 1 - temp_min / (2 - temp_min)
    del inv, v
    jac[jac < 0] = 0.0
    return jac


# ======================================================================================
# one (method, N) in a fresh process: time and peak memory
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _run_method(method: str, x: np.ndarray) -> tuple[np.ndarray | None, dict]:
    from sklearn.cluster import DBSCAN

    if method == "knn":
        import faiss

        t0 = time.perf_counter()
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x)
        index.search(x, K1)
        return None, {"total": time.perf_counter() - t0}
    if method == "sparse":
        part = DBSCANClusterer(eps=EPS, min_samples=MIN_SAMPLES, k1=K1, k2=K2)
        t0 = time.perf_counter()
        labels = part.fit_predict(x)
        return labels, {"total": time.perf_counter() - t0, **part.timings_}
    t0 = time.perf_counter()
    ref_t: dict = {}
    jac = reference_jaccard(torch.from_numpy(x), timings=ref_t)
    t1 = time.perf_counter()
    labels = DBSCAN(eps=EPS, min_samples=MIN_SAMPLES, metric="precomputed", n_jobs=-1).fit_predict(
        jac
    )
    return labels.astype(np.int64), {
        "total": time.perf_counter() - t0,
        "knn": ref_t["knn"],
        "jaccard": t1 - t0 - ref_t["knn"],
        "dbscan": time.perf_counter() - t1,
    }


def trim() -> None:
    """Give freed heap memory back to the OS, so that a peak counts one run only."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def child(method: str, n: int, out: str) -> None:
    """Entry point of the subprocess: warm up small, then time ``method`` at size ``n``."""
    logging_off()
    x, _ = clustered_features(n)
    _run_method(method, clustered_features(1500, seed=1)[0])  # warm-up (lazy inits, malloc)
    trim()
    floor = None
    if method == "sparse":  # the bare kNN search, in this process, just before (best of 2)
        floor = min(_run_method("knn", x)[1]["total"] for _ in range(2))
        trim()
    base = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak resident set to the current one
    labels, times = _run_method(method, x)
    peak = _status_kb("VmHWM")
    if floor is not None:
        times["floor"] = floor
    if labels is not None:
        np.save(out + ".npy", labels)
    with open(out + ".json", "w") as fh:
        json.dump({"times": times, "peak_mb": (peak - base) / 1024}, fh)


def spawn(method: str, n: int, tmp: str) -> dict:
    out = os.path.join(tmp, f"{method}-{n}")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, str(n), out]
    subprocess.run(cmd, check=True)
    with open(out + ".json") as fh:
        res = json.load(fh)
    res["labels"] = np.load(out + ".npy") if os.path.exists(out + ".npy") else None
    return res


def part_clustering(sizes: list[int], reference: bool) -> list[str]:
    from sklearn.metrics import adjusted_rand_score

    lines = [
        "| N | kNN floor s | uvireid s: total (kNN + Jaccard + DBSCAN) | reference s: total "
        "(kNN + Jaccard + DBSCAN) | speed-up total | speed-up after the kNN | uvireid / floor | "
        "uvireid peak MB | reference peak MB | memory ratio | clusters | same partition |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)  # the rows follow as each size is measured
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            sp = spawn("sparse", n, tmp)
            ref = spawn("dense", n, tmp) if reference else None
            t = sp["times"]
            cells = [
                f"{n}",
                f"{t['floor']:.2f}",
                f"{t['total']:.2f} ({t['knn']:.2f} + {t['jaccard']:.2f} + {t['dbscan']:.2f})",
            ]
            if ref is not None:
                r = ref["times"]
                same = np.array_equal(ref["labels"], sp["labels"])
                ari = adjusted_rand_score(ref["labels"], sp["labels"])
                after = (r["jaccard"] + r["dbscan"]) / (t["jaccard"] + t["dbscan"])
                cells += [
                    f"{r['total']:.1f} ({r['knn']:.1f} + {r['jaccard']:.1f} + {r['dbscan']:.1f})",
                    f"{r['total'] / t['total']:.1f}x",
                    f"{after:.0f}x",
                ]
            else:
                cells += ["-", "-", "-"]
            cells += [f"{t['total'] / t['floor']:.2f}x", f"{sp['peak_mb']:.0f}"]
            if ref is not None:
                cells += [
                    f"{ref['peak_mb']:.0f}",
                    f"{ref['peak_mb'] / max(sp['peak_mb'], 1):.2g}x",
                    f"{int(sp['labels'].max()) + 1}",
                    f"{'yes' if same else 'no'} (ARI {ari:.4f})",
                ]
            else:
                cells += ["-", "-", f"{int(sp['labels'].max()) + 1}", "-"]
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return lines


# ======================================================================================
# association quality
def part_association(quick: bool) -> list[str]:
    from uvireid.associations.quality import association_quality
    from uvireid.clustering.hdbscan_clusterer import HDBSCANClusterer
    from uvireid.clustering.kmeans import KMeansClusterer
    from uvireid.registry import ASSOCIATORS

    t0 = time.perf_counter()
    sources = {
        "gaussian": (gaussian_modalities(ids=60 if quick else 150), 30, 0.6),
        "synthetic": (synthetic_image_features(40 if quick else 120), 8, 0.5),
    }
    print(f"features ready in {time.perf_counter() - t0:.1f}s", flush=True)
    lines = [
        "| features | Nv / Nr | clusterer | Kv / Kr | ARI vis | ARI IR | associator | CMFP(tr) | "
        "ARI cross_v | ARI cross_r | link precision | time s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for src, ((fv, gv, fr, gr), k_tr, eps) in sources.items():
        clusterers = {
            "ground truth": lambda x, g: g,
            f"dbscan eps={eps}": lambda x, g, e=eps: DBSCANClusterer(eps=e).fit_predict(x),
            "hdbscan": lambda x, g: HDBSCANClusterer().fit_predict(x),
            # K given the modality's true identity count (an oracle K: k-means needs one)
            "kmeans K=ids": lambda x, g: KMeansClusterer(
                num_clusters=len(np.unique(g))
            ).fit_predict(x),
        }
        gt = np.concatenate([gv, gr])
        for cname, cluster in clusterers.items():
            lv, lr = cluster(fv, gv), cluster(fr, gr)
            for aname in ("otla_dual", "pgm", "mbccm"):
                for kt in (None, k_tr):
                    part = ASSOCIATORS.build({"type": aname, "k_tr": kt})
                    t1 = time.perf_counter()
                    out = part.associate(fv, lv, fr, lr)
                    dt = time.perf_counter() - t1
                    q = association_quality(out, gt)
                    row = [
                        src,
                        f"{len(gv)} / {len(gr)}",
                        cname,
                        f"{len(set(lv.tolist()) - {-1})} / {len(set(lr.tolist()) - {-1})}",
                        f"{q['visible']['ari']:.3f}",
                        f"{q['infrared']['ari']:.3f}",
                        aname,
                        "-" if kt is None else f"k={kt}",
                        f"{q['cross_v']['ari']:.3f}",
                        f"{q['cross_r']['ari']:.3f}",
                        f"{q['links']['link_precision']:.3f}",
                        f"{dt:.2f}",
                    ]
                    lines.append("| " + " | ".join(row) + " |")
                    print(lines[-1], flush=True)
    return lines


# ======================================================================================
# k-means speed
def part_kmeans(quick: bool) -> list[str]:
    """uvireid's ``kmeans`` against scikit-learn's ``KMeans(algorithm="lloyd")`` in one
    process, the two halves apart: the k-means++ seeding (each its own draws), then Lloyd's
    iterations from the same centres (uvireid's seeding), so both run the same iterations
    to the same partition and only the implementations differ (a whole fit each, from its
    own seeding, compared seeding luck too: 6 against 8 iterations; audit MG). Best of 2;
    seconds per assignment pass (uvireid's first assignment, before its first iteration,
    counted as one)."""
    from sklearn.cluster import KMeans, kmeans_plusplus

    from uvireid.clustering.kmeans import kmeans_pp, lloyd

    n, d, k = (5000, 128, 100) if quick else (20000, 256, 500)
    x, _ = clustered_features(n, d=d, seed=5)
    xt = torch.from_numpy(x)

    def best_of_2(fn):
        best, out = None, None
        for _ in range(2):
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        return best, out

    t_pp, centres = best_of_2(lambda: kmeans_pp(xt, k, torch.Generator().manual_seed(0)))
    t_skpp, _ = best_of_2(lambda: kmeans_plusplus(x, k, random_state=0))
    # done counts as scikit-learn's n_iter_: per pass is the time over either count
    t_ll, (_, _, inertia, done) = best_of_2(lambda: lloyd(xt, centres, 100, 1e-4))
    init = centres.numpy()
    t_sk, km = best_of_2(
        lambda: KMeans(k, init=init, n_init=1, algorithm="lloyd", max_iter=100, tol=1e-4).fit(x)
    )
    lines = [
        f"k-means, N = {n}, d = {d}, K = {k}, float32, {torch.get_num_threads()} thread(s)",
        "| part | uvireid s | scikit-learn s | scikit-learn / uvireid | iterations | "
        "s per pass | inertia |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| k-means++ seeding (own draws) | {t_pp:.2f} | {t_skpp:.2f} | {t_skpp / t_pp:.2f}x "
        "| | | |",
        f"| Lloyd from the same centres | {t_ll:.2f} | {t_sk:.2f} | {t_sk / t_ll:.2f}x | "
        f"{done} / {km.n_iter_} | {t_ll / done:.3f} / {t_sk / km.n_iter_:.3f} | "
        f"{inertia:.1f} / {km.inertia_:.1f} |",
    ]
    print("\n".join(lines), flush=True)
    return lines


# ======================================================================================
# GPU check
def device_checks(dev: torch.device) -> list[str]:
    """Same results on ``dev`` as on the CPU (small sizes): Jaccard values and support,
    DBSCAN partition, and every associator's output; and run-to-run determinism."""
    from uvireid.clustering.jaccard import jaccard_distance
    from uvireid.registry import ASSOCIATORS

    x, _ = clustered_features(3000, d=256, seed=2)
    _, idx = knn(x, k=K1, metric="l2", backend="torch")
    a = jaccard_distance(x, knn_indices=idx)
    b = jaccard_distance(torch.from_numpy(x).to(dev), knn_indices=idx)
    b2 = jaccard_distance(torch.from_numpy(x).to(dev), knn_indices=idx)
    same_support = np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
    diff = float(np.abs(a.data - b.data).max()) if same_support else float("nan")
    lab_a = DBSCANClusterer().fit_predict(x)
    lab_b = DBSCANClusterer(device=str(dev)).fit_predict(torch.from_numpy(x).to(dev))
    lines = [
        f"- Jaccard on {dev} vs CPU (N=3000, same kNN): same stored pairs {same_support}, "
        f"max |diff| {diff:.2e}; repeat on {dev} bit-identical "
        f"{np.array_equal(b.data, b2.data)}; DBSCAN partition identical "
        f"{np.array_equal(lab_a, lab_b)}",
    ]
    fv, gv, fr, gr = gaussian_modalities(ids=40)
    for name in ("otla_dual", "pgm", "mbccm"):
        for k_tr in (None, 30):
            cpu = ASSOCIATORS.build({"type": name, "k_tr": k_tr}).associate(fv, gv, fr, gr)
            part = ASSOCIATORS.build({"type": name, "k_tr": k_tr})
            t = [torch.from_numpy(v).to(dev) for v in (fv, fr)]
            g1 = part.associate(t[0], gv, t[1], gr)
            g2 = part.associate(t[0], gv, t[1], gr)
            eq = all(
                np.array_equal(getattr(cpu, f), getattr(g1, f))
                for f in ("labels_in_v", "labels_in_r", "matches")
            )
            det = all(
                np.array_equal(getattr(g1, f), getattr(g2, f))
                for f in ("labels_in_v", "labels_in_r", "matches")
            )
            lines.append(f"- {name} (k_tr={k_tr}) on {dev}: equal to CPU {eq}, deterministic {det}")
    for line in lines:
        print(line, flush=True)
    return lines


def part_gpu(n: int = 22258, device: str = "cuda") -> list[str]:
    from sklearn.metrics import adjusted_rand_score

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    lines = [f"Device: {name}; torch {torch.__version__}; {os.cpu_count()} CPU cores", ""]
    print(lines[0], flush=True)
    lines += device_checks(dev)
    x_np, _ = clustered_features(n)
    x = torch.from_numpy(x_np).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    warm = torch.from_numpy(clustered_features(2000, seed=1)[0]).to(dev)
    DBSCANClusterer(device=device).fit_predict(warm)
    knn(warm, k=K1, metric="l2", backend="torch")
    sync()
    floors = []
    for _ in range(3):
        t0 = time.perf_counter()
        knn(x, k=K1, metric="l2", backend="torch")
        sync()
        floors.append(time.perf_counter() - t0)
    runs, labels = [], None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
    for _ in range(3):
        part = DBSCANClusterer(eps=EPS, device=device)
        t0 = time.perf_counter()
        labels = part.fit_predict(x)
        sync()
        runs.append((time.perf_counter() - t0, dict(part.timings_)))
    peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20 if dev.type == "cuda" else 0
    best = min(runs, key=lambda r: r[0])
    t0 = time.perf_counter()
    cpu_labels = DBSCANClusterer(eps=EPS).fit_predict(x_np)
    t_cpu = time.perf_counter() - t0
    same = np.array_equal(labels, cpu_labels)
    ari = adjusted_rand_score(cpu_labels, labels)
    t = best[1]
    table = [
        "",
        "| N | d | bare kNN (torch: one product + top-k) s | kNN s | Jaccard s | DBSCAN s | "
        "end to end s (best of 3) | all 3 runs s | peak GPU MB over the features | clusters | "
        "CPU run s | same partition as CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {n} | {x.shape[1]} | {min(floors):.3f} | {t['knn']:.3f} | {t['jaccard']:.3f} | "
        f"{t['dbscan']:.3f} | {best[0]:.3f} | {', '.join(f'{r[0]:.2f}' for r in runs)} | "
        f"{peak:.0f} | {int(labels.max()) + 1} | {t_cpu:.1f} | "
        f"{'yes' if same else 'no'} (ARI {ari:.4f}) |",
    ]
    for line in table:
        print(line, flush=True)
    return lines + table


def header(args: argparse.Namespace) -> list[str]:
    cpu = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln)
    except Exception:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return [
        f"- Command: `{' '.join(['python benchmarks/pseudo_labels.py', *sys.argv[1:]])}`",
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {cpu}, {os.cpu_count()} cores (load {load:.1f} at start), "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s)",
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (2k, 5k), small data")
    ap.add_argument("--part", choices=("clustering", "association", "kmeans", "all"), default="all")
    ap.add_argument("--sizes", default=None, help="comma-separated N for the clustering part")
    ap.add_argument("--no-reference", action="store_true", help="skip the dense reference")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of every method (torch, faiss, BLAS); default: all cores. On a "
        "machine shared with other busy jobs, 1 avoids OpenMP barrier stalls",
    )
    args = ap.parse_args()
    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(args.threads)  # inherited by the child processes
        torch.set_num_threads(args.threads)
    logging_off()
    for line in header(args):
        print(line)
    if args.device == "cuda":
        if args.part not in ("clustering", "all") or args.sizes:
            print(
                "note: --device cuda runs its own check (22,258 features, every part); "
                "--part and --sizes apply to the CPU runs only",
                flush=True,
            )
        part_gpu()
        return
    if args.part in ("clustering", "all"):
        sizes = [2000, 5000] if args.quick else [5000, 10000, 22258]
        if args.sizes:
            sizes = [int(s) for s in args.sizes.split(",")]
        part_clustering(sizes, reference=not args.no_reference)
    if args.part in ("association", "all"):
        part_association(args.quick)
    if args.part in ("kmeans", "all"):
        part_kmeans(args.quick)


def logging_off() -> None:
    import logging

    logging.getLogger("uvireid").setLevel(logging.ERROR)


if __name__ == "__main__":
    main()
