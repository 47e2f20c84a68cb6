"""Invariants every associator keeps: shapes, -1 handling, totality, bad input, determinism."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from assoc_oracles import gaussian_modalities

import uvireid  # noqa: F401  (registers the parts)
from uvireid.associations import otla, pgm
from uvireid.errors import FeatureFileError
from uvireid.registry import ASSOCIATORS
from uvireid.types import CrossLabels

NAMES = ["otla_dual", "pgm", "mbccm"]


def _data(seed=0, ids_v=6, ids_r=4, per_id=5, outliers=3):
    fv, gv, fr, gr = gaussian_modalities(seed=seed, ids=max(ids_v, ids_r), per_id=per_id)
    kv, kr = gv < ids_v, gr < ids_r
    fv, gv, fr, gr = fv[kv], gv[kv].copy(), fr[kr], gr[kr].copy()
    gv[:outliers] = -1
    gr[:outliers] = -1
    return fv, gv, fr, gr


def _check_invariants(out: CrossLabels, lv: np.ndarray, lr: np.ndarray):
    nv, nr = len(lv), len(lr)
    assert isinstance(out, CrossLabels)
    assert out.labels_in_v.shape == (nv + nr,) and out.labels_in_r.shape == (nv + nr,)
    assert out.labels_in_v.dtype == np.int64 and out.labels_in_r.dtype == np.int64
    assert out.num_visible == nv
    np.testing.assert_array_equal(out.labels_in_v[:nv], lv)  # own labels kept as given
    np.testing.assert_array_equal(out.labels_in_r[nv:], lr)
    # outliers have no label anywhere; every clustered instance has a cross label
    assert (out.labels_in_r[:nv][lv < 0] == -1).all() and (out.labels_in_v[nv:][lr < 0] == -1).all()
    assert (out.labels_in_r[:nv][lv >= 0] >= 0).all() and (out.labels_in_v[nv:][lr >= 0] >= 0).all()
    # cross labels are existing cluster ids of the other modality
    assert set(out.labels_in_r[:nv][lv >= 0].tolist()) <= set(lr[lr >= 0].tolist())
    assert set(out.labels_in_v[nv:][lr >= 0].tolist()) <= set(lv[lv >= 0].tolist())
    assert out.matches.ndim == 2 and out.matches.shape[1] == 2 and out.matches.dtype == np.int64
    assert out.has_cross_links
    assert set(out.matches[:, 0].tolist()) <= set(lv.tolist())
    assert set(out.matches[:, 1].tolist()) <= set(lr.tolist())
    assert not out.unified


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ids_v,ids_r", [(6, 4), (4, 6), (1, 1), (1, 5), (12, 2)])
def test_invariants_for_any_ratio_and_single_clusters(name, ids_v, ids_r):
    fv, gv, fr, gr = _data(ids_v=ids_v, ids_r=ids_r, outliers=1)
    out = ASSOCIATORS.build({"type": name}).associate(fv, gv, fr, gr)
    _check_invariants(out, gv, gr)


@pytest.mark.parametrize("name", NAMES)
def test_label_spaces_with_gaps_keep_their_ids(name):
    fv, gv, fr, gr = _data(ids_v=5, ids_r=5, outliers=2)
    gv = np.where(gv >= 0, gv * 3 + 1, -1)  # ids 1, 4, 7, 10, 13
    gr = np.where(gr >= 0, gr + 20, -1)
    out = ASSOCIATORS.build({"type": name}).associate(fv, gv, fr, gr)
    _check_invariants(out, gv, gr)
    assert out.num_clusters_v == 14 and out.num_clusters_r == 25
    assert out.match_mask().shape == (14, 25)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("empty", ["visible", "infrared", "both"])
def test_a_modality_without_clusters_gives_no_cross_labels(name, empty, caplog):
    fv, gv, fr, gr = _data()
    if empty in ("visible", "both"):
        gv = np.full_like(gv, -1)
    if empty in ("infrared", "both"):
        gr = np.full_like(gr, -1)
    with caplog.at_level(logging.WARNING):
        out = ASSOCIATORS.build({"type": name}).associate(fv, gv, fr, gr)
    nv = len(gv)
    assert not out.has_cross_links and out.matches.shape == (0, 2)
    assert (out.labels_in_r[:nv] == -1).all() and (out.labels_in_v[nv:] == -1).all()
    np.testing.assert_array_equal(out.labels_in_v[:nv], gv)
    np.testing.assert_array_equal(out.labels_in_r[nv:], gr)
    assert "no cluster in the" in out.info["policy"] and "no cluster in the" in caplog.text


@pytest.mark.parametrize("name", NAMES)
def test_no_images_in_a_modality(name):
    fv, gv, fr, gr = _data()
    out = ASSOCIATORS.build({"type": name}).associate(fv[:0], gv[:0], fr, gr)
    assert out.labels_in_v.shape == (len(gr),) and not out.has_cross_links


@pytest.mark.parametrize("name", NAMES)
def test_nan_features_are_refused_before_any_solver(name, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a solver was reached")

    monkeypatch.setattr(otla, "sinkhorn_log", boom)
    monkeypatch.setattr(pgm, "progressive_matching", boom)
    monkeypatch.setattr("uvireid.associations.mbccm.bilateral_matching", boom)
    fv, gv, fr, gr = _data()
    fr = fr.copy()
    fr[2, 3] = np.nan
    with pytest.raises(FeatureFileError, match="infrared: features hold NaN or inf in 1 row"):
        ASSOCIATORS.build({"type": name}).associate(fv, gv, fr, gr)


@pytest.mark.parametrize("name", NAMES)
def test_bad_labels_are_refused(name):
    fv, gv, fr, gr = _data()
    part = ASSOCIATORS.build({"type": name})
    with pytest.raises(FeatureFileError, match="one entry per feature row"):
        part.associate(fv, gv[:-1], fr, gr)
    with pytest.raises(FeatureFileError, match="whole numbers"):
        part.associate(fv, gv + 0.5, fr, gr)
    with pytest.raises(FeatureFileError, match="d=32 but infrared d=8"):
        part.associate(fv, gv, fr[:, :8], gr)
    # a plugin clusterer's sparse ids: the label spaces asked for terabytes (audit H)
    far = np.where(gr >= 0, gr + 2**40, -1)
    with pytest.raises(
        FeatureFileError,
        match=r"infrared cluster id 10995116277\d\d is not below the number of instances",
    ):
        part.associate(fv, gv, fr, far)


@pytest.mark.parametrize("name", NAMES)
def test_output_is_deterministic_and_the_same_for_torch_input(name):
    fv, gv, fr, gr = _data(seed=3, ids_v=7, ids_r=5)
    part = ASSOCIATORS.build({"type": name})
    a = part.associate(fv, gv, fr, gr)
    b = part.associate(torch.from_numpy(fv), torch.from_numpy(gv), torch.from_numpy(fr), gr)
    for x, y in (
        (a.labels_in_v, b.labels_in_v),
        (a.labels_in_r, b.labels_in_r),
        (a.matches, b.matches),
    ):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", NAMES)
def test_cmfp_refinement_runs_before_association(name, monkeypatch):
    import uvireid.rerank.cmfp as cmfp

    calls = []
    real = cmfp.propagate

    def spy(q, g, k, **kw):
        calls.append((q.shape[0], g.shape[0], k))
        return real(q, g, k, **kw)

    monkeypatch.setattr(cmfp, "propagate", spy)
    fv, gv, fr, gr = _data(outliers=2)
    out = ASSOCIATORS.build({"type": name, "k_tr": 8}).associate(fv, gv, fr, gr)
    # one propagation, on the clustered instances only, with k = k_tr
    assert calls == [(int((gv >= 0).sum()), int((gr >= 0).sum()), 8)]
    _check_invariants(out, gv, gr)
    assert out.info["k_tr"] == 8
