"""Recipes: _base_ inheritance, overrides, strict keys, rename map, resolution."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from uvireid.config import dump, load_recipe, merge, parse_override
from uvireid.errors import ConfigError
from uvireid.registry import CLUSTERERS, DATASETS


@pytest.fixture(autouse=True)
def fake_parts():
    @CLUSTERERS.register("fake_dbscan")
    class FakeDBSCAN:
        """A test clusterer."""

        def __init__(self, eps: float = 0.6, min_samples: int = 4, k1: int = 30):
            pass

    @CLUSTERERS.register("fake_hdbscan")
    class FakeHDBSCAN:
        """Another test clusterer."""

        def __init__(self, min_cluster_size: int = 5):
            pass

    @DATASETS.register("fake_data")
    class FakeData:
        """A test dataset."""

        def __init__(self, root: str, split: int = 1):
            pass

    yield
    for name in ("fake_dbscan", "fake_hdbscan"):
        CLUSTERERS.unregister(name)
    DATASETS.unregister("fake_data")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    write(
        tmp_path / "bases/data.yaml",
        """
        data: {type: fake_data, root: /data/x}
        train: {epochs: 5, lr_steps: [1, 2, 3]}
    """,
    )
    write(
        tmp_path / "bases/mid.yaml",
        """
        _base_: data.yaml
        clusterer: {type: fake_dbscan, eps: 0.5}
        train: {iters_per_epoch: 7}
    """,
    )
    write(
        tmp_path / "top.yaml",
        """
        _base_: [bases/mid.yaml]
        clusterer: {min_samples: 3}
        train: {lr_steps: [9]}
    """,
    )
    return tmp_path


def test_base_inheritance_merges_dicts_deeply_and_replaces_lists(tree):
    cfg = load_recipe(tree / "top.yaml")
    assert cfg["data"] == {"type": "fake_data", "root": "/data/x", "split": 1}
    assert cfg["clusterer"] == {"type": "fake_dbscan", "eps": 0.5, "min_samples": 3, "k1": 30}
    assert cfg["train"]["lr_steps"] == [9]
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["iters_per_epoch"] == 7
    assert cfg["name"] == "top"
    # defaults of untouched settings are filled in
    assert cfg["train"]["lr"] == 3.5e-4 and cfg["evaluation"]["trials"] == 10


def test_delete_replaces_a_whole_mapping(tree):
    write(
        tree / "del.yaml",
        """
        _base_: bases/mid.yaml
        clusterer: {_delete_: true, type: fake_dbscan, k1: 20}
    """,
    )
    cfg = load_recipe(tree / "del.yaml")
    assert cfg["clusterer"] == {"type": "fake_dbscan", "eps": 0.6, "min_samples": 4, "k1": 20}


def test_changing_type_drops_the_old_components_keywords(tree):
    write(
        tree / "swap.yaml",
        """
        _base_: bases/mid.yaml
        clusterer: {type: fake_hdbscan}
    """,
    )
    cfg = load_recipe(tree / "swap.yaml")
    assert cfg["clusterer"] == {"type": "fake_hdbscan", "min_cluster_size": 5}


def test_overrides_parse_yaml_values(tree):
    cfg = load_recipe(
        tree / "top.yaml",
        [
            "clusterer.eps=0.3",
            "train.lr_steps=[20,60]",
            "train.amp=true",
            "reranker=null",
            "data.root=/other",
            "seed=7",
        ],
    )
    assert cfg["clusterer"]["eps"] == 0.3
    assert cfg["train"]["lr_steps"] == [20, 60]
    assert cfg["train"]["amp"] is True
    assert cfg["reranker"] is None
    assert cfg["data"]["root"] == "/other" and cfg["seed"] == 7


def test_override_can_switch_a_component(tree):
    cfg = load_recipe(tree / "top.yaml", ["clusterer={type: fake_hdbscan, min_cluster_size: 3}"])
    assert cfg["clusterer"] == {"type": "fake_hdbscan", "min_cluster_size": 3}


def test_misspelt_key_in_a_file_names_the_file_and_the_closest_key(tree):
    bad = write(
        tree / "bad.yaml",
        """
        _base_: bases/mid.yaml
        clusterer: {epss: 0.4}
    """,
    )
    with pytest.raises(ConfigError) as exc:
        load_recipe(bad)
    msg = str(exc.value)
    assert str(bad) in msg
    assert "did you mean 'clusterer.eps'?" in msg


def test_misspelt_key_in_a_base_names_the_base_file(tree):
    write(tree / "bases/data.yaml", "data: {type: fake_data, root: /x}\ntrain: {epoch: 3}\n")
    with pytest.raises(ConfigError) as exc:
        load_recipe(tree / "top.yaml")
    assert "data.yaml" in str(exc.value)
    assert "did you mean 'train.epochs'?" in str(exc.value)


def test_misspelt_override_is_an_error_not_a_new_key(tree):
    with pytest.raises(ConfigError, match=r"command-line override.*did you mean 'train.epochs'"):
        load_recipe(tree / "top.yaml", ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"command-line override.*did you mean 'clusterer.eps'"):
        load_recipe(tree / "top.yaml", ["clusterer.esp=3"])
    with pytest.raises(ConfigError, match=r"unknown section 'trian'; did you mean 'train'"):
        load_recipe(tree / "top.yaml", ["trian.epochs=3"])


def test_unknown_section_in_a_file(tree):
    write(tree / "sec.yaml", "_base_: bases/mid.yaml\nclustering: {eps: 1}\n")
    with pytest.raises(
        ConfigError, match=r"sec.yaml: unknown section 'clustering'; did you mean 'clusterer'"
    ):
        load_recipe(tree / "sec.yaml")


def test_renamed_keys_say_what_they_became(tree):
    with pytest.raises(ConfigError, match="'train.max_epoch' was renamed to 'train.epochs'"):
        load_recipe(tree / "top.yaml", ["train.max_epoch=3"])
    write(tree / "old.yaml", "dataset: {type: fake_data, root: /x}\n")
    with pytest.raises(ConfigError, match="'dataset' was renamed to 'data'"):
        load_recipe(tree / "old.yaml")


def test_unknown_component_name_suggests(tree):
    with pytest.raises(
        ConfigError, match=r"clusterer 'fake_dbscn' is not registered; did you mean 'fake_dbscan'"
    ):
        load_recipe(tree / "top.yaml", ["clusterer.type=fake_dbscn"])


def test_missing_required_keyword(tree):
    write(tree / "noroot.yaml", "data: {type: fake_data}\n")
    with pytest.raises(ConfigError, match=r"needs root \(e.g. data.root=...\)"):
        load_recipe(tree / "noroot.yaml")


def test_wrong_types_are_refused(tree):
    with pytest.raises(ConfigError, match="'train.epochs' must be an integer"):
        load_recipe(tree / "top.yaml", ["train.epochs=ten"])
    with pytest.raises(ConfigError, match="'seed' must be int"):
        load_recipe(tree / "top.yaml", ["seed=abc"])
    with pytest.raises(ConfigError, match="'train.amp' must be true or false"):
        load_recipe(tree / "top.yaml", ["train.amp=3"])


def test_bad_device_is_an_error_at_once(tree):
    with pytest.raises(ConfigError, match="device 'coda:1' is not a device; use auto, cpu, cuda"):
        load_recipe(tree / "top.yaml", ["device=coda:1"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_an_error(tree):
    with pytest.raises(ConfigError, match="torch sees no GPU"):
        load_recipe(tree / "top.yaml", ["device=cuda:0"])


def test_a_missing_gpu_is_fixed_in_the_form_the_setting_was_given(tree, monkeypatch):
    """The fix named `--device cpu` for a recipe key: `uvireid run` has no --device
    option (audit CA). Each form names how that setting is set."""
    import torch

    from uvireid.config import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        load_recipe(tree / "top.yaml", ["device=cuda"])
    assert str(err.value).endswith("use device=cpu or device=auto")
    with pytest.raises(ConfigError, match=r"use --device cpu or --device auto$"):
        check_device("cuda", "--device", "--device")
    with pytest.raises(ConfigError, match=r"use clusterer\.device=cpu or clusterer\.device=auto$"):
        load_recipe("demo", ["clusterer.device=cuda"])


def test_missing_base_and_loops(tree):
    write(tree / "a.yaml", "_base_: nothere.yaml\n")
    with pytest.raises(ConfigError, match="_base_ file nothere.yaml not found"):
        load_recipe(tree / "a.yaml")
    write(tree / "l1.yaml", "_base_: l2.yaml\n")
    write(tree / "l2.yaml", "_base_: l1.yaml\n")
    with pytest.raises(ConfigError, match="_base_ inheritance loops"):
        load_recipe(tree / "l1.yaml")


def test_malformed_override_and_yaml(tree):
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_override("train.epochs")
    write(tree / "broken.yaml", "data: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_recipe(tree / "broken.yaml")
    with pytest.raises(ConfigError, match="recipe file .* does not exist"):
        load_recipe(tree / "missing.yaml")


def test_list_items_are_addressed_by_index(tree):
    with pytest.raises(ConfigError, match="addresses a list of 1 item"):
        load_recipe(tree / "top.yaml", ["train.lr_steps.5=1"])
    cfg = load_recipe(tree / "top.yaml", ["train.lr_steps=[1,2,3]", "train.lr_steps.1=7"])
    assert cfg["train"]["lr_steps"] == [1, 7, 3]


def test_resolved_dump_round_trips_and_shows_every_value(tree):
    cfg = load_recipe(tree / "top.yaml")
    text = dump(cfg)
    again = yaml.safe_load(text)
    assert again == cfg
    assert "min_samples: 3" in text and "k1: 30" in text and "weight_decay: 0.0005" in text


def test_merge_does_not_mutate_inputs():
    base = {"a": {"b": [1, 2]}, "c": 1}
    child = {"a": {"d": 3}}
    out = merge(base, child)
    assert out == {"a": {"b": [1, 2], "d": 3}, "c": 1}
    out["a"]["b"].append(9)
    assert base == {"a": {"b": [1, 2]}, "c": 1}


def test_exponent_floats_without_a_dot_are_numbers_in_files_and_overrides(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-4 as the string '1e-4'; the recipe dialect reads a float
    from uvireid.config import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("train: {lr: 2e-4}\n")
    cfg = load_recipe(path, ["train.weight_decay=1e-5"])
    assert cfg["train"]["lr"] == 2e-4 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["weight_decay"] == 1e-5
    assert load_recipe(path, ["description=1e-4 is a string here"])["description"] == (
        "1e-4 is a string here"
    )


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_seed_numpy_would_refuse_is_a_recipe_error(seed):
    with pytest.raises(ConfigError, match=r"'seed' must be an integer in 0\.\.2\*\*32-1"):
        load_recipe("demo", [f"seed={seed}"])
    assert load_recipe("demo", ["seed=4294967295"])["seed"] == 2**32 - 1


def test_a_key_given_twice_in_a_recipe_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("_base_: [base.yaml]\ntrain: {epochs: 1}\ntrain: {lr: 1.0}\n")
    (tmp_path / "base.yaml").write_text("name: b\n")
    with pytest.raises(
        ConfigError, match=r"(?s)dup\.yaml.*duplicate key 'train' \(first on line 2"
    ):
        load_recipe(path)
    with pytest.raises(ConfigError, match="duplicate key 'epochs'"):
        load_recipe("demo", ["train={epochs: 1, epochs: 2}"])
    anchors = tmp_path / "anchors.yaml"  # a << merge may repeat a key: YAML's own override
    anchors.write_text("_base_: [base.yaml]\ndescription: &d x\nname: *d\n")
    assert load_recipe(anchors)["name"] == "x"


def test_a_dotted_type_override_replaces_the_part_as_the_mapping_form_does():
    cfg = load_recipe("demo", ["reranker.type=kreciprocal"])  # demo's cmfp has k: 10
    assert cfg["reranker"]["type"] == "kreciprocal" and "k" not in cfg["reranker"]
    assert cfg["reranker"] == load_recipe("demo", ["reranker={type: kreciprocal}"])["reranker"]
    kept = load_recipe("demo", ["reranker.k1=10", "reranker.type=kreciprocal"])["reranker"]
    assert kept["k1"] == 10  # the command line's own keywords stay
    same = load_recipe("demo", ["reranker.type=cmfp"])["reranker"]  # no change: nothing dropped
    assert same["k"] == 10


def test_a_top_level_losses_override_on_a_staged_recipe_points_to_the_stages():
    with pytest.raises(ConfigError, match=r"no top-level losses.*stages\.1\.losses\.0\.weight"):
        load_recipe("demo", ["losses.0.weight=2"])
    cfg = load_recipe("demo", ["stages.1.losses.0.weight=2"])
    assert cfg["stages"][1]["losses"][0]["weight"] == 2


@pytest.mark.parametrize("name", ["a/b", "../x", "..", ""])
def test_a_recipe_name_is_one_folder_name(name):
    """The name makes the run folders (<output_dir>/<name>-<time>), where --resume looks
    for them: a name with a '/' put runs where --resume never found them."""
    with pytest.raises(ConfigError, match=r"'name' is .*one folder name without '/'"):
        load_recipe("demo", [f"name={name!r}"])
    assert load_recipe("demo", ["name=demo-lowlr"])["name"] == "demo-lowlr"


def test_top_level_losses_in_a_recipe_with_stages_are_refused():
    """Each stage trains with its own losses: top-level ones beside stages were silently
    never built."""
    with pytest.raises(ConfigError, match=r"top-level losses do nothing in a recipe with stages"):
        load_recipe("demo", ["losses=[{type: modality_agnostic, weight: 5}]"])
    assert load_recipe("demo", ["losses=null"])["stages"]


def test_a_runs_config_yaml_takes_stage_epoch_overrides(tmp_path):
    """A run's resolved config.yaml states train.epochs as its stages' sum: an override of
    a stage's epochs works on the run folder, on its config.yaml given as a file, and on a
    recipe whose _base_ it is (the file form once said train.epochs contradicted them)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump(load_recipe("demo")))
    (tmp_path / "child.yaml").write_text("_base_: [run/config.yaml]\nseed: 5\n")
    for src in (run, run / "config.yaml", tmp_path / "child.yaml"):
        cfg = load_recipe(src, ["stages.1.epochs=3"])
        assert [s["epochs"] for s in cfg["stages"]] == [4, 3]
        assert cfg["train"]["epochs"] == 7
    # a recipe of one's own still may not state a sum its stages contradict
    (tmp_path / "own.yaml").write_text("_base_: [run/config.yaml]\ntrain: {epochs: 9}\n")
    with pytest.raises(ConfigError, match=r"train.epochs=9 but the stages add up to"):
        load_recipe(tmp_path / "own.yaml")


