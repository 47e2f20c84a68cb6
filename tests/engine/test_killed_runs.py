"""Runs stopped by a real kill, where no Python handler runs (SIGKILL, an out-of-memory
kill): nothing a finished epoch produced is lost (audit L, session 16)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from uvireid.config import load_recipe
from uvireid.engine.run_folder import RunFolder
from uvireid.engine.runner import run_recipe

# os._exit is what SIGKILL or an out-of-memory kill look like to the run: no except or
# finally clause runs. Epoch ``sys.argv[2]``'s evaluation is where it dies.
KILL_IN_EVALUATION = """
import os, sys
from uvireid.config import load_recipe
from uvireid.engine.runner import run_recipe
from uvireid.engine.trainer import Trainer

real = Trainer.evaluate

def killed(self, tag):
    if tag == sys.argv[2]:
        os._exit(137)
    return real(self, tag)

Trainer.evaluate = killed
run_recipe(load_recipe(sys.argv[1], sys.argv[3:]), progress=False)
"""


def _killed_in(recipe_file, tag, *overrides):
    done = subprocess.run(
        [sys.executable, "-c", KILL_IN_EVALUATION, str(recipe_file), tag, *overrides]
    )
    assert done.returncode == 137


@pytest.mark.slow
@pytest.mark.parametrize("every", [0, 1])
def test_a_run_killed_in_an_evaluation_logs_that_epoch_when_resumed(recipe_file, every):
    """The epoch's checkpoint was written before its evaluation and its record after, so
    the resumed run started after that epoch and its record (the final epoch's too) was
    never written. Now the checkpoint carries the record: the resume evaluates the saved
    weights and logs it, and the run ends as an uninterrupted one."""
    over = [f"evaluation.every={every}"]
    cfg = load_recipe(recipe_file, over)
    reference = run_recipe(cfg, progress=False)
    want = reference.read_metrics()
    _killed_in(recipe_file, "epoch 1" if every == 0 else "epoch 0", *over)
    killed = RunFolder.latest(cfg["output_dir"], cfg["name"])
    assert killed.path != reference.path
    assert [m["epoch"] for m in killed.read_metrics()] == ([0] if every == 0 else [])
    folder = run_recipe(cfg, resume=True, progress=False)
    assert folder.path == killed.path
    got = folder.read_metrics()
    assert [m["epoch"] for m in got] == [m["epoch"] for m in want] == [0, 1]
    for a, b in zip(got, want):
        assert a["loss"] == b["loss"]
        assert ("eval" in a) == ("eval" in b)
        if "eval" in a:
            assert a["eval"]["none"]["mean"] == b["eval"]["none"]["mean"]
    assert (folder.path / "results.json").read_text() != ""
