"""Config and CLI edges the other tests left open: list indices one past the end, booleans
for integers, list items' types, _delete_'s provenance, ranges' closed ends, eval's and
rerank's default trials, run RUN --resume, report options, plugin rollback, suggestions'
case (mutation audit CK)."""

from __future__ import annotations

import pytest

from uvireid.config import load_recipe, parse_override
from uvireid.errors import ConfigError


def test_an_index_one_past_the_end_of_a_list_is_a_config_error():
    """`stages.N....` with N == len(stages) must be the ConfigError naming the valid
    indices, in both override forms, not an IndexError traceback."""
    n = len(load_recipe("demo")["stages"])
    with pytest.raises(ConfigError, match=f"addresses a list of {n} item"):
        load_recipe("demo", [f"stages.{n}.epochs=3"])
    with pytest.raises(ConfigError, match=f"refines item {n} of a list of {n} item"):
        load_recipe("demo", [f"stages={{{n}: {{epochs: 3}}}}"])


def test_an_index_of_digits_other_than_ascii_is_a_config_error():
    """'¹' passes ``str.isdigit`` and ended in int()'s ValueError (audit GD, session 24)."""
    with pytest.raises(ConfigError, match="stages.¹ addresses a list of 2 item"):
        load_recipe("demo", ["stages.¹.epochs=3"])
    with pytest.raises(ConfigError, match="'stages' must be a list of stage mappings"):
        load_recipe("demo", ["stages={¹: {epochs: 3}}"])


@pytest.mark.parametrize(
    "override",
    [
        "train.iters_per_epoch=true",
        "train.pad=false",
        "evaluation.trials=true",
        "stages.0.epochs=true",
        "stages.1.sampler.ids=true",
    ],
)
def test_a_boolean_is_not_an_integer_setting(override):
    """YAML reads `true` as True, which Python counts as the int 1: an integer setting
    given a boolean would silently train 1 iteration / 1 epoch."""
    with pytest.raises(ConfigError, match="must be an integer"):
        load_recipe("demo", [override])


def test_list_settings_check_their_items():
    with pytest.raises(ConfigError, match="'train.lr_steps' must be a list of integers"):
        load_recipe("demo", ["train.lr_steps=[5, x]"])
    with pytest.raises(ConfigError, match="'train.lr_steps' must be a list of integers"):
        load_recipe("demo", ["train.lr_steps=[5, true]"])


@pytest.mark.parametrize(
    "override, section, key, value",
    [
        ("train.erasing_p=1.0", "train", "erasing_p", 1.0),
        ("train.gray_p=1.0", "train", "gray_p", 1.0),
        ("train.hue=0.5", "train", "hue", 0.5),
        ("train.collapse_ratio=1.0", "train", "collapse_ratio", 1.0),
        ("train.lr=0", "train", "lr", 0),
        ("evaluation.every=0", "evaluation", "every", 0),
    ],
)
def test_the_inclusive_ends_of_a_settings_range_are_accepted(override, section, key, value):
    """The documented ranges are closed ([0, 1], [0, 0.5], >= 0): their ends are valid."""
    assert load_recipe("demo", [override])[section][key] == value


def test_a_loss_weight_of_zero_is_accepted():
    """'a finite number >= 0': weight 0 switches a loss term off without removing it."""
    cfg = load_recipe("demo", ["stages.1.losses.0.weight=0"])
    assert cfg["stages"][1]["losses"][0]["weight"] == 0


def test_a_train_override_equal_to_every_stages_own_value_is_accepted():
    """The demo's stages both set iters_per_epoch: 80. train.iters_per_epoch=80 changes
    nothing any stage uses, and is accepted; 40 reaches no stage and is refused."""
    assert [s["iters_per_epoch"] for s in load_recipe("demo")["stages"]] == [80, 80]
    cfg = load_recipe("demo", ["train.iters_per_epoch=80"])
    assert cfg["train"]["iters_per_epoch"] == 80
    with pytest.raises(ConfigError, match="train.iters_per_epoch=40 reaches no stage"):
        load_recipe("demo", ["train.iters_per_epoch=40"])


