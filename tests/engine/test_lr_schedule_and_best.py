"""The learning-rate schedule and the best-epoch selection against hand-written values
(mutation audit CB: neither was checked by a fast test)."""

from __future__ import annotations

import numpy as np
import pytest

from uvireid.engine.trainer import Stage, Trainer, lr_factors


def _stage(name, first, epochs, lr=None, steps=None):
    return Stage(
        name=name,
        epochs=epochs,
        iters=1,
        ltg_p=0.0,
        sampler={},
        clusterer={},
        associator=None,
        losses=[],
        first_epoch=first,
        lr=lr,
        lr_steps=steps,
    )


def test_lr_factors_follow_the_documented_schedule_epoch_by_epoch():
    """train.lr_steps count absolute epochs (a step at epoch e applies from e on); a stage
    with its own lr and/or lr_steps restarts at (stage lr or train.lr), its steps counted
    from its own first epoch, train.lr_steps ignored in it; its last epoch included."""
    tr = {"lr": 3.5e-4, "lr_gamma": 0.1, "lr_steps": [2, 5]}
    stages = [
        _stage("a", 0, 3),  # epochs 0..2: the global schedule
        _stage("b", 3, 4, lr=1e-4),  # epochs 3..6: 1e-4 throughout (no steps of its own)
        _stage("c", 7, 3, steps=[1]),  # epochs 7..9: train.lr, x0.1 from its 2nd epoch
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
