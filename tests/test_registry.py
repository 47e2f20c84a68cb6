"""The Registry class: registration, lookup, build-time keyword checks, messages."""

from __future__ import annotations

import pytest

from uvireid.errors import ConfigError, RegistryError
from uvireid.registry import REGISTRIES, Registry


@pytest.fixture()
def reg() -> Registry:
    r = Registry("reranker")

    @r.register("cmfp")
    class CMFP:
        """Cross-modality feature propagation."""

        def __init__(self, k: int = 30, mode: str = "auto"):
            self.k, self.mode = k, mode

    @r.register("kreciprocal")
    def make_kr(k1: int = 20, k2: int = 6):
        """k-reciprocal re-ranking."""
        return ("kr", k1, k2)

    return r


def test_build_passes_keywords_and_overrides(reg):
    obj = reg.build({"type": "cmfp", "k": 8})
    assert (obj.k, obj.mode) == (8, "auto")
    obj = reg.build({"type": "cmfp", "k": 8}, k=3)
    assert obj.k == 3
    assert reg.build("kreciprocal") == ("kr", 20, 6)


def test_unknown_name_suggests_closest_first_and_lists_all(reg):
    with pytest.raises(RegistryError) as exc:
        reg.build({"type": "cmpf"})
    msg = str(exc.value)
    assert "reranker 'cmpf' is not registered; did you mean 'cmfp'?" in msg
    assert msg.index("available: cmfp") < msg.index("kreciprocal")


def test_unknown_name_with_nothing_close_lists_available(reg):
    with pytest.raises(RegistryError, match=r"'zzz' is not registered; available: ") as err:
        reg.get("zzz")
    assert "entry-point group 'uvireid.plugins'" in str(err.value)


def test_wrong_keyword_is_caught_before_construction(reg):
    with pytest.raises(
        RegistryError, match=r"has no keyword 'kk'; did you mean 'k'\?; valid keywords: k, mode"
    ):
        reg.build({"type": "cmfp", "kk": 3})


def test_missing_required_keyword_names_it():
    r = Registry("dataset")

    @r.register("sysu")
    class SYSU:
        def __init__(self, root: str, verify: bool = True):
            self.root = root

    with pytest.raises(RegistryError, match="needs the keyword\\(s\\) root"):
        r.build({"type": "sysu"})
    assert r.build({"type": "sysu", "root": "/x"}).root == "/x"
    assert r.defaults("sysu") == {"verify": True}
    assert r.required("sysu") == ["root"]


def test_missing_type_is_an_error(reg):
    with pytest.raises(RegistryError, match="has no 'type'"):
        reg.build({"k": 3})


def test_duplicate_name_names_both_modules(reg):
    def other():
        """Another."""

    other.__module__ = "some_plugin.parts"
    with pytest.raises(RegistryError) as exc:
        reg.register("cmfp", other)
    msg = str(exc.value)
    assert "already registered" in msg
    assert "test_registry" in msg and "some_plugin.parts" in msg


def test_reregistering_the_same_qualified_name_replaces(reg):
    # a reloaded module defines a new object with the same qualified name (a module-level
    # one: the fixture's is made in a function, as a factory's objects are, see below)
    def make_kr(k1: int = 5):
        return k1

    reg.get("kreciprocal").__qualname__ = "make_kr"
    make_kr.__module__ = reg.entry("kreciprocal").module
    make_kr.__qualname__ = "make_kr"
    reg.register("kreciprocal", make_kr)
    assert reg.build("kreciprocal") == 5


def test_register_rejects_non_string_names(reg):
    with pytest.raises(RegistryError, match="non-empty strings"):
        reg.register(3)


def test_entries_record_module_and_summary(reg):
    e = reg.entry("cmfp")
    assert e.module == __name__
    assert e.summary == "Cross-modality feature propagation."
    assert reg.names() == ["cmfp", "kreciprocal"]
    assert "cmfp" in reg and len(reg) == 2


