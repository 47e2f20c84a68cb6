"""Overhead of SALCR's losses: one training step with DAGL+FGSAL+GPCR vs a plain step.

    python benchmarks/training_overhead.py [--arch resnet18] [--height 128 --width 64]
                                           [--ids 8 --images 4] [--repeats 5]
                                           [--device cpu|cuda] [--threads 1] [--amp]

On the same paired batch (``ids`` labels x ``images`` visible + as many infrared, plus
the channel-augmented copies: 3 S images), it times (best of ``repeats``, after a
warm-up):

- plain: the two-stream backbone's forward + DAGL (``dual_cluster_contrast``) backward
  + Adam step: the cost every cluster-contrast method pays;
- SALCR: the same + the FGSAL part module and ``part_contrast`` + ``instance_neighbour``
  (GPCR) with instance memories of ``--memory`` entries per modality, + the memory
  updates;

and prints the ratio (goal: FGSAL + GPCR add <= 10 %) and the parameters FGSAL adds
(paper Table 15: +0.35 M on ResNet-50, almost all of it an unused positional embedding of
the official code; the part module itself is P x C tokens + a BN over P x C).
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

from uvireid.engine.graphs import GraphedLosses, matmul_tf32  # noqa: E402
from uvireid.engine.profiling import profile_ops  # noqa: E402
from uvireid.losses import (  # noqa: E402
    DualClusterContrastLoss,
    EpochContext,
    InstanceNeighbourLoss,
    PartContrastLoss,
    StepOutputs,
    StepTargets,
)
from uvireid.models.backbone import TwoStreamResNet  # noqa: E402
from uvireid.models.parts import PartQuery  # noqa: E402


def build_steps(arch, height, width, s, num_parts, memory, clusters, device, amp=False, images=1):
    """``(step, model, parts)``: ``step(full)`` runs one training step on a fixed random
    paired batch (3 s images) with memories of ``memory`` instances / ``clusters``
    clusters per modality: plain (backbone + DAGL) or, with ``full``, + FGSAL + GPCR.
    The batch's labels come as an identity sampler gives them: ``s / images`` distinct
    labels, each ``images`` times (the memory updates take as many rounds as a label has
    rows). ``amp``: bf16 autocast. Also the bare step of ``training_loop.py``."""
    dev = str(device)
    torch.manual_seed(0)
    model = TwoStreamResNet(arch).to(dev)
    on_cuda = torch.device(dev).type == "cuda"
    if on_cuda:  # as the trainer runs on CUDA: NHWC convolutions, cuDNN autotuning
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    parts = PartQuery(model.out_dim, num_parts).to(dev)
    c, k, n = model.out_dim, clusters, memory
    rng = np.random.default_rng(0)

    def lab(m: int) -> np.ndarray:
        return rng.integers(0, k, m)

    def batch_lab(m: int) -> np.ndarray:  # as an identity sampler draws them
        if images <= 1:
            return lab(m)
        return np.repeat(rng.choice(k, -(-m // images), replace=False), images)[:m]

    ctx = EpochContext(
        feats_v=torch.nn.functional.normalize(torch.randn(n, c, device=dev), dim=1),
        feats_r=torch.nn.functional.normalize(torch.randn(n, c, device=dev), dim=1),
        vis_in_v=lab(n),
        vis_in_r=lab(n),
        ir_in_r=lab(n),
        ir_in_v=lab(n),
        init_v=lab(n),
        init_r=lab(n),
        num_v=k,
        num_r=k,
        parts_v=torch.nn.functional.normalize(torch.randn(n, num_parts, c, device=dev), dim=-1),
        parts_r=torch.nn.functional.normalize(torch.randn(n, num_parts, c, device=dev), dim=-1),
    )
    dagl = DualClusterContrastLoss().to(dev)
    fgsal = PartContrastLoss(num_parts=num_parts).to(dev)
    gpcr = InstanceNeighbourLoss(num_parts=num_parts).to(dev)
    for loss in (dagl, fgsal, gpcr):
        loss.reset(ctx)
    x = torch.randn(3 * s, 3, height, width, device=dev)
    mod = torch.cat([torch.zeros(2 * s), torch.ones(s)]).long()  # on the host, as the trainer
    # as the trainer builds them: host labels, their device copy, the host copy along
    cols = [batch_lab(s) for _ in range(4)] + [rng.integers(0, n, s) for _ in range(2)]
    host = StepTargets(*(torch.as_tensor(c, dtype=torch.long) for c in cols), paired=True)
    targets = StepTargets(
        *(torch.as_tensor(c, dtype=torch.long, device=dev) for c in cols), paired=True, host=host
    )
    fused = on_cuda or None  # the trainer's fused Adam on CUDA
    opt_plain = torch.optim.Adam(model.parameters(), lr=1e-5, fused=fused)
    opt_full = torch.optim.Adam([*model.parameters(), *parts.parameters()], lr=1e-5, fused=fused)
    dev_type = torch.device(dev).type

    def salcr_losses(o: StepOutputs, t: StepTargets) -> torch.Tensor:
        return dagl(o, t) + fgsal(o, t) + 0.5 * gpcr(o, t)

    compiled_losses = []  # made on first use (train.compile_losses)
    # --graphs: the trainer's train.cuda_graphs wrapper (the step's targets copied in too)
    graphed = GraphedLosses(lambda o, t: (salcr_losses(o, t), {}))

    def step(full: bool, sync: bool = True, compiled: bool | str = False) -> None:
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp):
            out = model(x, mod)
            fm = out.feature_map
            pf = parts.pairs(fm[:s], fm[s : 2 * s], fm[2 * s :]) if full else {}
        # as the trainer: the losses in float32, outside autocast
        f = out.bn_feat.float()
        o = StepOutputs(f[:s], f[s : 2 * s], f[2 * s :])
        if full:
            o.parts = {kk: v.float() for kk, v in pf.items()}
            if compiled == "graphs":
                loss = graphed(o, targets)[0]
                if graphed.failed:  # GraphedLosses runs eagerly then; the figure would lie
                    raise RuntimeError(graphed.failed)
            else:
                if compiled and not compiled_losses:
                    compiled_losses.append(torch.compile(salcr_losses))
                loss = (compiled_losses[0] if compiled else salcr_losses)(o, targets)
        else:
            loss = dagl(o, targets)
        opt = opt_full if full else opt_plain
        opt.zero_grad()
        loss.backward()
        opt.step()
        d = o.detach()
        dagl.update(d, targets)
        if full:
            fgsal.update(d, targets)
            gpcr.update(d, targets)
        if sync and dev.startswith("cuda"):
            torch.cuda.synchronize()

    return step, model, parts


def count_ops(step, full: bool) -> tuple[int, int]:
    """(host-device synchronisations, kernel ops) of one step, from the CPU profiler
    (:func:`uvireid.engine.profiling.profile_ops`): the CPU-measurable side of the GPU
    overhead (on an H100 a SALCR step at ResNet-50 288x144 was launch- and sync-bound,
    105 ms against 75 ms of kernels)."""
    waits, kernels = profile_ops(lambda: step(full))
    return len(waits), kernels


def count_flops(step, full: bool) -> Counter:
    """Floating-point operations of one step, ``{(op, dtype): flops}``: each matrix
    product and convolution (forward and backward) the step dispatches, counted with
    torch's own FLOP formulas (:mod:`torch.utils.flop_counter`), under the dtype of its
    first input (bf16 products run under autocast, float32 ones in the losses). What a
    device must compute whatever its launches: the arithmetic floor of a step."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    counts: Counter = Counter()

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                first = next(a for a in args if isinstance(a, torch.Tensor))
                op = str(func._overloadpacket).removeprefix("aten.")
                counts[op, str(first.dtype).removeprefix("torch.")] += formula(
                    *args, **kwargs, out_val=out
                )
            return out

    with _Count():
        step(full)
    return counts


