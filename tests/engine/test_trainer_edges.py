"""The trainer at its edges (audit JA, session 25, a mutation test of
uvireid/engine/trainer.py): three stages, a stage's own views, counts and label quality
from the right labels, one modality without ground truth or without a cluster, the
collapse warning, images per second, infinite losses, a unified label space and the
weighted total. Each checks against an independent computation (cumulative sums,
sklearn's scores, a count of the sampled batches) or a documented behaviour."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from train_fixtures import singletons_loop, tiny_recipe

from uvireid.config import validate
from uvireid.engine.trainer import Trainer, stages_of
from uvireid.registry import DATASETS
from uvireid.types import INFRARED, VISIBLE, CrossLabels, ImageRecord

# the tests replace the step (no optimiser step), so torch warns at the scheduler's
pytestmark = pytest.mark.filterwarnings(
    "ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning"
)


def _trainer(tmp_path, **top):
    cfg = validate(tiny_recipe(tmp_path, **top))
    return Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)


def _raw_stage(name, epochs, **more):
    return {
        "name": name,
        "epochs": epochs,
        "sampler": {"type": "identity", "ids": 2, "images": 2},
        "clusterer": {"type": "dbscan"},
        "losses": [{"type": "cluster_contrast"}],
        **more,
    }


def test_three_stages_are_numbered_by_the_cumulative_epochs():
    """A stage's first epoch is the sum of the epochs of the stages before it (with two
    stages `first = epochs` and `first += epochs` agree; a third tells them apart)."""
    epochs = [2, 3, 4]
    cfg = {
        "train": {"iters_per_epoch": 1, "lr_steps": []},
        "stages": [_raw_stage(f"s{i}", e) for i, e in enumerate(epochs)],
    }
    stages = stages_of(cfg)
    firsts = np.concatenate([[0], np.cumsum(epochs)[:-1]]).tolist()
    assert [s.first_epoch for s in stages] == firsts == [0, 2, 5]
    assert [s.last_epoch for s in stages] == [f + e - 1 for f, e in zip(firsts, epochs)]


def test_a_stages_jitter_views_override_the_train_default():
    """stages.N.jitter_views, when set, is the stage's; otherwise train.jitter_views."""
    cfg = {
        "train": {"iters_per_epoch": 1, "jitter_views": ["visible_ca"]},
        "stages": [_raw_stage("a", 1, jitter_views=["infrared"]), _raw_stage("b", 1)],
    }
    a, b = stages_of(cfg)
    assert a.jitter_views == ("infrared",)
    assert b.jitter_views == ("visible_ca",)


