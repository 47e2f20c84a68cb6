"""The trainer's helpers against the formulas of their docstrings, computed by hand: the
learning-rate factors epoch by epoch, the loss terms' names, the checks of an
associator's labels at their bounds, ``_plain_info``'s limits; ``pseudo_labels`` with a
stand-in clusterer and associator (the association's summary, the label-space sizes,
the cluster-collapse warnings); and what ``_finish_epoch`` / ``_log_pending`` save,
evaluate and log, and when, on a stub trainer (no model)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from train_fixtures import bare_stage

import uvireid.engine.trainer as T
from uvireid.engine.trainer import (
    Stage,
    Trainer,
    _check_cross_labels,
    _plain_info,
    lr_factors,
    term_names,
)
from uvireid.errors import TrainingError
from uvireid.types import CrossLabels


def test_lr_factors_follow_the_documented_formula_epoch_by_epoch():
    """Stage 1 (epochs 0-2) on train.lr_steps [1, 5] (absolute); stage 2 (epochs 3-7)
    with lr 1e-3 and its own lr_steps [2] counted from its first epoch; warm-up of 2
    epochs from factor 0.1 (linear: w + (1 - w) * e / 2)."""
    base, gamma, w = 1e-4, 0.1, 0.1
    stages = [bare_stage("a", 0, 3), bare_stage("b", 3, 5, lr=1e-3, lr_steps=[2])]
    tr = {"lr": base, "lr_gamma": gamma, "lr_steps": [1, 5], "warmup_epochs": 2, "warmup_factor": w}
    f = lr_factors(stages, tr)
    expected = {
        0: 1.0 * w,  # warm-up, alpha 0, no step passed
        1: gamma * (w * 0.5 + 0.5),  # warm-up alpha 1/2; step 1 passed
        2: gamma,  # warm-up over (epoch 2 == warm)
        3: 10.0,  # stage lr 1e-3 / 1e-4, local 0
        4: 10.0,  # local 1 < 2
        5: 10.0 * gamma,  # local 2 >= 2 (train step 5 ignored)
        6: 10.0 * gamma,
        7: 10.0 * gamma,
    }
    for epoch, want in expected.items():
        assert f(epoch) == pytest.approx(want, rel=1e-12), epoch
    # past the last stage: the train schedule on the absolute epoch (both steps passed)
    assert f(8) == pytest.approx(gamma**2)


def test_lr_steps_of_a_stage_without_its_own_lr_scale_train_lr():
    stages = [bare_stage("a", 0, 2), bare_stage("b", 2, 3, lr_steps=[1])]
    tr = {"lr": 3e-4, "lr_gamma": 0.5, "lr_steps": [100], "warmup_epochs": 0}
    f = lr_factors(stages, tr)
    assert [f(e) for e in range(5)] == pytest.approx([1, 1, 1, 0.5, 0.5])


def test_term_names_number_only_repeated_types():
    assert term_names([{"type": "a"}, {"type": "b"}, {"type": "a"}]) == ["a.0", "b", "a.2"]
    assert term_names([{"type": "a"}]) == ["a"]


def _cl(lv, lr, matches=(), unified=False, nv_said=0, nr_said=0):
    return CrossLabels(
        np.asarray(lv, dtype=np.int64),
        np.asarray(lr, dtype=np.int64),
        np.asarray(matches, dtype=np.int64).reshape(-1, 2),
        unified=unified,
        num_clusters_v=nv_said,
        num_clusters_r=nr_said,
    )


def test_separate_spaces_may_say_exactly_the_clusterers_count():
    # 2 visible + 2 infrared instances, clusterer found kv = 2, kr = 1
    cl = _cl([0, 1, 1, 0], [0, 0, 0, 0], matches=[[1, 0]], nv_said=2, nr_said=1)
    out = _check_cross_labels(cl, 2, 2, 2, 1, "x")
    assert out.labels_in_v.tolist() == [0, 1, 1, 0]


def test_a_label_equal_to_the_cluster_count_is_refused():
    cl = _cl([0, 2, 1, 0], [0, 0, 0, 0])
    with pytest.raises(TrainingError, match="outside"):
        _check_cross_labels(cl, 2, 2, 2, 1, "x")


def test_a_match_to_cluster_k_is_refused_in_separate_spaces():
    cl = _cl([0, 1, 1, 0], [0, 0, 0, 0], matches=[[2, 0]])
    with pytest.raises(TrainingError, match="matches outside"):
        _check_cross_labels(cl, 2, 2, 2, 1, "x")


def test_unified_space_said_smaller_than_the_clusterer_is_raised_to_it():
    # unified, num_clusters_v = 2 but the clusterer found 3: bound max(2, 3) = 3
    cl = _cl([0, 2, 1, 2], [0, 0, 0, 0], unified=True, nv_said=2, nr_said=1)
    out = _check_cross_labels(cl, 2, 2, 3, 1, "x")
    assert out.labels_in_v.tolist() == [0, 2, 1, 2]


def test_unified_derived_sizes_cover_the_clusterers_count_and_allow_n_labels():
    # derived (num_clusters 0): labels 0..3 on 4 instances is allowed (4 <= nv + nr)
    cl = _cl([0, 1, 2, 3], [0, 0, 1, 1], unified=True)
    out = _check_cross_labels(cl, 2, 2, 2, 2, "x")
    assert (out.num_clusters_v, out.num_clusters_r) == (4, 2)
    # labels up to 1 but the clusterer found 3: the size is max(derived 2, k 3) = 3
    cl = _cl([0, 1, 1, 0], [0, 0, 0, 0], unified=True)
    out = _check_cross_labels(cl, 2, 2, 3, 2, "x")
    assert (out.num_clusters_v, out.num_clusters_r) == (3, 2)
    # 5 distinct labels on 4 instances: refused
    cl = _cl([0, 1, 2, 4], [0, 0, 0, 0], unified=True)
    with pytest.raises(TrainingError, match="without num_clusters_v"):
        _check_cross_labels(cl, 2, 2, 2, 1, "x")


def test_plain_info_keeps_lists_of_up_to_sixteen_scalars():
    assert _plain_info(list(range(16))) == list(range(16))
    assert _plain_info(list(range(17))) is None
    assert _plain_info(np.float32(0.5)) == 0.5
    assert _plain_info(np.zeros(3)) is None


def test_the_summary_counts_the_matches_and_sizes_cover_the_clusterers(monkeypatch):
    lv, lr = np.array([0, 1, 1]), np.array([0, 0])  # kv = 2, kr = 1

    class Assoc:
        def associate(self, fv, labels_v, fr, labels_r):
            return CrossLabels(
                np.array([0, 1, 1, 0, 0]),
                np.array([0, 0, 0, 0, 0]),
                np.array([[0, 0], [1, 0]]),
                info={"matches": "a plugin's own", "iters": np.int64(3), "big": np.zeros(3)},
                num_clusters_v=1,  # understated: the clusterer found 2
                num_clusters_r=1,
            )

    monkeypatch.setattr(T, "ASSOCIATORS", SimpleNamespace(build=lambda spec: Assoc()))
    tr = Trainer.__new__(Trainer)
    tr.device = "cpu"
    tr.ok_v, tr.ok_r = np.ones(3, bool), np.ones(2, bool)
    tr._cluster = lambda stage, feats, ok: lv if len(feats) == 3 else lr
    stage = Stage("s", 1, 1, 0.0, {}, {"type": "x"}, {"type": "fake"}, [])
    seconds: dict = {}
    lab = tr.pseudo_labels(stage, torch.zeros(3, 4), torch.zeros(2, 4), seconds)
    # the trainer's count of matches wins over a plugin's key of that name; arrays dropped
    assert lab.info == {"iters": 3, "matches": 2}
    assert (lab.num_v, lab.num_r) == (2, 1)
    assert lab.has_cross
    assert lab.vis_in_v.tolist() == [0, 1, 1] and lab.ir_in_v.tolist() == [0, 0]
    assert set(seconds) == {"cluster", "associate"}


def test_the_collapse_messages_say_still_only_for_an_unchanged_count():
    """_check_counts: 1 -> 0 -> 0 -> 1 clusters (prev <= 1 each time after the first):
    'still' only where the count is the previous one; 10 -> 5 is not a collapse at ratio
    0.5, 10 -> 4 is; the counts are the clusterer's (init_*), not the associated ones."""
    tr = Trainer.__new__(Trainer)
    tr.counts, tr.tr = {}, {"collapse_ratio": 0.5}
    many = np.repeat(np.arange(10), 2)

    def check(y):
        warnings: list[str] = []
        lab = SimpleNamespace(init_v=np.asarray(y), init_r=many, vis_in_v=many, ir_in_r=many)
        counts = tr._check_counts(lab, warnings)
        return counts, [w.split(";")[0] for w in warnings]

    assert check([0, 0])[1] == ["visible cluster count collapsed to 1"]
    assert check([-1, -1])[1] == ["visible: 0 cluster(s), from 1 the epoch before"]
    assert check([-1, -1])[1] == ["visible: still 0 cluster(s), as the epoch before"]
    assert check([0, -1])[1] == ["visible: 1 cluster(s), from 0 the epoch before"]
    counts, w = check(np.repeat(np.arange(10), 2))
    assert counts == {"visible": 10, "infrared": 10} and w == []
    assert check(np.repeat(np.arange(5), 2))[1] == []
    tr.counts = {"visible": 10, "infrared": 10}
    assert check(np.repeat(np.arange(4), 2))[1] == [
        "visible cluster count collapsed to 4 from 10 the epoch before"
    ]


