"""Closest-match suggestions for error messages ("did you mean ...?")."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Candidates ordered by similarity to ``name`` (best first), at most ``n`` close ones;
    letter case does not count (``SYSU-ALL`` is close to ``sysu-all``)."""
    cands = sorted(set(candidates))
    by_lower: dict[str, str] = {}
    for c in cands:
        by_lower.setdefault(c.lower(), c)
    # str(): a YAML key read as a number (`reranker: {type: cmfp, 1: 3}`) is compared as
    # text, not an AttributeError in the middle of an error message (audit OG)
    key = str(name).lower()
    scored = []
    for c in by_lower:  # get_close_matches' filters, ties to the alphabetically first
        m = difflib.SequenceMatcher(None, c, key)  # as get_close_matches: not symmetric
        if m.real_quick_ratio() >= 0.5 and m.quick_ratio() >= 0.5 and m.ratio() >= 0.5:
            scored.append((-m.ratio(), c))
    return [by_lower[c] for _, c in sorted(scored)[:n]]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` or an empty string when nothing is close."""
    best = closest(name, candidates, n=1)
    return f"; did you mean '{best[0]}'?" if best else ""


def ordered_by_closeness(name: str, candidates: Iterable[str]) -> list[str]:
    """All candidates, the close ones first (best first), then the rest alphabetically."""
    cands = sorted(set(candidates))
    key = str(name).lower()  # as closest(): the candidate first (get_close_matches' order)
    ratio = {c: difflib.SequenceMatcher(None, c.lower(), key).ratio() for c in cands}
    return sorted(cands, key=lambda c: (-round(ratio[c], 6), c))
