"""The ``uvireid`` command line.

Each sub-command lives in its own module ``uvireid/cli/<name>_cmd.py`` exposing
``add_parser(subparsers)``; the parser it adds sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import shlex
import sys
from typing import Any

from uvireid.errors import UvireidError

#: sub-command modules, in the order ``uvireid --help`` lists them
COMMANDS = [
    "run",
    "list",
    "eval",
    "extract",
    "data",
    "rerank",
    "report",
    "compare",
    "match",
]


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with a "did you mean" for a misspelt choice (``uvireid rnu``,
    ``uvireid data chek``, ``uvireid list rerankerz``), as misspelt options get one (audit
    OD). Sub-command parsers are of this class too (argparse makes them of the parent's)."""

    def error(self, message: str):  # type: ignore[override]
        import re

        from uvireid._suggest import closest

        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            choices = [c.strip().strip("'\"") for c in found.group(2).split(",")]
            near = closest(found.group(1), choices, n=1)
            if near:
                message = f"{message}; did you mean '{near[0]}'?"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="uvireid",
        description="Unsupervised visible-infrared person re-identification toolkit.",
        epilog="Example: uvireid run demo   (trains the demo recipe on the synthetic dataset)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    from uvireid import __version__

    parser.add_argument("--version", action="version", version=f"uvireid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"uvireid.cli.{name}_cmd").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    extra = _join_positionals(args, extra)
    if extra and args.command and {"-v", "--verbose"} & set(extra):
        # -v after the sub-command (`uvireid run demo -v`): as before it
        args.verbose = True
        extra = [a for a in extra if a not in ("-v", "--verbose")]
    if extra:
        (_sub_parser(parser, args) or parser).error(
            f"unrecognized arguments: {' '.join(extra)}{_option_hint(parser, args, extra)}"
        )
    logging.basicConfig(
        # under torchrun rank 0 speaks for the run: the other ranks log errors only (each
        # epoch line, warning and resume message appeared once per rank)
        level=logging.DEBUG if args.verbose else (logging.INFO if _rank() == 0 else logging.ERROR),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # faiss's loader says at INFO which CPU build it could not load ("Could not load
        # library with AVX512 support due to: ModuleNotFoundError(...)"), before taking the
        # one that fits: harmless, but it reads as faiss's breakage (audit FC)
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _sigterm_as_interrupt(), _tables_to_stderr(args):
            return int(args.func(args) or 0)
    except UvireidError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        hint = _resume_hint(args, exc)
        if hint:
            print(f"the run {hint}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of stdout has gone (`uvireid ... | head`): end quietly as a pipe's
        # writer does (141 = 128 + SIGPIPE), stdout pointed at devnull so the
        # interpreter's last flush raises nothing either (Python's signal docs)
        import os

        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:
        hint = _resume_hint(args, exc, stopped=True)
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        if _rank() == 0:  # once for the run, not once per rank
            print(f"{what}{'; the run ' + hint if hint else ''}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:
        # not one of uvireid's own errors (a CUDA out-of-memory, a bug): its traceback is
        # what to report or fix, and the run can still be continued from its checkpoint
        hint = _resume_hint(args, exc)
        if not hint:
            raise
        import traceback

        traceback.print_exc()
        print(f"the run {hint}", file=sys.stderr)
        return 1


JSON_HELP = "also write the result as JSON (- : to stdout, the tables then to stderr)"


@contextlib.contextmanager
def _tables_to_stderr(args: argparse.Namespace):
    """``--json -``: stdout carries the JSON alone (for ``| jq``); what the command prints
    for people goes to stderr meanwhile."""
    if getattr(args, "json", None) != "-":
        yield
        return
    args.json_stream = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        yield


def write_json(args: argparse.Namespace, data: Any) -> None:
    """``data`` as JSON into ``args.json``: a file (its folder created), or stdout for
    ``-`` (see :func:`_tables_to_stderr`)."""
    from pathlib import Path

    from uvireid.fileio import dumps_json, write_output, written_through

    if args.json == "-":
        stream = getattr(args, "json_stream", None) or sys.stdout
        # ASCII escapes: a stdout in any locale's encoding takes them
        stream.write(dumps_json(data, indent=2) + "\n")
        stream.flush()
        return
    out = Path(args.json)
    text = dumps_json(data, indent=2, ensure_ascii=False) + "\n"
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        # an image path that is not UTF-8 (text with surrogates, as os.fsdecode keeps
        # it): JSON's \u escapes, which json.load reads back to the same text
        raw = (dumps_json(data, indent=2) + "\n").encode("ascii")
    through = written_through(out)
    # UTF-8 whatever the locale; a link or pipe written through, not replaced (audit BD);
    # a file renamed into place: a failure leaves the earlier file
    write_output(out, lambda fh: fh.write(raw))
    if not through:
        logging.getLogger("uvireid.cli").info("wrote %s", out)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is (a scheduler's time limit, ``scancel``,
    ``kill PID``, ``docker stop``): handled as Ctrl-C is, so a run logs what it was doing
    and the command prints how to resume it (the default action ended it without a word)."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While the command runs (main thread only), SIGTERM raises :class:`Terminated`."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated("SIGTERM")

    before = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _join_positionals(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The words argparse left over that belong to the sub-command's positional list, put
    there; returns the rest (unrecognized).

    Once an option follows the positionals (`uvireid extract RUN -o f.npz data.root=...`,
    `uvireid eval a.npz --protocol regdb-v2i b.npz`), argparse has ended the list: later
    words that are not options join it here (an override without ``=`` too, which the
    recipe loader then refuses with its key=value message). After ``--`` every word is
    positional, whatever it starts with (POSIX's end of options)."""
    after: list[str] = []
    if "--" in extra:
        cut = extra.index("--")
        extra, after = extra[:cut], extra[cut + 1 :]
    for name in ("overrides", "features"):
        target = getattr(args, name, None)
        if isinstance(target, list):
            target += [a for a in extra if not a.startswith("-")] + after
            return [a for a in extra if a.startswith("-")]
    return extra + (["--", *after] if after else [])


def _sub_parser(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The sub-command's own parser (its usage line, its options), or None."""
    return next(
        (
            a.choices.get(args.command)
            for a in parser._actions
            if isinstance(a, argparse._SubParsersAction)
        ),
        None,
    )


def _option_hint(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list) -> str:
    """``; did you mean '--trials'?`` for a misspelt option of the sub-command."""
    from uvireid._suggest import closest

    sub = _sub_parser(parser, args)
    if sub is None:
        return ""
    options = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for word in extra:
        if word.startswith("--"):
            near = closest(word.split("=", 1)[0], options, n=1)
            if near:
                hints.append(f"'{word}': did you mean '{near[0]}'?")
    return ("; " + "; ".join(hints)) if hints else ""


def _launch_env(name: str, default: int) -> int:
    """An integer torchrun sets (``RANK``, ``WORLD_SIZE``), ``default`` without it. Read
    from the environment: the process group does not exist yet when logging is set up,
    nor any more when a stopped run's hint is printed."""
    import os

    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _rank() -> int:
    """This process's rank under torchrun, 0 otherwise."""
    return _launch_env("RANK", 0)


def _resume_hint(args: argparse.Namespace, exc: BaseException, stopped: bool = False) -> str:
    """For a ``run`` that stopped after finishing an epoch: how to continue it; for one
    ``stopped`` (Ctrl-C, SIGTERM) before its first checkpoint, how to start it again in
    its folder."""
    folder = getattr(exc, "run_folder", None)
    if args.command == "run" and getattr(args, "sweep", None):
        if not getattr(exc, "sweep_started", False):  # refused before its first run
            return ""
        from uvireid.engine.sweep import sweep_command

        command = sweep_command(args.recipe, args.overrides, args.sweep, args.no_report)
        return f"is one of a sweep: the sweep continues with `{command}`"
    if args.command != "run" or folder is None:
        return ""
    from pathlib import Path

    world = _launch_env("WORLD_SIZE", 1)
    launch = f"torchrun --nproc_per_node {world} -m uvireid" if world > 1 else "uvireid"
    command = f"`{launch} run {shlex.quote(folder)} --resume`"
    latest = Path(folder) / "checkpoints" / "latest.pt"
    if not latest.exists():
        if stopped and (Path(folder) / "config.yaml").exists():
            return f"in {folder} has no finished epoch yet: {command} starts it again there"
        return ""
    if getattr(exc, "checkpoint", None) == str(latest.resolve()):
        return ""  # the very file that could not be read
    cause = "" if stopped else "after fixing the cause, "
    return f"keeps its last finished epoch's checkpoint: {cause}continue with {command}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