def test_a_base_that_is_a_folder_or_not_text_is_named(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "a.yaml").write_text("_base_: [cfg]\n")
    with pytest.raises(ConfigError, match=r"cfg is a folder, not a recipe file"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"seed: 1\n\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"bin\.yaml is not a text file in UTF-8"):
        load_recipe(tmp_path / "bin.yaml")


def test_a_loss_swapped_by_type_keeps_its_weight_and_list_items_merge():
    """``stages.1.losses.2.type=X`` replaces the part's keywords but not its weight (the
    engine's); a mapping given for a list item (a stage, a loss) merges into it as every
    mapping does, instead of replacing it whole."""
    base = load_recipe("demo")
    assert base["stages"][1]["losses"][2]["weight"] == 0.5
    swapped = load_recipe("demo", ["stages.1.losses.2.type=modality_agnostic"])
    loss = swapped["stages"][1]["losses"][2]
    assert loss["type"] == "modality_agnostic" and loss["weight"] == 0.5
    assert "k" not in loss  # the instance-neighbour loss's own keywords are gone
    merged = load_recipe("demo", ["stages.1={epochs: 3}"])
    assert merged["stages"][1]["epochs"] == 3
    assert merged["stages"][1]["losses"] == base["stages"][1]["losses"]
    w = load_recipe("demo", ["stages.1.losses.0={weight: 3}"])["stages"][1]["losses"][0]
    assert w == {**base["stages"][1]["losses"][0], "weight": 3}
    # a new type in the mapping still replaces the part whole
    new = load_recipe("demo", ["stages.1.losses.0={type: modality_agnostic}"])
    assert new["stages"][1]["losses"][0]["type"] == "modality_agnostic"


def test_a_users_recipe_builds_on_a_builtin_one_by_name(tmp_path):
    """Audit J (session 16): after `pip install` the built-in recipes are in the package,
    nowhere near a user's file, and `_base_: salcr.yaml` was "not found"."""
    from uvireid.config import load_recipe

    recipe = tmp_path / "my_salcr.yaml"
    recipe.write_text("_base_: salcr.yaml\nclusterer: {eps: 0.5}\n")
    cfg = load_recipe(str(recipe))
    assert cfg["clusterer"]["eps"] == 0.5
    assert [s["name"] for s in cfg["stages"]] == [s["name"] for s in load_recipe("salcr")["stages"]]
    # a file of that name beside the user's wins
    (tmp_path / "salcr.yaml").write_text("_base_: dcl.yaml\n")
    assert load_recipe(str(recipe))["stages"] == load_recipe("dcl", ["clusterer.eps=0.5"])["stages"]


# --- audit AO (session 18) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "name='1e-4'",
        "description='5e3'",
        "stages.1.name='2e1'",
        "output_dir='1e3'",
        "data.root='3e2'",
    ],
)
def test_resolved_config_round_trips_strings_that_look_like_numbers(tmp_path, override):
    """A run's config.yaml reads back as the config that wrote it (the YAML 1.1 dumper
    left '1e-4' bare, the loader read it as a float: --resume refused the run)."""
    cfg = load_recipe("demo", [override])
    path = tmp_path / "config.yaml"
    path.write_text(dump(cfg))
    assert load_recipe(str(path)) == cfg
    assert load_recipe(str(path))["train"]["lr"] == cfg["train"]["lr"]  # floats stay floats


