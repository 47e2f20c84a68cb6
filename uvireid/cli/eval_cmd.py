"""``uvireid eval``: evaluate features files with a named test protocol."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from uvireid.cli import JSON_HELP, write_json
from uvireid.cli._checks import add_trials, protocol_inputs

logger = logging.getLogger(__name__)

EPILOG = """\
protocols:
  sysu-all, sysu-indoor   SYSU-MM01: infrared queries (cams 3, 6) vs a visible gallery sampled
                          per trial (all-search cams 1,2,4,5; indoor-search cams 1,2)
  regdb-v2i, regdb-i2v    RegDB: all test visible vs all test thermal (or the reverse);
                          one file per split, several files are averaged
  llcm-v2i, llcm-i2v      LLCM: all queries of one modality vs a sampled gallery of the other
  llcm-v2i-deen           LLCM as DEEN's "VIS to IR" branch computes it: sampled infrared
                          queries vs every visible image (its published V->I numbers)

examples:
  uvireid eval sysu_test.npz --protocol sysu-all
  uvireid eval sysu_test.npz --protocol sysu-indoor --shot multi --trials 10 --json out.json
  uvireid eval sysu_test.npz --protocol sysu-all --sampler official \\
      --perm-file /data/SYSU-MM01/exp/rand_perm_cam.mat
  uvireid eval regdb_split{1..10}.npz --protocol regdb-v2i
  uvireid eval runs/salcr-seed*/features.npz --protocol sysu-all --runs   # seeds: mean ± std

A features file is an .npz with feats (N, d), pids, cams, modality (0 visible, 1 infrared)
and optional paths and meta (see uvireid.save_features).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="evaluate features files with a test protocol (SYSU-MM01, RegDB, LLCM)",
        description="Evaluate features files (.npz) with a named test protocol and print "
        "the metrics (R1, R5, R10, R20, mAP, mINP; mean ± std over trials) with their "
        "provenance.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("features", nargs="+", metavar="FEATURES.npz", help="features file(s)")
    p.add_argument(
        "--protocol",
        required=True,
        help="sysu-all | sysu-indoor | regdb-v2i | regdb-i2v | llcm-v2i | llcm-i2v | llcm-v2i-deen",
    )
    add_trials(p)
    p.add_argument(
        "--shot",
        default="single",
        help="single (1 gallery image per id and camera, default) or multi (10)",
    )
    p.add_argument(
        "--sampler",
        default="seeded",
        help="seeded (mangye16 random.seed(trial), default) or official (needs --perm-file)",
    )
    p.add_argument("--perm-file", default=None, help="SYSU-MM01 exp/rand_perm_cam.mat")
    p.add_argument("--feature-head", default=None, help="recorded in the provenance")
    p.add_argument("--stable", action="store_true", help="rank with a stable sort")
    p.add_argument(
        "--runs",
        action="store_true",
        help="each file is one run (a seed) of the same method: evaluate each, then print "
        "one row per run and the mean ± std over the runs (SYSU-MM01, LLCM)",
    )
    p.add_argument("--json", default=None, metavar="OUT.json", help=JSON_HELP)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from uvireid.evaluation.protocols import run_protocol
    from uvireid.features import load_features

    spec = protocol_inputs(args)
    features = [load_features(f) for f in args.features]
    if args.runs:
        return _across_runs(args, spec.name, features)
    result = run_protocol(
        features if len(features) > 1 else features[0], spec.name, **_protocol_options(args)
    )
    print(result.table())
    if args.json is not None:
        write_json(args, result.to_dict())
    return 0


def _protocol_options(args: argparse.Namespace) -> dict:
    """The command's options of :func:`~uvireid.evaluation.protocols.run_protocol`."""
    return {
        "trials": args.trials,
        "shot": args.shot,
        "sampler": args.sampler,
        "perm_file": args.perm_file,
        "feature_head": args.feature_head,
        "stable": args.stable,
    }


#: the metrics of the runs table
_RUN_METRICS = ("R1", "R10", "mAP", "mINP")


#: meta entries that runs (seeds) of one method share
_SHARED_META = ("dataset", "split", "feature_head", "total_epochs")


