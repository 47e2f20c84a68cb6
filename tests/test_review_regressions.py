"""Edges found by review MI of session 27's changes: writes through links and this
process's /proc descriptors, file names that are not UTF-8 on stdout, YAML's escaped
apostrophe in sweep values, timm's unexpected keys whatever the logging setup, the matmul
precision inside a TF32 block, uint64 labels, nested wrapper prefixes of checkpoints."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from uvireid.engine.sweep import split_values
from uvireid.fileio import write_output


def _write(data: bytes):
    return lambda fh: fh.write(data)


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX modes")
def test_write_output_link_keeps_target_mode(tmp_path):
    """A link to a private (0600) file: writing through the link must not make the file
    world-readable: the link is written through, the file keeps its mode."""
    target = tmp_path / "private.json"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    old_umask = os.umask(0o022)
    try:
        write_output(link, _write(b"new"))
    finally:
        os.umask(old_umask)
    assert link.is_symlink()
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.skipif(not Path("/proc/self/comm").exists(), reason="Linux /proc")
def test_write_output_link_into_unwritable_folder_writes_through(tmp_path):
    """A link to a file that may be written in a folder where no file may be created
    (a shared folder of another user; /proc/self/comm here, which root cannot create
    files beside either): written through the link, no temporary file is needed in the
    target's folder."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from uvireid.fileio import write_output\n"
        "link = Path(sys.argv[1])\n"
        "link.symlink_to('/proc/self/comm')\n"
        "write_output(link, lambda fh: fh.write(b'mi-probe'))\n"
        "print(open('/proc/self/comm').read().strip())\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "comm.lnk")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-500:]
    assert res.stdout.strip() == "mi-probe"


def test_match_stdout_non_utf8_path(tmp_path):
    """A features file whose image path is Latin-1 bytes: `uvireid match F` prints the
    matches CSV to stdout. Under a UTF-8 locale stdout is strict UTF-8 (PYTHONIOENCODING
    stands for it here): the surrogate os.fsdecode leaves must not kill the command; the
    name comes out as its own bytes, as `-o FILE` writes it."""
    rng = np.random.default_rng(0)
    src = tmp_path / "f.npz"
    np.savez(
        src,
        feats=rng.normal(size=(6, 4)).astype(np.float32),
        pids=np.array([0, 0, 1, 1, 2, 2]),
        cams=np.array([1, 3, 1, 3, 1, 3]),
        modality=np.array([0, 1, 0, 1, 0, 1]),
        paths=np.array([b"a\xe9.jpg", b"b.jpg", b"c.jpg", b"d.jpg", b"e.jpg", b"f.jpg"]),
    )
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    res = subprocess.run(
        [sys.executable, "-m", "uvireid", "match", str(src), "--top", "3"],
        capture_output=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-800:]
    rows = res.stdout.splitlines()
    assert rows[0].startswith(b"query,rank,gallery")
    # 3 queries x 3 ranks, every visible image (a\xe9.jpg among them) ranked for each
    assert len(rows) == 1 + 9
    assert sum(b"a\xe9.jpg" in r for r in rows) == 3


def test_split_values_yaml_escaped_quote():
    """YAML writes an apostrophe inside a single-quoted scalar as ''; 'it''s,ok' is one
    value, not split at its comma."""
    values = split_values("'it''s,ok',b")
    assert [yaml.safe_load(v) for v in values] == ["it's,ok", "b"]


def _r34_file(tmp_path):
    import timm

    torch.manual_seed(0)
    r34 = timm.create_model("resnet34", num_classes=0)
    path = tmp_path / "r34.pth"
    torch.save(r34.state_dict(), path)
    return path


