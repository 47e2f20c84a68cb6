"""Mutation audit OG: the registry and the did-you-mean suggestions (uvireid/registry.py,
uvireid/_suggest.py), against hand-computed expectations."""

from __future__ import annotations

import difflib

import pytest

from uvireid._suggest import closest, did_you_mean, ordered_by_closeness
from uvireid.errors import ConfigError, RegistryError
from uvireid.registry import Registry


def _reg() -> Registry:
    r = Registry("thing")

    @r.register("alpha")
    class Alpha:
        def __init__(self, size: int = 1, flag: bool = False):
            self.size, self.flag = size, flag

    @r.register("loose")
    class Loose:
        def __init__(self, need, *args, **kwargs):
            self.need, self.kwargs = need, kwargs

    return r


def test_a_non_string_key_in_a_config_is_a_registry_error():
    """YAML reads ``1: 3`` as an int key: the keyword check says so (it crashed with
    ``AttributeError: 'int' object has no attribute 'lower'`` in _suggest.closest)."""
    with pytest.raises(RegistryError, match=r"has no keyword '1'"):
        _reg().build({"type": "alpha", 1: 3})


def test_suggestions_accept_a_non_string_name(tmp_path):
    """The same crash reached from a recipe's part section: a ConfigError naming the key."""
    from uvireid.config import load_recipe

    assert closest(1, ["a1", "b"]) == ["a1"]
    assert ordered_by_closeness(1, ["b", "1"])[0] == "1"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("_base_: demo\nreranker: {type: cmfp, 1: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'reranker.1'"):
        load_recipe(recipe)


def test_kwargs_constructor_takes_any_keyword_but_still_needs_its_required_one():
    r = _reg()
    built = r.build({"type": "loose", "need": 1, "anything": 2})
    assert (built.need, built.kwargs) == (1, {"anything": 2})
    assert r.required("loose") == ["need"]  # *args / **kwargs are never "required"
    assert r.defaults("loose") == {}
    with pytest.raises(RegistryError, match=r"needs the keyword\(s\) need"):
        r.build({"type": "loose", "anything": 2})


def test_flag_given_as_text_is_refused_and_a_real_bool_is_passed():
    r = _reg()
    with pytest.raises(RegistryError, match=r"keyword 'flag' is a flag"):
        r.build({"type": "alpha", "flag": "false"})
    assert r.build({"type": "alpha", "flag": True}).flag is True


def test_string_annotation_bool_is_a_flag():
    # `from __future__ import annotations` leaves the annotation as the text "bool"
    r = Registry("thing")

    def make(on: bool = True):  # this module's annotations are text: "bool"
        return on

    assert make.__annotations__["on"] == "bool"

    r.register("m", make)
    with pytest.raises(RegistryError, match=r"is a flag"):
        r.build({"type": "m", "on": 1})
    assert r.build({"type": "m", "on": False}) is False


def test_unannotated_int_default_is_not_a_flag_but_unannotated_bool_default_is():
    r = Registry("thing")
    r.register("n", lambda k=3, strict=False: (k, strict))
    assert r.build({"type": "n", "k": 5}) == (5, False)
    with pytest.raises(RegistryError, match=r"'strict' is a flag"):
        r.build({"type": "n", "strict": 0})


def test_overrides_win_over_the_mapping():
    assert _reg().build({"type": "alpha", "size": 2}, size=7).size == 7


def test_build_records_the_spec_as_a_copy():
    kwargs = {"type": "alpha", "size": 4}
    built = _reg().build(kwargs)
    assert built._uvireid_spec == ("alpha", {"size": 4})
    kwargs["size"] = 9  # the caller's dict changing later does not rewrite the record
    assert built._uvireid_spec == ("alpha", {"size": 4})


def test_registered_restores_the_previous_entry_and_removes_a_new_one():
    r = _reg()
    before = r.get("alpha")

    class Other:
        pass

    # same name, another object: refused, and the old entry stays
    with pytest.raises(RegistryError, match=r"already registered"), r.registered("alpha", Other):
        pass
    assert r.get("alpha") is before
    with r.registered("fresh", Other):
        assert r.get("fresh") is Other
    assert "fresh" not in r and len(r) == 2


