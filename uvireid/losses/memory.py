"""Cluster memory: momentum-updated, L2-normalised prototypes (Cluster-Contrast; SALCR Eq. 3, 7).

Sources: Cluster-Contrast (Dai et al., ACCV 2022) ``ClusterMemory``; SALCR (IJCV 2025)
Eq. 3 and 7; ``shared/notes/peers.md`` Sec. 0.3 and ``salcr_reference.md`` Sec. 5.2::

    M[k] = normalize(mean of the features of cluster k)            (epoch start)
    logits = normalize(x) M^T / tau                                (tau = 0.05)
    M[y] <- normalize(mu M[y] + (1 - mu) normalize(x))             (mu = 0.1, per sample)

``mu`` is the weight of the OLD prototype (the peers' ``momentum``; 0.1 means a new
sample gets weight 0.9). The update is explicit (:meth:`ClusterMemory.update`), called
by the engine after the optimiser step with the step's detached features, one sample
after the other in batch order, as the reference's backward does (or in a random order
of the batch, ``shuffle``: SALCR's cross-modality memories); the logits and their
gradient therefore see the memory as it was before the step (``shared/notes/peers.md``
Sec. 0.3). Where a reference calls one memory more than once per step (a DCL term per
visible view, MBCCM's agnostic memories, PGM's cross term), its in-place update inside
the backward moves the memory before the next call's backward, whose gradient then sees
the moved memory (for f^v in DCL the difference is as large as the gradient: audit R,
session 17); that is not reproduced. The updates themselves equal the reference's.
Under DDP the features and labels of every rank are gathered first, so every rank
applies the same updates and the memories stay identical.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uvireid.engine.distributed import all_gather_cat, gather_labels
from uvireid.errors import ConfigError

__all__ = [
    "ClusterMemory",
    "centroids",
    "check_loss_settings",
    "batch_permutation",
    "hardest_labels",
    "momentum_update",
    "momentum_update_many",
    "resize_buffers",
]


def centroids(feats: torch.Tensor, labels: np.ndarray | torch.Tensor, k: int) -> torch.Tensor:
    """(k, d) L2-normalised mean feature of each label 0..k-1 (-1 ignored; empty -> 0).

    Args:
        feats: (N, d) float features; labels: (N,) int, -1 = outlier.
    """
    arr = np.asarray(labels)
    if arr.shape != (feats.shape[0],):
        raise ConfigError(
            f"centroids: {feats.shape[0]} feature rows but labels of shape {arr.shape}; "
            f"give one label per row"
        )
    if arr.size and (arr.max() >= k or arr.min() < -1):
        raise ConfigError(
            f"centroids: labels range over {int(arr.min())}..{int(arr.max())} but there are "
            f"{k} clusters; labels are 0..{k - 1}, and -1 marks an outlier"
        )
    lab = torch.as_tensor(arr, device=feats.device).long()
    keep = lab >= 0
    sums = torch.zeros((k, feats.shape[1]), dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, lab[keep], feats[keep])
    return F.normalize(sums, dim=1)


def momentum_update(
    memory: torch.Tensor,
    feats: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    momentum: float,
    order: np.ndarray | None = None,
    method: str = "auto",
) -> None:
    """In place, sample by sample: ``M[y] <- normalize(mu M[y] + (1 - mu) normalize(x))``.

    Rows with label -1 are skipped. Sequential as in the reference (two samples of one
    label in a batch compound, in batch order), computed in rounds: the rows are grouped
    by label (batch order kept within a group) and round r updates the r-th row of every
    group at once, which gives the sequential result (to rounding: ``torch.lerp``) with as
    many steps as the most frequent label has rows. The grouping is index arithmetic on
    the host: with ``labels`` on the host (a CPU tensor or numpy array, as the trainer
    passes them) nothing is read back from the device and the update never waits; labels
    on a GPU are read back once. The indices reach the device in one copy, and round r
    touches only the groups that have an r-th row. ``memory`` may be (K, d) or (K, P, d)
    (one update per part, normalised over the last dimension), also a view such as
    ``(P, K, d).transpose(0, 1)``. ``order`` (host, a permutation of the rows): apply
    the rows in that sequence instead of batch order (the rows themselves are not
    moved). ``method``: how the rounds run (:func:`momentum_update_many`). Several
    memories at once: :func:`momentum_update_many`.
    """
    momentum_update_many([(memory, feats, labels, order)], momentum, method)


GRAM_MIN_ROUNDS = 4
"""``method="auto"`` takes the Gram path on CUDA from this many rounds on."""

METHODS = ("auto", "rounds", "gram")

GRAM_MAX_MOMENTUM = 1.0 / 3.0
"""``method="auto"`` takes the Gram path only up to this momentum: a coefficient can grow by
``mu / |2 mu - 1|`` a row, at most 1 when ``mu <= 1/3`` (audit BL, session 19: rows
opposing their prototype at mu = 0.5 cancelled the recursion's digits)."""

GRAM_MAX_COEF = 1e4
"""A Gram sequence whose coefficients pass this (or turn non-finite) has cancelled digits;
the call then runs the rounds instead."""


def _sequence_by_gram(xs: torch.Tensor, m: torch.Tensor, live: list[int], momentum: float) -> bool:
    """The rounds of :func:`momentum_update_many` with a constant number of kernels.

    Every state of a prototype is a combination ``M_t = sum_j c_j y_j`` of the vectors
    ``y = [M_0, x_1, ..., x_R]`` of its group, so the sequence needs only their Gram
    matrix ``G = y y^T``: with ``D = G c`` (the state's dot with each ``y_j``) and
    ``q = |M_t|^2``, row ``t + 1`` gives ``n^2 = mu^2 q + 2 mu (1 - mu) D_{t+1} + (1 - mu)^2
    G_{t+1,t+1}`` and ``c <- (mu c + (1 - mu) e_{t+1}) / max(n, 1e-12)`` (the same clamp as
    the rounds), D and q likewise. ``G`` is computed in float64 (no TF32), read back once
    (a wait for the device), the recursion runs on the host over arrays of (groups, R + 1),
    and one float64 product writes every final prototype: about ten kernels whatever the
    number of rounds, against four a round (Cluster-Contrast's ``ClusterMemory`` update
    is one sample at a time: ``shared/notes/peers.md`` Sec. 0.3). ``xs`` (U, R, ..., d) holds
    each group's rows in sequence, ``m`` (U, ..., d) the groups' prototypes, updated in
    place; group g takes part in round r when ``g < live[r]``. Returns False, with ``m``
    untouched, when a coefficient passes :data:`GRAM_MAX_COEF` (the combination would
    cancel digits: momentum above 1/3 with rows opposing their prototype, or a zero
    prototype taking zero rows); the caller then runs the rounds."""
    u, rounds, d = xs.shape[0], xs.shape[1], xs.shape[-1]
    y = torch.cat([m.unsqueeze(1), xs], 1).movedim(1, -2)  # (U, ..., R + 1, d)
    mid = y.shape[1:-2]
    y = y.reshape(-1, rounds + 1, d).double()
    per = y.shape[0] // max(u, 1)  # vectors per group (the parts of a part memory)
    g = torch.bmm(y, y.transpose(1, 2)).cpu().numpy()  # (V, R + 1, R + 1)
    a, b = float(momentum), 1.0 - float(momentum)
    c = np.zeros(g.shape[:2])
    c[:, 0] = 1.0
    dots = g[:, 0, :].copy()  # the state's dot with every y_j
    q = g[:, 0, 0].copy()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for r, live_r in enumerate(live):
            n, j = live_r * per, r + 1
            n2 = a * a * q[:n] + 2 * a * b * dots[:n, j] + b * b * g[:n, j, j]
            scale = 1.0 / np.maximum(np.sqrt(np.maximum(n2, 0.0)), 1e-12)
            c[:n] *= a
            c[:n, j] += b
            c[:n] *= scale[:, None]
            if not np.abs(c[:n]).max() <= GRAM_MAX_COEF:  # cancelling (or NaN): give up
                return False
            dots[:n] = (a * dots[:n] + b * g[:n, :, j]) * scale[:, None]
            q[:n] = n2 * scale * scale
    coef = torch.from_numpy(c).to(y.device)
    out = torch.bmm(coef.unsqueeze(1), y).reshape(u, *mid, d)
    m.copy_(out)
    return True


def momentum_update_many(updates: Sequence[tuple], momentum: float, method: str = "auto") -> None:
    """:func:`momentum_update` of several memories, ``[(memory, feats, labels), ...]``
    (or ``(memory, feats, labels, order)``: ``order`` as in :func:`momentum_update`),
    in one set of rounds: the same result as one call per memory (the memories are
    disjoint, so their sequences do not interact), with as many rounds as the most
    frequent label of any memory has rows instead of the sum over the memories. On a GPU
    each round is a few kernel launches whatever its size, so FGSAL's four part memories
    take 24 rounds instead of 72 at a batch of 8 labels x 4 images. The memories must
    share the device, the dtype and the shape of a row (``memory.shape[1:]``) and be
    distinct (a memory given twice would be updated as two copies, the second write
    winning: call twice for two passes over one memory).

    ``method``: ``"rounds"`` (four kernels a round), ``"gram"`` (the whole sequence from
    the rows' Gram matrices, about ten kernels and one read-back: :func:`_sequence_by_gram`;
    equal to the rounds to rounding; a call whose coefficients grow past
    :data:`GRAM_MAX_COEF` runs the rounds instead) or ``"auto"``: the Gram path on CUDA
    when the longest sequence has :data:`GRAM_MIN_ROUNDS` rows or more (a SALCR step's
    part memories take about 38 rounds, 150 launches the host queues at 10-25 us each)
    and the momentum is at most :data:`GRAM_MAX_MOMENTUM` (the recipes use 0.1 and 0.2);
    the rounds elsewhere (on a CPU a round costs what its arithmetic costs, and seeded
    CPU runs keep their results)."""
    if method not in METHODS:
        raise ValueError(f"momentum_update: method must be one of {METHODS}, got {method!r}")
    if not updates:
        return
    updates = [(*u, None) if len(u) == 3 else tuple(u) for u in updates]
    # an empty memory (a modality without clusters this epoch) takes no update; every
    # empty tensor has storage pointer 0, so it would look like a memory given twice
    updates = [u for u in updates if u[0].numel() > 0]
    if not updates:
        return
    first = updates[0][0]
    storages = [u[0].untyped_storage().data_ptr() for u in updates]
    if len(set(storages)) != len(storages):
        raise ValueError(
            "momentum_update_many: a memory appears twice (or two share storage); update "
            "one memory's two passes with two calls"
        )
    labs, seqs, offsets, total = [], [], [], 0
    for memory, feats, labels, order in updates:
        if memory.shape[1:] != first.shape[1:] or memory.dtype != first.dtype:
            raise ValueError(
                "momentum_update_many: the memories must share dtype and row shape, got "
                f"{tuple(first.shape)} {first.dtype} and {tuple(memory.shape)} {memory.dtype}"
            )
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()  # no wait when they are on the host
        lab = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(lab) != len(feats):
            raise ValueError(f"momentum_update: {len(feats)} feature rows but {len(lab)} labels")
        # the labels share one space below: a label past its memory's rows would update a
        # row of the next memory (audit GA, session 24)
        bad = lab[(lab < -1) | (lab >= memory.shape[0])]
        if bad.size:
            raise ValueError(
                f"momentum_update: label {int(bad[0])} is outside the memory's "
                f"{memory.shape[0]} rows (labels are 0..{memory.shape[0] - 1}, or -1 for an "
                "outlier that takes no update)"
            )
        labs.append(np.where(lab >= 0, lab + total, -1))  # one label space for all
        seq = np.arange(len(lab))  # each row's place in the sequence of updates
        if order is not None:
            order = np.asarray(order, dtype=np.int64)
            if not np.array_equal(np.sort(order), seq):
                raise ValueError(f"momentum_update: order must be a permutation of {len(lab)} rows")
            seq[order] = np.arange(len(lab))
        seqs.append(seq)
        offsets.append(total)
        total += int(memory.shape[0])
    lab = np.concatenate(labs)
    kept = np.flatnonzero(lab >= 0)
    if kept.size == 0:
        return
    seq = np.concatenate(seqs)
    order = kept[np.lexsort((seq[kept], lab[kept]))]  # by label, then update sequence
    uniq, start, counts = np.unique(lab[order], return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(uniq)), counts)
    slot = np.arange(len(order)) - start[group]  # a row's place within its label
    # the groups by decreasing size, so that round r updates a prefix of them
    by_size = np.argsort(-counts, kind="stable")
    rank_of = np.empty_like(by_size)
    rank_of[by_size] = np.arange(len(by_size))
    rounds = int(counts.max())
    live = [int((counts > r).sum()) for r in range(rounds)]  # groups in round r
    n, u = len(order), len(uniq)
    which = np.searchsorted(np.asarray(offsets), uniq, side="right") - 1  # memory of a label
    local = uniq - np.asarray(offsets)[which]
    used = np.unique(which)
    if len(used) == 1:  # the memory's rows gathered straight into the by-size order
        extra = [local[by_size]]
    else:  # memory by memory (uniq is sorted), then permuted to the by-size order
        extra = [local, by_size, rank_of]
    idx = torch.from_numpy(np.concatenate([order, rank_of[group], slot, *extra]))
    idx = idx.to(first.device, non_blocking=True)
    rows = idx[:n]
    feats = torch.cat([u[1].detach().to(first.dtype) for u in updates])
    x = F.normalize(feats[rows], dim=-1)
    xs = x.new_zeros((u, rounds, *x.shape[1:]))  # (U, R, ...) rows in batch order
    xs[idx[n : 2 * n], idx[2 * n : 3 * n]] = x
    if len(used) == 1:
        memory, targets = updates[int(used[0])][0], idx[3 * n :]
        m = memory[targets]
    else:
        split = [int((which == i).sum()) for i in used]
        targets = idx[3 * n : 3 * n + u].split(split)
        m = torch.cat([updates[int(i)][0][t] for i, t in zip(used, targets)])
        m = m[idx[3 * n + u : 3 * n + 2 * u]]  # by-size order
    if method == "auto":  # on a GPU each round is launches the host waits to queue
        gram = first.device.type == "cuda" and rounds >= GRAM_MIN_ROUNDS
        method = "gram" if gram and momentum <= GRAM_MAX_MOMENTUM else "rounds"
    if method != "gram" or not _sequence_by_gram(xs, m, live, momentum):
        for r, live_r in enumerate(live):
            row = torch.lerp(xs[:live_r, r], m[:live_r], momentum)  # mu M[y] + (1 - mu) x
            torch.div(row, row.norm(dim=-1, keepdim=True).clamp_(min=1e-12), out=m[:live_r])
    if len(used) == 1:
        memory[targets] = m
        return
    m = m[idx[3 * n + 2 * u :]]  # back to memory order
    for i, t, mi in zip(used, targets, m.split(split)):
        updates[int(i)][0][t] = mi


