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