def test_registry_error_is_a_config_error_and_a_key_error(reg):
    with pytest.raises(ConfigError):
        reg.get("nope")
    with pytest.raises(KeyError):
        reg.get("nope")


def test_all_registries_exist():
    assert set(REGISTRIES) == {
        "datasets",
        "backbones",
        "clusterers",
        "associators",
        "losses",
        "rerankers",
        "samplers",
        "recipes",
    }


def test_a_flag_must_be_a_bool(reg):
    """A keyword annotated ``bool`` takes true or false only: ``bool("false")`` is True,
    so text or numbers would silently mean the opposite."""

    @reg.register("flagged")
    class Flagged:
        def __init__(self, normalize: bool = True, maybe: bool | None = None, plain=False):
            self.normalize, self.maybe, self.plain = normalize, maybe, plain

    assert reg.build({"type": "flagged", "normalize": False}).normalize is False
    assert reg.build({"type": "flagged", "maybe": "text"}).maybe == "text"  # not a pure flag
    for key in ("normalize", "plain"):
        for value in ("false", "no", 0, 1.0, None):
            with pytest.raises(RegistryError, match=rf"keyword '{key}' is a flag: true or false"):
                reg.build({"type": "flagged", key: value})


def test_a_constructor_refusing_a_value_is_a_config_error(reg):
    """A plugin's plain ValueError or TypeError for a bad value becomes a ConfigError naming
    the part, its settings and where it was raised (one line in the CLI, not a traceback)."""

    @reg.register("picky")
    class Picky:
        def __init__(self, k: int = 2):
            if int(k) < 1:
                raise ValueError(f"k must be >= 1, got {k}")

    with pytest.raises(
        ConfigError,
        match=r"reranker 'picky' refused its settings \{'k': 0\}: "
        r"ValueError: k must be >= 1, got 0 \(raised at .*test_registry\.py:",
    ):
        reg.build({"type": "picky", "k": 0})
    with pytest.raises(ConfigError, match=r"ValueError: invalid literal for int"):
        reg.build({"type": "picky", "k": "abc"})
    with pytest.raises(ConfigError, match=r"TypeError"):
        reg.build({"type": "picky", "k": [1]})


class _NoRerank:
    """A re-ranker without a rerank method."""


class _OneArgRerank:
    """A re-ranker whose rerank takes one argument."""

    def rerank(self, dist):
        return dist


class _FineRerank:
    """A re-ranker keeping the contract (an extra keyword with a default is fine)."""

    def rerank(self, query, gallery, *, scale=1.0):
        return query @ gallery.T


def test_a_part_that_breaks_its_registry_contract_is_refused_when_built():
    """Audit I (session 16): a plugin re-ranker without rerank(query, gallery) passed
    register, build and --dry-run, and crashed at its first evaluation after training."""
    from uvireid.registry import RERANKERS

    try:
        RERANKERS.register("zz_norerank", _NoRerank)
        RERANKERS.register("zz_onearg", _OneArgRerank)
        RERANKERS.register("zz_fine", _FineRerank)
        with pytest.raises(RegistryError, match=r"'zz_norerank' \(.*_NoRerank\) has no rerank"):
            RERANKERS.build("zz_norerank")
        with pytest.raises(RegistryError, match=r"rerank\(dist\) cannot be called with 2"):
            RERANKERS.build("zz_onearg")
        assert isinstance(RERANKERS.build("zz_fine"), _FineRerank)
    finally:
        for name in ("zz_norerank", "zz_onearg", "zz_fine"):
            RERANKERS.unregister(name)
    # every built-in part keeps its registry's contract
    from uvireid.registry import ASSOCIATORS, CLUSTERERS, LOSSES

    for reg in (CLUSTERERS, ASSOCIATORS, LOSSES, RERANKERS):
        for name in reg.names():
            if not reg.required(name):
                reg.build(name)


def test_register_refuses_an_object_it_cannot_call(reg):
    with pytest.raises(RegistryError, match="register a class or a factory function, not"):
        reg.register("instance", _FineRerank())


