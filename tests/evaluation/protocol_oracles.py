"""Naive re-statements of the test protocols (notes/eval_datasets.md §1, §2, §2.5).

Every function here is written from the notes, with plain loops, and shares no code with
``uvireid.evaluation``: the official permutations are read with scipy directly, the seeded
sampler is mangye16's loop over folders, and the metric is one query at a time.
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np

MAX_RANK = 20


def naive_metrics(qf, gf, qp, gp, qc, gc, rule, dist=None):
    """(cmc (20,) in %, mAP %, mINP %, n_valid) of one trial, one query at a time (§2.1-2.4).

    Ranks with a stable sort (the features are random: no ties)."""
    if dist is None:
        dist = -(np.asarray(qf, np.float64) @ np.asarray(gf, np.float64).T)
    cmc = np.zeros(MAX_RANK)
    aps, inps = [], []
    for i in range(len(qp)):
        order = np.argsort(dist[i], kind="stable")
        labels, cams = gp[order], gc[order]
        if rule == "sysu":
            keep = ~((qc[i] == 3) & (cams == 2))
        elif rule == "llcm":
            keep = ~((labels == qp[i]) & (cams == qc[i]))
        else:
            keep = np.ones(len(labels), bool)
        labels = labels[keep]
        hits = [k + 1 for k, lab in enumerate(labels) if lab == qp[i]]
        if not hits:
            continue  # invalid query: skipped by every metric
        aps.append(np.mean([(j + 1) / p for j, p in enumerate(hits)]))
        inps.append(len(hits) / hits[-1])
        if rule == "regdb":
            pos = hits[0]
        else:  # identity-deduplicated CMC
            seen = set()
            for lab in labels:
                seen.add(lab)
                if lab == qp[i]:
                    break
            pos = len(seen)
        for r in range(MAX_RANK):
            if pos <= r + 1:
                cmc[r] += 1
    n = len(aps)
    return cmc / n * 100.0, float(np.mean(aps)) * 100.0, float(np.mean(inps)) * 100.0, n


@lru_cache(maxsize=2)
def _cells(perm_file):
    import scipy.io

    return scipy.io.loadmat(perm_file)["rand_perm_cam"]


def official_names(perm_file, cams, pids, trial, n_shot):
    """Names ``cam{c}/{p:04d}/{idx:04d}`` of the official trial-``trial`` gallery (0-based
    trial = MATLAB row trial + 1), camera outer and identities ascending."""
    cells = _cells(str(perm_file))
    names = []
    for cam in cams:
        per_pid = cells[cam - 1, 0]
        for pid in sorted(pids):
            if pid > per_pid.shape[0]:
                continue
            perm = np.asarray(per_pid[pid - 1, 0])
            if perm.size == 0:
                continue
            for idx in perm[trial, :n_shot]:
                names.append(f"cam{cam}/{pid:04d}/{int(idx):04d}")
    return names


def key_of(path):
    """``cam{c}/{pid}/{stem}`` of a release path."""
    parts = str(path).split("/")
    return f"{parts[-3]}/{parts[-2]}/{parts[-1].rsplit('.', 1)[0]}"


def mangye16_gallery(paths, pids, cams, gallery_cams, trial, multi=False, folder_cams=None):
    """Row indices of mangye16's ``process_gallery_sysu(mode, trial)`` (DEEN's
    ``process_gallery_llcm`` too): ``random.seed(trial)``; ids as sorted ``%04d`` strings;
    listed cameras in order; one ``random.choice`` per existing folder over its sorted full
    paths (multi: ``random.sample`` of min(10, n), kept in path order)."""
    random.seed(trial)
    folders: dict = {}
    for row, (p, pid, cam) in enumerate(zip(paths, pids, cams, strict=True)):
        if cam in gallery_cams:
            folders.setdefault((f"{int(pid):04d}", int(cam)), []).append((str(p), row))
    ids = sorted({k[0] for k in folders})
    out = []
    for pid in ids:
        for cam in gallery_cams:
            files = sorted(folders.get((pid, cam), []))
            if not files:
                continue
            if multi:
                picked = random.sample(files, min(10, len(files)))
                out.extend(r for _, r in sorted(picked))
            else:
                out.append(random.choice(files)[1])
    return np.asarray(out, dtype=np.int64)


def summarise(rows):
    """Arithmetic mean and population std over trials of R1/R5/R10/R20/mAP/mINP, mean CMC."""
    keys = {"R1": 0, "R5": 4, "R10": 9, "R20": 19}
    table = [{**{k: r[0][i] for k, i in keys.items()}, "mAP": r[1], "mINP": r[2]} for r in rows]
    mean = {k: float(np.mean([t[k] for t in table])) for k in table[0]}
    std = {k: float(np.std([t[k] for t in table])) for k in table[0]}
    cmc = np.mean([r[0] for r in rows], axis=0)
    return table, mean, std, cmc
