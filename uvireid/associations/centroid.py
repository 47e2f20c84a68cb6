"""The shared skeleton of the associators that match cluster centroids (PGM, MBCCM).

Checks and compacts the inputs (:func:`~uvireid.associations.checks.prepare`), refines the
features with CMFP(tr) when ``k_tr`` is set, takes the L2-normalised centroid of every
cluster, lets the subclass match them (:meth:`CentroidAssociator.match`), and gives every
clustered instance its cluster's partner label in the other space.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from uvireid.associations.checks import build, cluster_means, empty_result, prepare
from uvireid.associations.refine import check_k_tr, cmfp_tr
from uvireid.types import CrossLabels

__all__ = ["CentroidAssociator"]


class CentroidAssociator:
    """Base class: ``associate`` around a subclass's :meth:`match` of cluster centroids.

    Args:
        k_tr: CMFP(tr) neighbours before the centroids are taken; None = no refinement.
        device: where to compute the centroids (default: the visible features' device).
    """

    #: registry name, used in messages and in ``CrossLabels.info``
    name = ""
    #: the method's name in ``repr``
    title = ""

    def __init__(self, k_tr: int | None = None, device: str | None = None):
        self.k_tr = k_tr
        self.device = device

    def __repr__(self) -> str:
        return f"{self.title}(k_tr={self.k_tr})"

    def _check_params(self) -> None:
        """Refuse a ``k_tr`` no input could use (also before a run starts: see
        :func:`uvireid.engine.runner.check_parts`)."""
        check_k_tr(self.k_tr, self.name)

    def match(
        self, cv: torch.Tensor, cr: torch.Tensor, info: dict
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Match (Kv, d) visible and (Kr, d) infrared unit centroids.

        Returns:
            ``v2r`` (Kv,) the primary infrared partner of each visible cluster, ``r2v``
            (Kr,) the visible partner of each infrared one, and ``pairs`` (M, 2) every
            matched (visible, infrared) pair, all in compact cluster indices; may add
            figures to ``info``.
        """
        raise NotImplementedError

    def associate(self, feats_v: Any, labels_v: Any, feats_r: Any, labels_r: Any) -> CrossLabels:
        """Cross labels of every instance (visible first, then infrared); see the class."""
        k_tr = check_k_tr(self.k_tr, self.name)
        v, r = prepare(feats_v, labels_v, feats_r, labels_r, self.name, self.device)
        info: dict = {"associator": self.name, "k_tr": k_tr}
        if v.k == 0 or r.k == 0:
            return empty_result(v, r, self.name, info)
        fv, fr = v.feats, r.feats
        if k_tr is not None:
            fv, fr = cmfp_tr(fv, fr, k_tr, keep_v=v.kept, keep_r=r.kept)
        cv = torch.nn.functional.normalize(cluster_means(fv, v.compact, v.k), dim=1)
        cr = torch.nn.functional.normalize(cluster_means(fr, r.compact, r.k), dim=1)
        v2r, r2v, pairs = self.match(cv, cr, info)
        r_of_v = np.full(v.n, -1, dtype=np.int64)
        v_of_r = np.full(r.n, -1, dtype=np.int64)
        r_of_v[v.kept] = r.ids[v2r[v.compact[v.kept]]]
        v_of_r[r.kept] = v.ids[r2v[r.compact[r.kept]]]
        pairs = np.stack([v.ids[pairs[:, 0]], r.ids[pairs[:, 1]]], 1)
        return build(v, r, r_of_v, v_of_r, pairs, info)