@pytest.mark.parametrize(
    "text", ["seed=0042", "seed=010", "train.lr_steps=[020, 060]", "train.epochs=1:30"]
)
def test_leading_zero_and_base60_integers_are_refused(text):
    """YAML 1.1 reads 0042 as octal 34 and 1:30 as 90; neither is read silently."""
    with pytest.raises(ConfigError, match="leading 0"):
        load_recipe("demo", [text])


def test_leading_zero_integer_in_a_recipe_file_is_refused(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("_base_: demo.yaml\nseed: 010\n")
    with pytest.raises(ConfigError, match="leading 0"):
        load_recipe(str(p))
    p.write_text("_base_: demo.yaml\nseed: 0x10\n")  # explicit bases still read
    assert load_recipe(str(p))["seed"] == 16


@pytest.mark.parametrize(
    "override", ["train.lr=.inf", "train.lr=1e400", "stages.1.lr=.inf", "train.weight_decay=.inf"]
)
def test_infinite_rates_are_refused(override):
    with pytest.raises(ConfigError, match=r"must be|finite|>="):
        load_recipe("demo", [override])


@pytest.mark.parametrize("text", ["description=run #3", "data.root=/data/SYSU #2"])
def test_comment_in_unquoted_override_value_is_refused(text):
    with pytest.raises(ConfigError, match="quote the value"):
        parse_override(text)


def test_quoted_hash_in_override_value_is_kept():
    assert parse_override("description='run #3'") == ("description", "run #3")
    assert parse_override("description=run#3") == ("description", "run#3")


def test_colon_space_in_string_override_hints_at_quoting():
    with pytest.raises(ConfigError, match="quote the value"):
        load_recipe("demo", ["description=a: b"])


@pytest.mark.parametrize(
    "override",
    ["train.foo.bar=1", "evaluation.x.y=1", "stages.1.sampler.foo.bar=1", "data.foo.bar=1"],
)
def test_new_nested_override_key_is_blamed_on_the_override(override):
    with pytest.raises(ConfigError) as exc:
        load_recipe("demo", [override])
    assert str(exc.value).startswith("command-line override"), str(exc.value)


@pytest.mark.parametrize("override", ["clusterer=dbscn", "reranker=kreciprokal"])
def test_string_shorthand_part_typo_is_blamed_on_the_override(override):
    with pytest.raises(ConfigError) as exc:
        load_recipe("demo", [override])
    assert str(exc.value).startswith("command-line override"), str(exc.value)
    assert "demo.yaml" not in str(exc.value)


def test_stage_override_on_a_recipe_without_stages_says_so(tmp_path):
    p = tmp_path / "flat.yaml"
    p.write_text(
        "_base_: datasets/synthetic.yaml\n"
        "backbone: {type: two_stream_resnet, arch: resnet18, pretrained: false}\n"
        "clusterer: {type: dbscan}\n"
        "losses: [{type: cluster_contrast}]\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_recipe(str(p), ["stages.0.epochs=2"])
    msg = str(exc.value)
    assert "command-line override" in msg and "no stages" in msg, msg


@pytest.mark.parametrize("flag", ["'false'", "'no'", "1"])
def test_delete_key_must_be_a_boolean(tmp_path, flag):
    p = tmp_path / "r.yaml"
    p.write_text(f"_base_: demo.yaml\nclusterer: {{_delete_: {flag}, type: dbscan, eps: 0.3}}\n")
    with pytest.raises(ConfigError, match="_delete_ must be true or false"):
        load_recipe(str(p))
    p.write_text("_base_: demo.yaml\nclusterer: {_delete_: false, eps: 0.3}\n")
    cfg = load_recipe(str(p))
    assert cfg["clusterer"]["k1"] == load_recipe("demo")["clusterer"]["k1"]


def test_relative_data_paths_are_resolved_against_the_working_folder(tmp_path, monkeypatch):
    """Audit AQ: config.yaml kept ``root: ../synth``; `extract RUN` from another folder
    then read (or, synthetic, generated) another dataset."""
    import os

    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    cfg = load_recipe("demo", ["data.root=../synth", "evaluation.perm_file=../perm.mat"])
    assert cfg["data"]["root"] == str(tmp_path / "synth")
    assert cfg["evaluation"]["perm_file"] == str(tmp_path / "perm.mat")
    path = tmp_path / "config.yaml"
    path.write_text(dump(cfg))
    monkeypatch.chdir(tmp_path)  # elsewhere: the run's config still names what it read
    assert load_recipe(str(path))["data"]["root"] == str(tmp_path / "synth")
    home = load_recipe("demo", ["data.root=~/x"])["data"]["root"]
    assert home == os.path.join(os.path.expanduser("~"), "x")


def test_a_part_whose_constructor_takes_var_keywords_accepts_any_key():
    """Audit AY: a plugin part with ``**kwargs`` crashed recipe validation with a raw
    TypeError (the list of its keywords is None: any key is valid)."""
    import numpy as np

    from uvireid.registry import CLUSTERERS

    @CLUSTERERS.register("test_kwargs_clusterer")
    class KW:
        def __init__(self, **kw):
            self.kw = kw

        def fit_predict(self, features):
            return np.zeros(len(features), dtype=np.int64)

    try:
        cfg = load_recipe("demo", ["clusterer={type: test_kwargs_clusterer, eps: 0.3}"])
        assert cfg["clusterer"] == {"type": "test_kwargs_clusterer", "eps": 0.3}
        assert CLUSTERERS.build(cfg["clusterer"]).kw == {"eps": 0.3}
    finally:
        CLUSTERERS.unregister("test_kwargs_clusterer")


def test_index_mapping_override_refines_a_stage():
    """Audit BE: the README's index-mapping form works on the command line as in a file."""
    base = load_recipe("demo")
    cfg = load_recipe("demo", ["stages={1: {epochs: 3}}"])
    assert cfg["stages"][1]["epochs"] == 3
    assert cfg["stages"][0] == base["stages"][0]
    assert {k: v for k, v in cfg["stages"][1].items() if k != "epochs"} == {
        k: v for k, v in base["stages"][1].items() if k != "epochs"
    }
    with pytest.raises(ConfigError, match="refines item 5 of a list of 2"):
        load_recipe("demo", ["stages={5: {epochs: 3}}"])


def test_an_infinite_rate_is_named_as_not_finite():
    with pytest.raises(ConfigError, match="must be a finite number >= 0, got inf"):
        load_recipe("demo", ["train.lr=1e400"])


def test_a_plugin_datasets_root_is_left_as_written():
    """Audit BD: data.root of a dataset that is not uvireid's may be a URL or its own
    notation; only the built-in datasets' local folders are made absolute."""
    from uvireid.registry import DATASETS

    @DATASETS.register("test_remote_dataset")
    class Remote:
        def __init__(self, root: str = ""):
            self.root = root

    try:
        for root in ("s3://bucket/SYSU", "$DATA/SYSU", "relative/SYSU"):
            cfg = load_recipe("demo", [f"data={{type: test_remote_dataset, root: '{root}'}}"])
            assert cfg["data"]["root"] == root
    finally:
        DATASETS.unregister("test_remote_dataset")
    assert load_recipe("demo", ["data.root=rel"])["data"]["root"].startswith("/")


def test_a_top_level_part_override_on_a_runs_recipe_reaches_its_stages(tmp_path):
    """Audit BF: a resolved config.yaml holds each stage's copy of the inherited parts;
    `uvireid run RUN clusterer.eps=0.3` changed only the top-level part, which no stage
    used. A stage part of its own (the DCL stage's associator: null) stays its own."""
    path = tmp_path / "config.yaml"
    path.write_text(dump(load_recipe("demo")))
    assert load_recipe(path) == load_recipe("demo")  # the round trip is unchanged
    cfg = load_recipe(path, ["clusterer.eps=0.3", "associator.lambda_ot=3"])
    assert [s["clusterer"]["eps"] for s in cfg["stages"]] == [0.3, 0.3]
    assert cfg["stages"][0]["associator"] is None
    assert cfg["stages"][1]["associator"]["lambda_ot"] == 3
    same = load_recipe("demo", ["clusterer.eps=0.3", "associator.lambda_ot=3"])
    assert cfg["stages"] == same["stages"]


def test_a_recipe_based_on_a_runs_config_changes_its_stages_part(tmp_path):
    """Audit BK: `_base_: [RUN/config.yaml]` with `clusterer: {eps: 0.3}` kept the stages'
    copies (0.45): the per-stage copies of a file's top-level part are dropped as the file
    is read."""
    (tmp_path / "config.yaml").write_text(dump(load_recipe("demo")))
    child = tmp_path / "child.yaml"
    child.write_text("_base_: [config.yaml]\nname: child\nclusterer: {eps: 0.3}\n")
    assert [s["clusterer"]["eps"] for s in load_recipe(child)["stages"]] == [0.3, 0.3]


def test_a_top_level_part_no_stage_uses_is_warned(tmp_path, caplog):
    """Audit BK: an edited copy of a run's config.yaml (the top-level eps changed, the
    stages' copies not) trained with the stages' eps without a word."""
    import logging

    text = dump(load_recipe("demo"))
    head, sep, tail = text.partition("clusterer: {type: dbscan, eps: 0.45")
    assert sep
    edited = tmp_path / "config.yaml"
    edited.write_text(head + "clusterer: {type: dbscan, eps: 0.3" + tail)
    with caplog.at_level(logging.WARNING):
        cfg = load_recipe(edited)
    assert [s["clusterer"]["eps"] for s in cfg["stages"]] == [0.45, 0.45]
    assert "the top-level clusterer (dbscan) is used by no stage" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_recipe("demo")
    assert "used by no stage" not in caplog.text


def test_a_plugin_datasets_existing_relative_folder_is_made_absolute(tmp_path, monkeypatch):
    """Audit BK: a plugin dataset's local folder given relatively is stored absolute."""
    from uvireid.registry import DATASETS

    @DATASETS.register("test_local_plugin_dataset")
    class Local:
        def __init__(self, root: str = ""):
            self.root = root

    try:
        (tmp_path / "work" / "data" / "mine").mkdir(parents=True)
        monkeypatch.chdir(tmp_path / "work")
        cfg = load_recipe("demo", ["data={type: test_local_plugin_dataset, root: data/mine}"])
        saved = tmp_path / "run" / "config.yaml"
        saved.parent.mkdir()
        saved.write_text(dump(cfg))
        monkeypatch.chdir(tmp_path)  # `uvireid extract run` from elsewhere
        again = load_recipe(saved)
        assert again["data"]["root"] == str(tmp_path / "work" / "data" / "mine"), again["data"]
    finally:
        DATASETS.unregister("test_local_plugin_dataset")


def test_a_boolean_seed_is_refused():
    """YAML reads seed=true as True, an int in Python: it would seed with 1 (audit BZ)."""
    with pytest.raises(ConfigError, match="'seed' must be int"):
        load_recipe("demo", ["seed=true"])


def test_an_empty_override_value_is_the_empty_string_not_null():
    """`clusterer=` (an unset shell variable: clusterer=$CLUSTERER) must not read as
    clusterer=null, which removes the part (mutation audit BZ)."""
    assert parse_override("description=") == ("description", "")
    assert parse_override("clusterer=  ") == ("clusterer", "")
    with pytest.raises(ConfigError, match="clusterer '' is not registered"):
        load_recipe("demo", ["clusterer="])


@pytest.mark.parametrize("name", ["demo", "salcr_regdb"])
def test_a_recipe_given_as_a_mapping_resolves_as_its_file_does(tmp_path, monkeypatch, name):
    """resolve_recipe (a run's manifest records the recipe it started with) against
    load_recipe of the same text written to a file: the same resolved recipe, overrides
    and a _base_ relative to the source's folder included."""
    from uvireid.config import recipe_path, resolve_recipe

    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text(recipe_path(name).read_text())
    text = "_base_: base.yaml\ntrain:\n  lr: 0.0007\n"
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    overrides = ["seed=3", "evaluation.trials=2"]
    expected = load_recipe(path, overrides)
    assert expected["train"]["lr"] == 0.0007 and expected["seed"] == 3
    assert resolve_recipe(yaml.safe_load(text), path, overrides) == expected
    with pytest.raises(ConfigError, match=r"mine\.yaml: a recipe is a mapping"):
        resolve_recipe(["train"], path)
    with pytest.raises(ConfigError, match=r"other\.yaml: _base_ file nope\.yaml not found"):
        resolve_recipe({"_base_": "nope.yaml"}, tmp_path / "other.yaml")


def test_a_recipes_path_outside_a_checkout_points_at_the_built_in_name(tmp_path, monkeypatch):
    """`uvireid run recipes/salcr.yaml` (the README's line) after `pip install`, where no
    recipes/ folder exists: the error names the built-in recipe to give instead."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"built-in recipe 'salcr' .*uvireid run salcr "):
        load_recipe("recipes/salcr.yaml")
    with pytest.raises(ConfigError, match=r"does not exist; give a path to a YAML file"):
        load_recipe("recipes/mine.yaml")  # no built-in of that name: the general message
