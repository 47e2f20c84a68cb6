"""Atomic and pass-through writes' edges (mutation audit ME): umask, full disks, hard
links, temporary names, pipes, /dev/stdout redirected to a file, refused chmod."""

from __future__ import annotations

import errno
import os
import stat
import threading

import pytest

import uvireid.fileio as F
from uvireid.errors import DiskFullError


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_atomic_write_leaves_the_umask_as_it_was(tmp_path):
    """_umask() reads the mask by setting it: it must put it back (a 022 left behind
    widens every later file of a process that asked for 077)."""
    old = os.umask(0o077)
    try:
        F.atomic_write_text(tmp_path / "a.txt", "x")
        now = os.umask(0o077)
    finally:
        os.umask(old)
    assert now == 0o077


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_or_quota_is_named_and_says_whether_the_old_file_is_kept(tmp_path, code):
    """Both ENOSPC and EDQUOT (a lab's quota) are a full disk; the message says the
    previous file is unchanged only when there was one."""

    def full(fh):
        fh.write(b"partial")
        raise OSError(code, os.strerror(code))

    fresh = tmp_path / "new.pt"
    with pytest.raises(DiskFullError) as info:
        F.atomic_write(fresh, full)
    assert "previous file is unchanged" not in str(info.value)
    assert not fresh.exists()
    kept = tmp_path / "old.pt"
    kept.write_bytes(b"old")
    with pytest.raises(DiskFullError, match="the previous file is unchanged"):
        F.atomic_write(kept, full)
    assert kept.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.pt"]


def test_best_is_a_hard_link_not_a_copy_and_no_temporary_is_left(tmp_path):
    """atomic_link's docstring: a hard link (no copy) where the file system has them."""
    src, dst = tmp_path / "latest.pt", tmp_path / "best.pt"
    src.write_bytes(os.urandom(1000))
    dst.write_bytes(b"older best")
    assert F.atomic_link(src, dst) == dst
    assert os.path.samefile(src, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "latest.pt"]


def test_the_temporary_is_named_dot_name_dot_random_dot_tmp(tmp_path, monkeypatch):
    """The module docstring's ``.<name>.<random>.tmp`` (what remove_stale_temporaries and
    a user cleaning by hand look for)."""
    seen = []
    real = F.os.replace

    def replace(src, dst):
        seen.append(os.path.basename(src))
        return real(src, dst)

    monkeypatch.setattr(F.os, "replace", replace)
    F.atomic_write_text(tmp_path / "results.json", "{}")
    (name,) = seen
    assert name.startswith(".results.json.") and name.endswith(".tmp")
    assert len(name) > len(".results.json..tmp")


def test_a_folder_named_like_a_temporary_is_left_alone(tmp_path):
    """remove_stale_temporaries deletes files only: a folder ``.cache.tmp`` is kept and
    does not stop the clean-up of the real temporaries beside it."""
    (tmp_path / ".cache.tmp").mkdir()
    (tmp_path / ".cache.tmp" / "x").write_bytes(b"keep")
    (tmp_path / ".latest.pt.ab12.tmp").write_bytes(b"\0" * 10)
    assert F.remove_stale_temporaries(tmp_path) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache.tmp"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_write_output_writes_through_a_named_pipe(tmp_path):
    """written_through's docstring: a named pipe is written through, not replaced by a
    regular file (where a reader waiting on it would never get the data)."""
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, without blocking
    try:
        F.write_output(fifo, lambda fh: fh.write(b'{"R1": 50.0}\n'))
        got = os.read(rfd, 1 << 16)
    finally:
        os.close(rfd)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the pipe was replaced by a file"
    assert got == b'{"R1": 50.0}\n'


def test_signals_deferred_is_a_no_op_off_the_main_thread():
    """Off the main thread Python cannot set handlers: the block runs, nothing raised."""
    out = []

    def body():
        try:
            with F.signals_deferred():
                out.append("ran")
        except BaseException as exc:  # noqa: BLE001 - recorded for the assert
            out.append(repr(exc))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert out == ["ran"]


