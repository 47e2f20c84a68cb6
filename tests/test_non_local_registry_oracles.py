"""Non-local stages and the registry at their edges (order of the non-local blocks, numpy
flags, plugin roll-back scope, builtins without a signature, docstring summaries)."""

from __future__ import annotations

import importlib.metadata as md
import sys

import numpy as np
import pytest
import torch
from torch import nn

from uvireid import registry
from uvireid.errors import ConfigError, RegistryError
from uvireid.models.non_local import StageWithNonLocal, check_non_local
from uvireid.registry import CLUSTERERS, PLUGIN_ERRORS, Registry, doc_summary


class _Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn2(self.conv(x))


def test_three_non_local_blocks_follow_the_last_three_stage_blocks_in_order():
    torch.manual_seed(0)
    stage = nn.Sequential(*[_Block(4) for _ in range(4)])
    m = StageWithNonLocal(stage, 3)
    calls = []
    for name, mod in m.named_modules():
        if name.count(".") == 1:
            mod.register_forward_hook(lambda mod, i, o, name=name: calls.append(name))
    with torch.no_grad():
        m.eval()(torch.randn(1, 4, 2, 3))
    want = ["stage.0", "stage.1", "non_local.0", "stage.2", "non_local.1", "stage.3"]
    assert calls == [*want, "non_local.2"]


def test_counts_given_as_a_four_character_string_are_refused_as_not_four_counts():
    with pytest.raises(ConfigError, match="four counts"):
        check_non_local("0230", [2, 2, 2, 2], "resnet18")


def test_names_and_iteration_are_sorted_whatever_the_registration_order():
    r = Registry("thing")
    for n in ("zeta", "alpha", "mid"):
        r.register(n, dict)
    assert r.names() == ["alpha", "mid", "zeta"]
    assert list(r) == ["alpha", "mid", "zeta"]


def test_an_unhashable_type_is_a_registry_error_not_a_type_error():
    r = Registry("thing")
    r.register("alpha", dict)
    with pytest.raises(RegistryError, match="not registered"):
        r.build({"type": ["alpha"]})


def test_a_plugin_error_naming_the_part_exactly_goes_before_one_naming_a_longer_name(
    monkeypatch,
):
    monkeypatch.setattr(
        registry,
        "PLUGIN_ERRORS",
        {"p1": "boom (not registered: xmine)", "p2": "bang (not registered: mine)"},
    )
    with pytest.raises(RegistryError) as err:
        Registry("thing").get("mine")
    msg = str(err.value)
    assert msg.index("p2: bang") < msg.index("p1: boom")


@pytest.mark.parametrize("flag", [np.True_, np.False_])
def test_a_numpy_bool_is_a_valid_flag(flag):
    r = Registry("thing")

    @r.register("a")
    class A:
        def __init__(self, on: bool = False):
            self.on = on

    assert r.build({"type": "a", "on": flag}).on == bool(flag)
    with pytest.raises(RegistryError, match="is a flag"):
        r.build({"type": "a", "on": np.int64(1)})


def test_a_factory_returning_a_builtin_type_is_built_without_provenance():
    r = Registry("thing")
    r.register("d", lambda: dict)
    assert r.build("d") is dict
    assert not hasattr(dict, "_uvireid_spec")


def test_a_builtin_without_a_signature_takes_any_keyword():
    r = Registry("thing")
    r.register("ga", getattr)
    assert any(p.kind is p.VAR_KEYWORD for p in r.signature("ga").parameters.values())
    r.check_kwargs("ga", {"anything": 1})  # no error: nothing to check against
    assert r.defaults("ga") == {} and r.required("ga") == []


def test_a_contract_method_without_a_signature_is_trusted():
    r = Registry("thing", {"rerank": ("query", "gallery")})

    @r.register("b")
    class B:
        rerank = staticmethod(getattr)  # a builtin: inspect cannot read its signature

    assert isinstance(r.build("b"), B)


def test_a_part_without_keywords_says_so_when_given_one():
    r = Registry("thing")

    @r.register("bare")
    class Bare:
        pass

    with pytest.raises(RegistryError, match=r"no keyword 'k'.*it takes no keywords"):
        r.build({"type": "bare", "k": 1})


def test_doc_summary_is_the_whole_first_paragraph_on_one_line():
    def f():
        """First sentence that
        wraps onto a second line.

        Second paragraph."""

    assert doc_summary(f) == "First sentence that wraps onto a second line."
    assert doc_summary(lambda: 0) == ""


@pytest.fixture()
def plugin_env(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(tmp_path))
    names, mods = [], []

    def use(files: dict[str, str], eps: list[tuple[str, str]]):
        for mod, text in files.items():
            (tmp_path / f"{mod}.py").write_text(text)
            mods.append(mod)
        points = [md.EntryPoint(name=n, value=v, group="uvireid.plugins") for n, v in eps]
        monkeypatch.setattr(md, "entry_points", lambda group=None: points)
        names.extend(n for n, _ in eps)
        return registry.load_plugins(force=True)

    yield use
    for n in ("po_a", "po_b", "po_sib"):
        CLUSTERERS.unregister(n)
    for n in names:
        PLUGIN_ERRORS.pop(n, None)
    for m in mods:
        sys.modules.pop(m, None)


_PART = (
    "from uvireid.registry import CLUSTERERS\n"
    "@CLUSTERERS.register({name!r})\n"
    "class P:\n"
    "    def fit_predict(self, f):\n"
    "        return [0] * len(f)\n"
)


def test_a_callable_entry_point_is_called_once(plugin_env):
    text = "CALLS = []\ndef setup():\n    CALLS.append(1)\n" + _PART.format(name="po_a")
    loaded = plugin_env({"po_callplug": text}, [("po_call", "po_callplug:setup")])
    assert loaded == ["po_call"]
    assert sys.modules["po_callplug"].CALLS == [1]


def test_a_failing_plugin_keeps_the_parts_of_a_sibling_module_with_a_longer_name(
    plugin_env,
):
    files = {
        "po_plugextra": _PART.format(name="po_sib"),
        "po_plug": "import po_plugextra\n" + _PART.format(name="po_a") + "raise OSError('x')\n",
    }
    plugin_env(files, [("po_plug", "po_plug")])
    assert "po_a" not in CLUSTERERS  # the failing module's own part is taken back
    assert "po_sib" in CLUSTERERS  # a module that only shares its prefix is not it
    assert PLUGIN_ERRORS["po_plug"] == "OSError: x (not registered: po_a)"


def test_a_failing_callable_keeps_the_parts_its_module_registered_on_an_earlier_load(
    plugin_env,
):
    text = _PART.format(name="po_b") + "def broken():\n    raise RuntimeError('late')\n"
    loaded = plugin_env({"po_twice": text}, [("po_ok", "po_twice"), ("po_bad", "po_twice:broken")])
    assert loaded == ["po_ok"]
    assert "po_b" in CLUSTERERS  # registered by the first, complete, entry point
    assert PLUGIN_ERRORS["po_bad"] == "RuntimeError: late"