def test_an_epochs_counts_come_from_the_clusterer_and_its_quality_from_the_trained_labels(
    tmp_path, monkeypatch
):
    """An associator that relabels (some instances dropped to -1 in their own space, as
    OTLA's intra-modality relabelling can): record['clusters'] counts the clusterer's
    labels (clusters and outliers), label_quality scores the labels the epoch trains on
    (visible: vis_in_v; infrared: ir_in_r; cross_v: [vis_in_v, ir_in_v]; cross_r:
    [vis_in_r, ir_in_r]), each against sklearn's ARI with outliers as singletons."""
    from sklearn.metrics import adjusted_rand_score as ari

    from uvireid.associations.otla import OTLADual
    from uvireid.clustering.dbscan import DBSCANClusterer

    tr = _trainer(tmp_path)
    tr.load_data()
    nv, nr = len(tr.vis), len(tr.ir)
    assert nv != nr
    lv = np.arange(nv) % 5
    lv[:3] = -1
    lr = np.arange(nr) % 4
    lr[:2] = -1
    given = {nv: lv, nr: lr}
    monkeypatch.setattr(DBSCANClusterer, "fit_predict", lambda self, x: given[len(x)].copy())
    # the associator's labels: each space's own labels with more instances dropped (a
    # whole cluster among them, so that the counts differ too)
    vis_in_v = np.where(lv == 4, -1, lv)
    vis_in_v[3:9] = -1
    ir_in_r = np.where(lr == 3, -1, lr)
    ir_in_r[2:7] = -1
    vis_in_r = np.where(lv >= 0, lv % 4, -1)
    ir_in_v = np.where(lr >= 0, lr % 5, -1)

    def associate(self, fv, lv_, fr, lr_):
        return CrossLabels(
            np.r_[vis_in_v, ir_in_v],
            np.r_[vis_in_r, ir_in_r],
            np.array([[0, 0], [1, 1], [2, 2], [3, 3]]),
            num_visible=nv,
            num_clusters_v=5,
            num_clusters_r=4,
        )

    monkeypatch.setattr(OTLADual, "associate", associate)
    monkeypatch.setattr(Trainer, "step", lambda self, *a: (("total",), torch.zeros(1)))
    tr.epoch = 1
    record = tr.train_epoch(1)  # the salcr stage (otla_dual)
    c = record["clusters"]
    assert (c["visible"], c["infrared"]) == (len(set(lv) - {-1}), len(set(lr) - {-1})) == (5, 4)
    assert (c["outliers_visible"], c["outliers_infrared"]) == (3, 2)
    gv = np.array([r.pid for r in tr.vis])
    gr = np.array([r.pid for r in tr.ir])
    q = record["label_quality"]
    assert q["visible"]["ari"] == pytest.approx(ari(gv, singletons_loop(vis_in_v)))
    assert q["infrared"]["ari"] == pytest.approx(ari(gr, singletons_loop(ir_in_r)))
    gt = np.r_[gv, gr]
    assert q["cross_v"]["ari"] == pytest.approx(ari(gt, singletons_loop(np.r_[vis_in_v, ir_in_v])))
    assert q["cross_r"]["ari"] == pytest.approx(ari(gt, singletons_loop(np.r_[vis_in_r, ir_in_r])))
    # the two views are not the same numbers (the test tells the fields apart)
    assert q["visible"]["ari"] != pytest.approx(ari(gv, singletons_loop(lv)))
    assert q["cross_v"]["ari"] != pytest.approx(q["cross_r"]["ari"])


def test_quality_is_left_out_when_either_modality_lacks_ground_truth():
    """Pseudo-label quality is computed only when every training image has a known
    identity; unknown ids (-1) in one modality alone leave it out too."""
    from uvireid.losses.contract import EpochLabels

    y = np.array([0, 0, 1, 1])
    none = np.full(4, -1)
    lab = EpochLabels(
        vis_in_v=y,
        vis_in_r=none,
        ir_in_r=y,
        ir_in_v=none,
        init_v=y,
        init_r=y,
        num_v=2,
        num_r=2,
        has_cross=False,
    )

    def fake(gv, gr):
        return SimpleNamespace(
            vis=[ImageRecord("v", int(p), 1, VISIBLE) for p in gv],
            ir=[ImageRecord("r", int(p), 3, INFRARED) for p in gr],
            ok_v=None,  # before the images are read: every one counts
            ok_r=None,
        )

    known = Trainer._quality(fake([5, 5, 6, 6], [5, 5, 6, 6]), lab)
    assert known["visible"]["ari"] == pytest.approx(1.0)
    assert Trainer._quality(fake([5, 5, 6, 6], [5, -1, 6, 6]), lab) is None
    assert Trainer._quality(fake([5, -1, 6, 6], [5, 5, 6, 6]), lab) is None


def test_the_collapse_warning_follows_its_documented_threshold():
    """train.collapse_ratio (0.5): warn when a modality's count falls BELOW half the
    previous epoch's, or to one cluster (the first epoch included); exactly half is
    not a collapse."""
    tr = Trainer.__new__(Trainer)
    tr.counts = {}
    tr.tr = {"collapse_ratio": 0.5}
    many = np.repeat(np.arange(10), 3)

    def check(k_visible):
        warnings: list[str] = []
        y = np.repeat(np.arange(k_visible), 3)
        tr._check_counts(SimpleNamespace(init_v=y, init_r=many), warnings)
        return warnings

    assert [w.split(";")[0] for w in check(1)] == ["visible cluster count collapsed to 1"]
    assert check(10) == []
    assert check(5) == []  # 5 is not below 0.5 * 10
    assert check(10) == []
    assert [w.split(";")[0] for w in check(4)] == [
        "visible cluster count collapsed to 4 from 10 the epoch before"
    ]


