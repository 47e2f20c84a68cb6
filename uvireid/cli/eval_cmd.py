"""``uvireid eval``: evaluate features files with a named test protocol."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

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
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the result")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from uvireid.evaluation.protocols import run_protocol
    from uvireid.features import load_features

    spec = protocol_inputs(args)
    features = [load_features(f) for f in args.features]
    result = run_protocol(
        features if len(features) > 1 else features[0],
        spec.name,
        trials=args.trials,
        shot=args.shot,
        sampler=args.sampler,
        perm_file=args.perm_file,
        feature_head=args.feature_head,
        stable=args.stable,
    )
    print(result.table())
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
        logger.info("wrote %s", out)
    return 0
