"""Mutation audit OD: sweep value splitting, naming and the CLI's advice after a refused sweep."""

from __future__ import annotations

import re

import pytest
import yaml

from uvireid.cli import main
from uvireid.engine.sweep import parse_sweep, split_values, variants
from uvireid.errors import ConfigError


def test_a_doubled_apostrophe_inside_single_quotes_does_not_end_the_value():
    # YAML's escaped apostrophe: 'it''s,a' is the one string "it's,a"
    parts = split_values("'it''s,a',b")
    assert parts == ["'it''s,a'", "b"]
    assert [yaml.safe_load(p) for p in parts] == ["it's,a", "b"]


def test_a_backslash_inside_single_quotes_is_a_plain_character():
    # single-quoted YAML has no backslash escapes: 'C:\' ends at its second quote
    parts = split_values("'C:\\',x")
    assert parts == ["'C:\\'", "x"]
    assert [yaml.safe_load(p) for p in parts] == ["C:\\", "x"]


def test_a_refused_sweep_does_not_offer_a_resume_command(capsys, tmp_path, monkeypatch):
    # the sweep never started (its arguments are refused before any run): repeating the
    # same refused arguments with --resume cannot continue anything
    monkeypatch.chdir(tmp_path)
    assert main(["run", "demo", "--sweep", "foo", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "not of the form KEY=V1,V2" in err
    assert "--resume" not in err


def test_run_names_of_one_sweep_are_distinct():
    # values holding '_' can spell another combination's name: both runs would share one
    # name, and --resume would take the other combination's folder for its own
    plan = variants("demo", parse_sweep(["x=1_y2,1", "y=3,2_y3"]))
    names = [v.name for v in plan]
    assert len(set(names)) == len(names), names


def test_a_quote_after_a_mapping_colon_opens_a_value():
    # "a: 'x,y'" is YAML's mapping {a: "x,y"}: its comma separates nothing
    parts = split_values("a: 'x,y',b")
    assert parts == ["a: 'x,y'", "b"]
    assert yaml.safe_load(parts[0]) == {"a": "x,y"}


def test_a_key_that_only_begins_with_another_key_is_no_child_of_it():
    # train.lr_steps is not inside train.lr: both may be swept
    sweep = parse_sweep(["train.lr=0.1,0.2", "train.lr_steps=[1],[2]"])
    assert [k for k, _ in sweep] == ["train.lr", "train.lr_steps"]


def test_true_and_one_are_two_values():
    # booleans are kept apart from numbers when values are compared
    assert parse_sweep(["x=true,1"]) == [("x", ["true", "1"])]


@pytest.mark.parametrize("values", ["{a: 1},{a: 1.0}", "[1,2],[1.0,2]"])
def test_numbers_inside_mappings_and_lists_compare_as_numbers(values):
    with pytest.raises(ConfigError, match="repeats a value"):
        parse_sweep([f"x={values}"])


def test_a_name_shortened_for_a_long_value_keeps_twenty_characters_of_the_recipe_name():
    base = "a_recipe_name_of_thirty_chars_"
    (v,) = variants(base, parse_sweep(["x=" + "v" * 300]))
    assert len(v.name) <= 120
    assert v.name.startswith(base[:20] + "_xvvv")
    assert re.fullmatch(r".*_[0-9a-f]{8}", v.name)


@pytest.mark.parametrize("base", ["r", "rr"])
def test_a_shortened_name_has_no_separator_before_its_hash(base):
    # the cut falls on a '_' of the value for one of the two bases: dropped, not doubled
    (v,) = variants(base, parse_sweep(["x=" + "a_" * 100]))
    assert len(v.name) <= 120
    assert not re.search(r"[-_]_[0-9a-f]{8}$", v.name), v.name


def test_a_recipe_name_with_unsafe_characters_loses_them_at_its_ends():
    (v,) = variants("exp (v2)", parse_sweep(["x=1"]))
    assert v.name == "exp-v2_x1"


def test_an_unbalanced_closing_bracket_closes_nothing():
    """``a],b``: the stray ``]`` is part of the first value and the comma after it still
    separates (the depth went negative and made the rest of the list one value)."""
    assert split_values("a],b") == ["a]", "b"]
    assert split_values("[1,2]],3") == ["[1,2]]", "3"]
    assert split_values("[1,[2,3]],4") == ["[1,[2,3]]", "4"]


def test_a_value_with_an_underscore_keeps_the_name_earlier_sweeps_gave_it():
    """``two_stream_resnet`` holds '_' before no swept key's name: its run keeps the name
    it had (a --resume of a sweep started before finds its folder); a value with '_'
    before a swept key's name (up to the key's own first '_') gets the hash."""
    plan = variants("demo", parse_sweep(["backbone.type=two_stream_resnet,timm", "train.lr=0.1"]))
    assert [v.name for v in plan] == ["demo_typetwo_stream_resnet_lr0.1", "demo_typetimm_lr0.1"]
    plan = variants("demo", parse_sweep(["clusterer.min_samples=2", "x=a_min,b"]))
    assert re.fullmatch(r"demo_min_samples2_xa_min_[0-9a-f]{8}", plan[0].name)
    assert plan[1].name == "demo_min_samples2_xb"
