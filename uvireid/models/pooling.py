"""Pooling of feature maps into vectors.

GeM, generalised-mean pooling (Radenovic et al., TPAMI 2019), as the AGW/DCL two-stream
networks use it (``shared/notes/salcr_reference.md`` Sec. 3.2)::

    g_c = ( mean_{h,w} max(F_chw, eps)^p )^(1/p)

p = 1 is average pooling and p -> inf max pooling; the peers fix p = 3.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A fixed ``p`` is a setting, not a weight: loading a checkpoint keeps the one this
        module was built with (``backbone.gem_p``), so a run's weights pooled with another
        exponent use the recipe's, as its config records (it was silently the
        checkpoint's: audit BS, session 19). A learnable ``p`` loads as a weight."""
        key = prefix + "p"
        if not isinstance(self.p, nn.Parameter) and key in state_dict:
            saved = state_dict[key]
            if isinstance(saved, torch.Tensor) and saved.shape == self.p.shape:
                if not torch.equal(saved.to(self.p.device, self.p.dtype), self.p):
                    # a learnt p is saved under the same key (audit BT): say so loudly
                    logger.warning(
                        "GeM: p=%.3g as set (backbone.gem_p), not the checkpoint's %.3g; if "
                        "that run learnt p (backbone.gem_learnable: true), build with "
                        "gem_learnable: true to load it",
                        float(self.p),
                        float(saved.float()),
                    )
                state_dict = dict(state_dict)
                state_dict[key] = self.p.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        kind = "learnable" if isinstance(self.p, nn.Parameter) else "fixed"
        return f"p={float(self.p.detach()):.3g} ({kind}), eps={self.eps}"
