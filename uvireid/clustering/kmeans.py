"""k-means (Lloyd's algorithm with k-means++ seeding) in torch, on any device.

The clusterer of the first clustering-based unsupervised re-ID methods (MMT, ICLR 2020,
and SpCL's k-means baseline: 500 clusters on Market-1501) and the fallback their
maintainers give when a Jaccard graph does not fit in memory (``shared/notes/users_pain.md``
Sec. 1). Unlike DBSCAN it takes the number of clusters and leaves no outlier.

Algorithm (Lloyd 1982; Arthur and Vassilvitskii 2007 for the seeding), as scikit-learn's
``KMeans(algorithm="lloyd")`` runs it:

* seeding: the first centre is a uniformly drawn point; each next one is the best, by
  the inertia it leaves, of ``2 + floor(ln K)`` candidates drawn with probability
  proportional to the squared distance to the nearest centre so far (greedy k-means++);
* iterations: assign each point to its nearest centre, move each centre to the mean of
  its points; a centre left without points takes the point farthest from its own
  centre (scikit-learn's relocation); stop when no label changes, or when the centres'
  total squared shift is at most ``tol`` times the features' mean per-dimension
  variance, after ``iters`` iterations at most; then the final labels of the final
  centres.

Work: O(iters * N * K * d) in (rows x K) blocks of distances (at most 2^24 entries, 64
MiB in float32); memory beside the features: the blocks, the centres, and up to two
temporaries of the features' size (the per-dimension variance once, and in an iteration
that relocates an empty cluster, each point's offset from its centre). The labels are
numbered by the row of each cluster's first point.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from uvireid.associations.checks import as_features, resolve_device
from uvireid.errors import check_seed
from uvireid.registry import CLUSTERERS

__all__ = ["KMeansClusterer", "kmeans_pp", "lloyd"]

logger = logging.getLogger(__name__)

#: rows of the (rows x K) distance block at a time: 64 MiB of float32 at K = 256
_BLOCK_ELEMENTS = 1 << 24
#: on the CPU, blocks that stay in the caches: 2 MiB of float32 (a Lloyd pass at 20,000 x
#: 256, K = 500: 35 ms against 49 ms with the whole (N, K) block; benchmarks/RESULTS.md)
_CPU_BLOCK_ELEMENTS = 1 << 19


def _nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Each row's nearest centre (the first of equal ones), by ``|c|^2 - 2 x.c`` (the row's
    own ``|x|^2`` cannot change its choice; scikit-learn's Lloyd ranks the same way), one
    fused product a block of rows."""
    n, k = x.shape[0], centres.shape[0]
    cc = (centres * centres).sum(1)[None]
    block = _BLOCK_ELEMENTS if x.device.type != "cpu" else min(_BLOCK_ELEMENTS, _CPU_BLOCK_ELEMENTS)
    rows = max(1, block // max(1, k))
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    for i in range(0, n, rows):
        scores = torch.addmm(cc, x[i : i + rows], centres.T, alpha=-2)
        labels[i : i + rows] = scores.argmin(1)
    return labels


def _inertia(x: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum of the squared distances of the rows to their centres, from the differences."""
    total = 0.0
    rows = max(1, _BLOCK_ELEMENTS // max(1, x.shape[1]))
    for i in range(0, x.shape[0], rows):
        total += float(((x[i : i + rows] - centres[labels[i : i + rows]]) ** 2).sum())
    return total


def kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """(k, d) greedy k-means++ centres of ``x`` (N, d), drawn with ``generator`` (on the
    CPU): ``2 + floor(ln k)`` candidates a step, the one leaving the least inertia kept."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    xx = (x * x).sum(1)

    def sq_dist(idx: torch.Tensor) -> torch.Tensor:  # (len(idx), N), clamped at 0
        c = x[idx]
        return (xx[idx][:, None] - 2 * c @ x.T + xx[None, :]).clamp_min(0)

    first = torch.randint(n, (1,), generator=generator).to(x.device)
    centres = [x[first[0]]]
    closest = sq_dist(first)[0]
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # every point sits on a centre: any further point will do
            cand = torch.randint(n, (trials,), generator=generator)
        else:
            u = torch.rand(trials, generator=generator, dtype=torch.float64) * total
            cum = torch.cumsum(closest.double().cpu(), 0)
            cand = torch.searchsorted(cum, u).clamp_max(n - 1)
        cand = cand.to(x.device)
        d = sq_dist(cand)  # (trials, N)
        pot = torch.minimum(closest[None], d).sum(1)
        best = int(pot.argmin())
        centres.append(x[cand[best]])
        closest = torch.minimum(closest, d[best])
    return torch.stack(centres)


def lloyd(
    x: torch.Tensor, centres: torch.Tensor, iters: int = 100, tol: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Lloyd's iterations from ``centres``: ``(labels, centres, inertia, iterations)``.

    ``tol`` is relative to the mean per-dimension variance of ``x`` (scikit-learn's); an
    iteration whose labels equal the previous ones stops at once. ``iterations`` counts
    as scikit-learn's ``n_iter_``: a stop on unchanged labels includes the round that
    would confirm them (its centres are the same), up to ``iters``."""
    k = centres.shape[0]
    scaled_tol = float(x.var(0, unbiased=False).mean()) * tol
    centres = centres.clone()
    labels = _nearest(x, centres)
    done = 0
    while done < iters:
        done += 1
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            # scikit-learn's relocation: each empty cluster takes one of the points
            # farthest from their own (old) centre, which leaves its cluster's sum
            far = ((x - centres[labels]) ** 2).sum(1)
            moved = torch.argsort(far, descending=True, stable=True)[: len(empty)]
            sums.index_add_(0, labels[moved], -x[moved])
            counts.index_add_(
                0, labels[moved], -torch.ones(len(moved), dtype=x.dtype, device=x.device)
            )
            sums[empty], counts[empty] = x[moved], 1
        new = sums / counts.clamp_min(1)[:, None]
        left = counts == 0  # a singleton emptied by the relocation: not at the origin, at
        if bool(left.any()):  # the largest cluster's centre, as scikit-learn (audit MB)
            new[left] = new[int(counts.argmax())].clone()
        shift = float(((new - centres) ** 2).sum())
        centres = new
        fresh = _nearest(x, centres)
        same = bool(torch.equal(fresh, labels))
        labels = fresh  # the final centres' labels when the loop ends, whatever ends it
        if shift <= scaled_tol:  # scikit-learn checks the shift before it assigns again
            break
        if same:  # scikit-learn counts the next round, the one that sees no label change
            done = min(done + 1, iters)
            break
    return labels, centres, _inertia(x, centres, labels), done


@CLUSTERERS.register("kmeans")
class KMeansClusterer:
    """k-means (Lloyd, k-means++ seeding) with a fixed number of clusters and no outlier
    (MMT, ICLR 2020; SpCL's k-means baseline).

    Args:
        num_clusters: K per modality (each modality is clustered on its own; 500, MMT's
            and SpCL's setting on Market-1501); at most the number of images (clamped,
            with a warning).
        iters: Lloyd iterations at most (100).
        tol: stop when the centres' total squared shift is at most ``tol`` times the
            features' mean per-dimension variance (1e-4, scikit-learn's default).
        n_init: seedings tried; the partition with the least inertia is kept (1).
        seed: the seeding's random draws (a CPU generator: the same centres on every
            device); seeding i of ``n_init`` draws with ``seed + i``.
        device: where it runs (default: the features' device).

    ``fit_predict(features[N, d]) -> labels[N]`` int64 numpy, numbered by the row of each
    cluster's first point; after a call ``inertia_``, ``iterations_``, ``num_clusters_``
    and ``timings_`` describe it.
    """

    def __init__(
        self,
        num_clusters: int = 500,
        iters: int = 100,
        tol: float = 1e-4,
        n_init: int = 1,
        seed: int = 0,
        device: str | None = None,
    ):
        self.num_clusters = num_clusters
        self.iters = iters
        self.tol = tol
        self.n_init = n_init
        self.seed = seed
        self.device = device

    def __repr__(self) -> str:
        return (
            f"KMeansClusterer(num_clusters={self.num_clusters}, iters={self.iters}, "
            f"tol={self.tol}, n_init={self.n_init}, seed={self.seed})"
        )

    def _check_params(self) -> None:
        from uvireid.rerank.inputs import check_k, check_real

        check_k(self.num_clusters, "num_clusters", "kmeans")
        check_k(self.iters, "iters", "kmeans")
        check_k(self.n_init, "n_init", "kmeans")
        check_real(self.tol, "tol", "kmeans", 0.0)  # numpy scalars too (audit MB)
        # 0..2**32-1: 2**70 was torch's bare "Overflow when unpacking long long"
        seed = int(self.seed) if isinstance(self.seed, np.integer) else self.seed
        check_seed(seed, "kmeans: seed")

    def fit_predict(self, features: Any) -> np.ndarray:
        self._check_params()
        x = as_features(features, "kmeans")
        x = x.to(resolve_device(self.device, x))
        n = x.shape[0]
        k = int(self.num_clusters)
        if k > n:
            logger.warning(
                "kmeans: num_clusters=%d > %d images; using %d (one image per cluster)", k, n, n
            )
            k = n
        t0 = time.perf_counter()
        best = None
        for i in range(int(self.n_init)):
            gen = torch.Generator().manual_seed(int(self.seed) + i)
            run = lloyd(x, kmeans_pp(x, k, gen), int(self.iters), float(self.tol))
            if best is None or run[2] < best[2]:
                best = run
        labels, _, inertia, done = best
        labels = labels.cpu().numpy()
        # numbered by first appearance: the same partition gives the same labels
        _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first)] = np.arange(len(first))  # first rows are distinct
        labels = rank[inverse.reshape(-1)]
        self.labels_ = labels
        self.inertia_, self.iterations_ = inertia, done
        self.num_clusters_ = int(labels.max()) + 1
        if self.num_clusters_ < k:
            logger.warning(
                "kmeans: %d clusters of the %d asked for: the features have fewer distinct "
                "points than clusters (duplicated images?)",
                self.num_clusters_,
                k,
            )
        self.timings_ = {"kmeans": time.perf_counter() - t0}
        logger.info(
            "kmeans(K=%d): %d clusters, inertia %.4g, %d iteration(s)",
            k,
            self.num_clusters_,
            inertia,
            done,
        )
        return labels
