"""HDBSCAN (Campello, Moulavi & Sander, PAKDD 2013) with the ``hdbscan`` package.

Two inputs:

* ``metric="jaccard"`` (default): the sparse k-reciprocal Jaccard distance of
  :func:`uvireid.clustering.jaccard.jaccard_distance`, the distance the peers' DBSCAN
  uses. A pair that shares no neighbour has ``J = 1`` and is not stored. HDBSCAN's
  hierarchy is built here as the package builds it for a dense precomputed matrix
  (``hdbscan_._hdbscan_generic``): core distance = the ``min_samples``-th smallest entry
  of a row, self included (absent pairs count as 1), mutual reachability
  ``max(core_i, core_j, J_ij)``, Prim's minimum spanning tree with the package's tie
  rules, then the package's own single linkage, condensed tree and cluster selection
  (``label``, ``_tree_to_labels``). The mutual reachability matrix is never held: Prim's
  expands one row at a time from the sparse graph. The labels therefore equal
  ``hdbscan.HDBSCAN(metric="precomputed")`` on the dense Jaccard matrix, in O(N^2) time
  (like the kNN) and O(N + nnz) memory. (The package's own sparse path refuses graphs
  with several components and loops in Python over the edges.)
* ``metric="euclidean"``: the features go to ``hdbscan.HDBSCAN`` as they are (its
  Boruvka KD-tree; slow in 2048 dimensions).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from uvireid.associations.checks import as_features, resolve_device
from uvireid.clustering.jaccard import fit_without_flat_rows, jaccard_distance
from uvireid.errors import ConfigError
from uvireid.registry import CLUSTERERS

__all__ = ["HDBSCANClusterer", "hdbscan_sparse", "METRICS"]

logger = logging.getLogger(__name__)

METRICS = ("jaccard", "euclidean")


def _core_distances(dist: sp.csr_matrix, min_samples: int, missing: float) -> np.ndarray:
    """(N,) the ``min_samples``-th smallest distance of each row (0-based, self included),
    absent pairs counting as ``missing``: ``np.partition(D, m, axis=0)[m]`` of the
    package's dense path, in O(nnz log nnz)."""
    n = dist.shape[0]
    counts = np.diff(dist.indptr)
    rows = np.repeat(np.arange(n), counts)
    order = np.lexsort((dist.data, rows))  # by row, then by distance
    out = np.full(n, float(missing))
    has = counts > min_samples
    out[has] = dist.data[order[dist.indptr[:-1][has] + min_samples]]
    return out


def _prim_mst(graph: sp.csr_matrix, core: np.ndarray, missing: float) -> np.ndarray:
    """(N-1, 3) ``[source, new, weight]`` MST edges of the mutual reachability graph.

    Prim's algorithm from node 0 with the tie rules of ``hdbscan``'s ``mst_linkage_core``
    (strict ``<`` updates, first index among equal candidates), on the dense mutual
    reachability matrix implied by the sparse one: ``max(core_i, core_j, d_ij)``, and
    ``missing`` for an absent pair. One O(N) vectorised step per node: O(N^2) time,
    O(N + nnz) memory.
    """
    n = graph.shape[0]
    indptr, indices, data = graph.indptr, graph.indices, graph.data
    result = np.zeros((n - 1, 3))
    in_tree = np.zeros(n, dtype=bool)
    best = np.full(n, np.finfo(np.float64).max)  # current_distances
    source = np.zeros(n, dtype=np.intp)  # current_sources
    current = 0
    for i in range(1, n):
        in_tree[current] = True
        best[current] = np.inf  # never picked again
        row = np.full(n, missing)
        lo, hi = indptr[current], indptr[current + 1]
        cols = indices[lo:hi]
        row[cols] = np.maximum(np.maximum(core[current], core[cols]), data[lo:hi])
        upd = (row < best) & ~in_tree
        best[upd] = row[upd]
        source[upd] = current
        new = int(np.argmin(best))
        result[i - 1] = (source[new], new, best[new])
        current = new
    return result


