"""Deliberately naive re-statements of the loss equations (loops over rows, float64).

Written from the papers' equations, not from the code under test.
"""

from __future__ import annotations

import math

import torch


def nce_row(x: torch.Tensor, memory: torch.Tensor, y: int, tau: float) -> torch.Tensor:
    """SALCR Eq. 1-2 for one row: -log exp(<x^, M_y>/tau) / sum_k exp(<x^, M_k>/tau)."""
    norm = torch.sqrt(sum(v * v for v in x))
    xh = [v / norm for v in x]
    scores = []
    for k in range(memory.shape[0]):
        s = sum(xh[j] * float(memory[k, j]) for j in range(len(xh)))
        scores.append(s / tau)
    denom = sum(torch.exp(s) for s in scores)
    return -torch.log(torch.exp(scores[y]) / denom)


def nce_mean(xs: torch.Tensor, memory: torch.Tensor, ys: list[int], tau: float) -> torch.Tensor:
    """Mean of :func:`nce_row` over the rows whose label is >= 0."""
    rows = [nce_row(xs[i], memory, y, tau) for i, y in enumerate(ys) if y >= 0]
    return sum(rows) / len(rows)


def momentum_loop(memory, feats, labels, mu):
    """Eq. 7 sample by sample: M_y <- (mu M_y + (1 - mu) x^) / ||.||, as nested lists."""
    mem = [list(map(float, row)) for row in memory]
    for x, y in zip(feats, labels):
        y = int(y)
        if y < 0:
            continue
        n = math.sqrt(sum(float(v) ** 2 for v in x))
        row = [mu * mem[y][j] + (1 - mu) * float(x[j]) / n for j in range(len(x))]
        rn = math.sqrt(sum(v * v for v in row))
        mem[y] = [v / rn for v in row]
    return torch.tensor(mem, dtype=torch.float64)


def centroid_loop(feats, labels, k):
    """Normalised plain mean of the features of each label 0..k-1 (zeros when empty)."""
    out = []
    for c in range(k):
        members = [feats[i] for i in range(len(labels)) if labels[i] == c]
        if not members:
            out.append(torch.zeros_like(feats[0]))
            continue
        mean = sum(members) / len(members)
        out.append(mean / mean.norm())
    return torch.stack(out)


def softmax_row(scores):
    m = max(float(s.detach()) for s in scores)
    ex = [torch.exp(s - m) for s in scores]
    tot = sum(ex)
    return [e / tot for e in ex]


def topk_set(scores, k):
    """Indices of the k largest scores (a set), by sorting the whole row."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i].detach()))
    return set(order[:k])


def scores_row(z, memory, tau):
    """<normalize(z), M_i> / tau for every memory row i (a list of 0-dim tensors)."""
    norm = torch.sqrt(sum(v * v for v in z))
    return [
        sum(z[j] / norm * float(memory[i, j]) for j in range(len(z))) / tau
        for i in range(memory.shape[0])
    ]


def neighbour_nll(z, memory, positives, tau):
    """Eq. 18/24 for one row: -log sum_{i in P} softmax(<z^, I_i>/tau)."""
    p = softmax_row(scores_row(z, memory, tau))
    return -torch.log(sum(p[i] for i in sorted(positives)))


def part_queries_loop(fmap, tokens):
    """Eq. 9 with loops: fmap (B, C, h, w) -> stripes and (B, P, C) queries."""
    b, c, h, w = fmap.shape
    p_num = tokens.shape[0]
    m = (h * w) // p_num
    pixels = [[fmap[i, :, j // w, j % w] for j in range(h * w)] for i in range(b)]
    stripes = [[pixels[i][p * m : (p + 1) * m] for p in range(p_num)] for i in range(b)]
    queries = []
    for i in range(b):
        qi = []
        for p in range(p_num):
            weights = [torch.sigmoid((tokens[p] * f).sum()) for f in stripes[i][p]]
            qi.append(sum(a * f for a, f in zip(weights, stripes[i][p])) / sum(weights))
        queries.append(torch.stack(qi))
    return stripes, torch.stack(queries)


def attention_loop(query, stripe):
    """Eq. 10-11 for one (query (C,), stripe [m x (C,)]): softmax(<q, g>/sqrt(C)) pooling."""
    c = query.shape[0]
    scores = [(query * g).sum() / math.sqrt(c) for g in stripe]
    a = softmax_row(scores)
    return sum(ai * g for ai, g in zip(a, stripe))


def unit_rows(*shape, seed=0):
    """Seeded float64 random rows of norm 1 (the last dimension normalised): test inputs."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(
        torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1
    )


