"""Cross-modality link precision against pair-by-pair counting."""

from __future__ import annotations

import numpy as np
import pytest
from assoc_oracles import gaussian_modalities, link_precision_loops
from sklearn import metrics as skm

from uvireid.associations.otla import OTLADual
from uvireid.associations.pgm import PGM
from uvireid.associations.quality import association_quality, link_precision
from uvireid.errors import ProtocolError
from uvireid.types import CrossLabels


@pytest.mark.parametrize("part", [OTLADual(), PGM()])
def test_link_precision_equals_pair_counting(part):
    fv, gv, fr, gr = gaussian_modalities(seed=2, ids=6, per_id=5, d=16, noise=1.5, shift=1.0)
    rng = np.random.default_rng(0)
    lv = np.where(rng.random(len(gv)) < 0.2, -1, rng.integers(0, 5, len(gv)))  # noisy
    lr = np.where(rng.random(len(gr)) < 0.2, -1, gr)
    out = part.associate(fv, lv, fr, lr)
    gt = np.concatenate([gv, gr]) * 7 + 3  # any identity ids
    got = link_precision(out, gt)
    (s1, t1), (s2, t2) = link_precision_loops(out.labels_in_v, out.labels_in_r, gt, len(gv))
    assert got["num_links_v2r"] == t1 and got["num_links_r2v"] == t2
    assert got["link_precision_v2r"] == pytest.approx(s1 / t1)
    assert got["link_precision_r2v"] == pytest.approx(s2 / t2)
    assert got["link_precision"] == pytest.approx((s1 + s2) / (t1 + t2))


def test_match_precision_counts_instance_pairs_of_matched_clusters():
    cross = CrossLabels(
        labels_in_v=np.array([0, 0, 1, -1, 0, 1]),
        labels_in_r=np.array([1, 1, 0, -1, 0, 1]),
        matches=np.array([[0, 1], [1, 0]]),
        num_visible=3,
        num_clusters_v=2,
        num_clusters_r=2,
    )
    gt = np.array([5, 6, 5, 9, 5, 5])
    q = link_precision(cross, gt)
    # (v0 -> r1): visible {0,1} x infrared {5}: ids (5,5) same, (6,5) not; (v1 -> r0):
    # visible {2} x infrared {4}: same  -> 2 of 3
    assert q["match_precision"] == pytest.approx(2 / 3) and q["num_match_links"] == 3


def test_association_quality_reports_every_view():
    fv, gv, fr, gr = gaussian_modalities(seed=1, ids=5, per_id=6, d=16)
    out = PGM().associate(fv, gv, fr, gr)
    q = association_quality(out, np.concatenate([gv, gr]))
    assert set(q) == {"visible", "infrared", "cross_v", "cross_r", "links"}
    assert q["cross_v"]["ari"] == pytest.approx(1.0) and q["links"]["link_precision"] == 1.0
    with pytest.raises(ProtocolError, match="expected"):
        link_precision(out, gv)


def _ari(pred, gt):
    pred = np.asarray(pred).copy()
    out = pred < 0
    pred[out] = 10_000 + np.arange(out.sum())  # each outlier its own cluster
    return skm.adjusted_rand_score(gt, pred)


def test_association_quality_scores_each_view_on_its_own_labels():
    # visible 0..5, infrared 6..11; the two label spaces disagree on purpose
    lv = np.array([0, 0, 1, 1, 2, -1, 0, 1, 1, 2, 2, 0])
    lr = np.array([1, 0, 0, 2, 2, 1, 0, 0, 1, 1, 2, -1])
    gt = np.array([7, 7, 8, 8, 9, 9, 7, 7, 8, 8, 9, 9])
    cross = CrossLabels(
        labels_in_v=lv,
        labels_in_r=lr,
        matches=np.zeros((0, 2), int),
        num_visible=6,
        num_clusters_v=3,
        num_clusters_r=3,
    )
    q = association_quality(cross, gt)
    assert q["visible"]["ari"] == pytest.approx(_ari(lv[:6], gt[:6]))
    assert q["infrared"]["ari"] == pytest.approx(_ari(lr[6:], gt[6:]))
    assert q["cross_v"]["ari"] == pytest.approx(_ari(lv, gt))
    assert q["cross_r"]["ari"] == pytest.approx(_ari(lr, gt))
    # the views differ, so a swapped view cannot pass
    assert _ari(lv[:6], gt[:6]) != pytest.approx(_ari(lr[:6], gt[:6]))
    assert _ari(lr[6:], gt[6:]) != pytest.approx(_ari(lv[6:], gt[6:]))
    assert _ari(lv, gt) != pytest.approx(_ari(lr, gt))
