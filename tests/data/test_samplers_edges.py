"""Edges of the identity samplers (audit GD, session 24: a mutation test of the data
parts; these tests killed its surviving mutants): one linked label space, the side a
matched pair starts from, camera-aware batches, each label space passed to its side."""

from __future__ import annotations

import numpy as np

from uvireid.data.samplers import (
    IdentityBatches,
    MatchedPairSampler,
    PairedBatches,
    PairedSampler,
)
from uvireid.losses.contract import EpochLabels


def _epoch_labels(vis_in_v, vis_in_r, ir_in_r, ir_in_v):
    return EpochLabels(
        vis_in_v=vis_in_v,
        vis_in_r=vis_in_r,
        ir_in_r=ir_in_r,
        ir_in_v=ir_in_v,
        init_v=vis_in_v,
        init_r=ir_in_r,
        num_v=int(vis_in_v.max()) + 1,
        num_r=int(ir_in_r.max()) + 1,
    )


def test_paired_sampler_with_one_space_linked_draws_every_label_from_it():
    """Only the visible space links clusters (every infrared-space label lacks a visible
    image): all ``ids`` labels of a batch come from the visible space, not half of them
    with the other half asked of an empty space; and the other way round."""
    vis_in_v = np.repeat(np.arange(4), 3)  # 12 visible images, labels 0..3
    ir_in_v = np.tile(np.arange(4), 2)  # 8 infrared images, labels 0..3
    ir_in_r = np.arange(8)  # infrared space: 8 singletons ...
    vis_in_r = np.full(12, -1)  # ... and no visible image in it
    s = PairedSampler(vis_in_v, ir_in_v, ir_in_r, vis_in_r, ids=4, images=2)
    rng = np.random.default_rng(0)
    for _ in range(20):
        b = s.sample(rng)
        assert len(b.idx_v) == len(b.idx_r) == 8
        assert np.array_equal(vis_in_v[b.idx_v], ir_in_v[b.idx_r])
        assert sorted(set(vis_in_v[b.idx_v].tolist())) == [0, 1, 2, 3]  # 4 labels of 4
    # the infrared space alone: the same, the space roles swapped
    s = PairedSampler(np.full(12, -1), np.arange(8), ir_in_v, vis_in_v, ids=4, images=2)
    for _ in range(20):
        b = s.sample(rng)
        assert len(b.idx_v) == len(b.idx_r) == 8
        assert np.array_equal(vis_in_v[b.idx_v], ir_in_v[b.idx_r])


def test_matched_sampler_starts_half_its_pairs_from_each_side():
    """peers.md Sec. 3.2 / the class docstring: half of the pairs start from a visible
    cluster (uniform) and take a uniform matched infrared cluster, the other half start
    from an infrared cluster. With ids=2 the first pair is the visible start, the second
    the infrared start; their pair frequencies are computed here from the matching."""
    labels_v = np.repeat(np.arange(4), 2)
    labels_r = np.repeat(np.arange(2), 2)
    matches = np.array([[0, 0], [1, 0], [2, 0], [3, 1]])
    want_v = {(0, 0): 1 / 4, (1, 0): 1 / 4, (2, 0): 1 / 4, (3, 1): 1 / 4}
    # infrared start: i uniform over {0, 1}; i=0 -> v uniform over {0, 1, 2}; i=1 -> v=3
    want_r = {(0, 0): 1 / 6, (1, 0): 1 / 6, (2, 0): 1 / 6, (3, 1): 1 / 2}
    s = MatchedPairSampler(labels_v, labels_r, matches, ids=2, images=1)
    rng = np.random.default_rng(1)
    n = 4000
    counts = [dict.fromkeys(want_v, 0), dict.fromkeys(want_v, 0)]
    for _ in range(n):
        b = s.sample(rng)
        lv, _, lr, _ = b.labels
        for pos in range(2):
            counts[pos][(int(lv[pos]), int(lr[pos]))] += 1
    for pos, want in enumerate((want_v, want_r)):
        for pair, p in want.items():
            # binomial sd <= 0.008 at n = 4000: 0.04 is 5 sd
            assert abs(counts[pos][pair] / n - p) < 0.04, (pos, pair, counts[pos])


