"""Pooling of feature maps into vectors.

GeM, generalised-mean pooling (Radenovic et al., TPAMI 2019), as the AGW/DCL two-stream
networks use it (``shared/notes/salcr_reference.md`` Sec. 3.2)::

    g_c = ( mean_{h,w} max(F_chw, eps)^p )^(1/p)

p = 1 is average pooling and p -> inf max pooling; the peers fix p = 3.
"""

from __future__ import annotations

import torch
from torch import nn


def gem(x: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """GeM of ``x``: (B, C, H, W) -> (B, C); ``p`` a float or a 0-d / (1,) tensor."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class GeM(nn.Module):
    """Generalised-mean pooling, (B, C, H, W) -> (B, C).

    Args:
        p: the exponent (3 as in AGW/DCL).
        learnable: learn ``p`` as a parameter (a buffer otherwise).
        eps: activations are clamped to at least ``eps`` before the power.
    """

    def __init__(self, p: float = 3.0, learnable: bool = False, eps: float = 1e-6):
        super().__init__()
        p_t = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(p_t)
        else:
            self.register_buffer("p", p_t)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        kind = "learnable" if isinstance(self.p, nn.Parameter) else "fixed"
        return f"p={float(self.p.detach()):.3g} ({kind}), eps={self.eps}"
