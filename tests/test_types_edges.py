"""CrossLabels' label spaces and unification (mutation audit ME)."""

from __future__ import annotations

import numpy as np

from uvireid.types import CrossLabels


def test_declared_space_sizes_larger_than_the_labels_are_kept():
    """space_sizes: num_clusters_v/_r, *raised* to cover every label (never lowered):
    a clusterer's top cluster ids that no instance carries still have a row and a column
    in the mask (MBCCM's A is num_clusters_v x num_clusters_r)."""
    cl = CrossLabels(
        np.array([0, 1, -1, -1]),
        np.array([-1, -1, 0, 0]),
        np.array([[1, 0]]),
        num_visible=2,
        num_clusters_v=5,
        num_clusters_r=3,
    )
    assert cl.space_sizes() == (5, 3)
    mask = cl.match_mask()
    expected = np.zeros((5, 3), dtype=bool)
    expected[1, 0] = True
    assert mask.shape == (5, 3) and np.array_equal(mask, expected)


def test_unify_with_no_visible_instance():
    """num_visible = 0 is a valid count (all instances infrared): each infrared cluster
    is its own label, numbered in order of its cluster id (visible ones first: none)."""
    lab_r = np.array([2, 0, -1, 2, 1])
    cl = CrossLabels(np.full(5, -1), lab_r, np.zeros((0, 2), dtype=np.int64), num_visible=0)
    u = cl.unify()
    assert u.labels_in_v.tolist() == u.labels_in_r.tolist() == [2, 0, -1, 2, 1]
    assert u.num_clusters_v == u.num_clusters_r == 3 and not u.has_cross_links


def test_unified_label_arrays_are_independent():
    """unify() returns two arrays: writing one (an engine masking outliers in the
    infrared space) must not change the other."""
    cl = CrossLabels(
        np.array([0, 1, -1, -1]), np.array([-1, -1, 0, 1]), np.array([[0, 1]]), num_visible=2
    )
    u = cl.unify()
    before = u.labels_in_v.copy()
    u.labels_in_r[:] = -1
    assert np.array_equal(u.labels_in_v, before)


def test_has_cross_links_counts_pairs():
    no = CrossLabels(np.array([0, -1]), np.array([-1, 0]), np.zeros((0, 2), dtype=np.int64))
    yes = CrossLabels(np.array([0, -1]), np.array([-1, 0]), np.array([[0, 0]]))
    assert (no.has_cross_links, yes.has_cross_links) == (False, True)
