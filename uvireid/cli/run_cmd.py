"""``uvireid run RECIPE [key=value ...]``: validate a recipe and run it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
Examples:
  uvireid run demo                                   # built-in recipe by name
  uvireid run recipes/salcr.yaml data.root=/data/SYSU-MM01 stages.1.epochs=10
  uvireid run demo --dry-run                         # only validate and print resolved
  uvireid run demo --resume                          # continue the latest demo run
  uvireid run runs/demo-20261126-101500 --resume     # continue that run folder
  uvireid run salcr data.root=/data/SYSU-MM01 --sweep stages.1.clusterer.eps=0.5,0.6,0.7
                                     # one run per value, then the runs side by side
  uvireid run salcr data.root=/data/SYSU-MM01 --sweep stages.1.clusterer.eps=0.5,0.6 --sweep seed=1,2
                                     # the grid: 4 runs; add --resume to continue a sweep

Overrides are dotted keys with YAML values: train.lr_steps=[20,60], reranker=null,
stages.1.losses.0.weight=2. An unknown key is an error naming the closest valid one.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="validate a recipe (YAML or built-in name) and run it",
        description="Load a recipe with its _base_ files and overrides, check every key, "
        "print the resolved configuration (every value used, defaults included) and run it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "recipe",
        help="path of a recipe YAML file, a built-in recipe name, or a run folder (with "
        "--resume: continue it)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest run folder of the recipe under output_dir (none there: "
        "a warning, then a new run), or the run folder given, from its checkpoint; the "
        "recipe must be the one it started with",
    )
    p.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: accept recipe changes beyond device, speed and evaluation "
        "settings, and another torchrun world size (each is warned about and recorded in "
        "manifest.json)",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="run the recipe once per value (repeatable: the grid of all combinations), "
        "each run named after its values, then compare the runs; with --resume a stopped "
        "sweep continues (the runs of the values given: a value left out is left out of "
        "the comparison too)",
    )
    p.add_argument("--dry-run", action="store_true", help="validate and print, run nothing")
    p.add_argument(
        "--no-report", action="store_true", help="skip report.html at the end (needs uvireid[viz])"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvireid  # noqa: F401  (registers parts)
    from uvireid.config import dump, is_builtin_name, load_recipe
    from uvireid.engine.run_folder import RunFolder
    from uvireid.errors import ConfigError

    is_run = RunFolder.is_run(args.recipe) and not is_builtin_name(args.recipe)
    if args.sweep:
        return _sweep(args, is_run)
    if is_run and not (args.resume or args.dry_run):
        raise ConfigError(
            f"{args.recipe} is a run folder: add --resume to continue it, or run "
            f"{Path(args.recipe) / 'config.yaml'} to start a new run with its recipe"
        )
    if args.allow_changes and not args.resume:
        raise ConfigError("--allow-changes goes with --resume")
    cfg = load_recipe(args.recipe, args.overrides)
    # under torchrun every rank runs this command: rank 0 speaks and writes the report
    from uvireid.cli import _rank

    main_rank = _rank() == 0
    if main_rank:
        print(f"# resolved recipe '{cfg['name']}'")
        print(dump(cfg), end="")
    if args.dry_run:  # what a run refuses before its first epoch (run_recipe does it too)
        from uvireid.engine.runner import preflight

        preflight(cfg)
        pre = cfg["backbone"].get("pretrained")
        if isinstance(pre, str) and Path(pre).expanduser().is_file():
            # weights of a local file are read now, as the run's start reads them (a
            # half-fitting file was refused only by the run: audit FC); downloads and the
            # synthetic prior's minutes of training are left to the run
            from uvireid.registry import BACKBONES

            BACKBONES.build(cfg["backbone"])
            print(f"# backbone.pretrained: {pre} fits the backbone", file=sys.stderr)
        return 0
    from uvireid.engine.runner import run_recipe

    resume = Path(args.recipe) if is_run else args.resume
    folder = run_recipe(cfg, resume=resume, allow_changes=args.allow_changes)
    if not main_rank:
        return 0
    print(f"run folder: {folder.path}")
    current = _current_report(folder.path)
    if current is not None:  # a finished run resumed: nothing changed, its report stays
        print(f"report: {current} (kept: the results have not changed since)")
    elif not args.no_report:
        from uvireid.viz.report import maybe_report

        html = maybe_report(folder.path)
        if html is not None:
            print(f"report: {html}")
    return 0


def _current_report(run_dir: Path) -> Path | None:
    """The run's ``report.html`` when it is at least as new as its ``results.json`` (a
    finished run resumed, or a report the user drew with other options: not replaced)."""
    html, results = run_dir / "report.html", run_dir / "results.json"
    if html.is_file() and results.is_file():
        if html.stat().st_mtime_ns >= results.stat().st_mtime_ns:
            return html
    return None


def _sweep(args: argparse.Namespace, is_run: bool) -> int:
    """``--sweep``: every combination's run, then the finished runs side by side."""

    from uvireid.engine.compare import compare_runs, format_comparison
    from uvireid.engine.sweep import run_sweep
    from uvireid.errors import ConfigError

    if is_run:
        raise ConfigError(
            f"--sweep starts runs from a recipe, and {args.recipe} is a run folder; give "
            f"the recipe (a stopped sweep continues with the same command and --resume)"
        )
    if args.allow_changes:
        raise ConfigError(
            "--allow-changes does not go with --sweep; resume the run folder concerned "
            "itself: uvireid run RUN_FOLDER --resume --allow-changes"
        )
    from uvireid.engine.distributed import env_world_size

    if env_world_size() > 1:
        raise ConfigError(
            "--sweep under torchrun: run the sweep without torchrun (one process), or "
            "launch one torchrun per setting with plain overrides"
        )
    folders, failed = run_sweep(
        args.recipe,
        args.overrides,
        args.sweep,
        resume=args.resume,
        dry_run=args.dry_run,
        report=not args.no_report,
    )
    if folders:
        print(format_comparison(compare_runs([str(f.path) for f in folders])), end="")
    for name, why in failed.items():
        print(f"error: sweep run {name} failed: {why}", file=sys.stderr)
    if failed:
        from uvireid.engine.sweep import sweep_command

        command = sweep_command(args.recipe, args.overrides, args.sweep, args.no_report)
        print(
            f"after fixing the cause, `{command}` runs the failed ones again (the finished "
            f"ones are left as they are)",
            file=sys.stderr,
        )
    return 2 if failed else 0
