"""``uvireid rerank``: evaluate features files before and after re-ranking."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from uvireid.cli import JSON_HELP, write_json
from uvireid.cli._checks import add_trials, positive_int, protocol_inputs
from uvireid.errors import ConfigError, UvireidError

logger = logging.getLogger(__name__)

EPILOG = """\
re-rankers (uvireid list rerankers shows every registered one):
  cmfp          cross-modality feature propagation (SALCR; default k=30, SYSU-MM01's;
                RegDB: --k 8)
  kreciprocal   k-reciprocal encoding (Zhong et al.; k1=20, k2=6, lambda_value=0.3)
  cmrr          cross-modality re-ranking as in MULT/SALCR (default k=15, SYSU-MM01's;
                RegDB: --k 8)
  aim           SAAI's affinity inference (default k1=4, k2=1, SYSU-MM01's; RegDB:
                --set k1=8 --set k2=2)
  all           every registered re-ranker, side by side (R1 / mAP / mINP / time)

examples:
  uvireid rerank sysu_test.npz --reranker cmfp --k 30 --protocol sysu-all
  uvireid rerank sysu_test.npz --reranker aim --set k1=4 --set k2=1 --protocol sysu-all
  uvireid rerank sysu_test.npz --reranker all --protocol sysu-all --trials 10 --json rr.json
  uvireid rerank regdb_split1.npz --reranker all --k 8 --set aim.k1=8 --set aim.k2=2 \\
      --protocol regdb-v2i   (--k: every re-ranker that has a k; --set aim.k1=8: AIM's only)
  uvireid rerank regdb_split1.npz --reranker cmfp --k 8 --protocol regdb-v2i
  uvireid rerank sysu_test.npz --reranker cmfp --protocol sysu-all --device cuda

The features file may come from uvireid (uvireid.save_features) or from any codebase that
writes an .npz with feats (N, d), pids, cams, modality (0 visible, 1 infrared); see the
README's "Features file" and examples/export_features/ in the uvireid source repository.
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
    p.add_argument(
        "--k",
        type=positive_int,  # refused at once, not after the other re-rankers of `all` ran
        default=None,
        help="k of every re-ranker that has one (cmfp, cmrr, ...)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another re-ranker keyword, e.g. --set k1=4 (repeatable); with --reranker all "
        "a plain KEY goes to every re-ranker that has it, NAME.KEY (--set aim.k1=8) to NAME only",
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
    p.add_argument("--json", default=None, metavar="OUT.json", help=JSON_HELP)
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


def _accepted(name: str) -> set[str]:
    from uvireid.registry import RERANKERS

    return set(RERANKERS.signature(name).parameters)


def _takes_any_keyword(name: str) -> bool:
    """Whether re-ranker ``name`` takes ``**kwargs`` (a plugin's): then any key may be its."""
    import inspect

    from uvireid.registry import RERANKERS

    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        for p in RERANKERS.signature(name).parameters.values()
    )


def _split_scoped(kwargs: dict[str, Any], names: list[str]) -> tuple[dict, dict]:
    """``(plain, scoped)``: ``--set NAME.KEY=V`` for a registered re-ranker NAME goes to
    ``scoped[NAME][KEY]``; every other keyword is plain."""
    from uvireid._suggest import closest
    from uvireid.registry import RERANKERS

    plain: dict[str, Any] = {}
    scoped: dict[str, dict[str, Any]] = {}
    for key, value in kwargs.items():
        head, dot, rest = key.partition(".")
        if not dot:
            plain[key] = value
            continue
        if head not in RERANKERS.names():
            near = closest(head, RERANKERS.names(), n=1)
            hint = f"; did you mean '{near[0]}.{rest}'?" if near else ""
            raise ConfigError(
                f"--set {key}=: '{head}' is not a registered re-ranker{hint} (NAME.KEY=VALUE "
                f"sets KEY of re-ranker NAME only)"
            )
        if head not in names:
            raise ConfigError(
                f"--set {key}= is for re-ranker '{head}', which this command does not run "
                f"(--reranker {', '.join(names)})"
            )
        scoped.setdefault(head, {})[rest] = value
    return plain, scoped


def _plan(kwargs: dict[str, Any], names: list[str], every: bool) -> dict[str, dict[str, Any]]:
    """The keywords of each re-ranker to build.

    One re-ranker: every keyword is its own (a wrong one is the registry's error, with the
    closest valid name). ``all``: ``NAME.KEY`` goes to NAME only; a plain KEY to every
    re-ranker that takes it, and a KEY that none takes is an error (not silently dropped).
    """
    plain, scoped = _split_scoped(kwargs, names)
    if not every:
        own = scoped.get(names[0], {})
        twice = sorted(set(plain) & set(own))
        if twice:  # which one would win is not the user's intent to guess (audit NK)
            raise ConfigError(
                f"--set {names[0]}.{twice[0]}= and {twice[0]} (plain or --k) are given "
                f"twice for one re-ranker; give each keyword once"
            )
        return {names[0]: {**plain, **own}}
    accepted = {n: _accepted(n) for n in names}
    for n, own in scoped.items():  # a typo in NAME.KEY stops before any evaluation (NK)
        wrong = sorted(k for k in own if k not in accepted[n])
        if wrong and not _takes_any_keyword(n):
            from uvireid._suggest import did_you_mean

            raise ConfigError(
                f"--set {n}.{wrong[0]}=: re-ranker '{n}' has no keyword '{wrong[0]}'"
                f"{did_you_mean(wrong[0], sorted(accepted[n]))} (its keywords: "
                f"{', '.join(sorted(accepted[n]))})"
            )
    known = set().union(*accepted.values())
    for key in plain:
        if key not in known:
            from uvireid._suggest import did_you_mean

            raise ConfigError(
                f"--set {key}=: no re-ranker has a keyword '{key}'"
                f"{did_you_mean(key, sorted(known))} (keywords: {', '.join(sorted(known))})"
            )
    return {
        n: {**{k: v for k, v in plain.items() if k in accepted[n]}, **scoped.get(n, {})}
        for n in names
    }


def _build(name: str, kwargs: dict[str, Any]) -> Any:
    from uvireid.registry import RERANKERS

    return RERANKERS.build({"type": name, **kwargs})


def _label(name: str, part: Any, kwargs: dict[str, Any]) -> str:
    """A row's name: the part's own ``name`` (built-ins show their settings), else the
    registry name with the keywords it was given."""
    own = getattr(part, "name", None)
    if own:
        return str(own)
    given = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{name}({given})" if given else name


def _side_by_side(rows: list[dict]) -> str:
    head = f"{'reranker':40s} {'R1':>7s} {'mAP':>7s} {'mINP':>7s} {'time/trial':>11s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("failed"):
            lines.append(f"{r['reranker']:40s} failed: {r['failed']}")
            continue
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

    device = resolve_device(check_device(args.device, "--device", "--device"))
    every = args.reranker == "all"
    if not every and args.reranker not in RERANKERS.names():
        from uvireid._suggest import closest

        choices = [*RERANKERS.names(), "all"]  # audit NK: 'ALL' got no hint
        near = closest(str(args.reranker).lower(), choices, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ConfigError(
            f"--reranker '{args.reranker}' is not a registered re-ranker{hint} (available: "
            f"{', '.join(choices)})"
        )
    names = RERANKERS.names() if every else [args.reranker]
    plan = _plan(_keywords(args), names, every)
    parts, failed = [], {}
    for n in names:
        try:
            built = _build(n, plan[n])
        except UvireidError as exc:
            if not every:
                raise
            if plan[n]:  # the user's own keywords for it are wrong: say so before any work
                raise ConfigError(f"re-ranker '{n}' cannot be built with {plan[n]}: {exc}") from exc
            failed[n] = f"{type(exc).__name__}: {exc}"
            continue
        parts.append(_Timed(OnDevice(built, device), _label(n, built, plan[n])))
    if every:
        given = {
            k: [n for n in names if k in plan[n]] for k in {k for p in plan.values() for k in p}
        }
        if given:
            print(
                "keywords: "
                + "; ".join(f"{k} -> {', '.join(ns)}" for k, ns in sorted(given.items()))
            )

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
        try:
            res = evaluate(part)
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is any exception
            if not every:
                raise
            # one re-ranker that cannot run (refused for memory, or a plugin's bug) does
            # not cost the others' results: its row says why, and the command ends with an
            # error
            failed[part.name] = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, (UvireidError, MemoryError)):
                logger.warning("%s failed", part.name, exc_info=exc)
            rows.append({"reranker": part.name, "failed": failed[part.name]})
            continue
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
    if every:
        listed = {r["reranker"] for r in rows}
        rows += [{"reranker": n, "failed": why} for n, why in failed.items() if n not in listed]
        print(base.summary().replace("reranker: none", "reranker: see below"))
        print(_side_by_side(rows))
    if args.json is not None:
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
            "failed": failed,
        }
        write_json(args, doc)
    if failed:
        for n, why in failed.items():
            print(f"error: re-ranker {n} failed: {why}", file=sys.stderr)
        return 2
    return 0


def _row(name: str, res: Any, per_trial: float | None) -> dict:
    return {
        "reranker": name,
        "R1": res.mean["R1"],
        "mAP": res.mean["mAP"],
        "mINP": res.mean["mINP"],
        "seconds_per_trial": per_trial,
    }
