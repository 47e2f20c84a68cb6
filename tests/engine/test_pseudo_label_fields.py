"""Trainer.pseudo_labels puts each part of the associator's CrossLabels in its field
(mutation audit CE)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_fixtures import tiny_recipe

from uvireid.config import validate
from uvireid.registry import DATASETS
from uvireid.types import CrossLabels


def test_pseudo_labels_split_the_cross_labels_by_modality_and_space(tmp_path, monkeypatch):
    """vis_in_v / ir_in_v are labels_in_v's visible / infrared rows, vis_in_r / ir_in_r
    labels_in_r's; init_* are the clusterer's; the instances outside the readable ones stay
    -1 (the CrossLabels contract, uvireid/types.py). Every label below is distinct, so a
    field filled from the wrong array or rows differs."""
    from uvireid.associations.otla import OTLADual
    from uvireid.clustering.dbscan import DBSCANClusterer
    from uvireid.engine.trainer import Trainer

    cfg = validate(tiny_recipe(tmp_path))
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    nv, nr = len(tr.vis), len(tr.ir)
    tr.ok_v = np.ones(nv, bool)
    tr.ok_r = np.ones(nr, bool)
    lv = np.arange(nv) % 4  # 4 visible clusters
    lr = np.arange(nr) % 3  # 3 infrared clusters
    lv[0] = -1
    calls = iter([lv, lr])
    monkeypatch.setattr(DBSCANClusterer, "fit_predict", lambda self, x: next(calls).copy())
    # labels_in_v: visible rows own (lv), infrared rows a visible label 3 - (j % 4)
    # labels_in_r: visible rows an infrared label (i % 3 != own), infrared rows own (lr)
    want_ir_in_v = 3 - (np.arange(nr) % 4)
    want_vis_in_r = (np.arange(nv) + 1) % 3
    want_vis_in_r[0] = -1

    def associate(self, fv, lv_, fr, lr_):
        return CrossLabels(
            np.r_[lv_, want_ir_in_v],
            np.r_[want_vis_in_r, lr_],
            np.array([[0, 0], [1, 1]], np.int64),
            num_visible=nv,
            num_clusters_v=4,
            num_clusters_r=3,
        )

    monkeypatch.setattr(OTLADual, "associate", associate)
    stage = tr.stages[1]  # the stage with the otla_dual associator
    fv, fr = torch.randn(nv, 8), torch.randn(nr, 8)
    lab = tr.pseudo_labels(stage, fv, fr, {})
    np.testing.assert_array_equal(lab.vis_in_v, lv)
    np.testing.assert_array_equal(lab.ir_in_r, lr)
    np.testing.assert_array_equal(lab.ir_in_v, want_ir_in_v)
    np.testing.assert_array_equal(lab.vis_in_r, want_vis_in_r)
    np.testing.assert_array_equal(lab.init_v, lv)
    np.testing.assert_array_equal(lab.init_r, lr)
    assert (lab.num_v, lab.num_r) == (4, 3)
    assert lab.has_cross is True
    np.testing.assert_array_equal(lab.matches, [[0, 0], [1, 1]])


def test_unreadable_images_are_neither_clustered_nor_labelled(tmp_path, monkeypatch):
    """_cluster gives the clusterer the readable rows only (ok_v / ok_r) and leaves the
    unreadable ones at -1: they are never sampled or put in a memory."""
    from uvireid.clustering.dbscan import DBSCANClusterer
    from uvireid.engine.trainer import Trainer

    cfg = validate(tiny_recipe(tmp_path))
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    nv, nr = len(tr.vis), len(tr.ir)
    tr.ok_v = np.ones(nv, bool)
    tr.ok_r = np.ones(nr, bool)
    tr.ok_v[[1, 4]] = False
    tr.ok_r[[0]] = False
    fv, fr = torch.randn(nv, 8), torch.randn(nr, 8)
    seen = []

    def fit_predict(self, x):
        seen.append(x.clone())
        return np.arange(len(x)) % 2  # every row it gets is in a cluster

    monkeypatch.setattr(DBSCANClusterer, "fit_predict", fit_predict)
    lab = tr.pseudo_labels(tr.stages[0], fv, fr, {})
    torch.testing.assert_close(seen[0], fv[np.flatnonzero(tr.ok_v)])
    torch.testing.assert_close(seen[1], fr[np.flatnonzero(tr.ok_r)])
    want_v = np.full(nv, -1)
    want_v[np.flatnonzero(tr.ok_v)] = np.arange(nv - 2) % 2
    want_r = np.full(nr, -1)
    want_r[np.flatnonzero(tr.ok_r)] = np.arange(nr - 1) % 2
    np.testing.assert_array_equal(lab.vis_in_v, want_v)
    np.testing.assert_array_equal(lab.ir_in_r, want_r)


def test_an_epochs_record_counts_each_modalitys_clusters_and_outliers(tmp_path, monkeypatch):
    """record['clusters']: the distinct clusters and the outliers (-1) of each modality's
    clusterer labels, counted here with numpy from the labels the clusterer returned."""
    from uvireid.clustering.dbscan import DBSCANClusterer
    from uvireid.engine.trainer import Trainer

    cfg = validate(tiny_recipe(tmp_path))
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    tr.load_data()
    nv, nr = len(tr.vis), len(tr.ir)
    rng = np.random.default_rng(0)
    lv = np.arange(nv) % 5
    lv[rng.choice(nv, 7, replace=False)] = -1
    lr = np.arange(nr) % 3
    lr[rng.choice(nr, 2, replace=False)] = -1
    given = {nv: lv, nr: lr} if nv != nr else None
    assert given is not None  # the fixture has different counts per modality
    monkeypatch.setattr(DBSCANClusterer, "fit_predict", lambda self, x: given[len(x)].copy())
    record = tr.train_epoch(0)
    c = record["clusters"]
    assert c["visible"] == len(set(lv.tolist()) - {-1})
    assert c["infrared"] == len(set(lr.tolist()) - {-1})
    assert c["outliers_visible"] == sum(1 for y in lv if y < 0) == 7
    assert c["outliers_infrared"] == sum(1 for y in lr if y < 0) == 2


def test_memories_start_from_the_models_features_not_the_refined_ones(tmp_path, monkeypatch):
    """With refine: (CMFP(tr)) the pseudo-labels come from the propagated features, but the
    losses' reset gets the model's own extracted features (Trainer._refine: 'the memories
    are still initialised from the model's own features'), and each modality's cameras."""
    from uvireid.engine.trainer import Trainer
    from uvireid.losses.cluster_contrast import ClusterContrastLoss as ClusterContrast

    rec = tiny_recipe(tmp_path)
    rec["refine"] = {"type": "cmfp", "k": 3}
    cfg = validate(rec)
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    tr.load_data()
    got = {}
    real_extract, real_labels = Trainer._extract_train, Trainer.pseudo_labels

    def extract(self, with_parts):
        out = real_extract(self, with_parts)
        got["extracted"] = (out[0].clone(), out[1].clone())
        return out

    def labels(self, stage, fv, fr, seconds):
        got["clustered"] = (fv.clone(), fr.clone())
        return real_labels(self, stage, fv, fr, seconds)

    def reset(self, ctx):
        got["ctx"] = ctx
        return real_reset(self, ctx)

    real_reset = ClusterContrast.reset
    monkeypatch.setattr(Trainer, "_extract_train", extract)
    monkeypatch.setattr(Trainer, "pseudo_labels", labels)
    monkeypatch.setattr(ClusterContrast, "reset", reset)
    tr.train_epoch(0)
    ctx = got["ctx"]
    torch.testing.assert_close(ctx.feats_v.cpu(), got["extracted"][0])
    torch.testing.assert_close(ctx.feats_r.cpu(), got["extracted"][1])
    assert not torch.allclose(got["clustered"][0], got["extracted"][0])  # refine did act
    np.testing.assert_array_equal(ctx.cams_v, [r.cam for r in tr.vis])
    np.testing.assert_array_equal(ctx.cams_r, [r.cam for r in tr.ir])


