"""``uvireid match``'s ranking against the straightforward one, in one process.

uvireid: :func:`uvireid.engine.matching.top_matches` (a block of queries at a time: their
products with the gallery, a partition for each row's ``top`` nearest, a sort of those
only). Baseline: what a test loop usually does (the whole query x gallery distance matrix,
then numpy's default argsort of every row, ``[:, :top]``, as mangye16's, SALCR's and
Cluster-Contrast's evaluations sort; a stable sort, twice as slow with numpy 2's SIMD
sort, inflated the ratio 1.6x: audit MG). Both give the same ranks where distances do not
tie (uvireid breaks ties in gallery order, the default sort in no set order); the script
checks that and prints the time ratio and the peak memory of each (the peak resident
memory beyond what the process held before, each measurement in a forked child process
after a small warm-up call, Linux). With ``--cmfp K`` both
re-rank with CMFP: the baseline ranks its (Nq, Ng) distance matrix, uvireid propagates
once and ranks the propagated features a block at a time.

    python benchmarks/match_speed.py                      # 1k x 10k and 10k x 100k, d = 256
    python benchmarks/match_speed.py --sizes 1000x10000 --top 10 --threads 2
    python benchmarks/match_speed.py --cmfp 30 --sizes 1000x10000,3000x30000   # CMFP
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def baseline(
    q: np.ndarray, g: np.ndarray, top: int, reranker=None
) -> tuple[np.ndarray, np.ndarray]:
    """The whole distance matrix (the re-ranker's), a full sort of each row (numpy's
    default kind, as the reference evaluations)."""
    dist = -(q @ g.T) if reranker is None else np.asarray(reranker.rerank(q, g))
    order = np.argsort(dist, axis=1)[:, :top]
    return order, np.take_along_axis(dist, order, axis=1)


def _status(field: str) -> float:
    """A ``/proc/self/status`` memory field in MiB (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(fn, *args) -> tuple[float, float, tuple]:
    """(seconds, peak MiB beyond the memory held before, result) of ``fn(*args)``, run in
    a forked child: its peak resident memory (numpy's and torch's allocations alike),
    with none of the allocator's memory of the measurements before it."""
    import os
    import pickle

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, send, leave without the parent's exit handlers
        try:
            os.close(read)
            fn(args[0][:8], args[1][:64], *args[2:])  # thread pools, first-call costs
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # the peak (VmHWM) starts again from here
            before = _status("VmRSS")
            t = time.perf_counter()
            out = fn(*args)
            seconds = time.perf_counter() - t
            payload = pickle.dumps((seconds, _status("VmHWM") - before, out))
            with os.fdopen(write, "wb") as fh:
                fh.write(payload)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        payload = fh.read()
    os.waitpid(pid, 0)
    if not payload:
        raise RuntimeError("the measured child process ended without a result")
    return pickle.loads(payload)


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
    p.add_argument(
        "--cmfp",
        type=int,
        default=None,
        metavar="K",
        help="re-rank with CMFP(k=K): its dense distance matrix against top_matches' "
        "propagation once and blocked ranking",
    )
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from uvireid.engine.matching import top_matches

    reranker = None
    if args.cmfp is not None:
        from uvireid.registry import RERANKERS

        reranker = RERANKERS.build({"type": "cmfp", "k": args.cmfp})
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
        t_ref, m_ref, (i_ref, d_ref) = measure(baseline, q, g, args.top, reranker)
        t_uv, m_uv, (i_uv, d_uv) = measure(top_matches, q, g, args.top, reranker)
        # CMFP's blocked distances may differ from its whole matrix in the last bits; where
        # two distances tie the default sort may put them in either order
        close = bool(np.allclose(d_ref, d_uv, rtol=0, atol=1e-5))
        same = str(close) if not close or np.array_equal(i_ref, i_uv) else "tied ones swapped"
        print(
            f"| {nq:,} x {ng:,} | {t_ref:.2f} | {t_uv:.2f} | {t_ref / t_uv:.1f}x "
            f"| {m_ref:,.0f} | {m_uv:,.0f} | {same} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
