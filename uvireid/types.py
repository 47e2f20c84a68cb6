"""Plain data passed between parts (DESIGN.md "Contracts").

Shapes are documented on each field; modalities are coded ``VISIBLE = 0`` and
``INFRARED = 1`` everywhere (records, features files, feature banks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["INFRARED", "MODALITY_NAMES", "VISIBLE", "CrossLabels", "FeatureBank", "ImageRecord"]

VISIBLE = 0
INFRARED = 1
MODALITY_NAMES = {VISIBLE: "visible", INFRARED: "infrared"}


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset, read straight from the raw release.

    Attributes:
        path: absolute path of the image file.
        pid: identity label as in the release (``-1`` when unknown, e.g. unlabelled crops).
        cam: camera number as in the release (SYSU-MM01: 1..6).
        modality: :data:`VISIBLE` or :data:`INFRARED`.
    """

    path: str
    pid: int
    cam: int
    modality: int


@dataclass(frozen=True)
class FeatureBank:
    """Features of a set of images, with what is known about each.

    Attributes:
        feats: (N, d) float tensor or array.
        modality: (N,) int, :data:`VISIBLE` or :data:`INFRARED`.
        cams: (N,) int camera numbers.
        pids: (N,) int ground-truth identities, or ``None`` when unknown (unsupervised).
        paths: optional list of N image paths.
    """

    feats: object
    modality: np.ndarray
    cams: np.ndarray
    pids: np.ndarray | None = None
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.modality)


@dataclass(frozen=True)
class CrossLabels:
    """Pseudo-labels of every instance in both label spaces after association.

    ``labels_in_v[i]`` is instance i's label in the visible clusters' label space and
    ``labels_in_r[i]`` in the infrared one (``-1`` where it has none). Instances are
    ordered visible first, then infrared, as passed to ``associate``.

    Attributes:
        labels_in_v: (Nv + Nr,) int64.
        labels_in_r: (Nv + Nr,) int64.
        matches: (M, 2) int64 pairs (visible cluster, infrared cluster) the associator used.
        unified: True when both spaces were merged into one: then
            ``labels_in_v == labels_in_r`` wherever both are defined. The built-in
            associators (OTLA dual, PGM, MBCCM) keep the two spaces apart (False).
        info: free-form diagnostics (counts, policies applied) for logging.
        num_visible: Nv, the number of visible instances (the first Nv entries); -1 when
            the producer did not say.
        num_clusters_v: size of the visible label space (largest visible label + 1; 0:
            derived from the labels, see :meth:`space_sizes`).
        num_clusters_r: size of the infrared label space (likewise).

    A modality without any cluster (all its instances outliers) gives no cross-modal
    link: :attr:`has_cross_links` is False, ``matches`` is empty and every cross label is
    ``-1``; an engine then trains that epoch on intra-modality labels only.
    """

    labels_in_v: np.ndarray
    labels_in_r: np.ndarray
    matches: np.ndarray
    unified: bool = False
    info: dict = field(default_factory=dict)
    num_visible: int = -1
    num_clusters_v: int = 0
    num_clusters_r: int = 0

    @property
    def has_cross_links(self) -> bool:
        """True when at least one (visible cluster, infrared cluster) pair is matched."""
        return len(self.matches) > 0

    def unify(self) -> CrossLabels:
        """One label space: every connected group of matched clusters becomes one label.

        Clusters are the nodes of a bipartite graph whose edges are ``matches``; each
        connected component (a cluster matched to nothing is one on its own) that holds
        an instance gets one label, numbered by the component's smallest visible
        cluster, then infrared cluster (cluster ids no instance carries make no label, so
        no empty memory row). Every instance takes the label of its own cluster (its visible label for
        the first ``num_visible`` instances, its infrared one after), in both fields;
        outliers stay -1. PGM's one-to-one matches give pairs, MBCCM's many-to-many mask
        can merge several clusters of each modality.
        """
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        if self.num_visible < 0:
            raise ValueError("unify() needs num_visible (the number of visible instances)")
        (kv, kr), nv = self.space_sizes(), self.num_visible
        n = kv + kr
        m = np.asarray(self.matches, dtype=np.int64).reshape(-1, 2)
        graph = coo_matrix((np.ones(len(m)), (m[:, 0], kv + m[:, 1])), shape=(n, n))
        n_all, comp = connected_components(graph, directed=False)
        own = np.concatenate([self.labels_in_v[:nv], self.labels_in_r[nv:]])  # own cluster
        node = own + np.where(np.arange(len(own)) >= nv, kv, 0)  # infrared nodes after kv
        of = comp[node[own >= 0]]  # each clustered instance's component
        # the components that hold an instance (cluster ids no instance carries, e.g. gaps
        # in a clusterer's numbering, would each be a label with an empty memory row),
        # numbered in order of their first node (visible clusters first)
        used = np.unique(of)
        first = np.full(n_all, n, dtype=np.int64)
        np.minimum.at(first, comp, np.arange(n))
        rank = np.full(n_all, -1, dtype=np.int64)
        rank[used[np.argsort(first[used], kind="stable")]] = np.arange(len(used))
        n_comp = len(used)
        labels = np.full(len(own), -1, dtype=np.int64)
        labels[own >= 0] = rank[of]
        return CrossLabels(
            labels_in_v=labels,
            labels_in_r=labels.copy(),
            matches=self.matches,
            unified=True,
            info={**self.info, "unified_labels": int(n_comp)},
            num_visible=nv,
            num_clusters_v=int(n_comp),
            num_clusters_r=int(n_comp),
        )

    def match_mask(self) -> np.ndarray:
        """(num_clusters_v, num_clusters_r) bool: True for every pair in ``matches``.

        MBCCM's many-to-many mask A (MM 2023, Sec. 3.2), transposed to visible-major.
        """
        m = self._match_pairs()
        mask = np.zeros(self.space_sizes(), dtype=bool)
        mask[m[:, 0], m[:, 1]] = True
        return mask

    def _match_pairs(self) -> np.ndarray:
        """``matches`` as (M, 2) int64; a negative cluster id is refused (numpy would read
        -1 as the last cluster: a silent wrong mask and link precision, audit OH)."""
        m = np.asarray(self.matches, dtype=np.int64).reshape(-1, 2)
        if m.size and int(m.min()) < 0:
            raise ValueError(
                f"CrossLabels.matches holds a negative cluster id ({int(m.min())}); matches "
                f"are (visible cluster, infrared cluster) pairs of ids >= 0"
            )
        return m

    def space_sizes(self) -> tuple[int, int]:
        """(visible, infrared) label-space sizes: ``num_clusters_v`` / ``num_clusters_r``,
        raised to cover every label and match (a producer that left them at 0 or
        understated them made :meth:`unify` merge clusters or fail inside scipy)."""
        m = self._match_pairs()

        def top(*arrays: np.ndarray) -> int:
            return max((int(a.max()) + 1 for a in arrays if a.size), default=0)

        kv = max(self.num_clusters_v, top(np.asarray(self.labels_in_v), m[:, 0]))
        kr = max(self.num_clusters_r, top(np.asarray(self.labels_in_r), m[:, 1]))
        return kv, kr
