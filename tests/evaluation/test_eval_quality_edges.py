"""Pseudo-label quality edge cases (mutation audit MB), against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from uvireid.errors import ProtocolError
from uvireid.evaluation.quality import label_quality, singletons_for_outliers


def test_singletons_for_outliers_numbers_new_labels_after_the_largest():
    out = singletons_for_outliers(np.array([-1, 3, -1, 0, -1]))
    assert out.tolist() == [4, 3, 5, 0, 6] and out.dtype == np.int64
    assert singletons_for_outliers(np.array([-1, -1])).tolist() == [0, 1]
    assert singletons_for_outliers(np.array([], dtype=np.int64)).tolist() == []


def test_label_quality_counts_and_ami_against_scikit_learn():
    """num_clusters excludes outliers, outlier_fraction is over all instances,
    num_scored counts what was scored; AMI (not NMI) and V-measure from scikit-learn on
    the relabelled input."""
    pred = np.array([0, 0, 1, -1, 1, 2, -1, 2, 2, 0])
    gt = np.array([1, 1, 2, 2, 2, 3, 3, 3, 1, 1])
    q = label_quality(pred, gt)
    assert q["num_clusters"] == 3 and q["num_outliers"] == 2
    assert q["outlier_fraction"] == pytest.approx(0.2) and q["num_scored"] == 10
    relab = np.array([0, 0, 1, 3, 1, 2, 4, 2, 2, 0])
    assert q["ami"] == pytest.approx(skm.adjusted_mutual_info_score(gt, relab))
    assert q["ami"] != pytest.approx(skm.normalized_mutual_info_score(gt, relab))
    hom, com, v = skm.homogeneity_completeness_v_measure(gt, relab)
    assert (q["homogeneity"], q["completeness"], q["v_measure"]) == pytest.approx((hom, com, v))
    qi = label_quality(pred, gt, ignore_outliers=True)
    assert qi["num_scored"] == 8 and qi["outlier_fraction"] == pytest.approx(0.2)
    keep = pred >= 0
    assert qi["ari"] == pytest.approx(skm.adjusted_rand_score(gt[keep], pred[keep]))


def test_label_quality_with_no_instance_raises():
    with pytest.raises(ProtocolError, match="no labels"):
        label_quality([], [])
