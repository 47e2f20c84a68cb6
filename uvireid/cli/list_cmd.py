"""``uvireid list``: every registry with its parts, defining module and one-line doc."""

from __future__ import annotations

import argparse

from uvireid.registry import PLUGIN_ERRORS, REGISTRIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list",
        help="list every registered part (datasets, backbones, ..., recipes)",
        description="Print every registry with its parts, the module that defines each "
        "part and its one-line description. Plugins installed through the entry-point "
        "group 'uvireid.plugins' are included.",
        epilog="Examples:\n  uvireid list\n  uvireid list rerankers",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "registry",
        nargs="?",
        choices=sorted(REGISTRIES),
        help="only this registry",
    )
    p.set_defaults(func=run)


def format_registries(only: str | None = None) -> str:
    lines: list[str] = []
    for plural, reg in REGISTRIES.items():
        if only and plural != only:
            continue
        lines.append(f"{plural} ({len(reg)})")
        entries = [reg.entry(n) for n in reg.names()]
        if not entries:
            lines.append("  (none registered)")
        width = max((len(e.name) for e in entries), default=0)
        mwidth = max((len(e.module) for e in entries), default=0)
        for e in entries:
            lines.append(f"  {e.name:<{width}}  {e.module:<{mwidth}}  {e.summary}".rstrip())
        lines.append("")
    if PLUGIN_ERRORS:  # also under `uvireid list rerankers`: the part may be missing
        lines.append("plugins that failed to load")
        for name, err in sorted(PLUGIN_ERRORS.items()):
            lines.append(f"  {name}: {err}")
    return "\n".join(lines).rstrip() + "\n"


def run(args: argparse.Namespace) -> int:
    import uvireid  # noqa: F401  (registers built-in parts and plugins)

    print(format_registries(args.registry), end="")
    return 0