def test_delete_forgets_who_set_the_replaced_keys(tmp_path):
    """`train: {_delete_: true, ...}` drops the base's train settings, and with them the
    record that a file set train.epochs: the run's epochs are then the stages' sum (4 + 10
    in the demo), not a conflict between the default 40 and the stages."""
    (tmp_path / "b.yaml").write_text("_base_: demo.yaml\ntrain: {epochs: 14, height: 64}\n")
    (tmp_path / "c.yaml").write_text("_base_: b.yaml\ntrain: {_delete_: true, lr: 1.0e-4}\n")
    cfg = load_recipe(tmp_path / "c.yaml")
    assert cfg["train"]["epochs"] == 4 + 10
    assert cfg["train"]["height"] == 288 and cfg["train"]["lr"] == 1.0e-4


def test_allow_changes_without_resume_is_refused(capsys):
    """--allow-changes only means something with --resume; alone it is an error, not a
    flag silently ignored."""
    from uvireid.cli import main

    assert main(["run", "demo", "--allow-changes", "--dry-run"]) == 2
    assert "--allow-changes goes with --resume" in capsys.readouterr().err


def test_suggestions_ignore_letter_case():
    """closest()'s documented rule: case does not count (SYSU-ALL is close to sysu-all)."""
    from uvireid._suggest import closest

    assert closest("SYSU-ALL", ["sysu-all", "regdb-v2i"]) == ["sysu-all"]
    assert closest("DBSCAN", ["dbscan", "hdbscan", "kmeans"], n=1) == ["dbscan"]


def test_a_failing_plugin_takes_back_the_parts_of_its_submodules(monkeypatch):
    """A plugin module that fails after one of its submodules registered a part never
    finished importing: that part is taken back (all or nothing); a part of another
    package whose name merely starts the same stays."""
    import importlib.metadata as md

    from uvireid import registry as R

    class SubPart:
        def rerank(self, query, gallery):
            return None

    class OtherPart(SubPart):
        pass

    SubPart.__module__ = "ck_fakeplug.sub"
    OtherPart.__module__ = "ck_fakeplug_other"

    class EntryPoint:
        name = "ck_fakeplug"
        value = "ck_fakeplug"

        def load(self):
            R.RERANKERS.register("ck_sub_part", SubPart)
            R.RERANKERS.register("ck_other_part", OtherPart)
            raise RuntimeError("boom")

    monkeypatch.setattr(md, "entry_points", lambda group: [EntryPoint()])
    monkeypatch.setattr(R, "PLUGIN_ERRORS", {})
    try:
        R.load_plugins(force=True)
        assert "ck_sub_part" not in R.RERANKERS
        assert "ck_other_part" in R.RERANKERS
        assert R.PLUGIN_ERRORS["ck_fakeplug"] == "RuntimeError: boom (not registered: ck_sub_part)"
    finally:
        R.RERANKERS.unregister("ck_sub_part")
        R.RERANKERS.unregister("ck_other_part")


def test_run_folder_resume_continues_that_folder_not_the_latest(tmp_path, monkeypatch):
    """`uvireid run RUN --resume` continues RUN, even when a later run of the same recipe
    sits beside it (the recipe's latest run is what `uvireid run demo --resume` picks)."""
    from pathlib import Path

    import uvireid.engine.runner as runner
    from uvireid.cli import main
    from uvireid.config import dump, load_recipe

    text = dump(load_recipe("demo", [f"output_dir={tmp_path}"]))
    older, newer = tmp_path / "demo-20260101-000000", tmp_path / "demo-20260102-000000"
    for folder in (older, newer):
        folder.mkdir()
        (folder / "config.yaml").write_text(text)
    calls = []

    class Done:
        path = older

    def fake_run_recipe(cfg, resume=False, allow_changes=False, **kw):
        calls.append(resume)
        return Done

    monkeypatch.setattr(runner, "run_recipe", fake_run_recipe)
    assert main(["run", str(older), "--resume", "--no-report"]) == 0
    assert len(calls) == 1 and isinstance(calls[0], Path)
    assert calls[0].resolve() == older.resolve()


def test_report_passes_each_option_to_build_report(tmp_path, monkeypatch):
    """`uvireid report` hands --reranker, --topk, --queries, --ids, --dpi to the report
    as given (no option silently replaced by a default or by another option)."""
    import uvireid.viz.report as rep
    from uvireid.cli import main

    seen: dict = {}

    class Built:
        html = tmp_path / "report.html"
        images: list = []
        notes: list = []

    def fake_build_report(run_dir, **kw):
        seen.clear()
        seen.update(kw)
        return Built

    monkeypatch.setattr(rep, "build_report", fake_build_report)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    argv = ["report", str(run), "--queries", "2", "--topk", "7", "--ids", "5", "--dpi", "30"]
    assert main([*argv, "--reranker", "none"]) == 0
    assert seen["reranker"] == "none"
    assert (seen["queries"], seen["k"], seen["tsne_ids"], seen["dpi"]) == (2, 7, 5, 30)
    assert main(argv) == 0
    assert seen["reranker"] is rep.RECIPE


