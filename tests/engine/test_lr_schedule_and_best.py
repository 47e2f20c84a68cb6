"""The learning-rate schedule and the best-epoch selection against hand-written values
(mutation audit CB: neither was checked by a fast test)."""

from __future__ import annotations

import numpy as np
import pytest
from train_fixtures import bare_stage

from uvireid.engine.trainer import Trainer, lr_factors


def test_lr_factors_follow_the_documented_schedule_epoch_by_epoch():
    """train.lr_steps count absolute epochs (a step at epoch e applies from e on); a stage
    with its own lr and/or lr_steps restarts at (stage lr or train.lr), its steps counted
    from its own first epoch, train.lr_steps ignored in it; its last epoch included."""
    tr = {"lr": 3.5e-4, "lr_gamma": 0.1, "lr_steps": [2, 5]}
    stages = [
        bare_stage("a", 0, 3),  # epochs 0..2: the global schedule
        bare_stage("b", 3, 4, lr=1e-4),  # epochs 3..6: 1e-4 throughout (no steps of its own)
        bare_stage("c", 7, 3, lr_steps=[1]),  # epochs 7..9: train.lr, x0.1 from its 2nd epoch
    ]
    want = [3.5e-4, 3.5e-4, 3.5e-5, 1e-4, 1e-4, 1e-4, 1e-4, 3.5e-4, 3.5e-5, 3.5e-5]
    f = lr_factors(stages, tr)
    got = [tr["lr"] * f(e) for e in range(10)]
    assert got == pytest.approx(want, rel=1e-12)


def test_keep_best_selects_the_highest_plain_map_the_first_of_equal_ones():
    """evaluation.keep_best: the epoch with the highest mAP of the 'none' table (not a
    re-ranker's), the first of equal values, as numpy's argmax picks it."""
    tr = Trainer.__new__(Trainer)
    tr.cfg = {"evaluation": {"keep_best": True}}
    tr.best = None
    maps = [10.0, 30.0, 20.0, 30.0, 25.0]
    kept = []
    for epoch, m in enumerate(maps):
        tables = {"none": {"mean": {"mAP": m}}, "k_reciprocal": {"mean": {"mAP": 90.0 - m}}}
        kept.append(tr._improves_best(epoch, tables))
    want = int(np.argmax(maps))
    assert tr.best == {"epoch": want, "mAP": max(maps), "selected_on": "test set"}
    assert kept == [True, True, False, False, False]
    tr.cfg = {"evaluation": {"keep_best": False}}
    assert tr._improves_best(9, {"none": {"mean": {"mAP": 99.0}}}) is False


def test_the_warm_up_scales_the_first_epochs_linearly_on_top_of_the_steps():
    """train.warmup_epochs=4, warmup_factor=0.01 (fast-reid's WarmupMultiStepLR:
    w * (1 - e / 4) + e / 4), with a step at epoch 3 under it; by hand."""
    tr = {"lr": 1.0, "lr_gamma": 0.1, "lr_steps": [3], "warmup_epochs": 4, "warmup_factor": 0.01}
    f = lr_factors([bare_stage("a", 0, 6)], tr)
    want = [0.01, 0.2575, 0.505, 0.075250, 0.1, 0.1]
    assert [f(e) for e in range(6)] == pytest.approx(want, rel=1e-12)
    assert [
        lr_factors([bare_stage("a", 0, 6)], {**tr, "warmup_epochs": 0})(e) for e in range(6)
    ] == (pytest.approx([1, 1, 1, 0.1, 0.1, 0.1], rel=1e-12))


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_each_optimizer_makes_its_documented_first_step(kind):
    """One step from p = 2 with gradient g = 0.5, lr 0.1, weight decay 0.2, by hand:
    Adam adds the decay to the gradient (p - lr * g' / |g'|, g' = g + wd p), AdamW decays
    the weight apart (p (1 - lr wd) - lr * g / |g|), SGD steps on g + wd p (the momentum
    buffer starts as that)."""
    import torch

    from uvireid.engine.trainer import make_optimizer

    p = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = make_optimizer([p], {"optimizer": kind, "lr": 0.1, "weight_decay": 0.2, "momentum": 0.9})
    p.grad = torch.tensor([0.5], dtype=torch.float64)
    opt.step()
    want = {
        "adam": 2.0 - 0.1 * 0.9 / (0.9 + 1e-8),
        "adamw": 2.0 * (1 - 0.1 * 0.2) - 0.1 * 0.5 / (0.5 + 1e-8),
        "sgd": 2.0 - 0.1 * (0.5 + 0.2 * 2.0),
    }[kind]
    assert float(p.detach()) == pytest.approx(want, rel=1e-12)
    if kind == "sgd":  # the second step carries the momentum: buf = 0.9 buf + g'
        buf = 0.5 + 0.2 * 2.0
        p.grad = torch.tensor([0.5], dtype=torch.float64)
        before = float(p.detach())
        opt.step()
        buf = 0.9 * buf + (0.5 + 0.2 * before)
        assert float(p.detach()) == pytest.approx(before - 0.1 * buf, rel=1e-12)


