"""FGSAL's part contrast: four part-cluster memories per part (SALCR Eq. 12-15).

SALCR (IJCV 2025) Sec. 3.4 (``shared/notes/salcr_reference.md`` Sec. 6.4-6.5). Part
features come from :class:`uvireid.models.parts.PartQuery` as ``parts[query, map]``
(S, P, d): the query image's instance-adaptive queries attending to the map of an image
of the pair (v visible, a its channel-augmented view, r infrared). Every part feature is
supervised with the labels of its QUERY image, in both label spaces. For part p::

    V_p = [v->v, a->a, v->r, a->r, v->a, a->v]  (visible queries, 6S rows)
    R_p = [r->r, r->v, r->a]                    (infrared queries, 3S rows)

    L_fgsal = (1/P) sum_p [ L(V_p, ỹ^v; M^v_hat_p) + L(V_p, ŷ^r; M^r_hat_p)      (Eq. 12-13)
                          + L(R_p, ŷ^v; M^v_chk_p) + L(R_p, ỹ^r; M^r_chk_p) ]    (Eq. 14-15)

with ``L`` the cluster-contrast InfoNCE (:func:`uvireid.losses.cluster_contrast.cluster_nce`,
tau = 0.05; the P parts in one batched product) and the four memories
momentum-updated with the same rows (mu = 0.1).

Initialisation (each epoch), paper: the visible-query memories from the centroids of
the visible self parts f^vv (by ỹ^v, resp. ŷ^r), the infrared-query memories from the
infrared self parts f^rr (by ŷ^v, resp. ỹ^r). ``official_quirks=True`` reproduces the
official code (spec §11 items 7 and 10): both visible-space memories from f^vv by ỹ^v,
both infrared-space memories from f^rr by ỹ^r, and the a->r row replaced by a->v
(``trainer.py`` line 260).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from uvireid.errors import ConfigError
from uvireid.losses.cluster_contrast import cluster_nce
from uvireid.losses.contract import EpochContext, StepOutputs, StepTargets, require_parts
from uvireid.losses.memory import (
    batch_permutation,
    centroids,
    check_loss_settings,
    momentum_update_many,
    resize_buffers,
)
from uvireid.registry import LOSSES

__all__ = ["PartContrastLoss", "VISIBLE_QUERY_ROWS", "INFRARED_QUERY_ROWS"]

logger = logging.getLogger(__name__)

VISIBLE_QUERY_ROWS = (("v", "v"), ("a", "a"), ("v", "r"), ("a", "r"), ("v", "a"), ("a", "v"))
INFRARED_QUERY_ROWS = (("r", "r"), ("r", "v"), ("r", "a"))
MEMORIES = ("hat_v", "hat_r", "chk_v", "chk_r")


@LOSSES.register("part_contrast")
class PartContrastLoss(nn.Module):
    """FGSAL: part features against four part-cluster memories per part (Eq. 12-15).

    Args:
        num_parts: P (3); must match the part module's.
        temperature: tau (0.05).
        momentum: weight of the old prototype (0.1).
        official_quirks: the official code's memory initialisation and a->r slip. The
            official seeding weighs each image's parts by their share of the jointly
            normalised [parts ‖ global] vector, ``context.part_weights_v/_r`` (the
            trainer fills them); without them the memories are seeded from the per-part
            normalised parts, with a warning.
        shuffle_updates: update each memory in a random order of its rows, as the official
            part memories (``cross=True``) do (``shared/notes/salcr_reference.md`` Sec.
            5.2, 6.5); false: in the fixed row order, where the last query/map pair of a
            label (a->v, r->a) takes 0.9 of its prototype.
    """

    needs_parts = True
    #: its part queries attend over the cross-modal pairs of paired batches
    needs_pairs = True

    def __init__(
        self,
        num_parts: int = 3,
        temperature: float = 0.05,
        momentum: float = 0.1,
        official_quirks: bool = False,
        shuffle_updates: bool = True,
    ):
        super().__init__()
        check_loss_settings(
            "part_contrast", num_parts=num_parts, temperature=temperature, momentum=momentum
        )
        self.num_parts = int(num_parts)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.official_quirks = bool(official_quirks)
        self.shuffle_updates = bool(shuffle_updates)
        for name in MEMORIES:  # (P, K, d) each
            self.register_buffer(name, torch.zeros(self.num_parts, 0, 0))

    @torch.no_grad()
    def reset(self, context: EpochContext) -> None:
        pv, pr = context.parts_v, context.parts_r
        if pv is None or pr is None:
            raise ConfigError("part_contrast needs the epoch's self parts (context.parts_v/_r)")
        c = context
        if self.official_quirks:
            # the official code's centroids are of slices of the jointly normalised
            # [parts ‖ global] vector: each image weighs its parts' share of that norm
            # (per-part normalised, every image weighed the same: prototype cosines
            # 0.94-0.995 against the official ones)
            if c.part_weights_v is None or c.part_weights_r is None:
                logger.warning(
                    "part_contrast official_quirks: the epoch context has no "
                    "part_weights_v/_r, so the part memories are seeded from per-part "
                    "normalised parts, not from the official code's jointly normalised "
                    "slices (set EpochContext.part_weights_v/_r as the trainer does)"
                )
            if c.part_weights_v is not None:
                pv = pv * c.part_weights_v.to(pv)[..., None]
            if c.part_weights_r is not None:
                pr = pr * c.part_weights_r.to(pr)[..., None]
            spec = {
                "hat_v": (pv, c.init_v, c.num_v),
                "hat_r": (pr, c.init_r, c.num_r),
                "chk_v": (pv, c.init_v, c.num_v),
                "chk_r": (pr, c.init_r, c.num_r),
            }
        else:
            spec = {
                "hat_v": (pv, c.init_v, c.num_v),
                "hat_r": (pv, c.vis_in_r, c.num_r),
                "chk_v": (pr, c.ir_in_v, c.num_v),
                "chk_r": (pr, c.init_r, c.num_r),
            }
        for name, (feats, labels, k) in spec.items():
            mem = torch.stack([centroids(feats[:, p], labels, k) for p in range(self.num_parts)])
            setattr(self, name, mem)

    def _rows(self, outputs: StepOutputs, targets: StepTargets, prepare=lambda x: x):
        """Each memory's (rows, labels). The visible-query rows serve two memories and the
        infrared-query rows the other two: ``prepare`` (normalising, gathering) is applied
        once to each."""
        vis_rows = list(VISIBLE_QUERY_ROWS)
        if self.official_quirks:
            vis_rows[3] = ("a", "v")
        parts = outputs.parts
        require_parts(parts, [*vis_rows, *INFRARED_QUERY_ROWS], "part_contrast")
        xv = prepare(torch.cat([parts[k] for k in vis_rows]))  # (6S, P, d)
        xr = prepare(torch.cat([parts[k] for k in INFRARED_QUERY_ROWS]))  # (3S, P, d)
        n_v, n_r = len(vis_rows), len(INFRARED_QUERY_ROWS)
        return {
            "hat_v": (xv, targets.vis_in_v.repeat(n_v)),
            "hat_r": (xv, targets.vis_in_r.repeat(n_v)),
            "chk_v": (xr, targets.ir_in_v.repeat(n_r)),
            "chk_r": (xr, targets.ir_in_r.repeat(n_r)),
        }

    def forward(self, outputs: StepOutputs, targets: StepTargets) -> torch.Tensor:
        if not outputs.parts:
            raise ConfigError(
                "part_contrast needs the part features (StepOutputs.parts, from the PartQuery "
                "module); the trainer passes them on paired batches"
            )
        rows = self._rows(outputs, targets, lambda x: F.normalize(x, dim=-1))
        total = outputs.feat_v.sum() * 0.0
        for name, (z, y) in rows.items():
            total = total + cluster_nce(z, getattr(self, name), y, self.temperature, True)
        return total

    @torch.no_grad()
    def update(self, outputs: StepOutputs, targets: StepTargets) -> None:
        """Each memory with its rows and targets, every part at once (Eq. 7 per part), the
        four memories in one call."""
        from uvireid.engine.distributed import all_gather_cat, gather_labels

        dtype = self.hat_v.dtype  # the four memories share it

        def gathered(x: torch.Tensor) -> torch.Tensor:
            return all_gather_cat(x.detach().to(dtype))

        updates = []
        for name, (x, y) in self._rows(outputs, targets.on_host(), gathered).items():
            mem = getattr(self, name)  # (P, K, d), updated in place through its (K, P, d) view
            labels = gather_labels(y, x.device)
            order = batch_permutation(labels) if self.shuffle_updates else None
            updates.append((mem.transpose(0, 1), x, labels, order))
        # the four memories in one set of rounds (24 instead of 72 at 8 labels x 4 images)
        momentum_update_many(updates, self.momentum)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        resize_buffers(self, state_dict, prefix, MEMORIES)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
