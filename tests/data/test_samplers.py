"""Identity samplers: batch composition, pairing, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from uvireid.data.samplers import (
    IdentitySampler,
    MatchedPairSampler,
    PairedSampler,
    draw,
    draw_camera_aware,
    pools,
)
from uvireid.errors import ConfigError


def test_pools_group_indices_by_label_and_skip_outliers():
    p = pools(np.array([2, -1, 0, 2, 0, 5]))
    assert sorted(p) == [0, 2, 5]
    assert p[0].tolist() == [2, 4] and p[2].tolist() == [0, 3] and p[5].tolist() == [5]


def test_draw_without_replacement_only_when_the_pool_is_larger():
    rng = np.random.default_rng(0)
    big = np.arange(10)
    assert len(set(draw(big, 4, rng).tolist())) == 4
    small = np.arange(3)
    out = draw(small, 4, rng)
    assert len(out) == 4 and set(out.tolist()) <= {0, 1, 2}


def test_identity_sampler_draws_ids_times_images_per_modality():
    lv = np.repeat(np.arange(10), 6)  # 10 visible clusters of 6
    lv[::7] = -1
    lr = np.repeat(np.arange(5), 3)
    s = IdentitySampler(lv, lr, ids=4, images=3)
    b = s.sample(np.random.default_rng(1))
    assert len(b.idx_v) == 12 and len(b.idx_r) == 12
    # 4 distinct visible labels, 3 images each, never an outlier
    labs = lv[b.idx_v]
    assert (labs >= 0).all()
    assert sorted(np.unique(labs, return_counts=True)[1].tolist()) == [3, 3, 3, 3]
    for k in range(4):
        chunk = b.idx_v[3 * k : 3 * k + 3]
        assert len(set(lv[chunk].tolist())) == 1 and len(set(chunk.tolist())) == 3
    assert len(np.unique(lr[b.idx_r])) == 4


def test_identity_sampler_is_repeatable_with_a_seed():
    lv, lr = np.repeat(np.arange(6), 4), np.repeat(np.arange(6), 4)
    s = IdentitySampler(lv, lr, ids=3, images=2)
    a = [s.sample(np.random.default_rng(7)).idx_v.tolist() for _ in range(2)]
    assert a[0] == a[1]
    assert s.sample(np.random.default_rng(8)).idx_v.tolist() != a[0]


def test_paired_sampler_pairs_rows_that_share_a_label_in_one_space():
    rng = np.random.default_rng(0)
    nv, nr = 40, 30
    vis_in_v = rng.integers(0, 5, nv)
    ir_in_v = rng.integers(0, 5, nr)
    ir_in_r = rng.integers(0, 4, nr)
    vis_in_r = rng.integers(0, 4, nv)
    s = PairedSampler(vis_in_v, ir_in_v, ir_in_r, vis_in_r, ids=4, images=3)
    b = s.sample(np.random.default_rng(3))
    assert len(b.idx_v) == len(b.idx_r) == 12
    # first half: visible-space labels (pairs agree in the visible space), then infrared
    for n in range(6):
        assert vis_in_v[b.idx_v[n]] == ir_in_v[b.idx_r[n]]
    for n in range(6, 12):
        assert vis_in_r[b.idx_v[n]] == ir_in_r[b.idx_r[n]]


def test_paired_sampler_uses_only_labels_with_both_modalities():
    vis_in_v = np.array([0, 0, 1, 1])
    ir_in_v = np.array([0, 0, -1])  # label 1 has no infrared image
    ir_in_r = np.array([0, 0, 0])
    vis_in_r = np.array([0, -1, -1, -1])
    s = PairedSampler(vis_in_v, ir_in_v, ir_in_r, vis_in_r, ids=2, images=2)
    for seed in range(5):
        b = s.sample(np.random.default_rng(seed))
        assert set(vis_in_v[b.idx_v[:2]].tolist()) == {0}


def test_paired_sampler_without_any_link_is_an_error():
    none = np.full(4, -1)
    with pytest.raises(ConfigError, match="association linked nothing"):
        PairedSampler(np.zeros(4, int), none, np.zeros(4, int), none, ids=2, images=2)


def test_matched_sampler_draws_pairs_of_the_many_to_many_matching():
    """MBCCM's assignment sampler (peers.md Sec. 3.2): half the pairs start from a visible
    cluster and take a random matched infrared one, half the other way round; every row is
    labelled with its pair; a cluster with several partners meets each of them."""
    rng = np.random.default_rng(0)
    labels_v = np.repeat(np.arange(4), 5)  # visible clusters 0..3, 5 images each
    labels_r = np.r_[np.repeat(np.arange(3), 4), [-1, -1]]  # infrared 0..2, 2 outliers
    matches = np.array([[0, 0], [0, 1], [1, 1], [2, 2], [3, 2]])  # (visible, infrared)
    sampler = MatchedPairSampler(labels_v, labels_r, matches, ids=4, images=3)
    allowed = {tuple(p) for p in matches.tolist()}
    seen = set()
    for _ in range(200):
        b = sampler.sample(rng)
        lv, lvr, lrr, lrv = b.labels
        assert len(b.idx_v) == len(b.idx_r) == 4 * 3
        assert np.array_equal(labels_v[b.idx_v], lv) and np.array_equal(labels_r[b.idx_r], lrr)
        assert np.array_equal(lvr, lrr) and np.array_equal(lrv, lv)  # the pair's labels
        pairs = list(zip(lv[::3].tolist(), lrr[::3].tolist()))
        assert set(pairs) <= allowed
        seen.update(pairs)
    assert seen == allowed  # visible 0 with infrared 0 and 1, infrared 2 with visible 2 and 3
    with pytest.raises(ConfigError, match="no matched pair of clusters has images"):
        MatchedPairSampler(labels_v, labels_r, np.array([[0, 5]]), ids=2, images=2)


def _camera_aware_loop(pool, cams, n, anchor):
    """RandomMultipleGallerySampler's rule for one identity, given its anchor: the
    candidates and whether they are drawn with replacement."""
    others = [i for i in pool if cams[i] != cams[anchor]]
    if not others:
        others = [i for i in pool if i != anchor]
    return others, len(others) < n


def test_camera_aware_draws_an_anchor_then_other_cameras():
    """Cluster-Contrast's RandomMultipleGallerySampler: anchor first; the rest from the
    anchor's identity in other cameras (without replacement when >= n of them), else
    its other images in the same camera; a lone image repeated."""
    rng = np.random.default_rng(4)
    cams = np.array([1, 1, 1, 2, 2, 3, 1, 1, 4, 4, 4, 4, 4, 4])
    cases = {
        "many other cameras": np.array([0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]),
        "few other cameras": np.array([0, 1, 2, 3]),
        "one camera": np.array([6, 7, 0, 1]),
        "one image": np.array([5]),
    }
    for name, pool in cases.items():
        anchors = []
        for _ in range(200):
            got = draw_camera_aware(pool, cams, 4, rng)
            assert len(got) == 4 and set(got.tolist()) <= set(pool.tolist()), name
            anchor = int(got[0])
            anchors.append(anchor)
            others, replace = _camera_aware_loop(pool.tolist(), cams, 4, anchor)
            if len(pool) == 1:
                assert got.tolist() == [anchor] * 4
                continue
            assert set(got[1:].tolist()) <= set(others), name
            if not replace:
                assert len(set(got[1:].tolist())) == 3, name
        # every image of the pool serves as anchor (uniformly: 200 draws)
        counts = np.bincount(anchors, minlength=14)[pool]
        assert counts.min() > 0 and counts.max() < 200 / len(pool) * 2 + 10, name
    # "few other cameras": anchor in cam 1 -> the two cam-2 images, with replacement
    got = [draw_camera_aware(np.array([0, 1, 2, 3, 4]), cams, 4, rng) for _ in range(50)]
    cam1 = [g for g in got if cams[g[0]] == 1]
    assert cam1 and all(set(g[1:].tolist()) <= {3, 4} for g in cam1)


def test_identity_sampler_camera_aware_keeps_the_batch_shape_and_labels():
    lab_v = np.repeat(np.arange(6), 5)
    lab_r = np.repeat(np.arange(4), 6)
    cams_v = np.tile([1, 2, 2, 4, 5], 6)
    cams_r = np.tile([3, 3, 6, 6, 6, 3], 4)
    s = IdentitySampler(lab_v, lab_r, 3, 4, cams_v, cams_r)
    b = s.sample(np.random.default_rng(0))
    assert len(b.idx_v) == 12 and len(b.idx_r) == 12
    for idx, lab, cams in ((b.idx_v, lab_v, cams_v), (b.idx_r, lab_r, cams_r)):
        for g in idx.reshape(3, 4):
            assert len(set(lab[g].tolist())) == 1  # one label per group of 4
            assert all(cams[g[1:]] != cams[g[0]])  # these pools have other cameras
    with pytest.raises(ValueError, match="cameras"):
        IdentitySampler(lab_v, lab_r, 3, 4, cams_v[:-1], cams_r)


def test_identity_sampler_can_draw_fewer_visible_labels():
    """PGM: 16 infrared labels x 16 and 8 visible labels x 16 (ids_v)."""
    lab_v = np.repeat(np.arange(10), 4)
    lab_r = np.repeat(np.arange(12), 4)
    b = IdentitySampler(lab_v, lab_r, 6, 3, ids_v=2).sample(np.random.default_rng(1))
    assert len(b.idx_v) == 2 * 3 and len(b.idx_r) == 6 * 3
    assert len(set(lab_v[b.idx_v].tolist())) == 2 and len(set(lab_r[b.idx_r].tolist())) == 6


def test_samplers_refuse_malformed_labels_and_sizes():
    """From the library audit: 2-D labels gave indices that all pointed at image 0, labels
    of different lengths in the two spaces and fractional sizes went through, and a match
    naming clusters without images was reported as "linked nothing"."""
    from uvireid.errors import FeatureFileError

    lab = np.repeat(np.arange(4), 3)
    with pytest.raises(FeatureFileError, match=r"labels must be 1-D .*got shape \(12, 1\)"):
        IdentitySampler(lab[:, None], lab, 2, 2)
    with pytest.raises(FeatureFileError, match="non-integer"):
        IdentitySampler(lab + 0.5, lab, 2, 2)
    with pytest.raises(FeatureFileError, match=r"labels below -1 \(-3\)"):
        IdentitySampler(lab - 3, lab, 2, 2)
    with pytest.raises(ConfigError, match=r"ids must be an integer >= 1, got 2.7"):
        IdentitySampler(lab, lab, 2.7, 2)
    with pytest.raises(ConfigError, match=r"visible images' labels in the two spaces differ"):
        PairedSampler(lab, lab, lab, lab[:5], 2, 2)
    with pytest.raises(ConfigError, match=r"none of its 1 match\(es\) names two clusters"):
        MatchedPairSampler(lab, lab, np.array([[7, 9]]), 2, 2)
    # whole-valued float labels (as some exports give) are labels
    batch = IdentitySampler(lab.astype(float), lab, 2, 2).sample(np.random.default_rng(0))
    assert len(batch.idx_v) == 4 and len(set(lab[batch.idx_v])) == 2


# Replacement rules at their boundaries (mutation audit BZ): salcr_reference.md Sec. 9.2,
# "with replacement (including when it has exactly 12)"; clusters per batch "without
# replacement"; Cluster-Contrast's RandomMultipleGallerySampler draws without replacement
# only from at least num_instances candidates.
def test_draw_from_a_pool_of_exactly_n_is_with_replacement():
    from uvireid.data.samplers import draw

    rng = np.random.default_rng(0)
    outs = [draw(np.arange(4), 4, rng) for _ in range(100)]
    # P(no repeat | with replacement) = 4!/4^4 = 0.094: 100 draws without one is ~1e-103
    assert any(len(set(o.tolist())) < 4 for o in outs)
    outs = [draw(np.arange(5), 4, rng) for _ in range(100)]  # one more image than n
    assert all(len(set(o.tolist())) == 4 for o in outs)


def test_identity_sampler_with_exactly_ids_clusters_draws_each_once():
    from uvireid.data.samplers import IdentitySampler

    lv = np.repeat(np.arange(4), 6)
    lr = np.repeat(np.arange(4), 6)
    s = IdentitySampler(lv, lr, ids=4, images=2)
    rng = np.random.default_rng(3)
    for _ in range(50):
        b = s.sample(rng)
        assert sorted(lv[b.idx_v].tolist()) == sorted(np.repeat(np.arange(4), 2).tolist())
        assert sorted(lr[b.idx_r].tolist()) == sorted(np.repeat(np.arange(4), 2).tolist())


def test_camera_aware_with_n_minus_1_other_camera_images_draws_with_replacement():
    from uvireid.data.samplers import draw_camera_aware

    cams = np.array([1, 2, 2, 3])  # anchor 0 in camera 1; 3 = n - 1 images elsewhere
    rng = np.random.default_rng(0)
    rests = []
    for _ in range(300):
        got = draw_camera_aware(np.arange(4), cams, 4, rng)
        if int(got[0]) == 0:
            rests.append(got[1:].tolist())
    assert rests
    # P(no repeat among 3 of 3 with replacement) = 3!/27 = 0.22 per draw
    assert any(len(set(r)) < 3 for r in rests)
