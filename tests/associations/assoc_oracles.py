"""Naive re-statements of the association references, for tests only.

Written from ``shared/notes/peers.md`` Sec. 2.1 (PGM) and 3.1 (MBCCM) as the official code
does it: Python loops, dicts, padding with dummy columns. Slow on purpose.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp


def pgm_padded(cost: np.ndarray) -> tuple[dict, dict]:
    """PGM with the official zero-cost dummy padding, repeated until every row of the
    larger side is matched (the official code stops after two rounds).

    Returns ``(a2b, b2a)`` dicts (rows -> cols, cols -> rows)."""
    ka, kb = cost.shape
    flip = ka < kb
    c = cost.T if flip else cost
    n_large, n_small = c.shape
    # round 1: pad to square with zero-cost dummy columns
    padded = np.zeros((n_large, n_large))
    padded[:, :n_small] = c
    rows, cols = linear_sum_assignment(padded)
    large2small, small2large = {}, {}
    for r, q in zip(rows, cols):
        if q < n_small:
            large2small[int(r)] = int(q)
            small2large[int(q)] = int(r)
    while len(large2small) < n_large:
        left = [r for r in range(n_large) if r not in large2small]
        sub = c[left]
        size = max(len(left), n_small)
        padded = np.zeros((size, size))
        padded[: len(left), :n_small] = sub
        rr, qq = linear_sum_assignment(padded)
        for r, q in zip(rr, qq):
            if r < len(left) and q < n_small:
                large2small[left[r]] = int(q)
    if flip:
        return small2large, large2small
    return large2small, small2large


def mbccm_loops(dist: np.ndarray) -> np.ndarray:
    """MBCCM's mask with the official loops (``trainer.py: mbccm_matching``).

    ``dist``: (K_r, K_v) squared distances, IR rows. Returns the (K_r, K_v) 0/1 mask."""
    k_r, k_v = dist.shape
    if k_v >= k_r:
        k = k_v // k_r + 1
        ir1, rgb1 = linear_sum_assignment(dist)
        ir2, rgb2 = linear_sum_assignment(np.tile(dist, (k, 1)))
    else:
        k = k_r // k_v + 1
        rgb1, ir1 = linear_sum_assignment(dist.T)
        rgb2, ir2 = linear_sum_assignment(np.tile(dist.T, (k, 1)))
    m1 = np.zeros((k_r, k_v))
    m2 = np.zeros((k_r, k_v))
    for j in range(len(ir1)):
        i = ir1[j] % k_r
        for v in range(k_v):
            if dist[i, v] <= dist[i, rgb1[j] % k_v]:
                m1[i, v] = 1
    for j in range(len(rgb2)):
        v = rgb2[j] % k_v
        for i in range(k_r):
            if dist[i, v] <= dist[ir2[j] % k_r, v]:
                m2[i, v] = 1
    return 1 - (1 - m1) * (1 - m2)


def link_precision_loops(lv, lr, gt, nv):
    """Cross-modal links counted pair by pair: (same, total) per direction."""
    out = []
    n = len(gt)
    for a_range, b_range, space in (
        (range(nv), range(nv, n), lr),  # visible i -> IR j whose own label = i's IR label
        (range(nv, n), range(nv), lv),
    ):
        same = total = 0
        for i in a_range:
            if space[i] < 0:
                continue
            for j in b_range:
                if space[j] == space[i]:
                    total += 1
                    same += int(gt[i] == gt[j])
        out.append((same, total))
    return out


def gaussian_modalities(
    seed: int, ids: int, per_id: int, d: int = 32, shift: float = 0.5, noise: float = 0.3
):
    """Gaussian identities seen in two modalities with a modality shift.

    Returns ``(fv, gv, fr, gr)``: unit-norm float32 features and identities."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    shift_vec = rng.normal(size=d)
    shift_vec *= shift / np.linalg.norm(shift_vec)
    out = []
    for m in (0, 1):
        g = np.repeat(np.arange(ids), per_id)
        x = centres[g] + (shift_vec if m else 0) + noise * rng.normal(size=(len(g), d)) / np.sqrt(d)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out += [x.astype(np.float32), g]
    return out[0], out[1], out[2], out[3]


def outlier_clusters(seed, ids_v, ids_r, *, per_id, d, noise, outliers):
    """``[fv, gv, fr, gr]``: unit features of Gaussian identities seen in both modalities
    (one centre per identity, ``per_id`` images each), the first ``outliers`` instances
    of each modality labelled -1."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(ids_v, ids_r), d))
    out = []
    for ids in (ids_v, ids_r):
        g = np.repeat(np.arange(ids), per_id)
        x = centres[g] + noise * rng.normal(size=(len(g), d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        g[:outliers] = -1
        out += [x, g]
    return out


def official_sinkhorn_log(cost, lam, max_iter, tol, every=10):
    """SALCR's ``sinkhorn_solver`` (salcr_reference.md Sec. 5.1) in the log domain: b starts
    uniform; a, then b; every ``every``-th iteration err = sum |b / b_new - 1|; stop at
    err <= tol (the official ``while err > tol``). Returns (log a, log b, iterations)."""
    n, k = cost.shape
    m = -lam * cost
    lb = np.full(k, -np.log(k))
    err, it = np.inf, 0
    while err > tol and it < max_iter:
        la = -np.log(n) - logsumexp(m + lb[None, :], axis=1)
        lb_new = -np.log(k) - logsumexp(m + la[:, None], axis=0)
        if it % every == 0:
            err = np.abs(np.exp(lb - lb_new) - 1).sum()
        lb = lb_new
        it += 1
    return la, lb, it, err


def pot_sinkhorn_log(cost, lam, max_iter, tol, every=10):
    """POT's ``sinkhorn_log`` order from zero potentials (v, then u) with the stopping rule
    of ``sinkhorn_log``'s docstring: every ``every``-th iteration, after the u-update,
    err = sum_k |K colsum_k - 1|; stop at err < tol."""
    n, k = cost.shape
    m = -lam * cost
    lu = np.zeros(n)
    it, err = 0, np.inf
    for it in range(max_iter):
        lv = -np.log(k) - logsumexp(m + lu[:, None], axis=0)
        lu = -np.log(n) - logsumexp(m + lv[None, :], axis=1)
        if it % every == 0:
            col = np.exp(logsumexp(m + lu[:, None] + lv[None, :], axis=0))
            err = np.abs(col * k - 1).sum()
            if err < tol:
                break
    return lu, lv, it + 1, err


def cmfp_naive(fv, fr, k):
    """SALCR Sec. 8.1 (salcr_reference.md): four kNN blocks, top-k by value, negatives to
    0, each block row-normalised, F' = L2n(A [Fv; Fr])."""
    fv = fv / np.linalg.norm(fv, axis=1, keepdims=True)
    fr = fr / np.linalg.norm(fr, axis=1, keepdims=True)

    def block(a, b):
        s = a @ b.T
        thr = -np.sort(-s, axis=1)[:, k - 1 : k]
        s = np.where(s >= thr, s, 0.0).clip(min=0)
        return s / s.sum(1, keepdims=True)

    out = np.block([[block(fv, fv), block(fv, fr)], [block(fr, fv), block(fr, fr)]])
    out = out @ np.vstack([fv, fr])
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out[: len(fv)], out[len(fv) :]
