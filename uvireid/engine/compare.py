"""Side by side, the results of several run folders, and whether they can be compared.

Unsupervised VI-ReID results move with the seed, with the number of GPUs and the images
each BatchNorm sees, with the dataset's preparation and with the evaluation protocol
(``shared/notes/users_pain.md`` Sec. 2: "R1 52 % on 2 GPUs vs 57 % on 4", "BN batch per GPU
is the hidden variable", a self-made SYSU-MM01 of 367 identities). Each run folder
records them (``config.yaml``, ``manifest.json``, each result's ``provenance``);
:func:`compare_runs` reads them and says, besides each run's final table and the mean,
standard deviation and range over the runs (several seeds of one recipe, say; where the
runs differ in a setting, as a sweep's do, over each setting's runs):

* what makes the results **not comparable**: another test set (the dataset's file-list
  hash or sizes), another protocol of evaluation (protocol, mode, direction, shot,
  trials, gallery sampler, feature head), another re-ranker under the same name;
* what else **differs**: every recipe setting apart from the run's name, description and
  folder, and the manifest's world size, per-GPU and per-BatchNorm batch, precision,
  package versions and source revision. The seed is listed as a column, not as a
  difference.

A run that did not finish contributes its last evaluation in ``metrics.jsonl``, marked.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uvireid.engine.run_folder import _flatten
from uvireid.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "RunSummary",
    "final_results",
    "summarize_run",
    "run_folders",
    "compare_runs",
    "format_comparison",
]

METRICS = ("R1", "R10", "R20", "mAP", "mINP")

#: recipe keys that say nothing about how a run trained or was evaluated
_IGNORED_KEYS = ("name", "description", "output_dir", "device", "train.threads", "train.workers")

#: recipe keys that change no final number (where the data lie, an evaluation before the
#: first epoch, which never becomes the best, where the official sampler's file lies, where
#: decoded images are kept): runs that differ in them alone are one setting. The
#: re-ranker's keys are no setting of the 'none' table either (its numbers are the model's).
#: ``evaluation.every`` is one: a stage that starts from the best evaluated epoch starts
#: from another checkpoint (audit FF)
_NOT_A_SETTING = (
    "data.root",
    "evaluation.at_start",
    "evaluation.perm_file",
    "train.image_cache",
)

#: the features meta fields of a result (its provenance's ``features_meta``) that change
#: its numbers: compared between the runs that record them
FEATURE_FIELDS = ("test_flip", "test_size", "test_resize")

#: the provenance fields of a result that define what its numbers measure
_PROTOCOL_FIELDS = (
    "dataset",
    "protocol",
    "mode",
    "direction",
    "shot",
    "trials",
    "sampler",
    "feature_head",
    "num_query",
    "num_gallery",
    "reranker",
)


def final_results(
    results: Any, records: list[dict], notes: list[str]
) -> tuple[dict[str, dict], str]:
    """``({re-ranker: result dict}, where they came from)``: ``results.json``, or the last
    evaluation in ``metrics.jsonl`` of a run that did not finish (said in ``notes``)."""
    if isinstance(results, Mapping) and {"provenance", "mean", "std"} <= set(results):
        notes.append(
            "results.json is not a run's results (it looks like `uvireid eval --json` "
            "output written over it); the table falls back to metrics.jsonl."
        )
        results = None
    if isinstance(results, Mapping) and results:
        return {str(k): v for k, v in results.items() if isinstance(v, Mapping)}, "results.json"
    if isinstance(results, Mapping) and not any(r.get("eval") for r in records):
        notes.append("the run finished without an evaluation (evaluation.protocol: none).")
        return {}, ""
    for index in range(len(records) - 1, -1, -1):
        evals = records[index].get("eval")
        if isinstance(evals, Mapping) and evals:
            epoch = records[index].get("epoch", index)
            notes.append(
                f"the table shows the last evaluation in metrics.jsonl (epoch {epoch}), "
                f"not a final result."
            )
            return {str(k): v for k, v in evals.items() if isinstance(v, Mapping)}, (
                f"metrics.jsonl, epoch {epoch}"
            )
    notes.append("no evaluation result at all (neither results.json nor an 'eval' record).")
    return {}, ""


@dataclass
class RunSummary:
    """What :func:`summarize_run` reads from one run folder."""

    path: Path
    config: dict
    manifest: dict
    results: dict[str, dict]
    source: str
    epochs_done: int
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seed(self) -> Any:
        return self.manifest.get("seed", self.config.get("seed"))


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # not JSON, or bytes that are not UTF-8 (audit MD)
        notes.append(f"{path.name} cannot be read ({exc})")
        return None


def _object(value: Any, what: str, notes: list[str]) -> dict:
    """``value`` when it is a JSON/YAML object, else ``{}`` with a note (a file that
    parses but holds a list or a number: noted and left out, never a traceback: audit OC)."""
    if value is None or isinstance(value, Mapping):
        return dict(value or {})
    notes.append(f"{what} is not an object (a {type(value).__name__}); left out")
    return {}


#: the manifest's fields that compare reads as objects
_MANIFEST_OBJECTS = ("dataset", "versions", "batch", "device", "source")


def _clean_manifest(manifest: Any, notes: list[str]) -> dict:
    m = _object(manifest, "manifest.json", notes)
    for key in _MANIFEST_OBJECTS:
        if key in m:
            m[key] = _object(m[key], f"manifest.json's {key}", notes)
    return m


def _clean_results(results: dict[str, dict], notes: list[str]) -> dict[str, dict]:
    out = {}
    for name, result in results.items():
        out[name] = dict(result)
        for key in ("mean", "std", "provenance"):
            if key in result:
                out[name][key] = _object(result[key], f"the '{name}' result's {key}", notes)
    return out


def summarize_run(path: str | Path) -> RunSummary:
    """Read one run folder (``config.yaml``, ``manifest.json``, ``results.json``,
    ``metrics.jsonl``).

    Raises:
        ConfigError: ``path`` is not a run folder.
    """
    import yaml

    from uvireid.engine.run_folder import RunFolder

    path = Path(path)
    if not path.exists():  # a typo'd name, or a shell pattern that matched nothing
        raise ConfigError(
            f"{path} does not exist; pass folders written by `uvireid run` "
            f"(<output_dir>/<recipe>-<time>), or a folder that holds them"
        )
    if not RunFolder.is_run(path):
        raise ConfigError(
            f"{path} is not a run folder (no config.yaml in it); pass folders written by "
            f"`uvireid run` (<output_dir>/<recipe>-<time>), or a folder that holds them"
        )
    from uvireid.engine.run_folder import _resolved_config

    notes: list[str] = []
    try:
        # resolved by this version: a run of an earlier one lacks the keys added since, and
        # was a setting of its own beside its seeds of today (audit FF)
        cfg = _resolved_config(path / "config.yaml")
    except (OSError, yaml.YAMLError, ConfigError) as exc:
        # ConfigError: _resolved_config's word for a file broken by hand (audit OC: one
        # such run stopped the comparison of all)
        notes.append(f"config.yaml cannot be read ({exc})")
        cfg = {}
    cfg = _object(cfg, "config.yaml", notes)
    manifest = _clean_manifest(_read_json(path / "manifest.json", notes), notes)
    records = [r for r in RunFolder(path).read_metrics() if isinstance(r, dict)]
    results, source = final_results(_read_json(path / "results.json", notes), records, notes)
    results = _clean_results(results, notes)
    done = 1 + max(
        (int(r["epoch"]) for r in records if isinstance(r.get("epoch"), int)), default=-1
    )
    return RunSummary(path, cfg, manifest, results, source, max(done, 0), notes)


def _manifest_figures(m: Mapping) -> dict[str, Any]:
    """The manifest's figures that decide whether two runs trained alike."""
    out: dict[str, Any] = {"world_size": m.get("world_size")}
    stages = (m.get("batch") or {}).get("stages")
    for st in stages if isinstance(stages, list) else []:
        if isinstance(st, Mapping):
            for key in ("per_gpu", "per_batchnorm", "global"):
                out[f"batch.{st.get('stage')}.{key}"] = st.get(key)
    out["precision"] = (m.get("device") or {}).get("precision")
    for pkg, version in sorted((m.get("versions") or {}).items()):
        out[f"versions.{pkg}"] = version
    src = m.get("source") or {}
    if src:
        commit = str(src.get("commit") or "?")[:10]
        out["source"] = f"{commit}{' (changed)' if src.get('dirty') else ''}"
    return out


