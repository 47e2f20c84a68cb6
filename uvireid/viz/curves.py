"""Curves over epochs from ``metrics.jsonl``, and the final CMC curve.

A metrics record is one JSON object per epoch (or evaluation); every key is optional::

    {"epoch": 3, "stage": "salcr",
     "loss": {"cluster_contrast": 2.1, "part": 0.7, "total": 2.8},  term -> value
     "clusters": {"visible": 180, "infrared": 175, "outliers_visible": 90, ...},
     "label_quality": {"visible": {"ari": .4, "fmi": .5, "ami": .7, "v_measure": .7}, ...},
     "eval": {"none": {"R1": .., "mAP": ..}, "cmfp": ProtocolResult.to_dict(), ...},
     "seconds": {"extract": 9.1, "cluster": 2.0, "train": 80.5, "eval_extract": ...}}

Spellings are forgiven: ``loss`` or ``losses``; an evaluation either flat (``{"R1": ..}``)
or a ``ProtocolResult.to_dict()`` (``{"mean": {"R1": ..}}``); quality measures in any
case (``ari``/``ARI``, ``v_measure``/``V``). Records without ``epoch`` take their 0-based
record index. When two records give the same quantity for the same epoch (a resumed run
re-logs the epoch it repeats) the later one wins. Values that are not finite numbers are skipped;
nested dicts are flattened to ``a/b`` names, so a loss logged per modality still plots.
Where ``stage`` changes (e.g. DCL, then SALCR) a dotted line marks the epoch.

Each ``plot_*`` function returns ``None`` (and writes nothing) when the records hold none
of its quantity, so the caller can say what is missing instead of showing an empty figure.
All figures are :data:`FIGSIZE` inches; at ``dpi`` the PNG is ``FIGSIZE * dpi`` pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from uvireid.viz import new_figure, save

__all__ = [
    "DPI",
    "FIGSIZE",
    "PHASES",
    "cluster_series",
    "eval_means",
    "eval_series",
    "loss_series",
    "plot_clusters",
    "plot_cmc",
    "plot_eval",
    "plot_label_quality",
    "plot_losses",
    "plot_time",
    "quality_series",
    "stage_starts",
    "time_series",
]

#: (width, height) in inches of every figure of this module
FIGSIZE = (8.0, 4.5)
#: default resolution: 800 x 450 pixels
DPI = 100
#: phases of an epoch, in the order they run (others follow, alphabetically)
PHASES = (
    "extract",
    "refine",
    "cluster",
    "associate",
    "train",
    "evaluate",
    "rerank",
    "eval_extract",
    "eval_evaluate",
    "eval_rerank",
)
#: the two metrics drawn per epoch (issue: "eval R1/mAP per epoch")
EVAL_METRICS = ("R1", "mAP")
#: canonical names of the pseudo-label quality measures (lower-cased key -> name)
MEASURES = {"ari": "ARI", "fmi": "FMI", "ami": "AMI", "v": "V", "v_measure": "V", "nmi": "NMI"}

Series = tuple[list[float], list[float]]  # (epochs, values), epochs ascending


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (bools, strings, NaN, inf are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numbers of a nested dict as ``{"a/b": x}``; a bare number is ``{prefix: x}``."""
    if isinstance(obj, Mapping):
        out: dict[str, float] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}/{key}" if prefix else str(key)))
        return out
    number = _number(obj)
    return {prefix: number} if number is not None and prefix else {}


def _epoch(record: Mapping, index: int) -> float:
    epoch = _number(record.get("epoch"))
    return float(index) if epoch is None else epoch


def _collect(
    records: Iterable[Mapping], pick: Callable[[Mapping], dict[str, float]]
) -> dict[str, Series]:
    """``{name: (epochs, values)}`` of what ``pick(record)`` gives; later records win."""
    by_name: dict[str, dict[float, float]] = {}
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            continue
        for name, value in pick(record).items():
            by_name.setdefault(name, {})[_epoch(record, index)] = value
    return {
        name: (sorted(points), [points[e] for e in sorted(points)])
        for name, points in by_name.items()
    }


def _nested(flat: dict[str, Series]) -> dict[str, dict[str, Series]]:
    """``{"a\\tb": s}`` -> ``{"a": {"b": s}}``."""
    out: dict[str, dict[str, Series]] = {}
    for key, series in flat.items():
        outer, inner = key.split("\t", 1)
        out.setdefault(outer, {})[inner] = series
    return out


