"""`uvireid run RECIPE --sweep` (engine/sweep.py), mutation audit MF: value lists, names,
refusals, a failing variant. Uses the conftest's ``recipe_file``; no training (run_recipe
is replaced), so the file runs in seconds."""

from __future__ import annotations

import shlex
from types import SimpleNamespace

import pytest

from uvireid.config import load_recipe
from uvireid.engine import sweep as sweep_mod
from uvireid.engine.sweep import (
    NAME_LENGTH,
    parse_sweep,
    split_values,
    sweep_command,
    variants,
)
from uvireid.errors import CheckpointError, ConfigError, DatasetError

# ---------------------------------------------------------------------------------------


def test_a_name_of_exactly_the_length_limit_is_kept_as_it_is():  # s03
    base = "r" * (NAME_LENGTH - len("_seed1"))
    plan = variants(base, parse_sweep(["seed=1,2"]))
    assert [p.name for p in plan] == [f"{base}_seed1", f"{base}_seed2"]
    assert all(len(p.name) == NAME_LENGTH for p in plan)
    (v,) = variants(base + "r", parse_sweep(["seed=1"]))  # one more: shortened, hashed
    assert len(v.name) <= NAME_LENGTH and v.name != f"{base}r_seed1" and "_seed1_" in v.name


def test_a_shortened_name_keeps_as_much_of_the_recipe_name_as_fits():  # s04
    base = "abcdefghij" * 13
    for v in variants(base, parse_sweep(["seed=1,2"])):
        head, tag, digest = v.name.rsplit("_", 2)
        # the tag and an 8-digit hash take 15 characters: the rest is the recipe's name
        assert len(v.name) <= NAME_LENGTH and base.startswith(head) and len(head) >= 100
        assert tag.startswith("seed") and len(digest) == 8


def test_the_continue_command_names_a_relative_recipe_by_its_absolute_path(
    tmp_path, monkeypatch
):  # s05
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "my.yaml").write_text("name: x\n")
    monkeypatch.chdir(tmp_path)
    cmd = shlex.split(sweep_command("sub/my.yaml", [], ["seed=1,2"]))
    assert cmd[2] == str(tmp_path / "sub" / "my.yaml")
    # a built-in recipe's name stays a name
    assert shlex.split(sweep_command("salcr", [], ["seed=1,2"]))[2] == "salcr"


@pytest.mark.parametrize(
    "error", [DatasetError("images gone"), CheckpointError("checkpoint unreadable")]
)
def test_a_variant_failing_with_any_uvireid_error_lets_the_others_run(
    recipe_file, monkeypatch, capsys, error
):  # s06 (only TrainingError caught), s07 (break after the first failure)
    from uvireid.engine import runner

    calls = []

    def fake(cfg, **kw):
        calls.append(cfg["name"])
        if len(calls) == 1:
            raise error
        return SimpleNamespace(path=f"/x/{cfg['name']}")

    monkeypatch.setattr(runner, "run_recipe", fake)
    folders, failed = sweep_mod.run_sweep(
        str(recipe_file), [], ["seed=1,2,3"], report=False, progress=False
    )
    assert calls == ["tiny_train_seed1", "tiny_train_seed2", "tiny_train_seed3"]
    assert [f.path for f in folders] == ["/x/tiny_train_seed2", "/x/tiny_train_seed3"]
    assert failed == {"tiny_train_seed1": f"{type(error).__name__}: {error}"}


def test_the_hash_of_a_colliding_name_tells_its_keys_apart():  # s10
    # the same two values under two keys that clean to one name: two hashes
    plan = variants("x", parse_sweep(["data.a=p q,p-q", "data.b=p q,p-q"]))
    names = [v.name for v in plan]
    assert len(set(names)) == 4


# ---------------------------------------------------------------------------------------


def test_a_key_swept_with_its_parent_is_refused():
    """`--sweep clusterer.eps=0.5,0.6 --sweep 'clusterer={type: dbscan, eps: 0.3, ...}'`:
    each variant would apply eps, then the whole clusterer, so both runs would train with
    eps 0.3 under names saying 0.5 and 0.6 (the sweep and its set overrides were checked
    for a parent and its child, audit EC B6; two swept keys were not)."""
    items = ["clusterer.eps=0.5,0.6", "clusterer={type: dbscan, eps: 0.3, min_samples: 3}"]
    for order in (items, items[::-1]):
        with pytest.raises(ConfigError, match=r"--sweep clusterer= and --sweep clusterer\.eps="):
            parse_sweep(order)
    assert len(parse_sweep(["clusterer.eps=0.5,0.6", "clusterer_x.k=1"])) == 2  # not a parent


def test_a_run_name_depends_on_its_own_settings_only():
    """The docstring: "the same settings keep the same name whatever the other values and
    their order, so --resume finds each one's folder again". A value whose cleaned name
    collides only in a larger sweep changes its name there, and two settings of two
    sweeps share one name: `--sweep 'description=a b'` then `--sweep description=a-b,c
    --resume` reports the 'a b' run as the 'a-b' one (a key that changes training: its
    finished run is refused, or resumed with the other settings)."""

    def names(item):
        return {v.settings: v.name for v in variants("x", parse_sweep([item]))}

    alone, both = names("description=a b"), names("description=a b,a-b")
    key = (("description", "a b"),)
    assert alone[key] == both[key]
    assert names("description=a b")[key] != names("description=a-b")[(("description", "a-b"),)]


def test_a_value_holding_an_apostrophe_is_one_value_of_several():
    """A quote opens a quoted value only at its start (YAML's rule), but split_values
    treats any quote as an opening one: `description=it's late,early` is one value, and
    the sweep silently runs once."""
    assert split_values("it's late,early") == ["it's late", "early"]
    assert split_values("/data/o'brien,/data/smith") == ["/data/o'brien", "/data/smith"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]  # a quoted value still holds commas


def test_values_equal_as_numbers_are_one_value(recipe_file):
    """`clusterer.eps=1,1.0`: YAML reads an int and a float, equal as numbers and as DBSCAN's
    radius; the check compares their YAML text (1 vs 1.0), so two identical runs start."""
    plan = variants("t", parse_sweep(["clusterer.eps=0.5,1"]))
    cfgs = [load_recipe(recipe_file, v.overrides) for v in plan]
    assert [c["clusterer"]["eps"] for c in cfgs] == [0.5, 1]
    with pytest.raises(ConfigError, match="repeats a value"):
        parse_sweep(["clusterer.eps=1,1.0"])
    # a value that differs as YAML and as a number is two values
    assert len(parse_sweep(["train.lr=1e-3,0.002"])[0][1]) == 2
