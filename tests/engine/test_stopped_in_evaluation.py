"""A run stopped by Ctrl-C or SIGTERM in an epoch's evaluation evaluates that epoch when
resumed, as after a SIGKILL (audit AV, session 18: the record was logged with eval_error
and the epoch never evaluated, a hole in metrics.jsonl that keep_best never weighed)."""

import pytest

from uvireid.cli import Terminated
from uvireid.config import load_recipe
from uvireid.engine.runner import run_recipe
from uvireid.engine.trainer import Trainer


@pytest.mark.slow
@pytest.mark.parametrize("stop", [Terminated, KeyboardInterrupt])
def test_a_run_stopped_in_an_evaluation_evaluates_that_epoch_when_resumed(
    recipe_file, monkeypatch, stop
):
    over = ["evaluation.every=1"]
    cfg = load_recipe(recipe_file, over)
    want = run_recipe(cfg, progress=False).read_metrics()

    real = Trainer.evaluate

    def stopped(self, tag):
        if tag == "epoch 0":
            raise stop("SIGTERM")
        return real(self, tag)

    monkeypatch.setattr(Trainer, "evaluate", stopped)
    with pytest.raises(stop):
        run_recipe(cfg, progress=False)
    monkeypatch.setattr(Trainer, "evaluate", real)
    folder = run_recipe(cfg, resume=True, progress=False)
    got = [m for m in folder.read_metrics() if "eval_error" not in m]
    assert [m["epoch"] for m in got] == [m["epoch"] for m in want]
    for a, b in zip(got, want):
        assert ("eval" in a) == ("eval" in b)
        if "eval" in a:
            assert a["eval"]["none"]["mean"] == b["eval"]["none"]["mean"]
