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
  each (queries of the cell) x (points of the cell) block is one matrix product written
  into a per-row candidate buffer, with one top-k per row at the end: BLAS instead of one
  short scan per query, on the CPU or a GPU, without faiss.

Time about ``O((Nq + Nb) d (NPROBE CELL + BEAM GROUP + Nb / (CELL GROUP)))`` with two
levels (``O((Nq + Nb) d (NPROBE CELL + Nb / CELL))`` with one): each query scores 512
points of its cells, but first ~2,000 cell and ``Nb / 2,048`` coarse centroids to choose
them, so the quantizer is most of the arithmetic. Measured ``N^1.19`` from 100k to 1M
(CMFP, ``benchmarks/RESULTS.md``), where exact search is ``N^2``: the coarse term grows,
and an index passing 1,024 cells (32k points) moves from one level to two, whose
~2,000 children cost more per query than a small flat quantizer. Training is
k-means on bounded samples (linear in Nb). The neighbours are those of the probed cells,
so some true neighbours are missed: measure the recall on your data
(``benchmarks/rerank_speed.py --compare-exact``). Rows whose probed cells hold fewer than
k points are searched exactly by the caller. Deterministic for a given input, seed,
device and thread count. Ties are not broken as the exact search breaks them (equal
scores to the lower index): each cell is scored in its own matrix product, so exact
duplicates may score an ulp apart and rank in either order, even with every cell probed.
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
#: bytes of the candidate buffer of one block of rows: the search of the cells (few
#: groups, many rows each) and the final scan (one group per cell)
_BEAM_BUFFER_BYTES = 64 * 2**20
_SCAN_BUFFER_BYTES = 512 * 2**20
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


def _children_topk(
    x: torch.Tensor,
    probes: torch.Tensor,
    items: torch.Tensor,
    parent: torch.Tensor,
    n_groups: int,
    k: int,
    metric: str,
    buffer_bytes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row, the k best items among the groups it probes.

    Args:
        x: (Nq, d) queries; probes: (Nq, p) group ids (-1 = none).
        items: (Ni, d), stored group after group: ``parent`` (Ni,) is sorted.
        n_groups: number of groups; k: results per row.
        buffer_bytes: size of the candidate buffer, which sets the rows per block.

    Returns:
        ``(scores, item indices)``, (Nq, k), best first; -inf / -1 where a row's groups
        hold fewer than k items. Scores are ``x.item`` ("ip") or ``2 x.item - |item|^2``
        ("l2"). For a block of rows, each probed group's (its rows x its items) scores are
        one matrix product written into a (rows, p * widest group) buffer, and one top-k
        per row picks the best: no per-group merging.
    """
    dev = x.device
    nq, p = probes.shape
    cnt = torch.bincount(parent, minlength=n_groups)
    start = torch.cumsum(cnt, 0) - cnt
    width = max(1, int(cnt.max()))
    item_sq = _sq(items, metric)
    rows = max(1, min(nq, buffer_bytes // (p * width * x.element_size())))
    out_v = x.new_empty((nq, k))
    out = torch.empty((nq, k), dtype=torch.long, device=dev)
    cnt_l, start_l = cnt.tolist(), start.tolist()
    # one buffer for every block, refilled: a new 256 MiB allocation per block costs its
    # page faults again (at 1M rows, 16 blocks of the final scan and 42 of the beam's)
    whole = x.new_empty((min(nq, rows) * p, width))
    for r0 in range(0, nq, rows):
        pr = probes[r0 : r0 + rows]
        n = pr.shape[0]
        buf = whole[: n * p].fill_(float("-inf"))
        flat = pr.reshape(-1)
        valid = (flat >= 0).nonzero().squeeze(1)
        order = valid[torch.argsort(flat[valid], stable=True)]  # (row, slot) pairs by group
        groups, sizes = torch.unique_consecutive(flat[order], return_counts=True)
        row_of = order // p + r0  # the query row of each pair, in the same order
        o = 0
        for g, m in zip(groups.tolist(), sizes.tolist()):
            pairs, prow = order[o : o + m], row_of[o : o + m]
            o += m
            c0, ni = start_l[g], cnt_l[g]
            if ni == 0:
                continue
            sq = item_sq[c0 : c0 + ni] if item_sq is not None else None
            buf[pairs, :ni] = _scores(x[prow], items[c0 : c0 + ni], metric, sq)
        v, j = buf.view(n, p * width).topk(min(k, p * width), dim=1)
        slot, pos = j // width, j % width
        g = pr.gather(1, slot)
        cell = start[g.clamp(min=0)] + pos
        cell[torch.isinf(v) & (v < 0)] = -1
        if cell.shape[1] < k:
            cell = torch.cat([cell, cell.new_full((n, k - cell.shape[1]), -1)], 1)
            v = torch.cat([v, v.new_full((n, k - v.shape[1]), float("-inf"))], 1)
        out[r0 : r0 + n], out_v[r0 : r0 + n] = cell, v
    return out_v, out


class _Index:
    """The quantizer (one level of cell centroids, or coarse centroids each with their
    own cells) and the cell of every base point."""

    def __init__(self, b: torch.Tensor, metric: str, seed: int, assign: bool = True):
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
        # (``assign=False``: the caller sets it from probes it makes anyway)
        self.cell_of = self.probe(b, 1).squeeze(1) if assign else None

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
                _, probes = _children_topk(
                    x, probes, cents, parent, n_prev, width, self.metric, _BEAM_BUFFER_BYTES
                )
            n_prev = cents.shape[0]
        if probes.shape[1] < nprobe:
            pad = probes.new_full((probes.shape[0], nprobe - probes.shape[1]), -1)
            probes = torch.cat([probes, pad], 1)
        return probes


def search(
    q: torch.Tensor,
    b: torch.Tensor,
    k: int,
    metric: str,
    seed: int = 0,
    base_rows: slice | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APPROXIMATE (Nq, k) neighbours of ``q`` among ``b``: ``(scores, indices)`` where the
    scores are inner products ("ip", largest first) or squared distances ("l2", smallest
    first), unordered among themselves (the caller sorts). k <= Nb.

    ``base_rows``: where the base is a block of the queries, ``b = q[base_rows]`` (CMFP
    searches its queries + gallery against each set): each base point's cell is then the
    first of its own probes, the cell ``probe(b, 1)`` would give it, so the index skips
    that second search of its base points (a third of the arithmetic of CMFP's ivf
    search at 1M: the quantizer's searches are most of it, see the module docstring).
    """
    index = _Index(b, metric, seed, assign=base_rows is None)
    probes = index.probe(q, NPROBE)
    if base_rows is not None:
        if q[base_rows].shape != b.shape:
            raise ValueError(
                f"ivf.search: base_rows {base_rows} of the {q.shape[0]} queries are not the "
                f"{b.shape[0]} base rows"
            )
        index.cell_of = probes[base_rows, 0].clone()
    order = torch.argsort(index.cell_of, stable=True)  # the base, cell after cell
    vals, pos = _children_topk(
        q, probes, b[order], index.cell_of[order], index.n_cells, k, metric, _SCAN_BUFFER_BYTES
    )
    idx = torch.where(pos >= 0, order[pos.clamp(min=0)], pos)
    if metric == "l2":  # back from 2 q.b - |b|^2 to |q - b|^2
        vals = ((q * q).sum(1, keepdim=True) - vals).clamp_(min=0)
    return vals, idx
