"""uvireid.engine.runner without training: ``evaluate`` with a given bank (which
provenance its features file keeps: the caller's, the dataset's, the run manifest's; the
recorded sizes), ``check_features_vary``'s threshold, and what ``train_recipe`` /
``_train_in`` write and in which order, with a stand-in Trainer (config.yaml before the
trainer is built, results.json {} for a run that never evaluates, the stage batch record,
the resume record's epoch count, the stop message's last epoch, the folder named on a
failure, a new folder for --resume without a run, a split overlap refused before any
folder exists)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import yaml
from train_fixtures import tiny_recipe

from uvireid.config import load_recipe
from uvireid.engine import runner
from uvireid.engine.run_folder import RunFolder
from uvireid.engine.runner import check_features_vary, evaluate
from uvireid.errors import TrainingError
from uvireid.features import load_features
from uvireid.registry import DATASETS
from uvireid.types import FeatureBank


def _recipe(tmp_path) -> dict:
    """The tiny recipe with one stage (3 ids x 2 images a modality)."""
    stage = {
        "name": "one",
        "epochs": 2,
        "sampler": {"type": "identity", "ids": 3, "images": 2},
        "associator": None,
        "losses": [{"type": "cluster_contrast"}],
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path, stages=[stage])))
    return load_recipe(tmp_path / "tiny.yaml")


def _bank(recs, seed=0):
    return FeatureBank(
        feats=np.random.default_rng(seed).normal(size=(len(recs), 8)).astype(np.float32),
        modality=np.array([r.modality for r in recs]),
        cams=np.array([r.cam for r in recs]),
        pids=np.array([r.pid for r in recs]),
        paths=[r.path for r in recs],
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runner_eval")
    cfg = _recipe(tmp)
    dataset = DATASETS.build(cfg["data"])
    return tmp, cfg, dataset


def _folder_with_manifest(tmp, name, check):
    folder = RunFolder.create(tmp / "runs", name)
    folder.write_manifest({"recipe": name, "dataset_check": check})
    return folder


def _evaluate(cfg, dataset, folder, bank, **kw):
    """runner.evaluate of a given bank (a stand-in model: nothing is extracted)."""
    return evaluate(
        torch.nn.Linear(2, 2), dataset, cfg, "cpu", folder, progress=False, bank=bank, **kw
    )


def test_the_callers_provenance_wins_over_the_dataset_and_the_manifest(setup):
    tmp, cfg, dataset = setup
    folder = _folder_with_manifest(tmp, "a", {"ok": False, "problems": ["from the manifest"]})
    given = {
        "epoch": 3,
        "precision": "given-precision",
        "dataset_check": {"ok": True, "problems": []},
        "train_split": 7,
    }
    out = _evaluate(cfg, dataset, folder, _bank(dataset.test), meta=dict(given))
    assert out["features"] == str(folder.path / "features.npz")
    meta = load_features(folder.path / "features.npz").meta
    assert int(meta["epoch"]) == 3
    assert meta["precision"] == "given-precision"
    assert meta["dataset_check"] == {"ok": True, "problems": []}
    assert int(meta["train_split"]) == 7
    # the test size as (height, width): 32 x 16 here, not the other way round
    assert [int(x) for x in meta["test_size"]] == [32, 16]
    assert meta["produced_by"] == f"uvireid run {cfg['name']}"
    assert set(out["seconds"]) == {"extract", "evaluate"}


def test_without_provenance_the_manifests_dataset_check_is_copied(setup):
    tmp, cfg, dataset = setup
    check = {"ok": False, "problems": ["cam2 has 5 ids, the release 56"]}
    folder = _folder_with_manifest(tmp, "b", check)
    _evaluate(cfg, dataset, folder, _bank(dataset.test, 1))
    meta = load_features(folder.path / "features.npz").meta
    assert meta["dataset_check"] == check
    assert meta["precision"] == "float32"  # CPU without amp
    # SYSU-MM01 has no split: its train_split is recorded as None (read as absent)
    assert meta.get("train_split") is None and "train_validation" not in meta


def test_features_within_the_default_tolerance_vary_past_it_are_refused():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 16))
    scale = np.abs(base).max()
    # rows that differ by 1e-4 of the largest magnitude: distinct features (default 1e-5)
    vary = np.repeat(base, 6, axis=0)
    vary[1:, 0] += 1e-4 * scale
    check_features_vary(vary)
    same = np.repeat(base, 6, axis=0)
    same[1:, 0] += 1e-7 * scale
    with pytest.raises(TrainingError, match="the 6 test features are all the same"):
        check_features_vary(same)


def test_one_constant_modality_is_named_by_its_rows():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(7, 4))
    mod = np.array([0, 1, 0, 1, 0, 1, 1])
    feats[mod == 1] = feats[1]  # the four infrared rows alike
    with pytest.raises(TrainingError, match="the 4 infrared test features are all the same"):
        check_features_vary(feats, modality=mod)
    feats[mod == 1] += rng.normal(size=(4, 4))
    check_features_vary(feats, modality=mod)


def test_regdb_trials_are_warned_when_the_data_type_is_not_known(caplog):
    """_check_sampler without a data type (None) reads a RegDB protocol as RegDB's."""
    import logging

    from uvireid.engine.runner import _check_sampler

    with caplog.at_level(logging.WARNING, logger="uvireid.engine.runner"):
        _check_sampler({"protocol": "regdb-v2i", "trials": 10, "sampler": "seeded"}, None)
    assert "a RegDB evaluation is one trial of its split" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uvireid.engine.runner"):
        _check_sampler({"protocol": "regdb-v2i", "trials": 1, "sampler": "seeded"}, None)
    assert "one trial of its split" not in caplog.text


