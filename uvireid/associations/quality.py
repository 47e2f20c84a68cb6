"""Quality of cross-modality pseudo-labels against ground-truth identities.

Three views of one :class:`~uvireid.types.CrossLabels` (visible instances first):

* per modality: the clusterer's own labels, scored by
  :func:`uvireid.evaluation.quality.label_quality` (ARI, FMI, AMI, V-measure);
* cross-modality, as SALCR (IJCV 2025, Fig. 7) scores its association: every instance
  in the visible label space (``labels_in_v``: visible instances by their own label,
  infrared ones by their assigned visible label), and likewise in the infrared space,
  each scored with ``label_quality`` over all Nv + Nr instances;
* link precision, "the fraction of cross-modal links that join the same identity":
  a visible instance whose infrared-space label is ``c`` is linked to every infrared
  instance of cluster ``c`` (and an infrared instance to every visible instance of its
  visible-space label). ``link_precision_v2r`` / ``_r2v`` count those pairs per
  direction, ``link_precision`` both together, ``match_precision`` the pairs of
  instances joined by the cluster-level ``matches`` (for PGM/MBCCM the matching itself,
  weighted by pairs). Computed from contingency tables, never from an Nv x Nr matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from uvireid.errors import ProtocolError
from uvireid.evaluation.quality import label_quality
from uvireid.types import CrossLabels

__all__ = ["link_precision", "association_quality"]


def _table(labels: np.ndarray, gt: np.ndarray, n_labels: int, n_ids: int) -> np.ndarray:
    """(n_labels, n_ids) counts of (label, identity) over the instances with label >= 0."""
    keep = labels >= 0
    flat = labels[keep] * n_ids + gt[keep]
    return np.bincount(flat, minlength=n_labels * n_ids).reshape(n_labels, n_ids)


def _pairs(t_a: np.ndarray, t_b: np.ndarray) -> tuple[float, float]:
    """Same-identity and total pairs between two (label, identity) tables."""
    same = float((t_a * t_b).sum())
    total = float((t_a.sum(1) * t_b.sum(1)).sum())
    return same, total


def _num_visible(cross: CrossLabels, who: str) -> int:
    """``cross.num_visible``, checked: set, and at most the number of instances (a larger
    one gave NaN links, and an association scored without its infrared view; audit MB)."""
    nv, n = cross.num_visible, len(cross.labels_in_v)
    if nv < 0:
        raise ProtocolError(
            f"{who} needs CrossLabels.num_visible (the number of visible "
            "instances); build CrossLabels with it"
        )
    if nv > n:
        raise ProtocolError(
            f"{who}: CrossLabels.num_visible is {nv} but it labels {n} instances (visible "
            "first, then infrared); give the number of visible instances"
        )
    return nv


def link_precision(cross: CrossLabels, gt: Any) -> dict[str, float]:
    """Fraction of cross-modal instance links that join the same identity (module doc).

    Args:
        cross: an associator's output (``num_visible`` must be set).
        gt: (Nv + Nr,) ground-truth identities in the same order.

    Returns:
        ``link_precision_v2r``, ``link_precision_r2v``, ``link_precision``,
        ``match_precision`` (NaN where there is no link) and the link counts
        ``num_links_v2r``, ``num_links_r2v``, ``num_match_links``.
    """
    n = len(cross.labels_in_v)
    nv = _num_visible(cross, "link_precision")
    g = np.asarray(gt)
    if g.shape != (n,):
        raise ProtocolError(
            f"link_precision: gt has shape {g.shape}, expected ({n},) (visible first, then "
            "infrared, as passed to associate)"
        )
    if len(cross.labels_in_r) != n:  # a bare IndexError below (audit OH)
        raise ProtocolError(
            f"link_precision: labels_in_v has {n} entries and labels_in_r "
            f"{len(cross.labels_in_r)}; both label every instance (visible first)"
        )
    _, g = np.unique(g, return_inverse=True)
    n_ids = int(g.max()) + 1 if n else 1
    lv, lr = cross.labels_in_v, cross.labels_in_r
    # the spaces as CrossLabels sizes them, matches included: a match to a cluster no
    # instance carries was a bare IndexError (audit MB)
    try:  # CrossLabels refuses a negative match id (audit OH)
        kv, kr = (max(size, 1) for size in cross.space_sizes())
    except ValueError as exc:
        raise ProtocolError(f"link_precision: {exc}") from None
    gv, gr = g[:nv], g[nv:]
    own_v = _table(lv[:nv], gv, kv, n_ids)  # visible instances by their own label
    own_r = _table(lr[nv:], gr, kr, n_ids)
    v_to_r = _table(lr[:nv], gv, kr, n_ids)  # visible instances by their infrared label
    r_to_v = _table(lv[nv:], gr, kv, n_ids)
    s1, t1 = _pairs(v_to_r, own_r)
    s2, t2 = _pairs(r_to_v, own_v)
    m = cross.matches
    if len(m):
        sm = float((own_v[m[:, 0]] * own_r[m[:, 1]]).sum())
        tm = float((own_v[m[:, 0]].sum(1) * own_r[m[:, 1]].sum(1)).sum())
    else:
        sm = tm = 0.0

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    return {
        "link_precision_v2r": ratio(s1, t1),
        "link_precision_r2v": ratio(s2, t2),
        "link_precision": ratio(s1 + s2, t1 + t2),
        "match_precision": ratio(sm, tm),
        "num_links_v2r": t1,
        "num_links_r2v": t2,
        "num_match_links": tm,
    }


def association_quality(cross: CrossLabels, gt: Any) -> dict[str, Any]:
    """Per-modality, cross-modality and link quality of one association (module doc).

    Args:
        cross: an associator's output; gt: (Nv + Nr,) identities, visible first.

    Returns:
        ``{"visible": {...}, "infrared": {...}, "cross_v": {...}, "cross_r": {...},
        "links": {...}}``: the first four from
        :func:`uvireid.evaluation.quality.label_quality` (outliers as singletons), the
        last from :func:`link_precision`.
    """
    nv = _num_visible(cross, "association_quality")
    g = np.asarray(gt)
    lv, lr = cross.labels_in_v, cross.labels_in_r
    out: dict[str, Any] = {}
    if nv > 0:
        out["visible"] = label_quality(lv[:nv], g[:nv])
    if len(g) - nv > 0:
        out["infrared"] = label_quality(lr[nv:], g[nv:])
    out["cross_v"] = label_quality(lv, g)
    out["cross_r"] = label_quality(lr, g)
    out["links"] = link_precision(cross, g)
    return out