def check_loss_settings(who: str, **values: Any) -> None:
    """Range checks shared by the losses, made when a loss is built (so ``--dry-run`` and
    the start of a run refuse them): ``temperature > 0``, ``momentum`` in [0, 1], ``k`` and
    ``num_parts`` integers >= 1, weights (any other keyword) >= 0.

    Raises:
        ConfigError: naming the loss, the setting and its range.
    """
    from uvireid.rerank.inputs import check_k, check_positive, check_real

    for name, value in values.items():
        if name == "temperature":
            check_positive(value, name, who)
        elif name == "momentum":
            check_real(value, name, who, 0.0, 1.0)
        elif name in ("k", "num_parts"):
            check_k(value, name, who)
        else:
            check_real(value, name, who, 0.0)


def hardest_labels(memory: torch.Tensor, feats: torch.Tensor, labels: Any) -> torch.Tensor:
    """``labels`` (on the host) with every row but the hardest of each label set to -1: the
    row least similar (cosine) to its prototype ``memory[y]``, the first such row on a tie.

    The "hard" update of Cluster-Contrast's ``ClusterMemory(use_hard=True)``, which PGM's
    second stage uses (``shared/notes/peers.md`` Sec. 0.3: per class in the batch, only the
    instance with the LOWEST similarity to M[y]; the code calls it "median")."""
    lab = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    lab = lab.long().cpu()
    out = torch.full_like(lab, -1)
    keep = (lab >= 0).nonzero().squeeze(1)
    if keep.numel() == 0:
        return out
    y = lab[keep].to(feats.device)
    sims = (F.normalize(feats[keep.to(feats.device)].to(memory.dtype), dim=1) * memory[y]).sum(1)
    k = int(memory.shape[0])
    low = torch.full((k,), float("inf"), dtype=sims.dtype, device=sims.device)
    low.scatter_reduce_(0, y, sims, reduce="amin")
    rows = torch.arange(len(y), device=sims.device)
    at_min = torch.where(sims == low[y], rows, torch.full_like(rows, len(y)))
    first = torch.full((k,), len(y), dtype=rows.dtype, device=sims.device)
    first.scatter_reduce_(0, y, at_min, reduce="amin")
    chosen = first[first < len(y)].cpu()
    out[keep[chosen]] = lab[keep[chosen]]
    return out


