"""k-nearest-neighbour search, the one kNN utility of uvireid.

Used by scalable CMFP (:mod:`uvireid.rerank.cmfp`) and by clustering. Three exact backends
give the same neighbours; one approximate backend is there for sizes exact search cannot
reach:

- ``"torch"``: blocked exact search, ``torch.topk`` over (block x N) score tiles, on the
  input's device and in the input's dtype (float64 stays float64). Never holds more than
  one tile, so memory is O(block * N + N * k).
- ``"faiss"``: faiss ``IndexFlatIP`` / ``IndexFlatL2`` (exact, float32; faiss-gpu when the
  input is on a CUDA device and faiss has GPU support, faiss-cpu otherwise).
- ``"faiss-ivf"``: APPROXIMATE search with a faiss inverted-file index (``IndexIVFFlat``,
  4 sqrt(Nb) cells, 16 probed), about ``N^1.5`` (measured ``N^1.45`` from 100k to 1M); for
  million-image CMFP on a CPU, where exact search is quadratic. Not the default anywhere.
- ``"ivf"``: APPROXIMATE search with uvireid's own two-level inverted file in torch
  (:mod:`uvireid.clustering.ivf`: cells of ~32 points, 16 scanned per query, scans as
  matrix products), about ``N^1.2`` from 100k to 1M (exact search: ``N^2``), on the CPU
  or a GPU, without faiss. Not the default anywhere.
- ``"auto"``: faiss-gpu for float32 CUDA input when faiss has GPU support, the torch path
  otherwise. On the CPU the torch path is the default because it measured ~3x faster than
  faiss-cpu ``IndexFlatIP`` here (5k x 100k, d=256: 4.7 s vs 15.3 s on 2 Xeon cores) and
  keeps float64 input in float64.

Results are deterministic and tie-broken by index: rows are ordered best first, and among
equal scores the lower base index comes first (what ``numpy.argsort(kind="stable")`` gives).
Where a tie straddles the k-th place, the lower indices are kept. The exact backends obey this;
the faiss path re-checks rows whose ties reach past k with an exact torch search of that row.

Metrics (``metric``):

- ``"ip"``: inner product, largest first; values are the inner products.
- ``"cosine"``: both sides L2-normalised, then ``"ip"``.
- ``"l2"``: squared Euclidean distance, smallest first; values are squared distances
  (clamped at 0).

A self search (``base`` is ``None`` or the query object itself, as in clustering and in the
query-query / gallery-gallery blocks of CMFP) of at most 16 row blocks (N up to about 33k
in float32 on a CPU) takes the torch path over square tiles and computes each off-diagonal
tile once for both of its row blocks: about 56 % of the score products of a full search
(``_knn_torch_self``; larger ones take the plain search, whose one panel per block is
faster there); the neighbours are the same (up to entries equal in exact arithmetic
that the two products round an ulp apart, as any two ways of summing them may), and each
row block holds one running (rows x k) top-k list, so the candidates stay O(N k).

Complexity: O(Nq * Nb * d) time for the scores and O(Nq * Nb) for the selection (exact
search is quadratic in N); memory O((Nq + Nb) * d + Nq * k + block * Nb).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
import torch

from uvireid.errors import ConfigError, FeatureFileError, non_finite_rows

__all__ = [
    "METRICS",
    "BACKENDS",
    "knn",
    "ivf_within",
    "topk_stable",
    "sort_rows",
    "copy_transposed",
    "faiss_available",
    "default_block_rows",
]

logger = logging.getLogger(__name__)

METRICS = ("ip", "cosine", "l2")
BACKENDS = ("auto", "faiss", "torch", "faiss-ivf", "ivf")

#: cells probed per query by the approximate ``"faiss-ivf"`` backend
IVF_NPROBE = 16

#: bytes one score tile may take (rows x Nb x itemsize); GPU tiles are larger
_TILE_BYTES_CPU = 256 * 2**20
_TILE_BYTES_GPU = 512 * 2**20


def faiss_available(gpu: bool = False) -> bool:
    """Whether faiss is importable (with GPU support when ``gpu``)."""
    try:
        import faiss  # noqa: F401
    except Exception:
        return False
    if not gpu:
        return True
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def default_block_rows(n_cols: int, itemsize: int, device: torch.device) -> int:
    """Rows per score tile so that one (rows x n_cols) tile stays within the tile budget."""
    budget = _TILE_BYTES_GPU if device.type == "cuda" else _TILE_BYTES_CPU
    return max(1, min(65536, budget // max(1, n_cols * itemsize)))


def topk_stable(
    scores: torch.Tensor, k: int, *, largest: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of each row, ties broken by the lower column index.

    Args:
        scores: (n, m) float tensor without NaN.
        k: neighbours per row; clamped to ``m``.
        largest: True for the largest scores (similarities), False for the smallest
            (distances).

    Returns:
        ``(values, indices)``, each (n, min(k, m)), ordered best first and, among equal
        values, by increasing index: the first ``k`` columns of a stable argsort.

    ``torch.topk`` alone leaves the order of equal values (and which of several equal values
    at the k-th place survive) unspecified. Here ``topk`` asks for k + 1 values: where the
    (k+1)-th equals the k-th, a tie straddles the cut and only those rows get an exact
    by-index pass; the selected entries are then sorted by (value, index).
    """
    n, m = scores.shape
    k = min(int(k), m)
    if k <= 0 or n == 0:
        empty = scores.new_empty((n, max(k, 0)))
        return empty, torch.empty((n, max(k, 0)), dtype=torch.long, device=scores.device)
    # one extra value shows whether a tie at the k-th value reaches past k
    extra = k + 1 if k < m else k
    vals, idx = torch.topk(scores, extra, dim=1, largest=largest, sorted=True)
    if extra > k:
        cut = vals[:, k] == vals[:, k - 1]
        vals, idx = vals[:, :k], idx[:, :k]
        if bool(cut.any()):  # rare: choose among the tied values by index
            rows = cut.nonzero().squeeze(1)
            sub, sub_kth = scores[rows], vals[rows, k - 1 :]
            strict = (sub > sub_kth) if largest else (sub < sub_kth)
            equal = sub == sub_kth
            need = k - strict.sum(1, keepdim=True)
            keep = strict | (equal & (equal.cumsum(1) <= need))
            sub_idx = keep.nonzero()[:, 1].view(-1, k)
            idx, vals = idx.clone(), vals.clone()
            idx[rows] = sub_idx
            vals[rows] = sub.gather(1, sub_idx)
    return sort_rows(vals, idx, largest=largest)


