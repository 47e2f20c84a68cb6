"""Tests that kill mutants of uvireid/config.py which survived
the existing suite. Each test states the behaviour the docs give; expected values come
from the recipe files and the docs, not from the code under test."""

from __future__ import annotations

import textwrap

import pytest

from uvireid.config import load_recipe
from uvireid.errors import ConfigError


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_an_empty_mapping_for_a_list_replaces_it_and_is_refused(tmp_path):
    """A mapping of indices refines a list's items; an EMPTY mapping is no mapping of
    indices (it would silently keep the base's stages): it replaces the list, and a stage
    list that is a mapping is refused (mutant: _index_mapping without bool(value))."""
    with pytest.raises(ConfigError, match="'stages' must be a list of stage mappings"):
        load_recipe("salcr", ["stages={}"])
    child = _write(tmp_path / "c.yaml", "_base_: salcr.yaml\nstages: {}\n")
    with pytest.raises(ConfigError, match="'stages' must be a list of stage mappings"):
        load_recipe(child)


def test_an_empty_override_value_for_perm_file_is_refused_not_null():
    """`key=` is the empty string (refused for a path: it would be the current folder),
    not YAML's null, which would silently mean the default."""
    with pytest.raises(ConfigError, match="evaluation.perm_file is empty"):
        load_recipe("salcr", ["evaluation.perm_file="])
    with pytest.raises(ConfigError, match="evaluation.perm_file is empty"):
        load_recipe("salcr", ["evaluation.perm_file=''"])


def test_a_value_that_starts_with_a_hash_is_refused_not_read_as_a_comment():
    with pytest.raises(ConfigError, match="start of a comment"):
        load_recipe("salcr", ["evaluation.perm_file=#perm.mat"])


def test_an_item_of_a_defaulted_list_cannot_be_overridden_by_index():
    """salcr.yaml leaves train.jitter_views to its default: the refusal says to set it
    whole (it used to build a section {'0': ...})."""
    with pytest.raises(ConfigError, match=r"train.jitter_views is not set in the recipe"):
        load_recipe("salcr", ["train.jitter_views.0=infrared"])


def test_a_part_merged_then_swapped_keeps_only_the_command_lines_keywords():
    """README: X.type=new replaces part X; the command line's own keywords for X stay.
    `clusterer={device: cpu}` merges into the file's dbscan (eps, min_samples, ... stay
    the file's); a later clusterer.type=kmeans drops the file's keywords and keeps
    device (the command line's) and num_clusters."""
    cfg = load_recipe(
        "salcr",
        ["clusterer={device: cpu}", "clusterer.num_clusters=7", "clusterer.type=kmeans"],
    )
    assert cfg["clusterer"]["type"] == "kmeans"
    assert cfg["clusterer"]["device"] == "cpu"
    assert cfg["clusterer"]["num_clusters"] == 7
    assert "eps" not in cfg["clusterer"]