def test_registered_gives_back_a_replaced_same_named_class():
    """A module reloaded re-registers a class of the same qualified name: the newer one
    replaces it inside the block; the older one is back afterwards."""
    r = Registry("thing")
    old = type("Same", (), {"__module__": "pkg.mod", "__qualname__": "Same"})
    new = type("Same", (), {"__module__": "pkg.mod", "__qualname__": "Same"})
    r.register("s", old)
    with r.registered("s", new):
        assert r.get("s") is new
    assert r.get("s") is old


def test_unknown_name_hint_is_the_closest_candidate_ignoring_case():
    r = Registry("thing")
    for name in ("sysu-all", "regdb", "llcm"):
        r.register(name, dict)
    with pytest.raises(RegistryError) as err:
        r.get("SYSU-ALL")
    assert "did you mean 'sysu-all'?" in str(err.value)


def test_closest_against_difflib():
    cands = ["kreciprocal", "cmfp", "CMFP2", "none"]
    lowered = sorted({c.lower() for c in cands})
    want = difflib.get_close_matches("cmpf", lowered, n=3, cutoff=0.5)
    got = closest("cmpf", cands)
    assert [g.lower() for g in got] == want
    # among candidates equal but for case, the alphabetically first spelling is kept
    assert closest("cmfp2", ["cmfp2", "CMFP2"]) == ["CMFP2"]
    assert did_you_mean("zzzz", cands) == ""
    assert did_you_mean("cmpf", cands) == "; did you mean 'cmfp'?"


def test_ordered_by_closeness_is_best_first_then_alphabetical():
    cands = ["b", "abc", "abd", "zzz"]
    ratio = {c: difflib.SequenceMatcher(None, "abx", c).ratio() for c in cands}
    want = sorted(cands, key=lambda c: (-ratio[c], c))
    assert ordered_by_closeness("abx", cands) == want
    assert want[:2] == ["abc", "abd"]


def test_constructor_value_error_becomes_a_config_error_naming_the_part():
    r = Registry("thing")

    def make(k: int = 1):
        if k < 0:
            raise ValueError("k must be >= 0")
        return k

    r.register("m", make)
    with pytest.raises(ConfigError, match=r"thing 'm' refused its settings \{'k': -1\}"):
        r.build({"type": "m", "k": -1})


def test_a_uvireid_error_from_the_constructor_is_not_rewrapped():
    from uvireid.errors import ProtocolError  # a ValueError too

    r = Registry("thing")

    def make(k: int = 1):
        raise ProtocolError("the protocol's own message")

    r.register("m", make)
    with pytest.raises(ProtocolError, match=r"^the protocol's own message$"):
        r.build({"type": "m"})


def test_a_bool_default_with_a_wider_annotation_is_not_a_flag():
    r = Registry("thing")

    def make(mode: bool | str = False):  # False, True or "auto"
        return mode

    r.register("m", make)
    assert r.build({"type": "m", "mode": "auto"}) == "auto"


def test_the_plugin_whose_error_names_the_part_is_listed_first(monkeypatch):
    from uvireid import registry

    monkeypatch.setattr(
        registry,
        "PLUGIN_ERRORS",
        {
            "aaa": "ImportError: no torch (not registered: other)",
            "zzz": "boom (not registered: mine)",
        },
    )
    r = Registry("thing")
    with pytest.raises(RegistryError) as err:
        r.get("mine")
    msg = str(err.value)
    assert msg.index("zzz: boom") < msg.index("aaa: ImportError")
    assert "Plugin(s) that failed to load" in msg


@pytest.mark.parametrize("module", ["uvireid.types", "uvireid.registry"])
def test_all_lists_exactly_the_modules_own_public_names(module):
    """``from uvireid.registry import *`` gives the registries and their helpers, not the
    modules and functions the file imports (logging, dataclass, ...)."""
    import importlib
    import inspect

    mod = importlib.import_module(module)
    own = {
        name
        for name, value in vars(mod).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and getattr(value, "__module__", module) == module
        and name not in ("annotations", "logger")
    }
    assert set(mod.__all__) == own
