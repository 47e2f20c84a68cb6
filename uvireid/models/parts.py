"""FGSAL's part-query module: instance-adaptive queries and query-guided attention.

SALCR (IJCV 2025) Sec. 3.4, Eq. 9-11 (``shared/notes/salcr_reference.md`` Sec. 6.1-6.3).
The last feature map F (B, C, h, w) is flattened row-major to (B, hw, C) and cut into P
horizontal stripes of ``m = floor(hw / P)`` pixels (the official code's floor division;
the paper writes a ceiling). For learnable part tokens pi_p (P, C)::

    A_j = sigmoid(<pi_p, F_j>),     q_p = sum_j A_j F_j / sum_j A_j      (Eq. 9, per stripe)
    a_j = softmax_j(<q_p, G_j> / sqrt(C)),   part_p = sum_j a_j G_j      (Eq. 10-11)

where G is stripe p of ANY image's map: the image's own (self part) or its paired image's
(cross part). No projections, no multi-head attention, as in the paper and the code. The
P parts are flattened to (B, P*C) and pass a BN neck (bias frozen), once per group of
rows as the official code does (self parts; queries on the infrared/visible partner;
queries on the channel-augmented partner), then reshaped to (B, P, C).

Parameters: P*C tokens and 2*P*C BN weights (18.4k for ResNet-50, P = 3). The paper's
"+0.35 M" counts a never-used positional embedding of the official code (spec §6.1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PartQuery", "stripes", "part_queries", "query_attention", "query_attention_many"]

#: the nine (query image, map image) pairs FGSAL and GPCR use; v visible, a its CA view,
#: r infrared; grouped by BN pass as in the official code
PASSES = (
    (("v", "v"), ("a", "a"), ("r", "r")),
    (("v", "r"), ("a", "r"), ("r", "v")),
    (("v", "a"), ("a", "v"), ("r", "a")),
)


def stripes(fmap: torch.Tensor, num_parts: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, P, m, C): P row-major stripes of m = floor(hw / P) pixels."""
    b, c, h, w = fmap.shape
    m = (h * w) // num_parts
    if m == 0:
        raise ValueError(f"a {h}x{w} feature map has fewer pixels than {num_parts} parts")
    flat = fmap.flatten(2).transpose(1, 2)  # (B, hw, C)
    return flat[:, : m * num_parts].reshape(b, num_parts, m, c)


def part_queries(fmap_stripes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Eq. 9: (B, P, m, C) stripes, (P, C) tokens -> (B, P, C) sigmoid-weighted means.

    The weights ``A_j / sum_j A_j`` (``A_j = sigmoid(l_j)``) are computed as
    ``softmax_j(log sigmoid(l_j))``, the same ratio for every finite logit, without the
    sum ever underflowing: a stripe whose logits are all very negative (float32 sigmoids
    below 1e-12 from l < -27.6, exactly 0 below about -104) still gets the weighted mean
    of its pixels, neither a query shrunk towards 0 nor 0 / 0.
    """
    logits = torch.einsum("bpmc,pc->bpm", fmap_stripes, tokens)
    # a logit of -inf (an overflow) is the most negative finite one: a stripe of them all
    # gets the plain mean, not softmax's 0 / 0
    log_a = torch.nn.functional.logsigmoid(logits).clamp_min(torch.finfo(logits.dtype).min)
    weights = torch.softmax(log_a, dim=2)
    return (weights[..., None] * fmap_stripes).sum(2)


def query_attention(queries: torch.Tensor, fmap_stripes: torch.Tensor) -> torch.Tensor:
    """Eq. 10-11: (B, P, C) queries on (B, P, m, C) stripes -> (B, P, C) parts."""
    return query_attention_many(queries[None], fmap_stripes)[0]


def query_attention_many(queries: torch.Tensor, fmap_stripes: torch.Tensor) -> torch.Tensor:
    """:func:`query_attention` of Q sets of queries on the same stripes: (Q, B, P, C)
    queries, (B, P, m, C) stripes -> (Q, B, P, C), without repeating the stripes."""
    c = queries.shape[-1]
    scores = torch.einsum("qbpc,bpmc->qbpm", queries, fmap_stripes) / math.sqrt(c)
    return torch.einsum("qbpm,bpmc->qbpc", torch.softmax(scores, -1), fmap_stripes)


class PartQuery(nn.Module):
    """Part tokens and the BN neck of the part features (FGSAL).

    Args:
        dim: channels C of the backbone's last feature map.
        num_parts: P (3).
    """

    def __init__(self, dim: int, num_parts: int = 3):
        super().__init__()
        from uvireid.rerank.inputs import check_k

        # the losses' own check of num_parts: 0 failed at the first batch, 1.5 became 1
        # part (audit OF)
        self.num_parts = check_k(num_parts, "num_parts", "PartQuery")
        self.tokens = nn.Parameter(torch.empty(self.num_parts, dim))
        nn.init.kaiming_normal_(self.tokens, a=0, mode="fan_in")  # std sqrt(2 / C)
        self.neck = nn.BatchNorm1d(self.num_parts * dim)
        nn.init.normal_(self.neck.weight, 1.0, 0.01)
        nn.init.zeros_(self.neck.bias)
        self.neck.bias.requires_grad_(False)

    def _bn(self, parts: torch.Tensor) -> torch.Tensor:
        b, p, c = parts.shape
        return self.neck(parts.reshape(b, p * c)).reshape(b, p, c)

    def pairs(
        self, fmap_v: torch.Tensor, fmap_a: torch.Tensor, fmap_r: torch.Tensor
    ) -> dict[tuple[str, str], torch.Tensor]:
        """All nine (query, map) part features of a paired batch, (S, P, C) each.

        ``fmap_v``, ``fmap_a``, ``fmap_r``: (S, C, h, w) maps of the visible images, their
        channel-augmented views and the paired infrared images (row n = pair n).
        """
        maps = ("v", "a", "r")
        st = {k: stripes(f, self.num_parts) for k, f in zip(maps, (fmap_v, fmap_a, fmap_r))}
        tokens = self.tokens.to(st["v"].dtype)
        queries = torch.stack([part_queries(st[k], tokens) for k in maps])  # (3, S, P, C)
        # each map attended by the three images' queries in one pass, the stripes read in
        # place (not copied once per query image: 9 x the maps' memory at 288x144)
        raw = {}
        for b in maps:
            att = query_attention_many(queries, st[b])  # (3, S, P, C)
            raw.update({(a, b): att[i] for i, a in enumerate(maps)})
        # BN per group of three pairs, as the official code
        out: dict[tuple[str, str], torch.Tensor] = {}
        for group in PASSES:
            rows = self._bn(torch.cat([raw[pair] for pair in group]))
            out.update(dict(zip(group, rows.chunk(len(group)))))
        return out

    @torch.no_grad()
    def self_parts(self, fmap: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(N, C, h, w) -> (N, P, C) self parts after the part BN (eval mode),
        L2-normalised each (``normalize=False``: as the BN gives them)."""
        was = self.training
        self.eval()
        try:
            st = stripes(fmap, self.num_parts)
            parts = self._bn(query_attention(part_queries(st, self.tokens.to(st.dtype)), st))
        finally:
            self.train(was)
        return F.normalize(parts.float(), dim=-1) if normalize else parts.float()