def flop_table(step, amp: bool) -> list[str]:
    """Markdown rows: the FLOPs of a plain and a SALCR step by dtype, what FGSAL + GPCR
    add, and the products that add them."""
    plain, salcr = count_flops(step, False), count_flops(step, True)

    def by_dtype(c: Counter) -> dict[str, float]:
        out: dict[str, float] = {}
        for (_, dt), v in c.items():
            out[dt] = out.get(dt, 0.0) + v
        return out

    added = salcr.copy()
    added.subtract(plain)
    dtypes = sorted(set(by_dtype(plain)) | set(by_dtype(salcr)))
    total_plain = sum(plain.values())
    rows = [
        "| step | " + " | ".join(f"GFLOP {d}" for d in dtypes) + " | GFLOP | vs plain |",
        "|---|" + "---:|" * (len(dtypes) + 2),
    ]
    for title, c in (("plain (backbone + DAGL)", plain), ("SALCR (+ FGSAL + GPCR)", salcr)):
        d = by_dtype(c)
        rows.append(
            f"| {title} | "
            + " | ".join(f"{d.get(k, 0.0) / 1e9:.1f}" for k in dtypes)
            + f" | {sum(c.values()) / 1e9:.1f} | {sum(c.values()) / total_plain:.3f} |"
        )
    rows.append("")
    rows.append("FGSAL + GPCR add, by product (GFLOP, forward and backward):")
    for (op, dt), v in sorted(added.items(), key=lambda kv: -kv[1]):
        if v > 0:
            rows.append(f"- {op} ({dt}): {v / 1e9:.2f} ({v / total_plain:.1%} of the plain step)")
    if amp:
        rows.append(
            "(the float32 products run in float32 or TF32, on an H100/H200 at half the "
            "bf16 tensor-core rate or less)"
        )
    return rows