def _require_hdbscan() -> None:
    """A clear error where the ``hdbscan`` package cannot be imported at all."""
    try:
        import hdbscan  # noqa: F401
    except ImportError:
        raise ConfigError(
            "hdbscan: the hdbscan package is not installed (it is one of uvireid's "
            "requirements); pip install hdbscan, or use the dbscan clusterer"
        ) from None


def hdbscan_sparse(
    dist: sp.spmatrix,
    min_cluster_size: int = 4,
    min_samples: int | None = None,
    *,
    cluster_selection_method: str = "eom",
    allow_single_cluster: bool = False,
    cluster_selection_epsilon: float = 0.0,
    missing: float = 1.0,
) -> np.ndarray:
    """HDBSCAN labels from a sparse symmetric distance graph (absent pair = ``missing``).

    Args:
        dist: (N, N) sparse symmetric distances, diagonal stored (zeros kept).
        min_cluster_size, min_samples, cluster_selection_method, allow_single_cluster,
            cluster_selection_epsilon: as ``hdbscan.HDBSCAN``.
        missing: distance of an absent pair (1 for the Jaccard distance); must be >= every
            stored distance.

    Returns:
        (N,) int64 labels, ``-1`` = noise.
    """
    try:  # the package's own tree code (stable since hdbscan 0.8.x; private names)
        from hdbscan._hdbscan_linkage import label
        from hdbscan.hdbscan_ import _tree_to_labels
    except ImportError as exc:
        _require_hdbscan()
        raise ConfigError(
            f"hdbscan: the installed hdbscan package lacks the tree functions uvireid uses "
            f"({exc}); install hdbscan>=0.8.33 (pip install -U hdbscan), or use "
            "metric='euclidean'"
        ) from None

    n = dist.shape[0]
    if n <= 1:
        return np.full(n, -1, dtype=np.int64)
    min_samples = min_cluster_size if min_samples is None else int(min_samples)
    min_samples = max(1, min(n - 1, min_samples))  # the package's clamping
    graph = sp.csr_matrix(dist, dtype=np.float64)
    graph.sort_indices()
    core = _core_distances(graph, min_samples, missing)
    tree = _prim_mst(graph, core, float(missing))
    tree = tree[np.argsort(tree.T[2]), :]  # the package's (unstable) order of equal weights
    single_linkage = label(tree)
    labels = _tree_to_labels(
        None,
        single_linkage,
        min_cluster_size,
        cluster_selection_method,
        allow_single_cluster,
        False,
        cluster_selection_epsilon,
    )[0]
    return np.asarray(labels, dtype=np.int64)


