"""A SALCR step's memory updates: the rounds against the Gram path, side by side.

    python benchmarks/memory_updates.py [--device cuda] [--repeats 20] [--dim 2048]

After each SALCR step the trainer updates every memory sample by sample (Eq. 7):
DAGL's two cluster memories, FGSAL's four part memories and GPCR's instance memories
(global and part). ``uvireid.losses.memory.momentum_update_many`` runs each call's
sequences in rounds (round r updates the r-th row of every label at once, four kernels a
round) or, with ``method="gram"``, from the rows' Gram matrices (about ten kernels and
one read-back, whatever the number of rounds). On a GPU the rounds are launches the host
queues one by one: the phase timing of ``training_loop.py --phases`` on an H200 put the
updates at 10.4 ms of host time in a 54 ms SALCR step (session 19).

This builds the calls of one SALCR step with the label layout the trainer produced on
the synthetic dataset (``momentum_update_many`` arguments recorded in a ResNet run of
``training_loop.py``: DAGL 2 memories x 96 rows over about 14 labels; FGSAL 4 part
memories of 192, 192, 96 and 96 rows over about 8 labels each, 18-54 rows per label; GPCR
2 x 32 rows, at most 4 per image), at the paper's sizes (d = 2048, P = 3, 500 clusters,
11,000 instances per modality), runs them with each method in one process and prints
the time per step, the number of aten operations queued (views included), the ratio,
and the largest difference between the methods' memories.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from uvireid.losses.memory import momentum_update_many  # noqa: E402


class _CountOps(TorchDispatchMode):
    """Counts the aten operations run under it (on CUDA, each a launch or a view)."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def step_calls(device, dim: int, clusters: int, instances: int, seed: int = 0):
    """The memories and the calls of one SALCR step: [(memories, [(view, feats, labels,
    order), ...]), ...], one entry per ``momentum_update_many`` call."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g), dim=-1).to(device)

    def labels(rows, n_labels, k):
        ids = rng.choice(k, n_labels, replace=False)
        return torch.from_numpy(ids[rng.integers(0, n_labels, rows)])

    calls = []
    # DAGL: the visible and infrared cluster memories, 96 rows each, shuffled order
    mems = [unit(clusters, dim) for _ in range(2)]
    calls.append(
        (
            mems,
            [(m, unit(96, dim), labels(96, 14, clusters), rng.permutation(96)) for m in mems],
        )
    )
    # FGSAL: four (P, K, d) part memories through their (K, P, d) views
    mems = [unit(3, clusters, dim) for _ in range(4)]
    calls.append(
        (
            mems,
            [
                (m.transpose(0, 1), unit(n, 3, dim), labels(n, 8, clusters), rng.permutation(n))
                for m, n in zip(mems, (192, 192, 96, 96))
            ],
        )
    )
    # GPCR: each modality's instance memory, global then part, 32 rows (images repeat)
    for shape in ((instances, dim), (instances, 3, dim)):
        mems = [unit(*shape) for _ in range(2)]
        calls.append(
            (
                mems,
                [(m, unit(32, *shape[1:]), labels(32, 24, instances), None) for m in mems],
            )
        )
    return calls


def run_step(calls, method: str) -> None:
    for _, items in calls:
        momentum_update_many(items, 0.1, method)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--clusters", type=int, default=500)
    ap.add_argument("--instances", type=int, default=11000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "CPU"
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}  {name}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}; "
        f"d={args.dim}, P=3, {args.clusters} clusters, {args.instances} instances"
    )
    base = step_calls(device, args.dim, args.clusters, args.instances)
    results, rows = {}, []
    for method in ("rounds", "gram"):
        calls = step_calls(device, args.dim, args.clusters, args.instances)
        counter = _CountOps()
        with counter:
            run_step(calls, method)  # also the warm-up
        results[method] = [m.clone() for mems, _ in calls for m in mems]
        best = float("inf")
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            run_step(calls, method)
            sync()
            best = min(best, time.perf_counter() - t0)
        rows.append((method, best, sum(counter.ops.values()), counter.ops))
    diff = max(
        float((a.double() - b.double()).abs().max())
        for a, b in zip(results["rounds"], results["gram"])
    )
    before = [m for mems, _ in base for m in mems]
    moved = max(
        float((a.double() - m.double()).abs().max()) for a, m in zip(results["rounds"], before)
    )
    print("| method | ms per step (best) | aten ops per step |")
    print("|---|---:|---:|")
    for method, best, ops, _ in rows:
        print(f"| {method} | {best * 1e3:.2f} | {ops} |")
    ratio = rows[0][1] / rows[1][1]
    print(
        f"rounds / gram = {ratio:.2f}x in time, {rows[0][2] / rows[1][2]:.1f}x in operations; "
        f"max |rounds - gram| over every memory = {diff:.2e} (the updates move a memory by "
        f"up to {moved:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