def test_a_refused_chmod_leaks_no_file_descriptor(tmp_path, monkeypatch):
    """When fchmod fails (a file system that refuses chmod: vfat/exFAT without
    ``quiet``, some CIFS mounts) the descriptor of the temporary file is closed all the
    same."""

    def refuse(fd, mode):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(F.os, "fchmod", refuse)
    before = _open_fds()
    for _ in range(5):
        try:
            F.atomic_write_text(tmp_path / "a.txt", "x")
        except OSError:
            pass
    assert _open_fds() - before == set()


def test_a_file_system_refusing_chmod_still_gets_the_file(tmp_path, monkeypatch):
    """The docstring promises the permissions an ``open(path, "w")`` gives: where chmod
    is refused, open() writes the file (with the mount's modes), and so does
    atomic_write: `uvireid extract --out /media/usb/f.npz` works there."""

    def refuse(fd, mode):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(F.os, "fchmod", refuse)
    path = F.atomic_write_text(tmp_path / "a.txt", "payload")
    assert path.read_text() == "payload"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@pytest.mark.skipif(not os.path.exists("/dev/stdout"), reason="/dev/stdout")
@pytest.mark.parametrize("mode", ["wb", "ab"])
def test_json_to_dev_stdout_redirected_to_a_file_keeps_what_was_printed(tmp_path, mode):
    """`uvireid eval ... --json /dev/stdout > out.txt` (or `>> log.txt`): write_output
    reopens /dev/stdout with open(path, "wb"), i.e. O_TRUNC at offset 0: the tables
    printed before are cut (and, with `>`, the later prints land past a run of NUL
    bytes); a log appended to loses its earlier lines. What `echo` into the same stream
    gives: everything, in order."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from uvireid.fileio import write_output\n"
        "print('table line'); sys.stdout.flush()\n"
        "write_output('/dev/stdout', lambda fh: fh.write(b'{\"R1\": 50.0}\\n'))\n"
        "print('after'); sys.stdout.flush()\n"
    )
    log = tmp_path / "out.txt"
    log.write_bytes(b"earlier\n")
    with open(log, mode) as out:
        proc = subprocess.run([sys.executable, "-c", code], stdout=out, stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr.decode()[-400:]
    kept = b"earlier\n" if mode == "ab" else b""
    assert log.read_bytes() == kept + b'table line\n{"R1": 50.0}\nafter\n'


def test_text_with_a_file_name_that_is_not_utf8_is_written(tmp_path):
    """A path from a Latin-1 file name is text with a surrogate (os.fsdecode); the JSON a
    command writes reads back to the same text, a text file (report.html) holds the
    name's bytes, and the decoded-image cache's key takes it: none raises an encoding
    error."""
    import argparse
    import json

    from uvireid.cli import write_json
    from uvireid.data.transforms import _cache_key
    from uvireid.types import VISIBLE, ImageRecord

    name = os.fsdecode(b"a\xe9.jpg")
    out = tmp_path / "o.json"
    write_json(argparse.Namespace(json=str(out)), {"paths": [name, "b.jpg"]})
    assert json.loads(out.read_text("ascii")) == {"paths": [name, "b.jpg"]}
    F.atomic_write_text(tmp_path / "r.html", f"<img src='{name}'>")
    assert (tmp_path / "r.html").read_bytes() == b"<img src='a\xe9.jpg'>"
    rec = [ImageRecord(str(tmp_path / name), 1, 1, VISIBLE)]
    other = [ImageRecord(str(tmp_path / os.fsdecode(b"a\xe8.jpg")), 1, 1, VISIBLE)]
    assert _cache_key(rec, 32, 16) != _cache_key(other, 32, 16)


def test_the_umask_read_is_the_processs_and_a_link_goes_into_a_new_folder(tmp_path):
    """_umask gives what os.umask holds (read from /proc where Linux has it, without
    setting it); atomic_link makes the folder of its target, as atomic_write does."""
    before = os.umask(0o027)
    try:
        assert F._umask() == 0o027
    finally:
        os.umask(before)
    src = F.atomic_write_text(tmp_path / "a.txt", "x")
    dst = F.atomic_link(src, tmp_path / "new" / "deeper" / "b.txt")
    assert dst.read_text() == "x" and os.path.samefile(src, dst)
