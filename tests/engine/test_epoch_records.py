"""An epoch's logged loss means, the losses' within-stage epoch, reset_optimizer once
(mutation audit CB)."""

from __future__ import annotations

import pytest
import torch

from uvireid.config import load_recipe
from uvireid.engine.trainer import Trainer

# the tests replace the step (no optimiser step), so torch warns at the scheduler's
pytestmark = pytest.mark.filterwarnings(
    "ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning"
)


def _trainer(cfg):
    from uvireid.registry import DATASETS

    return Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)


def test_the_logged_loss_is_the_mean_over_every_step_of_the_epoch(recipe_file, monkeypatch):
    """record['loss'] holds each term's mean over all iters_per_epoch steps (13 here: one
    full read window of 10 and a partial one), against the plain mean of the values."""
    cfg = load_recipe(recipe_file, ["stages.0.iters_per_epoch=13"])
    tr = _trainer(cfg)
    tr.load_data()
    values = [(float(i) ** 2, 0.5 * i + 1.0) for i in range(13)]
    calls = iter(values)

    def fake_step(self, stage, losses, lab, batch, paired):
        a, b = next(calls)
        return ("total", "cluster_contrast"), torch.tensor([a, b])

    monkeypatch.setattr(Trainer, "step", fake_step)
    record = tr.train_epoch(0)
    want_total = sum(a for a, _ in values) / len(values)
    want_term = sum(b for _, b in values) / len(values)
    assert record["loss"]["total"] == pytest.approx(want_total, rel=1e-6)
    assert record["loss"]["cluster_contrast"] == pytest.approx(want_term, rel=1e-6)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`:UserWarning")
def test_the_losses_get_the_epoch_counted_within_their_stage(recipe_file, monkeypatch):
    """EpochContext.epoch is the epoch's index within its stage (0 at the stage's first
    epoch; PGM's alternating memories switch direction on its parity), not the run's."""
    cfg = load_recipe(recipe_file, ["stages.0.epochs=1", "stages.1.epochs=2"])
    seen = []
    from uvireid.losses.cluster_contrast import DualClusterContrastLoss

    real = DualClusterContrastLoss.reset

    def spy(self, ctx):
        seen.append(ctx.epoch)
        return real(self, ctx)

    monkeypatch.setattr(DualClusterContrastLoss, "reset", spy)
    monkeypatch.setattr(Trainer, "step", lambda self, *a: (("total",), torch.zeros(1)))
    tr = _trainer(cfg)
    tr.load_data()
    for epoch in range(3):
        tr.train_epoch(epoch)
    # the salcr stage (dual_cluster_contrast) runs epochs 1 and 2 of the run
    assert seen == [0, 1]


def test_reset_optimizer_clears_adam_once_at_the_stage_start(recipe_file):
    """stages.N.reset_optimizer: a new Adam at the stage's first epoch only; its later
    epochs keep the moments, so Adam's step count at the end is the stage's step count
    (2 epochs x 2 iterations), and only the first epoch's record says it was reset."""
    cfg = load_recipe(
        recipe_file, ["stages.1.reset_optimizer=true", "stages.1.epochs=2", "train.lr_steps=[]"]
    )
    tr = _trainer(cfg)
    tr.load_data()
    records = [tr.train_epoch(e) for e in range(3)]
    assert [r.get("optimizer_reset", False) for r in records] == [False, True, False]
    steps = {int(s["step"]) for s in tr.optimizer.state.values()}
    assert steps == {2 * cfg["train"]["iters_per_epoch"]}
