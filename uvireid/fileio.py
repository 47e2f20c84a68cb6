"""Atomic file writes: a crash or a kill never leaves a half-written file behind.

Everything a run writes that another step reads back (checkpoints, features files,
resolved configs, manifests) goes through :func:`atomic_write`: the content is written to
a temporary file in the same folder, flushed to disk, then renamed over the target. A
kill (SIGKILL) can leave the temporary file (``.<name>.<random>.tmp``) behind:
:func:`remove_stale_temporaries` clears them where no writer is alive.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    """The process's umask: from ``/proc/self/status`` where Linux (4.7+) gives it, else
    read by setting it and restoring it (another thread creating a file in between
    would get 022)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to the disk (POSIX), so that a rename into it survives a
    crash of the machine (without it the previous file may come back); where a folder
    cannot be opened or synced (Windows, some network file systems), nothing."""
    flag = getattr(os, "O_DIRECTORY", None)
    if flag is None:
        return
    try:
        fd = os.open(folder, os.O_RDONLY | flag)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, flush it to the disk,
    rename it to ``path`` and flush the folder's entry: a crash leaves the old file or the
    new one, never a part of one.

    The file gets the permissions an ``open(path, "w")`` would give it (0666 less the
    umask), not the temporary file's private 0600: a lab's shared run folders stay
    readable by whoever may read the logs beside them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:  # owns fd from here: closed whatever happens
            if hasattr(os, "fchmod"):  # POSIX
                # a file system that refuses chmod (vfat, exFAT, some CIFS mounts) gives
                # its own modes, as an open() there would (audit ME)
                with contextlib.suppress(OSError):
                    os.fchmod(fh.fileno(), 0o666 & ~_umask())
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        stop = _interrupt_in(exc)
        if stop is not None and stop is not exc:
            # Ctrl-C / SIGTERM inside torch.save came out as its "unexpected pos" error
            # (audit AV): the interrupt it was is what the caller handles
            raise stop from None
        if _disk_full(exc):  # torch.save's "unexpected pos" buries the cause in its chain
            from uvireid.errors import DiskFullError

            free = shutil.disk_usage(path.parent).free
            raise DiskFullError(
                f"no space left on the device writing {path} ({free / 2**20:.0f} MiB free "
                f"there); {'the previous file is unchanged; ' if path.exists() else ''}"
                f"free some space (old run folders, caches) and run the command again"
            ) from exc
        raise
    return path


def _in_chain(
    exc: BaseException | None, match: Callable[[BaseException], bool]
) -> BaseException | None:
    """The first of ``exc`` and the exceptions it was raised from or during (at most ten
    links) that ``match`` accepts, if any."""
    seen = 0
    while exc is not None and seen < 10:
        if match(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _interrupt_in(exc: BaseException | None) -> BaseException | None:
    """The KeyboardInterrupt (Ctrl-C, or the CLI's SIGTERM) ``exc`` is or was raised
    from or during, if any."""
    return _in_chain(exc, lambda e: isinstance(e, KeyboardInterrupt))


@contextlib.contextmanager
def signals_deferred(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
    """Hold SIGINT / SIGTERM for the block, then deliver them to the handlers that were
    in place: a checkpoint that takes a second to write is finished instead of being cut
    (and its epoch lost) by a Ctrl-C or a scheduler's SIGTERM (audit AV). A no-op off
    the main thread, where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {}
    for signum in signums:
        try:
            old[signum] = signal.signal(signum, lambda s, _frame: caught.append(s))
        except (ValueError, OSError):  # not settable here
            continue
    try:
        yield
    except BaseException as exc:
        if caught:  # the held signal's interrupt would hide why the block failed
            logging.getLogger("uvireid").error(
                "%s: %s (while a stop signal was held)", type(exc).__name__, exc
            )
        raise
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


def _disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it was raised from or during is ENOSPC/EDQUOT."""
    full = (errno.ENOSPC, errno.EDQUOT)
    return _in_chain(exc, lambda e: isinstance(e, OSError) and e.errno in full) is not None


def written_through(path: str | os.PathLike) -> bool:
    """Whether writing ``path`` must go through it rather than replace it: a link (into a
    shared folder, ``/dev/stdout``, ``/dev/fd/N``) or an existing file that is not a
    regular one (a named pipe)."""
    p = Path(path)
    return p.is_symlink() or (p.exists() and not p.is_file())


def _descriptor(path: str | os.PathLike) -> int | None:
    """The open descriptor ``path`` names (``/dev/stdout``, ``/dev/stderr``,
    ``/dev/fd/N``, ``/proc/self/fd/N``, or a link whose chain passes one), else None."""
    import re

    named = {"/dev/stdout": 1, "/dev/stderr": 2}
    # this process's own descriptors under /proc: self, thread-self, its pid (audit MI)
    own = rf"/proc/(?:self|thread-self|{os.getpid()})(?:/task/\d+)?/fd/(\d+)"
    p = os.path.abspath(os.fspath(path))
    for _ in range(40):  # the kernel's own limit on a chain of links
        if p in named:
            return named[p]
        found = re.fullmatch(rf"/dev/fd/(\d+)|{own}", p)
        if found:
            return int(found.group(1) or found.group(2))
        try:
            p = os.path.abspath(os.path.join(os.path.dirname(p), os.readlink(p)))
        except OSError:  # not a link (the end of the chain), or one we may not read
            return None
    return None


def write_output(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """A command's output file: written through a link, ``/dev/stdout``, ``/dev/fd/N`` or
    a named pipe (:func:`written_through`: replacing it would cut the link, or fail),
    any other path by :func:`atomic_write`.

    A path naming one of the process's open descriptors is written through that
    descriptor, after what Python printed before: opening ``/dev/stdout`` anew truncated
    a stdout redirected to a file (``> out.txt``: the tables printed before were
    overwritten; ``>> log``: the log's earlier lines lost; audit ME). A link is written
    through, not replaced: the file it names keeps its mode, its hard links and its place
    (a folder the user may not create files in; audit MI), at the price of atomicity.
    """
    fd = _descriptor(path)
    if fd is not None:
        import sys

        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            dup = os.dup(fd)  # shares the offset and O_APPEND of the open file
        except OSError:
            dup = None
        if dup is not None:
            with os.fdopen(dup, "wb") as fh:
                write(fh)
            return Path(path)
    p = Path(path)
    if written_through(p):  # a link, a named pipe, a device
        with open(p, "wb") as fh:
            write(fh)
        return p
    return atomic_write(p, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` in UTF-8; a file name that is not UTF-8 in it (text with surrogates, as
    ``os.fsdecode`` keeps it) as its own bytes, not an encoding error."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8", "surrogateescape")))


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None, recursively
    (mappings, lists, tuples; numpy scalars as Python numbers): NaN and Infinity are not
    JSON (RFC 8259), and strict parsers (JavaScript, Go, jsonb) refuse a file holding
    them (audit AY)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    item = getattr(obj, "item", None)  # a numpy / torch scalar
    if callable(item) and getattr(obj, "ndim", 1) == 0:
        return finite_json(item())
    return obj


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj`` (:func:`finite_json`: non-finite floats as null)."""
    return json.dumps(finite_json(obj), allow_nan=False, **kwargs)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, dumps_json(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_link(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` the same file as ``src``, atomically: a hard link under a temporary
    name, renamed over ``dst`` (no copy; a later atomic rewrite of ``src`` is a new file
    and leaves ``dst`` as it was). Where the file system has no hard links, a copy through
    :func:`atomic_write`."""
    import shutil

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)  # as atomic_write
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(dst), suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.unlink(tmp)  # the name only: os.link does not overwrite
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as fh:
            return atomic_write(dst, lambda out: shutil.copyfileobj(fh, out))
    try:
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # where dst already was src (one file, two names), rename() does nothing and leaves
    # the temporary name: a second link that kept a whole checkpoint's space (audit OE)
    Path(tmp).unlink(missing_ok=True)
    _fsync_folder(dst.parent)  # as atomic_write: the new entry survives a crash
    return dst


def _temp_prefix(path: Path) -> str:
    """``.<name>.`` of the temporary file written beside ``path``, its name cut to 200
    bytes: mkstemp adds 12 more, and a legal 242-255 byte name gave ENAMETOOLONG, naming a
    file the user never asked for (audit KA)."""
    prefix = f".{path.name}"
    while len(os.fsencode(prefix)) > 200:
        prefix = prefix[:-1]
    return prefix + "."


def remove_stale_temporaries(*folders: str | os.PathLike) -> int:
    """Delete the temporary files :func:`atomic_write` left in ``folders`` when a kill
    stopped it (a partial checkpoint is hundreds of MB); call it only while no other
    process writes there (a run folder's lock held). Returns the bytes freed."""
    freed = 0
    for folder in folders:
        for p in Path(folder).glob(".*.tmp"):
            if p.is_file():
                freed += p.stat().st_size
                p.unlink(missing_ok=True)
    return freed