def _stub(maps, every=2, total=5, keep_best=True):
    tr = Trainer.__new__(Trainer)
    tr.cfg = {"evaluation": {"every": every, "keep_best": keep_best}}
    tr.total_epochs = total
    tr.protocol = "sysu-all"
    tr.best = None
    tr.pending = None
    tr.dataset = None
    tr.folder = None
    tr.saves = []
    tr.evals = []

    def save(best=False):
        tr.saves.append((tr.epoch - 1, best, "eval" in (tr.pending or {})))

    def evaluate(tag):
        tr.evals.append(tr.epoch - 1)
        table = {"mean": {"mAP": maps[tr.epoch - 1]}, "std": {"mAP": 0.0}, "provenance": {}}
        return {"tables": {"none": table}, "seconds": {"match": 0.25}, "results": {}}

    tr.save, tr.evaluate = save, evaluate
    return tr


def test_finish_epoch_saves_evaluates_and_keeps_the_first_best():
    maps = [None, 0.5, None, 0.5, 0.4]  # epoch 3 ties epoch 1: not better
    tr = _stub(maps)
    logged, returned = [], []
    for epoch in range(5):
        tr.epoch = epoch + 1
        record = {"epoch": epoch, "seconds": {"train": 1.0}}
        returned.append(tr._finish_epoch(record, logged.append))
    # every=2 on trained-epoch counts 2 and 4, plus the last (0-based 1, 3, 4)
    assert tr.evals == [1, 3, 4]
    # an evaluated epoch is saved before its evaluation (without its eval); saved again,
    # as the best, only where the evaluation made it the best; others saved once
    assert tr.saves == [
        (0, False, False),
        (1, False, False),
        (1, True, True),
        (2, False, False),
        (3, False, False),
        (4, False, False),
    ]
    assert returned == [False, False, False, False, True]
    assert [m["epoch"] for m in logged] == [0, 1, 2, 3, 4]
    assert ["eval" in m for m in logged] == [False, True, False, True, True]
    assert [m.get("best", {}).get("epoch") for m in logged] == [None, 1, None, 1, 1]
    assert logged[1]["seconds"] == {"train": 1.0, "eval_match": 0.25}
    assert logged[1]["eval"]["none"]["mean"] == {"mAP": 0.5}
    assert tr.best == {"epoch": 1, "mAP": 0.5, "selected_on": "test set"}


