"""Recipe checks that used to wait for the run: a stage's parts built before the first
epoch (and in --dry-run), devices of parts, batch settings that would do nothing, and a
stage's part refined by keys alone."""

from __future__ import annotations

import pytest
import torch

from uvireid.cli import main
from uvireid.config import load_recipe
from uvireid.engine.runner import check_parts
from uvireid.errors import ConfigError
from uvireid.registry import RECIPES


def test_keys_without_a_type_refine_the_top_level_part_for_that_stage():
    cfg = load_recipe("demo", ["stages.1.clusterer.eps=0.5", "stages.1.clusterer.k1=12"])
    top = dict(cfg["clusterer"])
    stage0, stage1 = cfg["stages"][0]["clusterer"], cfg["stages"][1]["clusterer"]
    assert stage0 == top  # untouched: inherited whole
    assert stage1 == {**top, "eps": 0.5, "k1": 12}
    assert top["eps"] != 0.5


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "stages.1.clusterer.eps=-1",
            "stage 'salcr': clusterer (dbscan): dbscan: eps must be a finite number > 0",
        ),
        (
            "stages.1.associator={type: otla_dual, lambda_ot: -5}",
            "stage 'salcr': associator (otla_dual): otla_dual: lambda_ot must be a finite number > 0",
        ),
        ("stages.1.associator.max_iter=0", "max_iter must be an integer >= 1"),
        ("stages.1.associator.k_tr=0", "otla_dual"),
    ],
)
def test_a_later_stages_bad_part_fails_before_the_run_and_in_dry_run(override, message, capsys):
    cfg = load_recipe("demo", [override])  # the keys are valid: only building tells
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_parts(cfg)
    assert main(["run", "demo", override, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_the_shipped_recipes_pass_the_part_check():
    for name in RECIPES.names():  # every shipped recipe
        check_parts(load_recipe(name))


def test_a_parts_own_device_is_checked_with_the_recipe():
    with pytest.raises(ConfigError, match=r"clusterer.device: device 'coda:1' is not a device"):
        load_recipe("demo", ["clusterer.device=coda:1"])
    with pytest.raises(ConfigError, match=r"stages.1.associator.device: device 'gpu'"):
        load_recipe("demo", ["stages.1.associator.device=gpu"])


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_where_torch_cannot_use_it_is_an_error():
    with pytest.raises(ConfigError, match="device 'mps' asked for Apple's MPS"):
        load_recipe("demo", ["device=mps"])


def test_batch_settings_that_a_staged_recipe_ignores_are_refused():
    with pytest.raises(ConfigError) as err:
        load_recipe("salcr", ["train.batch_ids=4"])
    text = str(err.value)
    assert "train.batch_ids=4 does nothing in a recipe with stages" in text
    assert "now dcl: 12, salcr: 8" in text
    with pytest.raises(ConfigError, match="stages.N.sampler.images"):
        load_recipe("salcr", ["train.images_per_id=2"])
    # the default value (as every resolved config.yaml states it) is no change
    assert load_recipe("salcr", ["train.batch_ids=8"])["stages"][1]["sampler"]["ids"] == 8
    # without stages the knobs make the one stage's batch
    from uvireid.engine.trainer import stages_of

    flat = load_recipe(
        "demo", ["stages=null", "losses=[{type: cluster_contrast}]", "train.batch_ids=3"]
    )
    assert stages_of(flat)[0].sampler["ids"] == 3


@pytest.mark.parametrize(
    "override, key, rule",
    [
        ("train.iters_per_epoch=0", "train.iters_per_epoch", ">= 1"),
        ("train.height=-32", "train.height", "an image height >= 8"),
        ("train.lr=-1e-4", "train.lr", ">= 0"),
        ("train.erasing_p=1.5", "train.erasing_p", "a probability in [0, 1]"),
        ("evaluation.trials=0", "evaluation.trials", ">= 1"),
        ("evaluation.protocol=sysu-al", "evaluation.protocol", "auto, none (train without"),
        ("evaluation.shot=mult", "evaluation.shot", "single or multi"),
        ("evaluation.feature_head=banana", "evaluation.feature_head", "bn_feat"),
        ("stages.1.sampler.ids=0", "stages.1.sampler.ids", "an integer >= 1"),
        ("stages.0.sampler.visible_ids=0", "stages.0.sampler.visible_ids", "an integer >= 1"),
        ("stages.0.iters_per_epoch=0", "stages.0.iters_per_epoch", ">= 1"),
        ("train.hue=0.7", "train.hue", "in [0, 0.5]"),
    ],
)
def test_settings_out_of_range_are_refused_with_the_recipe(override, key, rule):
    with pytest.raises(ConfigError) as err:
        load_recipe("demo", [override])
    assert f"'{key}' must be {rule}" in str(err.value)
    assert str(err.value).startswith("command-line override")


def test_camera_aware_is_refused_on_a_paired_sampler():
    with pytest.raises(ConfigError, match="sampler 'paired' has no keyword 'camera_aware'"):
        load_recipe("demo", ["stages.1.sampler.camera_aware=true"])
    assert load_recipe("demo", ["stages.0.sampler.camera_aware=true"])["stages"][0]["sampler"][
        "camera_aware"
    ]


def test_the_protocol_rule_lists_every_protocol():
    from uvireid.config import _RANGES
    from uvireid.evaluation.protocols import PROTOCOLS

    check, words = _RANGES["EvalSettings.protocol"]
    assert all(check(name) and name in words for name in PROTOCOLS)
    assert check("auto") and not check("sysu")


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"type": "cmfp", "k": 0}, "cmfp: k must be an integer >= 1, got 0"),
        ({"type": "cmfp", "k": "ten"}, "cmfp: k must be an integer >= 1, got 'ten'"),
        ({"type": "cmfp", "mode": "bogus"}, "cmfp: mode must be one of"),
        ({"type": "cmfp", "backend": "fais"}, "cmfp: backend must be one of"),
        ({"type": "kreciprocal", "k2": 0}, "kreciprocal: k2 must be an integer >= 1"),
        ({"type": "kreciprocal", "lambda_value": 2}, "lambda_value must be a finite number in"),
        ({"type": "cmrr", "eta": -1}, "cmrr: eta must be a finite number >= 0.0"),
        ({"type": "aim", "k1": True}, "aim: k1 must be an integer >= 1, got True"),
    ],
)
def test_rerankers_refuse_bad_settings_when_built(spec, message):
    """Before, a re-ranker took any value and failed at its first use: after training."""
    from uvireid.registry import RERANKERS

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        RERANKERS.build(spec)
    override = "reranker={" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"
    with pytest.raises(ConfigError, match="reranker"):
        check_parts(load_recipe("demo", [override]))


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"type": "cluster_contrast", "temperature": 0}, "temperature must be a finite number > 0"),
        ({"type": "dual_cluster_contrast", "momentum": 2}, "momentum must be a finite number in"),
        ({"type": "part_contrast", "num_parts": 0}, "num_parts must be an integer >= 1"),
        ({"type": "instance_neighbour", "k": 0}, "k must be an integer >= 1"),
        ({"type": "alternate_cross_contrast", "cross_weight": -1}, "cross_weight must be"),
        ({"type": "modality_agnostic", "alpha": -0.5}, "alpha must be a finite number >= 0"),
    ],
)
def test_losses_refuse_settings_out_of_range_when_built(spec, message):
    """They used to be accepted and give a NaN loss (temperature 0, k 0) or a memory that
    grows (momentum 2) at the first step."""
    from uvireid.registry import LOSSES

    with pytest.raises(ConfigError, match=message):
        LOSSES.build(spec)