def test_images_per_second_counts_the_three_views_of_every_step(tmp_path, monkeypatch):
    """record['images_per_s'] x the training seconds = the images the epoch pushed through
    the model: 2 visible views (original, channel-augmented) and 1 infrared per sampled
    pair, counted here from the sampler's batches."""
    tr = _trainer(tmp_path)
    tr.load_data()
    seen = []

    def fake_step(self, stage, losses, lab, batch, paired):
        seen.append(2 * len(batch.idx_v) + len(batch.idx_r))
        return ("total",), torch.zeros(1)

    monkeypatch.setattr(Trainer, "step", fake_step)
    record = tr.train_epoch(0)
    assert len(seen) == tr.stages[0].iters
    assert record["images_per_s"] * record["seconds"]["train"] == pytest.approx(sum(seen))


def test_one_modality_without_a_cluster_trains_on_the_other_without_cross_terms(
    tmp_path, monkeypatch
):
    """Every infrared image an outlier: the epoch still trains (only both modalities
    empty is an error); the salcr epoch draws unpaired batches, its association makes no
    link, and its loss is the intra-modality term alone (the part terms sit out)."""
    real = Trainer._cluster

    def no_infrared(self, stage, feats, ok):
        labels = real(self, stage, feats, ok)
        if ok is self.ok_r:
            labels[:] = -1
        return labels

    monkeypatch.setattr(Trainer, "_cluster", no_infrared)
    tr = _trainer(tmp_path)
    tr.load_data()
    first = tr.train_epoch(0)
    assert first["clusters"]["infrared"] == 0 and first["clusters"]["visible"] > 0
    assert np.isfinite(first["loss"]["total"])
    second = tr.train_epoch(1)
    assert second["paired"] is False
    assert set(second["loss"]) == {"total", "dual_cluster_contrast"}
    assert second["loss"]["total"] == pytest.approx(second["loss"]["dual_cluster_contrast"])
    assert "no cross-modal link in epoch 1: cross terms skipped" in second["warnings"]


@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), float("nan")])
def test_an_infinite_loss_stops_the_run_as_a_nan_does(tmp_path, monkeypatch, bad):
    """The non-finite-loss stop: +-inf is not finite either (an overflowing logit gives
    inf before any NaN); the error names the epoch, the step and the value."""
    from uvireid.errors import TrainingError

    tr = _trainer(tmp_path)
    tr.load_data()
    values = iter([0.5, bad])

    def fake_step(self, stage, losses, lab, batch, paired):
        v = next(values)
        return ("total", "cluster_contrast"), torch.tensor([v, v])

    monkeypatch.setattr(Trainer, "step", fake_step)
    with pytest.raises(TrainingError, match=f"epoch 0, step 1: the loss is {bad}"):
        tr.train_epoch(0)


def test_a_count_going_from_one_cluster_to_none_is_not_called_unchanged():
    """A modality at 1 cluster that drops to 0 (every image an outlier), or back up from 0
    to 1, changed its count: the warning said 'still 0 cluster(s), as the epoch before'
    (or 'still 1'), which claims the previous epoch had the same count; it names the
    previous count, as the collapse message does ('... from 1 the epoch before')."""
    tr = Trainer.__new__(Trainer)
    tr.counts = {}
    tr.tr = {"collapse_ratio": 0.5}
    many = np.repeat(np.arange(10), 3)
    messages = []
    for y in (np.zeros(6, dtype=np.int64), np.full(6, -1), np.zeros(6, dtype=np.int64)):
        warnings: list[str] = []
        tr._check_counts(SimpleNamespace(init_v=y, init_r=many), warnings)
        (msg,) = warnings  # every one of the three epochs is warned about
        messages.append(msg)
    assert "from 1" in messages[1] and "still 0" not in messages[1]
    assert "from 0" in messages[2] and "still 1" not in messages[2]


