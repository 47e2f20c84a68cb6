"""DBSCAN on the sparse k-reciprocal Jaccard distance (or on the cosine distance).

The per-epoch clustering of Cluster-Contrast (Dai et al., ACCV 2022) and of every
USL-VI-ReID peer built on it (ADCA, PGM, MBCCM, SALCR, ...): ``DBSCAN(eps,
min_samples=4, metric="precomputed")`` on the Jaccard distance of
:func:`uvireid.clustering.jaccard.jaccard_distance` with k1 = 30, k2 = 6; eps = 0.6 on
SYSU-MM01 and 0.3 on RegDB (``shared/notes/peers.md`` Sec. 0.2).

The distance is sparse (only pairs with ``J <= eps`` are stored; every other pair has
``J > eps`` and cannot be a DBSCAN neighbour), so memory is O(N k) instead of the
reference's three dense N x N arrays, and the partition is the reference's (DBSCAN of
scikit-learn on a sparse precomputed graph, explicit zero distances kept).

The cosine metric's graph holds every pair within ``eps`` instead: up to all N^2 pairs
where the features' cosines mostly exceed 1 - eps (non-negative features, say). It stops
with the memory it would need, projected from its first block, when that cannot fit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from uvireid.associations.checks import as_features, resolve_device
from uvireid.clustering.jaccard import fit_without_flat_rows, jaccard_distance
from uvireid.errors import ConfigError
from uvireid.registry import CLUSTERERS

__all__ = ["DBSCANClusterer", "dbscan_sparse", "cosine_radius_graph", "METRICS"]

logger = logging.getLogger(__name__)

METRICS = ("jaccard", "cosine")


def dbscan_sparse(dist: sp.spmatrix, eps: float, min_samples: int) -> np.ndarray:
    """scikit-learn DBSCAN on a sparse precomputed distance graph.

    Args:
        dist: (N, N) sparse distances; absent pairs are "farther than eps". Stored zeros
            are distances of 0 and are kept.
        eps: neighbourhood radius (a stored pair with ``d <= eps`` is a neighbour).
        min_samples: points in a neighbourhood (self included) for a core point.

    Returns:
        (N,) int64 labels, ``-1`` for noise, clusters numbered by their first core point.
        A point without any stored pair within ``eps`` (its own included) is no
        neighbour of itself, as in the dense reference: noise unless a core point lists
        it (scikit-learn reads an absent diagonal as 0 and made it a one-point cluster at
        ``min_samples = 1``; it is given an explicit distance above ``eps``: audits NE, NJ).
    """
    from sklearn.cluster import DBSCAN

    n = dist.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # in the distances' own dtype (float32 for the Jaccard graph): the reference compares
    # its dense float32 matrix with eps in float32, so a pair at exactly float32(eps)
    # (0.6000000238 for 0.6) is a neighbour; in float64 it was not
    graph = sp.csr_matrix(dist)
    if graph.dtype not in (np.float32, np.float64):
        graph = graph.astype(np.float64)
    rows = np.repeat(np.arange(n), np.diff(graph.indptr))
    near = np.zeros(n, dtype=bool)
    near[rows[graph.data <= eps]] = True
    if not near.all():  # a row without a pair within eps: its own distance is > eps too
        far = np.flatnonzero(~near)
        coo = graph.tocoo()
        graph = sp.csr_matrix(
            (
                np.concatenate([coo.data, np.full(len(far), 2.0 * eps + 1.0, graph.dtype)]),
                (np.concatenate([coo.row, far]), np.concatenate([coo.col, far])),
            ),
            shape=(n, n),
        )
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph)
    return labels.astype(np.int64)


#: host bytes a pair of the cosine graph takes at its peak: int64 row and column and a
#: float32 value as collected, the CSR copy, and sklearn DBSCAN's neighbourhood arrays
_BYTES_PER_PAIR = 60


def cosine_radius_graph(
    feats: torch.Tensor, eps: float, *, block_bytes: int = 256 * 2**20
) -> sp.csr_matrix:
    """Every pair with cosine distance ``1 - cos(x_i, x_j) <= eps``, exactly (blocked).

    Args:
        feats: (N, d) float tensor on any device (normalised here).
        eps: radius.

    Returns:
        (N, N) CSR float32 cosine distances (clamped at 0), diagonal included.

    Raises:
        ConfigError: the graph would not fit in host memory. It holds every pair within
            ``eps``, up to all N^2 of them (features whose cosines mostly exceed 1 - eps:
            3.35 GiB at 8k images, audit Y); projected from the pairs of the blocks done
            so far (the first block is enough), before the rest is collected.
    """
    from uvireid.rerank.inputs import ensure_fits

    x = torch.nn.functional.normalize(feats.float(), dim=1)
    n = x.shape[0]
    rows_per = max(1, block_bytes // max(1, 4 * n))
    rs, cs, ds = [], [], []
    pairs = 0
    for s in range(0, n, rows_per):
        e = min(n, s + rows_per)
        d = torch.clamp(1.0 - x[s:e] @ x.T, min=0.0)
        d[torch.arange(e - s), torch.arange(s, e)] = 0.0
        r, c = (d <= eps).nonzero(as_tuple=True)
        pairs += int(r.numel())
        ensure_fits(
            _BYTES_PER_PAIR * pairs * n / e,
            torch.device("cpu"),
            f"DBSCAN's cosine graph of {n} images at eps {eps} (about {pairs * n // e:,} "
            f"pairs within eps)",
            "lower eps, or use metric: jaccard (its graph keeps k neighbours per image)",
        )
        rs.append((r + s).cpu())
        cs.append(c.cpu())
        ds.append(d[r, c].cpu())
    rows = torch.cat(rs).numpy()
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return sp.csr_matrix((torch.cat(ds).numpy(), torch.cat(cs).numpy(), indptr), shape=(n, n))


@CLUSTERERS.register("dbscan")
class DBSCANClusterer:
    """DBSCAN on the sparse k-reciprocal Jaccard distance (Cluster-Contrast, ACCV 2022).

    Args:
        eps: DBSCAN radius (0.6 SYSU-MM01, 0.3 RegDB in the peers' scripts). Must be
            < 1 for the Jaccard metric (1 means "no shared neighbour").
        min_samples: DBSCAN's min_samples (4), self included.
        k1: Jaccard neighbour-list length (30); clamped to N.
        k2: Jaccard query-expansion width (6); clamped to k1.
        metric: ``"jaccard"`` (the peers' distance) or ``"cosine"`` (``1 - cos`` between
            features, all pairs within eps, exact).
        knn_backend: ``"auto"``, ``"faiss"`` or ``"torch"`` for the kNN search.
        device: where the distance is computed (default: the features' device); DBSCAN
            itself runs on the CPU on the sparse graph.

    ``fit_predict(features[N, d]) -> labels[N]`` int64 numpy, ``-1`` = outlier. After a
    call, ``labels_``, ``num_clusters_`` and ``timings_`` (seconds of ``knn``,
    ``jaccard``/``distance`` and ``dbscan``) describe it.
    """

    def __init__(
        self,
        eps: float = 0.6,
        min_samples: int = 4,
        k1: int = 30,
        k2: int = 6,
        metric: str = "jaccard",
        knn_backend: str = "auto",
        device: str | None = None,
    ):
        self.eps = eps
        self.min_samples = min_samples
        self.k1 = k1
        self.k2 = k2
        self.metric = metric
        self.knn_backend = knn_backend
        self.device = device

    def _check_params(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(
                f"dbscan: unknown metric '{self.metric}'; use one of {', '.join(METRICS)}"
            )
        from uvireid.rerank.inputs import check_k, check_positive

        check_positive(self.eps, "eps", "dbscan")
        # Jaccard distances lie in [0, 1], cosine ones in [0, 2]
        top = 1 if self.metric == "jaccard" else 2
        if not self.eps < top:
            raise ConfigError(
                f"dbscan: eps={self.eps} >= {top} makes every pair of points neighbours under "
                f"the {self.metric} distance (at most {top}); use eps < {top} (Jaccard: 0.6 "
                f"SYSU, 0.3 RegDB)"
            )
        check_k(self.min_samples, "min_samples", "dbscan")
        check_k(self.k1, "k1", "dbscan")
        check_k(self.k2, "k2", "dbscan")
        from uvireid.clustering.knn import check_backend

        check_backend(self.knn_backend, "dbscan: knn_backend")  # every metric; jaccard's

    def distances(self, features: Any) -> sp.csr_matrix:
        """The sparse distance graph DBSCAN runs on (pairs with distance <= eps)."""
        self._check_params()
        x = as_features(features, "dbscan")
        dev = resolve_device(self.device, x)
        timings: dict[str, float] = {}
        if self.metric == "jaccard":
            dist = jaccard_distance(
                x,
                self.k1,
                self.k2,
                max_distance=self.eps,
                knn_backend=self.knn_backend,
                device=dev,
                timings=timings,
            )
        else:
            t0 = time.perf_counter()
            dist = cosine_radius_graph(x.to(dev), self.eps)
            timings["distance"] = time.perf_counter() - t0
        self.timings_ = timings
        return dist

    def fit_predict(self, features: Any) -> np.ndarray:
        """(N,) int64 cluster labels of ``features`` (N, d); ``-1`` marks outliers.

        The ``jaccard`` metric assumes L2-normalised features (warned otherwise); rows of
        norm 0 are outliers (:func:`~uvireid.clustering.jaccard.directional_rows`)."""
        self._check_params()
        x = as_features(features, "dbscan")
        labels = fit_without_flat_rows(self, x, "dbscan")
        if labels is not None:
            return labels
        dist = self.distances(x)
        t0 = time.perf_counter()
        labels = dbscan_sparse(dist, float(self.eps), int(self.min_samples))
        self.timings_["dbscan"] = time.perf_counter() - t0
        self.labels_ = labels
        self.num_clusters_ = int(labels.max()) + 1 if len(labels) else 0
        n_out = int((labels < 0).sum())
        logger.info(
            "dbscan(%s, eps=%g): %d clusters, %d/%d outliers",
            self.metric,
            self.eps,
            self.num_clusters_,
            n_out,
            len(labels),
        )
        if self.num_clusters_ == 0 and len(labels):
            logger.warning(
                "dbscan(%s, eps=%g): every one of the %d points is an outlier; raise eps or "
                "lower min_samples",
                self.metric,
                self.eps,
                len(labels),
            )
        return labels

    def __repr__(self) -> str:
        return (
            f"DBSCANClusterer(eps={self.eps}, min_samples={self.min_samples}, k1={self.k1}, "
            f"k2={self.k2}, metric={self.metric!r})"
        )
