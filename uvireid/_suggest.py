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
        m = _matcher(key, c)
        if m.real_quick_ratio() >= 0.5 and m.quick_ratio() >= 0.5 and m.ratio() >= 0.5:
            scored.append((-m.ratio(), c))
    return [by_lower[c] for _, c in sorted(scored)[:n]]


def _matcher(key: str, candidate: str) -> difflib.SequenceMatcher:
    """The matcher of lower-cased ``key`` against ``candidate``, the candidate first as in
    ``difflib.get_close_matches`` (the ratio is not symmetric): one order for the
    suggestion and the 'available' list, so that they agree."""
    return difflib.SequenceMatcher(None, candidate.lower(), key)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` or an empty string when nothing is close."""
    best = closest(name, candidates, n=1)
    return f"; did you mean '{best[0]}'?" if best else ""


def ordered_by_closeness(name: str, candidates: Iterable[str]) -> list[str]:
    """All candidates, the close ones first (best first), then the rest alphabetically."""
    cands = sorted(set(candidates))
    key = str(name).lower()
    ratio = {c: _matcher(key, c).ratio() for c in cands}
    return sorted(cands, key=lambda c: (-round(ratio[c], 6), c))
