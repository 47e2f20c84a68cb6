"""Non-local blocks in a ResNet stage, as in the AGW backbone the VI-ReID peers fork.

A non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018, Eq. 1-2 with the
"dot product" pairwise function, ``f = theta^T phi / N``) adds to each position a sum
over all positions of the map::

    y_i = 1/N sum_j theta(x_i) phi(x_j) g(x_j),      z = x + BN(W y)

with ``theta``, ``phi``, ``g`` 1x1 convolutions to ``inter_channels`` channels, ``W`` a
1x1 convolution back to C, N = h w, and the BN zero-initialised so that a new block is
the identity (AGW, Ye et al., TPAMI 2021; ``shared/notes/peers.md`` Sec. 0.1: PGM's
``agw.py`` puts 2 after the last two blocks of layer2 and 3 after the last three of
layer3, "0,2,3,0"). AGW and its forks build them with ``inter_channels`` = ``reduc_ratio
// reduc_ratio`` = 1, which is the default here so that their checkpoints' shapes and
their results carry over; pass a larger value for the block of the paper (C / 2).

Because the dot-product form has no softmax, ``y = theta (phi^T g) / N`` is the same
sum computed in O(N c^2) instead of O(N^2 c) (c = ``inter_channels``): no N x N matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from uvireid.errors import ConfigError

__all__ = ["NonLocal", "StageWithNonLocal", "check_non_local"]


class NonLocal(nn.Module):
    """One dot-product non-local block with a residual connection (identity at init).

    Args:
        channels: C of the input map.
        inter_channels: channels of theta, phi and g (AGW: 1).
    """

    def __init__(self, channels: int, inter_channels: int = 1):
        super().__init__()
        self.inter_channels = int(inter_channels)
        self.theta = nn.Conv2d(channels, self.inter_channels, 1)
        self.phi = nn.Conv2d(channels, self.inter_channels, 1)
        self.g = nn.Conv2d(channels, self.inter_channels, 1)
        self.W = nn.Sequential(
            nn.Conv2d(self.inter_channels, channels, 1), nn.BatchNorm2d(channels)
        )
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        n = h * w
        theta = self.theta(x).flatten(2)  # (B, c, N)
        phi = self.phi(x).flatten(2)
        g = self.g(x).flatten(2)
        # y_i = sum_j (theta_i . phi_j) g_j / N = theta_i^T (sum_j phi_j g_j^T) / N
        ctx = torch.bmm(phi, g.transpose(1, 2)) / n  # (B, c, c)
        y = torch.bmm(ctx.transpose(1, 2), theta)  # (B, c, N)
        return x + self.W(y.view(b, self.inter_channels, h, w))


class StageWithNonLocal(nn.Module):
    """A ResNet stage (``nn.Sequential`` of blocks) with non-local blocks after its last
    ``len(blocks)`` residual blocks. The stage's own weights keep their names under
    ``stage.`` (``stage.2.conv1.weight``), the non-local blocks are ``non_local.0``..."""

    def __init__(self, stage: nn.Sequential, count: int, inter_channels: int = 1):
        super().__init__()
        self.stage = stage
        last = stage[-1]
        channels = (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features
        self.non_local = nn.ModuleList([NonLocal(channels, inter_channels) for _ in range(count)])
        self.first = len(stage) - count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.stage):
            x = block(x)
            if i >= self.first:
                x = self.non_local[i - self.first](x)
        return x


def check_non_local(counts: Sequence[int] | None, blocks: Sequence[int], arch: str) -> list[int]:
    """``counts`` (non-local blocks after the last blocks of layer1..layer4, AGW's
    "0,2,3,0") as a list of four ints, each at most its stage's block count; None ->
    none.

    Raises:
        ConfigError: naming the wrong entry and the stage's block count.
    """
    if counts is None:
        return [0, 0, 0, 0]
    if isinstance(counts, str) or not isinstance(counts, Sequence) or len(counts) != 4:
        raise ConfigError(
            f"backbone.non_local must be four counts, one per layer1..layer4 (AGW: "
            f"[0, 2, 3, 0]), got {counts!r}"
        )
    out = []
    for i, (c, n) in enumerate(zip(counts, blocks)):
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= n:
            raise ConfigError(
                f"backbone.non_local[{i}] (layer{i + 1}) must be an integer in 0..{n} "
                f"({arch}'s layer{i + 1} has {n} blocks), got {c!r}"
            )
        out.append(int(c))
    return out
