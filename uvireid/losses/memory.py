"""Cluster memory: momentum-updated, L2-normalised prototypes (Cluster-Contrast; SALCR Eq. 3, 7).

Sources: Cluster-Contrast (Dai et al., ACCV 2022) ``ClusterMemory``; SALCR (IJCV 2025)
Eq. 3 and 7; ``shared/notes/peers.md`` Sec. 0.3 and ``salcr_reference.md`` Sec. 5.2::

    M[k] = normalize(mean of the features of cluster k)            (epoch start)
    logits = normalize(x) M^T / tau                                (tau = 0.05)
    M[y] <- normalize(mu M[y] + (1 - mu) normalize(x))             (mu = 0.1, per sample)

``mu`` is the weight of the OLD prototype (the peers' ``momentum``; 0.1 means a new
sample gets weight 0.9). The update is explicit (:meth:`ClusterMemory.update`), called
by the engine after the optimiser step with the step's detached features, one sample
after the other in batch order, as the reference's backward does; the logits and their
gradient therefore see the memory as it was before the step, as in the reference.
Under DDP the features and labels of every rank are gathered first, so every rank
applies the same updates and the memories stay identical.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uvireid.engine.distributed import all_gather_cat

__all__ = ["ClusterMemory", "centroids", "momentum_update"]


def centroids(feats: torch.Tensor, labels: np.ndarray | torch.Tensor, k: int) -> torch.Tensor:
    """(k, d) L2-normalised mean feature of each label 0..k-1 (-1 ignored; empty -> 0).

    Args:
        feats: (N, d) float features; labels: (N,) int, -1 = outlier.
    """
    lab = torch.as_tensor(np.asarray(labels), device=feats.device).long()
    keep = lab >= 0
    sums = torch.zeros((k, feats.shape[1]), dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, lab[keep], feats[keep])
    return F.normalize(sums, dim=1)


def momentum_update(
    memory: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, momentum: float
) -> None:
    """In place, sample by sample: ``M[y] <- normalize(mu M[y] + (1 - mu) normalize(x))``.

    Rows with label -1 are skipped. Sequential as in the reference (two samples of one
    label in a batch compound, in batch order), computed in rounds: the rows are grouped
    by label (batch order kept within a group) and round r updates the r-th row of every
    group at once, which gives the sequential result (to rounding: ``torch.lerp``) with as
    many steps as the most frequent label has rows. The groups' sizes are the only values
    read back from the device (one synchronisation per call on a GPU, whatever the batch;
    the rounds themselves never wait, and round r touches only the groups that have an
    r-th row). ``memory`` may be (K, d) or (K, P, d) (one update per part,
    normalised over the last dimension), also a view such as ``(P, K, d).transpose(0, 1)``.
    """
    labels = labels.to(memory.device).long()
    order = torch.sort(labels, stable=True).indices  # -1 first, batch order within a label
    y = labels[order]
    uniq, counts = torch.unique_consecutive(y, return_counts=True)
    if len(uniq) == 0:
        return
    # one read-back: the first label (-1 or not) and the group sizes
    meta = torch.cat([uniq[:1], counts]).tolist()
    skip = meta[1] if meta[0] < 0 else 0  # the outliers sort first: their rows are dropped
    sizes = meta[2:] if skip else meta[1:]
    if not sizes:
        return
    rounds = max(sizes)
    start = counts.cumsum(0) - counts
    group = torch.repeat_interleave(
        torch.arange(len(uniq), device=y.device), counts, output_size=len(y)
    )
    slot = (torch.arange(len(y), device=y.device) - start[group])[skip:]
    group = group[skip:] - (1 if skip else 0)
    uniq, counts = (uniq[1:], counts[1:]) if skip else (uniq, counts)
    # the groups by decreasing size (on the device: nothing to wait for), so that round r
    # updates a prefix of them, whose length the sizes read back above give
    by_size = torch.sort(counts, descending=True, stable=True).indices
    rank_of = torch.empty_like(by_size)
    rank_of[by_size] = torch.arange(len(by_size), device=by_size.device)
    x = F.normalize(feats.detach().to(memory.dtype)[order[skip:]], dim=-1)
    xs = x.new_zeros((len(uniq), rounds, *x.shape[1:]))  # (U, R, ...) rows in batch order
    xs[rank_of[group], slot] = x
    uniq = uniq[by_size]
    live = [sum(1 for c in sizes if c > r) for r in range(rounds)]  # groups in round r
    m = memory[uniq]
    for r, n in enumerate(live):
        row = torch.lerp(xs[:n, r], m[:n], momentum)  # mu M[y] + (1 - mu) x
        torch.div(row, row.norm(dim=-1, keepdim=True).clamp_(min=1e-12), out=m[:n])
    memory[uniq] = m


class ClusterMemory(nn.Module):
    """K prototypes of dimension d with the cluster-contrast logits and momentum update.

    Args:
        dim: feature dimension d.
        temperature: tau (0.05).
        momentum: mu, the weight of the old prototype (0.1).

    The prototypes are a buffer (saved in checkpoints; its size follows the epoch's
    cluster count and is restored from a checkpoint whatever it was at construction).
    """

    def __init__(self, dim: int = 0, temperature: float = 0.05, momentum: float = 0.1):
        super().__init__()
        self.temperature = float(temperature)
        self.momentum = float(momentum)
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
        feats = all_gather_cat(feats.detach().to(self.features.dtype))
        labels = all_gather_cat(labels.to(feats.device).long())
        momentum_update(self.features, feats, labels, self.momentum)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "features"
        if key in state_dict:  # the cluster count of the saved epoch
            self.features = torch.empty_like(state_dict[key], device=self.features.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"clusters={self.num_clusters}, temperature={self.temperature}, "
            f"momentum={self.momentum}"
        )
