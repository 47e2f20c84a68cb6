"""A model that diverges with a finite loss, or collapses to one feature, is stopped and
named instead of finishing with plausible numbers (a run at lr 1e8 once ended with exit
status 0 and 46 mAP from identical features and infinite BatchNorm statistics)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from uvireid.config import load_recipe
from uvireid.engine import runner
from uvireid.engine.checkpoint import load_checkpoint
from uvireid.engine.run_folder import RunFolder
from uvireid.engine.runner import check_features_vary, run_recipe
from uvireid.engine.trainer import Trainer, nonfinite_state
from uvireid.errors import TrainingError
from uvireid.types import FeatureBank


def test_nonfinite_state_names_exactly_the_tensors_a_loop_finds():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2)
    )
    assert nonfinite_state(model) == []
    with torch.no_grad():
        model[0].weight[1, 2, 0, 1] = float("nan")
        model[1].running_var[3] = float("inf")
        model[2].bias[0] = -float("inf")
    expected = [
        name
        for name, t in (*model.named_parameters(), *model.named_buffers())
        if t.is_floating_point() and not all(math.isfinite(v) for v in t.flatten().tolist())
    ]
    assert sorted(nonfinite_state(model)) == sorted(expected)
    assert set(expected) == {"0.weight", "1.running_var", "2.bias"}


def test_weights_that_diverge_with_a_finite_loss_stop_the_run(recipe_file, monkeypatch):
    real = Trainer.step

    def overflowing_bn(self, stage, *args, **kwargs):
        out = real(self, stage, *args, **kwargs)
        if stage.name == "salcr":
            bn = next(m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))
        return out

    monkeypatch.setattr(Trainer, "step", overflowing_bn)
    cfg = load_recipe(recipe_file)
    with pytest.raises(
        TrainingError, match=r"epoch 1: \d+ weight tensor\(s\) hold NaN or inf"
    ) as info:
        run_recipe(cfg, progress=False)
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    kept = folder.checkpoints / "latest.pt"
    assert f"the last good checkpoint is kept ({kept}: --resume" in str(info.value)
    assert load_checkpoint(folder.checkpoints / "latest.pt")["epoch"] == 1  # the DCL epoch
    assert len(folder.read_metrics()) == 1
    assert not (folder.path / "results.json").exists()


def test_a_divergence_before_any_checkpoint_does_not_claim_one(recipe_file, monkeypatch):
    """Audit FC: diverged in epoch 0, the error said "the last good checkpoint is kept"
    while the run folder held none; each message now says what there is."""
    real = Trainer.step

    def overflowing_bn(self, stage, *args, **kwargs):
        out = real(self, stage, *args, **kwargs)
        bn = next(m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_var.fill_(float("inf"))
        return out

    monkeypatch.setattr(Trainer, "step", overflowing_bn)
    cfg = load_recipe(recipe_file)
    with pytest.raises(TrainingError, match="epoch 0: ") as info:
        run_recipe(cfg, progress=False)
    assert "no checkpoint was written (no epoch finished)" in str(info.value)
    assert "checkpoint is kept" not in str(info.value)
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    assert not (folder.checkpoints / "latest.pt").exists()


def test_identical_test_features_are_refused():
    rng = np.random.default_rng(0)
    same = np.tile(rng.normal(size=(1, 8)), (5, 1))
    with pytest.raises(TrainingError, match="5 test features are all the same"):
        check_features_vary(same)
    with pytest.raises(TrainingError, match="all the same"):
        check_features_vary(same + 1e-9 * rng.normal(size=same.shape))
    with pytest.raises(TrainingError, match="all the same"):
        check_features_vary(np.zeros((3, 4)))
    check_features_vary(same + 1e-3 * rng.normal(size=same.shape))  # distinct: accepted
    check_features_vary(same[:1])  # a single feature cannot be compared


def test_one_modality_of_identical_test_features_is_refused():
    """Audit AU: one side constant (a collapsed stem, one modality's images alike) passed
    the whole-bank check and gave a plausible table; each modality is checked too."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(9, 8))
    mod = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    check_features_vary(feats, modality=mod)  # both sides vary: accepted
    feats[mod == 1] = feats[4]
    check_features_vary(feats)  # the whole bank varies
    with pytest.raises(TrainingError, match="5 infrared test features are all the same"):
        check_features_vary(feats, modality=mod)
    with pytest.raises(TrainingError, match="images are themselves identical or blank"):
        check_features_vary(feats, modality=mod)
    one = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1])  # a single infrared image: nothing to compare
    check_features_vary(rng.normal(size=(9, 8)), modality=one)


def _evaluate_with(tmp_path, monkeypatch, make_feats):
    """An evaluation-only run whose extraction gives ``make_feats(modality)``; returns
    the recipe."""
    import yaml
    from train_fixtures import tiny_recipe

    rec = tiny_recipe(tmp_path, stages=None, clusterer=None)
    path = tmp_path / "eval_only.yaml"
    path.write_text(yaml.safe_dump(rec))
    cfg = load_recipe(path)

    def extract(model, records, **kwargs):
        mod = np.array([r.modality for r in records])
        return FeatureBank(
            feats=make_feats(mod),
            modality=mod,
            cams=np.array([r.cam for r in records]),
            pids=np.array([r.pid for r in records]),
            paths=[r.path for r in records],
        )

    monkeypatch.setattr(runner, "extract_features", extract)
    return cfg


def test_an_evaluation_of_collapsed_features_stops_before_any_result(tmp_path, monkeypatch):
    cfg = _evaluate_with(tmp_path, monkeypatch, lambda mod: np.ones((len(mod), 16), np.float32))
    with pytest.raises(TrainingError, match="the model has collapsed"):
        run_recipe(cfg, progress=False)
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    assert not (folder.path / "results.json").exists()


def test_a_modality_stuck_at_one_cluster_is_reported_as_such(recipe_file):
    from uvireid.registry import DATASETS

    cfg = load_recipe(recipe_file)
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    many = np.repeat(np.arange(10), 3)
    one = np.zeros(30, dtype=np.int64)
    warnings: list[str] = []
    tr._check_counts(SimpleNamespace(init_v=many, init_r=many), warnings)
    assert warnings == []
    tr._check_counts(SimpleNamespace(init_v=one, init_r=many), warnings)
    assert warnings[-1].startswith("visible cluster count collapsed to 1 from 10")
    tr._check_counts(SimpleNamespace(init_v=one, init_r=many), warnings)
    assert warnings[-1].startswith("visible: still 1 cluster(s), as the epoch before")
    assert len(warnings) == 2


def test_an_evaluation_with_one_collapsed_modality_stops(tmp_path, monkeypatch):
    from uvireid.types import INFRARED

    def infrared_constant(mod):
        feats = np.random.default_rng(0).normal(size=(len(mod), 16)).astype(np.float32)
        feats[mod == INFRARED] = 1.0  # every infrared (query) feature the same
        return feats

    cfg = _evaluate_with(tmp_path, monkeypatch, infrared_constant)
    with pytest.raises(TrainingError, match="infrared test features are all the same"):
        run_recipe(cfg, progress=False)
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    assert not (folder.path / "results.json").exists()
