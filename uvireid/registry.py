"""Registries of interchangeable parts, and plugin discovery.

A part is a class (or factory function) registered under an explicit string name::

    from uvireid.registry import RERANKERS

    @RERANKERS.register("cmfp")
    class CMFP:
        def __init__(self, k: int = 30): ...

    RERANKERS.build({"type": "cmfp", "k": 8})

The name, not the class name, is what recipes use, so a class can be renamed without
breaking a recipe. Registering a name twice is an error naming both modules. ``build``
checks the keywords against the constructor's signature before calling it, and every
error lists what exists, closest match first.

Built-in parts register when :mod:`uvireid` is imported. Third-party packages add parts
through the entry-point group ``uvireid.plugins``: each entry point names a module (whose
import registers its parts) or a callable (called once with no arguments).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from uvireid._suggest import closest, ordered_by_closeness
from uvireid.errors import ConfigError, RegistryError, UvireidError

__all__ = [
    "ASSOCIATORS",
    "BACKBONES",
    "CLUSTERERS",
    "DATASETS",
    "LOSSES",
    "PLUGIN_ERRORS",
    "PLUGIN_GROUP",
    "RECIPES",
    "REGISTRIES",
    "RERANKERS",
    "SAMPLERS",
    "Entry",
    "Registry",
    "doc_summary",
    "load_plugins",
]

logger = logging.getLogger(__name__)

PLUGIN_GROUP = "uvireid.plugins"


@dataclass(frozen=True)
class Entry:
    """One registered part: its name, the object and where it was defined."""

    name: str
    obj: Callable[..., Any]
    module: str

    @property
    def summary(self) -> str:
        """:func:`doc_summary` of the part."""
        return doc_summary(self.obj)


def doc_summary(obj: Any) -> str:
    """First paragraph of ``obj``'s docstring, as one line (empty when it has none; the
    first line alone cut sentences that wrap)."""
    doc = (inspect.getdoc(obj) or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else ""


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _callable_signature(obj: Callable[..., Any]) -> inspect.Signature:
    """Signature of what ``obj(**kwargs)`` accepts (a class's ``__init__`` without self)."""
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # builtins without a signature
        return inspect.Signature([inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])


class Registry:
    """A named table of parts of one kind (re-rankers, clusterers, ...).

    Args:
        kind: singular noun used in messages, e.g. ``"reranker"``.
        contract: ``{method: its positional arguments' names}`` every built part must have (DESIGN.md
            "Contracts"), checked by :meth:`build`: a plugin without them is refused when
            it is built (a recipe's ``--dry-run``), not at its first use after training.
    """

    def __init__(self, kind: str, contract: Mapping[str, tuple[str, ...]] | None = None):
        self.kind = kind
        self.contract = dict(contract or {})
        self._entries: dict[str, Entry] = {}

    # -- registration ---------------------------------------------------------------
    def register(self, name: str, obj: Callable[..., Any] | None = None):
        """Register ``obj`` under ``name``; usable as ``@REG.register("name")``."""
        if not isinstance(name, str) or not name:
            raise RegistryError(
                f"{self.kind} names must be non-empty strings, got {name!r}; "
                f'use @{self.kind.upper()}S.register("my_name")'
            )

        def _do(o: Callable[..., Any]) -> Callable[..., Any]:
            if not callable(o):
                raise RegistryError(
                    f"{self.kind} '{name}': register a class or a factory function, not "
                    f"{type(o).__name__} object {o!r} (build calls it with the recipe's "
                    f"keywords)"
                )
            module = getattr(o, "__module__", "?")
            old = self._entries.get(name)
            # the same qualified name again is a module re-executed (reloaded), and the
            # newer object wins; not for one made inside a function (a factory's classes
            # and a module's lambdas share theirs: the second silently replaced the first,
            # audit IA)
            made_inside = "<" in _qualname(o)
            if (
                old is not None
                and old.obj is not o
                and (_qualname(old.obj) != _qualname(o) or made_inside)
            ):
                raise RegistryError(
                    f"{self.kind} '{name}' is already registered by {_qualname(old.obj)} "
                    f"(module {old.module}); {_qualname(o)} (module {module}) tries to "
                    f"register it again. Pick another name for one of them."
                )
            self._entries[name] = Entry(name, o, module)
            return o

        return _do if obj is None else _do(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and interactive work)."""
        self._entries.pop(name, None)

    @contextlib.contextmanager
    def registered(self, name: str, obj: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
        """``obj`` registered under ``name`` for the ``with`` block only (a test's or a
        notebook's component); what ``name`` named before is back at the end, an
        exception or not.

        Raises:
            RegistryError: as :meth:`register` (``name`` taken by another object).
        """
        before = self._entries.get(name)
        self.register(name, obj)
        try:
            yield obj
        finally:
            if before is None:
                self._entries.pop(name, None)
            else:
                self._entries[name] = before

    # -- lookup ---------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

    def entry(self, name: str) -> Entry:
        """The :class:`Entry` of ``name``; an unknown name lists what exists."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise RegistryError(self._unknown_message(name)) from None

    def get(self, name: str) -> Callable[..., Any]:
        """The registered class or factory."""
        return self.entry(name).obj

    def _unknown_message(self, name: object) -> str:
        avail = ordered_by_closeness(str(name), self._entries) if self._entries else []
        near = closest(str(name), self._entries, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        listing = ", ".join(avail) if avail else "(none registered)"
        failed = dict(PLUGIN_ERRORS)  # plugins installed but not loaded (audit BO)
        if failed:
            # the plugin whose error lists this name ("not registered: a, b") first
            named = re.compile(rf"(?<![\w.-]){re.escape(str(name))}(?![\w.-])")
            first = [p for p, err in failed.items() if named.search(err)]
            order = first + [p for p in failed if p not in first]
            said = "; ".join(f"{p}: {failed[p]}" for p in order)
            return (
                f"{self.kind} '{name}' is not registered{hint}; available: {listing}. "
                f"Plugin(s) that failed to load, whose parts are missing: {said}: fix the "
                f"plugin's error (`uvireid list` shows it)"
            )
        return (
            f"{self.kind} '{name}' is not registered{hint}; available: {listing} (a part "
            f"from another package appears once that package is installed: it registers "
            f"through the entry-point group 'uvireid.plugins')"
        )

    # -- signatures -----------------------------------------------------------------
    def signature(self, name: str) -> inspect.Signature:
        """The keywords ``build`` accepts for ``name``."""
        return _callable_signature(self.get(name))

    def defaults(self, name: str) -> dict[str, Any]:
        """Keyword defaults of ``name``'s constructor (required keywords are omitted)."""
        out: dict[str, Any] = {}
        for p in self.signature(name).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
                continue
            out[p.name] = p.default
        return out

    def required(self, name: str) -> list[str]:
        """Keywords of ``name``'s constructor that have no default."""
        return [
            p.name
            for p in self.signature(name).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]

    def check_kwargs(self, name: str, kwargs: Mapping[str, Any], where: str = "") -> None:
        """Raise :class:`RegistryError` if ``kwargs`` do not fit ``name``'s constructor."""
        sig = self.signature(name)
        params = sig.parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            accepted = None
        else:
            accepted = [
                p.name
                for p in params.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
        loc = f" (in {where})" if where else ""
        if accepted is not None:
            for key in kwargs:
                if key not in accepted:
                    near = closest(key, accepted, n=1)
                    hint = f"; did you mean '{near[0]}'?" if near else ""
                    valid = ", ".join(accepted) if accepted else "(it takes no keywords)"
                    raise RegistryError(
                        f"{self.kind} '{name}' has no keyword '{key}'{loc}{hint}; "
                        f"valid keywords: {valid}"
                    )
        for key, value in kwargs.items():
            p = params.get(key)
            if p is not None and _is_flag(p) and not _is_bool(value):
                # bool("false") is True: a flag given as text or a number would be read
                # silently as the opposite of what was meant
                raise RegistryError(
                    f"{self.kind} '{name}' keyword '{key}' is a flag{loc}: true or false, "
                    f"got {value!r} ({type(value).__name__})"
                )
        missing = [k for k in self.required(name) if k not in kwargs]
        if missing:
            raise RegistryError(
                f"{self.kind} '{name}' needs the keyword(s) {', '.join(missing)}{loc}; "
                f"signature: {name}{sig}"
            )

    # -- building -------------------------------------------------------------------
    def build(self, cfg: Mapping[str, Any] | str, **overrides: Any) -> Any:
        """Build a part from ``{"type": name, **kwargs}`` (or a bare name).

        Keyword arguments given here override those in ``cfg``.
        """
        if isinstance(cfg, str):
            cfg = {"type": cfg}
        if not isinstance(cfg, Mapping):
            raise RegistryError(
                f"a {self.kind} is configured as a mapping with a 'type' key, "
                f"e.g. {{type: {self.names()[0] if self._entries else 'name'}}}; got {cfg!r}"
            )
        kwargs = dict(cfg)
        if "type" not in kwargs:
            raise RegistryError(
                f"{self.kind} config {dict(cfg)!r} has no 'type'; "
                f"available: {', '.join(self.names())}"
            )
        name = kwargs.pop("type")
        kwargs.update(overrides)
        obj = self.get(name)
        self.check_kwargs(name, kwargs)
        try:
            built = obj(**kwargs)
        except UvireidError:
            raise
        except (ValueError, TypeError) as exc:
            # the keywords are the valid ones (checked above), so the constructor refused a
            # value: a plugin's plain ValueError gets the same one-line report as a
            # built-in part's ConfigError, with where it was raised for the plugin's author
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f" (raised at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})" if tb else ""
            raise ConfigError(
                f"{self.kind} {name!r} refused its settings {kwargs!r}: "
                f"{type(exc).__name__}: {exc}{where}"
            ) from exc
        self._check_contract(name, built)
        try:  # what it was built from, for provenance where the part has no `name`
            built._uvireid_spec = (name, dict(kwargs))
        except (AttributeError, TypeError):  # slots, a builtin: provenance uses the class
            pass
        return built

    def _check_contract(self, name: str, built: Any) -> None:
        """Refuse a built part without the methods of :attr:`contract`."""
        for method, args in self.contract.items():
            fn = getattr(built, method, None)
            what = f"{self.kind} '{name}' ({_qualname(self.get(name))})"
            need = f"a {self.kind} needs {method}({', '.join(args)})"
            if not callable(fn):
                raise RegistryError(f"{what} has no {method}() method; {need}")
            try:
                sig = inspect.signature(fn)
            except ValueError:  # no signature to read (a builtin): trusted
                continue
            try:
                sig.bind(*([None] * len(args)))
            except TypeError as exc:
                raise RegistryError(
                    f"{what}: {method}{sig} cannot be called with {len(args)} positional "
                    f"argument(s) ({exc}); {need}"
                ) from None


def _is_bool(value: Any) -> bool:
    """A Python or numpy bool (numpy is not imported for this)."""
    t = type(value)
    return isinstance(value, bool) or (t.__module__ == "numpy" and t.__name__ in ("bool", "bool_"))


def _is_flag(p: inspect.Parameter) -> bool:
    """Whether a constructor keyword takes exactly True or False: annotated ``bool`` (not
    ``bool | None``), or unannotated with a bool default."""
    ann = p.annotation
    if ann is bool or ann == "bool":
        return True
    return ann is inspect.Parameter.empty and isinstance(p.default, bool)


DATASETS = Registry("dataset")
BACKBONES = Registry("backbone", {"forward": ("x", "modality"), "extract": ("x", "modality")})
CLUSTERERS = Registry("clusterer", {"fit_predict": ("features",)})
ASSOCIATORS = Registry("associator", {"associate": ("feats_v", "labels_v", "feats_r", "labels_r")})
LOSSES = Registry("loss", {"forward": ("outputs", "targets")})
RERANKERS = Registry("reranker", {"rerank": ("query", "gallery")})
SAMPLERS = Registry("sampler", {"for_epoch": ("labels", "cams"), "rows": ()})
RECIPES = Registry("recipe")

#: every registry by the plural name used in ``uvireid list`` and in recipes' messages
REGISTRIES: dict[str, Registry] = {
    "datasets": DATASETS,
    "backbones": BACKBONES,
    "clusterers": CLUSTERERS,
    "associators": ASSOCIATORS,
    "losses": LOSSES,
    "rerankers": RERANKERS,
    "samplers": SAMPLERS,
    "recipes": RECIPES,
}

#: plugins that failed to load: entry-point name -> error message
PLUGIN_ERRORS: dict[str, str] = {}
_PLUGINS_LOADED = False


def load_plugins(force: bool = False) -> list[str]:
    """Import every entry point of the group ``uvireid.plugins``; returns their names.

    A plugin that fails to import is logged and recorded in :data:`PLUGIN_ERRORS`
    (``uvireid list`` shows it) instead of breaking ``import uvireid``.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED and not force:
        return []
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=PLUGIN_GROUP):
        before = {reg: dict(reg._entries) for reg in REGISTRIES.values()}
        try:
            target = ep.load()
            if callable(target) and not inspect.ismodule(target):
                target()
            loaded.append(ep.name)
        except Exception as exc:  # a broken plugin must not break the toolkit
            # all or nothing: the parts the failing module (or one it imported below it)
            # registered before failing are taken back: that module never finished
            # importing. A parent package's parts, complete, stay.
            mod = ep.value.split(":")[0].strip()
            dropped = []
            for reg, entries in before.items():
                for n, e in list(reg._entries.items()):
                    if n not in entries and (e.module == mod or e.module.startswith(mod + ".")):
                        dropped.append(n)
                        del reg._entries[n]
            msg = f"{type(exc).__name__}: {exc}"
            if dropped:
                msg += f" (not registered: {', '.join(sorted(dropped))})"
            PLUGIN_ERRORS[ep.name] = msg
            logger.warning("uvireid plugin %r (%s) failed to load: %s", ep.name, ep.value, msg)
    return loaded