def _dataset_figures(m: Mapping) -> dict[str, Any]:
    ds = m.get("dataset") or {}
    return {
        f"dataset.{k}": ds.get(k)
        for k in (
            "dataset",
            "split",
            "train_ids",
            "train_images",
            "test_ids",
            "test_images",
            "sha1",
        )
        if k in ds
    }


def _mean_std(values: list[float]) -> dict[str, float]:
    """Mean, population std (ddof=0, as the protocols' over trials), range and count."""
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
        "n": len(a),
    }


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _canon(value: Any) -> Any:
    """``value`` with integral floats as ints (1.0 and 1 are one setting, as ``!=`` has it)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_canon(v) for v in value]
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    return value


def _groups(runs: list[RunSummary], table: list[dict], settings: list[dict]) -> list[dict]:
    """The runs grouped by their settings (``settings[i]`` is run i's): per group, the
    settings that tell it from the others (a stage's copy of a top-level one left out),
    its runs and the mean, std and range of each table's metrics over them (as
    ``aggregate``), in the order of each group's first run."""
    keys = list(_differing(settings))

    def copied(key: str) -> bool:  # a stage's copy of a top-level setting, equal in every run
        head, _, rest = key.partition(".")
        stage, _, inner = rest.partition(".")
        return (
            head == "stages"
            and stage.isascii()
            and stage.isdigit()
            and inner in keys
            and all(s.get(key) == s.get(inner) for s in settings)
        )

    shown = [k for k in keys if not copied(k)]
    grouped: dict[str, dict] = {}
    for run, row, flat in zip(runs, table, settings):
        values = {k: flat.get(k, "<absent>") for k in keys}
        group = grouped.setdefault(
            json.dumps(_canon(values), sort_keys=True, default=str),
            {"settings": {k: values[k] for k in shown}, "runs": [], "collected": {}},
        )
        group["runs"].append(str(run.path))
        for rr, res in row["results"].items():
            for metric, value in res.items():
                if not metric.endswith("_std"):
                    group["collected"].setdefault(rr, {}).setdefault(metric, []).append(value)
    return [
        {
            "settings": g["settings"],
            "runs": g["runs"],
            "aggregate": {
                rr: {m: _mean_std(vals) for m, vals in per.items()}
                for rr, per in g["collected"].items()
            },
        }
        for g in grouped.values()
    ]


def _regdb_trials(runs: list[RunSummary], settings: list[dict]) -> bool:
    """Whether RegDB runs are the protocol's trials: every run of RegDB with its split
    known, and within each setting (``settings`` without ``data.split``) every split as
    often as the others, each setting over the same splits (one run per split; or as many
    seeds of each). Their test sets differ by design then, and the mean over a setting's
    runs is the protocol's figure."""
    splits = [(r.manifest.get("dataset") or {}).get("split") for r in runs]
    if None in splits or not all(
        (r.manifest.get("dataset") or {}).get("dataset") == "regdb" for r in runs
    ):
        return False
    keys = [k for k in _differing(settings) if k != "data.split"]
    counts: dict[str, dict] = {}
    for flat, split in zip(settings, splits):
        key = json.dumps(_canon({k: flat.get(k) for k in keys}), sort_keys=True, default=str)
        counts.setdefault(key, {}).setdefault(split, 0)
        counts[key][split] += 1
    covered = [frozenset(c) for c in counts.values()]
    return all(len(set(c.values())) == 1 for c in counts.values()) and len(set(covered)) == 1


def _best_on_validation(runs: list[RunSummary], groups: list[dict], reasons: list) -> dict | None:
    """Where comparable runs of several settings were all evaluated on the validation ids
    (``data.validation``), the setting of the highest mean mAP of the ``none`` table (as
    ``keep_best`` chooses; the first of equal ones): ``{"settings", "mAP", "runs"}``. A
    setting is chosen on held-out ids only: runs on the test set get none."""
    if reasons or len(groups) < 2 or not _on_validation(runs):
        return None
    scored = [
        (g["aggregate"]["none"]["mAP"]["mean"], -i, g)
        for i, g in enumerate(groups)
        if "mAP" in g["aggregate"].get("none", {})
    ]
    if len(scored) < 2:
        return None
    value, _, best = max(scored, key=lambda t: t[:2])
    return {"settings": best["settings"], "mAP": value, "runs": len(best["runs"])}


def _on_validation(runs: list[RunSummary]) -> bool:
    """Whether every run was evaluated on the validation ids (``data.validation``)."""
    validation = [
        (r.results.get("none", {}).get("provenance") or {}).get("dataset", "") for r in runs
    ]
    # "SYSU-MM01 validation ids", or "synthetic validation ids (SYSU-MM01 protocol)" for a
    # dataset under another's protocol (audit OC: the demo's sweeps never got a best)
    return bool(runs) and all("validation ids" in str(d) for d in validation)


def _differing(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = sorted(set().union(*rows)) if rows else []
    out = {}
    for key in keys:
        values = [row.get(key, "<absent>") for row in rows]
        if any(v != values[0] for v in values[1:]):
            out[key] = values
    return out


def run_folders(paths: list[str | Path]) -> list[Path]:
    """The run folders ``paths`` name: a run folder, or a folder of runs standing for its
    runs (in name order).

    Raises:
        ConfigError: a path is neither a run folder nor a folder of runs, or none is given.
    """
    from uvireid.engine.run_folder import RunFolder

    folders: list[Path] = []
    for p in map(Path, paths):
        if RunFolder.is_run(p):
            folders.append(p)
        elif p.is_dir() and any(RunFolder.is_run(c) for c in p.iterdir()):
            folders.extend(sorted(c for c in p.iterdir() if RunFolder.is_run(c)))
        else:
            summarize_run(p)  # raises, naming it
    if not folders:
        raise ConfigError("uvireid compare: give at least one run folder")
    return folders


def compare_runs(paths: list[str | Path], metrics: tuple[str, ...] = METRICS) -> dict:
    """The comparison of the run folders ``paths`` (a folder that is not a run but holds
    runs stands for them, in name order).

    Returns a JSON-ready dict: ``runs`` (per run: folder, seed, epochs, where its results
    came from, ``{re-ranker: {metric: mean, metric_std: std}}``, notes), ``aggregate``
    (per re-ranker and metric: mean, std (population, ddof=0), min, max and n over the
    runs that have it, all of them), ``groups`` (per re-ranker table, the runs that have it
    grouped by their recipe settings and the manifest's world size, per-GPU and
    per-BatchNorm batch and precision, the seed and the keys that change no final number
    apart, and the re-ranker's for the ``none`` table: per group its ``settings`` (those
    that differ between groups), ``runs`` and ``aggregate`` over them; one group when only
    seeds differ), ``best_on_validation`` (the group of the highest mean mAP where every run
    was evaluated on the validation ids, ``data.validation``; else None), ``on_validation``
    (whether every run was evaluated on them), ``not_comparable``
    (reasons) with ``comparable``, and ``differences`` (``{setting: [value per run]}``).

    Raises:
        ConfigError: a path is neither a run folder nor a folder of runs, or none is given.
    """
    folders = run_folders(paths)
    unique: dict[Path, Path] = {}
    for f in folders:  # a run named twice (a folder of runs and one of them) counts once
        if f.resolve() in unique:
            logger.warning("compare: %s is given twice; counted once", f)
        else:
            unique[f.resolve()] = f
    runs = [summarize_run(f) for f in unique.values()]

    table = []
    collected: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        res = {}
        for rr, result in run.results.items():
            mean, std = result.get("mean") or {}, result.get("std") or {}
            res[rr] = {}
            for metric in metrics:
                if isinstance(mean.get(metric), (int, float)):
                    res[rr][metric] = float(mean[metric])
                    spread = std.get(metric, 0.0)  # null: a NaN that results.json wrote
                    res[rr][f"{metric}_std"] = (
                        float(spread) if isinstance(spread, (int, float)) else math.nan
                    )
                    collected.setdefault(rr, {}).setdefault(metric, []).append(float(mean[metric]))
        table.append(
            {
                "run": str(run.path),
                "seed": run.seed,
                "epochs": run.epochs_done,
                "source": run.source,
                "results": res,
                "notes": run.notes,
            }
        )
    aggregate = {
        rr: {metric: _mean_std(vals) for metric, vals in per.items()}
        for rr, per in collected.items()
    }

    recipes = []
    for run in runs:
        recipes.append(
            {
                k: v
                for k, v in _flatten(run.config).items()
                if k != "seed" and not _under(k, _IGNORED_KEYS)
            }
        )
    # runs of one setting (seeds apart) are summarised together; what changes no final
    # number is no setting, nor is RegDB's split where the runs are its trials. The world
    # size, the batch each GPU and BatchNorm sees and the precision are (users_pain Sec. 2:
    # "R1 52 % on 2 GPUs vs 57 % on 4"); package versions and the source revision are
    # differences listed, not settings
    by_setting = [
        {
            **{k: v for k, v in f.items() if not _under(k, _NOT_A_SETTING)},
            **{
                k: v
                for k, v in _manifest_figures(r.manifest).items()
                if not _under(k, ("versions", "source"))
            },
        }
        for f, r in zip(recipes, runs)
    ]
    regdb_trials = _regdb_trials(runs, by_setting)
    if regdb_trials:
        by_setting = [{k: v for k, v in f.items() if k != "data.split"} for f in by_setting]

    reasons: list[str] = []
    figures = [_dataset_figures(r.manifest) for r in runs]
    if regdb_trials:
        # RegDB: the splits are the protocol's trials (their test sets differ by design);
        # the runs of one split still share theirs (audit KB: a split's runs on another
        # preparation of it were comparable)
        data = _differing([{"dataset.dataset": f.get("dataset.dataset")} for f in figures])
        splits: dict[Any, list[int]] = {}
        for i, recipe in enumerate(recipes):
            splits.setdefault(recipe.get("data.split"), []).append(i)
        for split, idx in splits.items():
            for key, values in _differing([figures[i] for i in idx]).items():
                data[f"{key} (the runs of split {split})"] = values
    else:
        data = _differing(figures)
    for key, values in data.items():
        reasons.append(f"{key} differs: {values} (another test set or another preparation)")
    names = sorted({rr for r in runs for rr in r.results})
    for rr in names:
        provs = [
            {f: (r.results[rr].get("provenance") or {}).get(f) for f in _PROTOCOL_FIELDS}
            for r in runs
            if rr in r.results
        ]
        for key, values in _differing(provs).items():
            reasons.append(f"the '{rr}' results were evaluated with another {key}: {values}")
        metas = [
            (r.results[rr].get("provenance") or {}).get("features_meta") or {}
            for r in runs
            if rr in r.results
        ]
        for key in FEATURE_FIELDS:  # compared where recorded (an older run has none)
            values = [m.get(key) for m in metas if isinstance(m, dict) and key in m]
            if any(v != values[0] for v in values[1:]):
                reasons.append(f"the '{rr}' results were extracted with another {key}: {values}")
    missing = [r.name for r in runs if not r.results]
    if missing:
        reasons.append(f"no evaluation result in {', '.join(missing)}")
    unfinished = [
        f"{r.name} ({r.source})" for r in runs if r.results and r.source != "results.json"
    ]
    if unfinished:
        reasons.append(
            f"{', '.join(unfinished)} did not finish: the last evaluation of a run that was "
            f"stopped is not a final result"
        )

    settings = [{**flat, **_manifest_figures(r.manifest)} for flat, r in zip(recipes, runs)]
    # per table, over the runs that have it; the re-ranker's settings set the re-ranked
    # tables only
    groups = {}
    for rr in names:
        have = [i for i, r in enumerate(runs) if rr in r.results]
        keyed = [
            {k: v for k, v in by_setting[i].items() if rr != "none" or not _under(k, ("reranker",))}
            for i in have
        ]
        groups[rr] = _groups([runs[i] for i in have], [table[i] for i in have], keyed)
    return {
        "runs": table,
        "aggregate": aggregate,
        "groups": groups,
        "best_on_validation": _best_on_validation(runs, groups.get("none", []), reasons),
        "on_validation": _on_validation(runs),
        "comparable": not reasons,
        "not_comparable": reasons,
        "differences": _differing(settings),
        "metrics": list(metrics),
    }


def _cell(value: float | None, std: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} ± {std:.2f}" if std else f"{value:.2f}"


def _summary_row(agg: dict, metrics: list[str], settings: dict) -> str:
    n = max(a["n"] for a in agg.values())
    cells = [
        f"{agg[m]['mean']:.2f} ± {agg[m]['std']:.2f} [{agg[m]['min']:.2f}, {agg[m]['max']:.2f}]"
        if m in agg
        else "-"
        for m in metrics
    ]
    label = f"mean ± std [min, max] over {n} run{'s' if n != 1 else ''}"
    if settings:
        label += ", " + " ".join(f"{k}={v}" for k, v in settings.items())
    return f"| {label} | | | " + " | ".join(cells) + " |"


def format_comparison(report: dict) -> str:
    """The comparison as Markdown tables: one per re-ranker (a row per run and the
    mean ± std over the runs; over each setting's runs where the runs differ in their
    settings, seeds apart), then what makes them not comparable, then what differs."""
    metrics = report["metrics"]
    lines: list[str] = []
    rerankers = sorted(
        {rr for row in report["runs"] for rr in row["results"]}, key=lambda n: (n != "none", n)
    )
    for rr in rerankers:
        lines.append(f"re-ranker: {rr}")
        lines.append("| run | seed | epochs | " + " | ".join(metrics) + " |")
        lines.append("|---|---|---|" + "---|" * len(metrics))
        for row in report["runs"]:
            res = row["results"].get(rr, {})
            mark = "" if row["source"] == "results.json" else f" ({row['source'] or 'no result'})"
            cells = [_cell(res.get(m), res.get(f"{m}_std")) for m in metrics]
            lines.append(
                f"| {Path(row['run']).name}{mark} | {row['seed']} | {row['epochs']} | "
                + " | ".join(cells)
                + " |"
            )
        groups = (report.get("groups") or {}).get(rr) or [
            {"settings": {}, "aggregate": report["aggregate"]}
        ]
        if len(report["runs"]) > 1:
            for group in groups:
                agg = group["aggregate"].get(rr, {})
                if not agg or (len(groups) > 1 and max(a["n"] for a in agg.values()) < 2):
                    continue  # a setting of one run: its row is the summary
                lines.append(_summary_row(agg, metrics, group["settings"]))
        without = [
            Path(r["run"]).name for r in report["runs"] if r["results"] and rr not in r["results"]
        ]
        if without:  # a table the other runs were not evaluated with
            lines.append(f"(no '{rr}' table in {', '.join(without)}: not evaluated with it)")
        lines.append("")
    by_table = report.get("groups") or {}
    # the message of the table with the most settings told apart (the re-ranked ones add
    # the re-ranker's)
    groups = max(by_table.values(), key=lambda g: (len(g), len(g[0]["settings"])), default=[])
    if len(groups) > 1:
        keys = ", ".join(groups[0]["settings"])
        if any(len(g["runs"]) > 1 for g in groups):
            lines.append(
                f"the runs differ in {keys}: each setting is summarised over its own runs "
                f"(a mean over different settings would mean nothing)."
            )
        else:
            lines.append(f"each run has its own {keys}: no mean over them.")
    best = report.get("best_on_validation")
    if best:
        chosen = " ".join(f"{k}={v}" for k, v in best["settings"].items())
        lines.append(
            f"best on the validation ids (mean mAP of the 'none' table): {chosen} "
            f"({best['mAP']:.2f} over {best['runs']} run{'s' if best['runs'] != 1 else ''}); "
            f"for the test set, train it without data.validation: {chosen}"
        )
    elif len(groups) > 1 and report["comparable"] and not report.get("on_validation"):
        # a sweep on the test ids: the table is a result, not a way to choose (PF note M4)
        lines.append(
            "these settings were evaluated on the test ids: choosing one by these figures "
            "tunes it on the test set; to choose, run them with data.validation=true "
            "(held-out training ids) and train the chosen one without it"
        )
    if report["not_comparable"]:
        lines.append("NOT COMPARABLE:")
        lines += [f"  - {r}" for r in report["not_comparable"]]
    else:
        lines.append("comparable: the same test set, protocol and re-rankers in every run.")
    diffs = report["differences"]
    if diffs:
        lines.append("settings that differ (a column per run, in the order above):")
        for key, values in diffs.items():
            lines.append(f"  {key}: " + " | ".join(map(str, values)))
    elif len(report["runs"]) > 1:
        lines.append("no other setting differs (seeds apart).")
    for row in report["runs"]:
        for note in row["notes"]:
            lines.append(f"note, {Path(row['run']).name}: {note}")
    return "\n".join(lines).rstrip() + "\n"
