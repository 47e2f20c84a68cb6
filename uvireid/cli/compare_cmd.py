"""``uvireid compare RUN [RUN ...]``: the results of several run folders side by side,
with the mean over them and what keeps them from being comparable."""

from __future__ import annotations

import argparse

from uvireid.cli import JSON_HELP

EPILOG = """\
A folder that holds run folders stands for all of them. A run that did not finish shows
its last evaluation in metrics.jsonl, marked. The std of a run's cell is over its
evaluation trials; the summary row's is over the runs (population, ddof=0). Runs that
differ in a recipe setting (a sweep's: uvireid run --sweep clusterer.eps=0.5,0.6 --sweep
seed=1,2,3) get a summary row per setting, over that setting's runs (its seeds). The
world size, the per-GPU and per-BatchNorm batch and the precision are settings too; what
changes no final number (data.root, evaluation.at_start/perm_file, train.image_cache) is
none, nor are the re-ranker's keys for the 'none' table. Runs evaluated on the
validation ids (data.validation) end with the best setting.

Not comparable (listed, exit code 0 unless --strict): another test set (the dataset's
file-list hash or sizes), another protocol, mode, direction, shot, number of trials,
gallery sampler or feature head, another re-ranker under the same table name.
Listed as differences: every other recipe setting (seed apart), the world size, the
per-GPU and per-BatchNorm batch, the precision, package versions and source revision.

examples:
  uvireid compare runs/salcr-20260101-120000 runs/salcr-20260102-090000
  uvireid compare runs/                         # every run folder under runs/
  uvireid compare runs/salcr-* --json compare.json --strict
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare",
        help="results of several run folders side by side, and whether they are comparable",
        description="Print each run's final results (R1, R10, R20, mAP, mINP per "
        "re-ranker), their mean ± std over the runs (over each setting's runs, where the runs "
        "differ in a setting: a sweep's), what makes the "
        "runs not comparable and which settings differ.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or folders of runs)")
    p.add_argument("--json", default=None, metavar="OUT", help=JSON_HELP)
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit with code 1 when the runs are not comparable",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from uvireid.cli import write_json
    from uvireid.cli._checks import json_output, refuse_a_runs_own_file
    from uvireid.engine.compare import compare_runs, format_comparison, run_folders

    out = json_output(args)  # before the comparison (audit IB)
    if out is not None:
        refuse_a_runs_own_file(out, run_folders(args.runs))
    report = compare_runs(args.runs)
    print(format_comparison(report), end="")
    if args.json is not None:
        write_json(args, report)
    return 1 if args.strict and not report["comparable"] else 0
