"""When a run evaluates (evaluation.every) and when start_from: best loads best.pt (once,
at the stage's first epoch); mutation audit CB."""

from __future__ import annotations

from uvireid.config import load_recipe
from uvireid.engine.runner import run_recipe
from uvireid.engine.trainer import Trainer


def test_start_from_best_loads_only_at_the_stages_first_epoch(recipe_file, monkeypatch):
    """A two-epoch stage with start_from: best starts from best.pt, then trains on from
    its own first epoch (reloading best.pt at its second epoch would throw that epoch's
    training away)."""

    def improves(self, epoch, tables):  # epoch 0 is the best, whatever the scores
        if epoch != 0:
            return False
        self.best = {"epoch": 0, "mAP": 1.0, "selected_on": "test set"}
        return True

    monkeypatch.setattr(Trainer, "_improves_best", improves)
    loads = []
    real = Trainer._load_best

    def spy(self, stage):
        loads.append(self.epoch)
        return real(self, stage)

    monkeypatch.setattr(Trainer, "_load_best", spy)
    over = [
        "stages.0.epochs=2",
        "stages.1.epochs=2",
        "stages.1.start_from=best",
        "evaluation.keep_best=true",
        "evaluation.every=1",
    ]
    folder = run_recipe(load_recipe(recipe_file, over), progress=False)
    assert loads == [2]  # the salcr stage's first epoch (epochs 0-1 are dcl)
    metrics = folder.read_metrics()
    assert [m.get("started_from", {}).get("epoch") for m in metrics] == [None, None, 0, None]


def test_evaluation_every_counts_the_trained_epochs(recipe_file, monkeypatch):
    """evaluation.every=2 over 5 epochs: evaluated after the 2nd and 4th trained epochs
    (indices 1 and 3) and after the last (index 4), as 'every this many epochs' reads and
    as config's start_from check (every <= epochs before the stage) assumes."""
    cfg = load_recipe(recipe_file, ["stages.0.epochs=2", "stages.1.epochs=3", "evaluation.every=2"])
    from uvireid.registry import DATASETS

    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    evaluated = []

    def fake_epoch(self, epoch):
        return {"epoch": epoch, "stage": self.stage_at(epoch).name, "seconds": {}}

    def fake_eval(self, tag):
        evaluated.append(self.epoch - 1)  # the last trained epoch's index
        table = {"mean": {"mAP": 1.0}, "std": {"mAP": 0.0}, "provenance": {}}
        self.last_eval = {"none": table}
        return {"tables": {"none": table}, "seconds": {}}

    monkeypatch.setattr(Trainer, "train_epoch", fake_epoch)
    monkeypatch.setattr(Trainer, "evaluate", fake_eval)
    tr.fit()
    assert evaluated == [e for e in range(5) if (e + 1) % 2 == 0 or e == 4] == [1, 3, 4]
