"""PGM: total progressive matching for any ratio, against the padded official scheme."""

from __future__ import annotations

import numpy as np
import pytest
from assoc_oracles import gaussian_modalities, pgm_padded
from scipy.optimize import linear_sum_assignment

from uvireid.associations.pgm import PGM, progressive_matching


@pytest.mark.parametrize("k_v,k_r", [(3, 10), (10, 10), (23, 10), (50, 10), (10, 23), (10, 50)])
def test_every_cluster_of_both_sides_is_matched_for_any_ratio(k_v, k_r):
    rng = np.random.default_rng(k_v * 100 + k_r)
    cost = np.exp(-rng.uniform(-1, 1, size=(k_v, k_r)))
    v2r, r2v, rounds = progressive_matching(cost)
    assert (v2r >= 0).all() and (v2r < k_r).all()
    assert (r2v >= 0).all() and (r2v < k_v).all()
    assert rounds == -(-max(k_v, k_r) // min(k_v, k_r))
    small = r2v if k_v >= k_r else v2r  # the smaller side: first round, one-to-one
    assert len(set(small.tolist())) == len(small)
    # the smaller side's partner maps back to it
    large_of = v2r if k_v >= k_r else r2v
    assert (large_of[small] == np.arange(len(small))).all()


@pytest.mark.parametrize("k_v,k_r", [(7, 7), (13, 5), (5, 13), (9, 2), (1, 1), (1, 6)])
def test_matching_equals_the_padded_official_scheme(k_v, k_r):
    rng = np.random.default_rng(k_v + 7 * k_r)
    cost = np.exp(-rng.uniform(-1, 1, size=(k_v, k_r)))
    v2r, r2v, _ = progressive_matching(cost)
    ref_v2r, ref_r2v = pgm_padded(cost)
    assert v2r.tolist() == [ref_v2r[i] for i in range(k_v)]
    assert r2v.tolist() == [ref_r2v[i] for i in range(k_r)]


@pytest.mark.parametrize("ids_v,ids_r", [(3, 10), (10, 10), (23, 10), (50, 10), (10, 50)])
def test_pgm_associator_covers_every_instance(ids_v, ids_r):
    ids = max(ids_v, ids_r)
    fv, gv, fr, gr = gaussian_modalities(seed=ids_v + ids_r, ids=ids, per_id=3, d=32)
    keep_v, keep_r = gv < ids_v, gr < ids_r
    out = PGM().associate(fv[keep_v], gv[keep_v], fr[keep_r], gr[keep_r])
    nv = int(keep_v.sum())
    assert (out.labels_in_r[:nv] >= 0).all() and (out.labels_in_v[nv:] >= 0).all()
    assert out.labels_in_r.max() < ids_r and out.labels_in_v.max() < ids_v
    assert out.info["rounds"] == -(-max(ids_v, ids_r) // min(ids_v, ids_r))
    # where identities exist on both sides, the easy Gaussian case is matched correctly
    both = gv[keep_v] < min(ids_v, ids_r)
    np.testing.assert_array_equal(out.labels_in_r[:nv][both], gv[keep_v][both])


def test_pgm_matches_on_the_exp_minus_cosine_cost():
    """PGM's cost is exp(-cos) of the unit centroids (peers.md Sec. PGM, item 2); on this
    draw the Hungarian optimum of exp(-S) differs from that of -S (or 1 - S)."""
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    ids = np.arange(4)
    out = PGM().associate(a, ids, b, ids)
    _, v2r = linear_sum_assignment(np.exp(-(a @ b.T)))
    assert not np.array_equal(v2r, linear_sum_assignment(-(a @ b.T))[1])  # the draw matters
    np.testing.assert_array_equal(out.labels_in_r[:4], v2r)
    r2v = np.empty(4, dtype=np.int64)
    r2v[v2r] = ids
    np.testing.assert_array_equal(out.labels_in_v[4:], r2v)