def sort_rows(
    vals: torch.Tensor, idx: torch.Tensor, *, largest: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's candidates ordered best value first and, among equal values, by
    increasing index (the order every backend returns)."""
    idx, perm = idx.sort(dim=1)
    vals = vals.gather(1, perm)
    order = torch.sort(vals, dim=1, descending=largest, stable=True).indices
    return vals.gather(1, order), idx.gather(1, order)


def _as_tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        t, was_numpy = x.detach(), False
    else:
        t, was_numpy = torch.from_numpy(np.ascontiguousarray(x)), True
    if t.ndim != 2:
        raise ConfigError(f"knn: {name} must be a 2-D (N, d) array, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    bad = non_finite_rows(t)  # a NaN row got arbitrary neighbours, silently (audit FB)
    if bad is not None:
        raise FeatureFileError(
            f"knn: {name} holds NaN or inf in {bad[0]} row(s) (first: row {bad[1][0]}); "
            f"check the feature extractor "
            f"(a diverged model gives NaN features)"
        )
    return t, was_numpy


def _knn_torch(
    q: torch.Tensor, b: torch.Tensor, k: int, metric: str, block_rows: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    nq, nb = q.shape[0], b.shape[0]
    largest = metric != "l2"
    rows = block_rows or default_block_rows(nb, q.element_size(), q.device)
    b_sq = (b * b).sum(1) if metric == "l2" else None
    vals = q.new_empty((nq, k))
    idx = torch.empty((nq, k), dtype=torch.long, device=q.device)
    tile = q.new_empty((min(rows, nq), nb))  # reused: no page faults per tile
    for s in range(0, nq, rows):
        e = min(nq, s + rows)
        t = tile[: e - s]
        torch.mm(q[s:e], b.T, out=t)
        if metric == "l2":
            t.mul_(-2.0).add_((q[s:e] * q[s:e]).sum(1, keepdim=True)).add_(b_sq[None, :])
            t.clamp_(min=0)
        v, i = topk_stable(t, k, largest=largest)
        vals[s:e], idx[s:e] = v, i
    return vals, idx


#: the self search over symmetric tiles runs a Python step per (block, later block) pair;
#: beyond this many row blocks (N of about 33k in float32 on a CPU, 46k on a GPU) the plain search's one panel per
#: block is faster (60k x 256 on 2 CPU threads: 17.9 s in 54 blocks against 13.8 s), and
#: at a million rows the pairs would number in the tens of millions
_SELF_MAX_BLOCKS = 16


def _self_block_rows(n: int, itemsize: int, device: torch.device) -> int:
    """Rows per block of the self search: about n / 8 (so ~56 % of the products of a full
    search are computed), at least 2,048 (a narrower top-k costs twice as much per score),
    and few enough that one (rows x n) panel stays within the tile budget."""
    budget = _TILE_BYTES_GPU if device.type == "cuda" else _TILE_BYTES_CPU
    cap = max(1, budget // max(1, n * itemsize))
    return max(1, min(n, cap, max(2048, -(-n // 8))))


def copy_transposed(dst: torch.Tensor, src: torch.Tensor, sub: int = 512) -> torch.Tensor:
    """``dst.copy_(src.T)`` (with ``dst``'s dtype) in (sub x sub) squares on the CPU: a
    plain strided transposed copy of a tile of a wide matrix runs several times slower
    (each read touches a new cache line). Returns ``dst``."""
    if src.device.type != "cpu":
        return dst.copy_(src.T)
    rows, cols = src.shape
    for i in range(0, rows, sub):
        for j in range(0, cols, sub):
            dst[j : j + sub, i : i + sub].copy_(src[i : i + sub, j : j + sub].T)
    return dst


def _knn_torch_self(
    x: torch.Tensor, k: int, metric: str, block_rows: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self search over the upper block triangle of the score matrix.

    For row block i, one panel product gives its scores against every column from the
    block's own start on; the panel's top-k serves block i's rows, and each of its square
    tiles past the diagonal, transposed, serves the rows of that later block. So every
    score is computed once for both (a, b) and (b, a): about half the products of a full
    search. A row's candidates come one column range at a time, in column order, and are
    merged at once into the block's running top-k (:func:`topk_stable` of the running list
    and the new chunk, in that order: equal scores stand in index order, so the tie-break
    by index is the global one, and the top-k of (score, index) is the top-k of the
    running top-k and the rest). So the candidates held are one (rows x k) list per block,
    O(N k) in all (keeping every chunk until the block's turn held O(N^3 k / tile) of them:
    2.2 GiB at 100k rows, audit Y, session 17).
    """
    n = x.shape[0]
    largest = metric != "l2"
    r = block_rows or _self_block_rows(n, x.element_size(), x.device)
    starts = list(range(0, n, r))
    sq = (x * x).sum(1) if metric == "l2" else None
    # best[b]: the running top-k (values, indices) of block b's rows, over the column
    # ranges seen so far
    best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None for _ in starts]

    def merge(b: int, v: torch.Tensor, i: torch.Tensor) -> None:
        if best[b] is not None:
            v = torch.cat([best[b][0], v], dim=1)
            i = torch.cat([best[b][1], i], dim=1)
            v, pos = topk_stable(v, min(k, v.shape[1]), largest=largest)
            i = i.gather(1, pos)
        best[b] = (v, i)

    vals = x.new_empty((n, k))
    idx = torch.empty((n, k), dtype=torch.long, device=x.device)
    # two buffers reused by every block: no fresh pages (and page faults) per panel
    panel_buf = x.new_empty(min(r, n) * n)
    tile_buf = x.new_empty(min(r, n) ** 2)
    for bi, s in enumerate(starts):
        e = min(n, s + r)
        panel = panel_buf[: (e - s) * (n - s)].view(e - s, n - s)
        torch.mm(x[s:e], x[s:].T, out=panel)  # (rows of block bi) x (columns s .. n)
        if metric == "l2":
            panel.mul_(-2.0).add_(sq[s:e, None]).add_(sq[None, s:]).clamp_(min=0)
        v, i = topk_stable(panel, k, largest=largest)
        merge(bi, v, i + s)
        for bj in range(bi + 1, len(starts)):  # the tiles past the diagonal, transposed
            s2, e2 = starts[bj], min(n, starts[bj] + r)
            src = panel[:, s2 - s : e2 - s]
            tile = copy_transposed(tile_buf[: src.numel()].view(src.shape[1], -1), src)
            v, i = topk_stable(tile, k, largest=largest)
            merge(bj, v, i + s)
        v, i = best[bi]
        best[bi] = None
        vals[s:e], idx[s:e] = v[:, :k], i[:, :k]
    return vals, idx


def _knn_faiss(
    q: torch.Tensor, b: torch.Tensor, k: int, metric: str, block_rows: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss

    qn = q.detach().to("cpu", torch.float32).contiguous().numpy()
    bn = b.detach().to("cpu", torch.float32).contiguous().numpy()
    largest = metric != "l2"
    nb = bn.shape[0]
    extra = min(nb, k + 8)  # a few more, to see ties that reach past the k-th place
    use_gpu = q.device.type == "cuda" and faiss_available(gpu=True)
    index = faiss.IndexFlatL2(bn.shape[1]) if metric == "l2" else faiss.IndexFlatIP(bn.shape[1])
    if use_gpu:
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, q.device.index or 0, index)
    index.add(bn)
    dist, ind = index.search(qn, extra)
    vals = torch.from_numpy(dist).to(torch.float32)
    idx = torch.from_numpy(ind).long()
    if metric == "l2":
        vals.clamp_(min=0)
    # exact tie-breaking by index: sort the candidates by (value, index) ...
    vals, idx = sort_rows(vals, idx, largest=largest)
    # ... and redo, exactly, the rows whose tie at the k-th value reaches the last candidate
    if extra < nb:
        tied = vals[:, k - 1] == vals[:, extra - 1]
        if bool(tied.any()):
            rows = tied.nonzero().squeeze(1)
            qt = torch.from_numpy(qn)[rows]
            bt = torch.from_numpy(bn)
            v2, i2 = _knn_torch(qt, bt, k, metric, block_rows)
            vals, idx = vals[:, :k].clone(), idx[:, :k].clone()
            vals[rows], idx[rows] = v2, i2
    return vals[:, :k].contiguous(), idx[:, :k].contiguous()


def _search_short_rows(
    q: torch.Tensor, b: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, metric: str
) -> None:
    """In place: the rows of an approximate search that found fewer than k neighbours
    (index -1: too few points in their probed cells) searched again exactly."""
    short = (idx < 0).any(1)
    if bool(short.any()):
        rows = short.nonzero().squeeze(1)
        vals[rows], idx[rows] = _knn_torch(q[rows], b, idx.shape[1], metric, None)


def _knn_faiss_ivf(
    q: torch.Tensor, b: torch.Tensor, k: int, metric: str, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """APPROXIMATE search: faiss ``IndexIVFFlat`` with ``nlist = 4 sqrt(Nb)`` cells (at
    least 39 training points each, faiss' minimum), trained (10 k-means rounds) on a
    seeded sample of at most 40 points per cell, probing :data:`IVF_NPROBE` cells per query. Time about
    O(Nq * Nb * d * nprobe / nlist) = O(Nq sqrt(Nb) d) instead of O(Nq * Nb * d): about
    ``N^1.5`` where exact search is quadratic. Rows whose probed cells hold fewer than k points are
    searched exactly. Deterministic for a given input, seed and thread count."""
    import faiss

    qn = q.detach().to("cpu", torch.float32).contiguous().numpy()
    bn = b.detach().to("cpu", torch.float32).contiguous().numpy()
    nb, d = bn.shape
    nlist = max(1, min(nb // 39, int(4 * nb**0.5)))
    kind = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    quantizer = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, kind)
    index.cp.seed = int(seed)
    index.cp.niter = 10  # coarse cells only steer the search; 10 k-means rounds suffice
    rng = np.random.default_rng(seed)
    n_train = min(nb, 40 * nlist)
    sample = np.sort(rng.choice(nb, n_train, replace=False)) if n_train < nb else slice(None)
    index.train(np.ascontiguousarray(bn[sample]))
    index.add(bn)
    index.nprobe = min(nlist, IVF_NPROBE)
    dist, ind = index.search(qn, k)
    vals = torch.from_numpy(dist).to(torch.float32)
    idx = torch.from_numpy(ind).long()
    _search_short_rows(torch.from_numpy(qn), torch.from_numpy(bn), vals, idx, metric)
    if metric == "l2":
        vals.clamp_(min=0)
    return sort_rows(vals, idx, largest=metric != "l2")  # as the exact backends


def _knn_ivf(
    q: torch.Tensor, b: torch.Tensor, k: int, metric: str, base_rows: slice | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """APPROXIMATE search with :func:`uvireid.clustering.ivf.search`; rows whose probed
    cells hold fewer than k points are searched exactly."""
    from uvireid.clustering import ivf

    vals, idx = ivf.search(q, b, k, metric, base_rows=base_rows)
    _search_short_rows(q, b, vals, idx, metric)
    return sort_rows(vals, idx, largest=metric != "l2")


def ivf_within(x: torch.Tensor, rows: slice, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """APPROXIMATE ``knn(x, x[rows], k, metric="ip", backend="ivf")`` for a base that is a
    block of the query rows (CMFP's queries + gallery against each set): the same
    neighbours, with the base points placed in their cells by the queries' own probes
    instead of a second search (:func:`uvireid.clustering.ivf.search`, ``base_rows``).
    ``x``: a checked (N, d) float tensor; k is clamped to the base size."""
    base = x[rows]
    if base.shape[0] == 0 or x.shape[0] == 0:
        raise ConfigError("knn: empty input; pass at least one row on each side")
    return _knn_ivf(x, base, min(int(k), base.shape[0]), "ip", base_rows=rows)


def check_backend(backend: Any, what: str) -> None:
    """A :data:`BACKENDS` name (a part's ``knn_backend``/``backend`` keyword, checked for
    every path, as a typo would otherwise surface only where the search runs)."""
    if backend not in BACKENDS:
        raise ConfigError(f"{what} must be one of {', '.join(BACKENDS)}, got {backend!r}")
    _require_faiss(backend, what)


def _require_faiss(backend: str, what: str) -> None:
    """A faiss backend where faiss is not installed: an error naming the install and the
    backends that need none (when a part is built, and where a search runs)."""
    if backend in ("faiss", "faiss-ivf") and not faiss_available():
        raise ConfigError(
            f"{what}={backend!r} needs faiss, which is not installed; "
            f'pip install faiss-cpu (or "uvireid[faiss]"; faiss-gpu: "uvireid[gpu]"), '
            "or use backend 'torch' (exact) or 'ivf' (approximate)"
        )


def _auto_backend(q: torch.Tensor) -> str:
    """``backend="auto"``: faiss-gpu for float32 CUDA input where it imports, else torch
    (on the CPU torch's blocked search is as fast as faiss-cpu's exact one here)."""
    on_gpu = q.device.type == "cuda"
    use_faiss = on_gpu and q.dtype == torch.float32 and faiss_available(gpu=True)
    return "faiss" if use_faiss else "torch"


@functools.cache
def _warn_faiss_failed_once(text: str) -> None:
    logger.warning(
        "knn: faiss-gpu failed (%s); the exact torch search takes over (same neighbours, "
        "no faiss). Reinstall a faiss build for this CUDA, or set knn_backend: torch to "
        "skip faiss",
        text,
    )


def _warn_faiss_failed(exc: BaseException) -> None:
    _warn_faiss_failed_once(f"{type(exc).__name__}: {exc}"[:300])


def _search(
    q: torch.Tensor,
    b: torch.Tensor,
    k: int,
    metric: str,
    backend: str,
    block_rows: int | None,
    self_search: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The search of :func:`knn` on one backend (not ``auto``), on checked tensors."""
    if backend == "ivf":
        return _knn_ivf(q, b, k, metric)
    _require_faiss(backend, "knn: backend")
    if backend == "faiss-ivf":
        vals, idx = _knn_faiss_ivf(q, b, k, metric)
        return vals.to(device=q.device, dtype=q.dtype), idx.to(q.device)
    if backend == "faiss":
        vals, idx = _knn_faiss(q, b, k, metric, block_rows)
        return vals.to(q.device), idx.to(q.device)
    if self_search:
        r = block_rows or _self_block_rows(q.shape[0], q.element_size(), q.device)
        if -(-q.shape[0] // r) <= _SELF_MAX_BLOCKS:
            return _knn_torch_self(q, k, metric, r)
    return _knn_torch(q, b, k, metric, block_rows)


def knn(
    query: Any,
    base: Any | None = None,
    k: int = 30,
    *,
    metric: str = "ip",
    backend: str = "auto",
    block_rows: int | None = None,
) -> tuple[Any, Any]:
    """Exact k nearest neighbours of every query row among the base rows.

    Args:
        query: (Nq, d) float numpy array or torch tensor.
        base: (Nb, d), same kind as ``query``; ``None`` (or ``query`` itself) searches
            ``query`` against itself (each row then normally finds itself first), with the
            symmetric tiles computed once (torch backend; ``backend="faiss"`` searches
            the ordinary way).
        k: neighbours per row; clamped to Nb (a debug message says so).
        metric: ``"ip"``, ``"cosine"`` or ``"l2"`` (see the module docstring).
        backend: ``"auto"``, ``"faiss"`` or ``"torch"`` (exact), or ``"ivf"`` /
            ``"faiss-ivf"``: APPROXIMATE (an inverted-file index; time about ``N^1.2`` /
            ``N^1.5`` where exact search is ``N^2``; neighbours that may differ from the
            exact ones: use it where exact search is too slow, e.g. CMFP over a million
            images on a CPU, and measure its recall on your data).
        block_rows: query rows per score tile of the torch path (default: a tile of at most
            256 MiB on the CPU, 512 MiB on a GPU); rows (and columns) per square tile of a
            self search (default: about Nq / 8, at least 2,048, fewer where one (rows x
            Nq) panel would pass the tile budget: 256 MiB on a CPU, 512 MiB on a GPU).

    Returns:
        ``(values, indices)``: (Nq, k) scores (inner products, largest first, or squared L2
        distances, smallest first) and (Nq, k) int64 base indices. Torch tensors on the
        query's device for torch input (float32 from faiss, the input dtype from torch);
        numpy arrays for numpy input.
    """
    if metric not in METRICS:
        raise ConfigError(f"knn: unknown metric '{metric}'; use one of {', '.join(METRICS)}")
    if backend not in BACKENDS:
        raise ConfigError(f"knn: unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
    self_search = base is None or base is query
    q, was_numpy = _as_tensor(query, "query")
    b = q if self_search else _as_tensor(base, "base")[0]
    if b.shape[1] != q.shape[1]:
        raise ConfigError(
            f"knn: query has d={q.shape[1]} but base has d={b.shape[1]}; "
            "both must come from the same feature extractor"
        )
    if b.device != q.device:
        b = b.to(q.device)
    if b.dtype != q.dtype:
        b = b.to(torch.promote_types(b.dtype, q.dtype))
        q = q.to(b.dtype)
    if int(k) < 1:
        raise ConfigError(f"knn: k must be >= 1, got {k}")
    if block_rows is not None:
        from uvireid.rerank.inputs import check_k

        check_k(block_rows, "block_rows", "knn")
    nb = b.shape[0]
    if nb == 0 or q.shape[0] == 0:
        raise ConfigError(
            f"knn: empty input (query {q.shape[0]} rows, base {nb} rows); "
            "pass at least one row on each side"
        )
    if k > nb:
        logger.debug("knn: k=%d clamped to the %d base rows", k, nb)
    k = min(int(k), nb)
    if metric == "cosine":
        q = torch.nn.functional.normalize(q, dim=1)
        b = q if self_search else torch.nn.functional.normalize(b, dim=1)
        metric = "ip"
    auto = backend == "auto"
    if auto:
        backend = _auto_backend(q)
    try:
        vals, idx = _search(q, b, k, metric, backend, block_rows, self_search)
    except Exception as exc:  # faiss builds that import but fail on this GPU/CUDA
        if not (auto and backend == "faiss"):
            raise
        _warn_faiss_failed(exc)
        vals, idx = _search(q, b, k, metric, "torch", block_rows, self_search)
    if was_numpy:
        return vals.cpu().numpy(), idx.cpu().numpy()
    return vals, idx
