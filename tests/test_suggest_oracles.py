"""'Did you mean' breaks a tie towards the first candidate: ``k`` given to the
k-reciprocal or AIM re-ranker, whose neighbourhood size is ``k1`` (``k2`` the query
expansion, equally close by difflib's ratio), is answered 'k1'."""

from __future__ import annotations

import difflib

import numpy as np
import pytest

import uvireid  # noqa: F401
from uvireid._suggest import closest, ordered_by_closeness
from uvireid.errors import RegistryError
from uvireid.registry import CLUSTERERS, RERANKERS
from uvireid.rerank import rerank


@pytest.mark.parametrize("method", ["kreciprocal", "aim"])
def test_k_suggests_k1_not_k2(method):
    q = np.eye(3, 4, dtype=np.float32)
    with pytest.raises(RegistryError) as err:
        rerank(q, q, method, k=8)
    msg = str(err.value)
    # k1 and k2 are equally close to "k" by difflib's own ratio ...
    assert (
        difflib.SequenceMatcher(None, "k", "k1").ratio()
        == difflib.SequenceMatcher(None, "k", "k2").ratio()
    )
    # ... so the tie should go to the first (the neighbourhood size), not the last
    assert "did you mean 'k1'?" in msg, msg


def test_close_unique_suggestion_unchanged():
    with pytest.raises(RegistryError, match="did you mean 'k'"):
        RERANKERS.build({"type": "cmfp", "kk": 3})


# closest() offers the candidates difflib.get_close_matches offers (its SequenceMatcher is
# not symmetric: the candidate is its first sequence); only the tie order differs
def _reference_close(name, cands, n=3):
    # independent: difflib's own implementation, ties broken alphabetically
    by = {c.lower(): c for c in sorted(set(cands), reverse=True)}
    s = difflib.SequenceMatcher()
    s.set_seq2(name.lower())
    scored = []
    for c in by:
        s.set_seq1(c)
        if s.real_quick_ratio() >= 0.5 and s.quick_ratio() >= 0.5 and s.ratio() >= 0.5:
            scored.append((-s.ratio(), c))
    return [by[c] for _, c in sorted(scored)[:n]]


def test_same_candidates_as_get_close_matches_small():
    assert set(closest("ab", ["bacbc"])) == set(
        difflib.get_close_matches("ab", ["bacbc"], cutoff=0.5)
    )


def test_loss_name_typo():
    cands = [
        "alternate_cross_contrast",
        "cluster_contrast",
        "dual_cluster_contrast",
        "part_contrast",
    ]
    q = "alternatd_cross_contrast"
    assert set(closest(q, cands)) == set(difflib.get_close_matches(q, cands, n=3, cutoff=0.5))
    assert closest(q, cands) == _reference_close(q, cands)


# the 'available: ...' list (close names first) agrees with the suggestion
@pytest.mark.parametrize(
    ("typo", "cands"),
    [
        ("hnsra", ["kmeans", "hdbscan", "dbscan"]),
        ("pmdp", ["aim", "cmfp", "cmrr", "kreciprocal"]),
        ("mdcre", ["paired", "matched", "identity"]),
    ],
)
def test_the_best_listed_is_get_close_matches_best(typo, cands):
    best = difflib.get_close_matches(typo, cands, n=1, cutoff=0.5)  # independent oracle
    assert best, "the oracle finds a close name"
    assert ordered_by_closeness(typo, cands)[0] == best[0]


@pytest.mark.parametrize(("registry", "typo"), [(CLUSTERERS, "hnsra"), (RERANKERS, "pmdp")])
def test_the_suggested_name_is_listed_first(registry, typo):
    with pytest.raises(RegistryError) as err:
        registry.build({"type": typo})
    msg = str(err.value)
    suggested = msg.split("did you mean '")[1].split("'")[0]
    listed = msg.split("available: ")[1].split(" (")[0].split(", ")
    assert listed[0] == suggested, msg
