"""A grid of settings, one run each: ``uvireid run RECIPE --sweep KEY=V1,V2 ...``.

Unsupervised results move with settings the papers tune per dataset (DBSCAN's eps, the
clusterer's k, a loss weight), and users ask how to choose them. A sweep runs the recipe
once for every combination of the values given (their grid), each as its own run folder
named after its values (``<name>_eps0.5``), and ends with the runs side by side
(:func:`uvireid.engine.compare.compare_runs`). Each run is an ordinary run: its folder
resumes, its report is written. With ``--resume`` a sweep continues: a variant whose run
folder exists is resumed (a finished one is left as it is), the others start.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from uvireid.errors import ConfigError

__all__ = ["Variant", "parse_sweep", "split_values", "variants"]


def split_values(text: str) -> list[str]:
    """``"0.5,0.6,[1,2]"`` -> ``["0.5", "0.6", "[1,2]"]``: commas outside brackets,
    braces and quotes separate values (a YAML list is one value)."""
    out, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [v.strip() for v in out]


def parse_sweep(items: list[str]) -> list[tuple[str, list[str]]]:
    """``["clusterer.eps=0.5,0.6"]`` -> ``[("clusterer.eps", ["0.5", "0.6"])]``, each value
    checked as an override value (YAML).

    Raises:
        ConfigError: not KEY=V1,V2,...; a key swept twice; an empty or repeated value.
    """
    from uvireid.config import parse_override

    out: list[tuple[str, list[str]]] = []
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"--sweep {item!r} is not of the form KEY=V1,V2,...; e.g. --sweep "
                f"clusterer.eps=0.5,0.6,0.7"
            )
        key, _, raw = item.partition("=")
        key = key.strip()
        values = split_values(raw)
        if any(not v for v in values):
            raise ConfigError(f"--sweep {item!r} has an empty value; give V1,V2,... ")
        for v in values:
            parse_override(f"{key}={v}")  # the key's form and the value's YAML
        if len(set(values)) != len(values):
            raise ConfigError(f"--sweep {item!r} repeats a value; give each value once")
        if key in (k for k, _ in out):
            raise ConfigError(f"--sweep {key}= is given twice; list all its values in one")
        if key == "name":
            raise ConfigError("--sweep name=...: each run of a sweep is named after its values")
        out.append((key, values))
    return out


@dataclass(frozen=True)
class Variant:
    """One combination of a sweep: its ``settings`` (key, value text) and run ``name``."""

    settings: tuple[tuple[str, str], ...]
    name: str

    @property
    def overrides(self) -> list[str]:
        """The settings as overrides, and the run's name."""
        return [f"{k}={v}" for k, v in self.settings] + [f"name={self.name}"]

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings)


def _short(key: str, keys: list[str]) -> str:
    """A key's last part, or the whole key where two swept keys share the last part."""
    last = key.rsplit(".", 1)[-1]
    if sum(k.rsplit(".", 1)[-1] == last for k in keys) > 1:
        return key.replace(".", "-")
    return last


def variants(base: str, sweep: list[tuple[str, list[str]]]) -> list[Variant]:
    """Every combination of the sweep's values (the first key varies slowest), each named
    ``<base>_<key><value>...`` (characters a folder name should not hold become '-')."""
    keys = [k for k, _ in sweep]
    out = []
    for combo in itertools.product(*(values for _, values in sweep)):
        settings = tuple(zip(keys, combo, strict=True))
        tag = "_".join(f"{_short(k, keys)}{v}" for k, v in settings)
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{base}_{tag}").strip("-")[:120]
        out.append(Variant(settings, name))
    names = [v.name for v in out]
    if len(set(names)) != len(names):  # values that differ only in the dropped characters
        out = [Variant(v.settings, f"{v.name}_{i + 1}") for i, v in enumerate(out)]
    return out


def sweep_command(recipe: str, overrides: list[str], items: list[str]) -> str:
    """The command that continues a sweep (``--resume``), shell-quoted."""
    import shlex

    parts = ["uvireid", "run", recipe, *overrides]
    for item in items:
        parts += ["--sweep", item]
    return " ".join(shlex.quote(p) for p in [*parts, "--resume"])


def run_sweep(
    recipe: str,
    overrides: list[str],
    items: list[str],
    *,
    resume: bool = False,
    dry_run: bool = False,
    report: bool = True,
    progress: bool = True,
) -> tuple[list[Any], dict[str, str]]:
    """Run (or with ``dry_run`` check) every variant of the sweep.

    Every variant's recipe is loaded and checked (:func:`~uvireid.engine.runner.preflight`,
    what a run refuses at its start) before the first run starts, so a bad value is found
    at once, not after hours. A variant that fails (its error is a
    :class:`~uvireid.errors.UvireidError`) is recorded and the others run.

    Returns:
        ``(folders, failed)``: the run folders of the variants that finished, and the
        error of each that failed, by variant name.
    """
    import logging

    from uvireid.config import load_recipe
    from uvireid.errors import UvireidError

    logger = logging.getLogger(__name__)
    sweep = parse_sweep(items)
    swept = {k for k, _ in sweep}
    for text in overrides:
        key = text.partition("=")[0].strip()
        if key in swept:
            raise ConfigError(
                f"{key} is both set ({text}) and swept (--sweep {key}=...); the sweep's "
                f"values would replace it: drop one"
            )
    base = load_recipe(recipe, overrides)
    plan = variants(base["name"], sweep)
    configs = []
    for v in plan:
        try:
            configs.append(load_recipe(recipe, [*overrides, *v.overrides]))
        except ConfigError as exc:
            raise ConfigError(f"sweep run {v.name} ({v.describe()}): {exc}") from None
    print(f"# sweep of '{base['name']}': {len(plan)} run(s)")
    for v in plan:
        print(f"#   {v.name}: {v.describe()}")
    from uvireid.engine.runner import preflight, run_recipe

    for v, cfg in zip(plan, configs, strict=True):  # what each run would refuse at its start
        try:
            preflight(cfg)
        except ConfigError as exc:
            raise ConfigError(f"sweep run {v.name} ({v.describe()}): {exc}") from None
    if dry_run:
        return [], {}

    folders, failed = [], {}
    for i, (v, cfg) in enumerate(zip(plan, configs, strict=True), start=1):
        print(f"# sweep run {i}/{len(plan)}: {v.name} ({v.describe()})")
        try:
            folder = run_recipe(cfg, resume=resume, progress=progress)
        except UvireidError as exc:
            failed[v.name] = f"{type(exc).__name__}: {exc}"
            logger.error("sweep run %s failed: %s", v.name, failed[v.name])
            continue
        except KeyboardInterrupt:
            import sys

            print(
                f"the sweep stopped in run {i}/{len(plan)}; continue it with "
                f"`{sweep_command(recipe, overrides, items)}`",
                file=sys.stderr,
            )
            raise
        folders.append(folder)
        print(f"run folder: {folder.path}")
        if report:
            from uvireid.viz.report import maybe_report

            maybe_report(folder.path)
    return folders, failed
