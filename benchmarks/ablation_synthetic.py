"""Ablation on the synthetic dataset: the paper's Table 3 on our data, one script.

    python benchmarks/ablation_synthetic.py [--quick] [--ids N] [--only NAME,...]
                                            [--supervised-map X] [KEY=VALUE ...]

Every row trains the demo recipe (``uvireid/recipes/demo.yaml``: one-stream ResNet-18 at
64x32 from the offline ``synthetic-visible`` prior, DCL stage then SALCR stage) with the
same seed and budget, changing
only the parts named in the row, and reports IR->RGB (SYSU all-search protocol, single
shot, seeded trials) R1 / mAP / mINP without and with CMFP(te) (the same run's features
re-ranked), and the last epoch's pseudo-label ARI (visible, infrared, and every instance
in the visible label space, ``cross_v``). Rows:

- untrained backbone (the recipe's starting weights, evaluated before any training);
- DCL (both stages train with ``cluster_contrast``; no association);
- DCL + DAGL (the SALCR stage trains with ``dual_cluster_contrast`` on otla_dual labels);
- + FGSAL (``part_contrast``), + GPCR (``instance_neighbour``, weight 0.5);
- + CMFP(tr) (the association propagates the features first, ``k_tr``).

``--supervised-map`` adds the supervised bound of ``benchmarks/synthetic_bounds.py`` (the
same backbone trained on the ground-truth identities) as the top row and the ratio of
each row's mAP to it. Extra ``KEY=VALUE`` arguments are recipe overrides applied to every
row (e.g. ``stages.1.epochs=4``). ``--quick`` is a smoke run (tiny budget, 1 trial).

``--seeds 1,2,3`` trains every row once per seed and adds a table of each row's mean and
standard deviation over the seeds: with the demo's 30 test identities one run's mAP moves
by +-2-3 between seeds, the size of most modules' steps, so one seed cannot rank them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DCL = "{type: cluster_contrast}"
DAGL = "{type: dual_cluster_contrast}"
FGSAL = "{type: part_contrast, num_parts: 2}"
GPCR = "{type: instance_neighbour, weight: 0.5, k: 20, num_parts: 2}"
GPCR_GLOBAL = "{type: instance_neighbour, weight: 0.5, k: 20, parts: false}"

#: name -> overrides of the SALCR stage (stage 1) relative to demo.yaml
ROWS: dict[str, list[str]] = {
    "DCL": [
        f"stages.1.losses=[{DCL}]",
        "stages.1.associator=null",
        "stages.1.sampler.type=identity",
    ],
    "DCL+DAGL": [f"stages.1.losses=[{DAGL}]", "associator.k_tr=null"],
    "+FGSAL": [f"stages.1.losses=[{DAGL}, {FGSAL}]", "associator.k_tr=null"],
    "+GPCR": [f"stages.1.losses=[{DAGL}, {FGSAL}, {GPCR}]", "associator.k_tr=null"],
    "+CMFP(tr)": [f"stages.1.losses=[{DAGL}, {FGSAL}, {GPCR}]"],
}


def run_row(
    name: str, overrides: list[str], common: list[str], out: str, seed: int | None = None
) -> dict:
    import uvireid  # noqa: F401
    import uvireid.data.synthetic  # noqa: F401
    from uvireid.config import load_recipe
    from uvireid.engine.runner import run_recipe

    cfg = load_recipe(
        "demo",
        [
            *common,
            *overrides,
            *([] if seed is None else [f"seed={seed}"]),
            f"output_dir={out}",
            f"name=ablation-{name.replace('+', 'p').replace('(', '').replace(')', '')}",
        ],
    )
    t0 = time.perf_counter()
    folder = run_recipe(cfg, progress=False)
    minutes = (time.perf_counter() - t0) / 60
    lines = folder.read_metrics()
    start = next((m for m in lines if m["epoch"] == -1), None)
    last = [m for m in lines if m["epoch"] >= 0][-1]
    q = last.get("label_quality", {})
    return {
        "name": name,
        "seed": cfg["seed"],
        "untrained": _means(start["eval"]) if start else None,
        "eval": _means(last["eval"]),
        "ari": {k: q[k]["ari"] for k in ("visible", "infrared", "cross_v") if k in q},
        "minutes": minutes,
        "folder": str(folder.path),
    }


def fmt(e: dict | None, key: str) -> str:
    if not e or key not in e:
        return "-"
    return f"{e[key]['R1']:.1f} / {e[key]['mAP']:.1f} / {e[key]['mINP']:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--ids", type=int, default=None, help="synthetic identities (default: the demo's 150)"
    )
    ap.add_argument("--only", default=None, help="comma-separated row names")
    ap.add_argument("--supervised-map", type=float, default=None)
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds: every row once per seed, and each row's mean +- std over them",
    )
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    # the console: warnings only; each run's log.txt still gets the whole log (RunLog)
    logging.basicConfig(level=logging.WARNING)
    common = list(args.overrides)
    seeds: list[int | None] = [None]
    if args.seeds:
        if any(o.split("=", 1)[0] == "seed" for o in common):
            ap.error("give the seeds with --seeds or as seed=S, not both")
        try:
            seeds = [int(x) for x in args.seeds.split(",")]
        except ValueError:
            ap.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    if args.ids:
        common.append(f"data.ids={args.ids}")
    if args.quick:
        common += [
            "stages.0.epochs=1",
            "stages.1.epochs=1",
            "stages.0.iters_per_epoch=3",
            "stages.1.iters_per_epoch=3",
            "evaluation.trials=1",
        ]
    wanted = args.only.split(",") if args.only else []
    unknown = [w for w in wanted if w not in ROWS]
    if unknown:
        ap.error(f"--only: no row named {', '.join(map(repr, unknown))}; rows: {', '.join(ROWS)}")
    rows = [r for r in ROWS if not wanted or r in wanted]
    results = []
    for seed in seeds:
        for i, name in enumerate(rows):
            extra = [] if i == 0 else ["evaluation.at_start=false"]
            res = run_row(name, ROWS[name], common + extra, args.out, seed)
            results.append(res)
            print(json.dumps({k: v for k, v in res.items() if k != "untrained"}), flush=True)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python benchmarks/ablation_synthetic.py " + " ".join(argv or sys.argv[1:])
    print(
        f"\n`{cmd.strip()}`: {now}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores visible\n"
    )
    print(
        "| method | IR→RGB R1 / mAP / mINP | with CMFP(te) | ARI vis / ir / cross_v | "
        "mAP / supervised | min |"
    )
    print("|---|---|---|---|---|---|")
    if args.supervised_map:
        print(
            f"| supervised bound (synthetic_bounds.py) | mAP {args.supervised_map:.1f} | | | "
            "100 % | |"
        )
    if results and results[0]["untrained"]:
        u = results[0]["untrained"]
        print(f"| untrained backbone | {fmt(u, 'none')} | {fmt(u, 'cmfp')} | | | |")
    for r in results:
        ari = " / ".join(
            f"{r['ari'].get(k, float('nan')):.3f}" for k in ("visible", "infrared", "cross_v")
        )
        ratio = (
            f"{100 * r['eval']['none']['mAP'] / args.supervised_map:.0f} %"
            if args.supervised_map
            else "-"
        )
        seed = f" (seed {r['seed']})" if len(seeds) > 1 else ""
        print(
            f"| {r['name']}{seed} | {fmt(r['eval'], 'none')} | {fmt(r['eval'], 'cmfp')} | "
            f"{ari} | {ratio} | {r['minutes']:.1f} |"
        )
    if len(seeds) > 1:
        print(seed_table(results, rows, args.supervised_map))
    return 0


def _means(evals: dict) -> dict:
    """``{reranker: {metric: mean}}`` of a metrics.jsonl ``eval`` entry (its rows hold
    ``mean``, ``std`` and ``provenance``; older runs' rows the flat means)."""
    from uvireid.viz.curves import eval_means

    return {name: dict(eval_means(result) or {}) for name, result in evals.items()}


def seed_table(results: list[dict], rows: list[str], bound: float | None) -> str:
    """Each row's IR->RGB mAP (and with CMFP(te)) as mean +- std over the seeds (std with
    n in the denominator), with the seeds' values."""
    out = [
        "",
        "| method | seeds | mAP mean +- std | with CMFP(te) | mAP / supervised | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for name in rows:
        rs = [r for r in results if r["name"] == name]
        m = np.array([r["eval"]["none"]["mAP"] for r in rs])
        c = np.array([r["eval"].get("cmfp", {}).get("mAP", np.nan) for r in rs])
        ratio = f"{100 * m.mean() / bound:.0f} %" if bound else "-"
        out.append(
            f"| {name} | {', '.join(str(r['seed']) for r in rs)} | {m.mean():.1f} +- "
            f"{m.std():.1f} | {c.mean():.1f} +- {c.std():.1f} | {ratio} | "
            + " / ".join(f"{v:.1f}" for v in m)
            + " |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