def test_eval_and_rerank_sample_ten_galleries_unless_told(tmp_path):
    """SYSU-MM01's and LLCM's protocol averages 10 gallery trials; `--trials` left out
    must mean 10 (the help says so), not fewer."""
    import argparse

    from uvireid.cli._checks import protocol_inputs

    feats = tmp_path / "f.npz"
    feats.write_bytes(b"x")
    for protocol in ("sysu-all", "llcm-v2i"):
        args = argparse.Namespace(protocol=protocol, features=[str(feats)], trials=None, json=None)
        protocol_inputs(args)
        assert args.trials == 10
        args = argparse.Namespace(protocol=protocol, features=[str(feats)], trials=3, json=None)
        protocol_inputs(args)
        assert args.trials == 3


# -- recipes: YAML files and overrides (audit IA) ---------------------------------------


def test_one_list_index_given_twice_in_a_file_is_refused(tmp_path):
    # the loader refuses a key given twice, but `1` and `"1"` (or `0x1`) are two keys to
    # YAML and the same list item to the index-mapping merge: the last one won silently
    f = tmp_path / "r.yaml"
    f.write_text('_base_: demo\nstages:\n  1: {epochs: 2}\n  "1": {epochs: 5}\n')
    with pytest.raises(ConfigError, match="1"):
        load_recipe(f)