@pytest.mark.parametrize("how", ["level", "propagate"])
def test_timm_unexpected_keys_seen_whatever_the_logging_setup(tmp_path, how):
    """resnet34's weights file for resnet18 is refused (audit MA) — but only where timm's
    warning reaches the 'timm' logger: a script that quiets timm
    (logging.getLogger('timm').setLevel(logging.ERROR), common) or stops the record's
    propagation gets resnet18 half-loaded from resnet34 without a word."""
    pytest.importorskip("timm")
    from uvireid.errors import ConfigError
    from uvireid.models.backbone import TimmBackbone

    path = _r34_file(tmp_path)
    if how == "level":
        log = logging.getLogger("timm")
        before = log.level, None
        log.setLevel(logging.ERROR)
    else:
        log = logging.getLogger("timm.models._builder")
        before = log.level, log.propagate
        log.propagate = False
    try:
        with pytest.raises(ConfigError, match="layer1.2."):
            TimmBackbone("resnet18", pretrained=str(path))
    finally:
        log.setLevel(before[0])
        if before[1] is not None:
            log.propagate = before[1]


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9")
def test_matmul_precision_readable_inside_tf32_block():
    """Inside tf32_products (the trainer's step), torch.get_float32_matmul_precision()
    — read by CMFP's mixed_available and by Inductor's autotuner — must answer ('high',
    as it did with the legacy allow_tf32), not raise torch's "mix of the legacy and new
    APIs" error, in a process that never touched either API."""
    code = (
        "import torch\n"
        "from uvireid.engine.graphs import tf32_products\n"
        "from uvireid.rerank.cmfp import mixed_available\n"
        "with tf32_products(True):\n"
        "    print(torch.get_float32_matmul_precision())\n"
        "    print(mixed_available(torch.zeros(2, 2, dtype=torch.float64)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-600:]
    assert res.stdout.split() == ["high", "False"]


def test_uint64_labels_within_int64_range_are_kept():
    """uint64 labels up to 2**63 - 1 fit int64 exactly; the range check compares
    float(top) >= 2**63, and float(2**63 - 1) rounds up to 2**63: the labels are refused
    with a message quoting the int64 maximum itself as "beyond the 64-bit range"."""
    from uvireid.features import features_from_arrays

    pids = np.array([1, 2, 2**63 - 1], dtype=np.uint64)
    got = features_from_arrays(
        np.zeros((3, 2), np.float32), pids, np.array([1, 3, 1]), np.array([0, 1, 0])
    )
    assert got.pids.dtype == np.int64
    assert got.pids.tolist() == [1, 2, 2**63 - 1]  # Python ints: exact


def test_checkpoint_compiled_ddp_prefix():
    """torch.compile(DDP(model)).state_dict() keys are '_orig_mod.module.<key>'; the
    docstring accepts both wrappers' prefixes, and 'module._orig_mod.' (DDP of a compiled
    model) loads, but the other nesting is refused: the prefixes are tried once each, in
    a fixed order."""
    from torch import nn

    from uvireid.engine.checkpoint import load_state_strict

    torch.manual_seed(0)
    src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    state = {f"_orig_mod.module.{k}": v.clone() for k, v in src.state_dict().items()}
    load_state_strict(dst, state)
    assert torch.equal(dst.weight, src.weight) and torch.equal(dst.bias, src.bias)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="Linux /proc")
@pytest.mark.parametrize("name", ["/proc/{pid}/fd/1", "/proc/thread-self/fd/1"])
def test_write_output_proc_pid_fd_of_redirected_stdout(tmp_path, name):
    """/proc/<pid>/fd/1 and /proc/thread-self/fd/1 name the process's stdout as
    /proc/self/fd/1 does. With stdout redirected to a file, they are written through the
    open descriptor: what was printed before and after stays, in order."""
    out = tmp_path / "stdout.txt"
    code = (
        "import os\n"
        "from uvireid.fileio import write_output\n"
        "print('table', flush=True)\n"
        f"write_output({name!r}.format(pid=os.getpid()), lambda fh: fh.write(b'json\\n'))\n"
        "print('after', flush=True)\n"
    )
    with open(out, "wb") as fh:
        res = subprocess.run(
            [sys.executable, "-c", code], stdout=fh, stderr=subprocess.PIPE, timeout=120
        )
    assert res.returncode == 0, res.stderr[-500:]
    assert out.read_bytes() == b"table\njson\nafter\n"
