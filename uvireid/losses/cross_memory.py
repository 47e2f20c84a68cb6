"""The peers' cross-modal memory losses: PGM's alternate cross-memory term and MBCCM's
modality-agnostic memories with symmetric-KL consistency.

Sources (``shared/notes/peers.md`` Sec. 2.2 and 3.2):

* PGM, Wu & Ye, "Unsupervised Visible-Infrared Person Re-Identification via Progressive
  Graph Matching and Alternate Learning", CVPR 2023 (repo ``zesenwu23/USL-VI-ReID``,
  ``trainers.py``): Alternate Cross Contrastive Learning (ACCL);
* MBCCM, Cheng et al., "Unsupervised Visible-Infrared Person Re-Identification via
  Many-to-Many Bilateral Cluster Matching", ACM MM 2023 (repo
  ``FranklinLingfeng/MBCCM-master-MM-23``, ``trainer.py``).

Both use the cross-modal partner labels of the epoch's association (``vis_in_r`` and
``ir_in_v`` in :class:`~uvireid.losses.contract.StepTargets`), which the ``pgm`` and
``mbccm`` associators give for every instance of a matched cluster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uvireid.errors import ConfigError
from uvireid.losses.cluster_contrast import ClusterContrastLoss, _TwoMemories, cluster_nce
from uvireid.losses.contract import EpochContext, StepOutputs, StepTargets
from uvireid.losses.memory import ClusterMemory, check_loss_settings
from uvireid.registry import LOSSES
from uvireid.rerank.inputs import check_real

__all__ = ["AlternateCrossContrastLoss", "ModalityAgnosticLoss", "symmetric_kl"]


@LOSSES.register("alternate_cross_contrast")
class AlternateCrossContrastLoss(ClusterContrastLoss):
    """PGM's ACCL: DCL's intra terms plus a cross term against the other memory.

    ::

        L = L(f^v, ỹ^v; M^v) [+ L(f^a, ỹ^v; M^v)] + L(f^r, ỹ^r; M^r) + w * L_cross
        L_cross = L(f^r, ŷ^v; M^v)             odd epochs of the stage  (IR -> visible memory)
                = L([f^v; f^a], ŷ^r; M^r)       even epochs              (visible -> IR memory)

    ``schedule: both`` takes both cross terms every epoch (the variant present but
    disabled in the PGM code). With ``cross_update`` (the PGM code's behaviour, on by
    default) the cross rows are also written into the other modality's memory after
    the intra updates: in PGM the cross term goes through that memory's update.

    Args:
        temperature: tau (0.05).
        momentum: weight of the old prototype in the update (0.1; PGM's log has 0.2).
        use_ca: include the channel-augmented visible view.
        ca_joint: one intra term over both visible views (PGM's; see
            :class:`~uvireid.losses.cluster_contrast.ClusterContrastLoss`).
        cross_weight: w (0.25, hard-coded in PGM).
        schedule: ``"alternate"`` (by the epoch's parity within its stage) or ``"both"``.
        cross_update: write the cross rows into the other memory too.
        hard: hard memory updates (PGM's stage 2, ``use_hard``), the cross rows' too.
    """

    #: its cross term needs an associator's labels (without one the loss is DCL's)
    needs_cross_labels = True

    def __init__(
        self,
        temperature: float = 0.05,
        momentum: float = 0.1,
        use_ca: bool = True,
        cross_weight: float = 0.25,
        schedule: str = "alternate",
        cross_update: bool = True,
        ca_joint: bool = False,
        hard: bool = False,
    ):
        super().__init__(temperature, momentum, use_ca, ca_joint, hard)
        if schedule not in ("alternate", "both"):
            raise ConfigError(
                f"alternate_cross_contrast: schedule must be 'alternate' or 'both', "
                f"got {schedule!r}"
            )
        check_loss_settings("alternate_cross_contrast", cross_weight=cross_weight)
        self.cross_weight = float(cross_weight)
        self.schedule = schedule
        self.cross_update = bool(cross_update)
        self.epoch = 0

    def reset(self, context: EpochContext) -> None:
        super().reset(context)
        self.epoch = int(context.epoch)

    def directions(self) -> tuple[bool, bool]:
        """(IR rows into the visible memory, visible rows into the IR memory) this epoch."""
        if self.schedule == "both":
            return True, True
        odd = self.epoch % 2 == 1
        return odd, not odd

    def _vis_rows(self, outputs: StepOutputs, targets: StepTargets):
        if self.use_ca:
            return (
                torch.cat([outputs.feat_v, outputs.feat_a]),
                torch.cat([targets.vis_in_r, targets.vis_in_r]),
            )
        return outputs.feat_v, targets.vis_in_r

    def forward(self, outputs: StepOutputs, targets: StepTargets) -> torch.Tensor:
        loss = super().forward(outputs, targets)
        r_to_v, v_to_r = self.directions()
        tau = self.temperature
        cross = outputs.feat_r.sum() * 0.0
        if r_to_v:
            cross = cross + cluster_nce(
                outputs.feat_r, self.memory_v.features, targets.ir_in_v, tau
            )
        if v_to_r:
            z, y = self._vis_rows(outputs, targets)
            cross = cross + cluster_nce(z, self.memory_r.features, y, tau)
        return loss + self.cross_weight * cross

    @torch.no_grad()
    def update(self, outputs: StepOutputs, targets: StepTargets) -> None:
        """(``cross_update``) the cross rows into the other memory, then the intra updates:
        PGM's cross term is its last memory call, so autograd runs its update first
        (``shared/notes/peers.md`` Sec. 0.3: keep the order). Unlike PGM, whose later
        backward passes compute their gradients with the memory the earlier ones already
        moved, every term's gradient here uses the memory as the step found it."""
        targets = targets.on_host()
        if self.cross_update:
            r_to_v, v_to_r = self.directions()
            if r_to_v:
                self.memory_v.update(outputs.feat_r, targets.ir_in_v)
            if v_to_r:
                self.memory_r.update(*self._vis_rows(outputs, targets))
        super().update(outputs, targets)


def symmetric_kl(
    logits_p: torch.Tensor, logits_q: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Mean over rows of ``(KL(p || q) + KL(q || p)) / 2`` with ``p, q = softmax(logits)``:
    the MBCCM code's ``KLDivLoss``, which returns ``(loss1 + loss2) / 2`` (so ``beta`` =
    0.5 weighs it as there) of probabilities clamped at ``eps`` (1e-12 there) before their
    logs.

    The clamp matters: MBCCM's "plain" logits of the raw BN-neck feature (norm ~45 at
    d = 2048, tau = 0.05) span hundreds, their softmax is one-hot, and the exact KL then
    grows with the logits (17x the clamped value, 14x its gradient, at that scale: audit
    R, session 17); clamped entries pass no gradient, as there. ``eps = 0``: the exact KL
    (log-softmax). Both sides carry gradients (the MBCCM consistency term trains both
    predictions)."""
    if eps > 0:
        p = F.softmax(logits_p, dim=1).clamp(min=eps)
        q = F.softmax(logits_q, dim=1).clamp(min=eps)
        return 0.5 * ((p - q) * (p.log() - q.log())).sum(1).mean()
    lp = F.log_softmax(logits_p, dim=1)
    lq = F.log_softmax(logits_q, dim=1)
    return 0.5 * ((lp.exp() - lq.exp()) * (lp - lq)).sum(1).mean()


@LOSSES.register("modality_agnostic")
class ModalityAgnosticLoss(_TwoMemories):
    """MBCCM: modality-agnostic memories and symmetric-KL consistency, ``a*L_ma + b*L_cc``.

    Four memories, all re-initialised each epoch: the intra-modality ``M^v`` and ``M^r``
    (as in ``cluster_contrast``, which the MBCCM recipe uses for its ``L_ms``) and the
    modality-agnostic ``M^va`` (initialised as ``M^v``) and ``M^ra`` (as ``M^r``), which
    take the features of both modalities: an image's label in ``M^va`` is its label in
    the visible space (its own for a visible image, its cluster's partner for an
    infrared one) and likewise in ``M^ra``. With z in {f^v, f^a, f^r}::

        L_ma = sum_z L(z, y_v(z); M^va) + L(z, y_r(z); M^ra)                 (6 terms)
        L_cc = SKL(f^v M^v, f^v M^va) + SKL(f^v M^ra, f^v·M^r^T/tau)
             + SKL(f^r M^va, f^r·M^v^T/tau) + SKL(f^r M^r, f^r M^ra)        (+ f^a like f^v)

    where ``x M`` is the memory logits ``normalize(x) M^T / tau`` and ``x·M^T/tau`` the
    MBCCM code's "plain" logits of the raw (unnormalised) feature; SKL is
    :func:`symmetric_kl` over the rows that have both labels it needs. The MBCCM
    association's many-to-many mask reaches the loss through the ``matched`` sampler
    (:class:`~uvireid.data.samplers.MatchedPairSampler`): each batch row carries the
    labels of the cluster pair it was drawn for.

    Args:
        temperature: tau (0.05).
        momentum: weight of the old prototype (0.1).
        alpha: weight of L_ma (0.9).
        beta: weight of L_cc (0.5).
        use_ca: include the channel-augmented visible view.
        kl_eps: the probabilities of L_cc are clamped at this before their logs (1e-12,
            as the MBCCM code's ``KLDivLoss``; 0: the exact KL, see :func:`symmetric_kl`;
            at most 0.01).
    """

    #: its agnostic memories need an associator's labels
    needs_cross_labels = True

    def __init__(
        self,
        temperature: float = 0.05,
        momentum: float = 0.1,
        alpha: float = 0.9,
        beta: float = 0.5,
        use_ca: bool = True,
        kl_eps: float = 1e-12,
    ):
        check_loss_settings("modality_agnostic", temperature=temperature, alpha=alpha, beta=beta)
        # a clamp is a floor under tiny probabilities: at 1 / classes or more it flattens
        # both sides and the term is 0 (audit AH)
        check_real(kl_eps, "kl_eps", "modality_agnostic", 0.0, 0.01)
        super().__init__(float(temperature), momentum)
        self.kl_eps = float(kl_eps)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.use_ca = bool(use_ca)
        self.memory_va = ClusterMemory(0, temperature, momentum)
        self.memory_ra = ClusterMemory(0, temperature, momentum)

    def reset(self, context: EpochContext) -> None:
        super().reset(context)
        self.memory_va.reset(context.feats_v, context.init_v, context.num_v)
        self.memory_ra.reset(context.feats_r, context.init_r, context.num_r)

    def _views(self, outputs: StepOutputs, targets: StepTargets):
        """[(features, label in the visible space, label in the IR space, is visible)]."""
        views = [(outputs.feat_v, targets.vis_in_v, targets.vis_in_r, True)]
        if self.use_ca:
            views.append((outputs.feat_a, targets.vis_in_v, targets.vis_in_r, True))
        views.append((outputs.feat_r, targets.ir_in_v, targets.ir_in_r, False))
        return views

    def forward(self, outputs: StepOutputs, targets: StepTargets) -> torch.Tensor:
        tau = self.temperature
        mv, mr = self.memory_v.features, self.memory_r.features
        mva, mra = self.memory_va.features, self.memory_ra.features
        l_ma = outputs.feat_r.sum() * 0.0
        l_cc = outputs.feat_r.sum() * 0.0
        for x, yv, yr, visible in self._views(outputs, targets):
            l_ma = l_ma + cluster_nce(x, mva, yv, tau) + cluster_nce(x, mra, yr, tau)
            if visible:
                pairs = [
                    (yv >= 0, self.memory_v.logits(x), self.memory_va.logits(x)),
                    (yr >= 0, self.memory_ra.logits(x), x @ mr.detach().to(x.dtype).T / tau),
                ]
            else:
                pairs = [
                    (yv >= 0, self.memory_va.logits(x), x @ mv.detach().to(x.dtype).T / tau),
                    (yr >= 0, self.memory_r.logits(x), self.memory_ra.logits(x)),
                ]
            for keep, a, b in pairs:
                if bool(keep.any()) and a.shape[1] > 0:
                    l_cc = l_cc + symmetric_kl(a[keep], b[keep], self.kl_eps)
        return self.alpha * l_ma + self.beta * l_cc

    @torch.no_grad()
    def update(self, outputs: StepOutputs, targets: StepTargets) -> None:
        """``M^v``/``M^r`` as ``cluster_contrast`` does; ``M^va``/``M^ra`` with every view
        in its visible / infrared label, in the order of the MBCCM code's backward: its
        calls are f^v, f^a, f^r, and autograd runs the last call's update first, so f^r,
        then f^a, then f^v (the original visible rows end closest to a prototype)."""
        self.update_intra(outputs, targets, self.use_ca)
        views = self._views(outputs, targets)[::-1]
        z = torch.cat([x for x, _, _, _ in views])
        ClusterMemory.update_together(
            (self.memory_va, z, torch.cat([yv for _, yv, _, _ in views])),
            (self.memory_ra, z, torch.cat([yr for _, _, yr, _ in views])),
        )
