"""Trainer helpers, each on a stub trainer (``Trainer.__new__``, no model):
``_restore_streams`` for a rank the checkpoint holds no streams for, ``_refine`` with
one modality wholly unreadable, ``evaluate``'s extract phase (the elapsed time less the
protocol's own phases) on a fake clock, and the checkpoint's ``stage`` at a stage
boundary."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from train_fixtures import bare_stage

import uvireid.engine.trainer as T
from uvireid.engine.checkpoint import rng_state, set_rng_state
from uvireid.engine.trainer import Trainer


class _Augment:
    def __init__(self):
        self.loaded = []

    def load_state_dict(self, state):
        self.loaded.append(state)


def _streams_stub():
    tr = Trainer.__new__(Trainer)
    tr.rng = np.random.default_rng(0)
    tr.augment = _Augment()
    return tr


def _snapshot(tag: int) -> dict:
    """A process's streams as _streams() keeps them, with a sampler state of its own."""
    return {
        **rng_state(),
        "sampler": np.random.default_rng(1000 + tag).bit_generator.state,
        "augment": {"tag": tag},
    }


@pytest.fixture
def keep_global_streams():
    state = rng_state()
    yield
    set_rng_state(state)


@pytest.mark.parametrize(
    "world, rank, per_rank, want",
    [
        (2, 0, 2, 0),  # each rank its own
        (2, 1, 2, 1),
        (2, 1, 1, None),  # a checkpoint of a smaller world: rank 1 keeps its seeded streams
        (3, 2, 2, None),
        (1, 0, 1, 0),
    ],
)
def test_each_rank_takes_its_own_streams_or_keeps_its_seeded_ones(
    monkeypatch, keep_global_streams, world, rank, per_rank, want
):
    monkeypatch.setattr(T.D, "rank", lambda: rank)
    monkeypatch.setattr(T.D, "world_size", lambda: world)
    tr = _streams_stub()
    before = tr.rng.bit_generator.state
    rng = {**_snapshot(99), "per_rank": [_snapshot(i) for i in range(per_rank)]}
    tr._restore_streams(rng)
    if want is None:
        assert tr.augment.loaded == [] and tr.rng.bit_generator.state == before
    else:
        assert tr.augment.loaded == [{"tag": want}]
        assert tr.rng.bit_generator.state == np.random.default_rng(1000 + want).bit_generator.state


def test_a_single_process_checkpoint_gives_rank_0_its_streams_and_the_others_none(
    monkeypatch, keep_global_streams
):
    for rank, want in ((0, [{"tag": 7}]), (1, [])):
        monkeypatch.setattr(T.D, "rank", lambda r=rank: r)
        monkeypatch.setattr(T.D, "world_size", lambda: 2)
        tr = _streams_stub()
        tr._restore_streams(_snapshot(7))
        assert tr.augment.loaded == want


def test_the_global_streams_are_the_checkpoints_after_a_restore(monkeypatch, keep_global_streams):
    monkeypatch.setattr(T.D, "rank", lambda: 0)
    monkeypatch.setattr(T.D, "world_size", lambda: 1)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    saved = _snapshot(0)
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(6)
    np.random.seed(6)
    torch.manual_seed(6)
    _streams_stub()._restore_streams(saved)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want


def _refine_stub(ok_v, ok_r):
    tr = Trainer.__new__(Trainer)
    tr.cfg = {"refine": {"type": "cmfp"}}
    tr.ok_v, tr.ok_r = np.asarray(ok_v, bool), np.asarray(ok_r, bool)
    tr.device = "cpu"
    return tr


@pytest.mark.parametrize(
    "ok_v, ok_r",
    [
        ([True, True, True], [False, False]),  # no readable infrared image
        ([False, False, False], [True, True]),  # no readable visible image
    ],
)
def test_refine_leaves_the_features_alone_when_a_modality_has_no_readable_image(
    monkeypatch, ok_v, ok_r
):
    """_refine's docstring: the features propagated across the modalities over the
    readable images; with none in one modality there is nothing to propagate across, and
    the reranker is not even built (no 'refine' phase)."""

    def no_build(spec):
        raise AssertionError("the reranker was built")

    monkeypatch.setattr(T.RERANKERS, "build", no_build)
    tr = _refine_stub(ok_v, ok_r)
    fv, fr = torch.randn(3, 4), torch.randn(2, 4)
    seconds: dict = {}
    gv, gr = tr._refine(fv, fr, seconds)
    assert gv is fv and gr is fr and seconds == {}


def test_refine_replaces_the_readable_rows_only(monkeypatch):
    """The propagation gets the readable rows of each modality and its output replaces
    those rows; the unreadable ones keep their features (checked row by row)."""
    got = {}

    class Halve:
        def propagate(self, v, r):
            got["shapes"] = (tuple(v.shape), tuple(r.shape))
            return v / 2, r / 2

    monkeypatch.setattr(T.RERANKERS, "build", lambda spec: Halve())
    tr = _refine_stub([True, False, True], [False, True])
    fv, fr = torch.randn(3, 4), torch.randn(2, 4)
    seconds: dict = {}
    gv, gr = tr._refine(fv, fr, seconds)
    assert got["shapes"] == ((2, 4), (1, 4))
    assert (
        torch.equal(gv[0], fv[0] / 2)
        and torch.equal(gv[1], fv[1])
        and torch.equal(gv[2], fv[2] / 2)
    )
    assert torch.equal(gr[0], fr[0]) and torch.equal(gr[1], fr[1] / 2)
    assert "refine" in seconds and seconds["refine"] >= 0


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _fake_time(monkeypatch) -> _Clock:
    import time

    clock = _Clock()
    fake = SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    fake.perf_counter = clock
    monkeypatch.setattr(T, "time", fake)
    return clock