def test_an_error_in_a_file_key_names_the_file_after_a_mapping_override(tmp_path):
    """A mapping merged by an override leaves the other keys' provenance with the file."""
    p = _write(
        tmp_path / "r.yaml",
        """
        _base_: salcr.yaml
        clusterer: {min_samples: 4, k9: 1}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_recipe(p, ["clusterer={eps: 0.3}"])
    assert str(info.value).startswith(str(p.resolve())), str(info.value)


@pytest.mark.parametrize(
    "override, accepted",
    [
        ("train.momentum=1", False),
        ("train.momentum=0.99", True),
        ("train.warmup_factor=0", False),
        ("train.warmup_factor=1", True),
        ("train.hue=0.5", True),
        ("train.hue=0.51", False),
        ("train.height=7", False),
        ("train.height=8", True),
        ("train.width=7", False),
        ("train.lr=true", False),
        ("train.lr=.inf", False),
        ("train.lr_gamma=.inf", False),
        ("train.lr=1e3", True),
        ("train.pad=0_10", False),
        ("train.pad=10", True),
        ("seed=null", False),
        ("stages.1.losses.2.weight=0", True),
        ("train.compile_losses=true", True),
    ],
)
def test_documented_ranges(override, accepted):
    extra = ["train.optimizer=sgd"] if override.startswith("train.momentum") else []
    if accepted:
        load_recipe("salcr", [*extra, override])
    else:
        with pytest.raises(ConfigError):
            load_recipe("salcr", [*extra, override])


def test_1e3_is_the_number_1000():
    assert load_recipe("salcr", ["train.lr=1e3"])["train"]["lr"] == 1000.0


def test_compile_losses_and_cuda_graphs_do_not_combine():
    with pytest.raises(ConfigError, match="do not combine"):
        load_recipe("salcr", ["train.compile_losses=true", "train.cuda_graphs=true"])


def test_start_from_best_rules():
    # the first stage has no earlier epoch
    with pytest.raises(ConfigError, match="starts at epoch 0"):
        load_recipe("pgm", ["stages.0.start_from=best"])
    # an evaluation at the last epoch before the stage (every == stage 1's epochs) is enough
    load_recipe("pgm", ["evaluation.every=50"])
    with pytest.raises(ConfigError, match="needs an evaluation before epoch 50"):
        load_recipe("pgm", ["evaluation.every=51"])
    with pytest.raises(ConfigError, match="evaluation.keep_best: true"):
        load_recipe("pgm", ["evaluation.protocol=none"])


def test_start_from_best_with_every_left_to_its_default(tmp_path):
    """evaluation.every defaults to 1 (EvalSettings): an evaluation after epoch 1."""
    p = _write(
        tmp_path / "r.yaml",
        """
        _base_: pgm.yaml
        evaluation: {_delete_: true, protocol: sysu-all, keep_best: true}
        """,
    )
    cfg = load_recipe(p)
    assert cfg["evaluation"]["every"] == 1 and cfg["stages"][1]["start_from"] == "best"


def test_two_stages_of_one_name_are_refused():
    with pytest.raises(ConfigError, match="two stages are named 'dcl'"):
        load_recipe("salcr", ["stages.1.name=dcl"])


def test_a_stage_part_with_delete_does_not_refine_the_top_level_one():
    """A stage's part with _delete_: true replaces the top-level part instead of refining
    it (config._validate_stages), as in the leaf override form."""
    cfg = load_recipe(
        "demo",
        ["clusterer.min_samples=7", "stages.1.clusterer={_delete_: true, type: dbscan, eps: 0.3}"],
    )
    assert cfg["stages"][1]["clusterer"]["eps"] == 0.3
    assert cfg["stages"][1]["clusterer"]["min_samples"] == 4  # DBSCAN's default, not 7
    assert cfg["stages"][1]["clusterer"]["k1"] == 30  # DBSCAN's default, not demo's 20
    assert cfg["stages"][0]["clusterer"]["min_samples"] == 7


def test_a_stage_part_without_type_refines_with_its_own_values_winning():
    cfg = load_recipe("demo", ["stages.1.clusterer={eps: 0.3}"])
    assert cfg["stages"][1]["clusterer"]["eps"] == 0.3
    assert cfg["stages"][1]["clusterer"]["k1"] == 20  # demo.yaml's top-level k1


def test_legacy_sampler_keys_dropped_only_at_their_exact_old_value():
    """_OLD_SAMPLER_DEFAULTS: a config.yaml from before samplers were a registry lists
    camera_aware: false for every sampler; another value is the user's and is checked."""
    load_recipe("salcr", ["stages.1.sampler.camera_aware=false"])
    with pytest.raises(ConfigError, match="camera_aware"):
        load_recipe("salcr", ["stages.1.sampler.camera_aware=0"])


def test_a_zero_train_lr_with_a_frozen_stage_is_accepted():
    """train.lr 0 is refused only with a stage lr > 0; stages.1.lr=0 freezes that stage."""
    cfg = load_recipe("pgm", ["train.lr=0", "stages.1.lr=0"])
    assert cfg["train"]["lr"] == 0 and cfg["stages"][1]["lr"] == 0
    with pytest.raises(ConfigError, match="train.lr is 0"):
        load_recipe("pgm", ["train.lr=0"])


def test_a_train_override_equal_to_every_stages_own_value_is_accepted():
    """demo's stages set iters_per_epoch 80; train.iters_per_epoch=80 is not refused as
    reaching no stage (it equals theirs), 40 is."""
    load_recipe("demo", ["train.iters_per_epoch=80"])
    with pytest.raises(ConfigError, match="reaches no stage"):
        load_recipe("demo", ["train.iters_per_epoch=40"])


def test_train_lr_steps_reaching_some_stages_is_a_warning_not_an_error(caplog):
    cfg = load_recipe("pgm", ["stages.0.lr_steps=null", "train.lr_steps=[5]"])
    assert cfg["train"]["lr_steps"] == [5]
    assert "reaches only the stages" in caplog.text
    with pytest.raises(ConfigError, match="reaches no stage"):
        load_recipe("pgm", ["train.lr_steps=[5]"])


def test_paths_are_made_absolute_and_user_expanded(monkeypatch, tmp_path):
    import os

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_recipe("salcr", ["data.root=~/SYSU", "output_dir=~/runs"])
    assert cfg["data"]["root"] == str(tmp_path / "SYSU")
    assert cfg["output_dir"] == str(tmp_path / "runs")
    cfg = load_recipe("salcr", ["data.root=rel/SYSU"])
    assert cfg["data"]["root"] == os.path.join(os.getcwd(), "rel", "SYSU")
    cfg = load_recipe("salcr", ["data.root=s3://bucket/SYSU"])
    assert cfg["data"]["root"] == "s3://bucket/SYSU"


def test_the_index_range_in_a_message_is_the_valid_one():
    with pytest.raises(ConfigError, match=r"use an index 0\.\.1$"):
        load_recipe("salcr", ["stages.2.epochs=3"])


def test_a_name_with_a_slash_is_a_path_even_if_registered(monkeypatch, tmp_path):
    """is_builtin_name: a bare name, not a path (a plugin may register any name)."""
    from uvireid.config import RECIPES, is_builtin_name

    monkeypatch.setitem(RECIPES._entries, "sub/demo", RECIPES._entries["demo"])
    assert is_builtin_name("demo") and not is_builtin_name("sub/demo")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "demo").write_text("_base_: demo.yaml\nname: mine\n")
    assert load_recipe("sub/demo")["name"] == "mine"


