"""Regenerate the demo run's report: ``uvireid run demo``, then ``uvireid report``.

    python benchmarks/demo_report.py                 # the demo recipe as shipped
    python benchmarks/demo_report.py --quick         # 60 synthetic ids, 2 trials (CPU minutes)
    python benchmarks/demo_report.py --run-dir runs/demo-20250101-120000   # report only

Prints the run folder, how long the run and the report took, and a table of the PNGs
(pixels, size) and of what the report says is missing. Look at the PNGs before calling a
change to the plots done: axes labelled, legends readable, nothing empty.
"""

from __future__ import annotations

import argparse
import logging
import struct
import sys
import time
from pathlib import Path

QUICK = ["data.ids=60", "evaluation.trials=2", "train.workers=0"]


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    return struct.unpack(">II", head[16:24]) if head[:8] == b"\x89PNG\r\n\x1a\n" else (0, 0)


def run_demo(overrides: list[str], output_dir: str) -> Path:
    import uvireid  # noqa: F401  (registers the built-in parts)
    from uvireid.config import load_recipe
    from uvireid.engine.runner import run_recipe
    from uvireid.registry import DATASETS

    if "synthetic" not in DATASETS:  # until uvireid.data imports it itself
        import uvireid.data.synthetic  # noqa: F401

    cfg = load_recipe("demo", [*overrides, f"output_dir={output_dir}"])
    return run_recipe(cfg, progress=False).path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default=None, help="report this run folder; run nothing")
    parser.add_argument("--quick", action="store_true", help=f"overrides {' '.join(QUICK)}")
    parser.add_argument("--output-dir", default="runs", help="where the demo run goes")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from uvireid.viz.report import build_report

    t0 = time.perf_counter()
    if args.run_dir:
        run_dir, run_s = Path(args.run_dir), 0.0
    else:
        overrides = (QUICK if args.quick else []) + args.overrides
        print(f"# uvireid run demo {' '.join(overrides)}")
        run_dir = run_demo(overrides, args.output_dir)
        run_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    report = build_report(run_dir)
    report_s = time.perf_counter() - t1

    print(f"\nrun folder: {run_dir}")
    print(f"run {run_s:.1f} s, report {report_s:.1f} s -> {report.html}")
    print(f"\n{'plot':28s} {'pixels':>11s} {'KiB':>7s}")
    for name, path in report.images.items():
        w, h = png_size(path)
        print(f"{name:28s} {f'{w}x{h}':>11s} {path.stat().st_size / 1024:7.1f}")
    print(f"{'report.html':28s} {'':>11s} {report.html.stat().st_size / 1024:7.1f}")
    if report.notes:
        print("\nmissing:")
        for note in report.notes:
            print(f"  - {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
