"""'Did you mean' breaks a tie towards the first candidate: ``k`` given to the
k-reciprocal or AIM re-ranker, whose neighbourhood size is ``k1`` (``k2`` the query
expansion, equally close by difflib's ratio), is answered 'k1'."""

from __future__ import annotations

import difflib

import numpy as np
import pytest

import uvireid  # noqa: F401
from uvireid.errors import RegistryError
from uvireid.registry import RERANKERS
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
