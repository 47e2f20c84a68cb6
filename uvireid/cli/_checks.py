"""What the commands check before their work: output paths, features-file arguments."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from uvireid.errors import ConfigError
from uvireid.fileio import written_through


def output_file(path: str | os.PathLike, option: str, example: str = "out.json") -> Path:
    """A file a command will write (``--json``, ``-o``): not a folder, in a folder that
    exists or can be made and is writable. Checked at the start, so a long evaluation does
    not end in a traceback about its output.

    Raises:
        ConfigError: naming the option and the problem.
    """
    if not str(path).strip():  # `--json "$OUT"` with OUT unset (audit IB)
        raise ConfigError(f"{option} is empty; give a file path (e.g. {option} {example})")
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{option} {out} is a folder; give a file path (e.g. {out / example})")
    if written_through(out):  # audit BK: the probe of its folder refused /dev/fd/N
        if not out.exists():
            raise ConfigError(
                f"{option} {out} is a link to {os.readlink(out)}, which does not exist; "
                f"create its target or give another path"
            )
        if not os.access(out, os.W_OK):
            raise ConfigError(f"{option} {out} cannot be written by this user")
        return out
    _writable_folder(out.parent, option, out)
    return out


def output_folder(path: str | os.PathLike, option: str) -> Path:
    """A folder a command will write into: not a file, creatable and writable.

    Raises:
        ConfigError: naming the option and the problem.
    """
    if not str(path).strip():  # `--out "$OUT"` with OUT unset: not the current folder
        raise ConfigError(f"{option} is empty; give a folder path (e.g. {option} reports/)")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{option} {out} is a file, not a folder; give a folder path")
    _writable_folder(out, option, out)
    return out


def missing_folders(path: str | os.PathLike) -> list[Path]:
    """The folders of ``path`` (itself and its parents) that do not exist yet, deepest
    first: what :func:`output_folder` makes, for a command to remove again when it is
    refused after (the folders left empty; none that existed before)."""
    out, p = [], Path(path).absolute()
    while not p.exists() and p != p.parent:
        if p.name != "..":  # rmdir("x/..") is refused: it names x's parent
            out.append(p)
        p = p.parent
    return out


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) where they are empty; nothing else."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (the command wrote there), or gone
            return


def _writable_folder(folder: Path, option: str, target: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{option} {target}: cannot create the folder {folder} ({exc.strerror or exc})"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {target}: the folder {folder} is not writable")
    import tempfile

    try:  # what the permission bits do not show (a read-only mount, /proc, a full disk)
        fd, probe = tempfile.mkstemp(prefix=".uvireid-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"{option} {target}: cannot write into the folder {folder} "
            f"({exc.strerror or exc}); choose another path"
        ) from None


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_trials(parser: Any) -> None:
    """``--trials`` of ``uvireid eval`` / ``rerank``: None unless given, so that
    :func:`protocol_inputs` can refuse it on RegDB (then 10)."""
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help="gallery samples (SYSU, LLCM; default 10; RegDB: its split files are the trials)",
    )


def protocol_inputs(args: Any) -> Any:
    """The protocol of ``uvireid eval`` / ``uvireid rerank`` (``args.protocol``), with their
    features files and ``--json`` checked before any file is read.

    Raises:
        ProtocolError: several files for a protocol other than RegDB's, or one file twice.
        ConfigError: a ``--json`` path that cannot be written.
    """
    from uvireid.errors import ProtocolError
    from uvireid.evaluation.protocols import get_protocol

    spec = get_protocol(args.protocol)
    # refused here in the flags' own names (the library's messages name its parameters)
    # (RegDB and LLCM: the protocol's own refusals, which name their fix, come later)
    if spec.dataset != "regdb" and getattr(args, "trials", None) is not None and args.trials < 1:
        raise ProtocolError(f"--trials must be 1 or more, got {args.trials}")
    if (
        spec.dataset == "sysu"
        and getattr(args, "sampler", None) == "official"
        and not getattr(args, "perm_file", None)
    ):
        raise ProtocolError(
            "--sampler official needs --perm-file <SYSU-MM01 root>/exp/rand_perm_cam.mat "
            "(the official kit's gallery permutations)"
        )
    has_runs = hasattr(args, "runs")  # `uvireid eval` has --runs, `uvireid rerank` not
    runs = getattr(args, "runs", False)
    if runs and spec.dataset == "regdb":
        raise ProtocolError(
            "--runs takes one file per run, and a RegDB run is ten split files: evaluate "
            "each run's splits with one command (uvireid eval split{1..10}.npz) and compare"
        )
    if runs and len(args.features) < 2:
        missing = [f for f in args.features if not Path(f).exists()]
        raise ProtocolError(
            f"{missing[0]} does not exist (a shell pattern that matched nothing?)"
            if missing
            else "--runs needs the features files of two runs or more"
        )
    stray = [str(f) for f in args.features if "=" in str(f) and not Path(f).exists()]
    if stray:  # `--set k1=4 k2=1`: k2=1 left over as a positional (audit IB)
        raise ProtocolError(
            f"{stray[0]} is not a features file (there is no such file): a KEY=VALUE "
            f"keyword needs its own --set (--set {stray[0]})"
        )
    if len(args.features) > 1 and spec.dataset != "regdb" and not runs:
        raise ProtocolError(
            f"{len(args.features)} features files given for {spec.name} "
            f"({', '.join(map(str, args.features))}); only RegDB averages "
            f"several files (one per split); pass one {spec.dataset_name} test-set file"
            + (", or add --runs to compare runs (seeds) of one method" if has_runs else "")
        )
    seen = [Path(f).resolve() for f in args.features]
    if len(set(seen)) < len(seen):
        raise ProtocolError(
            "the same features file is given twice; each file (a RegDB split, or a run under "
            "--runs) counts once"
        )
    if len(seen) > 1:  # a copy under another name is the same split too
        import hashlib

        digests: dict[str, Path] = {}
        for path in seen:
            if path.is_file():
                digest = hashlib.sha1(path.read_bytes()).hexdigest()
                if digest in digests:
                    raise ProtocolError(
                        f"{path} and {digests[digest]} are the same file (identical bytes); "
                        f"each file (a RegDB split, or a run under --runs) counts once"
                    )
                digests[digest] = path
    if spec.dataset == "regdb" and getattr(args, "trials", None) is not None:
        raise ProtocolError(
            "--trials does not apply to RegDB: it samples no gallery; its trials are the "
            "split files given (one per split, averaged). Drop --trials"
        )
    if getattr(args, "trials", None) is None:
        args.trials = 10
    out = json_output(args, reading=seen, what="a features file")
    if out is not None:
        from uvireid.engine.run_folder import RunFolder

        refuse_a_runs_own_file(out, [p.parent for p in seen if RunFolder.is_run(p.parent)])
    return spec


#: the files `uvireid run` writes into a run folder (``engine/run_folder.py``), its lock
#: and its checkpoints/ folder: never another command's ``--json``
RUN_FILES = ("config.yaml", "manifest.json", "log.txt", "metrics.jsonl", "features.npz")
RUN_FILES += ("results.json", "report.html", ".lock", "checkpoints")


def refuse_a_runs_own_file(out: Path, runs: Any) -> None:
    """Refuse ``--json`` naming a file of one of the run folders ``runs`` that the command
    reads (``RUN/features.npz --json RUN/results.json`` would replace, or for a run not
    finished yet create, the record that marks the run finished), whether it exists or
    not; any other name in the folder is the user's. Names are compared without case:
    on a case-insensitive file system (macOS, Windows) ``RUN/Results.json`` is the run's
    ``results.json``.

    Raises:
        ConfigError: ``out`` is one of :data:`RUN_FILES` of a run, or under its checkpoints.
    """
    target = out.resolve()
    own = {name.casefold() for name in RUN_FILES}
    for run in {Path(r).resolve() for r in runs}:
        if not target.is_relative_to(run) or target == run:
            continue
        first, *below = target.relative_to(run).parts
        if (first.casefold() in own and not below) or first.casefold() == "checkpoints":
            raise ConfigError(
                f"--json {out} is the run folder's own {target.relative_to(run)}: {run} is "
                f"a run being read; give another name (e.g. {run / 'eval.json'})"
            )


def json_output(args: Any, reading: Any = (), what: str = "a file") -> Path | None:
    """The file ``--json`` names, checked before the command's work (``None`` for no
    ``--json`` or ``--json -``, stdout); so a long evaluation does not end in a traceback
    about its output, nor write its JSON over an input.

    Args:
        args: the command's arguments, with ``json``.
        reading: resolved paths of the files the command reads, named ``what``.

    Raises:
        ConfigError: a path that cannot be written, or one of ``reading`` (a run folder's
            own files: :func:`refuse_a_runs_own_file`).
    """
    if args.json is None or args.json == "-":
        return None
    out = output_file(args.json, "--json")
    target = out.resolve()
    if target in set(reading):  # the JSON would replace an input (audit IB)
        raise ConfigError(f"--json {args.json} is {what} being read; give another --json path")
    return out


def checkpoint_as_source(source: str, command: str) -> None:
    """Refuse a checkpoint file given as SOURCE (``RUN/checkpoints/latest.pt`` for ``RUN``):
    otherwise read as a recipe (extract) or a features file (match) (audit QP)."""
    import zipfile

    path = Path(source)
    if not path.is_file():
        return
    is_ckpt = path.suffix.lower() in (".pt", ".pth", ".ckpt")
    if not is_ckpt and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            is_ckpt = any(n.endswith("/data.pkl") for n in z.namelist())
    if is_ckpt:
        from uvireid.errors import ConfigError

        run = path.parent.parent if path.parent.name == "checkpoints" else None
        hint = f"give its run folder ({run})" if run else "give the run folder that wrote it"
        raise ConfigError(
            f"{source} is a checkpoint, not a {command} SOURCE: {hint}, or a run folder with "
            f"--checkpoint {source}"
        )
