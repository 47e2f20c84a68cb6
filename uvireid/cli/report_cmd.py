"""``uvireid report RUN_DIR``: plots and a self-contained report.html of a run folder."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from uvireid.cli._checks import missing_folders, output_folder, positive_int, remove_empty

EPILOG = """\
writes into RUN_DIR (or --out): report.html (images embedded, self-contained) and
  cmc.png, curves_eval.png, curves_losses.png, curves_clusters.png,
  curves_label_quality.png, curves_time.png   (from results.json / metrics.jsonl)
  distances.png, tsne.png, ranking.png         (from features.npz)
A plot whose data the folder lacks (a killed run, an evaluation-only run) is left out and
the report says what is missing.

examples:
  uvireid report runs/demo-20250101-120000
  uvireid report runs/salcr-20250101-120000 --reranker cmfp --queries 8
  uvireid report runs/dcl-20250101-120000 --features other_model.npz --out /tmp/report

Needs matplotlib: pip install "uvireid[viz]".
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="plots and a self-contained report.html of a run folder",
        description="Draw the curves over epochs, the CMC, the cross-modality distance "
        "histograms, a t-SNE and ranking lists of a run folder, and write report.html.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `uvireid run`")
    p.add_argument(
        "--features", default=None, help="features file to plot (default RUN_DIR/features.npz)"
    )
    p.add_argument(
        "--reranker",
        default=None,
        help="re-ranker for the 'after' plots: a registered name (cmfp, kreciprocal, ...) or "
        "none (default: the recipe's)",
    )
    p.add_argument(
        "--queries", type=positive_int, default=6, help="ranking lists to draw (default 6)"
    )
    p.add_argument(
        "--topk", type=positive_int, default=10, help="gallery images per list (default 10)"
    )
    p.add_argument(
        "--ids", type=positive_int, default=12, help="identities in the t-SNE (default 12)"
    )
    p.add_argument(
        "--protocol",
        default=None,
        help="query/gallery split of the distance and ranking plots (default: the run's; "
        "a --features file of another dataset: the first protocol it fits)",
    )
    p.add_argument(
        "--image-root",
        default=None,
        metavar="DIR",
        help="folder the features file's relative image paths are relative to (default: "
        "the current folder); the ranking lists read the images there",
    )
    p.add_argument("--dpi", type=positive_int, default=100, help="PNG resolution (default 100)")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import uvireid  # noqa: F401  (registers the re-rankers)
    from uvireid.engine.run_folder import RunFolder
    from uvireid.errors import ConfigError
    from uvireid.viz.report import RECIPE, build_report

    if Path(args.run_dir).is_dir() and not RunFolder.is_run(args.run_dir):
        raise ConfigError(
            f"{args.run_dir} is not a run folder (no config.yaml); give a folder that "
            f"`uvireid run` wrote (runs/<recipe>-<time>)"
        )
    if (
        args.out is not None
        and RunFolder.is_run(args.out)
        and Path(args.out).resolve() != Path(args.run_dir).resolve()
    ):  # its report.html and PNGs are that run's own (RUN_FILES): not replaced, not swept
        raise ConfigError(
            f"--out {args.out} is another run folder (it has a config.yaml): its report.html "
            f"and plots are that run's; give another folder (e.g. "
            f"{Path('reports') / Path(args.run_dir).name})"
        )
    made = missing_folders(args.out) if args.out is not None else []
    if args.out is not None:
        output_folder(args.out, "--out")
    # the command prints the report's path and notes on stdout: the report module's own
    # INFO lines would say them a second time on stderr
    quiet = logging.getLogger("uvireid.viz.report")
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        report = build_report(
            args.run_dir,
            features=args.features,
            reranker=RECIPE if args.reranker is None else args.reranker,
            queries=args.queries,
            k=args.topk,
            tsne_ids=args.ids,
            out=args.out,
            dpi=args.dpi,
            protocol=args.protocol,
            image_root=args.image_root,
        )
    except BaseException:  # a refused report leaves no empty --out folder behind
        remove_empty(made)
        raise
    finally:
        quiet.setLevel(level)
    print(f"report: {report.html} ({len(report.images)} plots)")
    for note in report.notes:
        print(f"  note: {note}")
    return 0