def partner_context(fv, fr, init_v, init_r, v2r, r2v, epoch=0):
    """An EpochContext whose cross labels map each cluster through ``v2r`` / ``r2v``
    (dicts that also map -1 to -1); the label spaces are the clusters 0..max."""
    import numpy as np

    from uvireid.losses import EpochContext

    return EpochContext(
        feats_v=fv,
        feats_r=fr,
        vis_in_v=init_v,
        vis_in_r=np.array([v2r[y] for y in init_v]),
        ir_in_r=init_r,
        ir_in_v=np.array([r2v[y] for y in init_r]),
        init_v=init_v,
        init_r=init_r,
        num_v=int(init_v.max()) + 1,
        num_r=int(init_r.max()) + 1,
        epoch=epoch,
    )


#: the GPCR query maps: visible, its channel-augmented view, infrared
GPCR_MAPS = "var"


def global_sets(out, memory, k, with_ca, tau):
    """Per query map, each row's top-k set in ``memory`` (Eq. 16), and per row their
    intersection across the modalities (Eq. 17; with the CA row when ``with_ca``)."""
    s = len(out.feat_v)
    sets = {}
    for name, f in (("v", out.feat_v), ("a", out.feat_a), ("r", out.feat_r)):
        sets[name] = [topk_set(scores_row(f[n], memory, tau), k) for n in range(s)]
    inter = []
    for n in range(s):
        pn = sets["v"][n] & sets["r"][n]
        if with_ca:
            pn &= sets["a"][n]
        inter.append(pn)
    return sets, inter


def mean_nll(rows):
    """The mean of the rows that have a positive set (None: left out); 0 without any."""
    rows = [r for r in rows if r is not None]
    return sum(rows) / len(rows) if rows else 0


def gpcr_loop(memories, out, k, num_parts, tau, with_ca=False):
    """Eq. 16-27: the global cross-modality intersection and the part mutual correction
    over the nine (query, map) rows, for both memories. ``memories``: a loss (its
    ``inst_v``, ``part_v``, ... attributes) or a dict of them."""

    def memory(name):
        return memories[name] if isinstance(memories, dict) else getattr(memories, name)

    total = 0
    for s in ("v", "r"):
        inst = memory(f"inst_{s}")
        sets, inter = global_sets(out, inst, k, with_ca, tau)
        rows = []
        for f in (out.feat_v, out.feat_a, out.feat_r):
            for n in range(len(f)):
                rows.append(neighbour_nll(f[n], inst, inter[n], tau) if inter[n] else None)
        total = total + mean_nll(rows)
        part_mem = memory(f"part_{s}")
        part_total = 0
        for p in range(num_parts):
            mem = part_mem[:, p]
            nbr = {
                (q, m): [
                    topk_set(scores_row(out.parts[q, m][n, p], mem, tau), k)
                    for n in range(len(out.feat_v))
                ]
                for q in GPCR_MAPS
                for m in GPCR_MAPS
            }
            rows = []
            for q in GPCR_MAPS:
                for m in GPCR_MAPS:
                    y1, y2 = [o for o in GPCR_MAPS if o != m]
                    for n in range(len(out.feat_v)):
                        pos = (nbr[q, y1][n] | nbr[q, y2][n]) & sets[q][n]
                        x = out.parts[q, m][n, p]
                        rows.append(neighbour_nll(x, mem, pos, tau) if pos else None)
            part_total = part_total + mean_nll(rows)
        total = total + part_total / num_parts
    return total
