"""Cluster-contrast losses: DCL's intra-modality term and SALCR's dual (DAGL) term.

Sources: Cluster-Contrast (Dai et al., ACCV 2022); DCL as in ADCA/PGM stage 1
(``shared/notes/peers.md`` Sec. 0.3-0.4); SALCR (IJCV 2025) Sec. 3.3, Eq. 1-3 and 5-8
(``shared/notes/salcr_reference.md`` Sec. 5.2-5.4).

The InfoNCE against a memory of cluster prototypes (Eq. 1-2)::

    L(x, y; M) = -log( exp(<x^, M[y]> / tau) / sum_k exp(<x^, M[k]> / tau) )

with x^ = normalize(x), tau = 0.05, averaged over the rows that have a label (y >= 0).

* ``cluster_contrast`` (DCL, Eq. 1-3, the paper's baseline "B"): each modality against
  its own memory, with its own labels; the channel-augmented view goes into the visible
  memory with the visible labels::

      L = L(f^v, ỹ^v; M^v) + L(f^a, ỹ^v; M^v) + L(f^r, ỹ^r; M^r)

* ``dual_cluster_contrast`` (DAGL, Eq. 5-8): every image against BOTH memories, with
  its label in each space (its own label in its modality's space, the associator's in
  the other)::

      z = [f^v; f^a; f^r]
      L = L(z, [ỹ^v; ỹ^v; ŷ^v]; M^v) + L(z, [ŷ^r; ŷ^r; ỹ^r]; M^r)

  As in the official code, intra and cross rows are averaged together per memory and the
  CA view takes part (the paper's Eq. 8 writes L_intra + L_vcm + L_rcm). Rows without a
  cross label (no link this epoch) drop out, so an epoch whose association linked
  nothing trains on the intra-modality terms alone.

Both memories are re-initialised each epoch (``reset``) from the clusterer's partition
and updated after each step (``update``) with every labelled row.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from uvireid.errors import ConfigError
from uvireid.losses.contract import EpochContext, StepOutputs, StepTargets
from uvireid.losses.memory import ClusterMemory, check_loss_settings
from uvireid.registry import LOSSES

__all__ = ["cluster_nce", "ClusterContrastLoss", "DualClusterContrastLoss"]

logger = logging.getLogger(__name__)


def cluster_nce(
    x: torch.Tensor,
    memory: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    normalized: bool = False,
) -> torch.Tensor:
    """Mean over rows with ``labels >= 0`` of ``CE(normalize(x) M^T / tau, y)`` (Eq. 1-2).

    Args:
        x: (B, d) features (normalised here), or (B, P, d) part features; memory: (K, d)
            prototypes, or (P, K, d) one set per part (no gradient); labels: (B,) long,
            -1 = row left out (of every part); temperature: tau.
        normalized: ``x`` is already ``normalize(x)`` (a loss that scores the same rows
            against several memories normalises them once: on a GPU each normalisation
            is a dozen kernel launches with its backward).

    Returns:
        0-dim tensor, with parts the mean over the parts (one batched product for all of
        them); 0 (with a gradient path) when no row has a label.

    Raises:
        ConfigError: the memory's prototypes are of another width than ``x`` (or it was
            never filled); a label on the host outside ``-1..K-1`` (device labels are not
            read back: the trainer's are in range by construction).
    """
    if memory.shape[-1] != x.shape[-1]:  # shapes only: nothing waits for the device
        raise ConfigError(
            f"cluster_nce: the memory holds {memory.shape[-1]}-d prototypes for "
            f"{x.shape[-1]}-d features"
            + (
                ": it was never filled; call the loss's reset(EpochContext) at each epoch's "
                "start, before forward"
                if memory.shape[-1] == 0
                else ""
            )
        )
    if memory.shape[-2] == 0:
        return x.sum() * 0.0
    # every row through the product, the unlabelled ones ignored by the loss: no
    # data-dependent shapes, so nothing waits for the device on a GPU
    z = x if normalized else F.normalize(x, dim=-1)
    if z.dim() == 3:
        z = z.transpose(0, 1)  # (P, B, d) against (P, K, d)
    logits = z @ memory.detach().to(x.dtype).transpose(-1, -2) / temperature
    parts = logits.shape[0] if logits.dim() == 3 else 1
    labels = labels.long()
    if labels.device.type == "cpu" and labels.numel():  # host labels: no device wait
        host = labels.numpy()  # numpy's min/max: no aten scalar read (see the device tests)
        lo, hi, k = int(host.min()), int(host.max()), memory.shape[-2]
        if lo < -1 or hi >= k:
            raise ConfigError(
                f"cluster_nce: label {hi if hi >= k else lo} is outside the memory's {k} "
                f"clusters (labels are 0..{k - 1}, or -1 for none); pass this epoch's "
                f"cluster labels and reset(EpochContext) the loss after each clustering"
            )
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.repeat(parts) if parts > 1 else labels,
        ignore_index=-1,
        reduction="sum",
    )
    return total / ((labels >= 0).sum() * parts).clamp(min=1)


class _TwoMemories(nn.Module):
    """A visible and an infrared :class:`ClusterMemory` re-initialised every epoch."""

    def __init__(
        self, temperature: float, momentum: float, hard: bool = False, shuffle: bool = False
    ):
        super().__init__()
        check_loss_settings(type(self).__name__, temperature=temperature, momentum=momentum)
        self.temperature = temperature
        self.momentum = momentum
        self.memory_v = ClusterMemory(0, temperature, momentum, hard, shuffle)
        self.memory_r = ClusterMemory(0, temperature, momentum, hard, shuffle)

    def reset(self, context: EpochContext) -> None:
        """Prototypes = normalised centroids of the clusterer's partition (Eq. 3)."""
        self.memory_v.reset(context.feats_v, context.init_v, context.num_v)
        self.memory_r.reset(context.feats_r, context.init_r, context.num_r)

    @torch.no_grad()
    def update_intra(
        self, outputs: StepOutputs, targets: StepTargets, use_ca: bool, joint: bool = False
    ) -> None:
        """M^v with both visible views (f^a only with ``use_ca``), M^r with f^r, each with
        its own labels.

        The order is the reference's: with one memory call per view (SALCR, MBCCM: ``L(f^v)
        + L(f^a)``) autograd runs the later call's backward first, so the CA rows update
        M^v before the original ones, ``[f^a; f^v]``, and a prototype ends closest to an
        original view; with one call over both views (``joint``, ADCA/PGM's
        ``L([f^v; f^a])``) the update follows that batch, ``[f^v; f^a]``."""
        targets = targets.on_host()
        if use_ca:
            views = [outputs.feat_v, outputs.feat_a] if joint else [outputs.feat_a, outputs.feat_v]
            fv = torch.cat(views)
            yv = torch.cat([targets.vis_in_v, targets.vis_in_v])
        else:
            fv, yv = outputs.feat_v, targets.vis_in_v
        ClusterMemory.update_together(
            (self.memory_v, fv, yv), (self.memory_r, outputs.feat_r, targets.ir_in_r)
        )


@LOSSES.register("cluster_contrast")
class ClusterContrastLoss(_TwoMemories):
    """DCL: intra-modality cluster contrast, one memory per modality (SALCR Eq. 1-3).

    Args:
        temperature: tau (0.05).
        momentum: weight of the old prototype in the update (0.1).
        use_ca: include the channel-augmented visible view (the reference does).
        ca_joint: with ``use_ca``, one term over both visible views,
            ``L([f^v; f^a], [ỹ^v; ỹ^v]; M^v)`` (the mean over their rows), as ADCA/PGM
            compute it, instead of SALCR's sum of one term per view (which weighs the
            visible images twice against the infrared ones).
        hard: update each prototype with only the batch's hardest row of its cluster
            (:func:`~uvireid.losses.memory.hardest_labels`; PGM's second stage).
    """

    def __init__(
        self,
        temperature: float = 0.05,
        momentum: float = 0.1,
        use_ca: bool = True,
        ca_joint: bool = False,
        hard: bool = False,
    ):
        super().__init__(temperature, momentum, hard)
        self.use_ca = use_ca
        self.ca_joint = bool(ca_joint)

    def forward(self, outputs: StepOutputs, targets: StepTargets) -> torch.Tensor:
        tau = self.temperature
        mv, mr = self.memory_v.features, self.memory_r.features
        if self.use_ca and self.ca_joint:
            both = torch.cat([outputs.feat_v, outputs.feat_a])
            loss = cluster_nce(both, mv, torch.cat([targets.vis_in_v, targets.vis_in_v]), tau)
        else:
            loss = cluster_nce(outputs.feat_v, mv, targets.vis_in_v, tau)
            if self.use_ca:
                loss = loss + cluster_nce(outputs.feat_a, mv, targets.vis_in_v, tau)
        return loss + cluster_nce(outputs.feat_r, mr, targets.ir_in_r, tau)

    @torch.no_grad()
    def update(self, outputs: StepOutputs, targets: StepTargets) -> None:
        """M^v with both visible views (:meth:`update_intra`'s order), M^r with f^r."""
        self.update_intra(outputs, targets, self.use_ca, joint=self.ca_joint)


@LOSSES.register("dual_cluster_contrast")
class DualClusterContrastLoss(_TwoMemories):
    """DAGL: every image against both cluster memories with its dual labels (Eq. 5-8).

    Args:
        temperature: tau (0.05).
        momentum: weight of the old prototype in the update (0.1).
        use_ca: include the channel-augmented visible view (the reference does).
        branch: ``"both"``; ``"visible"`` keeps the cross rows only in the visible
            memory, ``"infrared"`` only in the infrared one (paper Table 4).
        shuffle_updates: update each memory in a random order of the batch's rows, as the
            official cross-modality memories do (``ClusterMemory(shuffle=True)``); false:
            in batch order ``[f^v; f^a; f^r]``, where the infrared rows, updated last,
            take most of a visible prototype they share a label with.
    """

    #: its cross terms need an associator's labels (a recipe check: without one they are
    #: skipped every step, and the loss is DCL's)
    needs_cross_labels = True

    def __init__(
        self,
        temperature: float = 0.05,
        momentum: float = 0.1,
        use_ca: bool = True,
        branch: str = "both",
        shuffle_updates: bool = True,
    ):
        super().__init__(temperature, momentum, shuffle=bool(shuffle_updates))
        if branch not in ("both", "visible", "infrared"):
            from uvireid.errors import ConfigError

            raise ConfigError(
                f"dual_cluster_contrast: branch must be both, visible or infrared, got {branch!r}"
            )
        self.use_ca = use_ca
        self.branch = branch

    def _rows(self, outputs: StepOutputs, targets: StepTargets):
        none_v = torch.full_like(targets.ir_in_v, -1)
        none_r = torch.full_like(targets.vis_in_r, -1)
        ir_in_v = targets.ir_in_v if self.branch in ("both", "visible") else none_v
        vis_in_r = targets.vis_in_r if self.branch in ("both", "infrared") else none_r
        if self.use_ca:
            z = torch.cat([outputs.feat_v, outputs.feat_a, outputs.feat_r])
            tv = torch.cat([targets.vis_in_v, targets.vis_in_v, ir_in_v])
            tr = torch.cat([vis_in_r, vis_in_r, targets.ir_in_r])
        else:
            z = torch.cat([outputs.feat_v, outputs.feat_r])
            tv = torch.cat([targets.vis_in_v, ir_in_v])
            tr = torch.cat([vis_in_r, targets.ir_in_r])
        return z, tv, tr

    def forward(self, outputs: StepOutputs, targets: StepTargets) -> torch.Tensor:
        z, tv, tr = self._rows(outputs, targets)
        z, tau = F.normalize(z, dim=-1), self.temperature  # once for both memories
        return cluster_nce(z, self.memory_v.features, tv, tau, normalized=True) + cluster_nce(
            z, self.memory_r.features, tr, tau, normalized=True
        )

    @torch.no_grad()
    def update(self, outputs: StepOutputs, targets: StepTargets) -> None:
        """Both memories with every row that has a label in their space (in a random
        order of the rows with ``shuffle_updates``, else in batch order)."""
        z, tv, tr = self._rows(outputs, targets.on_host())
        ClusterMemory.update_together((self.memory_v, z, tv), (self.memory_r, z, tr))