def test_without_keep_best_no_best_is_recorded_and_each_epoch_saved_once():
    tr = _stub([0.1, 0.9], every=1, total=2, keep_best=False)
    logged = []
    for epoch in range(2):
        tr.epoch = epoch + 1
        tr._finish_epoch({"epoch": epoch, "seconds": {}}, logged.append)
    assert tr.saves == [(0, False, False), (1, False, False)]
    assert tr.best is None and all("best" not in m for m in logged)


def test_a_pending_record_is_finished_once_and_only_if_unlogged():
    tr = _stub([0.3, 0.7], every=1, total=2)
    metrics = [{"epoch": 0}]
    tr.folder = SimpleNamespace(read_metrics=lambda: metrics)
    tr.epoch = 2
    # epoch 1 (the last) was saved but not logged: evaluated, logged, reported evaluated
    tr.pending = {"epoch": 1, "seconds": {"train": 2.0}}
    logged = []
    assert tr._log_pending(logged.append) is True
    assert tr.pending is None or tr.pending.get("epoch") == 1
    assert tr.evals == [1] and [m["epoch"] for m in logged] == [1]
    assert logged[0]["seconds"] == {"train": 2.0, "eval_match": 0.25}
    # logged already: nothing done, not evaluated
    tr2 = _stub([0.3, 0.7], every=1, total=2)
    tr2.folder = SimpleNamespace(read_metrics=lambda: [{"epoch": 0}, {"epoch": 1}])
    tr2.epoch, tr2.pending = 2, {"epoch": 1, "seconds": {}}
    logged2 = []
    assert tr2._log_pending(logged2.append) is False
    assert tr2.evals == [] and logged2 == [] and tr2.saves == [] and tr2.pending is None
