"""GPCR: instance-neighbour loss over global and part instance memories (SALCR Eq. 16-27).

SALCR (IJCV 2025) Sec. 3.5 (``shared/notes/salcr_reference.md`` Sec. 7). Instance
memories hold the L2-normalised global features I^s (N_s, d) and part features I^s_p of
the clustered training images of each modality s in {v, r}. For a row z and a memory I::

    p(z) = softmax(normalize(z) I^T / tau),     N_k(z) = top-k indices of p(z)   (k = 30)
    L(z, P) = -log sum_{i in P} p(z)_i                                          (Eq. 18, 24)

Global positives, cross-modality intersection (Eq. 16-17): for pair n,
``P_n = N_k(f^v_n) ∩ N_k(f^r_n)``, used for the rows v_n, a_n and r_n (the official code
also intersects the CA row a_n: ``official_quirks``).

Part positives, mutual correction (Eq. 21-23): for part p and the row "query x attends to
map y" of pair n, ``P = [N_k(x->y') ∪ N_k(x->y'')] ∩ N_k^global(x_n)``, where y', y'' are
the two other maps of the pair (v, a, r) and N_k^global is the query image's own global
neighbour set in the same memory; the nine (query, map) rows are the channel-augmented
triplet expansion of the paper's v<->r pairs.

    L_gpcr = sum_{s in v, r} [ mean_rows L(z, P_n; I^s) + (1/P) sum_p mean_rows L(x, P; I^s_p) ]

(rows with an empty positive set are left out; a term with none is 0). The recipe gives
its weight, lambda = 0.5 (Eq. 30). The memories are re-initialised each epoch and, in the
paper, momentum-updated with the batch's features (``momentum``); ``official_quirks``
keeps them fixed within an epoch (§11 item 9) and replaces the a->r part by a->v (item 7).
GPCR needs paired batches; on an unpaired batch it contributes 0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uvireid.errors import ConfigError
from uvireid.losses.contract import EpochContext, StepOutputs, StepTargets, require_parts
from uvireid.losses.memory import check_loss_settings, momentum_update_many, resize_buffers
from uvireid.registry import LOSSES

__all__ = ["InstanceNeighbourLoss", "topk_indices", "members", "positive_nll"]

MAPS = ("v", "a", "r")


def topk_indices(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(..., k) indices of each row's k largest entries (k clamped to N): N_k of Eq. 16.

    Exactly k, as the paper's top-k: where entries tie at the k-th value, ``topk`` keeps
    some of them (the lower indices on the CPU). The official code keeps the entries
    strictly above the (k+1)-th value, so it drops every tied one there (fewer than k);
    the two differ only on equal memory rows (duplicate images)."""
    return logits.topk(min(int(k), logits.shape[-1]), dim=-1).indices


def members(cand: torch.Tensor, *sets: torch.Tensor) -> torch.Tensor:
    """(..., B, k) bool: ``cand[..., b, j]`` is in row b of any of ``sets`` ((..., B, k')
    index tensors; leading dimensions broadcast).

    Positive sets are intersections with a top-k set (Eq. 17, 23), so they are held as
    that top-k's indices plus this membership mask: O(B k k') instead of (B, N) masks.
    """
    out = None
    for other in sets:
        hit = (cand[..., :, None] == other[..., None, :]).any(-1)
        out = hit if out is None else out | hit
    return out if out is not None else torch.zeros_like(cand, dtype=torch.bool)