def test_a_negative_loss_weight_is_refused():
    with pytest.raises(
        ConfigError, match=r"'stages.0.losses.0.weight' must be a finite number >= 0"
    ):
        load_recipe("demo", ["stages.0.losses.0.weight=-1"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        # OTLA with lambda_ot = inf assigned every visible instance to infrared cluster 0
        (["associator.lambda_ot=.inf"], "otla_dual: lambda_ot must be a finite number > 0"),
        (["associator.tol=.inf"], "otla_dual: tol must be a finite number > 0, got inf"),
        (["clusterer.eps=.inf"], "dbscan: eps must be a finite number > 0, got inf"),
        # an infinite weight or temperature gave an inf loss with NaN gradients, or none
        (["stages.0.losses.0.weight=.inf"], "weight' must be a finite number >= 0, got inf"),
        (
            ["stages.0.losses.0.temperature=.inf"],
            "temperature must be a finite number > 0, got inf",
        ),
        (
            ["stages.1.losses=[{type: modality_agnostic, alpha: .inf}]"],
            "modality_agnostic: alpha must be a finite number >= 0",
        ),
    ],
)
def test_infinite_settings_are_refused(overrides, message):
    """Audit H (session 16): the range checks took infinity, which YAML writes as .inf."""
    with pytest.raises(ConfigError, match=message):
        check_parts(load_recipe("demo", overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["backbone.arch=resnet19"], "backbone.arch 'resnet19' is not supported"),
        (["backbone.pretrained=/nonexist.pth"], "checkpoint /nonexist.pth does not exist"),
        (["evaluation.protocol=regdb-v2i"], "does not fit dataset 'synthetic'"),
        (["stages=null"], "names a clusterer/associator but no losses or stages"),
        (["backbone=null"], "needs a 'data' and a 'backbone' section"),
        # a setting of the wrong type is named, not a TypeError from a comparison
        (["clusterer.eps=abc"], "dbscan: eps must be a finite number > 0, got 'abc'"),
        (["clusterer.min_samples=abc"], "dbscan: min_samples must be an integer >= 1"),
        (["clusterer.k1=2.5"], "dbscan: k1 must be an integer >= 1, got 2.5"),
        (["clusterer={type: hdbscan, min_cluster_size: abc}"], "min_cluster_size must be an"),
        (["clusterer={type: hdbscan, cluster_selection_epsilon: x}"], "cluster_selection_eps"),
        (["associator.lambda_ot=abc"], "otla_dual: lambda_ot must be a finite number > 0"),
        (["associator.tol=abc"], "otla_dual: tol must be a finite number > 0, got 'abc'"),
        (["associator.k_tr=abc"], "otla_dual: k_tr must be a positive integer"),
        # the backbone's keywords (pretrained=5 used to build a random-init model silently)
        (["backbone.pretrained=5"], "backbone.pretrained must be true (torchvision ImageNet"),
        (["backbone.gem_p=0"], "backbone.gem_p must be a finite number > 0, got 0"),
        (["backbone.last_stride=3"], "backbone.last_stride must be 1 or 2, got 3"),
        (["backbone.share_from=layer9"], "backbone.share_from 'layer9' is not a stage"),
        (["associator={type: pgm, k_tr: abc}"], "pgm: k_tr must be a positive integer"),
        (["associator={type: mbccm, k_tr: 0}"], "mbccm: k_tr must be a positive integer"),
        (
            ["stages.1.losses=[{type: modality_agnostic, temperature: abc}]"],
            "modality_agnostic: temperature must be a finite number > 0, got 'abc'",
        ),
        # the dataset's keywords (VIDataset.check_args)
        (
            ["data.type=sysu", "data.root=/no/such/folder"],
            "SYSU-MM01 root /no/such/folder does not exist",
        ),
        (
            ["data.type=regdb", "data.root=/no/such/folder", "evaluation.protocol=regdb-v2i"],
            "RegDB root /no/such/folder does not",
        ),
        (["data.type=sysu", "data.root=123"], "SYSU-MM01 root must be a folder path, got int 123"),
        (["data.root=[a]"], "root must be a folder path, got list ['a']"),
        (["data.ids=abc"], "ids must be a whole number in 3..9999 (pids are %04d), got 'abc'"),
        (["data.ids=2"], "ids must be a whole number in 3..9999"),
        (["data.nir=2"], "nir must be a number in 0..1, got 2"),
        (["data.seed=-1"], "seed must be an integer in 0..2**32-1"),
    ],
)
def test_dry_run_refuses_what_the_run_refuses_before_its_first_epoch(
    overrides, message, capsys, tmp_path, monkeypatch
):
    assert main(["run", "demo", *overrides, "--dry-run"]) == 2
    assert message in capsys.readouterr().err
    # the run itself: the same error, no run folder left behind and nothing generated
    monkeypatch.setenv("UVIREID_CACHE", str(tmp_path / "cache"))
    assert main(["run", "demo", *overrides, f"output_dir={tmp_path / 'runs'}"]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_shipped_recipes_pass_the_preflight(tmp_path):
    from uvireid.engine.runner import preflight

    preflight(load_recipe("demo"))  # the synthetic dataset: its keywords, nothing generated
    for name in (n for n in RECIPES.names() if n != "demo"):
        preflight(load_recipe(name, [f"data.root={tmp_path}"]))  # the root must exist


def test_train_lr_or_iterations_that_stages_replace_are_refused_or_warned(caplog):
    """Audit J (session 16): the README's rescaling rule on train.* alone was half applied:
    the demo's stages set their own iterations, PGM's second stage its own rate."""
    import logging

    with pytest.raises(ConfigError, match=r"train.iters_per_epoch=40 reaches no stage"):
        load_recipe("demo", ["train.iters_per_epoch=40"])
    with caplog.at_level(logging.WARNING):
        cfg = load_recipe("pgm", ["train.lr=7e-4"])
    assert "stages.1.lr=0.00035 (pgm) keep theirs" in caplog.text
    assert cfg["train"]["lr"] == 7e-4
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the built-in recipes as shipped: quiet
        for name in (
            "demo",
            "pgm",
            "salcr",
            "dcl",
            "mbccm",
            "salcr_regdb",
            "salcr_1gpu_bf16",
            "pgm_regdb",
            "mbccm_regdb",
        ):
            load_recipe(name)
        load_recipe("demo", ["stages.0.iters_per_epoch=40", "stages.1.iters_per_epoch=40"])
    assert "reaches" not in caplog.text


@pytest.mark.parametrize("protocol", ["auto", "regdb-v2i"])
def test_regdb_multi_shot_is_refused_before_training(tmp_path, capsys, protocol):
    """Audit AX: evaluation.shot=multi on RegDB passed --dry-run and the training, then
    failed at the first evaluation."""
    from uvireid.data.fixtures import make_regdb_tree

    root = make_regdb_tree(tmp_path / "RegDB", ids=8, images_per=2)
    args = ["run", "salcr_regdb", f"data.root={root}", f"evaluation.protocol={protocol}"]
    args += [f"output_dir={tmp_path / 'runs'}", "--dry-run"]
    assert main([*args, "evaluation.shot=multi"]) == 2
    assert "RegDB has no gallery sampling" in capsys.readouterr().err
    assert main(args) == 0
