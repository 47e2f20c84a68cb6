"""An epoch's phase timings on a fake clock, and its record's
warnings key. train_epoch on the tiny recipe with the optimiser step replaced (as
test_trainer_edges' images-per-second test does); each phase advances the clock by its own
power of ten, so a phase that took in another's time shows at once:
extract 1 s, refine 10 s (a stand-in), clustering + association 100 s, the sampler
10,000 s (outside every phase), each step 1,000 s (the train phase)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from train_fixtures import tiny_recipe

import uvireid.engine.trainer as T
from uvireid.config import validate
from uvireid.engine.trainer import Trainer
from uvireid.registry import DATASETS

pytestmark = pytest.mark.filterwarnings(
    "ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning"
)


class _Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def _phased_epoch(tmp_path, monkeypatch, labels=None):
    clock = _Clock()
    fake = SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    fake.perf_counter = clock
    monkeypatch.setattr(T, "time", fake)

    def advancing(name, dt, after=None):
        real = getattr(Trainer, name)

        def wrapped(self, *a, **k):
            out = real(self, *a, **k)
            clock.now += dt
            return after(out) if after else out

        monkeypatch.setattr(Trainer, name, wrapped)

    def refine(self, fv, fr, seconds):
        clock.now += 10.0
        seconds["refine"] = 10.0
        return fv, fr

    def step(self, stage, losses, lab, batch, paired):
        clock.now += 1000.0
        return ("total",), torch.ones(1)

    advancing("_extract_train", 1.0)
    advancing("pseudo_labels", 100.0, labels)
    advancing("_sampler", 10000.0)
    monkeypatch.setattr(Trainer, "_refine", refine)
    monkeypatch.setattr(Trainer, "step", step)
    cfg = validate(tiny_recipe(tmp_path))
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    tr.load_data()
    return tr, tr.train_epoch(0)


def _three_clusters(lab):
    """Every readable image in one of three clusters in each modality: no collapse, no
    association (stage dcl): an epoch without a warning."""
    yv = np.arange(len(lab.init_v)) % 3
    yr = np.arange(len(lab.init_r)) % 3
    none_v, none_r = np.full(len(yv), -1), np.full(len(yr), -1)
    return T.EpochLabels(
        vis_in_v=yv,
        vis_in_r=none_v,
        ir_in_r=yr,
        ir_in_v=none_r,
        init_v=yv,
        init_r=yr,
        num_v=3,
        num_r=3,
        has_cross=False,
    )


@pytest.fixture(scope="module")
def phased(tmp_path_factory):
    """One epoch for both tests (the tiny trainer takes a few seconds to build)."""
    with pytest.MonkeyPatch.context() as mp:
        yield _phased_epoch(tmp_path_factory.mktemp("phases"), mp, _three_clusters)


def test_each_phase_is_timed_on_its_own(phased):
    tr, record = phased
    s = record["seconds"]
    iters = tr.stages[0].iters
    assert s["extract"] == pytest.approx(1.0)  # the extraction alone, not refine/cluster
    assert s["refine"] == pytest.approx(10.0)
    assert s["train"] == pytest.approx(1000.0 * iters)  # the steps alone
    assert record["loss"] == {"total": pytest.approx(1.0)}


def test_an_epoch_without_a_warning_records_no_warnings_key(phased):
    """record['warnings'] lists the epoch's warnings where there are some (a collapse, no
    cross-modal link, a refused pairing); an epoch without one has no such key (its
    metrics.jsonl line carries no empty list)."""
    _, record = phased
    assert record["clusters"]["visible"] == 3 and record["clusters"]["infrared"] == 3
    assert "warnings" not in record