def loss_series(records: Iterable[Mapping]) -> dict[str, Series]:
    """``{loss term: (epochs, values)}`` from the records' ``loss`` (or ``losses``)."""

    def pick(record: Mapping) -> dict[str, float]:
        return {**_flatten(record.get("losses")), **_flatten(record.get("loss"))}

    return _collect(records, pick)


def cluster_series(records: Iterable[Mapping]) -> dict[str, Series]:
    """``{name: (epochs, counts)}`` from the records' ``clusters`` (cluster counts per
    modality, and outlier counts where logged, e.g. ``outliers_visible``)."""
    return _collect(records, lambda r: _flatten(r.get("clusters")))


def _measure(name: str) -> str | None:
    """Canonical quality-measure name, or None for what is not an agreement score
    (``num_*`` counts, outlier fractions: the cluster figure shows those)."""
    low = name.lower()
    if low.startswith("num_") or "outlier" in low:
        return None
    return MEASURES.get(low, name)


def quality_series(records: Iterable[Mapping]) -> dict[str, dict[str, Series]]:
    """``{measure: {space: (epochs, values)}}`` from ``label_quality`` (ARI, FMI, AMI, V...).

    ``label_quality`` is ``{space: {measure: value}}``; a flat ``{measure: value}`` is read
    as one space named ``"all"``. Measure names are canonicalised (:data:`MEASURES`).
    """

    def pick(record: Mapping) -> dict[str, float]:
        quality = record.get("label_quality")
        if not isinstance(quality, Mapping):
            return {}
        out = {}
        for space, measures in quality.items():
            items = _flatten(measures).items() if isinstance(measures, Mapping) else []
            if not isinstance(measures, Mapping) and _number(measures) is not None:
                items, space = [(str(space), _number(measures))], "all"
            for measure, value in items:
                name = _measure(measure)
                if name is not None:
                    out[f"{name}\t{space}"] = value
        return out

    return _nested(_collect(records, pick))


def _reranker_label(name: str, result: Mapping) -> str:
    prov = result.get("provenance")
    label = prov.get("reranker") if isinstance(prov, Mapping) else None
    return str(label) if label and name != "none" else str(name)


def eval_means(result: Any) -> Mapping | None:
    """The mean metrics of an evaluation: ``result["mean"]``, or a flat ``result``."""
    if not isinstance(result, Mapping):
        return None
    mean = result.get("mean")
    if isinstance(mean, Mapping):
        return mean
    return result if any(_number(result.get(m)) is not None for m in EVAL_METRICS) else None


#: the provenance fields of an evaluation that make two results incomparable (a resume
#: may change any of them: ``evaluation.*`` is free), and how a label names each value
SETTING_FIELDS = {
    "protocol": "{}",
    "shot": "{}-shot",
    "feature_head": "head {}",
    "trials": "{} trials",
    "sampler": "sampler {}",
    "ranking": "{}",
}


def eval_series(records: Iterable[Mapping]) -> dict[str, dict[str, Series]]:
    """``{metric: {re-ranker: (epochs, percent)}}`` of :data:`EVAL_METRICS` from ``eval``.

    A series is one setting: the re-ranker's full name from each record's provenance
    (``cmfp(k=30)``; a record without one takes its name's only full name, else the name
    under ``eval``), and, in brackets, each evaluation setting of :data:`SETTING_FIELDS`
    (protocol, shot, feature head, trials, sampler, ranking) that takes more than one
    value over the records. A resume may change ``reranker.*`` and ``evaluation.*``: the
    settings were joined into one line under the later name, so the change read as a
    training effect (audits BV, session 19, and CA).
    """
    records = list(records)
    fulls: dict[str, set[str]] = {}
    values: dict[str, set[str]] = {}
    for record in records:
        for name, result in _evals(record):
            full = _reranker_label(str(name), result) if isinstance(result, Mapping) else ""
            if full and full != str(name):
                fulls.setdefault(str(name), set()).add(full)
            for field, value in _setting_of(result).items():
                values.setdefault(field, set()).add(value)
    varying = [f for f in SETTING_FIELDS if len(values.get(f, ())) > 1]

    def label(name: str, result: Mapping) -> str:
        out = _reranker_label(name, result)
        if out == name and len(fulls.get(name, ())) == 1:
            out = next(iter(fulls[name]))
        if varying:
            out += f" [{_describe(_setting_of(result), varying)}]"
        return out

    def pick(record: Mapping) -> dict[str, float]:
        out = {}
        for name, result in _evals(record):
            mean = eval_means(result)
            if mean is None:
                continue
            line = label(str(name), result)
            for metric in EVAL_METRICS:
                value = _number(mean.get(metric))
                if value is not None:
                    out[f"{metric}\t{line}"] = value
        return out

    return _nested(_collect(records, pick))