def test_a_tab_in_a_recipe_is_reported_with_its_fix(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("_base_: demo\ntrain:\n\tepochs: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_recipe(f)
    assert "space" in str(exc.value).lower()


@pytest.mark.parametrize("word", ["off", "no", "yes", "on"])
def test_a_yaml_boolean_word_for_a_string_key_says_how_it_was_read(tmp_path, word):
    # `name: off` is read as false (YAML 1.1) and refused as "got False", which names
    # neither the word the user wrote nor the fix (quote it)
    f = tmp_path / "r.yaml"
    f.write_text(f"_base_: demo\nname: {word}\n")
    with pytest.raises(ConfigError) as exc:
        load_recipe(f)
    assert "quote" in str(exc.value)


def test_an_index_into_an_empty_list_names_a_usable_fix():
    # demo.yaml sets train.lr_steps: []; the message said "use an index 0..-1"
    with pytest.raises(ConfigError) as exc:
        load_recipe("demo", ["train.lr_steps.0=5"])
    assert "0..-1" not in str(exc.value)
    assert "train.lr_steps=[" in str(exc.value)


def test_an_index_into_a_default_list_is_not_turned_into_a_mapping():
    # train.jitter_views is absent from demo.yaml (a default): the override made a section
    # {'0': 'visible_ca'} and the error showed the raw annotation "list[str]"
    with pytest.raises(ConfigError) as exc:
        load_recipe("demo", ["train.jitter_views.0=visible_ca"])
    msg = str(exc.value)
    assert "{'0'" not in msg and "list[str]" not in msg
    assert "train.jitter_views=[" in msg


def test_a_misspelt_type_key_suggests_type():
    with pytest.raises(ConfigError) as exc:
        load_recipe("demo", ["backbone.typ=resnet"])
    assert "did you mean 'backbone.type'?" in str(exc.value)


@pytest.mark.parametrize("override", ["output_dir=", "data.root="])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(override):
    # `output_dir=$OUT` with OUT unset: '' became the current folder silently, while
    # `name=` and `device=` are refused
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_recipe("demo", [override])


def test_override_values_are_read_as_yaml_scalars():
    assert parse_override("a.b=") == ("a.b", "")
    assert parse_override("train.lr=1e-4") == ("train.lr", 1e-4)
    assert parse_override("train.amp=true") == ("train.amp", True)
    assert parse_override("reranker=null") == ("reranker", None)
    assert parse_override("train.lr_steps=[2, 5]") == ("train.lr_steps", [2, 5])


def test_a_boolean_key_does_not_address_a_list_item(tmp_path):
    # `true` is not an index: YAML's True == 1 would otherwise refine stage 1
    f = tmp_path / "r.yaml"
    f.write_text("_base_: demo\nstages:\n  true: {epochs: 2}\n")
    with pytest.raises(ConfigError, match="'stages' must be a list"):
        load_recipe(f)


@pytest.mark.parametrize("text", ["-seed=3", "3.epochs=1", "--train.epochs=2"])
def test_an_override_key_must_start_with_a_letter(text):
    with pytest.raises(ConfigError, match="not a dotted key"):
        parse_override(text)


_STAGE_WITH_OWN_CLUSTERER = """_base_: demo
stages:
  - name: dcl
    epochs: 4
    sampler: {{type: identity, ids: 8, images: 4}}
    clusterer: {{_delete_: {flag}, {rest}}}
    losses:
      - {{type: cluster_contrast, weight: 1.0}}
"""


def test_delete_false_in_a_stage_part_is_accepted(tmp_path):
    # `_delete_: false` is a valid (no-op) value everywhere else; inside a stage's part it
    # reached the component check as an unknown keyword '_delete_'
    f = tmp_path / "r.yaml"
    f.write_text(_STAGE_WITH_OWN_CLUSTERER.format(flag="false", rest="eps: 0.3"))
    cfg = load_recipe(f)
    assert cfg["stages"][0]["clusterer"]["type"] == "dbscan"
    assert cfg["stages"][0]["clusterer"]["eps"] == 0.3
    assert cfg["stages"][0]["clusterer"]["k1"] == 20  # refined the top-level one (demo.yaml)


def test_delete_in_a_stage_part_must_be_a_boolean(tmp_path):
    # at the top level `_delete_: "yes"` is refused ("must be true or false (unquoted)");
    # in a stage's part any truthy value was taken as true
    f = tmp_path / "r.yaml"
    f.write_text(_STAGE_WITH_OWN_CLUSTERER.format(flag='"yes"', rest="type: kmeans"))
    with pytest.raises(ConfigError, match="_delete_"):
        load_recipe(f)


@pytest.mark.parametrize("override", ["train.lr_steps=[-5]", "stages.1.lr_steps=[-1]"])
def test_a_negative_learning_rate_step_is_refused(override):
    # an epoch index below 0 never "passes": the trainer counts epoch >= step, so [-5]
    # silently divides the rate from the first epoch, as [0] would (no range rule)
    with pytest.raises(ConfigError, match="lr_steps"):
        load_recipe("demo", [override])


def test_a_mapping_override_of_a_section_merges_into_it():
    # module docstring: "A mapping given for a mapping (a section ...) merges into it"
    cfg = load_recipe("demo", ["clusterer={eps: 0.3}", "train={lr: 0.001}"])
    assert cfg["clusterer"]["type"] == "dbscan"
    assert (cfg["clusterer"]["eps"], cfg["clusterer"]["k1"]) == (0.3, 20)  # k1 from demo.yaml
    assert cfg["train"]["lr"] == 0.001
    assert (cfg["train"]["height"], cfg["train"]["width"]) == (64, 32)  # demo.yaml's


def test_a_learning_rate_factor_of_zero_is_refused_and_a_tiny_one_accepted():
    # train.lr_gamma must be > 0 (strictly): 0 would zero the rate after the first step
    with pytest.raises(ConfigError, match=r"'train.lr_gamma' must be > 0, got 0"):
        load_recipe("demo", ["train.lr_gamma=0"])
    assert load_recipe("demo", ["train.lr_gamma=1e-9"])["train"]["lr_gamma"] == 1e-9


def test_two_stages_with_one_name_are_refused():
    # stage names key the logs and metrics; demo's stages are dcl and salcr
    with pytest.raises(ConfigError, match="two stages are named 'dcl'"):
        load_recipe("demo", ["stages.1.name=dcl"])


def test_a_stage_loss_without_a_weight_counts_once(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("_base_: demo\nstages:\n  0:\n    losses: [{type: cluster_contrast}]\n")
    cfg = load_recipe(f)
    assert cfg["stages"][0]["losses"][0]["weight"] == 1.0
    assert cfg["stages"][1]["losses"][2]["weight"] == 0.5  # demo.yaml's own weight stays


def test_a_comment_only_base_file_adds_nothing(tmp_path):
    (tmp_path / "empty.yaml").write_text("# placeholder: nothing to add yet\n")
    f = tmp_path / "r.yaml"
    f.write_text("_base_: [demo, empty.yaml]\n")
    cfg = load_recipe(f)
    demo = load_recipe("demo")
    assert {k: v for k, v in cfg.items() if k != "name"} == {
        k: v for k, v in demo.items() if k != "name"
    }
    assert cfg["name"] == "r"
