"""Pairwise distances as the VI-ReID reference code computes them.

``squared_euclidean`` is the ``pairwise_distance`` / ``cal_distmat`` of the SALCR, MULT and
Cluster-Contrast evaluators (``|x|^2 + |y|^2 - 2 x.y``, not clamped). ``gram_symmetric``
computes ``x x^T`` with each off-diagonal tile once, so the result is exactly symmetric
and costs about 55-65% of the full product; ``self_distances`` does the same for the
squared distances of a set to itself (with each row's maximum), as k-reciprocal and CMRR
need them.
"""

from __future__ import annotations

import torch

__all__ = ["squared_euclidean", "squared_norms", "self_distances", "gram_symmetric"]


def _mirror_upper_(square: torch.Tensor) -> None:
    """Copy the strict upper triangle of a square (view) onto its lower one, in place. A
    GEMM's diagonal tile is not always exactly symmetric (MKL's AVX-512 kernels computed
    some (i, j) and (j, i) of one tile in other orders: 1 ulp apart)."""
    n = square.shape[0]
    if n > 1:
        r, c = torch.triu_indices(n, n, 1, device=square.device)
        square[c, r] = square[r, c]


def gram_symmetric(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(n, n) ``x x^T`` from upper tiles mirrored into the lower triangle (exactly symmetric).

    Args:
        x: (n, d) float tensor.
        out: (n, n) tensor of ``x``'s dtype to write into (e.g. a reused workspace).
    """
    n = x.shape[0]
    out = x.new_empty((n, n)) if out is None else out
    tile = max(256, -(-n // 8))
    for s in range(0, n, tile):
        e = min(n, s + tile)
        blk = x[s:e] @ x[s:].T
        _mirror_upper_(blk[:, : e - s])
        out[s:e, s:] = blk
        if e < n:
            out[e:, s:e] = blk[:, e - s :].T
    return out


def squared_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, m) ``||x_i||^2 + ||y_j||^2 - 2 x_i.y_j`` in the input dtype, not clamped.

    The reference ``pairwise_distance`` formula (``addmm_(x, y.T, beta=1, alpha=-2)``).
    """
    d = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :]
    return d.addmm_(x, y.T, beta=1, alpha=-2)


def squared_norms(x: torch.Tensor, rows: int = 128) -> torch.Tensor:
    """``(x * x).sum(1)`` a row block at a time (the same sums, no (n, d) temporary)."""
    parts = [(x[s : s + rows] * x[s : s + rows]).sum(1) for s in range(0, x.shape[0], rows)]
    return torch.cat(parts)


def self_distances(
    x: torch.Tensor, sq: torch.Tensor, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, m)``: the (n, n) squared distances of ``x`` to itself and their row maxima.

    Each entry is the reference's ``(|x_i|^2 + |x_j|^2) - 2 x_i.x_j`` (one ``addmm``, as
    its ``cal_distmat``; ``sq`` = the squared norms), computed for the tiles on and above
    the diagonal and mirrored, so ``d`` is exactly symmetric: the row maxima are the
    column maxima, and ``(d / column max)^T = d / row max`` bit for bit. Maxima that are
    0 are returned as 1 (CMRR leaves such rows unnormalised). ``out``: an (n, n) tensor
    of ``x``'s dtype to write ``d`` into (e.g. a reused workspace).
    """
    n = x.shape[0]
    d = x.new_empty((n, n)) if out is None else out
    m = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
    tile = max(256, -(-n // 12))  # about 54 % of a full product; larger tiles run no faster
    for s in range(0, n, tile):
        e = min(n, s + tile)
        blk = d[s:e, s:]
        torch.add(sq[s:e, None], sq[None, s:], out=blk)
        blk.addmm_(x[s:e], x[s:].T, beta=1, alpha=-2)
        _mirror_upper_(blk[:, : e - s])
        torch.maximum(m[s:e], blk.amax(1), out=m[s:e])
        if e < n:
            below = blk[:, e - s :]
            d[e:, s:e].copy_(below.T)
            torch.maximum(m[e:], below.amax(0), out=m[e:])
    return d, torch.where(m > 0, m, torch.ones_like(m))