def test_a_step_sends_the_visible_and_ca_views_through_the_visible_stem(tmp_path, monkeypatch):
    """A step's batch is [visible views; channel-augmented views of the same visible
    images; infrared]: modality 0 for the first two blocks (the CA view is a visible image),
    1 for the infrared block; the outputs are split in that order."""
    from uvireid.engine.trainer import Trainer, TrainModel

    cfg = validate(tiny_recipe(tmp_path))
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    tr.load_data()
    seen = []
    real = TrainModel.forward

    def forward(self, x, modality, parts_of=None):
        seen.append((x.shape[0], modality.clone()))
        return real(self, x, modality, parts_of)

    monkeypatch.setattr(TrainModel, "forward", forward)
    sizes = []
    real_step = Trainer.step

    def step(self, stage, losses, lab, batch, paired):
        sizes.append((len(batch.idx_v), len(batch.idx_r)))
        return real_step(self, stage, losses, lab, batch, paired)

    monkeypatch.setattr(Trainer, "step", step)
    tr.train_epoch(0)
    assert len(seen) == len(sizes) == tr.stages[0].iters
    for (n, mod), (sv, sr) in zip(seen, sizes):
        assert n == 2 * sv + sr
        assert mod.tolist() == [0] * (2 * sv) + [1] * sr


def test_unreadable_images_are_not_counted_or_scored_as_the_clusterers_outliers(
    tmp_path, monkeypatch
):
    """Audit JA: outliers_visible / _infrared and the quality's outlier_fraction counted
    the unreadable images (never clustered, counted in unreadable_images) as outliers."""
    from sklearn.metrics import adjusted_rand_score

    from uvireid.clustering.dbscan import DBSCANClusterer
    from uvireid.engine.trainer import Trainer

    cfg = validate(tiny_recipe(tmp_path))
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    tr.load_data()
    nv, nr = len(tr.vis), len(tr.ir)
    tr.ok_v[[1, 4]] = False
    tr.ok_r[[0]] = False
    gv = np.array([r.pid for r in tr.vis])[tr.ok_v]
    lv = np.unique(gv, return_inverse=True)[1]  # the true people, one outlier
    lv[0] = -1
    lr = np.arange(nr - 1) % 3
    given = {nv - 2: lv, nr - 1: lr}
    monkeypatch.setattr(DBSCANClusterer, "fit_predict", lambda self, x: given[len(x)].copy())
    record = tr.train_epoch(0)
    assert record["clusters"]["outliers_visible"] == 1
    assert record["clusters"]["outliers_infrared"] == 0
    assert record["unreadable_images"] == 3
    q = record["label_quality"]["visible"]
    assert q["outlier_fraction"] == pytest.approx(1 / (nv - 2))
    alone = np.where(lv < 0, lv.max() + 1, lv)  # the outlier a singleton (quality.py)
    assert q["ari"] == pytest.approx(adjusted_rand_score(gv, alone))  # the readable only
