"""Atomic writes leave either the old file or the new one, never a partial one."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from uvireid.fileio import atomic_torch_save, atomic_write, atomic_write_json


def test_atomic_write_replaces_content(tmp_path):
    p = tmp_path / "sub" / "a.json"
    atomic_write_json(p, {"x": 1})
    atomic_write_json(p, {"x": 2})
    assert json.loads(p.read_text()) == {"x": 2}
    assert [q.name for q in p.parent.iterdir()] == ["a.json"]


def test_a_failing_writer_keeps_the_old_file_and_no_temp_file(tmp_path):
    p = tmp_path / "ckpt.pt"
    atomic_torch_save(p, {"epoch": 1})

    def boom(fh):
        fh.write(b"partial")
        raise KeyboardInterrupt  # a run killed half way through a save

    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, boom)
    assert torch.load(p)["epoch"] == 1
    assert [q.name for q in tmp_path.iterdir()] == ["ckpt.pt"]


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path, umask):
    from uvireid.fileio import atomic_write_text

    old = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        with open(plain, "w") as fh:
            fh.write("x")
        atomic = atomic_write_text(tmp_path / "atomic.txt", "x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(atomic.stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


def test_a_full_disk_is_named_and_the_old_file_kept(tmp_path, monkeypatch):
    """Audit L (session 16): a full disk during torch.save ended in torch's 'unexpected
    pos' RuntimeError; the ENOSPC that caused it was only in the chained traceback."""
    import errno

    from uvireid.errors import DiskFullError

    path = tmp_path / "latest.pt"
    atomic_torch_save(path, {"epoch": 1})
    real = torch.save

    def full(obj, fh):
        fh.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos") from None

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError, match=r"no space left on the device writing .*latest.pt"):
        atomic_torch_save(path, {"epoch": 2})
    monkeypatch.setattr(torch, "save", real)
    assert torch.load(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]
    # another failure stays what it is
    monkeypatch.setattr(torch, "save", lambda obj, fh: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError, match="^x$"):
        atomic_torch_save(path, {"epoch": 3})


def test_stale_temporaries_are_removed(tmp_path):
    from uvireid.fileio import remove_stale_temporaries

    (tmp_path / ".latest.pt.abcd1234.tmp").write_bytes(b"\0" * 1000)
    (tmp_path / ".features.npz.x.tmp").write_bytes(b"\0" * 24)
    (tmp_path / "keep.tmp").write_bytes(b"mine")  # not atomic_write's name
    assert remove_stale_temporaries(tmp_path, tmp_path / "absent") == 1024
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp"]


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_writers_never_write_nan_tokens(tmp_path):
    """Audit AY: NaN and Infinity are not JSON; metrics.jsonl, results.json, manifest.json
    and the CLI's --json files hold null for them."""
    import argparse

    import numpy as np

    from uvireid.cli import write_json
    from uvireid.engine.run_folder import RunFolder
    from uvireid.fileio import dumps_json, finite_json

    obj = {"a": float("nan"), "b": [1.5, float("inf"), np.float32("nan")], "c": (np.int64(3),)}
    assert finite_json(obj) == {"a": None, "b": [1.5, None, None], "c": [3]}
    assert _strict(dumps_json(obj)) == {"a": None, "b": [1.5, None, None], "c": [3]}
    RunFolder(tmp_path).log_metrics({"epoch": 0, "association": {"mean_cost": float("nan")}})
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        assert _strict(line)["association"]["mean_cost"] is None
    atomic_write_json(tmp_path / "r.json", {"mAP": float("-inf")})
    assert _strict((tmp_path / "r.json").read_text()) == {"mAP": None}
    write_json(argparse.Namespace(json=str(tmp_path / "o.json")), {"m": float("nan")})
    assert _strict((tmp_path / "o.json").read_text(encoding="utf-8")) == {"m": None}


def test_cli_json_file_is_utf8_and_atomic_whatever_the_locale(tmp_path):
    """Audit AY: under a non-UTF-8 locale --json crashed after the evaluation and left an
    empty file in place of the earlier one."""
    import subprocess
    import sys

    out = tmp_path / "o.json"
    out.write_text('{"previous": true}\n')
    root = "/data/d\u00e9j\u00e0/\u6570\u636e"
    code = (
        "import argparse; from uvireid.cli import write_json; "
        f"write_json(argparse.Namespace(json={str(out)!r}), {{'root': {ascii(root)}}})"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "ascii"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-400:]
    assert _strict(out.read_bytes().decode("utf-8")) == {"root": root}
    assert [p.name for p in tmp_path.iterdir()] == ["o.json"]  # no temporary left


def test_json_through_a_symlink_writes_its_target(tmp_path):
    """Audit BD: the atomic --json write replaced a link (into a shared results folder)
    by a regular file; it writes where the link points."""
    import argparse

    from uvireid.cli import write_json

    target = tmp_path / "shared" / "results.json"
    target.parent.mkdir()
    target.write_text("{}\n")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    write_json(argparse.Namespace(json=str(link)), {"R1": 50.0})
    assert link.is_symlink(), "the link was replaced by a regular file"
    assert json.loads(target.read_text()) == {"R1": 50.0}


def test_json_to_a_stdout_like_link_reaches_it(tmp_path, capfd):
    """What `--json /dev/stdout` does (as root, /dev is writable): the link is replaced by
    a file and nothing reaches the stream. Shown on a link of our own to fd 1."""
    import argparse

    from uvireid.cli import write_json

    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    write_json(argparse.Namespace(json=str(link)), {"R1": 50.0})
    assert link.is_symlink()
    assert '"R1"' in capfd.readouterr().out


def test_atomic_write_flushes_the_whole_file_before_renaming_it_beside_the_target(
    tmp_path, monkeypatch
):
    """The order the docstring promises (mutation audit DC: dropping the fsync, renaming
    before it, or a temporary in another folder, where the rename fails across file
    systems, all passed): the complete file is flushed, the old one is intact until the
    rename, the temporary sits beside the target, and the folder's entry is flushed."""
    import uvireid.fileio as F

    payload = os.urandom(300_000)
    target = tmp_path / "ckpt" / "latest.pt"
    target.parent.mkdir()
    target.write_bytes(b"old")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "folder" if stat.S_ISDIR(st.st_mode) else st.st_size))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(
            ("replace", os.path.dirname(src) == os.path.dirname(dst), target.read_bytes())
        )
        return real_replace(src, dst)

    monkeypatch.setattr(F.os, "fsync", fsync)
    monkeypatch.setattr(F.os, "replace", replace)
    F.atomic_write(target, lambda fh: fh.write(payload))
    assert events == [("fsync", len(payload)), ("replace", True, b"old"), ("fsync", "folder")]
    assert target.read_bytes() == payload
    assert sorted(p.name for p in target.parent.iterdir()) == ["latest.pt"]