@CLUSTERERS.register("hdbscan")
class HDBSCANClusterer:
    """HDBSCAN on the sparse k-reciprocal Jaccard distance (or on features), ``hdbscan``.

    Args:
        min_cluster_size: smallest cluster (4, like DBSCAN's min_samples of the peers).
        min_samples: core-distance neighbour count (default: ``min_cluster_size``).
        metric: ``"jaccard"`` (sparse precomputed) or ``"euclidean"`` (features).
        k1, k2: Jaccard parameters (30, 6); clamped to N.
        cluster_selection_method: ``"eom"`` or ``"leaf"``.
        allow_single_cluster: let the whole set be one cluster.
        cluster_selection_epsilon: merge clusters closer than this (0 = off).
        knn_backend, device: kNN backend and device of the Jaccard distance.

    ``fit_predict(features[N, d]) -> labels[N]`` int64 numpy, ``-1`` = outlier.
    """

    def __init__(
        self,
        min_cluster_size: int = 4,
        min_samples: int | None = None,
        metric: str = "jaccard",
        k1: int = 30,
        k2: int = 6,
        cluster_selection_method: str = "eom",
        allow_single_cluster: bool = False,
        cluster_selection_epsilon: float = 0.0,
        knn_backend: str = "auto",
        device: str | None = None,
    ):
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.metric = metric
        self.k1 = k1
        self.k2 = k2
        self.cluster_selection_method = cluster_selection_method
        self.allow_single_cluster = allow_single_cluster
        self.cluster_selection_epsilon = cluster_selection_epsilon
        self.knn_backend = knn_backend
        self.device = device

    def _check_params(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(
                f"hdbscan: unknown metric '{self.metric}'; use one of {', '.join(METRICS)}"
            )
        from uvireid.rerank.inputs import check_k, check_real

        check_k(self.min_cluster_size, "min_cluster_size", "hdbscan", 2)
        if self.min_samples is not None:
            check_k(self.min_samples, "min_samples", "hdbscan")
        check_k(self.k1, "k1", "hdbscan")
        check_k(self.k2, "k2", "hdbscan")
        from uvireid.clustering.knn import check_backend

        check_backend(self.knn_backend, "hdbscan: knn_backend")
        check_real(self.cluster_selection_epsilon, "cluster_selection_epsilon", "hdbscan", 0.0)
        if self.cluster_selection_method not in ("eom", "leaf"):
            raise ConfigError(
                f"hdbscan: cluster_selection_method must be 'eom' or 'leaf', got "
                f"{self.cluster_selection_method!r}"
            )
        if not isinstance(self.allow_single_cluster, bool):
            raise ConfigError(
                f"hdbscan: allow_single_cluster must be true or false, got "
                f"{self.allow_single_cluster!r}"
            )

    def fit_predict(self, features: Any) -> np.ndarray:
        """(N,) int64 cluster labels of ``features`` (N, d); ``-1`` marks outliers.

        The ``jaccard`` metric assumes L2-normalised features (warned otherwise); with it,
        rows of norm 0 are outliers (:func:`~uvireid.clustering.jaccard.directional_rows`)."""
        self._check_params()
        x = as_features(features, "hdbscan")
        labels = fit_without_flat_rows(self, x, "hdbscan")
        if labels is not None:
            return labels
        dev = resolve_device(self.device, x)  # checked for every metric
        if self.metric != "jaccard" and dev.type != "cpu":
            logger.warning(
                "hdbscan: metric %r runs in the hdbscan package on the CPU; device %s is "
                "used by the jaccard metric only",
                self.metric,
                dev,
            )
        timings: dict[str, float] = {}
        if self.metric == "jaccard":
            dist = jaccard_distance(
                x,
                self.k1,
                self.k2,
                knn_backend=self.knn_backend,
                device=dev,
                timings=timings,
            )
            t0 = time.perf_counter()
            labels = hdbscan_sparse(
                dist,
                int(self.min_cluster_size),
                self.min_samples,
                cluster_selection_method=self.cluster_selection_method,
                allow_single_cluster=self.allow_single_cluster,
                cluster_selection_epsilon=self.cluster_selection_epsilon,
            )
        else:
            _require_hdbscan()
            import hdbscan

            t0 = time.perf_counter()
            if x.shape[0] <= 1:
                labels = np.full(x.shape[0], -1, dtype=np.int64)
            else:
                labels = hdbscan.HDBSCAN(
                    min_cluster_size=int(self.min_cluster_size),
                    min_samples=self.min_samples,
                    cluster_selection_method=self.cluster_selection_method,
                    allow_single_cluster=self.allow_single_cluster,
                    cluster_selection_epsilon=self.cluster_selection_epsilon,
                ).fit_predict(x.detach().cpu().double().numpy())
        timings["hdbscan"] = time.perf_counter() - t0
        labels = np.asarray(labels, dtype=np.int64)
        self.timings_ = timings
        self.labels_ = labels
        self.num_clusters_ = int(labels.max()) + 1 if len(labels) else 0
        logger.info(
            "hdbscan(%s): %d clusters, %d/%d outliers",
            self.metric,
            self.num_clusters_,
            int((labels < 0).sum()),
            len(labels),
        )
        if self.num_clusters_ == 0 and len(labels):
            logger.warning(
                "hdbscan(%s): every one of the %d points is an outlier; lower "
                "min_cluster_size (now %d) or min_samples%s",
                self.metric,
                len(labels),
                int(self.min_cluster_size),
                ""
                if self.allow_single_cluster
                else ", or set allow_single_cluster: true (HDBSCAN never returns the "
                "whole set as its one cluster otherwise: points that form a single group "
                "are all outliers)",
            )
        return labels

    def __repr__(self) -> str:
        return (
            f"HDBSCANClusterer(min_cluster_size={self.min_cluster_size}, "
            f"min_samples={self.min_samples}, metric={self.metric!r})"
        )
