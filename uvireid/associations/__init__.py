"""Cross-modality association of cluster labels (DESIGN.md "Associator").

Every associator, registered in ``ASSOCIATORS``, has one call:
``associate(feats_v, labels_v, feats_r, labels_r) -> CrossLabels`` (labels of every
instance in the visible and the infrared label space, -1 where none, plus the cluster-level
matches). Built in:

* ``otla_dual`` (:class:`~uvireid.associations.otla.OTLADual`): log-domain Sinkhorn label
  assignment in both directions (OTLA, ECCV 2022; SALCR's DAGL, Eq. 4);
* ``pgm`` (:class:`~uvireid.associations.pgm.PGM`): progressive Hungarian matching,
  total for any ratio of cluster counts (CVPR 2023);
* ``mbccm`` (:class:`~uvireid.associations.mbccm.MBCCM`): many-to-many bilateral
  matching (ACM MM 2023).

Each takes ``k_tr`` to refine the features with CMFP(tr) first
(:mod:`~uvireid.associations.refine`). Pseudo-label quality against ground truth:
:mod:`~uvireid.associations.quality`.
"""

from __future__ import annotations

from uvireid.associations import mbccm as mbccm
from uvireid.associations import otla as otla
from uvireid.associations import pgm as pgm
from uvireid.associations.mbccm import MBCCM
from uvireid.associations.otla import OTLADual
from uvireid.associations.pgm import PGM

__all__ = ["MBCCM", "OTLADual", "PGM"]