def test_a_plugin_that_fails_half_way_leaves_none_of_its_parts(monkeypatch, tmp_path):
    """Audit I: the parts a failing plugin module registered before its error were listed
    and usable, from a module that never finished importing."""
    import importlib.metadata as md
    import sys

    from uvireid import registry
    from uvireid.cli.list_cmd import format_registries
    from uvireid.registry import CLUSTERERS, PLUGIN_ERRORS

    (tmp_path / "zz_halfplugin.py").write_text(
        "from uvireid.registry import CLUSTERERS\n"
        "@CLUSTERERS.register('zz_half')\n"
        "class Half:\n"
        "    def fit_predict(self, f):\n"
        "        return [0] * len(f)\n"
        "raise RuntimeError('boom')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = md.EntryPoint(name="zz_half", value="zz_halfplugin", group="uvireid.plugins")
    monkeypatch.setattr(md, "entry_points", lambda group=None: [ep])
    try:
        registry.load_plugins(force=True)
        assert "zz_half" not in CLUSTERERS
        assert PLUGIN_ERRORS["zz_half"] == "RuntimeError: boom (not registered: zz_half)"
        # the failure is shown under the one registry too
        assert "zz_half: RuntimeError: boom" in format_registries("clusterers")
    finally:
        CLUSTERERS.unregister("zz_half")
        PLUGIN_ERRORS.pop("zz_half", None)
        sys.modules.pop("zz_halfplugin", None)


def test_importing_the_package_and_its_cli_leaves_the_heavy_modules_unloaded():
    """torchvision (0.9 s of imports, torch._dynamo through its ops) is loaded by the
    backbones that build a torchvision ResNet, not by ``import uvireid``: a library user
    of the re-rankers and ``uvireid eval``/``rerank`` never wait for it; nor for timm,
    hdbscan, sklearn, matplotlib, faiss, POT, or scipy's ndimage (0.3-0.8 s, the
    synthetic images' blur) and optimize (0.2 s, PGM's and MBCCM's matching, audit KD)."""
    import subprocess
    import sys

    heavy = ("torchvision", "timm", "hdbscan", "sklearn", "matplotlib", "faiss", "ot")
    code = (
        "import sys, uvireid, uvireid.cli\n"
        "from uvireid.rerank import cmfp\n"
        f"heavy = {heavy!r} + ('scipy.ndimage', 'scipy.optimize')\n"
        "print(sorted({h for m in sys.modules for h in heavy if (m + '.').startswith(h + '.')}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _factory(value: int):
    """Two distinct parts with the same qualified name (``..._factory.<locals>.Part``)."""

    class Part:
        def __init__(self):
            self.value = value

    return Part


def test_register_refuses_an_empty_name():
    reg = Registry("widget")

    class W:
        pass

    with pytest.raises(RegistryError, match="non-empty"):
        reg.register("", W)
    assert len(reg) == 0


def test_two_different_parts_with_one_qualified_name_do_not_replace_each_other():
    # a second registration with the same qualified name is a reloaded module; two
    # *different* objects made by one factory (or two lambdas of one module) share it, and
    # the second silently replaced the first (audit IA)
    reg = Registry("widget")
    reg.register("w", _factory(1))
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("w", _factory(2))
    assert reg.get("w")().value == 1


def test_a_component_registered_for_a_block_is_gone_after_it_and_the_old_one_back():
    reg = Registry("widget")

    def first():
        return "first"

    def second():
        return "second"

    with reg.registered("w", first):
        assert reg.build({"type": "w"}) == "first"
    assert "w" not in reg
    with pytest.raises(RuntimeError), reg.registered("w", first):  # removed on an error too
        raise RuntimeError
    assert "w" not in reg
    reg.register("kept", first)
    with pytest.raises(RegistryError, match="already registered"):  # another object: refused
        with reg.registered("kept", second):
            pass
    assert reg.build({"type": "kept"}) == "first"
    with reg.registered("kept", first):  # the same object: still there afterwards
        pass
    assert reg.build({"type": "kept"}) == "first"
