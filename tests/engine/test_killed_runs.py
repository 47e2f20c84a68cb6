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


@pytest.mark.slow
def test_sigterm_is_handled_as_ctrl_c_and_says_how_to_resume(recipe_file):
    """SIGTERM (a scheduler's time limit, scancel, docker stop) ended a run without a
    word: no record of the epoch being evaluated, no resume command."""
    import signal
    import time

    cfg = load_recipe(recipe_file, ["evaluation.every=1"])
    # stopped in epoch 1's training, after epoch 0's checkpoint and record
    code = KILL_IN_EVALUATION.replace(
        "os._exit(137)", "os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)"
    ).replace("import os, sys", "import os, signal, sys, time")
    code = code.replace(
        "run_recipe(load_recipe(sys.argv[1], sys.argv[3:]), progress=False)",
        "from uvireid.cli import main\n"
        "sys.exit(main(['run', sys.argv[1], '--no-report', *sys.argv[3:]]))",
    )
    t0 = time.time()
    done = subprocess.run(
        [sys.executable, "-c", code, str(recipe_file), "epoch 1", "evaluation.every=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert time.time() - t0 < 200 and done.returncode == 143, done.stderr[-2000:]
    assert "terminated (SIGTERM); the run keeps its last finished epoch's checkpoint" in done.stderr
    assert "--resume" in done.stderr
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    records = folder.read_metrics()
    # epoch 1's record waits in its checkpoint: the resume evaluates it (audit AV: it was
    # logged with eval_error and never evaluated)
    assert [m["epoch"] for m in records] == [0]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # this process: untouched
    resumed = run_recipe(cfg, resume=True, progress=False).read_metrics()
    assert [m["epoch"] for m in resumed] == [0, 1] and "eval" in resumed[-1]
    assert not any("eval_error" in m for m in resumed)