def test_optimizer_settings_are_checked_with_the_recipe(recipe_file):
    from uvireid.config import load_recipe
    from uvireid.errors import ConfigError

    with pytest.raises(ConfigError, match="'train.optimizer' must be adam, adamw or sgd"):
        load_recipe(recipe_file, ["train.optimizer=sdg"])
    with pytest.raises(ConfigError, match="train.momentum is SGD's and does nothing"):
        load_recipe(recipe_file, ["train.momentum=0.8"])
    assert load_recipe(recipe_file, ["train.optimizer=sgd", "train.momentum=0.8"])["train"][
        "momentum"
    ] == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="'train.warmup_factor' must be in \\(0, 1\\]"):
        load_recipe(recipe_file, ["train.warmup_factor=0"])
    with pytest.raises(ConfigError, match="'train.warmup_epochs' must be >= 0"):
        load_recipe(recipe_file, ["train.warmup_epochs=-1"])


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`:UserWarning")
def test_the_trainer_steps_with_the_recipes_optimizer_and_warm_up(recipe_file, monkeypatch):
    """The run's optimiser is train.optimizer's, and the epochs' logged learning rates
    follow the warm-up (each epoch's record['lr'] against the formula)."""
    import torch

    from uvireid.config import load_recipe
    from uvireid.registry import DATASETS

    cfg = load_recipe(
        recipe_file,
        [
            "train.optimizer=sgd",
            "train.warmup_epochs=2",
            "train.warmup_factor=0.1",
            "train.lr_steps=[1]",
        ],
    )
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    assert isinstance(tr.optimizer, torch.optim.SGD)
    assert tr.optimizer.param_groups[0]["momentum"] == 0.9
    monkeypatch.setattr(Trainer, "step", lambda self, *a: (("total",), torch.zeros(1)))
    tr.load_data()
    lrs = []
    for epoch in range(2):  # train_epoch steps the scheduler at its end
        lrs.append(tr.train_epoch(epoch)["lr"])
    lr = cfg["train"]["lr"]
    # epoch 1: the warm-up's factor on top of the step at epoch 1
    assert lrs == pytest.approx([lr * 0.1, lr * 0.1 * (0.1 * 0.5 + 0.5)], rel=1e-12)


def test_sgd_steps_with_the_recipes_momentum_not_a_fixed_one(recipe_file):
    """train.momentum=0.5, lr 0.1, no decay, g = 1 twice, by hand: buf 1 then
    0.5 * 1 + 1 = 1.5; p = 2 - 0.1 - 0.15 = 1.75 (momentum 0.9 would give 1.71)."""
    import torch

    from uvireid.config import load_recipe
    from uvireid.engine.trainer import make_optimizer
    from uvireid.registry import DATASETS

    p = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = make_optimizer([p], {"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0, "momentum": 0.5})
    for _ in range(2):
        p.grad = torch.tensor([1.0], dtype=torch.float64)
        opt.step()
    assert float(p.detach()) == pytest.approx(1.75, rel=1e-12)
    cfg = load_recipe(recipe_file, ["train.optimizer=sgd", "train.momentum=0.5"])
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    assert tr.optimizer.param_groups[0]["momentum"] == 0.5


def test_the_warm_up_starts_at_the_documented_default_factor(recipe_file):
    """README: warm-up 'from train.warmup_factor (0.01)': with only warmup_epochs=4 set,
    epoch 0 trains at 0.01 x, epoch 2 at 0.01 * 0.5 + 0.5 of the scheduled rate."""
    from uvireid.config import load_recipe

    cfg = load_recipe(recipe_file, ["train.warmup_epochs=4"])
    f = lr_factors([bare_stage("a", 0, 6)], {**cfg["train"], "lr_steps": []})
    assert [f(0), f(2), f(4)] == pytest.approx([0.01, 0.505, 1.0], rel=1e-12)
