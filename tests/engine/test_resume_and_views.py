"""Survivors of mutation audit CE without a test: a resume keeps the pending record, the
stages started from best.pt and the previous cluster counts (T15, T16, T14); PGM's
``cluster_flip`` features are not normalised again (T20); the visible and
channel-augmented outputs land in their own ``StepOutputs`` fields (T11); ``cmfp_tr``
normalises the rows it leaves out (A1). T3 is checked in test_trainer.py."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uvireid.config import load_recipe
from uvireid.engine.checkpoint import save_checkpoint
from uvireid.engine.trainer import Trainer


def _trainer(cfg):
    from uvireid.registry import DATASETS

    return Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)


# -- T14 / T15 / T16: what a checkpoint carries across a resume ---------------------------
# the state of a run killed between saving epoch 0 and logging it (its record pending)
COUNTS = {"visible": 7, "infrared": 5}
PENDING = {"epoch": 0, "stage": "dcl", "lr": 0.00035, "loss": {"total": 1.25}}
STARTED = [{"stage": "salcr", "epoch": 0, "mAP": 12.5, "selected_on": "test set"}]


def _resumed(recipe_file, tmp_path) -> Trainer:
    cfg = load_recipe(recipe_file)
    before = _trainer(cfg)
    before.counts = dict(COUNTS)
    before.pending = dict(PENDING)
    before.started_from = [dict(s) for s in STARTED]
    path = save_checkpoint(tmp_path / "ckpt", before.state_dict())
    after = _trainer(cfg)
    assert after.counts == {} and after.pending is None and after.started_from == []
    after.restore(path)
    return after


def test_a_resume_restores_the_pending_record(recipe_file, tmp_path):
    """T15: the epoch saved but not logged is logged (and evaluated) on resume."""
    assert _resumed(recipe_file, tmp_path).pending == PENDING


def test_a_resume_restores_the_stages_started_from_best(recipe_file, tmp_path):
    """T16: results after a resume still say stage 2 started from best.pt."""
    assert _resumed(recipe_file, tmp_path).started_from == STARTED


def test_a_resume_restores_the_cluster_counts_of_the_collapse_check(recipe_file, tmp_path):
    """T14: the collapse check compares with the epoch before the kill (7 visible)."""
    after = _resumed(recipe_file, tmp_path)
    assert after.counts == COUNTS
    lab = types.SimpleNamespace(init_v=np.array([0, 0, 1, 1, -1]), init_r=np.array([0, 1, 2, 3, 4]))
    warnings: list[str] = []
    after._check_counts(lab, warnings)
    assert warnings == [
        "visible cluster count collapsed to 2 from 7 the epoch before; check the "
        "clusterer's eps, the learning rate, or the features"
    ]


# -- T20: PGM's clustering features are the mean of normalised halves, as is ------------
def test_cluster_flip_features_are_the_mean_of_normalised_halves_not_renormalised(
    recipe_file,
):
    from uvireid.data.transforms import normalize

    cfg = load_recipe(recipe_file, ["train.cluster_flip=true"])
    tr = _trainer(cfg)
    tr.load_data()
    # noise images: a flip changes their features (the fixture's images are symmetric)
    g = torch.Generator().manual_seed(0)
    tr.images_v = torch.randint(0, 256, tr.images_v.shape, generator=g, dtype=torch.uint8)
    tr.images_r = torch.randint(0, 256, tr.images_r.shape, generator=g, dtype=torch.uint8)
    fv, fr, _, _ = tr._extract_train(with_parts=False)

    bb = tr.model.backbone
    bb.eval()
    with torch.no_grad():
        for got, images, m in ((fv, tr.images_v, 0), (fr, tr.images_r, 1)):
            x = normalize(images.float() / 255.0)
            mod = torch.full((len(x),), m, dtype=torch.long)
            a = F.normalize(bb(x, mod).bn_feat.float(), dim=1)
            b = F.normalize(bb(x.flip(3), mod).bn_feat.float(), dim=1)
            want = (a + b) / 2
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            norms = torch.linalg.vector_norm(got, dim=1)
            assert (norms < 1 - 1e-3).all(), norms  # norm <= 1: not normalised again


# -- T11: the visible images' outputs and their channel-augmented views' ------------------
def test_visible_and_channel_augmented_outputs_are_in_their_own_fields(recipe_file, monkeypatch):
    from uvireid.data.transforms import Augmenter

    real = Augmenter.__call__

    def views(self, images, kind, device):
        if kind == "visible_ca":  # every CA view the same (black) image
            return real(self, torch.zeros_like(images), "test", device)
        return real(self, images, "test", device)  # the images themselves

    monkeypatch.setattr(Augmenter, "__call__", views)
    seen = []
    real_terms = Trainer._loss_terms

    def spy_terms(self, stage, losses):
        fn = real_terms(self, stage, losses)

        def recorded(outputs, targets):
            seen.append(outputs.detach())
            return fn(outputs, targets)

        return recorded

    monkeypatch.setattr(Trainer, "_loss_terms", spy_terms)
    cfg = load_recipe(recipe_file)
    tr = _trainer(cfg)
    tr.load_data()
    tr.train_epoch(0)
    assert len(seen) == 2
    for out in seen:
        assert out.feat_v.shape == out.feat_a.shape and len(out.feat_v) == 4
        # identical inputs give identical rows; the visible images differ
        assert (out.feat_a - out.feat_a[0]).abs().max() < 1e-4
        assert (out.feat_v - out.feat_v[0]).abs().max() > 1e-2


# -- A1: cmfp_tr's rows left out are L2-normalised -----------------------------------------
@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_cmfp_tr_normalises_the_rows_it_does_not_propagate(mode):
    from uvireid.associations.refine import cmfp_tr

    g = torch.Generator().manual_seed(0)
    fv = 3.0 * torch.randn(10, 8, generator=g, dtype=torch.float64)
    fr = 0.2 * torch.randn(7, 8, generator=g, dtype=torch.float64)
    keep_v, keep_r = np.array([0, 2, 3, 5, 8]), np.array([1, 2, 4, 6])
    out_v, out_r = cmfp_tr(fv, fr, 3, keep_v=keep_v, keep_r=keep_r, mode=mode)
    for out, feats, keep in ((out_v, fv, keep_v), (out_r, fr, keep_r)):
        rest = np.setdiff1d(np.arange(len(feats)), keep)
        x = feats.numpy()[rest]
        want = x / np.sqrt((x * x).sum(1, keepdims=True))
        np.testing.assert_allclose(out[rest].numpy(), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=1), 1.0, atol=1e-9)


def test_a_resume_continues_the_learning_rate_schedule_after_the_checkpoint(recipe_file, tmp_path):
    """train.lr_steps [1, 3], gamma 0.1: checkpointed after epoch 1 (2 epochs done), the
    resumed run trains epoch 2 at lr/10 and epoch 3 at lr/100, as the uninterrupted run
    does; a fresh scheduler would count from epoch 0 again (mutation audit DC, T4: the
    scheduler's restore could be dropped with every test passing)."""
    over = ["stages.1.epochs=5", "train.lr_steps=[1, 3]", "train.lr=0.001", "train.lr_gamma=0.1"]
    cfg = load_recipe(recipe_file, over)
    before = _trainer(cfg)
    with pytest.warns(UserWarning):  # scheduler.step() without optimizer.step()
        for _ in range(2):  # the ends of epochs 0 and 1
            before.scheduler.step()
    before.epoch = 2
    path = save_checkpoint(tmp_path / "ckpt", before.state_dict())
    after = _trainer(cfg)
    after.restore(path)
    want = {2: 1e-4, 3: 1e-5, 4: 1e-5}  # 0.001 * 0.1 ** (steps in [1, 3] passed)
    assert after.optimizer.param_groups[0]["lr"] == pytest.approx(want[2], rel=1e-12)
    for epoch in (3, 4):
        after.scheduler.step()  # the end of epoch - 1
        assert after.optimizer.param_groups[0]["lr"] == pytest.approx(want[epoch], rel=1e-12)


def test_a_resume_restores_the_global_python_numpy_and_torch_streams(recipe_file, tmp_path):
    """A clusterer or a plugin loss may draw from the global generators: a resumed run
    draws what the killed one would have drawn next (mutation audit DC, T3)."""
    import random

    cfg = load_recipe(recipe_file)
    before = _trainer(cfg)
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    path = save_checkpoint(tmp_path / "ckpt", before.state_dict())
    want = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    after = _trainer(cfg)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)  # another process, another state
    after.restore(path)
    got = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    assert got == want