def test_a_unified_label_space_sizes_the_memories_as_the_associator_says(tmp_path, monkeypatch):
    """An associator that merges the two spaces (unified=True) may number more labels
    than either clusterer found: num_v / num_r (the memories' sizes) are its
    num_clusters_v / num_clusters_r, not the clusterer's counts."""
    from uvireid.associations.otla import OTLADual
    from uvireid.clustering.dbscan import DBSCANClusterer

    tr = _trainer(tmp_path)
    nv, nr = len(tr.vis), len(tr.ir)
    tr.ok_v, tr.ok_r = np.ones(nv, bool), np.ones(nr, bool)
    monkeypatch.setattr(DBSCANClusterer, "fit_predict", lambda self, x: np.arange(len(x)) % 3)
    unified = np.r_[np.arange(nv) % 3, 3 + np.arange(nr) % 4]  # 3 visible + 4 infrared labels

    def associate(self, fv, lv, fr, lr):
        return CrossLabels(
            unified,
            unified,
            np.zeros((0, 2), np.int64),
            unified=True,
            num_visible=nv,
            num_clusters_v=7,
            num_clusters_r=7,
        )

    monkeypatch.setattr(OTLADual, "associate", associate)
    lab = tr.pseudo_labels(tr.stages[1], torch.randn(nv, 8), torch.randn(nr, 8), {})
    assert (lab.num_v, lab.num_r) == (7, 7)
    assert int(lab.ir_in_v.max()) + 1 == 7  # the largest label has a memory row


def test_the_total_loss_is_the_weighted_sum_and_part_losses_sit_out_unpaired_batches():
    """The stage's loss: sum of weight_i * term_i over its losses (weights from the
    recipe, 1 by default), each term logged unweighted; a loss that needs part features
    is left out of a batch without them (total and terms)."""
    from torch import nn

    from uvireid.engine.trainer import Stage
    from uvireid.losses.contract import StepOutputs

    class Const(nn.Module):
        def __init__(self, value, needs_parts=False):
            super().__init__()
            self.value, self.needs_parts = value, needs_parts

        def forward(self, outputs, targets):
            return outputs.feat_v.sum() * 0.0 + self.value

    specs = [{"type": "a", "weight": 2.0}, {"type": "b"}, {"type": "p", "weight": 0.5}]
    values = [1.5, 4.0, 3.0]
    losses = nn.ModuleList([Const(1.5), Const(4.0), Const(3.0, needs_parts=True)])
    stage = Stage("s", 1, 1, 0.0, {}, {}, None, specs)
    tr = Trainer.__new__(Trainer)
    tr.tr, tr._loss_fns, tr.device = {}, {}, "cpu"
    fn = tr._loss_terms(stage, losses)
    feat = torch.randn(2, 4)
    parts = {("v", "r"): torch.randn(2, 1, 4)}
    total, terms = fn(StepOutputs(feat, feat, feat, parts), None)
    want = sum(float(s.get("weight", 1.0)) * v for s, v in zip(specs, values))
    assert float(total) == pytest.approx(want) == 2 * 1.5 + 4.0 + 0.5 * 3.0
    assert {k: float(v) for k, v in terms.items()} == {"a": 1.5, "b": 4.0, "p": 3.0}
    total, terms = fn(StepOutputs(feat, feat, feat, {}), None)  # unpaired: no parts
    assert float(total) == pytest.approx(2 * 1.5 + 4.0) and set(terms) == {"a", "b"}


@pytest.mark.parametrize("offset", [0, 2**40])
def test_cluster_ids_with_gaps_are_renumbered_keeping_the_partition(tmp_path, offset):
    """Audit JA: a plugin clusterer's ids with gaps ({0, 5}) sized the memories by the
    largest id (empty rows) and the logged count differed from them; sparse ids asked for
    terabytes (audit H). They are renumbered 0..K-1 in the order of the ids."""
    from uvireid.registry import CLUSTERERS

    tr = _trainer(tmp_path)
    base = np.array([5, -1, 0, 5, 12, 0, -1, 12, 5])
    given, n = np.where(base >= 0, base + offset, -1), len(base)

    class Gappy:
        def fit_predict(self, x):
            return given[: len(x)].copy()

    CLUSTERERS.register("gappy_test", Gappy)
    try:
        stage = SimpleNamespace(clusterer={"type": "gappy_test"})
        ok = np.ones(n + 1, bool)
        ok[3] = False  # an unreadable image stays at -1
        labels = tr._cluster(stage, torch.randn(n + 1, 4), ok)
    finally:
        CLUSTERERS.unregister("gappy_test")
    rank = {0: 0, 5: 1, 12: 2}  # by hand: the ids in ascending order
    want = [rank[v] if v >= 0 else -1 for v in base.tolist()]
    assert labels.tolist() == want[:3] + [-1] + want[3:]
