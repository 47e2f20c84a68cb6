"""CMRR against MULT/SALCR's ``re_ranking_cross`` re-stated with loops (rerank_oracles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rerank_oracles import mult_re_ranking_cross

from uvireid.rerank import CMRR, cmrr_distance


@pytest.mark.parametrize("nq,ng,k", [(40, 25, 15), (30, 30, 8), (60, 20, 5), (5, 7, 15)])
def test_cmrr_equals_reference_loops(clustered, nq, ng, k):
    q, g = clustered(nq, ng, 8, seed=nq + k)
    ref = mult_re_ranking_cross(q, g, k, 0.1)
    out = cmrr_distance(q, g, k, 0.1)
    assert out.shape == (nq, ng) and out.dtype == np.float64
    assert np.abs(out - ref).max() < 1e-4


def test_cmrr_float16_reference_differs_only_by_its_precision(clustered):
    q, g = clustered(40, 25, 8, seed=9)
    with np.errstate(all="ignore"):
        ref16 = mult_re_ranking_cross(q, g, 15, 0.1, store=np.float16)
    out = cmrr_distance(q, g, 15, 0.1)
    assert np.abs(out - ref16).max() < 5e-2


def test_cmrr_duplicates_ties(clustered):
    q, g = clustered(30, 20, 6, seed=4)
    g[1] = g[2] = g[8]
    q[3] = q[4]
    ref = mult_re_ranking_cross(q, g, 6, 0.1)
    out = cmrr_distance(q, g, 6, 0.1)
    assert np.abs(out - ref).max() < 1e-4


def test_cmrr_single_query_is_finite_where_reference_gives_nan(clustered):
    q, g = clustered(1, 6, 4, seed=5)
    with np.errstate(all="ignore"):
        ref = mult_re_ranking_cross(q, g, 15, 0.1)
    assert np.isnan(ref).all()  # 0/0 in the query-query column normalisation
    out = CMRR().rerank(torch.from_numpy(q).float(), torch.from_numpy(g).float())
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
