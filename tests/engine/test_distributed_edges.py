"""Mutation audit MH: the distributed helpers' contracts the mutants showed untested, each
compared with the value the rank inputs give by hand (3 gloo processes; a process group of
one; torchrun's environment in part)."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from uvireid.engine import distributed as D
from uvireid.errors import ConfigError

WORKER = Path(__file__).with_name("ddp_edges_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, world: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")])
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, str(WORKER), str(out), str(world), str(_free_port())]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if world == 1:
        return [pickle.loads((out / "single.pkl").read_bytes())]
    return [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(world)]


@pytest.mark.slow
def test_three_gloo_processes_agree_on_every_helper(tmp_path):
    world = 3
    ranks = _launch(tmp_path, world)
    base = [torch.arange(6).reshape(2, 3) + 10 * r for r in range(world)]
    for r, got in enumerate(ranks):
        assert got["device"] == got["again"] == "cpu"
        assert got["who"] == (True, r, world, r == 0)
        # rank 0 alone runs fn; every rank gets its result
        assert got["from_main"] == "from 0"
        assert got["from_main_calls"] == ([0] if r == 0 else [])
        assert got["gather_0d"] == ("ok", [0.0, 1.0, 2.0])  # a 0-d value a rank
        # rank 0 raises its own error, the others a one-line error naming it
        if r == 0:
            assert got["from_main_fail"] == ("ValueError", "boom on rank 0\nsecond line")
        else:
            assert got["from_main_fail"] == (
                "RunFolderError",
                "rank 0 stopped the run (ValueError: boom on rank 0)",
            )
        assert got["agree_ok"] == ("ok", r)
        if r == 0:  # the first rank that failed is named
            assert got["agree_some"] == (
                "RunFolderError",
                "rank 1 stopped the run (KeyError: 'rank 1 failed')",
            )
        else:
            assert got["agree_some"] == ("KeyError", f"'rank {r} failed'")
        assert got["bcast1"] == {"from": 1}
        assert got["objects"] == [("r", q) for q in range(world)]
        assert got["mean"] == pytest.approx(sum(q * q for q in range(world)) / world)
        assert got["buffers"] == ([1.0] * 3, [11.0] * 3, 101)  # all of rank 1's buffers
        for dtype in (torch.float16, torch.int32, torch.float64, torch.bool):
            want = torch.cat([b.to(dtype) for b in base])
            assert got["gathered"][str(dtype)] == (dtype, tuple(want.shape), want.tolist())
        want = torch.cat([b.t().float() for b in base])
        assert got["gathered"]["transposed"] == (torch.float32, (9, 2), want.tolist())
        assert got["labels"] == (torch.int64, [v for q in range(world) for v in (q, -1)])
        assert got["freed"] is True  # leave() cleared the failed frames first
        assert got["left"] is False


@pytest.mark.slow
def test_a_process_group_of_one_is_not_distributed(tmp_path):
    (got,) = _launch(tmp_path, 1)
    assert got == {"who": (False, 0, 1), "same": True, "objects": ["x"]}


@pytest.fixture()
def clean_env(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)

    def no_group(*args, **kwargs):
        raise AssertionError("init_process_group called")

    monkeypatch.setattr(torch.distributed, "init_process_group", no_group)
    return monkeypatch


def test_a_world_of_one_or_a_lone_rank_needs_no_launcher(clean_env):
    assert D.env_world_size() == 1
    clean_env.setenv("RANK", "0")  # RANK alone: one process
    assert D.launched_by_torchrun() is False and D.init_from_env("cpu") == "cpu"
    clean_env.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1, no MASTER_*
    assert D.env_world_size() == 1
    assert D.launched_by_torchrun() is False and D.init_from_env("cuda") == "cuda"
    assert not D.is_distributed()


def test_an_empty_master_address_counts_as_missing(clean_env):
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "1")
    clean_env.setenv("MASTER_ADDR", "")
    clean_env.setenv("MASTER_PORT", "29500")
    with pytest.raises(
        ConfigError, match="RANK=1 are set, as torchrun sets them, but MASTER_ADDR is not"
    ):
        D.init_from_env("cpu")
