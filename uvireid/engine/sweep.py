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

import hashlib
import itertools
import logging
import re
from dataclasses import dataclass
from typing import Any

import yaml

from uvireid.errors import ConfigError

__all__ = ["Variant", "parse_sweep", "split_values", "variants"]

logger = logging.getLogger(__name__)


def split_values(text: str) -> list[str]:
    """``"0.5,0.6,[1,2]"`` -> ``["0.5", "0.6", "[1,2]"]``: commas outside brackets,
    braces and quotes separate values (a YAML list is one value). A quote opens where YAML
    opens one, at the start of a value or after ``[{,:``: an apostrophe inside a word
    (``it's``, ``/d/o'brien``) swallowed the rest of the list (audit MF). Inside single
    quotes ``''`` is YAML's escaped apostrophe, not the end (audit MI)."""
    out, depth, quote, start = [], 0, "", 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1  # a double-quoted escape: the next character is taken as it is
            elif ch == quote and quote == "'" and text[i + 1 : i + 2] == "'":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"" and (text[start:i].strip() == "" or text[:i].rstrip()[-1:] in "[{,:"):
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":  # an unbalanced one closes nothing: a],b is two values (audit OD)
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
        i += 1
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
        # the key's form and the value's YAML; values compared as read (0.5 = 0.50 = 5e-1,
        # 1 = 1.0: one DBSCAN; audit MF)
        read = [yaml.safe_dump(_as_numbers(parse_override(f"{key}={v}")[1])) for v in values]
        if len(set(read)) != len(read):
            raise ConfigError(
                f"--sweep {item!r} repeats a value (as YAML reads it); give each value once"
            )
        if key in (k for k, _ in out):
            raise ConfigError(f"--sweep {key}= is given twice; list all its values in one")
        if key == "name":
            raise ConfigError("--sweep name=...: each run of a sweep is named after its values")
        for other, _ in out:  # the parent's value would replace the child's (audit MF)
            if key.startswith(other + ".") or other.startswith(key + "."):
                parent, child = sorted((key, other), key=len)
                raise ConfigError(
                    f"--sweep {parent}= and --sweep {child}= set one value twice (the "
                    f"{parent} of each run replaces its {child}); sweep the whole {parent} "
                    f"(its values with each {child}), or its {child.removeprefix(parent + '.')} "
                    f"alone"
                )
        out.append((key, values))
    return out