def setting_changes(records: Iterable[Mapping]) -> list[tuple[float, str, str]]:
    """``[(epoch, old, new)]`` where the records' evaluation settings change
    (:data:`SETTING_FIELDS`; ``old`` and ``new`` name the fields that changed)."""
    out: list[tuple[float, str, str]] = []
    last: dict[str, str] | None = None
    for index, record in enumerate(records):
        setting = next((s for _, r in _evals(record) if (s := _setting_of(r))), None)
        if setting:
            if last is not None:
                changed = [
                    f
                    for f in SETTING_FIELDS
                    if f in setting and f in last and setting[f] != last[f]
                ]
                if changed:
                    epoch = _epoch(record, index)
                    out.append((epoch, _describe(last, changed), _describe(setting, changed)))
            last = setting
    return out


def _evals(record: Any):
    """``(name, result)`` of a record's ``eval`` mapping (none when it has none)."""
    evals = record.get("eval") if isinstance(record, Mapping) else None
    return evals.items() if isinstance(evals, Mapping) else ()


def _setting_of(result: Any) -> dict[str, str]:
    """``{field: value}`` of the :data:`SETTING_FIELDS` a result's provenance records."""
    prov = result.get("provenance") if isinstance(result, Mapping) else None
    if not isinstance(prov, Mapping):
        return {}
    return {f: str(prov[f]) for f in SETTING_FIELDS if prov.get(f) not in (None, "")}


def _describe(setting: Mapping[str, str], fields: Iterable[str]) -> str:
    """``"sysu-all, multi-shot"``: the values of ``fields`` as a label names them."""
    return ", ".join(SETTING_FIELDS[f].format(setting.get(f, "?")) for f in fields)


def time_series(records: Iterable[Mapping]) -> dict[str, Series]:
    """``{phase: (epochs, seconds)}`` from the records' ``seconds``, in :data:`PHASES` order."""
    found = _collect(records, lambda r: _flatten(r.get("seconds")))
    order = [p for p in PHASES if p in found] + sorted(p for p in found if p not in PHASES)
    return {p: found[p] for p in order}


def stage_starts(records: Iterable[Mapping]) -> list[tuple[float, str]]:
    """``[(epoch, stage)]`` where the records' ``stage`` changes (first record included)."""
    out: list[tuple[float, str]] = []
    last = None
    for index, record in enumerate(records):
        stage = record.get("stage") if isinstance(record, Mapping) else None
        if isinstance(stage, str) and stage != last:
            last = stage
            start = record.get("started_from")
            if isinstance(start, Mapping) and start.get("epoch") is not None:
                # start_from: best (PGM's second stage): the line joins the previous
                # epoch, but the weights descend from this one (audit BV)
                stage = f"{stage} (from epoch {start['epoch']})"
            out.append((_epoch(record, index), stage))
    return out


# -- drawing ----------------------------------------------------------------------------------
def _epoch_axis(ax: Any, epochs: Iterable[float], stages: list[tuple[float, str]]) -> None:
    """Integer epoch ticks, a grid, and a dotted line with its name where a stage starts.

    A span under one epoch (a single evaluation) is widened to epoch ± 1 so the axis does
    not show fractions of an epoch.
    """
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    epochs = list(epochs)
    if epochs and max(epochs) - min(epochs) < 1:
        ax.set_xlim(min(epochs) - 1, max(epochs) + 1)
    if len(stages) < 2 or not epochs:
        return
    low, high = min(epochs), max(epochs)
    where = blended_transform_factory(ax.transData, ax.transAxes)
    for epoch, stage in stages:
        if not low <= epoch <= high:
            continue
        ax.axvline(epoch - 0.5, color="0.4", linestyle=":", linewidth=1)
        ax.text(
            epoch - 0.45, 0.98, stage, transform=where, fontsize=7, color="0.3", ha="left", va="top"
        )