def test_identity_batches_camera_aware_draws_other_cameras():
    """IdentityBatches(camera_aware=True).for_epoch draws Cluster-Contrast's way: after
    each anchor, images of the anchor's cluster from other cameras (each pool here has
    at least ``images`` of them); without camera_aware, same-camera images occur."""
    lab_v = np.repeat(np.arange(6), 8)
    lab_r = np.repeat(np.arange(6), 8)
    cams_v = np.tile([1, 1, 1, 1, 2, 2, 4, 5], 6)
    cams_r = np.tile([3, 3, 3, 3, 3, 6, 6, 6], 6)
    labels = _epoch_labels(lab_v, lab_v.copy(), lab_r, lab_r.copy())
    rng = np.random.default_rng(2)
    aware = IdentityBatches(ids=3, images=3, camera_aware=True).for_epoch(labels, (cams_v, cams_r))
    plain = IdentityBatches(ids=3, images=3).for_epoch(labels, (cams_v, cams_r))
    same_cam_plain = 0
    for _ in range(50):
        for idx, cams in ((aware.sample(rng).idx_v, cams_v), (aware.sample(rng).idx_r, cams_r)):
            for g in idx.reshape(3, 3):
                assert (cams[g[1:]] != cams[g[0]]).all()
        for g in plain.sample(rng).idx_v.reshape(3, 3):
            same_cam_plain += int((cams_v[g[1:]] == cams_v[g[0]]).any())
    assert same_cam_plain > 0


def test_paired_batches_pass_each_label_space_to_its_side():
    """PairedBatches.for_epoch: the first half of a batch's rows agree in the visible
    label space (vis_in_v of the visible row = ir_in_v of the infrared row), the second
    half in the infrared space (vis_in_r = ir_in_r), as salcr_reference.md Sec. 9.2."""
    rng = np.random.default_rng(5)
    nv, nr = 60, 50
    vis_in_v = rng.integers(0, 4, nv)
    ir_in_v = rng.integers(0, 4, nr)
    ir_in_r = rng.integers(0, 4, nr)
    vis_in_r = rng.integers(0, 4, nv)
    labels = _epoch_labels(vis_in_v, vis_in_r, ir_in_r, ir_in_v)
    s = PairedBatches(ids=4, images=3).for_epoch(labels, (np.ones(nv), np.ones(nr)))
    for _ in range(20):
        b = s.sample(rng)
        assert len(b.idx_v) == len(b.idx_r) == 12
        assert np.array_equal(vis_in_v[b.idx_v[:6]], ir_in_v[b.idx_r[:6]])
        assert np.array_equal(vis_in_r[b.idx_v[6:]], ir_in_r[b.idx_r[6:]])


def test_unpaired_batches_draw_each_modality_from_its_own_label_space():
    """Batches.unpaired (an epoch whose association linked nothing): ids x images per
    modality, visible rows by vis_in_v, infrared rows by ir_in_r (the infrared images'
    own clusters; their visible-space labels are all -1 when nothing was linked)."""
    vis_in_v = np.repeat(np.arange(5), 4)
    ir_in_r = np.repeat(np.arange(6), 3)
    labels = _epoch_labels(vis_in_v, np.full(20, -1), ir_in_r, np.full(18, -1))
    s = PairedBatches(ids=3, images=2).unpaired(labels, (np.ones(20), np.ones(18)))
    rng = np.random.default_rng(6)
    for _ in range(20):
        b = s.sample(rng)
        assert len(b.idx_v) == len(b.idx_r) == 6
        for idx, lab in ((b.idx_v, vis_in_v), (b.idx_r, ir_in_r)):
            groups = lab[idx].reshape(3, 2)
            assert (groups[:, 0] == groups[:, 1]).all() and len(set(groups[:, 0])) == 3