def _as_numbers(value: object) -> object:
    """``value`` with every int as a float (bools kept), recursively: 1 and 1.0 compare as
    the one setting they are."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        return {k: _as_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_numbers(v) for v in value]
    return value


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


#: characters of a run name (a folder name, with ``-<time>`` after it)
NAME_LENGTH = 120


def variants(base: str, sweep: list[tuple[str, list[str]]]) -> list[Variant]:
    """Every combination of the sweep's values (the first key varies slowest), each named
    ``<base>_<key><value>...`` (characters a folder name should not hold become '-').

    A name that had to be shortened, or whose values held characters the name could not
    keep (``a b`` and ``a-b`` would both be ``a-b``), or held ``_`` before a swept key's
    name (which could spell another combination's name), ends in a hash of its settings
    instead: a name depends on the run's own settings (and the swept keys), never on the
    other values of the sweep or their order, so ``--resume`` finds each one's folder
    again, in another sweep too (a hash only where names of one sweep collided named
    ``a b`` alone as ``a-b``: audit MF)."""
    keys = [k for k, _ in sweep]
    combos = [
        tuple(zip(keys, combo, strict=True))
        for combo in itertools.product(*(values for _, values in sweep))
    ]

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")

    raw = ["_".join(f"{_short(k, keys)}{v}" for k, v in c) for c in combos]
    tags = [clean(r) for r in raw]
    # '_' separates the settings: a value holding '_' and a swept key's name (up to its own
    # first '_') could spell another combination's name ('x=1_y2' with y=3 is x=1 with
    # y=2_y3: audit OD), so it gets the hash; other values keep their '_' (two_stream_resnet),
    # and the names of earlier sweeps with them
    heads = [f"_{_short(k, keys).split('_')[0]}" for k in keys]

    def ambiguous(settings: tuple) -> bool:
        return any(h in str(v) for _, v in settings for h in heads)

    base = clean(base)
    names = [f"{base}_{t}" for t in tags]
    out = []
    for settings, tag, name, text in zip(combos, tags, names, raw, strict=True):
        if len(name) > NAME_LENGTH or tag != text or ambiguous(settings):
            digest = hashlib.sha1(repr(settings).encode()).hexdigest()[:8]
            room = NAME_LENGTH - len(digest) - 2
            head = base[: max(20, room - len(tag) - 1)]
            name = f"{head}_{tag}"[:room].rstrip("-_") + f"_{digest}"
        out.append(Variant(settings, name))
    return out


def sweep_command(
    recipe: str, overrides: list[str], items: list[str], no_report: bool = False
) -> str:
    """The command that continues a sweep (``--resume``), shell-quoted; a recipe file by
    its absolute path (the command may be run from elsewhere)."""
    import os
    import shlex

    from uvireid.config import is_builtin_name

    if os.path.isfile(recipe) and not is_builtin_name(recipe):
        recipe = os.path.abspath(recipe)
    parts = ["uvireid", "run", recipe, *overrides]
    for item in items:
        parts += ["--sweep", item]
    parts += ["--no-report"] if no_report else []
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
    from uvireid.config import load_recipe
    from uvireid.errors import UvireidError

    sweep = parse_sweep(items)
    for text in overrides:
        key = text.partition("=")[0].strip()
        for swept, _ in sweep:
            if key == swept or swept.startswith(key + ".") or key.startswith(swept + "."):
                raise ConfigError(
                    f"{key} is both set ({text}) and swept (--sweep {swept}=...); one would "
                    f"replace the other: drop one"
                )
            if key.startswith("stages.") and key.split(".", 2)[-1] == swept:
                logger.warning(
                    "%s: stage %s keeps its own value, so the sweep of %s varies the other "
                    "stages only",
                    text,
                    key.split(".")[1],
                    swept,
                )
    from uvireid.engine.runner import preflight, run_recipe

    base = load_recipe(recipe, overrides)
    plan = variants(base["name"], sweep)
    print(f"# sweep of '{base['name']}': {len(plan)} run(s)")
    for v in plan:
        print(f"#   {v.name}: {v.describe()}")
    configs = []
    for v in plan:  # each run's recipe, and what the run would refuse at its start
        try:
            configs.append(load_recipe(recipe, [*overrides, *v.overrides]))
            preflight(configs[-1])
        except ConfigError as exc:
            raise ConfigError(f"sweep run {v.name} ({v.describe()}): {exc}") from None
    if dry_run:
        return [], {}

    folders, failed = [], {}
    try:
        for i, (v, cfg) in enumerate(zip(plan, configs, strict=True), start=1):
            print(f"# sweep run {i}/{len(plan)}: {v.name} ({v.describe()})")
            try:
                folder = run_recipe(cfg, resume=resume, progress=progress)
            except UvireidError as exc:
                failed[v.name] = f"{type(exc).__name__}: {exc}"
                logger.error("sweep run %s failed: %s", v.name, failed[v.name])
                continue
            folders.append(folder)
            print(f"run folder: {folder.path}")
            if report:
                from uvireid.viz.report import maybe_report

                maybe_report(folder.path)
    except BaseException as exc:
        # stopped or crashed once its runs had started: the command line offers the
        # sweep's --resume for this one only (audit OD: a sweep refused before its first
        # run was offered a --resume that repeats the refusal)
        exc.sweep_started = True
        raise
    return folders, failed