def host_and_kernels(step, full: bool, device: str, steps: int = 3, top: int = 0) -> dict:
    """Where a step's time goes on a GPU: the host's time to queue it (the step without the
    final synchronisation; the device still running), the whole step, and the summed time
    of the kernels the profiler saw run (``steps`` steps, per step); ``top`` > 0 also
    prints the ops with the most device time. A step with host time above kernel time is
    bound by launches (the host), one below by arithmetic (the device)."""
    on_cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    host = total = float("inf")
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        step(full, sync=False)
        t1 = time.perf_counter()
        sync()
        host, total = min(host, t1 - t0), min(total, time.perf_counter() - t0)
    out = {"host_s": host, "step_s": total, "kernel_s": None, "launches": None}
    if not on_cuda:
        return out
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step(full)
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    out["kernel_s"] = sum(e.time_range.elapsed_us() for e in kernels) / 1e6 / steps
    out["launches"] = len(kernels) / steps
    if top:
        try:
            table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=top)
        except Exception as exc:  # noqa: BLE001 - a profiler version without the key
            table = f"(no table: {exc})"
        print(table)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--ids", type=int, default=8)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--memory", type=int, default=4000, help="instances per modality")
    ap.add_argument("--clusters", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast (CUDA, or a CPU with native bf16), as train.amp",
    )
    ap.add_argument(
        "--tf32",
        action="store_true",
        help="float32 matrix products in TF32 on CUDA (torch.backends.cuda.matmul.allow_tf32): "
        "how much of the step is the losses' float32 memory products",
    )
    ap.add_argument(
        "--count-ops",
        action="store_true",
        help="also count each step's host-device synchronisations and kernel ops (profiler)",
    )
    ap.add_argument(
        "--flops",
        action="store_true",
        help="also count each step's floating-point operations by dtype (torch's FLOP "
        "formulas; the same on any device): the arithmetic FGSAL + GPCR add",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time the SALCR step with its losses through torch.compile "
        "(train.compile_losses)",
    )
    ap.add_argument(
        "--graphs",
        action="store_true",
        help="also time the SALCR step with its losses' forward and backward as CUDA graphs "
        "(train.cuda_graphs' GraphedLosses; CUDA only): the step without the losses' "
        "launches on the host",
    )
    ap.add_argument(
        "--kernels",
        type=int,
        default=None,
        metavar="TOP",
        help="also time each step's host queueing against its kernels (CUDA profiler) and "
        "print the TOP ops by device time of the SALCR step",
    )
    args = ap.parse_args(argv)
    if args.graphs and not args.device.startswith("cuda"):
        ap.error("--graphs needs --device cuda (CUDA graphs)")
    torch.set_num_threads(args.threads)
    dev = args.device
    tf32 = matmul_tf32(True)  # held until main returns
    if args.tf32:
        tf32.__enter__()
    s = args.ids * args.images
    step, model, parts = build_steps(
        args.arch,
        args.height,
        args.width,
        s,
        args.parts,
        args.memory,
        args.clusters,
        dev,
        amp=args.amp,
        images=args.images,
    )
    c, k, n = model.out_dim, args.clusters, args.memory

    times = {}
    for full in (False, True, False, True):  # warm-up pass, then interleaved timing
        best = float("inf")
        for _ in range(args.repeats if full in times else 1):
            t0 = time.perf_counter()
            step(full)
            best = min(best, time.perf_counter() - t0)
        times[full] = min(best, times.get(full, float("inf"))) if full in times else best
    plain, salcr = times[False], times[True]
    if args.compile:
        t0 = time.perf_counter()
        step(True, compiled=True)  # compiles
        compile_s = time.perf_counter() - t0
        salcr_c = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step(True, compiled=True)
            salcr_c = min(salcr_c, time.perf_counter() - t0)
    if args.graphs:
        try:
            t0 = time.perf_counter()
            step(True, compiled="graphs")  # captures
            graph_s = time.perf_counter() - t0
            salcr_g = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                step(True, compiled="graphs")
                salcr_g = min(salcr_g, time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - an op the capture refuses: say which
            print(f"CUDA graphs of the losses failed: {type(exc).__name__}: {exc}")
            args.graphs = False
    added = sum(p.numel() for p in parts.parameters())
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else platform.processor()
    print(
        f"`python benchmarks/training_overhead.py {' '.join(argv or sys.argv[1:])}` on "
        f"{name or platform.machine()} ({os.cpu_count()} cores visible, {args.threads} "
        f"threads), torch {torch.__version__}"
    )
    print(
        f"{args.arch} {args.height}x{args.width}, {'bf16' if args.amp else 'fp32'}"
        f"{', TF32 products' if args.tf32 else ''}, "
        f"batch 3 x {s} images, P={args.parts}, "
        f"memories {n} instances / {k} clusters per modality"
    )
    print(f"| step | seconds (best of {args.repeats}) | ratio |")
    print("|---|---|---|")
    print(f"| plain (backbone + DAGL) | {plain:.3f} | 1.00 |")
    print(f"| SALCR (+ FGSAL + GPCR) | {salcr:.3f} | {salcr / plain:.2f} |")
    if args.compile:
        print(
            f"| SALCR, losses compiled (first call with compilation {compile_s:.1f} s) | "
            f"{salcr_c:.3f} | {salcr_c / plain:.2f} |"
        )
    if args.graphs:
        print(
            f"| SALCR, losses as CUDA graphs (first call with capture {graph_s:.1f} s) | "
            f"{salcr_g:.3f} | {salcr_g / plain:.2f} |"
        )
    if args.count_ops:
        counts = {full: count_ops(step, full) for full in (False, True)}
        print("| step | host-device syncs | kernel ops |")
        print("|---|---|---|")
        for full, title in ((False, "plain (backbone + DAGL)"), (True, "SALCR (+ FGSAL + GPCR)")):
            print(f"| {title} | {counts[full][0]} | {counts[full][1]} |")
    if args.flops:
        print("\n" + "\n".join(flop_table(step, args.amp)))
    if args.kernels is not None:
        print("| step | host queueing s | whole step s | kernels s | kernels launched |")
        print("|---|---|---|---|---|")
        rows = [(False, False, "plain (backbone + DAGL)"), (True, False, "SALCR (+ FGSAL + GPCR)")]
        if args.compile:
            rows.append((True, True, "SALCR, losses compiled"))
        if args.graphs:
            rows.append((True, "graphs", "SALCR, losses as CUDA graphs"))
        for full, comp, title in rows:
            r = host_and_kernels(
                lambda full, sync=True, comp=comp: step(full, sync, comp),
                full,
                dev,
                top=args.kernels if full else 0,  # the eager and the compiled SALCR step
            )
            ks = "-" if r["kernel_s"] is None else f"{r['kernel_s']:.4f}"
            kn = "-" if r["launches"] is None else f"{r['launches']:.0f}"
            print(f"| {title} | {r['host_s']:.4f} | {r['step_s']:.4f} | {ks} | {kn} |")
    print(
        f"FGSAL parameters: {added:,} (tokens {args.parts * c:,} + BN {2 * args.parts * c:,}); "
        f"backbone {sum(p.numel() for p in model.parameters()):,}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
