"""The losses' memory products in float32, TF32 and bf16: time, and what each does to the logits.

    python benchmarks/loss_products.py [--device cuda] [--memory 11000] [--repeats 20]

GPCR's part logits are the largest products FGSAL + GPCR add to a SALCR step (issue 5
item 8; ``training_overhead.py --flops``: 163 of their 181 GFLOP at the paper's size):
the (P, 9S, d) part queries against a modality's (N, P, d) part memory, forward and the
gradient of the queries, for each modality. The losses run in float32 outside autocast
(``uvireid.engine.trainer``: bf16 logits are ~0.08 off at a logit of 20). This times
one modality's products, forward and backward, at the step benchmark's sizes, as

- ``fp32``: float32, TF32 off (the trainer's default);
- ``tf32``: float32 with TF32 products (``train.tf32``; on the CPU its values are
  computed, not timed, from inputs rounded to TF32);
- ``bf16-in``: bf16 inputs (the memory held as a bf16 copy) with a float32 output and
  float32 accumulation, ``torch.bmm(..., out_dtype=torch.float32)`` (CUDA only; on the
  CPU its values are computed, not timed, as float32 products of bf16-rounded inputs);
- ``bf16``: bf16 inputs and output (what autocast gives);

and prints each one's time, its largest logit error against float64, and the share of
rows whose top-k (GPCR's neighbour sets, k = 30) differs from float64's.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rerank_speed import timed  # noqa: E402

from uvireid.engine.graphs import matmul_tf32  # noqa: E402

TAU = 0.05


def inputs(parts: int, rows: int, memory: int, d: int, device: str, seed: int = 0):
    """Unit part queries / tau (P, rows, d) and a unit part memory (N, P, d) around
    ``memory // 10`` identities, float32, as GPCR forms them."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(1, memory // 10), parts, d, generator=gen)
    mem = centres[torch.randint(0, centres.shape[0], (memory,), generator=gen)]
    mem = F.normalize(mem + 0.8 * torch.randn(memory, parts, d, generator=gen), dim=-1)
    q = centres[torch.randint(0, centres.shape[0], (rows,), generator=gen)]
    q = F.normalize(q + 0.8 * torch.randn(rows, parts, d, generator=gen), dim=-1) / TAU
    return q.transpose(0, 1).contiguous().to(device), mem.to(device)


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 values rounded to TF32's 10-bit mantissa (to nearest, ties to even), as
    tensor cores read a TF32 product's inputs: the CPU's stand-in for them."""
    i = x.contiguous().view(torch.int32)
    lsb = (i >> 13) & 1
    return ((i + 0xFFF + lsb) & ~0x1FFF).view(torch.float32)


def products(mode: str, q: torch.Tensor, mem: torch.Tensor, mem16: torch.Tensor):
    """``(logits, grad_q)`` of one modality: logits = q mem^T (P, rows, N) and the
    backward product grad_q = g mem with g = softmax(logits) (as a loss's gradient).
    ``mem``: the (N, P, d) float32 memory; ``mem16``: its bf16 copy as (P, N, d)."""
    memt = mem.transpose(0, 1)  # (P, N, d), a view
    if mode == "tf32" and q.device.type != "cuda":  # the CPU has no TF32: its values
        mt = round_tf32(memt)
        lg = torch.bmm(round_tf32(q), mt.transpose(1, 2))
        return lg, torch.bmm(round_tf32(torch.softmax(lg, -1)), mt)
    if mode in ("fp32", "tf32"):
        with matmul_tf32(mode == "tf32"):
            lg = torch.bmm(q, memt.transpose(1, 2))
            g = torch.softmax(lg, -1)
            return lg, torch.bmm(g, memt)
    m16 = mem16  # (P, N, d): the bf16 copy a loss would hold, laid out for the product
    if mode == "bf16":
        lg = torch.bmm(q.bfloat16(), m16.transpose(1, 2))
        g = torch.softmax(lg.float(), -1)
        return lg.float(), torch.bmm(g.bfloat16(), m16).float()
    if mode == "bf16-in":
        if q.device.type == "cuda":
            lg = torch.bmm(q.bfloat16(), m16.transpose(1, 2), out_dtype=torch.float32)
            g = torch.softmax(lg, -1)
            return lg, torch.bmm(g.bfloat16(), m16, out_dtype=torch.float32)
        # the CPU has no bf16 product with a float32 output: the same values in float32
        mf = m16.float()
        lg = torch.bmm(q.bfloat16().float(), mf.transpose(1, 2))
        g = torch.softmax(lg, -1)
        return lg, torch.bmm(g.bfloat16().float(), mf)
    raise ValueError(mode)


def best_seconds(fn, device: str, repeats: int) -> float:
    """Best of ``repeats`` synchronised calls after a warm-up call
    (``rerank_speed.timed``)."""
    fn()
    return timed(fn, device, repeats)[0]


def compare(parts, rows, memory, d, device, k=30, repeats=5, modes=None) -> list[dict]:
    q, mem = inputs(parts, rows, memory, d, device)
    mem16 = mem.transpose(0, 1).contiguous().bfloat16()
    ref_lg, ref_gq = products("fp32", q.double(), mem.double(), mem16)
    ref_top = ref_lg.topk(k, -1).indices.sort(-1).values
    out = []
    for mode in modes or ("fp32", "tf32", "bf16-in", "bf16"):
        lg, gq = products(mode, q, mem, mem16)
        top = lg.double().topk(k, -1).indices.sort(-1).values
        timeable = device.startswith("cuda") or mode in ("fp32", "bf16")
        out.append(
            {
                "mode": mode,
                "seconds": best_seconds(lambda m=mode: products(m, q, mem, mem16), device, repeats)
                if timeable
                else None,
                "logit_err": float((lg.double() - ref_lg).abs().max()),
                "grad_rel_err": float((gq.double() - ref_gq).norm() / ref_gq.norm()),
                "topk_rows_changed": float((top != ref_top).any(-1).float().mean()),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--rows", type=int, default=288, help="9 S part rows (S = 32)")
    ap.add_argument("--memory", type=int, default=11000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else (platform.processor() or platform.machine())
    )
    print(
        f"`python benchmarks/loss_products.py {' '.join(argv or sys.argv[1:])}` on {name}, "
        f"torch {torch.__version__}; P={args.parts}, {args.rows} rows, N={args.memory}, "
        f"d={args.dim}: one modality's part logits, forward and the queries' gradient"
    )
    print("| products | ms | max logit error | gradient rel. error | rows whose top-k moved |")
    print("|---|---:|---:|---:|---:|")
    rows = compare(args.parts, args.rows, args.memory, args.dim, args.device, args.k, args.repeats)
    for r in rows:
        ms = "-" if r["seconds"] is None else f"{r['seconds'] * 1e3:.2f}"
        print(
            f"| {r['mode']} | {ms} | {r['logit_err']:.2e} | {r['grad_rel_err']:.2e} | "
            f"{r['topk_rows_changed']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