def positive_nll(logits: torch.Tensor, cand: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """Mean over rows with a positive of ``-log sum_{i in P} softmax(logits)_i`` (Eq. 18).

    Args:
        logits: (B, N) ``normalize(z) I^T / tau``, or (G, B, N) for G groups (the parts):
            then the mean over the groups of each group's mean.
        cand: (..., B, k) candidate indices; member: (..., B, k) bool, True where the
            candidate is a positive (the positive set of row b is ``cand[b][member[b]]``;
            candidates are distinct within a row).

    ``-log sum_P softmax = -logsumexp(log_softmax(row)[P])``: one fused log-softmax over
    the (B, N) logits (on a GPU one kernel, against about seven for a ``logsumexp``), then
    a log-sum-exp over the k gathered candidates only, not over a masked copy of the
    (B, N) logits.
    """
    keep = member.any(-1)
    # a row without a positive scores its candidates as they are (finite, so no NaN can
    # reach the gradient) and is then weighted 0: no data-dependent shapes, no wait for
    # the device on a GPU
    logp = torch.log_softmax(logits, -1)
    pos = logp.gather(-1, cand.expand(*logits.shape[:-1], cand.shape[-1]))
    pos = pos.masked_fill(~member & keep[..., None], float("-inf"))
    nll = -torch.logsumexp(pos, -1) * keep
    return (nll.sum(-1) / keep.sum(-1).clamp(min=1)).mean()


@LOSSES.register("instance_neighbour")
class InstanceNeighbourLoss(nn.Module):
    """GPCR: global and part instance-neighbour terms (SALCR Eq. 16-27).

    Args:
        k: neighbours per row (30).
        num_parts: P (3); with ``parts: false`` only the global term is used.
        temperature: tau (0.05).
        momentum: weight of the old entry in the instance-memory update (0.1; unused
            with ``official_quirks``).
        parts: include the part term (needs the FGSAL part module).
        official_quirks: the official code's CA row in the global intersection, fixed
            memories within an epoch, and the a->r part replaced by a->v.
    """

    #: it pulls the visible and infrared rows of paired batches (``paired`` or ``matched``
    #: sampler: an unpaired batch gives 0)
    needs_pairs = True

    def __init__(
        self,
        k: int = 30,
        num_parts: int = 3,
        temperature: float = 0.05,
        momentum: float = 0.1,
        parts: bool = True,
        official_quirks: bool = False,
    ):
        super().__init__()
        check_loss_settings(
            "instance_neighbour",
            k=k,
            num_parts=num_parts,
            temperature=temperature,
            momentum=momentum,
        )
        self.k = int(k)
        self.num_parts = int(num_parts)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.use_parts = bool(parts)
        self.needs_parts = bool(parts)
        self.official_quirks = bool(official_quirks)
        for name in ("inst_v", "inst_r"):  # (N, d)
            self.register_buffer(name, torch.zeros(0, 0))
        for name in ("part_v", "part_r"):  # (N, P, d)
            self.register_buffer(name, torch.zeros(0, self.num_parts, 0))
        for name in ("row_v", "row_r"):  # image index -> memory row (-1: not in memory)
            self.register_buffer(name, torch.zeros(0, dtype=torch.long))
        self._host_rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def reset(self, context: EpochContext) -> None:
        """Memories of the clustered instances (outliers left out, as the reference)."""
        for s, feats, parts, labels in (
            ("v", context.feats_v, context.parts_v, context.init_v),
            ("r", context.feats_r, context.parts_r, context.init_r),
        ):
            if np.shape(labels) != (len(feats),):
                raise ConfigError(
                    f"instance_neighbour: {len(feats)} features of modality {s} but labels of "
                    f"shape {np.shape(labels)}; give one label per image"
                )
            keep = torch.as_tensor(np.flatnonzero(np.asarray(labels) >= 0), device=feats.device)
            row = torch.full((len(feats),), -1, dtype=torch.long, device=feats.device)
            row[keep] = torch.arange(len(keep), device=feats.device)
            setattr(self, f"row_{s}", row)
            setattr(self, f"inst_{s}", F.normalize(feats[keep], dim=1))
            if self.use_parts:
                if parts is None:
                    raise ConfigError("instance_neighbour with parts needs context.parts_v/_r")
                setattr(self, f"part_{s}", F.normalize(parts[keep], dim=-1))

    def _queries(self, z: torch.Tensor) -> torch.Tensor:
        """``normalize(z) / tau``, made once per step for both modalities' memories (1/tau
        folded into the (B, d) queries: one pass less over the (B, N) logits)."""
        return F.normalize(z, dim=-1) * (1.0 / self.temperature)

    @staticmethod
    def _logits(q: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return q @ memory.detach().to(q.dtype).transpose(-1, -2)

    def _global(self, q: torch.Tensor, memory: torch.Tensor):
        """Global term on one memory for the queries ``q`` of the rows [v; a; r]
        (:meth:`_queries`); also returns each query image's top-k indices."""
        s = len(q) // 3
        logits = self._logits(q, memory)
        nbr = topk_indices(logits.detach(), self.k)
        nv, na, nr = nbr[:s], nbr[s : 2 * s], nbr[2 * s :]
        inter = members(nv, nr)  # N_k(f^v) ∩ N_k(f^r), as a mask over N_k(f^v)
        if self.official_quirks:
            inter &= members(nv, na)
        loss = positive_nll(logits, nv.repeat(3, 1), inter.repeat(3, 1))
        return loss, {"v": nv, "a": na, "r": nr}

    def _part_rows(self, parts: dict) -> tuple[dict, torch.Tensor]:
        """The nine (query, map) rows (``key``: which part feature each row takes) and
        their queries (P, 9S, d), made once per step for both modalities' memories."""
        key = {(q, m): (q, m) for q in MAPS for m in MAPS}
        if self.official_quirks:
            key["a", "r"] = ("a", "v")
        require_parts(parts, list(dict.fromkeys(key.values())), "instance_neighbour")
        z = torch.cat([parts[key[qm]] for qm in key]).transpose(0, 1)  # (P, 9S, d)
        return key, self._queries(z)

    def _part(self, key: dict, z: torch.Tensor, memory: torch.Tensor, glob: dict):
        """Part term on one part memory (N, P, d) for the queries of :meth:`_part_rows`,
        averaged over parts; the P parts and the nine (query, map) blocks go through one
        batched product."""
        pairs = list(key)
        lg = self._logits(z, memory.transpose(0, 1))  # (P, 9S, N)
        nb = topk_indices(lg.detach(), self.k)  # row-wise: the same as block by block
        nbr = dict(zip(pairs, nb.chunk(len(pairs), dim=1)))  # (P, S, k) each
        # [N_k(q->o1) ∪ N_k(q->o2)] ∩ N_k^global(q), as a mask over N_k^global(q), for
        # the nine (q, m) rows at once: (9, P, S, k)
        others = [[o for o in MAPS if o != m] for _, m in key]
        cand = torch.stack([glob[q] for q, _ in key])  # (9, S, k)
        member = members(
            cand[:, None],
            torch.stack([nbr[q, o[0]] for (q, _), o in zip(key, others)]),
            torch.stack([nbr[q, o[1]] for (q, _), o in zip(key, others)]),
        )
        p, n9 = member.shape[1], len(key)
        member = member.transpose(0, 1).reshape(p, n9 * cand.shape[1], -1)  # (P, 9S, k)
        return positive_nll(lg, cand.reshape(n9 * cand.shape[1], -1), member)

    def forward(self, outputs: StepOutputs, targets: StepTargets) -> torch.Tensor:
        if self.inst_v.shape[-1] != outputs.feat_v.shape[-1]:
            raise ConfigError(
                f"instance_neighbour: the instance memory holds {self.inst_v.shape[-1]}-d rows "
                f"for {outputs.feat_v.shape[-1]}-d features"
                + (
                    ": it was never filled; call reset(EpochContext) at each epoch's start"
                    if self.inst_v.shape[-1] == 0
                    else ""
                )
            )
        if (
            not targets.paired
            or len(outputs.feat_v) != len(outputs.feat_r)
            or len(outputs.feat_v) == 0  # an empty batch (a custom loop's): nothing to pull
        ):
            return outputs.feat_v.sum() * 0.0
        total = outputs.feat_v.sum() * 0.0
        q = self._queries(torch.cat([outputs.feat_v, outputs.feat_a, outputs.feat_r]))
        use_parts = self.use_parts and bool(outputs.parts)
        if use_parts:
            key, zp = self._part_rows(outputs.parts)
        for s in ("v", "r"):
            if getattr(self, f"inst_{s}").shape[0] == 0:
                # no clustered instance of this modality this epoch (its clusterer found
                # none): its terms are left out, as the engine leaves out cross terms
                continue
            g, glob = self._global(q, getattr(self, f"inst_{s}"))
            total = total + g
            if use_parts:
                total = total + self._part(key, zp, getattr(self, f"part_{s}"), glob)
        return total

    @torch.no_grad()
    def update(self, outputs: StepOutputs, targets: StepTargets) -> None:
        """Paper: momentum update of the entries of the batch's images (self features
        and self parts); nothing with ``official_quirks``."""
        if self.official_quirks or not targets.paired:
            return
        from uvireid.engine.distributed import all_gather_cat, gather_labels

        host = targets.on_host()
        glob, part = [], []  # both modalities' global, resp. part, memories in one call
        for s, feat, idx, self_key in (
            ("v", outputs.feat_v, host.idx_v, ("v", "v")),
            ("r", outputs.feat_r, host.idx_r, ("r", "r")),
        ):
            # the memory rows of the batch's images, looked up on the host (under DDP
            # the indices of every rank are gathered on the device, then read back)
            rows, at = self._rows_of(s), gather_labels(idx, feat.device).cpu()
            lo, hi = (int(at.numpy().min()), int(at.numpy().max())) if at.numel() else (0, -1)
            if lo < 0 or hi >= len(rows):  # numpy's min/max: no aten scalar read; empty: none
                # past the end: a bare IndexError; negative: another image's entry updated
                raise ConfigError(
                    f"instance_neighbour.update: targets.idx_{s} runs from {lo} to {hi}, "
                    f"outside the epoch's {len(rows)} "
                    f"{'visible' if s == 'v' else 'infrared'} images (0..{len(rows) - 1}); "
                    f"pass the batch images' indices in the epoch's lists given to reset()"
                )
            row = rows[at]
            mem = getattr(self, f"inst_{s}")
            glob.append((mem, all_gather_cat(feat.detach().to(mem.dtype)), row))
            if self.use_parts and self_key in outputs.parts:
                pm = getattr(self, f"part_{s}")
                xp = all_gather_cat(outputs.parts[self_key].detach().to(pm.dtype))
                part.append((pm, xp, row))
        momentum_update_many(glob, self.momentum)
        momentum_update_many(part, self.momentum)

    def _rows_of(self, s: str) -> torch.Tensor:
        """The image -> memory-row map of modality ``s`` on the host (a copy of the
        ``row_s`` buffer, made once per epoch), so that the updates' labels are host
        arrays."""
        buf = getattr(self, f"row_{s}")
        cached = self._host_rows.get(s)
        if cached is None or cached[0] is not buf:
            cached = (buf, buf.cpu())
            self._host_rows[s] = cached
        return cached[1]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        resize_buffers(
            self, state_dict, prefix, ("inst_v", "inst_r", "part_v", "part_r", "row_v", "row_r")
        )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
