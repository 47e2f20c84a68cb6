"""APPROXIMATE k-NN by a two-level inverted file, in torch: the ``"ivf"`` backend of
:func:`uvireid.clustering.knn.knn`.

An inverted-file index (Jegou et al., "Product quantization for nearest neighbor search",
TPAMI 2011, Sec. IV; faiss' ``IndexIVFFlat``) splits the base set into cells by k-means
and compares each query only with the points of the few cells nearest to it. Here:

- **Small cells.** ``nlist ~ Nb / CELL`` cells of about :data:`CELL` (32) points, and each
  query scans its :data:`NPROBE` (16) nearest cells: about 512 points whatever the base
  size. On identity-clustered features small cells find more true neighbours per scanned
  point than the usual ``4 sqrt(Nb)`` cells of ``sqrt(Nb) / 4`` points.
- **A two-level quantizer.** Up to :data:`_DENSE_LEVEL` cells, a query scores every cell
  centroid (a flat quantizer). Beyond, ``nlist / GROUP`` coarse centroids each own about
  :data:`GROUP` (64) cells (k-means inside each coarse group); a query scores every coarse
  centroid (one matrix product), keeps its :data:`BEAM` (32) nearest, and takes its NPROBE
  cells among their ~2,000 children, a number that does not grow with Nb. Base points
  are put in the cell this same search finds for them, so queries and base agree on
  where a point lives.
- **Scans as matrix products.** Queries are grouped by probed cell (or coarse group), and
  each (queries of the cell) x (points of the cell) block is one matrix product merged
  into a running top-k: BLAS instead of one short scan per query, on the CPU or a GPU,
  without faiss.

Time about ``O((Nq + Nb) d (NPROBE CELL + BEAM GROUP + Nb / (CELL GROUP)))``: linear
but for the last term, the coarse scores (1/2,048 of an exact search); measured ``N^1.18``
from 100k to 1M, where exact search is ``N^2``. Training is
k-means on bounded samples (linear in Nb). The neighbours are those of the probed cells,
so some true neighbours are missed: measure the recall on your data
(``benchmarks/rerank_speed.py --compare-exact``). Rows whose probed cells hold fewer than
k points are searched exactly by the caller. Deterministic for a given input, seed,
device and thread count.
"""

from __future__ import annotations

import torch

__all__ = ["CELL", "NPROBE", "BEAM", "GROUP", "search"]

#: target points per cell
CELL = 32
#: cells scanned per query
NPROBE = 16
#: coarse nodes whose cells compete for a query's NPROBE probes, and cells per coarse node
BEAM = 32
GROUP = 64
#: k-means: Lloyd rounds and sample points per centroid
_ITERS = 8
_TRAIN_PER_CENTROID = 48
#: tree levels of at most this many nodes are scored in full (no beam)
_DENSE_LEVEL = 1024
#: rows per score block of the dense assignment steps
_ROWS = 16384


def _scores(x: torch.Tensor, c: torch.Tensor, metric: str, c_sq: torch.Tensor | None):
    """Larger is nearer: ``x.c`` for "ip", ``2 x.c - |c|^2`` (= -|x-c|^2 + |x|^2) for "l2"."""
    s = x @ c.T
    if metric == "l2":
        s.mul_(2.0).sub_(c_sq[None, :])
    return s


def _sq(c: torch.Tensor, metric: str) -> torch.Tensor | None:
    return (c * c).sum(1) if metric == "l2" else None


def _nearest(x: torch.Tensor, c: torch.Tensor, metric: str, k: int = 1) -> torch.Tensor:
    """(n, k) indices of the k nearest centroids of each row (blocked)."""
    c_sq = _sq(c, metric)
    k = min(k, c.shape[0])
    out = torch.empty((x.shape[0], k), dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], _ROWS):
        out[s : s + _ROWS] = _scores(x[s : s + _ROWS], c, metric, c_sq).topk(k, dim=1).indices
    return out


def _kmeans(x: torch.Tensor, n: int, metric: str, gen: torch.Generator) -> torch.Tensor:
    """(min(n, len(x)), d) centroids: Lloyd's k-means on a seeded sample of at most
    ``_TRAIN_PER_CENTROID * n`` rows, started from ``n`` sampled rows. "ip" keeps the
    centroids unit-norm (spherical k-means); an emptied cell keeps its centroid."""
    m = x.shape[0]
    n = max(1, min(n, m))
    perm = torch.randperm(m, generator=gen)
    sample = x[perm[: min(m, _TRAIN_PER_CENTROID * n)].to(x.device)]
    c = sample[:n].clone()
    if metric == "ip":
        c = torch.nn.functional.normalize(c, dim=1)
    for _ in range(_ITERS):
        a = _nearest(sample, c, metric).squeeze(1)
        sums = torch.zeros_like(c).index_add_(0, a, sample)
        cnt = torch.bincount(a, minlength=n)
        full = cnt > 0
        new = sums[full] / cnt[full, None].to(c.dtype)
        c[full] = torch.nn.functional.normalize(new, dim=1) if metric == "ip" else new
    return c


