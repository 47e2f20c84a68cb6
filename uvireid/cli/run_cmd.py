"""``uvireid run RECIPE [key=value ...]``: validate a recipe and run it."""

from __future__ import annotations

import argparse

EPILOG = """\
Examples:
  uvireid run demo                                   # built-in recipe by name
  uvireid run recipes/salcr.yaml data.root=/data/SYSU-MM01 train.epochs=10
  uvireid run demo --dry-run                         # only validate and print resolved

Overrides are dotted keys with YAML values: train.lr_steps=[20,60], reranker=null,
losses.0.weight=2. An unknown key is an error naming the closest valid one.
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
    p.add_argument("recipe", help="path of a recipe YAML file, or a built-in recipe name")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    p.add_argument("--resume", action="store_true", help="continue the latest run folder")
    p.add_argument("--dry-run", action="store_true", help="validate and print, run nothing")
    p.add_argument(
        "--no-report", action="store_true", help="skip report.html at the end (needs uvireid[viz])"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvireid  # noqa: F401  (registers parts)
    from uvireid.config import dump, load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    print(f"# resolved recipe '{cfg['name']}'")
    print(dump(cfg), end="")
    if args.dry_run:
        return 0
    from uvireid.engine.runner import run_recipe

    folder = run_recipe(cfg, resume=args.resume)
    print(f"run folder: {folder.path}")
    if not args.no_report:
        from uvireid.viz.report import maybe_report

        html = maybe_report(folder.path)
        if html is not None:
            print(f"report: {html}")
    return 0
