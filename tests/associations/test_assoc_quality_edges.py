"""Association quality edge cases (mutation audit MB), against pair counting by loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from uvireid.associations.quality import association_quality, link_precision
from uvireid.errors import ProtocolError
from uvireid.evaluation.quality import label_quality
from uvireid.types import CrossLabels


def _pairs_by_loops(lv, lr, gt, nv, matches):
    """(same, total) of match links counted instance pair by instance pair."""
    same = total = 0
    n = len(gt)
    for a, b in matches:
        for i in range(nv):
            if lv[i] != a:
                continue
            for j in range(nv, n):
                if lr[j] == b:
                    total += 1
                    same += int(gt[i] == gt[j])
    return same, total


def test_link_precision_with_string_and_negative_identities_equals_pair_counting():
    """Identities are any hashable labels (strings, negative numbers): link counts by
    pair loops, the overall precision pools both directions' pairs."""
    lv = np.array([0, 0, 1, 2, 1, 0, 2, 1])
    lr = np.array([1, 0, 0, 1, 0, 1, 1, 0])
    nv = 4
    ids = np.array(["a", "b", "a", "c", "a", "b", "c", "a"])
    matches = np.array([[0, 0], [1, 1], [2, 1]])
    cross = CrossLabels(lv, lr, matches, num_visible=nv, num_clusters_v=3, num_clusters_r=2)
    q = link_precision(cross, ids)
    neg = link_precision(cross, np.array([-5, -2, -5, 7, -5, -2, 7, -5]))
    s_v2r = t_v2r = s_r2v = t_r2v = 0
    for i in range(nv):
        for j in range(nv, len(ids)):
            if lr[i] == lr[j]:
                t_v2r += 1
                s_v2r += int(ids[i] == ids[j])
            if lv[j] == lv[i]:
                t_r2v += 1
                s_r2v += int(ids[i] == ids[j])
    sm, tm = _pairs_by_loops(lv, lr, ids, nv, matches)
    for got in (q, neg):
        assert got["num_links_v2r"] == t_v2r and got["num_links_r2v"] == t_r2v
        assert got["link_precision_v2r"] == pytest.approx(s_v2r / t_v2r)
        assert got["link_precision_r2v"] == pytest.approx(s_r2v / t_r2v)
        assert got["link_precision"] == pytest.approx((s_v2r + s_r2v) / (t_v2r + t_r2v))
        assert got["match_precision"] == pytest.approx(sm / tm) and got["num_match_links"] == tm
    assert s_v2r / t_v2r != pytest.approx(s_r2v / t_r2v)  # a mean of the two would differ


def test_link_precision_is_nan_without_links_and_needs_num_visible():
    cross = CrossLabels(
        np.array([0, 0, -1, -1]), np.array([-1, -1, 0, 0]), np.zeros((0, 2), int), num_visible=2
    )
    q = link_precision(cross, np.array([1, 1, 2, 2]))
    for key in ("link_precision_v2r", "link_precision_r2v", "link_precision", "match_precision"):
        assert math.isnan(q[key])
    assert q["num_links_v2r"] == q["num_links_r2v"] == q["num_match_links"] == 0
    with pytest.raises(ProtocolError, match="num_visible"):
        link_precision(
            CrossLabels(cross.labels_in_v, cross.labels_in_r, cross.matches),
            np.array([1, 1, 2, 2]),
        )


def test_a_match_to_a_cluster_within_num_clusters_but_above_every_label():
    """num_clusters_v = 3 while no instance carries visible label 2: a match (2, 0) is a
    valid pair of the label space and joins no instance pair."""
    cross = CrossLabels(
        np.array([0, 1, 0, 1]),
        np.array([0, 0, 0, 0]),
        np.array([[0, 0], [2, 0]]),
        num_visible=2,
        num_clusters_v=3,
        num_clusters_r=1,
    )
    q = link_precision(cross, np.array([4, 5, 4, 5]))
    sm, tm = _pairs_by_loops(cross.labels_in_v, cross.labels_in_r, [4, 5, 4, 5], 2, [[0, 0]])
    assert q["num_match_links"] == tm == 2 and q["match_precision"] == pytest.approx(sm / tm)


def test_association_quality_without_visible_instances_scores_the_rest():
    """num_visible = 0: no 'visible' view (nothing to score), the infrared and cross
    views equal label_quality of the labels."""
    lr = np.array([0, 0, 1, -1])
    gt = np.array([3, 3, 4, 4])
    cross = CrossLabels(np.full(4, -1), lr, np.zeros((0, 2), int), num_visible=0, num_clusters_r=2)
    q = association_quality(cross, gt)
    assert "visible" not in q
    assert q["infrared"]["ari"] == pytest.approx(label_quality(lr, gt)["ari"])
    assert q["cross_r"]["ari"] == pytest.approx(label_quality(lr, gt)["ari"])


def test_association_quality_infrared_view_uses_the_infrared_labels():
    lv = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    lr = np.array([0, 1, 0, 1, 0, 0, 1, 1])
    gt = np.array([1, 1, 2, 2, 1, 1, 2, 2])
    cross = CrossLabels(lv, lr, np.array([[0, 0]]), num_visible=4)
    q = association_quality(cross, gt)
    want = skm.adjusted_rand_score(gt[4:], lr[4:])
    assert q["infrared"]["ari"] == pytest.approx(want)
    assert want != pytest.approx(skm.adjusted_rand_score(gt[4:], lv[4:]))


def test_link_precision_sizes_the_spaces_like_space_sizes():
    """CrossLabels.space_sizes raises num_clusters_v/_r (0: derived) to cover every label
    AND match; link_precision derives them from the labels only, so a match to a
    cluster no instance carries (e.g. one emptied by a later filter) raises IndexError
    instead of counting no link."""
    cross = CrossLabels(
        np.array([0, 0, 0, 0]), np.array([0, 0, 0, 0]), np.array([[0, 0], [2, 0]]), num_visible=2
    )
    assert cross.space_sizes() == (3, 1)
    q = link_precision(cross, np.array([1, 1, 1, 1]))
    assert q["num_match_links"] == 4 and q["match_precision"] == 1.0


def test_num_visible_beyond_the_labels_is_refused():
    """num_visible = 9 with 4 instances: link_precision returns NaN everywhere and
    association_quality scores all 4 instances as 'visible' instead of saying that
    num_visible does not fit the labels."""
    cross = CrossLabels(
        np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]), np.array([[0, 0]]), num_visible=9
    )
    with pytest.raises(ProtocolError, match="num_visible"):
        link_precision(cross, np.array([1, 1, 2, 2]))
    with pytest.raises(ProtocolError, match="num_visible"):
        association_quality(cross, np.array([1, 1, 2, 2]))
