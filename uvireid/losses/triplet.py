"""Batch-hard triplet loss on the pooled features before the BN neck, with pseudo-labels.

Source: Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person
Re-Identification" (2017), Eq. 5 (batch hard) and Sec. 3.1 (the soft margin); on the
features before the BN neck, as the BNNeck of Luo et al. (CVPR-W 2019, "Bag of Tricks")
and the AGW baseline that the VI-ReID peers build on place it. Unsupervised methods take
the pseudo-labels as identities (e.g. SpCL's and MMT's triplet terms).

For each anchor ``i`` with a label, over the rows of its group::

    d(i, j) = || f_i - f_j ||_2
    l_i = [ max_{j: y_j = y_i} d(i, j) - min_{j: y_j != y_i} d(i, j) + m ]_+
    (soft margin: log(1 + exp(max - min)))

averaged over the anchors that have both a positive (another row of their label) and a
negative. Rows without a label (-1: outliers, or no link this epoch) are neither anchors
nor positives nor negatives.

* ``triplet``: the visible rows with their channel-augmented views (labels ỹ^v) form
  one group, the infrared rows (ỹ^r) another; the loss is the mean of the two groups'
  means (a group without a valid anchor is left out).
* ``cross_triplet``: one group of all rows in the visible label space,
  ``[ỹ^v; ỹ^v; ŷ^v]``, so that infrared rows linked to a visible cluster are its
  positives and the mining crosses modalities; needs an associator's cross labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uvireid.errors import ConfigError
from uvireid.losses.contract import StepOutputs, StepTargets
from uvireid.registry import LOSSES

__all__ = ["batch_hard_triplet_masked", "CrossTripletLoss", "TripletLoss"]


def batch_hard_triplet_masked(
    feat: torch.Tensor, labels: torch.Tensor, margin: float | None = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-hard triplet loss over the rows of ``feat`` with ``labels >= 0``.

    Masks instead of indexing, so that nothing waits for the device.

    Args:
        feat: (B, d) features (not normalised here); labels: (B,) long, -1 = left out.
        margin: the hinge's margin ``m``; None: the soft margin ``softplus(pos - neg)``.

    Returns:
        (the mean over the valid anchors, their count as a 0-dim tensor); the mean is 0
        (with a gradient path) when no anchor has both a positive and a negative.
    """
    if feat.shape[0] == 0:  # a modality without images this epoch (a shape: no device wait)
        return feat.sum() * 0.0, labels.new_zeros((), dtype=torch.long)
    keep = labels >= 0
    both = keep[:, None] & keep[None, :]
    same = (labels[:, None] == labels[None, :]) & both
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask, neg_mask = same & ~eye, both & ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    d = torch.cdist(feat, feat)
    # the rows' own maxima and minima; an anchor without a positive or a negative is
    # masked out below (its +-inf never reaches the sum)
    hardest_pos = d.masked_fill(~pos_mask, float("-inf")).amax(1)
    hardest_neg = d.masked_fill(~neg_mask, float("inf")).amin(1)
    gap = torch.where(valid, hardest_pos - hardest_neg, torch.zeros_like(hardest_pos))
    per = F.softplus(gap) if margin is None else F.relu(gap + margin)
    count = valid.sum()
    return (per * valid).sum() / count.clamp_min(1), count


@LOSSES.register("triplet")
class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al., 2017) on the pre-BN pooled features, with
    each modality's pseudo-labels as identities.

    The visible rows and their channel-augmented views (labels ỹ^v) are one group, the
    infrared rows (ỹ^r) another; the loss is the mean over the groups that have an
    anchor with a positive and a negative.

    Args:
        margin: the hinge's margin (0.3, as the BNNeck/AGW baselines); null: the soft
            margin ``log(1 + exp(d_pos - d_neg))``.
    """

    needs_pool = True
    kind = "triplet"  # the registered name, in messages

    def __init__(self, margin: float | None = 0.3):
        super().__init__()
        if margin is not None and (
            isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0
        ):
            raise ConfigError(f"{self.kind}: margin must be a number >= 0 or null, got {margin!r}")
        self.margin = None if margin is None else float(margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"

    def _pool(self, outputs: StepOutputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if outputs.pool_v is None:
            raise ConfigError(
                f"{self.kind}: outputs.pool_v is None: the loss reads the pooled features "
                f"before the BN neck, which the trainer fills for a loss with needs_pool = True"
            )
        return outputs.pool_v, outputs.pool_a, outputs.pool_r

    def forward(self, outputs: StepOutputs, targets: StepTargets) -> torch.Tensor:
        pv, pa, pr = self._pool(outputs)
        vis, n_vis = batch_hard_triplet_masked(
            torch.cat([pv, pa]), torch.cat([targets.vis_in_v, targets.vis_in_v]), self.margin
        )
        ir, n_ir = batch_hard_triplet_masked(pr, targets.ir_in_r, self.margin)
        groups = (n_vis > 0).to(vis.dtype) + (n_ir > 0).to(vis.dtype)
        return (vis + ir) / groups.clamp_min(1)


@LOSSES.register("cross_triplet")
class CrossTripletLoss(TripletLoss):
    """Batch-hard triplet loss on the pre-BN pooled features across the modalities, in
    the visible label space (needs an associator).

    All rows with their labels in the visible space, ``[ỹ^v; ỹ^v; ŷ^v]``: the infrared
    images the association linked to a visible cluster are its positives, and the
    hardest positive or negative may be of either modality. Rows without a link this epoch
    drop out.

    Args:
        margin: as :class:`TripletLoss`.
    """

    needs_cross_labels = True
    kind = "cross_triplet"

    def forward(self, outputs: StepOutputs, targets: StepTargets) -> torch.Tensor:
        pv, pa, pr = self._pool(outputs)
        feat = torch.cat([pv, pa, pr])
        labels = torch.cat([targets.vis_in_v, targets.vis_in_v, targets.ir_in_v])
        return batch_hard_triplet_masked(feat, labels, self.margin)[0]
