"""PGM: total progressive matching for any ratio, against the padded official scheme."""

from __future__ import annotations

import numpy as np
import pytest
from assoc_oracles import gaussian_modalities, pgm_padded

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