def test_the_evaluations_extract_phase_is_the_time_left_after_the_protocols_phases(monkeypatch):
    """evaluate(): extracting the test bank takes 5 s (fake clock), the protocol 7 s of
    which it reports match 3 s and rerank 4 s; the extract phase is the elapsed 12 s less
    the protocol's 7 s, whatever the protocol said its own extract took."""
    import uvireid.engine.runner as R

    clock = _fake_time(monkeypatch)

    def bank(*a, **k):
        clock.now += 5.0
        return "bank"

    def protocol(*a, bank=None, meta=None, **k):
        assert bank == "bank"
        clock.now += 7.0
        return {"seconds": {"extract": 0.0, "match": 3.0, "rerank": 4.0}, "results": {}}

    monkeypatch.setattr(T, "extract_test_bank", bank)
    monkeypatch.setattr(R, "evaluate", protocol)
    tr = Trainer.__new__(Trainer)
    tr.model = SimpleNamespace(backbone=None)
    tr.dataset = SimpleNamespace(test=None)
    tr.tr, tr.device, tr.test_images, tr.folder = {}, "cpu", None, None
    tr.cfg = {"evaluation": {"feature_head": "bn", "flip": True}}
    tr.epoch, tr.total_epochs, tr.precision, tr.started_from = 0, 2, "float32", []
    out = tr.evaluate("untrained")
    assert out["seconds"] == {"extract": 5.0, "match": 3.0, "rerank": 4.0}
    assert tr.last_eval == {}


def _state_stub(epoch: int):
    tr = Trainer.__new__(Trainer)
    tr.stages = [bare_stage("a", 0, 2), bare_stage("b", 2, 3)]
    tr.total_epochs = 5
    tr.epoch = epoch
    tr.labels, tr.rank_streams = None, None
    tr._streams = lambda: {}
    tr.model = torch.nn.Linear(2, 2)
    tr.optimizer = torch.optim.SGD(tr.model.parameters(), lr=0.1)
    tr.scheduler = torch.optim.lr_scheduler.StepLR(tr.optimizer, 1)
    tr.losses = {}
    tr.counts, tr.cfg, tr.dataset, tr.source = {}, {"seed": 1}, None, None
    tr.best, tr.started_from, tr.pending, tr.precision = None, [], None, "float32"
    return tr


@pytest.mark.parametrize("epoch, want", [(0, None), (1, "a"), (2, "a"), (3, "b"), (5, "b")])
def test_a_checkpoint_names_the_stage_of_its_last_trained_epoch(epoch, want):
    """state_dict()['epoch'] counts the trained epochs; its 'stage' is that of the last
    of them (epoch - 1): after stage a's last epoch (1) the checkpoint says a, not the
    stage b the next epoch starts."""
    state = _state_stub(epoch).state_dict()
    assert state["epoch"] == epoch and state["stage"] == want


def _failing_eval_stub(exc):
    tr = Trainer.__new__(Trainer)
    tr.cfg = {"evaluation": {"every": 1, "keep_best": True}}
    tr.protocol, tr.folder, tr.best, tr.pending, tr.dataset = "sysu-all", None, None, None, None
    tr.epoch, tr.total_epochs = 1, 3
    tr.saves = []
    tr.save = lambda best=False: tr.saves.append(best)

    def evaluate(tag):
        raise exc

    tr.evaluate = evaluate
    return tr


@pytest.mark.parametrize(
    "exc, logged",
    [
        (RuntimeError("out of memory"), True),
        (KeyboardInterrupt(), False),  # Ctrl-C / SIGTERM: the resume evaluates it (audit AV)
    ],
)
def test_a_failed_evaluation_is_logged_with_its_error_but_an_interrupt_is_not(exc, logged):
    tr = _failing_eval_stub(exc)
    lines = []
    with pytest.raises(type(exc)):
        tr._finish_epoch({"epoch": 0, "seconds": {}}, lines.append)
    assert tr.saves == [False]  # the epoch was kept before its evaluation
    assert tr.pending == {"epoch": 0, "seconds": {}}
    if logged:
        assert lines == [{"epoch": 0, "seconds": {}, "eval_error": "RuntimeError: out of memory"}]
    else:
        assert lines == []


def test_fit_buffers_takes_the_checkpoints_shapes_and_leaves_parameters_alone():
    class Memory(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mem", torch.zeros(2, 3))
            self.w = torch.nn.Parameter(torch.zeros(4))

    outer = torch.nn.ModuleList([Memory()])
    outer.register_buffer("top", torch.zeros(1))
    state = {"0.mem": torch.ones(5, 3), "0.w": torch.ones(7), "top": torch.ones(1)}
    top = outer.top
    T._fit_buffers(outer, state)
    assert outer[0].mem.shape == (5, 3) and outer[0].w.shape == (4,)
    assert outer.top is top  # a buffer of the same shape is not replaced
    outer.load_state_dict({**state, "0.w": torch.ones(4)})
    assert torch.equal(outer[0].mem, torch.ones(5, 3))
