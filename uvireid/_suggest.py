"""Closest-match suggestions for error messages ("did you mean ...?")."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Candidates ordered by similarity to ``name`` (best first), at most ``n`` close ones."""
    cands = sorted(set(candidates))
    return difflib.get_close_matches(name, cands, n=n, cutoff=0.5)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` or an empty string when nothing is close."""
    best = closest(name, candidates, n=1)
    return f"; did you mean '{best[0]}'?" if best else ""


def ordered_by_closeness(name: str, candidates: Iterable[str]) -> list[str]:
    """All candidates, the close ones first (best first), then the rest alphabetically."""
    cands = sorted(set(candidates))
    close = difflib.get_close_matches(name, cands, n=len(cands), cutoff=0.0)
    ratio = {c: difflib.SequenceMatcher(None, name, c).ratio() for c in close}
    return sorted(cands, key=lambda c: (-round(ratio.get(c, 0.0), 6), c))
