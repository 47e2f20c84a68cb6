"""DDP on the CPU: 2 gloo processes keep parameters and memories identical across ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from uvireid.engine import distributed as D


def test_helpers_are_no_ops_without_a_launcher():
    t = torch.arange(3)
    assert D.world_size() == 1 and D.rank() == 0 and D.is_main()
    assert D.all_gather_cat(t) is t
    assert D.broadcast_object({"a": 1}) == {"a": 1}
    assert D.all_reduce_mean(2.5) == 2.5
    assert D.init_from_env("cpu") == "cpu"


@pytest.mark.slow
def test_two_gloo_processes_train_identically(recipe_file, tmp_path):
    cfg = yaml.safe_load(recipe_file.read_text())
    cfg["stages"][0]["iters_per_epoch"] = 2
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "dump"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    worker = Path(__file__).with_name("ddp_worker.py")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            str(worker),
            str(path),
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(out / "rank0.pt", weights_only=False)
    r1 = torch.load(out / "rank1.pt", weights_only=False)
    assert r0["world_size"] == r1["world_size"] == 2
    for key, value in r0["model"].items():
        assert torch.equal(value, r1["model"][key]), key
    for stage, state in r0["losses"].items():
        for key, value in state.items():
            assert value.numel() > 0
            assert torch.equal(value, r1["losses"][stage][key]), (stage, key)
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, "only rank 0 writes a run folder"
    manifest = yaml.safe_load((runs[0] / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert manifest["batch"]["stages"][0]["global"] == 2 * manifest["batch"]["stages"][0]["per_gpu"]


@pytest.mark.slow
def test_a_refused_resume_stops_every_rank_with_the_reason(recipe_file, tmp_path):
    """``torchrun ... uvireid run RUN --resume seed=5``: rank 0 refuses the changed recipe;
    the other rank stops with a line naming that refusal, not with gloo's "connection
    closed" traceback (it used to wait for rank 0 and die of it)."""
    from uvireid.config import load_recipe
    from uvireid.engine.runner import run_recipe

    folder = run_recipe(load_recipe(recipe_file), progress=False).path
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29518", "-m", "uvireid", "run", str(folder), "--resume", "seed=5",
         "--no-report"],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert proc.returncode != 0
    err = proc.stderr
    assert "error: ConfigError: --resume: " in err and "seed: 3 -> 5" in err
    assert "error: RunFolderError: rank 0 stopped the run (ConfigError: --resume" in err
    assert "Connection closed" not in err  # (torchrun's own ChildFailedError remains)
    assert proc.stdout.count("# resolved recipe") == 1  # rank 0 speaks for the run
