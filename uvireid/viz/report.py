"""The one-page report of a run folder: ``report.html`` plus one PNG per plot.

``report.html`` is self-contained (every image is embedded as a base64 ``data:`` URI, the
style sheet is inline), so it can be mailed or attached to an issue. It shows, in order:

1. the manifest's summary (recipe, command, device, batch, versions, dataset) and whether
   the run finished;
2. the final table (``results.json``, else the last evaluation in ``metrics.jsonl``) under
   the protocol that produced it;
3. the plots: CMC; R1/mAP, loss terms, cluster counts, pseudo-label quality and time per
   phase over epochs (:mod:`uvireid.viz.curves`); cross-modality distance histograms
   (:mod:`uvireid.viz.distances`); t-SNE (:mod:`uvireid.viz.tsne`); ranking lists
   (:mod:`uvireid.viz.ranking`);
4. notes on what is missing and why (a killed run has no ``results.json`` and maybe a
   truncated ``metrics.jsonl``; an evaluation run has no losses), then the resolved
   config and the tail of ``log.txt``.

A plot whose data is absent is left out (with a note), never drawn empty.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uvireid.engine.compare import final_results
from uvireid.errors import UvireidError
from uvireid.viz import INSTALL_HINT, matplotlib_available, require_matplotlib

__all__ = ["PLOTS", "RECIPE", "Report", "build_report", "maybe_report"]

logger = logging.getLogger(__name__)

#: ``reranker=RECIPE`` (the default) uses the re-ranker of the run's config.yaml
RECIPE = "recipe"
#: the PNGs a report may write, in report order: file name -> (title, caption)
PLOTS: dict[str, tuple[str, str]] = {
    "cmc.png": ("CMC", "Mean CMC curve of the final evaluation, per re-ranker."),
    "curves_eval.png": ("Evaluation per epoch", "R1 and mAP (%) of each evaluated epoch."),
    "curves_losses.png": ("Losses", "Each weighted loss term per epoch."),
    "curves_clusters.png": ("Clusters", "Number of clusters (pseudo-identities) per modality."),
    "curves_label_quality.png": (
        "Pseudo-label quality",
        "ARI / FMI / AMI / V-measure of the pseudo-labels against the ground truth.",
    ),
    "curves_time.png": ("Time", "Seconds per phase per epoch."),
    "distances.png": (
        "Cross-modality distances",
        "Positive (same identity) vs negative pair distances, before and after re-ranking.",
    ),
    "tsne.png": (
        "t-SNE",
        "Identities by colour, modality by marker (circle visible, triangle infrared).",
    ),
    "ranking.png": (
        "Ranking lists",
        "Top-k gallery images per query; green border = same identity, red = other.",
    ),
}
_LOG_TAIL = 40


@dataclass
class Report:
    """What :func:`build_report` wrote.

    Attributes:
        html: the ``report.html`` path.
        images: ``{file name: path}`` of the PNGs written, in report order.
        notes: what is missing, and why, one sentence each.
    """

    html: Path
    images: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- reading the run folder -------------------------------------------------------------------
def _read_json(path: Path, notes: list[str], what: str) -> Any:
    if not path.is_file():
        notes.append(f"{path.name} is missing: {what}.")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} cannot be read ({exc}): {what}.")
        return None


def _unfinished(run_dir: Path) -> str:
    """Why a run folder has no results.json: still training (another process holds its
    lock), or it did not finish. Said so, a report drawn mid-run does not read as a job that
    died."""
    from uvireid.engine.run_folder import RunFolder

    pid = RunFolder(run_dir).holder()
    if pid is not None:
        return f"the run is still training (pid {pid} holds the folder): a report so far"
    return "the run did not finish (or was killed)"


def _read_config(path: Path, notes: list[str]) -> dict:
    import yaml

    if not path.is_file():
        notes.append(
            "config.yaml is missing: the re-ranker and protocol of the run are unknown "
            "(pass --reranker to draw re-ranked plots)."
        )
        return {}
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        notes.append(f"config.yaml cannot be read ({exc}).")
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _read_metrics(run_dir: Path, notes: list[str]) -> list[dict]:
    from uvireid.engine.run_folder import RunFolder

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        notes.append(
            "metrics.jsonl is missing: no curves over epochs (the run stopped before its "
            "first epoch ended, or this folder is not a uvireid run)."
        )
        return []
    parsed = RunFolder(run_dir).read_metrics()
    records = [r for r in parsed if isinstance(r, dict)]
    # lines counted as read_metrics splits them (bytes at \n and \r only: str.splitlines
    # also splits at U+2028 inside a record's string, which called it cut short: audit OB)
    lines = [ln for ln in path.read_bytes().splitlines() if ln.strip()]
    skipped = len(lines) - len(parsed)
    if skipped:
        notes.append(
            f"metrics.jsonl has {skipped} unreadable line(s) (a line cut short: the run was "
            f"killed while writing it); the curves show the {len(records)} complete "
            f"record(s)."
        )
    if len(parsed) > len(records):
        notes.append(
            f"metrics.jsonl has {len(parsed) - len(records)} line(s) that are JSON but not "
            f"records (objects); left out."
        )
    if not records and not skipped:
        notes.append("metrics.jsonl is empty: no curves over epochs.")
    return records


def _protocol(results: Mapping[str, Mapping], cfg: dict) -> str | None:
    for result in results.values():
        prov = result.get("provenance")
        if isinstance(prov, Mapping) and prov.get("protocol"):
            return str(prov["protocol"])
    proto = (cfg.get("evaluation") or {}).get("protocol")
    return str(proto) if proto and proto != "auto" else None


def _gallery_options(results: Mapping[str, Mapping], cfg: dict, feats: Any, notes: list) -> dict:
    """How the run drew its test gallery (``shot``, ``sampler``, ``perm_file``): the
    recipe's evaluation section, else the results' provenance; the plots then show the
    gallery the table measured (audit OB: a multi-shot run's plots were single-shot). The
    official sampler where its file is no longer there (a run folder copied to another
    machine), or the features have no image paths: the seeded gallery, noted (review OR:
    both plots were dropped)."""
    ev = cfg.get("evaluation") if isinstance(cfg.get("evaluation"), Mapping) else {}
    prov = next(
        (r["provenance"] for r in results.values() if isinstance(r.get("provenance"), Mapping)),
        {},
    )
    out = {}
    for key, known in (("shot", ("single", "multi")), ("sampler", ("seeded", "official"))):
        value = ev.get(key) or prov.get(key)
        out[key] = value if value in known else known[0]  # RegDB's provenance: "none"
    if out["sampler"] == "official":
        perm = ev.get("perm_file")
        if not perm:
            why = "the recipe names no perm_file"
        elif not Path(perm).is_file():
            why = f"its file {perm} is not there"
        elif getattr(feats, "paths", None) is None:
            why = "the features file has no image paths"
        else:
            out["perm_file"] = perm
            return out
        notes.append(
            f"the run's table used the official sampler, but {why}: the distance and "
            f"ranking plots draw trial 0 of the seeded gallery instead."
        )
        out["sampler"] = "seeded"
    return out


def _build_reranker(reranker: Any, cfg: dict, notes: list[str]) -> Any:
    from uvireid.registry import RERANKERS

    section = cfg.get("reranker")
    if reranker == RECIPE:
        if not section:
            return None
        spec = dict(section)
    elif reranker is None or (isinstance(reranker, str) and reranker.lower() in ("none", "")):
        return None
    elif isinstance(reranker, str):
        same = isinstance(section, Mapping) and section.get("type") == reranker
        spec = dict(section) if same else {"type": reranker}
    else:
        return reranker  # an object with rerank()
    if reranker != RECIPE:
        return RERANKERS.build(spec)  # a name the user typed: a wrong one is an error
    try:
        return RERANKERS.build(spec)
    except UvireidError as exc:
        notes.append(f"the recipe's re-ranker {spec} cannot be built ({exc}); plots without it.")
        return None


# -- HTML ----------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td.k, th.k { text-align: left; }
.status-ok { color: #1a7f37; } .status-bad { color: #b35900; }
.notes { background: #fff8e5; border: 1px solid #f0d58c; padding: .5em 1.5em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: .8em; }
code { font-size: .9em; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _kv_table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(
        f'<tr><th class="k">{_e(k)}</th><td class="k">{_e(v)}</td></tr>' for k, v in rows
    )
    return f"<table>{body}</table>"


def _compact(value: Any) -> str:
    """A manifest value on one line: ``{"per_gpu": 64}`` -> ``per gpu 64``; a list of
    ``{"stage": "dcl", ...}`` -> ``dcl: ...; salcr: ...``."""
    if isinstance(value, Mapping):
        head = f"{value['stage']}: " if "stage" in value else ""
        body = ", ".join(
            f"{str(k).replace('_', ' ')} {_compact(v)}" for k, v in value.items() if k != "stage"
        )
        return head + body
    if isinstance(value, (list, tuple)):
        return "; ".join(_compact(v) for v in value)
    return str(value)


def _manifest_html(manifest: Any, cfg: dict, run_dir: Path, finished: bool) -> str:
    status = (
        '<p class="status-ok">finished (results.json present)</p>'
        if finished
        else '<p class="status-bad">not finished: no results.json (the run was stopped or is '
        "still running)</p>"
    )
    if not isinstance(manifest, Mapping):
        rows = [("recipe", cfg.get("name", "?")), ("folder", run_dir)]
        return status + _kv_table(rows)
    dev = manifest.get("device") or {}
    device = dev.get("device", "?") if isinstance(dev, Mapping) else dev
    if isinstance(dev, Mapping) and dev.get("gpu"):
        device = f"{device} ({dev['gpu']}, CUDA {dev.get('cuda')})"
    batch = manifest.get("batch") or {}
    versions = manifest.get("versions") or {}
    dataset = manifest.get("dataset")
    rows = [
        ("recipe", manifest.get("recipe") or cfg.get("name", "?")),
        ("description", cfg.get("description", "")),
        ("folder", run_dir),
        ("command", manifest.get("command", "?")),
        ("started", manifest.get("started", "?")),
        ("device", device),
        ("world size", manifest.get("world_size", "?")),
        ("batch", _compact(batch)),
        ("seed", manifest.get("seed", "?")),
        ("versions", _compact(versions)),
        ("dataset", json.dumps(dataset, sort_keys=True)[:400] if dataset else "?"),
    ]
    return status + _kv_table([(k, v) for k, v in rows if v != ""])


def _results_html(results: Mapping[str, Mapping], source: str, protocol: str | None) -> str:
    from uvireid.evaluation.protocols import METRIC_KEYS, ProtocolResult
    from uvireid.viz.curves import eval_means

    if not results:
        return "<p>No evaluation result.</p>"
    parts = [f"<p>From <code>{_e(source)}</code>.</p>"]
    first = next(iter(results.values()))
    prov = first.get("provenance") if isinstance(first.get("provenance"), Mapping) else {}
    try:
        summary = ProtocolResult(
            first.get("per_trial", []), first["mean"], first["std"], first.get("cmc", []), prov
        ).summary()
        # the table names each row's re-ranker and the counts; the rest (the epoch, a
        # start from a checkpoint chosen on the test set, changes) stays
        summary = " | ".join(
            x for x in summary.split(" | ") if not x.startswith(("reranker:", "queries "))
        )
    except (KeyError, TypeError):
        why = (
            "results.json has no provenance (written by an older uvireid)"
            if source == "results.json"
            else "not recorded with these numbers (only their means were logged)"
        )
        summary = f"{why}; the run's protocol: {protocol or 'unknown'}"
    parts.append(f"<p><b>Protocol:</b> {_e(summary)}</p>")
    head = "".join(f"<th>{_e(k)}</th>" for k in METRIC_KEYS)
    rows, any_std = [], False
    for name, result in results.items():
        mean = eval_means(result) or {}
        std = result.get("std") if isinstance(result.get("std"), Mapping) else None
        any_std = any_std or std is not None
        p = result.get("provenance") if isinstance(result.get("provenance"), Mapping) else {}
        label = p.get("reranker", name) if name != "none" else "none"
        cells = []
        for k in METRIC_KEYS:
            value = mean.get(k)
            if not isinstance(value, (int, float)):
                cells.append("<td>–</td>")
            elif std is not None and isinstance(std.get(k), (int, float)):
                cells.append(f"<td>{value:.2f} ± {std[k]:.2f}</td>")
            else:
                cells.append(f"<td>{value:.2f}</td>")
        rows.append(f'<tr><td class="k">{_e(label)}</td>{"".join(cells)}</tr>')
    legend = "Percent, mean ± population std over trials." if any_std else "Percent, means."
    parts.append(
        f'<table><tr><th class="k">re-ranker</th>{head}</tr>{"".join(rows)}</table><p>{legend}</p>'
    )
    prov_rows = [(k, v) for k, v in prov.items() if k not in ("features_meta", "reranker")]
    if prov_rows:
        parts.append(f"<details><summary>Full provenance</summary>{_kv_table(prov_rows)}</details>")
    return "".join(parts)


def _figure_html(name: str, path: Path) -> str:
    title, caption = PLOTS[name]
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure id="{_e(Path(name).stem)}"><h3>{_e(title)}</h3>'
        f'<img src="data:image/png;base64,{data}" alt="{_e(title)}" data-file="{_e(name)}">'
        f"<figcaption>{_e(caption)} <code>{_e(name)}</code></figcaption></figure>"
    )


def _tail(path: Path, n: int) -> str:
    if not path.is_file():
        return ""
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


def _render(
    run_dir: Path,
    manifest: Any,
    cfg: dict,
    results: dict,
    source: str,
    protocol: str | None,
    images: dict[str, Path],
    notes: list[str],
    finished: bool,
    origin: str = "",
) -> str:
    name = (manifest or {}).get("recipe") if isinstance(manifest, Mapping) else None
    title = f"uvireid report: {name or cfg.get('name') or run_dir.name}"
    body = [
        f"<h1>{_e(title)}</h1>",
        "<h2>Run</h2>",
        _manifest_html(manifest, cfg, run_dir, finished),
    ]
    body += ["<h2>Final result</h2>", _results_html(results, source, protocol)]
    if notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in notes)
        body.append(f'<h2>What is missing</h2><div class="notes"><ul>{items}</ul></div>')
    body.append("<h2>Plots</h2>")
    if origin:
        body.append(f"<p>{_e(origin)}</p>")
    body += [_figure_html(n, p) for n, p in images.items()] or ["<p>No plot could be drawn.</p>"]
    config_text = (
        (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    )
    if config_text:
        body.append(
            f"<details><summary>Resolved config (config.yaml)</summary><pre>{_e(config_text)}"
            f"</pre></details>"
        )
    log = _tail(run_dir / "log.txt", _LOG_TAIL)
    if log:
        body.append(
            f"<details><summary>Last {_LOG_TAIL} lines of log.txt</summary><pre>{_e(log)}</pre>"
            "</details>"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    body.append(f"<p><small>Written by <code>uvireid report</code> at {_e(stamp)}.</small></p>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# -- the report ---------------------------------------------------------------------------------
def build_report(
    run_dir: str | os.PathLike,
    *,
    features: str | os.PathLike | None = None,
    reranker: Any = RECIPE,
    queries: int = 6,
    k: int = 10,
    tsne_ids: int = 12,
    out: str | os.PathLike | None = None,
    dpi: int = 100,
    protocol: str | None = None,
    image_root: str | os.PathLike | None = None,
) -> Report:
    """Draw every plot the run folder has data for and write ``report.html``.

    Args:
        run_dir: the run folder (``config.yaml``, ``manifest.json``, ``metrics.jsonl``,
            ``features.npz``, ``results.json``; any of them may be missing).
        features: features file for the distance, t-SNE and ranking plots (default
            ``run_dir/features.npz``).
        reranker: :data:`RECIPE` (the run's re-ranker, if any), a registered name (built with
            the run's settings when it is the run's re-ranker, else with defaults), ``None``
            / ``"none"``, or an object with ``rerank(query, gallery)``.
        queries: ranking lists to draw.
        k: gallery images per ranking list.
        tsne_ids: identities in the t-SNE plot.
        out: folder for ``report.html`` and the PNGs (default ``run_dir``).
        dpi: resolution of every PNG.
        protocol: the protocol whose query/gallery split the distance and ranking plots
            use (default: the run's; for ``features`` of another dataset that the run's
            protocol refuses, the first registered protocol the file fits, noted).
        image_root: the folder the features file's relative image paths are relative to
            (default: the current folder); the ranking lists read the images there.

    Returns:
        :class:`Report`.

    Raises:
        UvireidError: matplotlib is missing (with the install command), ``run_dir`` is
            not a folder, or ``features`` (when given) is missing or unreadable: all before
            anything in the output folder is written or removed.
    """
    from uvireid.fileio import atomic_write_text
    from uvireid.viz import curves, distances, ranking, tsne

    require_matplotlib()
    protocol_arg = protocol
    if protocol_arg is not None and protocol_arg not in _protocol_names():
        raise UvireidError(
            f"protocol {protocol_arg!r} is not a protocol; use one of "
            f"{', '.join(_protocol_names())}"
        )
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise UvireidError(
            f"{run_dir} is a file, not a run folder; to plot a features file: uvireid report "
            f"RUN_DIR --features {run_dir}"
        )
    if not run_dir.is_dir():
        raise UvireidError(
            f"run folder {run_dir} does not exist; expected a folder written by `uvireid run` "
            f"(runs/<recipe>-<time>/); fix: check the path"
        )
    given = None
    if features is not None:  # asked for by name: an error, before any file is touched
        from uvireid.features import load_features

        if not Path(features).is_file():
            raise UvireidError(
                f"features file {features} does not exist (--features); fix: check the path, "
                f"or leave --features out to plot the run's own features.npz"
            )
        given = load_features(features)
    out_dir = Path(out) if out is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    cfg = _read_config(run_dir / "config.yaml", notes)
    manifest = _read_json(
        run_dir / "manifest.json", notes, "no versions, device or dataset summary"
    )
    records = _read_metrics(run_dir, notes)
    raw_results = _read_json(run_dir / "results.json", notes, _unfinished(run_dir))
    results, source = final_results(raw_results, records, notes)
    protocol = _protocol(results, cfg)
    part = _build_reranker(reranker, cfg, notes)  # before any drawing: a typo fails fast

    images: dict[str, Path] = {}
    no_metrics = not (run_dir / "metrics.jsonl").is_file()

    def draw(name: str, fn: Any, *args: Any, missing: str = "", **kwargs: Any) -> None:
        try:
            path = fn(*args, out_dir / name, dpi=dpi, **kwargs)
        except UvireidError as exc:
            notes.append(f"{name} not drawn: {exc}")
            return
        except Exception as exc:  # one plot's bug does not take the page down (audit KA)
            logger.warning("%s could not be drawn", name, exc_info=True)
            notes.append(
                f"{name} not drawn: {type(exc).__name__}: {exc} (a bug; the traceback is "
                f"in the log: please report it)"
            )
            return
        if path is None:
            if no_metrics and "metrics.jsonl" in missing:
                # the file is missing (noted once): guessing a cause would blame the run
                missing = "metrics.jsonl is missing."
            notes.append(f"{name} not drawn: {missing}")
        else:
            images[name] = path

    draw("cmc.png", curves.plot_cmc, results, missing="no result holds a CMC curve.")
    eval_only = bool(records) and all(
        isinstance(r, dict) and r.get("stage") == "evaluation only" for r in records
    )
    if eval_only:  # one evaluation, no epoch: one point on an epoch axis said nothing (BV)
        notes.append(
            "an evaluation-only run: no epochs, so no curves (curves_eval.png, "
            "curves_time.png); its results are the tables above"
        )
    else:
        draw("curves_eval.png", curves.plot_eval, records, missing="no 'eval' in metrics.jsonl.")
    changed = curves.setting_changes(records)
    if changed:
        notes.append(
            "the evaluation settings changed within the run (a resume may change them): "
            + "; ".join(f"{a} -> {b} at epoch {e}" for e, a, b in changed)
            + "; curves_eval.png draws each setting's line apart"
        )
    draw(
        "curves_losses.png",
        curves.plot_losses,
        records,
        missing="no 'losses' in metrics.jsonl (an evaluation-only run, or one stopped before "
        "its first training epoch ended).",
    )
    draw(
        "curves_clusters.png",
        curves.plot_clusters,
        records,
        missing="no 'clusters' in metrics.jsonl (no clustering in this run).",
    )
    draw(
        "curves_label_quality.png",
        curves.plot_label_quality,
        records,
        missing="no 'label_quality' in metrics.jsonl (no pseudo-labels, or no ground truth "
        "to score them).",
    )
    if not eval_only:
        draw("curves_time.png", curves.plot_time, records, missing="no 'seconds' in metrics.jsonl.")

    feats = given if given is not None else _load_features(run_dir / "features.npz", notes)
    origin = ""
    if feats is not None:
        plots_protocol = protocol_arg or protocol
        gallery = _gallery_options(results, cfg, feats, notes)
        if given is not None and protocol_arg is None:
            plots_protocol = _fitting_protocol(feats, protocol, notes)
        origin = _features_origin(feats, given is not None, plots_protocol, notes)
        draw(
            "distances.png",
            distances.plot_distance_histograms,
            feats,
            reranker=part,
            protocol=plots_protocol,
            gallery=gallery,
        )
        draw("tsne.png", tsne.plot_tsne, feats, n_ids=tsne_ids)
        if feats.paths is None:
            notes.append("the features file has no image paths: ranking lists show grey tiles.")
        else:
            n_missing, n_checked, first = ranking.missing_images(feats, image_root)
            if n_missing:  # grey tiles without a word (audit KA)
                where = image_root if image_root is not None else Path.cwd()
                notes.append(
                    f"{n_missing} of {n_checked} image paths checked are no file (e.g. "
                    f"{first}; relative paths are read under {where}): their ranking tiles "
                    f"are grey. Run the report where the run started, or give --image-root."
                )
        draw(
            "ranking.png",
            ranking.plot_ranking,
            feats,
            queries=queries,
            k=k,
            reranker=part,
            protocol=plots_protocol,
            gallery=gallery,
            image_root=image_root,
        )

    for name in PLOTS:  # a PNG of an earlier report that this one could not draw is stale
        stale = out_dir / name
        if name not in images and stale.is_file():
            stale.unlink()
    text = _render(
        run_dir,
        manifest,
        cfg,
        results,
        source,
        protocol,
        images,
        notes,
        raw_results is not None,
        origin,
    )
    path = atomic_write_text(out_dir / "report.html", text)
    logger.info("wrote %s (%d plots, %d notes)", path, len(images), len(notes))
    for note in notes:
        logger.info("report: %s", note)
    return Report(path, images, notes)


def _protocol_names() -> list[str]:
    from uvireid.evaluation.protocols import PROTOCOLS

    return list(PROTOCOLS)


def _fitting_protocol(feats: Any, protocol: str | None, notes: list[str]) -> str | None:
    """The run's protocol when a ``--features`` file fits it, else the first registered
    protocol it fits (a file of another dataset: ``uvireid extract`` on LLCM of a run
    trained on SYSU-MM01), noted; the run's when none fits (its note says why)."""
    from uvireid.errors import ProtocolError
    from uvireid.evaluation.protocols import PROTOCOLS, _check_meta

    def fits(name: str) -> bool:
        try:
            _check_meta(feats, PROTOCOLS[name])
        except ProtocolError:
            return False
        return True

    if protocol is None or protocol not in PROTOCOLS or fits(protocol):
        return protocol
    other = next((name for name in PROTOCOLS if fits(name)), None)
    if other is None:
        return protocol
    notes.append(
        f"the distance and ranking plots use protocol {other}, which the features file fits "
        f"(the run's, {protocol}, does not); pass --protocol to choose another."
    )
    return other


def _features_origin(feats: Any, given: bool, protocol: str | None, notes: list[str]) -> str:
    """Which features the distance, t-SNE and ranking plots show: the file and, from its
    meta, the epoch (a killed run's features.npz is an earlier epoch's). A file given
    with ``--features`` that the run's protocol would refuse gets a note."""
    meta = feats.meta if isinstance(feats.meta, Mapping) else {}
    text = f"The distance, t-SNE and ranking plots are of {feats.source}"
    from uvireid.evaluation.protocols import PROTOCOLS, _check_meta, epoch_label

    if meta.get("epoch") is not None:
        text += f", {epoch_label(meta)}"
    if given and protocol:
        from uvireid.errors import ProtocolError

        spec = PROTOCOLS.get(protocol)
        if spec is not None:
            try:
                _check_meta(feats, spec)
            except ProtocolError as exc:
                notes.append(f"--features does not fit the run's protocol {protocol}: {exc}")
    return text + "."


def _load_features(path: Path, notes: list[str]) -> Any:
    from uvireid.features import load_features

    if not path.is_file():
        notes.append(
            f"{path.name} is missing: no distance histograms, t-SNE or ranking lists (the "
            f"run stopped before writing it, or did not evaluate; pass --features FILE to "
            f"plot another file)."
        )
        return None
    try:
        return load_features(path)
    except UvireidError as exc:
        notes.append(f"{path.name} cannot be used: {exc}")
        return None


def maybe_report(run_dir: str | os.PathLike) -> Path | None:
    """Write the report of a finished run when matplotlib is installed (``uvireid run``
    calls this at its end).

    Returns:
        The ``report.html`` path, or ``None`` when matplotlib is missing (logged with the
        install command) or the report failed (logged as a warning; the run itself is
        complete and ``uvireid report RUN_DIR`` retries).
    """
    if not matplotlib_available():
        logger.info(
            "no report.html: matplotlib is not installed; for the plots run %s, then "
            "`uvireid report %s`",
            INSTALL_HINT,
            run_dir,
        )
        return None
    try:
        return build_report(run_dir).html
    except Exception:  # a plotting failure must not turn a finished run into a failed one
        logger.warning(
            "could not write the report of %s; the run itself is complete; retry with "
            "`uvireid report %s` (traceback follows)",
            run_dir,
            run_dir,
            exc_info=True,
        )
        return None