def _grouped_topk(
    xq: torch.Tensor,
    probes: torch.Tensor,
    items: torch.Tensor,
    item_group: torch.Tensor,
    n_groups: int,
    k: int,
    metric: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row, the k best items among the groups it probes.

    Args:
        xq: (Nq, d) queries; probes: (Nq, p) group ids (-1 = none).
        items: (Ni, d); item_group: (Ni,) group of each item.
        n_groups: number of groups; k: results per row.

    Returns:
        ``(scores, item indices)``, (Nq, k), in no particular order; -inf / -1 where a row's groups
        hold fewer than k items. One matrix product per group (its queries x its items).
    """
    dev = xq.device
    nq, p = probes.shape
    item_sq = _sq(items, metric)
    order = torch.argsort(item_group, stable=True)
    cnt = torch.bincount(item_group, minlength=n_groups)
    flat = probes.reshape(-1)
    qid = torch.arange(nq, device=dev).repeat_interleave(p)
    keep = flat >= 0
    flat, qid = flat[keep], qid[keep]
    qorder = torch.argsort(flat, stable=True)
    qid = qid[qorder]
    qcnt = torch.bincount(flat, minlength=n_groups)
    best_v = xq.new_full((nq, k), float("-inf"))
    best_i = torch.full((nq, k), -1, dtype=torch.long, device=dev)
    o = qo = 0
    for ni, nqc in zip(cnt.tolist(), qcnt.tolist()):
        if ni and nqc:
            qs = qid[qo : qo + nqc]
            its = order[o : o + ni]
            s = xq[qs] @ items[its].T
            if metric == "l2":
                s.mul_(2.0).sub_(item_sq[its][None, :])
            if ni > k:
                s, j = s.topk(k, dim=1, sorted=False)
                cand = its[j]
            else:
                cand = its[None, :].expand(nqc, ni)
            v = torch.cat([best_v[qs], s], 1)
            i = torch.cat([best_i[qs], cand], 1)
            v, j = v.topk(k, dim=1, sorted=False)
            best_v[qs], best_i[qs] = v, i.gather(1, j)
        o += ni
        qo += nqc
    return best_v, best_i


class _Index:
    """The quantizer (one level of cell centroids, or coarse centroids each with their
    own cells) and the cell of every base point."""

    def __init__(self, b: torch.Tensor, metric: str, seed: int):
        gen = torch.Generator().manual_seed(int(seed))
        self.metric = metric
        nb = b.shape[0]
        nlist = max(1, round(nb / CELL))
        depth = 1 if nlist <= _DENSE_LEVEL else 2
        self.levels: list[tuple[torch.Tensor, torch.Tensor]] = []  # (centroids, parent)
        node_of = torch.zeros(nb, dtype=torch.long, device=b.device)
        n_nodes = 1
        for level in range(depth):
            remaining = depth - level
            order = torch.argsort(node_of, stable=True)
            counts = torch.bincount(node_of, minlength=n_nodes).tolist()
            cents, parents = [], []
            new_node_of = torch.empty_like(node_of)
            start = offset = 0
            for v, m in enumerate(counts):
                if m == 0:
                    continue
                members = order[start : start + m]
                start += m
                # two levels: ~GROUP cells per coarse node, so that the BEAM nearest coarse
                # nodes hold a fixed number of candidate cells whatever the size
                want = max(1, round(m / CELL / (GROUP if remaining == 2 else 1)))
                c = _kmeans(b[members], want, metric, gen)
                new_node_of[members] = offset + _nearest(b[members], c, metric).squeeze(1)
                offset += c.shape[0]
                cents.append(c)
                parents.append(torch.full((c.shape[0],), v, dtype=torch.long, device=b.device))
            self.levels.append((torch.cat(cents), torch.cat(parents)))
            node_of, n_nodes = new_node_of, offset
        self.n_cells = n_nodes
        # each point in its nearest cell as the queries' search sees it (not the greedy
        # descent of the build; with a beam of 8 instead of BEAM the recall@10 at 100k
        # fell from 0.907 to 0.876), so that queries and base agree on where a point lives
        self.cell_of = self.probe(b, 1).squeeze(1)

    def probe(self, x: torch.Tensor, nprobe: int) -> torch.Tensor:
        """(n, nprobe) nearest cells of each row, through the BEAM nearest coarse nodes
        when there are two levels (-1 where there are fewer cells)."""
        probes = torch.zeros((x.shape[0], 1), dtype=torch.long, device=x.device)
        n_prev = 1
        for level, (cents, parent) in enumerate(self.levels):
            width = nprobe if level == len(self.levels) - 1 else BEAM
            if cents.shape[0] <= _DENSE_LEVEL:
                # few nodes: scoring them all is one product, cheaper than the grouped
                # search (and the beam of the level above is then not needed)
                probes = _nearest(x, cents, self.metric, width)
            else:
                _, probes = _grouped_topk(x, probes, cents, parent, n_prev, width, self.metric)
            n_prev = cents.shape[0]
        if probes.shape[1] < nprobe:
            pad = probes.new_full((probes.shape[0], nprobe - probes.shape[1]), -1)
            probes = torch.cat([probes, pad], 1)
        return probes


def search(
    q: torch.Tensor, b: torch.Tensor, k: int, metric: str, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """APPROXIMATE (Nq, k) neighbours of ``q`` among ``b``: ``(scores, indices)`` where the
    scores are inner products ("ip", largest first) or squared distances ("l2", smallest
    first), unordered among themselves (the caller sorts). k <= Nb."""
    index = _Index(b, metric, seed)
    probes = index.probe(q, NPROBE)
    vals, idx = _grouped_topk(q, probes, b, index.cell_of, index.n_cells, k, metric)
    if metric == "l2":  # back from 2 q.b - |b|^2 to |q - b|^2
        vals = ((q * q).sum(1, keepdim=True) - vals).clamp_(min=0)
    return vals, idx
