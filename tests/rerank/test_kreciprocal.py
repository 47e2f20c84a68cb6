"""k-reciprocal re-ranking against Zhong et al.'s reference loops (rerank_oracles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rerank_oracles import sq_dist, zhong_re_ranking

from uvireid.rerank import KReciprocal, k_reciprocal_distance, re_ranking
from uvireid.rerank.kreciprocal import round_half_even


def _dists(q: np.ndarray, g: np.ndarray):
    """Plain Euclidean q-g, q-q, g-g, the self blocks exactly symmetric."""
    qg = np.sqrt(np.maximum(sq_dist(q, g), 0))
    qq = np.sqrt(np.maximum(sq_dist(q, q), 0))
    gg = np.sqrt(np.maximum(sq_dist(g, g), 0))
    return qg, (qq + qq.T) / 2, (gg + gg.T) / 2


@pytest.mark.parametrize(
    "nq,ng,k1,k2,lam",
    [(40, 30, 20, 6, 0.3), (50, 25, 7, 3, 0.3), (30, 30, 13, 1, 0.5), (20, 15, 4, 2, 0.0)],
)
def test_kreciprocal_equals_reference_loops(clustered, nq, ng, k1, k2, lam):
    q, g = clustered(nq, ng, 8, seed=nq + k1)
    qg, qq, gg = _dists(q, g)
    ref = zhong_re_ranking(qg, qq, gg, k1, k2, lam)
    out = re_ranking(qg, qq, gg, k1, k2, lam)
    assert out.dtype == np.float32 and out.shape == (nq, ng)
    assert np.abs(out - ref).max() < 1e-5


def test_kreciprocal_ties_and_duplicate_features(clustered):
    q, g = clustered(25, 20, 6, seed=1)
    g[3] = g[4] = g[11]  # exact duplicates: tied distances everywhere they appear
    q[0] = q[5]
    q[7] = g[2]
    qg, qq, gg = _dists(q, g)
    ref = zhong_re_ranking(qg, qq, gg, 6, 3)
    out = re_ranking(qg, qq, gg, 6, 3)
    assert np.abs(out - ref).max() < 1e-5


def test_kreciprocal_k_larger_than_the_sets_and_a_single_query(clustered):
    q, g = clustered(1, 7, 4, seed=2)
    qg, qq, gg = _dists(q, g)
    ref = zhong_re_ranking(qg, qq, gg, 20, 6)
    out = re_ranking(qg, qq, gg, 20, 6)
    assert np.abs(out - ref).max() < 1e-5


def test_kreciprocal_from_features_equals_distance_api(clustered):
    q, g = clustered(35, 20, 8, seed=3)
    qg, qq, gg = _dists(q, g)
    want = re_ranking(qg, qq, gg)
    got = KReciprocal().rerank(q, g)
    assert np.abs(got - want).max() < 1e-5
    t = k_reciprocal_distance(torch.from_numpy(q), torch.from_numpy(g))
    assert isinstance(t, torch.Tensor) and np.abs(t.numpy() - want).max() < 1e-5


def test_round_half_even_matches_numpy():
    for k1 in range(0, 40):
        assert round_half_even(k1 / 2) == int(np.around(k1 / 2))
    assert round_half_even(13 / 2) == 6 and round_half_even(15 / 2) == 8
