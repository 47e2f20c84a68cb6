"""An epoch's logged loss means, the losses' within-stage epoch, reset_optimizer once, each
stage's ltg_p and sampler settings (mutation audits CB, CE), the pre-BN features a loss
can ask for."""

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


def test_each_stage_augments_with_its_own_ltg_p(recipe_file, monkeypatch):
    """A stage's ltg_p reaches the augmenter at each of its steps (dropping the per-stage
    assignment kept the first stage's value for the whole run: mutation audit CE, T12)."""
    from uvireid.data.transforms import Augmenter

    cfg = load_recipe(
        recipe_file,
        ["stages.0.epochs=1", "stages.1.epochs=1", "stages.0.ltg_p=0.0", "stages.1.ltg_p=0.5"],
    )
    seen = []
    real = Augmenter.__call__

    def spy(self, images, kind, device):
        seen.append(self.ltg_p)
        return real(self, images, kind, device)

    monkeypatch.setattr(Augmenter, "__call__", spy)
    tr = _trainer(cfg)
    tr.load_data()
    tr.train_epoch(0)
    first = len(seen)
    tr.train_epoch(1)
    assert first and len(seen) > first
    assert set(seen[:first]) == {0.0} and set(seen[first:]) == {0.5}


def test_the_identity_sampler_gets_the_stages_camera_and_visible_settings(recipe_file):
    """sampler.camera_aware and sampler.visible_ids reach the identity sampler (both could
    be dropped with every test passing: mutation audit CE, T17/T18)."""
    import dataclasses
    from types import SimpleNamespace

    import numpy as np

    tr = _trainer(load_recipe(recipe_file))
    lab = SimpleNamespace(
        vis_in_v=np.arange(len(tr.vis)) % 4, ir_in_r=np.arange(len(tr.ir)) % 4, has_cross=False
    )
    spec = {"type": "identity", "ids": 2, "images": 2}
    plain = dataclasses.replace(tr.stages[0], sampler=spec)
    sampler, paired = tr._sampler(plain, lab, [])
    assert not paired and sampler.cams is None and sampler.ids_v == 2
    aware = dataclasses.replace(
        tr.stages[0], sampler={**spec, "camera_aware": True, "visible_ids": 3}
    )
    sampler, _ = tr._sampler(aware, lab, [])
    assert sampler.ids_v == 3
    np.testing.assert_array_equal(sampler.cams[0], [r.cam for r in tr.vis])
    np.testing.assert_array_equal(sampler.cams[1], [r.cam for r in tr.ir])


def test_the_trainer_hands_the_loss_the_features_before_the_bn_neck(recipe_file, monkeypatch):
    """A loss with needs_pool gets outputs.pool_*, the pooled features the BN neck took in
    for the step's rows (hooked on the model's neck), beside feat_*, its output."""
    import math

    from uvireid.losses import TripletLoss

    cfg = load_recipe(
        recipe_file,
        [
            "stages.0.losses=[{type: cluster_contrast}, {type: triplet, weight: 0.5}]",
            "stages.0.iters_per_epoch=1",
        ],
    )
    tr = _trainer(cfg)
    tr.load_data()
    neck_io, seen = [], []
    tr.model.backbone.neck.register_forward_hook(
        lambda m, args, out: neck_io.append((args[0].detach(), out.detach()))
    )
    real = TripletLoss.forward

    def spy(self, outputs, targets):
        seen.append(outputs.detach())
        return real(self, outputs, targets)

    monkeypatch.setattr(TripletLoss, "forward", spy)
    record = tr.train_epoch(0)
    (pre, post), (out,) = neck_io[-1], seen  # the training step's forward
    sv = len(out.feat_v)
    torch.testing.assert_close(out.pool_v, pre[:sv], rtol=0, atol=0)
    torch.testing.assert_close(out.pool_a, pre[sv : 2 * sv], rtol=0, atol=0)
    torch.testing.assert_close(out.pool_r, pre[2 * sv :], rtol=0, atol=0)
    torch.testing.assert_close(out.feat_r, post[2 * sv :], rtol=0, atol=0)
    assert "triplet" in record["loss"] and math.isfinite(record["loss"]["triplet"])
