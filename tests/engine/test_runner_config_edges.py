"""Preflight, override and recipe-resolution checks that no earlier test pinned (a second
mutation audit, NC, of engine/runner.py, config.py and cli/run_cmd.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uvireid.config import load_recipe
from uvireid.engine.runner import preflight
from uvireid.errors import ConfigError


@pytest.mark.parametrize("protocol", ["llcm-v2i", "auto"])
def test_official_sampler_on_llcm_is_refused_whatever_the_protocols_spelling(tmp_path, protocol):
    """evaluation.sampler=official exists for SYSU-MM01 only; preflight refuses it with an
    explicit LLCM protocol, but with protocol auto (which resolves to llcm-v2i on an LLCM
    dataset) it passed --dry-run and the training, and only the first evaluation failed
    (official_gallery looks for SYSU-MM01's cam{c}/{pid:04d} paths)."""
    (tmp_path / "llcm").mkdir()
    perm = tmp_path / "rand_perm_cam.mat"
    perm.write_bytes(b"")
    cfg = load_recipe(
        "demo",
        [
            "data.type=llcm",
            f"data.root={tmp_path / 'llcm'}",
            "evaluation.sampler=official",
            f"evaluation.perm_file={perm}",
            f"evaluation.protocol={protocol}",
            f"output_dir={tmp_path / 'runs'}",
        ],
    )
    with pytest.raises(ConfigError, match="exists for SYSU-MM01 only"):
        preflight(cfg)


def test_stage_batches_count_each_side_of_an_asymmetric_sampler():
    """The manifest's per-stage batch: visible rows (visible_ids x images), each with its
    colour view, plus the infrared rows (ids x images); global over the world size."""
    from uvireid.engine.runner import _stage_batches

    cfg = load_recipe("demo", ["stages.0.sampler.visible_ids=4"])
    first = _stage_batches(cfg, 3)[0]
    visible, infrared = 4 * 4, 8 * 4
    assert first["per_gpu"] == 2 * visible + infrared
    assert first["per_batchnorm_specific"] == {"visible": 2 * visible, "infrared": infrared}
    assert first["global"] == 3 * (2 * visible + infrared)


def test_an_output_dir_several_folders_deep_passes_the_preflight(tmp_path):
    """output_dir=a/b/c under a writable folder is created by the run: the check walks up
    to the nearest existing parent, however deep; a file on the way is refused."""
    preflight(load_recipe("demo", [f"output_dir={tmp_path / 'a' / 'b' / 'c'}"]))
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        preflight(load_recipe("demo", [f"output_dir={tmp_path / 'f' / 'b' / 'c'}"]))


@pytest.mark.parametrize("trials, warned", [(10, True), (1, False)])
def test_regdb_trials_other_than_one_are_warned_by_the_preflight(tmp_path, caplog, trials, warned):
    from uvireid.data.fixtures import make_regdb_tree

    root = make_regdb_tree(tmp_path / "RegDB", ids=8, images_per=2)
    cfg = load_recipe(
        "salcr_regdb",
        [f"data.root={root}", f"evaluation.trials={trials}", f"output_dir={tmp_path / 'r'}"],
    )
    with caplog.at_level("WARNING", logger="uvireid.engine.runner"):
        preflight(cfg)
    assert ("one trial of its split" in caplog.text) is warned


def test_official_sampler_with_protocol_auto_on_regdb_is_refused(tmp_path):
    """On RegDB, ``auto`` is regdb-v2i: the official sampler used to pass the preflight
    and be ignored (results recorded sampler "none"), while an explicit regdb-v2i was
    refused."""
    from uvireid.data.fixtures import make_regdb_tree

    root = make_regdb_tree(tmp_path / "RegDB", ids=8, images_per=2)
    perm = tmp_path / "rand_perm_cam.mat"
    perm.write_bytes(b"")
    cfg = load_recipe(
        "salcr_regdb",
        [
            f"data.root={root}",
            "evaluation.protocol=auto",
            "evaluation.sampler=official",
            f"evaluation.perm_file={perm}",
            f"output_dir={tmp_path / 'r'}",
        ],
    )
    with pytest.raises(
        ConfigError, match=r"protocol regdb-v2i \(evaluation.protocol auto on regdb\)"
    ):
        preflight(cfg)


def test_resolve_recipe_leaves_the_mapping_it_is_given_unchanged(tmp_path):
    """resolve_recipe(mapping) resolves a copy: a manifest's recorded recipe (the caller's
    dict) keeps its stage copies of the top-level parts and its _base_."""
    import copy

    from uvireid.config import resolve_recipe

    cfg = load_recipe("demo")
    data = {k: v for k, v in cfg.items()}
    data["stages"] = [dict(s) for s in cfg["stages"]]
    data["stages"][0]["clusterer"] = dict(cfg["clusterer"])  # a resolved config's copy
    before = copy.deepcopy(data)
    out = resolve_recipe(data, tmp_path / "config.yaml")
    assert data == before
    assert out["stages"][0]["clusterer"] == cfg["clusterer"]


def _one_stage_recipe(tmp_path) -> dict:
    """A resolved one-stage training recipe (DCL's loss) on a 6-id SYSU-MM01 tree, for
    the evaluation and resume checks (none of them trains)."""
    import yaml

    from uvireid.data.fixtures import make_sysu_tree

    root = make_sysu_tree(tmp_path / "SYSU-MM01", ids=6, images_per=1)
    rec = {
        "device": "cpu",
        "output_dir": str(tmp_path / "runs"),
        "data": {"type": "sysu", "root": str(root)},
        "backbone": {"type": "two_stream_resnet", "arch": "resnet18"},
        "clusterer": {"type": "dbscan", "eps": 0.6, "min_samples": 2, "k1": 5, "k2": 2},
        "train": {"height": 32, "width": 16, "iters_per_epoch": 1, "image_cache": None},
        "evaluation": {"protocol": "sysu-all", "trials": 1, "every": 0},
        "losses": [{"type": "cluster_contrast"}],
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(rec))
    return load_recipe(tmp_path / "tiny.yaml")


def test_evaluate_without_a_run_folder_names_no_features_file(tmp_path):
    """runner.evaluate without a run folder writes its features file into a temporary
    folder removed before it returns: the result names no file (a path that no longer
    exists; with a folder it names the folder's features.npz, which other tests check)."""
    from uvireid.engine.runner import evaluate
    from uvireid.registry import DATASETS
    from uvireid.types import FeatureBank

    cfg = _one_stage_recipe(tmp_path)
    dataset = DATASETS.build(cfg["data"])
    recs = dataset.test
    bank = FeatureBank(  # features of the test set, as the trainer passes them
        feats=np.random.default_rng(0).normal(size=(len(recs), 8)).astype(np.float32),
        modality=np.array([r.modality for r in recs]),
        cams=np.array([r.cam for r in recs]),
        pids=np.array([r.pid for r in recs]),
        paths=[r.path for r in recs],
    )
    out = evaluate(torch.nn.Linear(2, 2), dataset, cfg, "cpu", None, progress=False, bank=bank)
    assert out["features"] is None
    assert "none" in out["results"]


def test_an_evaluation_perm_file_url_is_left_as_written():
    """Only local paths are made absolute: a perm_file given as a URL keeps its form (it
    read as <cwd>/s3:/bucket/... otherwise, so its refusal named a path never given)."""
    url = "s3://bucket/exp/rand_perm_cam.mat"
    assert load_recipe("demo", [f"evaluation.perm_file={url}"])["evaluation"]["perm_file"] == url
    assert load_recipe("demo", ["evaluation.perm_file=rel.mat"])["evaluation"][
        "perm_file"
    ].startswith("/")


def test_an_empty_perm_file_is_refused_with_a_plugin_dataset_too():
    """evaluation.perm_file='' would mean the current folder, whatever the dataset: refused
    as it is with a built-in one (only a plugin's data.root may be its own notation)."""
    from uvireid.registry import DATASETS

    @DATASETS.register("test_nc_plugin_dataset")
    class Plugin:
        def __init__(self, root: str = ""):
            self.root = root

    try:
        overrides = ["data={type: test_nc_plugin_dataset, root: x}", "evaluation.perm_file="]
        with pytest.raises(ConfigError, match="evaluation.perm_file is empty"):
            load_recipe("demo", overrides)
    finally:
        DATASETS.unregister("test_nc_plugin_dataset")
    with pytest.raises(ConfigError, match="evaluation.perm_file is empty"):
        load_recipe("demo", ["evaluation.perm_file="])


def test_a_resume_whose_trained_epochs_lost_their_checkpoint_is_refused(tmp_path, monkeypatch):
    """metrics.jsonl records epoch 0 as trained (epochs count from 0; -1 is the untrained
    evaluation) but checkpoints/latest.pt is missing: --resume would train that epoch
    again into the same folder, so it is refused before any training, naming the count."""
    from uvireid.engine.run_folder import RunFolder
    from uvireid.engine.runner import train_recipe
    from uvireid.errors import RunFolderError

    cfg = _one_stage_recipe(tmp_path)
    folder = RunFolder.create(cfg["output_dir"], cfg["name"])
    folder.write_config(cfg)
    folder.log_metrics({"epoch": -1, "stage": "untrained"})
    folder.log_metrics({"epoch": 0, "stage": "tiny", "loss": 1.0})

    def no_training(*args, **kwargs):
        raise AssertionError("the resume went on to train")

    monkeypatch.setattr("uvireid.engine.runner._train_in", no_training)
    with pytest.raises(RunFolderError, match=r"1 epoch\(s\) were trained .* is missing"):
        train_recipe(cfg, resume=folder.path, progress=False)
    assert not (folder.checkpoints / "latest.pt").exists()


def test_an_evaluation_only_recipe_naming_an_associator_is_refused():
    """An associator without losses or stages does nothing, as a clusterer does."""
    cfg = load_recipe("demo", ["stages=null", "clusterer=null", "associator={type: otla_dual}"])
    assert cfg["associator"] is not None and not cfg["stages"]
    with pytest.raises(ConfigError, match="names a clusterer/associator but no losses"):
        preflight(cfg)


def test_protocol_none_passes_the_preflight_of_a_dataset_with_protocols(tmp_path):
    """evaluation.protocol=none (train only) is no protocol to fit the dataset's list."""
    from uvireid.data.fixtures import make_sysu_tree

    root = make_sysu_tree(tmp_path / "SYSU-MM01", ids=6, images_per=1)
    base = [f"data={{type: sysu, root: '{root}'}}", f"output_dir={tmp_path / 'r'}"]
    preflight(load_recipe("demo", [*base, "evaluation.protocol=none"]))
    with pytest.raises(ConfigError, match="does not fit dataset 'sysu'"):
        preflight(load_recipe("demo", [*base, "evaluation.protocol=regdb-v2i"]))


def test_a_timm_backbones_pooling_is_checked_by_the_preflight():
    """Checked without building the model (a recipe without part losses builds none)."""
    bb = "backbone={type: timm, name: resnet18, pretrained: false, pooling: bogus}"
    cfg = load_recipe("demo", ["stages=null", "clusterer=null", "associator=null", bb])
    with pytest.raises(ConfigError, match="pooling must be one of"):
        preflight(cfg)


@pytest.mark.parametrize(
    "record, data, refused",
    [
        ({"dataset": "regdb", "split": 2}, {"type": "sysu", "validation": True}, False),
        ({"dataset": "regdb", "split": 2}, {"type": "regdb", "split": 1}, True),
        ({"dataset": "regdb", "split": 1}, {"type": "regdb", "split": 1}, False),
        ({"dataset": "sysu", "split": None}, {"type": "sysu", "validation": True}, True),
        ({"dataset": "sysu", "validation": True}, {"type": "sysu", "validation": True}, False),
    ],
)
def test_starting_weights_are_refused_only_when_they_trained_on_the_runs_test_ids(
    tmp_path, monkeypatch, record, data, refused
):
    """A uvireid checkpoint of another dataset never saw this run's ids; one of the same
    dataset is refused for another RegDB split, or for a validation run when it trained
    on the validation ids."""
    from uvireid.engine.runner import _check_start_weights

    weights = tmp_path / "latest.pt"
    weights.write_bytes(b"")
    monkeypatch.setattr(
        "uvireid.models.backbone.uvireid_checkpoint_dataset", lambda path: dict(record)
    )
    cfg = {"backbone": {"pretrained": str(weights)}, "data": data}
    if refused:
        with pytest.raises(ConfigError, match="is the checkpoint of a run that"):
            _check_start_weights(cfg)
    else:
        _check_start_weights(cfg)


def test_the_official_sampler_with_protocol_auto_passes_the_preflight_on_sysu(tmp_path):
    """auto resolves to a SYSU-MM01 protocol there: the official sampler fits."""
    from uvireid.data.fixtures import make_sysu_tree

    root = make_sysu_tree(tmp_path / "SYSU-MM01", ids=6, images_per=1)
    perm = tmp_path / "rand_perm_cam.mat"
    perm.write_bytes(b"")
    overrides = [
        f"data={{type: sysu, root: '{root}'}}",
        "evaluation.protocol=auto",
        "evaluation.sampler=official",
        f"evaluation.perm_file={perm}",
        f"output_dir={tmp_path / 'r'}",
    ]
    preflight(load_recipe("demo", overrides))


def test_dry_run_of_a_run_folder_prints_its_recipe(tmp_path, capsys):
    """`uvireid run RUN --dry-run` checks a run folder's recipe without --resume."""
    from uvireid.cli import main
    from uvireid.config import dump

    run = tmp_path / "demo-1"
    run.mkdir()
    (run / "config.yaml").write_text(dump(load_recipe("demo", [f"output_dir={tmp_path}"])))
    assert main(["run", str(run), "--dry-run"]) == 0
    assert "# resolved recipe 'demo'" in capsys.readouterr().out
    assert main(["run", str(run)]) == 2  # without --dry-run or --resume: refused


def test_resume_of_a_given_run_folder_resumes_that_folder(tmp_path, monkeypatch, capsys):
    """`uvireid run RUN --resume` continues RUN, not the latest run of its recipe (an
    older folder named on the command line is the one to continue)."""
    from types import SimpleNamespace

    from uvireid.cli import main
    from uvireid.config import dump

    run = tmp_path / "demo-older"
    run.mkdir()
    (run / "config.yaml").write_text(dump(load_recipe("demo", [f"output_dir={tmp_path}"])))
    seen = {}

    def fake_run_recipe(cfg, *, resume=False, allow_changes=False, **kwargs):
        seen["resume"] = resume
        return SimpleNamespace(path=run)

    monkeypatch.setattr("uvireid.engine.runner.run_recipe", fake_run_recipe)
    assert main(["run", str(run), "--resume", "--no-report"]) == 0
    assert seen["resume"] == run
    assert main(["run", "demo", f"output_dir={tmp_path}", "--resume", "--no-report"]) == 0
    assert seen["resume"] is True


def test_a_builtin_name_is_not_read_as_a_run_folder_of_that_name(tmp_path, monkeypatch):
    """`uvireid run demo` where ./demo/ is a run folder (output_dir=. makes demo-* ones;
    a folder named demo with a config.yaml) still starts the built-in recipe."""
    from types import SimpleNamespace

    from uvireid.cli import main
    from uvireid.config import dump

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.yaml").write_text(dump(load_recipe("demo")))
    seen = {}

    def fake_run_recipe(cfg, *, resume=False, allow_changes=False, **kwargs):
        seen["resume"] = resume
        return SimpleNamespace(path=tmp_path)

    monkeypatch.setattr("uvireid.engine.runner.run_recipe", fake_run_recipe)
    assert main(["run", "demo", f"output_dir={tmp_path / 'runs'}", "--no-report"]) == 0
    assert seen["resume"] is False


def test_resuming_a_finished_run_of_another_world_size_changes_nothing(tmp_path):
    """A finished run (results.json) trains no more, so its world size is not compared:
    resumed in one process after a two-process run, it is returned as it is."""
    import json

    from uvireid.engine.run_folder import RunFolder
    from uvireid.engine.runner import train_recipe

    cfg = _one_stage_recipe(tmp_path)
    folder = RunFolder.create(cfg["output_dir"], cfg["name"])
    folder.write_config(cfg)
    (folder.path / "manifest.json").write_text(json.dumps({"world_size": 2}))
    folder.write_json("results.json", {})
    assert train_recipe(cfg, resume=folder.path, progress=False).path == folder.path