def _same_method(paths: list, features: list) -> None:
    """Refuse ``--runs`` files that are not runs of one method on one test set: other
    feature dimensions, another dataset, split or feature head in their meta (where both
    record it), or other test images (their identity, camera and modality labels)."""
    import numpy as np

    from uvireid.errors import ProtocolError

    def differ(what: str, values: list) -> None:
        listing = ", ".join(f"{p}: {v}" for p, v in zip(paths, values))
        raise ProtocolError(
            f"--runs averages runs (seeds) of one method on one test set, and these files "
            f"differ in {what} ({listing}); evaluate them one by one to compare methods"
        )

    metas = [f.meta if isinstance(f.meta, dict) else {} for f in features]
    for path, meta in zip(paths, metas):
        if meta.get("final") is False:  # a killed run's last evaluation, or a mid-run one
            raise ProtocolError(
                f"--runs averages the runs' final results, and {path} holds the features of "
                f"epoch {meta.get('epoch')} of {meta.get('total_epochs')}, not its run's final "
                f"epoch (the run was stopped, or this is an earlier evaluation); resume the "
                f"run (uvireid run RUN_DIR --resume) or evaluate the file on its own"
            )
    dims = [f.dim for f in features]
    if len(set(dims)) > 1:
        differ("feature dimension", dims)
    from uvireid.engine.compare import FEATURE_FIELDS

    # what compare calls not comparable is no run of the same method here (audit KB)
    for key in (*_SHARED_META, *FEATURE_FIELDS):
        values = [meta.get(key) for meta in metas]
        if len({str(v) for v in values if v is not None}) > 1:
            differ(f"meta {key!r}", values)
    changes = [meta.get("changes") for meta in metas]  # absent: the run's own recipe
    if len({str(c) for c in changes}) > 1:
        differ("meta 'changes' (the recipe settings changed for `uvireid extract`)", changes)
    # the recipe of each run's own features ("uvireid run <recipe>"; extracted files say
    # "uvireid extract ...", and may be any run's)
    recipes = [str(m.get("produced_by", "")) for m in metas]
    if len({r for r in recipes if r.startswith("uvireid run ")}) > 1:
        differ("recipe (meta 'produced_by')", recipes)
    first = features[0]
    ref = np.lexsort((first.modality, first.cams, first.pids))
    for path, f in zip(paths[1:], features[1:]):
        same = len(f) == len(first)
        if same:
            order = np.lexsort((f.modality, f.cams, f.pids))
            same = all(
                np.array_equal(getattr(f, a)[order], getattr(first, a)[ref])
                for a in ("pids", "cams", "modality")
            )
        if not same:
            raise ProtocolError(
                f"--runs: {path} and {paths[0]} hold different test images (their identity, "
                f"camera and modality labels differ); runs can only be averaged on the same "
                f"test set"
            )


def _across_runs(args: argparse.Namespace, protocol: str, features: list) -> int:
    """``--runs``: each file through the protocol on its own, then the spread over runs.

    Raises:
        ProtocolError: files that are not runs of one method on one test set
            (:func:`_same_method`), checked before any protocol runs (fewer than two files
            and RegDB are refused before any file is read: :func:`protocol_inputs`).
    """
    import numpy as np

    from uvireid.evaluation.protocols import run_protocol

    _same_method(args.features, features)  # the same test images: the same query and gallery
    results = [run_protocol(f, protocol, **_protocol_options(args)) for f in features]
    # the protocol's line without the first file's epoch (each run's is in its row)
    first = results[0]
    common = {k: v for k, v in first.provenance.items() if k != "features_meta"}
    summary = dataclasses.replace(first, provenance=common).summary()
    print(f"{summary}; {len(results)} runs, each the mean over its trials")
    width = max(len("mean±std over runs"), *(len(str(p)) for p in args.features))
    print(f"{'run':<{width}}  " + "  ".join(f"{m:>8}{'':6}" for m in _RUN_METRICS) + "  epoch")
    for path, res in zip(args.features, results):
        meta = res.provenance.get("features_meta") or {}
        epoch = meta.get("epoch", "-") if isinstance(meta, dict) else "-"
        row = "  ".join(f"{res.mean[m]:>8.2f}±{res.std[m]:<5.2f}" for m in _RUN_METRICS)
        print(f"{str(path):<{width}}  {row}  {epoch}")
    table = np.array([[r.mean[m] for m in _RUN_METRICS] for r in results])
    mean, std = table.mean(0), table.std(0)
    print(
        f"{'mean±std over runs':<{width}}  "
        + "  ".join(f"{a:>8.2f}±{b:<5.2f}" for a, b in zip(mean, std))
    )
    print("(within a run: ± over its trials; over runs: population std of the runs' means)")
    if args.json is not None:
        from uvireid.evaluation.protocols import METRIC_KEYS

        # every metric, as in every other result (the printed table keeps four columns)
        full = np.array([[r.mean[m] for m in METRIC_KEYS] for r in results])
        write_json(
            args,
            {
                "runs": [dict(r.to_dict(), file=str(p)) for p, r in zip(args.features, results)],
                "mean": dict(zip(METRIC_KEYS, full.mean(0).tolist())),
                "std": dict(zip(METRIC_KEYS, full.std(0).tolist())),
            },
        )
    return 0