def _epochs_of(series: Mapping[str, Series]) -> list[float]:
    return [e for es, _ in series.values() for e in es]


def _lines(ax: Any, series: Mapping[str, Series], annotate_last: bool = False) -> None:
    # "total" first, wide and pale, so a single term equal to it still shows on top
    ordered = sorted(series.items(), key=lambda item: item[0] != "total")
    for label, (epochs, values) in ordered:
        style: dict[str, Any] = {"marker": "o", "markersize": 4}
        if label == "total":
            style.update(color="0.5", linewidth=4, alpha=0.45, marker=None)
        (line,) = ax.plot(epochs, values, label=label, **style)
        if annotate_last and values:
            ax.annotate(
                f"{values[-1]:.1f}",
                (epochs[-1], values[-1]),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=8,
                color=line.get_color(),
            )
    ax.legend(fontsize=8, loc="best")


def plot_losses(
    records: Iterable[Mapping], path: str | os.PathLike, *, dpi: int = DPI
) -> Path | None:
    """Each loss term per epoch (``total`` as a wide grey line; log scale when the terms span
    more than 50x). Returns the PNG written, or ``None`` when no record has a loss."""
    records = list(records)
    series = loss_series(records)
    if not series:
        return None
    fig = new_figure(*FIGSIZE)
    ax = fig.add_subplot()
    _lines(ax, series)
    values = [v for _, vs in series.values() for v in vs]
    if min(values) > 0 and max(values) / min(values) > 50:
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.set_title("Training loss per term")
    _epoch_axis(ax, _epochs_of(series), stage_starts(records))
    return save(fig, path, dpi)


def plot_clusters(
    records: Iterable[Mapping], path: str | os.PathLike, *, dpi: int = DPI
) -> Path | None:
    """Clusters (pseudo-identities) per modality per epoch; outlier counts, where logged
    (``outliers_*`` keys), in a second panel. ``None`` when no record has ``clusters``."""
    records = list(records)
    series = cluster_series(records)
    if not series:
        return None
    counts = {k: s for k, s in series.items() if "outlier" not in k.lower()}
    outliers = {k: s for k, s in series.items() if "outlier" in k.lower()}
    panels = [
        (p, t, y)
        for p, t, y in (
            (counts, "Clusters per modality", "clusters"),
            (outliers, "Outliers per modality", "outlier images"),
        )
        if p
    ]
    stages = stage_starts(records)
    fig = new_figure(*FIGSIZE)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, title, ylabel) in zip(axes, panels, strict=True):
        short = {k.replace("outliers_", "").replace("outliers/", ""): s for k, s in panel.items()}
        _lines(ax, short)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        _epoch_axis(ax, _epochs_of(panel), stages)
    return save(fig, path, dpi)


def plot_label_quality(
    records: Iterable[Mapping], path: str | os.PathLike, *, dpi: int = DPI
) -> Path | None:
    """Pseudo-label quality per epoch: one panel per measure (ARI, FMI, AMI, V, ...), a line
    per label space (visible, infrared, ...). ``None`` when no record has ``label_quality``."""
    records = list(records)
    nested = quality_series(records)
    if not nested:
        return None
    preferred = ["ARI", "FMI", "AMI", "V", "NMI"]
    measures = [m for m in preferred if m in nested]
    measures += sorted(m for m in nested if m not in preferred)
    n_rows = 1 if len(measures) <= 4 else 2
    n_cols = -(-len(measures) // n_rows)
    stages = stage_starts(records)
    # one colour per label space over every panel, and a legend of them all: a panel that
    # holds other spaces (link_precision: cross_v, cross_r, links) drew them in the colours
    # the first panel's legend gave to visible, infrared, ... (audit OB)
    spaces = list(dict.fromkeys(label for m in measures for label in nested[m]))
    colours = {label: f"C{i % 10}" for i, label in enumerate(spaces)}
    fig = new_figure(*FIGSIZE)
    axes = fig.subplots(n_rows, n_cols, sharex=True, squeeze=False).ravel()
    for ax, measure in zip(axes, measures, strict=False):
        series = nested[measure]
        for label, (epochs, values) in series.items():
            ax.plot(epochs, values, marker="o", markersize=4, label=label, color=colours[label])
        values = [v for _, vs in series.values() for v in vs]
        low, high = min(values), max(values)
        top = min(1.02, high + 0.15 * max(high - low, 0.1))
        ax.set_ylim(0.0 if low >= 0 else low - 0.05 * (top - low), top)
        ax.set_title(measure)
        _epoch_axis(ax, _epochs_of(series), stages)
    for ax in axes[len(measures) :]:
        ax.set_visible(False)
    for row in range(n_rows):
        axes[row * n_cols].set_ylabel("agreement with ground truth")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[s], marker="o", markersize=4) for s in spaces]
    fig.legend(handles, spaces, fontsize=8, loc="outside right upper", title="labels of")
    fig.suptitle("Pseudo-label quality")
    return save(fig, path, dpi)


