"""Losses and memories (DESIGN.md "Loss"), registered in ``LOSSES``.

Every loss is an ``nn.Module`` with ``reset(EpochContext)``, ``forward(StepOutputs,
StepTargets) -> scalar`` and ``update(StepOutputs, StepTargets)``
(:mod:`uvireid.losses.contract`). Built in:

* ``cluster_contrast``: DCL's intra-modality cluster contrast (SALCR Eq. 1-3);
* ``dual_cluster_contrast``: SALCR's DAGL, both memories with dual labels (Eq. 5-8);
* ``part_contrast``: SALCR's FGSAL, four part-cluster memories per part (Eq. 12-15);
* ``instance_neighbour``: SALCR's GPCR, global and part instance memories (Eq. 16-27);
* ``alternate_cross_contrast``: PGM's DCL + alternate cross-memory term (ACCL);
* ``modality_agnostic``: MBCCM's modality-agnostic memories + symmetric-KL consistency;
* ``triplet`` / ``cross_triplet``: batch-hard triplet on the pre-BN pooled features with
  the pseudo-labels, within each modality / across them (Hermans et al., 2017).
"""

from __future__ import annotations

from uvireid.losses import cluster_contrast as cluster_contrast
from uvireid.losses import cross_memory as cross_memory
from uvireid.losses import instance as instance
from uvireid.losses import part as part
from uvireid.losses import triplet as triplet
from uvireid.losses.cluster_contrast import (
    ClusterContrastLoss,
    DualClusterContrastLoss,
    cluster_nce,
)
from uvireid.losses.contract import EpochContext, EpochLabels, StepOutputs, StepTargets
from uvireid.losses.cross_memory import (
    AlternateCrossContrastLoss,
    ModalityAgnosticLoss,
    symmetric_kl,
)
from uvireid.losses.instance import InstanceNeighbourLoss
from uvireid.losses.memory import ClusterMemory, centroids, momentum_update
from uvireid.losses.part import PartContrastLoss
from uvireid.losses.triplet import CrossTripletLoss, TripletLoss

__all__ = [
    "AlternateCrossContrastLoss",
    "ModalityAgnosticLoss",
    "symmetric_kl",
    "ClusterContrastLoss",
    "ClusterMemory",
    "CrossTripletLoss",
    "DualClusterContrastLoss",
    "EpochContext",
    "EpochLabels",
    "InstanceNeighbourLoss",
    "PartContrastLoss",
    "StepOutputs",
    "StepTargets",
    "TripletLoss",
    "centroids",
    "cluster_nce",
    "momentum_update",
]
