"""The run folder: everything a run produced, in one place (DESIGN.md "Configuration").

```
runs/<recipe>-<time>/
  config.yaml      resolved recipe: every value used, defaults included
  manifest.json    versions, source commit, device, world size, batch per GPU, dataset fingerprint
  log.txt          the run's log from INFO up (what the CLI's console shows), whatever the
                   process's logging configuration (:class:`RunLog`)
  metrics.jsonl    one JSON object per epoch / evaluation
  features.npz     test features of the last evaluation
  results.json     the last evaluation's protocol results; written at the end, it marks a
                   finished run ({} for a run that never evaluates: protocol none)
  checkpoints/     latest.pt, written atomically; best.pt only with evaluation.keep_best
                   (chosen on the test set, and logged as such); results.json is always the
                   last evaluation, never an epoch chosen on the test set
```
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from uvireid.config import dump
from uvireid.errors import DatasetError
from uvireid.fileio import atomic_write_json, atomic_write_text, dumps_json

logger = logging.getLogger(__name__)


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide whether two runs are comparable."""
    out = {"python": platform.python_version()}
    for name in (
        "uvireid",
        "torch",
        "torchvision",
        "timm",
        "numpy",
        "scipy",
        "scikit-learn",
        "faiss-cpu",
        "faiss-gpu",
        "hdbscan",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    # the packages whose plugins add parts: a plugin's clusterer at another version is
    # another method, and the recipe names only the part
    from uvireid.registry import PLUGIN_GROUP

    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        dist = getattr(ep, "dist", None)
        if dist is not None and dist.name not in out:
            out[dist.name] = dist.version
    return out


@functools.cache
def source_revision(package_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The git commit of the uvireid source in use: ``{"commit": sha, "dirty": bool}``.

    Only when the package runs from a git checkout that tracks it (an editable install,
    as in development); None for an installed wheel, whose version says enough, or when
    git is missing. ``dirty``: the checkout has uncommitted changes under the package. Two
    runs of one recipe on one machine can differ only through the code, and a last-bit
    change of summation order moves a demo's final mAP by about 1 (benchmarks/RESULTS.md),
    so the commit belongs with the versions. Asked once per process (the manifest and the
    trainer's checkpoints both record it).
    """
    pkg = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parents[1]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(pkg), *args], capture_output=True, text=True, timeout=10
        )

    try:
        # tracked here, so not a copy inside some other repository (a venv in a checkout)
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def device_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "device": device,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(idx)
        info["cuda"] = torch.version.cuda
    return info


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The ``manifest.json`` of the run folder ``path`` as a mapping; None when it is
    missing, no JSON, not UTF-8 or not a mapping (each reader then does without it)."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _started_at(path: Path) -> float | None:
    """When the run in ``path`` started, in seconds since the epoch, as its manifest's
    ``started`` (with its UTC offset) records it; None without one."""
    import datetime

    started = (read_manifest(path) or {}).get("started")
    try:
        return datetime.datetime.strptime(started, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (ValueError, TypeError):
        return None


class RunFolder:
    """One run's folder. Create with :meth:`create`, reopen with :meth:`latest`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def create(cls, output_dir: str | os.PathLike, name: str) -> RunFolder:
        from uvireid.errors import ConfigError

        stamp = time.strftime("%Y%m%d-%H%M%S")
        parent = Path(output_dir)
        try:
            # the parent first: a FileExistsError below then only means a taken name (a
            # dangling link as output_dir raised it forever, audit IC)
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            dangling = parent.is_symlink() and not parent.exists()
            raise ConfigError(
                f"output_dir: {parent} cannot be made a folder ("
                + (f"a link to {os.readlink(parent)}, which is gone" if dangling else exc.strerror)
                + "); choose another output_dir"
                + (", or restore the link's target" if dangling else "")
            ) from None
        base = parent / f"{name}-{stamp}"
        path, n = base, 1
        while True:
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:  # taken, by an earlier run or one starting this second
                n += 1
                path = base.with_name(f"{base.name}-{n}")
            except OSError as exc:
                raise ConfigError(
                    f"output_dir: the run folder {path} cannot be created ({exc.strerror}); "
                    f"choose another output_dir"
                ) from None

    @classmethod
    def latest(cls, output_dir: str | os.PathLike, name: str) -> RunFolder | None:
        """The most recent run folder of recipe ``name`` under ``output_dir`` (or None).

        Only folders named as :meth:`create` names them, ``<name>-YYYYMMDD-HHMMSS[-N]``:
        recipe ``tiny`` never takes over a run of ``tiny-lowlr``."""
        runs = cls.runs_of(output_dir, name)
        return runs[0] if runs else None

    @classmethod
    def runs_of(cls, output_dir: str | os.PathLike, name: str) -> list[RunFolder]:
        """The run folders of recipe ``name`` under ``output_dir``, the latest started
        first (see :meth:`latest`)."""
        root = Path(output_dir)
        if not root.is_dir():
            return []
        pattern = re.compile(re.escape(name) + r"-(\d{8}-\d{6})(?:-(\d+))?")
        cands = []
        for p in root.iterdir():
            m = pattern.fullmatch(p.name)
            if m and (p / "config.yaml").exists():
                cands.append((m.group(1), int(m.group(2) or 1), _started_at(p), p))
        # the run started last: as the manifests record it where every run has one (the
        # names are local time: the hour repeated when daylight saving ends, or another TZ,
        # misorder them), else as the names do; never the folder modified last (a report
        # written into an older run changes its mtime)
        by_manifest = all(c[2] is not None for c in cands)
        cands.sort(key=lambda c: (c[2], c[1]) if by_manifest else (c[0], c[1]), reverse=True)
        return [cls(c[3]) for c in cands]

    @staticmethod
    def is_run(path: str | os.PathLike) -> bool:
        """Whether ``path`` is a run folder (a folder with its ``config.yaml``)."""
        return Path(path).is_dir() and (Path(path) / "config.yaml").is_file()

    def check_free(self) -> None:
        """Raise the :meth:`locked` error now if another process holds the folder (a
        refused ``--resume`` stops before its dataset is built, not minutes later)."""
        with self.locked():
            pass

    def holder(self) -> str | None:
        """The pid (as written in ``.lock``) of another process that holds the folder now,
        ``"unknown"`` if it wrote none, or None when no other process holds it (nothing
        locked, no ``.lock``, this process, or a file system without locks). A probe: the
        lock is released at once and ``.lock`` is not written."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return None
        try:
            fh = open(self.path / ".lock")
        except OSError:
            return None
        with fh:
            try:
                # shared: it conflicts with the run's exclusive lock all the same, and needs
                # only read access (NFS emulates flock with POSIX locks, and an exclusive
                # one on this read-only file would fail there: "not held", audit IC)
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                pid = fh.read().strip() or "unknown"
                return None if pid == str(os.getpid()) else pid
            except OSError:
                return None
            fcntl.flock(fh, fcntl.LOCK_UN)
            return None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder for this process (an advisory ``fcntl`` lock on ``.lock``,
        released when the process ends, killed or not): a second run or ``--resume`` into
        the same folder stops at once instead of interleaving its epochs with this one's.
        Where ``fcntl`` does not exist (Windows) nothing is locked.

        Raises:
            RunFolderError: another process holds the folder (its pid is named), or this
                user cannot write into it.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        from uvireid.errors import RunFolderError

        try:
            fh = open(self.path / ".lock", "a+")
        except PermissionError as exc:  # another user's folder (audit OD: a traceback)
            raise RunFolderError(
                f"{self.path} cannot be written by this user ({exc.strerror}): a run writes "
                f"its checkpoints and metrics there; resume a copy of the folder (cp -r), or "
                f"run as its owner"
            ) from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by another process
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RunFolderError(
                f"{self.path} is in use by another process (pid {holder}); wait for it to "
                f"end, or stop it, before running or resuming into this folder"
            ) from None
        except OSError as exc:  # a file system without locks (Lustre mounted noflock)
            logger.warning(
                "%s: the run folder cannot be locked on this file system (%s); nothing stops "
                "a second run or --resume into it meanwhile",
                self.path,
                exc.strerror or exc,
            )
            fh.close()
            yield
            return
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """:meth:`locked`, and, as no other writer is left, the half-written files a
        killed run left (``.*.tmp`` of :func:`~uvireid.fileio.atomic_write`, a partial
        checkpoint hundreds of MB) removed, with the MiB freed logged: how a training run
        and an evaluation-only run take their folder (audit IC).

        Raises:
            RunFolderError: another process holds the folder.
        """
        from uvireid.fileio import remove_stale_temporaries

        with self.locked():
            freed = remove_stale_temporaries(self.path, self.checkpoints)
            if freed:
                logger.info(
                    "%s: removed %.1f MiB of files a killed run left half-written",
                    self.path,
                    freed / 2**20,
                )
            yield

    # -- files ----------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def write_config(self, cfg: dict) -> None:
        atomic_write_text(self.path / "config.yaml", dump(cfg))

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.path / "manifest.json", manifest)

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.path / name, obj)

    def log_metrics(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl (flushed, so a kill loses no line).

        A line a killed process left unfinished is ended first, so the record is a line of
        its own (appended to the partial line, a resumed run's next epoch was lost too)."""
        p = self.path / "metrics.jsonl"
        cut = False
        if p.exists() and p.stat().st_size:
            with open(p, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                cut = fh.read(1) != b"\n"
        with open(p, "a") as fh:
            fh.write(("\n" if cut else "") + dumps_json(record, default=float) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict]:
        """Every complete line of metrics.jsonl (a line a kill cut short is skipped)."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # cut short by a kill, or damaged bytes (audit MD)
                logger.warning("%s: skipping a truncated or unreadable line", p)
        return out

    def attach_log(self) -> RunLog:
        """Copy log records to log.txt until the returned :class:`RunLog` is closed."""
        return RunLog(self.path / "log.txt")


class _Under(logging.Filter):
    """Drops uvireid's records below ``level`` (what a handler showed before a run)."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "uvireid" or record.name.startswith("uvireid.")
        return not (ours and record.levelno < self.level)


class RunLog:
    """log.txt of one run: every record of the root logger, and uvireid's from INFO up
    whatever the process's logging configuration.

    The CLI configures INFO; a library user's process may not have configured logging at
    all (its records at WARNING and above go to Python's last-resort stderr handler) or
    may have set a higher level. Either way log.txt still gets the run's INFO records
    (its epochs, its tables), and what the console showed before is what it shows during
    the run: uvireid's logger goes to INFO for the run only, the existing handlers drop
    the uvireid records they would not have seen, and an unconfigured process gets a
    stand-in for the last-resort handler (a handler on the root turns that one off).
    :meth:`close` restores all of it.
    """

    def __init__(self, path: str | os.PathLike):
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        root, pkg = logging.getLogger(), logging.getLogger("uvireid")
        self._pkg_level = pkg.level
        self._filtered: list[tuple[logging.Handler, logging.Filter]] = []
        self._console: logging.Handler | None = None
        floor = pkg.getEffectiveLevel()
        if floor > logging.INFO:
            pkg.setLevel(logging.INFO)
            if root.handlers:
                under = _Under(floor)
                for h in root.handlers:
                    h.addFilter(under)
                    self._filtered.append((h, under))
            elif logging.lastResort is not None:
                self._console = logging.StreamHandler()
                self._console.setLevel(max(floor, logging.lastResort.level))
                root.addHandler(self._console)
        root.addHandler(self.handler)

    def close(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        self.handler.close()
        if self._console is not None:
            root.removeHandler(self._console)
        for h, f in self._filtered:
            h.removeFilter(f)
        logging.getLogger("uvireid").setLevel(self._pkg_level)


def refuse_split_overlap(dataset: Any) -> None:
    """Raise when the dataset's split files give an identity (or an image) to both the
    training and the test split: training on test identities gives plausible, meaningless
    figures (audit AR, session 18: it was one warning among the count differences).

    Raises:
        DatasetError: naming the shared identities and the files to fix.
    """
    from uvireid.data.base import listed_twice
    from uvireid.data.check import split_overlaps

    test = getattr(dataset, "test", None) or []
    twice = listed_twice(r.path for r in test)
    if twice:
        # the features file refuses an image given twice: refused here, before training
        # (audit BD: a list with a repeated line trained, then failed at its evaluation)
        raise DatasetError(
            f"{getattr(dataset, 'title', getattr(dataset, 'name', 'the dataset'))}: "
            f"{len(twice)} test image(s) are listed more than once (e.g. {twice[0]}); each "
            f"test image must appear once; fix the test list (a line repeated?)"
        )
    if not (hasattr(dataset, "declared_ids") and hasattr(dataset, "splits")):
        return
    overlap = split_overlaps(dataset)
    if overlap:
        name = getattr(dataset, "name", "DATASET")
        root = getattr(dataset, "root", "ROOT")
        raise DatasetError(
            f"{getattr(dataset, 'title', name)} at {root}: {'; '.join(overlap[:2])}. "
            f"Training on test identities (or evaluating on training images) makes the "
            f"results meaningless; fix the split files (`uvireid data check {root} --dataset "
            f"{name}` lists every problem)"
        )


def dataset_meta(dataset: Any, cfg: dict) -> dict:
    """The provenance of a dataset's features: its ``meta()``, over a default that names the
    recipe's ``data.type`` (and the dataset's ``title``) for a plugin dataset without one
    (``meta`` is optional): with nothing named, its results read as the protocol's dataset,
    "SYSU-MM01" (audit BO, session 19)."""
    # the object's own name first: a library user's dataset passed with a recipe of
    # another data.type (audit BT)
    name = str(getattr(dataset, "name", "") or cfg.get("data", {}).get("type") or "")
    if callable(getattr(dataset, "meta", None)):
        meta = dict(dataset.meta())
        if name:
            meta.setdefault("dataset", name)
        return meta
    meta = {"dataset": name} if name else {}
    title = getattr(dataset, "title", None)
    if title:
        meta["title"] = str(title)
    return meta


def dataset_check(dataset: Any) -> dict | None:
    """The dataset's counts against its release's official figures
    (:func:`uvireid.data.check.check_dataset`, no decoding), for datasets that have them:
    ``{"ok": bool, "problems": [...]}``, each problem also a warning at the start of a run.
    A missing identity or camera folder changes every result while looking like a normal
    run (users of the peer code trained on 367 of SYSU-MM01's 395 identities unawares)."""
    from uvireid.data.check import OFFICIAL_FIGURES, check_dataset

    name = getattr(dataset, "name", None)
    refuse_split_overlap(dataset)
    if not hasattr(dataset, "stats") or not any(f.dataset == name for f in OFFICIAL_FIGURES):
        return None
    # the folder against the release, in the release's arrangement (a validation split
    # moves the val ids from training to test: not a difference of the folder)
    release = dataset.release() if callable(getattr(dataset, "release", None)) else dataset
    report = check_dataset(release, official=True)
    if not report.ok:
        logger.warning(
            "%s at %s is not the official release (%d difference(s), first: %s); results on "
            "it are not comparable with published ones. `uvireid data check %s --dataset %s` "
            "prints the whole table",
            report.title,
            report.root,
            len(report.problems),
            "; ".join(report.problems[:3]),
            report.root,
            name,
        )
    return {"ok": report.ok, "problems": report.problems[:50]}


def build_manifest(cfg: dict, device: str, dataset: Any, *, world_size: int = 1) -> dict:
    """What decides whether two runs are comparable."""
    import yaml

    from uvireid.engine.trainer import precision_of

    train = cfg.get("train", {})
    per_gpu = train.get("batch_ids", 0) * train.get("images_per_id", 0) * 2
    # what train.amp came to here: bf16 only where it is native (audit BH)
    device_block = {
        **device_info(device),
        "precision": precision_of(device, bool(train.get("amp"))),
    }
    return {
        "recipe": cfg.get("name"),
        "command": shlex.join(sys.argv),  # pastes back into a shell as it ran
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
        "source": source_revision(),
        "device": device_block,
        "world_size": world_size,
        "batch": {"per_gpu": per_gpu, "per_batchnorm": per_gpu, "global": per_gpu * world_size},
        "seed": cfg.get("seed"),
        # what a resume is checked against (config.yaml can be edited by hand)
        "config": yaml.safe_load(dump(cfg)),
        "dataset": dataset.fingerprint() if hasattr(dataset, "fingerprint") else None,
        "dataset_check": dataset_check(dataset),
    }


# --------------------------------------------------------------------------------------
# resuming
# --------------------------------------------------------------------------------------

#: recipe keys a resumed run may change freely: where and how fast it runs, and how it is
#: evaluated. Any other change would train the rest of the run otherwise than its start,
#: while config.yaml claims one recipe for all of it: refused unless allowed.
RESUME_FREE_KEYS = (
    "output_dir",
    "device",
    "description",
    "evaluation",
    "reranker",
    "train.threads",
    "train.workers",
    "train.image_cache",
    "train.extract_batch",
    "train.cudnn_benchmark",
    "train.deterministic",
    "train.channels_last",
    "train.images_on_device",
    "train.compile_losses",
    "train.cuda_graphs",
)

_ABSENT = "<absent>"


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value; mappings and lists of mappings are walked (``stages.1.lr``),
    lists of plain values are one value (``train.lr_steps``)."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        items = ((str(i), x) for i, x in enumerate(obj))
    else:
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def recipe_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` for every key whose value differs
    (``"<absent>"`` where one side lacks it), the keys of :data:`RESUME_FREE_KEYS` left
    out."""
    a, b = _flatten(old), _flatten(new)
    out = {}
    for key in sorted(a.keys() | b.keys()):
        if any(key == f or key.startswith(f + ".") for f in RESUME_FREE_KEYS):
            continue
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va != vb:
            out[key] = (va, vb)
    return out


def resume_target(cfg: dict, resume: Any) -> RunFolder | None:
    """The folder a run continues: None for a new run; ``resume=True``: the latest run
    folder of the recipe under its ``output_dir`` (None if there is none); a path: that
    run folder."""
    if resume is False or resume is None:
        return None
    if resume is True:
        return _latest_to_resume(cfg)
    from uvireid.errors import ConfigError

    if not RunFolder.is_run(resume):
        raise ConfigError(
            f"--resume {resume}: not a run folder (a folder with config.yaml, as "
            f"`uvireid run` writes under its output_dir)"
        )
    return RunFolder(resume)


def _latest_to_resume(cfg: dict) -> RunFolder | None:
    """``--resume``'s folder: the recipe's latest run, but where that one stopped before
    its first checkpoint (started again by mistake, or by a scheduler, and stopped while
    it decoded the images), the unfinished run before it that holds a checkpoint, of the
    same recipe, said (audit FC: its epochs were left behind without a word, and training
    began again; audit FF: not a run of the recipe before a change)."""
    from uvireid.engine.checkpoint import LATEST

    runs = RunFolder.runs_of(cfg["output_dir"], cfg["name"])
    if not runs:
        return None
    newest = runs[0]

    def finished(run: RunFolder) -> bool:
        return (run.path / "results.json").exists()

    def progressed(run: RunFolder) -> bool:
        # a trained epoch's record (an evaluation at the start, epoch -1, is none: audit FD)
        return (
            (run.checkpoints / LATEST).exists()
            or finished(run)
            or any(
                isinstance(m, dict) and isinstance(m.get("epoch"), int) and m["epoch"] >= 0
                for m in run.read_metrics()
            )
        )

    if progressed(newest):
        return newest
    for older in runs[1:]:
        if not progressed(older):
            continue
        if finished(older):  # the runs before it were left for it: start the newest again
            return newest
        if (older.checkpoints / LATEST).exists():
            if recipe_changes(
                _resolved_config(older.path / "config.yaml"),
                _resolved_config(newest.path / "config.yaml"),
            ):
                # another recipe's run (the newest was started after a change): resuming it
                # would be refused, or continued with the new settings (audit FF)
                return newest
            logger.warning(
                "--resume: %s, the latest run of '%s', stopped before its first checkpoint "
                "and has nothing to resume; resuming %s, the latest with one (to train in %s "
                "from the start, give it: --resume %s)",
                newest.path,
                cfg["name"],
                older.path,
                newest.path.name,
                shlex.quote(str(newest.path)),
            )
            return older
        return newest
    return newest


def _resolved_config(path: Path) -> dict:
    """A run's ``config.yaml`` resolved by this version: settings added since the run
    started take their defaults, which keep the earlier behaviour (so a run of an earlier
    version is not refused for keys it never had: ``train.resize: <absent> ->
    bilinear``); as written where this version cannot resolve it (a key since removed:
    then that is the change reported)."""
    import yaml

    from uvireid.config import load_recipe
    from uvireid.errors import UvireidError

    try:
        return yaml.safe_load(dump(load_recipe(path))) or {}
    except UvireidError:
        try:
            return yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:  # broken by hand: a traceback without the file (audit IC)
            from uvireid.errors import ConfigError

            raise ConfigError(
                f"{path} is not valid YAML ({exc}); undo the edit, or resume from its recipe "
                f"file with --allow-changes"
            ) from None


def _recorded_config(folder: RunFolder) -> dict | None:
    """The recipe the run last started or resumed with, as its manifest.json records it
    (``config``, resolved); None for a folder whose manifest has no record (written
    before session 25, or never written)."""
    manifest = read_manifest(folder.path)
    if manifest is None:
        return None
    resumes = [r for r in manifest.get("resumes") or [] if isinstance(r, dict)]
    config = (resumes[-1] if resumes else manifest).get("config")
    return config if isinstance(config, dict) else None


def _started_config(folder: RunFolder) -> dict:
    """The recipe a resume is checked against: the manifest's record where there is one
    (config.yaml can be edited by hand, and the resume that reads it would then see no
    change, audit IC), else config.yaml; resolved by this version either way (as
    recorded where this version cannot resolve it)."""
    import yaml

    from uvireid.config import resolve_recipe
    from uvireid.errors import UvireidError

    recorded = _recorded_config(folder)
    if recorded is None:
        return _resolved_config(folder.path / "config.yaml")
    try:
        return yaml.safe_load(dump(resolve_recipe(recorded, folder.path / "config.yaml"))) or {}
    except UvireidError:
        return recorded


def check_resume(folder: RunFolder, cfg: dict, allow_changes: bool = False) -> dict:
    """The recipe changes of a resumed run against its ``config.yaml``
    (:func:`recipe_changes`); any is an error naming them unless ``allow_changes``, then
    each is a warning. Returns them (for the manifest)."""
    import yaml

    from uvireid.errors import ConfigError

    old = _started_config(folder)
    changes = recipe_changes(old, yaml.safe_load(dump(cfg)))
    if not changes:
        return {}
    lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
    if (folder.path / "results.json").exists():
        # a finished run trains no more: the changes would be announced, then do nothing
        raise ConfigError(
            f"--resume: {folder.path} has finished (results.json), so it is not resumed and "
            f"these changes would do nothing:\n{lines}\nTo train with them, start a new run "
            f"from its recipe: uvireid run {shlex.quote(str(folder.path / 'config.yaml'))} KEY=VALUE ..."
        )
    before, after = changes.get("train.optimizer", ("adam", "adam"))
    if (before if before != _ABSENT else "adam") != after:  # a run from before the key: Adam
        # the checkpoint holds the other optimiser's state (Adam's moments are no SGD
        # momentum): loaded into it, the state would be misread or dropped silently
        raise ConfigError(
            f"--resume: train.optimizer differs from the one {folder.path} started with "
            f"({before!r} -> {after!r}); its "
            f"checkpoint holds that optimiser's state, which no other can take up, even with "
            f"--allow-changes. Start a new run with the other optimiser"
        )
    split = {
        k: v for k, v in changes.items() if k in ("data.validation", "data.type", "data.split")
    }
    if split:
        # the checkpoint's model trained on the ids of the other arrangement: its results
        # on the validation ids would include training images, yet read as a validation
        # result (audit FD), or it would test on another dataset's ids as if trained there,
        # or on another RegDB trial's, some of them its training people (audit HA)
        said = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in split.items())
        raise ConfigError(
            f"--resume: {said} changes which identities {folder.path} trains and tests on; "
            f"its model trained on the others, even with --allow-changes. Start a new run "
            f"(or uvireid extract RUN data.validation=... for features of the other ids)"
        )
    if not allow_changes:
        raise ConfigError(
            f"--resume: the recipe differs from the one {folder.path} started with:\n{lines}\n"
            f"A resumed run must train as it started: resume it with its own recipe "
            f"(uvireid run {shlex.quote(str(folder.path))} --resume reads its config.yaml), start a new run, "
            f"or pass --allow-changes to continue with these changes (they are recorded in "
            f"manifest.json; the learning rate and weight decay stay the checkpoint "
            f"optimizer's)"
        )
    logger.warning(
        "resume with --allow-changes: the recipe differs from the one %s started with "
        "(recorded in manifest.json; the learning rate and weight decay stay the "
        "checkpoint optimizer's):\n%s",
        folder.path,
        lines,
    )
    return changes


def check_world_size(folder: RunFolder, world_size: int, allow_changes: bool = False) -> dict:
    """A resume under another number of processes than the run last trained with (its
    manifest's): the global batch (per-GPU batch x processes) would change mid-run at the
    same learning rate. An error naming the launch that continues it, unless
    ``allow_changes`` (then a warning, and ``{"world_size": (old, new)}`` for the
    manifest's record of the resume)."""
    from uvireid.errors import ConfigError

    manifest = read_manifest(folder.path)
    if manifest is None:
        return {}
    resumes = [r for r in manifest.get("resumes") or [] if isinstance(r, dict)]
    old = (resumes[-1] if resumes else manifest).get("world_size")
    if not isinstance(old, int) or old == world_size:
        return {}
    here = shlex.quote(str(folder.path))
    launch = (
        f"torchrun --nproc_per_node {old} -m uvireid run {here} --resume"
        if old > 1
        else f"uvireid run {here} --resume (one process, no torchrun)"
    )
    what = (
        f"--resume: {folder.path} trained with {old} process(es) (world size) and this resume "
        f"has {world_size}: the global batch (per-GPU batch x processes) would change "
        f"mid-run at the same learning rate"
    )
    if not allow_changes:
        raise ConfigError(
            f"{what}. Continue it as it ran: {launch}; or pass --allow-changes to go on "
            f"with {world_size} (recorded in manifest.json)"
        )
    logger.warning("%s (--allow-changes: recorded in manifest.json)", what)
    return {"world_size": (old, world_size)}


def resumed_manifest(folder: RunFolder, current: dict, epochs_done: int, changes: dict) -> dict:
    """The run's first manifest with this resume appended to its ``resumes`` list (command,
    time, versions, source, device, world size and recipe changes of the new process):
    the record of how the run started is kept. ``after_epoch`` is the last finished
    epoch as metrics.jsonl numbers it (0-based; -1: none), ``epochs_done`` their count."""
    after_epoch = epochs_done - 1
    path = folder.path / "manifest.json"
    manifest = read_manifest(folder.path)
    if manifest is None:
        logger.warning("%s is missing or unreadable; writing a new one", path)
        return {**current, "resumed_after_epoch": after_epoch}
    entry = {
        "after_epoch": after_epoch,
        "epochs_done": epochs_done,
        **{k: current.get(k) for k in ("command", "started", "versions", "source", "device")},
        "world_size": current.get("world_size"),
        **({"batch": current["batch"]} if "batch" in current else {}),
        "changes": {k: list(v) for k, v in changes.items()},
        **({"config": current["config"]} if "config" in current else {}),
    }
    manifest.setdefault("resumes", []).append(entry)
    return manifest