def test_a_named_protocol_on_a_dataset_without_protocols_is_refused_not_skipped():
    """protocol_for: only auto (or none) means 'train without evaluating' on a dataset with
    no test protocol; a named one is refused, saying so."""
    from uvireid.engine.runner import protocol_for
    from uvireid.errors import ConfigError

    class _Data:
        protocols = ()

    cfg = {"evaluation": {"protocol": "auto"}, "data": {"type": "mine"}}
    assert protocol_for(_Data(), cfg) is None
    cfg["evaluation"]["protocol"] = "sysu-all"
    with pytest.raises(ConfigError, match="does not fit dataset 'mine'; it has no test protocol"):
        protocol_for(_Data(), cfg)


class _FakeTrainer:
    """Stands in for engine.trainer.Trainer: records what the folder held when it was
    built; restore() says 2 epochs were done; fit() returns ``result`` or raises it."""

    seen: dict = {}
    result: object = None
    restored_epoch = 2

    def __init__(self, cfg, dataset, device, folder, progress=True):
        _FakeTrainer.seen["config_at_build"] = (folder.path / "config.yaml").exists()
        self.epoch = 0

    def restore(self, ckpt):
        self.epoch = self.restored_epoch

    def fit(self):
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


@pytest.fixture()
def fake_trainer(monkeypatch):
    _FakeTrainer.seen, _FakeTrainer.result = {}, None
    monkeypatch.setattr("uvireid.engine.trainer.Trainer", _FakeTrainer)
    return _FakeTrainer


def test_a_new_run_that_never_evaluates_is_marked_finished_with_empty_results(
    tmp_path, fake_trainer
):
    cfg = _recipe(tmp_path)
    ds = DATASETS.build(cfg["data"])
    folder = RunFolder.create(cfg["output_dir"], cfg["name"])
    runner._train_in(folder, cfg, ds, "cpu", False, {}, False)
    assert fake_trainer.seen["config_at_build"] is True  # a run folder before the build
    assert json.loads((folder.path / "results.json").read_text()) == {}
    manifest = json.loads((folder.path / "manifest.json").read_text())
    # identity sampler, 3 ids x 2 images a modality: 2*6 visible (with CA views) + 6 infrared
    (st,) = manifest["batch"]["stages"]
    assert (st["stage"], st["per_gpu"], st["global"]) == ("one", 2 * 6 + 6, 18)
    assert st["per_batchnorm_specific"] == {"visible": 12, "infrared": 6}
    assert (st["epochs"], st["iters_per_epoch"]) == (2, 2)
    assert "resumes" not in manifest and manifest["world_size"] == 1


def test_a_resume_records_the_epochs_its_checkpoint_holds(tmp_path, fake_trainer):
    cfg = _recipe(tmp_path)
    ds = DATASETS.build(cfg["data"])
    folder = RunFolder.create(cfg["output_dir"], cfg["name"])
    folder.write_config(cfg)
    folder.write_manifest({"recipe": cfg["name"], "started": "first"})
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    (folder.checkpoints / "latest.pt").write_bytes(b"stand-in")
    fake_trainer.result = {"none": {}}
    runner._train_in(folder, cfg, ds, "cpu", True, {"train.lr": (0.1, 0.2)}, False)
    manifest = json.loads((folder.path / "manifest.json").read_text())
    assert manifest["started"] == "first"  # the run's first record is kept
    (entry,) = manifest["resumes"]
    assert (entry["epochs_done"], entry["after_epoch"]) == (2, 1)
    assert entry["changes"] == {"train.lr": [0.1, 0.2]}
    assert entry["batch"]["stages"][0]["per_gpu"] == 18


def test_a_stop_names_the_last_finished_epoch_zero_based(tmp_path, fake_trainer):
    cfg = _recipe(tmp_path)
    ds = DATASETS.build(cfg["data"])
    folder = RunFolder.create(cfg["output_dir"], cfg["name"])
    folder.write_config(cfg)
    folder.write_manifest({"recipe": cfg["name"]})
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    (folder.checkpoints / "latest.pt").write_bytes(b"stand-in")
    fake_trainer.result = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        runner._train_in(folder, cfg, ds, "cpu", True, {}, False)
    log = (folder.path / "log.txt").read_text()
    # restore() left trainer.epoch = 2: epochs 0 and 1 are done
    assert "stopped (Ctrl-C / SIGINT) after epoch 1" in log
    assert not (folder.path / "results.json").exists()


def test_a_failure_names_the_run_folder_and_a_resume_without_a_run_starts_one(
    tmp_path, monkeypatch, caplog
):
    cfg = _recipe(tmp_path)
    seen = {}

    def failing(folder, cfg, dataset, device, resumed, changes, progress):
        seen["resumed"] = resumed
        seen["path"] = folder.path
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runner, "_train_in", failing)
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError) as err:
        runner.train_recipe(cfg, resume=True, progress=False)
    # no run folder of the recipe: a new one, which resumes nothing
    assert seen["resumed"] is False
    assert "starting a new run" in caplog.text
    assert err.value.run_folder == str(seen["path"])
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [seen["path"].name]


def test_a_test_image_listed_twice_is_refused_before_any_run_folder(tmp_path, monkeypatch):
    from uvireid.errors import DatasetError

    cfg = _recipe(tmp_path)
    real_build = DATASETS.build

    def build(spec):
        ds = real_build(spec)
        ds.test = ds.test + ds.test[:1]
        return ds

    monkeypatch.setattr(DATASETS, "build", build)
    monkeypatch.setattr(runner, "_train_in", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(DatasetError, match="listed more than once"):
        runner.train_recipe(cfg, progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
