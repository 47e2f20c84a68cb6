"""MBCCM's many-to-many mask against the official loops."""

from __future__ import annotations

import numpy as np
import pytest
from assoc_oracles import gaussian_modalities, mbccm_loops

from uvireid.associations.mbccm import MBCCM, bilateral_matching


@pytest.mark.parametrize(
    "k_r,k_v", [(5, 5), (4, 11), (11, 4), (3, 20), (20, 3), (1, 1), (1, 7), (7, 1)]
)
def test_mask_equals_the_official_loops(k_r, k_v):
    rng = np.random.default_rng(k_r * 31 + k_v)
    dist = rng.uniform(0, 4, size=(k_r, k_v))
    mask, r2v, v2r = bilateral_matching(dist)
    np.testing.assert_array_equal(mask, mbccm_loops(dist).astype(bool))
    # every cluster of both sides has its primary partner inside the mask
    assert mask[np.arange(k_r), r2v].all() and mask[v2r, np.arange(k_v)].all()


def test_mask_with_ties_equals_the_official_loops():
    dist = np.round(np.random.default_rng(0).uniform(0, 4, size=(6, 13)), 1)  # many ties
    np.testing.assert_array_equal(bilateral_matching(dist)[0], mbccm_loops(dist).astype(bool))


def test_associator_returns_the_mask_as_matches():
    fv, gv, fr, gr = gaussian_modalities(seed=1, ids=8, per_id=4, d=32)
    keep = gr < 5
    out = MBCCM().associate(fv, gv, fr[keep], gr[keep])
    mask = out.match_mask()
    assert mask.shape == (8, 5)
    assert mask.any(1).all() and mask.any(0).all()
    cv = np.stack([fv[gv == c].astype(np.float64).mean(0) for c in range(8)])
    cr = np.stack([fr[keep][gr[keep] == c].astype(np.float64).mean(0) for c in range(5)])
    cv /= np.linalg.norm(cv, axis=1, keepdims=True)
    cr /= np.linalg.norm(cr, axis=1, keepdims=True)
    dist = ((cr[:, None] - cv[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(mask, mbccm_loops(dist).astype(bool).T)
    assert out.info["num_matches"] == int(mask.sum())
