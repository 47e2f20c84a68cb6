"""Pseudo-label quality: hand-computed and direct scikit-learn values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from uvireid.errors import ProtocolError
from uvireid.evaluation import label_quality


def test_perfect_labels_score_one_whatever_the_names():
    q = label_quality([5, 5, 9, 9, 2], [0, 0, 1, 1, 7])
    for key in ("ari", "fmi", "ami", "v_measure", "homogeneity", "completeness"):
        assert q[key] == pytest.approx(1.0)
    assert q["num_clusters"] == 3 and q["num_outliers"] == 0 and q["outlier_fraction"] == 0


def test_hand_computed_fmi_and_ari():
    pred, gt = [0, 0, 1, 1], [0, 0, 0, 1]
    q = label_quality(pred, gt)
    # pairs together in pred: (0,1), (2,3); in gt: (0,1), (0,2), (1,2); both: (0,1)
    assert q["fmi"] == pytest.approx(1 / math.sqrt(2 * 3))
    # ARI = (index - expected) / (max - expected), index 1, expected 2*3/6, max (2+3)/2
    assert q["ari"] == pytest.approx((1 - 1) / (2.5 - 1))


def test_outliers_as_singletons_equal_direct_sklearn_on_relabelled_input():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 8, 200)
    pred = np.where(rng.random(200) < 0.8, gt, rng.integers(0, 8, 200))
    pred[rng.random(200) < 0.15] = -1
    q = label_quality(pred, gt)
    relabelled = pred.copy()
    n_out = int((pred == -1).sum())
    relabelled[pred == -1] = 1000 + np.arange(n_out)  # each outlier its own cluster
    assert q["ari"] == pytest.approx(skm.adjusted_rand_score(gt, relabelled))
    assert q["fmi"] == pytest.approx(skm.fowlkes_mallows_score(gt, relabelled))
    assert q["ami"] == pytest.approx(skm.adjusted_mutual_info_score(gt, relabelled))
    assert q["v_measure"] == pytest.approx(skm.v_measure_score(gt, relabelled))
    assert q["num_outliers"] == n_out and q["outlier_fraction"] == pytest.approx(n_out / 200)
    assert q["num_clusters"] == len(set(pred.tolist()) - {-1}) and q["num_scored"] == 200


def test_ignore_outliers_scores_the_clustered_instances_only():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 5, 100)
    pred = gt.copy()
    pred[:30] = -1
    q = label_quality(torch.as_tensor(pred), torch.as_tensor(gt), ignore_outliers=True)
    assert q["ari"] == pytest.approx(1.0) and q["num_scored"] == 70
    assert q["outlier_fraction"] == pytest.approx(0.3) and q["ignore_outliers"] is True
    assert label_quality(pred, gt)["ari"] < 1.0  # the same outliers as singletons cost


def test_all_outliers_ignored_gives_nan_and_bad_shapes_raise():
    q = label_quality([-1, -1, -1], [0, 1, 1], ignore_outliers=True)
    assert math.isnan(q["ari"]) and q["outlier_fraction"] == 1.0 and q["num_clusters"] == 0
    with pytest.raises(ProtocolError, match="same length"):
        label_quality([0, 1], [0, 1, 2])


def test_homogeneity_and_completeness_are_not_swapped():
    # pred splits every identity in two: every cluster is pure (homogeneity 1) but each
    # identity is spread over 2 equal clusters: completeness = 1 - H(K|C)/H(K) = 1 - 1/2
    q = label_quality([0, 1, 2, 3], [0, 0, 1, 1])
    assert q["homogeneity"] == pytest.approx(1.0)
    assert q["completeness"] == pytest.approx(0.5)
    assert q["v_measure"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 6, 120)
    pred = rng.integers(0, 9, 120)
    q = label_quality(pred, gt)
    assert q["homogeneity"] == pytest.approx(skm.homogeneity_score(gt, pred))
    assert q["completeness"] == pytest.approx(skm.completeness_score(gt, pred))
    assert not math.isclose(q["homogeneity"], q["completeness"])
