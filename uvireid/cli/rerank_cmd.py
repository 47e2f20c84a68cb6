"""``uvireid rerank``: evaluate features files before and after re-ranking."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from uvireid.cli._checks import add_trials, protocol_inputs
from uvireid.errors import ConfigError

logger = logging.getLogger(__name__)

EPILOG = """\
re-rankers (uvireid list rerankers shows every registered one):
  cmfp          cross-modality feature propagation (SALCR; k=30 SYSU-MM01, 8 RegDB)
  kreciprocal   k-reciprocal encoding (Zhong et al.; k1=20, k2=6, lambda=0.3)
  cmrr          cross-modality re-ranking as in MULT/SALCR (k=15 SYSU-MM01, 8 RegDB)
  aim           SAAI's affinity inference (k1=4, k2=1 SYSU-MM01; 8, 2 RegDB)
  all           every registered re-ranker, side by side (R1 / mAP / mINP / time)

examples:
  uvireid rerank sysu_test.npz --reranker cmfp --k 30 --protocol sysu-all
  uvireid rerank sysu_test.npz --reranker aim --set k1=4 --set k2=1 --protocol sysu-all
  uvireid rerank sysu_test.npz --reranker all --protocol sysu-all --trials 10 --json rr.json
  uvireid rerank regdb_split1.npz --reranker cmfp --k 8 --protocol regdb-v2i
  uvireid rerank sysu_test.npz --reranker cmfp --protocol sysu-all --device cuda

The features file may come from uvireid (uvireid.save_features) or from any codebase that
writes an .npz with feats (N, d), pids, cams, modality (0 visible, 1 infrared); see
examples/export_features/.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "rerank",
        help="evaluate features before and after re-ranking (CMFP, k-reciprocal, CMRR, AIM)",
        description="Evaluate features files (.npz) with a test protocol, without and with a "
        "re-ranker, and print both tables with the re-ranking time.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("features", nargs="+", metavar="FEATURES.npz", help="features file(s)")
    p.add_argument(
        "--reranker", required=True, help="cmfp | kreciprocal | cmrr | aim | all | a plugin's"
    )
    p.add_argument("--k", type=int, default=None, help="k of re-rankers that have one (cmfp, cmrr)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another re-ranker keyword, e.g. --set k1=4 (repeatable)",
    )
    p.add_argument(
        "--protocol",
        required=True,
        help="sysu-all | sysu-indoor | regdb-v2i | regdb-i2v | llcm-v2i | llcm-i2v | llcm-v2i-deen",
    )
    add_trials(p)
    p.add_argument("--shot", default="single", help="single (default) or multi")
    p.add_argument("--sampler", default="seeded", help="seeded (default) or official")
    p.add_argument("--perm-file", default=None, help="SYSU-MM01 exp/rand_perm_cam.mat")
    p.add_argument("--feature-head", default=None, help="recorded in the provenance")
    p.add_argument("--stable", action="store_true", help="rank with a stable sort")
    p.add_argument(
        "--device",
        default="cpu",
        help="where the re-ranker computes: cpu (default), cuda, cuda:N or auto",
    )
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the results")
    p.set_defaults(func=run)
    return p


class _Timed:
    """A re-ranker that adds up the seconds its ``rerank`` calls take."""

    def __init__(self, part: Any, label: str):
        self.part = part
        self.name = getattr(part, "name", None) or label
        self.seconds = 0.0
        self.calls = 0

    def rerank(self, query: Any, gallery: Any) -> Any:
        t = time.perf_counter()
        out = self.part.rerank(query, gallery)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    return text


def _keywords(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}; e.g. --set k1=4")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in out:  # which one would win is not the user's intent to guess
            raise ConfigError(f"--set {key}= is given twice; give each keyword once")
        out[key] = _parse_value(value.strip())
    if args.k is not None:
        if "k" in out:
            raise ConfigError(
                f"k is given twice: --k {args.k} and --set k={out['k']}; give it once"
            )
        out["k"] = args.k
    return out


def _build(name: str, kwargs: dict[str, Any], strict: bool) -> Any:
    """Build ``name``; with ``strict=False`` drop the keywords it does not take (``all``)."""
    from uvireid.registry import RERANKERS

    if not strict:
        accepted = set(RERANKERS.signature(name).parameters)
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return RERANKERS.build({"type": name, **kwargs})


def _side_by_side(rows: list[dict]) -> str:
    head = f"{'reranker':40s} {'R1':>7s} {'mAP':>7s} {'mINP':>7s} {'time/trial':>11s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        t = f"{r['seconds_per_trial']:9.3f} s" if r["seconds_per_trial"] is not None else "-"
        lines.append(
            f"{r['reranker']:40s} {r['R1']:7.2f} {r['mAP']:7.2f} {r['mINP']:7.2f} {t:>11s}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from uvireid.evaluation.protocols import run_protocol
    from uvireid.features import load_features
    from uvireid.registry import RERANKERS

    spec = protocol_inputs(args)
    from uvireid.config import check_device, resolve_device
    from uvireid.rerank import OnDevice

    device = resolve_device(check_device(args.device, "--device"))
    kwargs = _keywords(args)
    names = RERANKERS.names() if args.reranker == "all" else [args.reranker]
    parts = [
        _Timed(OnDevice(_build(n, kwargs, strict=args.reranker != "all"), device), n) for n in names
    ]

    features = [load_features(f) for f in args.features]
    feats = features if len(features) > 1 else features[0]

    def evaluate(reranker: Any) -> Any:
        return run_protocol(
            feats,
            spec.name,
            trials=args.trials,
            shot=args.shot,
            sampler=args.sampler,
            perm_file=args.perm_file,
            reranker=reranker,
            feature_head=args.feature_head,
            stable=args.stable,
        )

    base = evaluate(None)
    rows = [_row("none", base, None)]
    results = {}
    if args.reranker != "all":
        print("== without re-ranking ==")
        print(base.table())
    for part in parts:
        res = evaluate(part)
        per_trial = part.seconds / max(1, part.calls)
        results[part.name] = (res, part)
        rows.append(_row(part.name, res, per_trial))
        if args.reranker != "all":
            print(f"\n== with {part.name} ==")
            print(res.table())
            print(
                f"re-ranking time: {part.seconds:.3f} s over {part.calls} trial(s), "
                f"{per_trial:.3f} s per trial"
            )
            deltas = ", ".join(
                f"{k} {res.mean[k] - base.mean[k]:+.2f}" for k in ("R1", "mAP", "mINP")
            )
            print(f"change: {deltas}")
    if args.reranker == "all":
        print(base.summary().replace("reranker: none", "reranker: see below"))
        print(_side_by_side(rows))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "baseline": base.to_dict(),
            "reranked": {
                name: {
                    **res.to_dict(),
                    "rerank_seconds_total": part.seconds,
                    "rerank_calls": part.calls,
                }
                for name, (res, part) in results.items()
            },
            "summary": rows,
        }
        out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        logger.info("wrote %s", out)
    return 0


def _row(name: str, res: Any, per_trial: float | None) -> dict:
    return {
        "reranker": name,
        "R1": res.mean["R1"],
        "mAP": res.mean["mAP"],
        "mINP": res.mean["mINP"],
        "seconds_per_trial": per_trial,
    }