def plot_eval(
    records: Iterable[Mapping], path: str | os.PathLike, *, dpi: int = DPI
) -> Path | None:
    """R1 and mAP (percent) per evaluated epoch, a line per re-ranker, last value written
    next to it. ``None`` when no record has ``eval``."""
    records = list(records)
    nested = eval_series(records)
    if not nested:
        return None
    metrics = [m for m in EVAL_METRICS if m in nested]
    stages = stage_starts(records)
    fig = new_figure(*FIGSIZE)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        _lines(ax, nested[metric], annotate_last=True)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(metric)
        ax.margins(x=0.15, y=0.15)
        _epoch_axis(ax, _epochs_of(nested[metric]), stages)
    fig.suptitle("Test-set evaluation per epoch")
    return save(fig, path, dpi)


def plot_time(
    records: Iterable[Mapping], path: str | os.PathLike, *, dpi: int = DPI
) -> Path | None:
    """Seconds per phase per epoch as stacked bars (where each epoch's time went).
    ``None`` when no record has ``seconds``."""
    records = list(records)
    series = time_series(records)
    if not series:
        return None
    epochs = sorted({e for es, _ in series.values() for e in es})
    fig = new_figure(*FIGSIZE)
    ax = fig.add_subplot()
    bottom = [0.0] * len(epochs)
    colors = _phase_colors(list(series))
    for phase, (es, values) in series.items():
        per_epoch = dict(zip(es, values, strict=True))
        heights = [per_epoch.get(e, 0.0) for e in epochs]
        label = f"{phase} ({sum(heights):.1f} s)"
        ax.bar(epochs, heights, bottom=bottom, width=0.8, label=label, color=colors[phase])
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    total = sum(bottom)
    ax.set_ylabel("seconds")
    ax.set_title(f"Time per phase ({total:.1f} s in all)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="phase")
    _epoch_axis(ax, epochs, stage_starts(records))
    return save(fig, path, dpi)


def _phase_colors(phases: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    fixed = {p: cmap(i) for i, p in enumerate(PHASES)}
    extra = [p for p in phases if p not in fixed]
    fixed.update({p: colormaps["Set3"](i % 12) for i, p in enumerate(extra)})
    return fixed


def plot_cmc(
    results: Mapping[str, Mapping], path: str | os.PathLike, *, dpi: int = DPI
) -> Path | None:
    """Mean CMC curve (percent, rank 1..len) of each result, legend with R1 and mAP.

    Args:
        results: ``{re-ranker: ProtocolResult.to_dict()}`` (``results.json``, or a metrics
            record's ``eval``).

    Returns:
        The PNG, or ``None`` when no result has a ``cmc``.
    """
    curves = {}
    for name, result in results.items():
        cmc = result.get("cmc") if isinstance(result, Mapping) else None
        values = [_number(v) for v in cmc] if isinstance(cmc, list) else []
        if values and all(v is not None for v in values):
            mean = eval_means(result) or {}
            r1, m_ap = _number(mean.get("R1")), _number(mean.get("mAP"))
            label = _reranker_label(name, result)
            if r1 is not None and m_ap is not None:
                label += f"  (R1 {r1:.1f}, mAP {m_ap:.1f})"
            curves[label] = values
    if not curves:
        return None
    fig = new_figure(*FIGSIZE)
    ax = fig.add_subplot()
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 103)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(_cmc_title(results))
    return save(fig, path, dpi)


def _cmc_title(results: Mapping[str, Mapping]) -> str:
    for result in results.values():
        prov = result.get("provenance") if isinstance(result, Mapping) else None
        if isinstance(prov, Mapping) and prov.get("protocol"):
            trials = prov.get("trials")
            extra = f", mean of {trials} trials" if trials else ""
            return f"CMC, {prov['protocol']} ({prov.get('dataset', '?')}{extra})"
    return "CMC"
