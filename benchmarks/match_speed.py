"""``uvireid match``'s ranking against the straightforward one, in one process.

uvireid: :func:`uvireid.engine.matching.top_matches` (a block of queries at a time: their
products with the gallery, a partition for each row's ``top`` nearest, a sort of those
only). Baseline: what a test loop usually does (the whole query x gallery distance matrix,
then a full stable argsort of every row, ``[:, :top]``). Both give the same ranks, ties in
gallery order; the script checks that and prints the time ratio and the peak memory of
each (``tracemalloc``: numpy's allocations).

    python benchmarks/match_speed.py                      # 1k x 10k and 10k x 100k, d = 256
    python benchmarks/match_speed.py --sizes 1000x10000 --top 10 --threads 2
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np


def baseline(q: np.ndarray, g: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole distance matrix, a full stable sort of each row."""
    dist = -(q @ g.T)
    order = np.argsort(dist, axis=1, kind="stable")[:, :top]
    return order, np.take_along_axis(dist, order, axis=1)


def measure(fn, *args) -> tuple[float, float, tuple]:
    """(seconds, peak MiB of numpy allocations, result)."""
    tracemalloc.start()
    t = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak, out


def features(n: int, d: int, ids: int, rng: np.random.Generator) -> np.ndarray:
    """Unit rows around ``ids`` identity centres, float32 (as a features file holds)."""
    centres = rng.normal(size=(ids, d))
    x = centres[rng.integers(0, ids, n)] + 0.7 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000x10000,10000x100000", help="QxG,QxG,...")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch/BLAS threads (default all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from uvireid.engine.matching import top_matches

    rng = np.random.default_rng(args.seed)
    print(
        "| queries x gallery | baseline s | uvireid s | speed-up | baseline peak MiB "
        "| uvireid peak MiB | same ranks |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for size in args.sizes.split(","):
        nq, ng = (int(v) for v in size.lower().split("x"))
        q = features(nq, args.dim, max(2, ng // 10), rng)
        g = features(ng, args.dim, max(2, ng // 10), rng)
        t_ref, m_ref, (i_ref, d_ref) = measure(baseline, q, g, args.top)
        t_uv, m_uv, (i_uv, d_uv) = measure(top_matches, q, g, args.top)
        same = bool(np.array_equal(i_ref, i_uv) and np.array_equal(d_ref, d_uv))
        print(
            f"| {nq:,} x {ng:,} | {t_ref:.2f} | {t_uv:.2f} | {t_ref / t_uv:.1f}x "
            f"| {m_ref:,.0f} | {m_uv:,.0f} | {same} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