def batch_permutation(labels: Any) -> np.ndarray:
    """A pseudo-random permutation of a batch's rows, drawn from a generator seeded by
    the bytes of its (gathered) labels: the same on every DDP rank and again after a
    resume, with no generator state to save; different batches draw different orders."""
    lab = np.ascontiguousarray(
        labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels),
        dtype=np.int64,
    )
    return np.random.default_rng(zlib.crc32(lab.tobytes())).permutation(len(lab))


def resize_buffers(module: nn.Module, state_dict: dict, prefix: str, names) -> None:
    """Give each buffer ``names`` of ``module`` that ``state_dict`` holds the saved shape
    and dtype, on the module's own device (a memory's size is the cluster count of the
    saved epoch; checkpoints are read onto the CPU, and a CUDA module stays on CUDA), so
    that ``load_state_dict`` can copy into it. Call from ``_load_from_state_dict``."""
    for name in names:
        key = prefix + name
        if key in state_dict:
            device = getattr(module, name).device
            setattr(module, name, torch.empty_like(state_dict[key], device=device))


class ClusterMemory(nn.Module):
    """K prototypes of dimension d with the cluster-contrast logits and momentum update.

    Args:
        dim: feature dimension d.
        temperature: tau (0.05).
        momentum: mu, the weight of the old prototype (0.1).
        hard: update each prototype with only the batch's hardest row of its cluster
            (:func:`hardest_labels`; PGM's second stage), instead of every row in turn.
        shuffle: update in a random order of the batch (:func:`batch_permutation`), not
            in batch order. With ``momentum`` 0.1 the last row of a label takes 0.9 of its
            prototype, so batch order lets the rows stacked last (in SALCR's stage 2, the
            infrared rows of the visible memory) dominate; the official SALCR memories of
            the cross-modality stage update in a random permutation
            (``shared/notes/salcr_reference.md`` Sec. 5.2).

    The prototypes are a buffer (saved in checkpoints; its size follows the epoch's
    cluster count and is restored from a checkpoint whatever it was at construction).
    """

    def __init__(
        self,
        dim: int = 0,
        temperature: float = 0.05,
        momentum: float = 0.1,
        hard: bool = False,
        shuffle: bool = False,
    ):
        super().__init__()
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.hard = bool(hard)
        self.shuffle = bool(shuffle)
        self.register_buffer("features", torch.zeros(0, dim))

    @property
    def num_clusters(self) -> int:
        return int(self.features.shape[0])

    @torch.no_grad()
    def reset(self, feats: torch.Tensor, labels: np.ndarray, k: int) -> None:
        """Prototypes = normalised centroids of ``labels`` 0..k-1 of ``feats`` (N, d)."""
        self.features = centroids(feats.detach(), labels, int(k))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K) ``normalize(x) M^T / tau``; the gradient flows into ``x`` only."""
        return F.normalize(x, dim=1) @ self.features.detach().to(x.dtype).T / self.temperature

    @torch.no_grad()
    def update(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Explicit momentum update with (B, d) ``feats`` and (B,) ``labels`` (-1 skipped),
        gathered from every rank first under DDP."""
        ClusterMemory.update_together((self, feats, labels))

    @staticmethod
    @torch.no_grad()
    def update_together(*items: tuple[ClusterMemory, torch.Tensor, torch.Tensor]) -> None:
        """``memory.update(feats, labels)`` for each ``(memory, feats, labels)``, with one
        set of rounds for the memories of one momentum (:func:`momentum_update_many`)."""
        by_momentum: dict[float, list] = {}
        # under DDP each distinct tensor is gathered once, however many memories it updates
        # (the items hold references, so ids are stable for the call)
        feats_of: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        labels_of: dict[int, torch.Tensor] = {}
        for memory, feats, labels in items:
            key = (id(feats), memory.features.dtype)
            if key not in feats_of:
                feats_of[key] = all_gather_cat(feats.detach().to(memory.features.dtype))
            gathered = feats_of[key]
            if id(labels) not in labels_of:
                labels_of[id(labels)] = gather_labels(labels, gathered.device)
            use = labels_of[id(labels)]
            if memory.hard:
                use = hardest_labels(memory.features, gathered, use)
            order = batch_permutation(use) if memory.shuffle else None
            by_momentum.setdefault(memory.momentum, []).append(
                (memory.features, gathered, use, order)
            )
        for momentum, updates in by_momentum.items():
            momentum_update_many(updates, momentum)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        resize_buffers(self, state_dict, prefix, ("features",))  # the saved epoch's count
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"clusters={self.num_clusters}, temperature={self.temperature}, "
            f"momentum={self.momentum}"
        )