def test_a_misspelt_loss_weight_is_suggested():
    """weight is the engine's key, not the loss constructor's: still suggested."""
    with pytest.raises(ConfigError, match=r"did you mean 'stages\.1\.losses\.0\.weight'\?"):
        load_recipe("salcr", ["stages.1.losses.0.wieght=2"])


def test_a_top_level_loss_override_on_a_staged_recipe_names_the_last_stage():
    with pytest.raises(ConfigError, match=r"\(e\.g\. stages\.1\.losses\.0\.weight;"):
        load_recipe("salcr", ["losses.0.weight=2"])


def test_naming_the_type_of_a_type_less_stage_part_keeps_its_keywords(tmp_path):
    """A stage part without a type refines the top-level part; naming that same type on
    the command line changes nothing (X.type=new replaces X only when X had another
    type)."""
    p = _write(tmp_path / "r.yaml", "_base_: demo.yaml\nstages:\n  1: {clusterer: {eps: 0.3}}\n")
    cfg = load_recipe(p, ["stages.1.clusterer.type=dbscan"])
    assert cfg["stages"][1]["clusterer"]["eps"] == 0.3
    assert cfg["stages"][1]["clusterer"]["k1"] == 20  # demo.yaml's top-level clusterer


@pytest.mark.parametrize("value", ["''", "'   '"])
def test_a_blank_output_dir_is_refused(value):
    with pytest.raises(ConfigError, match="output_dir' is empty"):
        load_recipe("demo", [f"output_dir={value}"])


def test_an_empty_perm_file_is_refused_with_a_plugin_dataset_too(monkeypatch):
    """_absolute_paths: an empty data.root is left to a plugin dataset (its own notation),
    an empty evaluation.perm_file never (it is always a local file)."""
    from uvireid.registry import DATASETS

    class PluginData:  # registered from this module: not one of uvireid's datasets
        def __init__(self, root=None):
            self.root = root

    DATASETS.register("config_test_plugin_data", PluginData)
    try:
        cfg = load_recipe(
            "demo", ["data={_delete_: true, type: config_test_plugin_data, root: ''}"]
        )
        assert cfg["data"]["root"] == ""
        with pytest.raises(ConfigError, match="evaluation.perm_file is empty"):
            load_recipe(
                "demo",
                ["data={_delete_: true, type: config_test_plugin_data}", "evaluation.perm_file=''"],
            )
    finally:
        DATASETS._entries.pop("config_test_plugin_data", None)


@pytest.mark.parametrize("name", ["''", "'  '"])
def test_a_blank_stage_name_is_refused(name):
    """A stage's name labels its metrics, log lines and plots: blank is refused."""
    with pytest.raises(ConfigError, match=r"stages\.1\.name is blank"):
        load_recipe("salcr", [f"stages.1.name={name}"])


def test_a_part_given_by_name_is_refined_as_a_mapping():
    """`clusterer=kmeans clusterer.num_clusters=5`: a part given by its name has no keys
    to set; the refusal says to give it as a mapping, which works."""
    with pytest.raises(ConfigError, match=r"clusterer is given by its name only \('kmeans'\)"):
        load_recipe("salcr", ["clusterer=kmeans", "clusterer.num_clusters=5"])
    cfg = load_recipe("salcr", ["clusterer={type: kmeans, num_clusters: 5}"])
    assert cfg["clusterer"]["num_clusters"] == 5


@pytest.mark.parametrize("override", ["data.root.x=1", "backbone.arch.foo=1"])
def test_a_text_setting_that_is_no_part_is_not_a_section(override):
    """Only a part is "given by its name": a text setting (a path, an architecture) refined
    as a section is refused as a text, with no advice to write it as {type: ...}."""
    with pytest.raises(ConfigError) as err:
        load_recipe("salcr", [override])
    msg = str(err.value)
    assert "is a str, not a section" in msg and "given by its name" not in msg, msg


def test_a_loss_given_by_name_in_a_list_then_refined_is_refused():
    """A loss (a list item) given by its name, then refined: the mapping form is named,
    not an AttributeError."""
    with pytest.raises(ConfigError, match=r"stages\.0\.losses\.0 is given by its name only"):
        load_recipe("salcr", ["stages.0.losses.0=cluster_contrast", "stages.0.losses.0.weight=2"])
