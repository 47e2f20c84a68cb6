"""Mutation audit OH: pseudo-label / association quality and the label containers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from uvireid.associations.quality import association_quality, link_precision
from uvireid.errors import ConfigError, ProtocolError
from uvireid.evaluation.quality import label_quality
from uvireid.losses import EpochLabels
from uvireid.losses.contract import require_parts
from uvireid.types import CrossLabels


def test_label_quality_refuses_a_2d_gt_of_the_same_length():
    """gt (2, 2) has len 2 like pred: a (N,) check on pred alone let it reach sklearn."""
    with pytest.raises(ProtocolError, match="same length"):
        label_quality([0, 1], [[0, 1], [1, 0]])


def test_label_quality_reports_ignore_outliers_as_a_bool():
    q = label_quality([0, 0, 1, -1], [3, 3, 4, 4], ignore_outliers=1)
    assert q["ignore_outliers"] is True
    assert q["ari"] == pytest.approx(skm.adjusted_rand_score([3, 3, 4], [0, 0, 1]))


def test_num_visible_one_past_the_labels_is_refused():
    cross = CrossLabels(
        np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]), np.array([[0, 0]]), num_visible=5
    )
    with pytest.raises(ProtocolError, match="num_visible"):
        link_precision(cross, np.array([1, 1, 2, 2]))


def test_association_quality_without_infrared_instances_scores_the_visible_ones():
    """num_visible = N (no infrared image): no 'infrared' view, nothing raised."""
    lv = np.array([0, 0, 1, -1])
    gt = np.array([3, 3, 4, 4])
    cross = CrossLabels(lv, np.full(4, -1), np.zeros((0, 2), int), num_visible=4)
    q = association_quality(cross, gt)
    assert "infrared" not in q
    relab = np.array([0, 0, 1, 2])  # the outlier as a singleton
    assert q["visible"]["ari"] == pytest.approx(skm.adjusted_rand_score(gt, relab))
    assert q["links"]["num_links_v2r"] == 0


def test_link_precision_refuses_a_2d_gt_with_n_rows():
    cross = CrossLabels(
        np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]), np.array([[0, 0]]), num_visible=2
    )
    with pytest.raises(ProtocolError, match="expected"):
        link_precision(cross, np.array([[1], [1], [2], [2]]))


def test_unify_without_num_visible_is_refused():
    cross = CrossLabels(np.array([0, -1]), np.array([-1, 0]), np.array([[0, 0]]))
    with pytest.raises(ValueError, match="num_visible"):
        cross.unify()


def test_require_parts_names_every_missing_pair():
    with pytest.raises(ConfigError, match=r"\('a', 'r'\), \('r', 'v'\)"):
        require_parts({("v", "v"): torch.zeros(1)}, [("a", "r"), ("v", "v"), ("r", "v")], "X")


def test_epoch_labels_have_cross_terms_unless_said():
    z = np.zeros(2, dtype=np.int64)
    lab = EpochLabels(
        vis_in_v=z, vis_in_r=z, ir_in_r=z, ir_in_v=z, init_v=z, init_r=z, num_v=1, num_r=1
    )
    assert lab.has_cross is True and lab.matches is None and lab.info == {}


def test_link_precision_and_the_match_mask_refuse_negative_match_ids():
    """A match (-1, 0) (e.g. a padding sentinel) is refused, naming it (numpy's wrap-around
    read it as the last visible cluster: link_precision counted cluster 1's links and
    match_mask set its row)."""
    cross = CrossLabels(
        np.array([0, 1, 1, 1]), np.array([0, 0, 0, 0]), np.array([[-1, 0]]), num_visible=2
    )
    with pytest.raises(ProtocolError, match="negative cluster id"):
        link_precision(cross, np.array([1, 2, 2, 2]))
    with pytest.raises(ValueError, match="negative cluster id"):
        cross.match_mask()


def test_link_precision_checks_the_infrared_labels_length():
    """labels_in_r shorter than labels_in_v: a ProtocolError naming the mismatch (gt was
    checked against labels_in_v only, and a bare IndexError followed)."""
    cross = CrossLabels(
        np.array([0, 0, 1, 1]), np.array([0, 0, 0]), np.array([[0, 0]]), num_visible=2
    )
    with pytest.raises(ProtocolError, match="labels_in_v has 4 entries and labels_in_r 3"):
        link_precision(cross, np.array([1, 1, 2, 2]))


def test_the_trainer_refuses_a_negative_match_in_a_unified_space_too():
    """An associator's unified labels with a match (-1, 0): a TrainingError naming the
    associator (CrossLabels' own refusal is a plain ValueError, and the bounds check of
    matches was for two label spaces only)."""
    from uvireid.engine.trainer import _check_cross_labels
    from uvireid.errors import TrainingError

    lab = np.array([0, 1, 0, 1])
    cl = CrossLabels(lab, lab, np.array([[-1, 0]]), unified=True, num_visible=2)
    with pytest.raises(TrainingError, match="plugin.*matches outside the clusters"):
        _check_cross_labels(cl, 2, 2, 2, 2, "plugin")
