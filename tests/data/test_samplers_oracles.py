"""The batch composition the samplers' docstrings promise, at the edges (odd ids, one
modality without labels, duplicated matches, determinism by seed), each against counts
computed here."""

from __future__ import annotations

import numpy as np
import pytest

from uvireid.data.samplers import (
    IdentityBatches,
    IdentitySampler,
    MatchedPairSampler,
    PairedSampler,
    pools,
)
from uvireid.errors import ConfigError


def test_pools_of_a_long_label_array_are_sorted_indices():
    """pools: label -> *sorted* indices (a stable grouping; numpy's default sort is not
    stable past 16 elements)."""
    labels = np.random.default_rng(0).integers(-1, 4, 500)
    got = pools(labels)
    assert sorted(got) == [0, 1, 2, 3]
    for y, idx in got.items():
        np.testing.assert_array_equal(idx, np.flatnonzero(labels == y))


def _two_spaces():
    """Visible images 0..9 are linked only in the visible space, 10..19 only in the
    infrared one, so a batch row's visible index tells the space its label came from."""
    vis_in_v = np.r_[np.repeat(np.arange(5), 2), np.full(10, -1)]
    vis_in_r = np.r_[np.full(10, -1), np.repeat(np.arange(5), 2)]
    ir_in_v = np.repeat(np.arange(5), 3)
    ir_in_r = np.repeat(np.arange(5), 3)[::-1].copy()
    return vis_in_v, ir_in_v, ir_in_r, vis_in_r


@pytest.mark.parametrize(("ids", "from_v"), [(1, 0), (3, 1), (5, 2)])
def test_paired_sampler_draws_the_extra_label_of_an_odd_ids_from_the_infrared_space(ids, from_v):
    vis_in_v, ir_in_v, ir_in_r, vis_in_r = _two_spaces()
    s = PairedSampler(vis_in_v, ir_in_v, ir_in_r, vis_in_r, ids=ids, images=2)
    rng = np.random.default_rng(0)
    for _ in range(10):
        b = s.sample(rng)
        assert len(b.idx_v) == len(b.idx_r) == 2 * ids
        assert (b.idx_v[: 2 * from_v] < 10).all() and (b.idx_v[2 * from_v :] >= 10).all()
        np.testing.assert_array_equal(
            vis_in_v[b.idx_v[: 2 * from_v]], ir_in_v[b.idx_r[: 2 * from_v]]
        )
        np.testing.assert_array_equal(
            vis_in_r[b.idx_v[2 * from_v :]], ir_in_r[b.idx_r[2 * from_v :]]
        )


def test_paired_sampler_draws_every_label_of_each_space():
    """Labels are drawn without replacement among all the linked labels of a space."""
    vis_in_v, ir_in_v, ir_in_r, vis_in_r = _two_spaces()
    s = PairedSampler(vis_in_v, ir_in_v, ir_in_r, vis_in_r, ids=10, images=1)
    b = s.sample(np.random.default_rng(1))
    assert sorted(vis_in_v[b.idx_v[:5]].tolist()) == [0, 1, 2, 3, 4]
    assert sorted(vis_in_r[b.idx_v[5:]].tolist()) == [0, 1, 2, 3, 4]


def _pair_frequencies(sampler, n, rng, pos):
    counts = {}
    for _ in range(n):
        lv, _, lr, _ = sampler.sample(rng).labels
        key = (int(lv[pos]), int(lr[pos]))
        counts[key] = counts.get(key, 0) + 1
    return {k: v / n for k, v in counts.items()}


def test_matched_sampler_starts_the_extra_pair_of_an_odd_ids_from_a_visible_cluster():
    """Docstring: an odd ``ids`` starts the extra pair from a visible cluster. With
    matches (0,0), (0,1), (1,1): a visible start gives P(1,1) = 1/2 (v uniform, v=1 has
    one partner); an infrared start gives P(0,0) = 1/2. ids=1: the one pair starts from
    a visible cluster; ids=3: pairs 0 and 1 start visible, pair 2 infrared."""
    labels_v, labels_r = np.repeat(np.arange(2), 3), np.repeat(np.arange(2), 3)
    matches = np.array([[0, 0], [0, 1], [1, 1]])
    want_v = {(0, 0): 0.25, (0, 1): 0.25, (1, 1): 0.5}
    want_r = {(0, 0): 0.5, (0, 1): 0.25, (1, 1): 0.25}
    rng = np.random.default_rng(2)
    n = 1500  # binomial sd <= 0.013: 0.06 is > 4 sd, the two laws differ by 0.25
    one = MatchedPairSampler(labels_v, labels_r, matches, ids=1, images=1)
    got = _pair_frequencies(one, n, rng, 0)
    for pair, p in want_v.items():
        assert abs(got.get(pair, 0) - p) < 0.06, (pair, got)
    three = MatchedPairSampler(labels_v, labels_r, matches, ids=3, images=1)
    for pos, want in ((1, want_v), (2, want_r)):
        got = _pair_frequencies(three, n, rng, pos)
        for pair, p in want.items():
            assert abs(got.get(pair, 0) - p) < 0.06, (pos, pair, got)


def test_matched_sampler_partner_is_uniform_over_distinct_matches():
    """A match listed several times is one partner: from visible 0, infrared 0 and 1 are
    equally likely, however often (0, 0) is repeated in ``matches``; and the same from
    the infrared side."""
    labels_v, labels_r = np.repeat(np.arange(2), 2), np.repeat(np.arange(2), 2)
    matches = np.array([[0, 0], [0, 0], [0, 0], [0, 1], [1, 0]])
    s = MatchedPairSampler(labels_v, labels_r, matches, ids=2, images=1)
    rng = np.random.default_rng(3)
    n = 2000
    vis_start = _pair_frequencies(s, n, rng, 0)
    ir_start = _pair_frequencies(s, n, rng, 1)
    # visible start: v uniform; v=0 -> r in {0, 1}; v=1 -> r=0
    for pair, p in {(0, 0): 0.25, (0, 1): 0.25, (1, 0): 0.5}.items():
        assert abs(vis_start.get(pair, 0) - p) < 0.05, (pair, vis_start)
    # infrared start: r uniform; r=0 -> v in {0, 1}; r=1 -> v=0
    for pair, p in {(0, 0): 0.25, (1, 0): 0.25, (0, 1): 0.5}.items():
        assert abs(ir_start.get(pair, 0) - p) < 0.05, (pair, ir_start)


def test_matched_sampler_needs_both_clusters_of_a_match_to_hold_images():
    labels_v, labels_r = np.repeat(np.arange(3), 2), np.repeat(np.arange(2), 2)
    with pytest.raises(ConfigError, match="no matched pair"):
        MatchedPairSampler(labels_v, labels_r, np.array([[0, 5], [7, 1]]), ids=2, images=1)
    s = MatchedPairSampler(labels_v, labels_r, np.array([[0, 5], [2, 1]]), ids=2, images=1)
    for _ in range(5):
        lv, _, lr, _ = s.sample(np.random.default_rng(4)).labels
        assert lv.tolist() == [2, 2] and lr.tolist() == [1, 1]


@pytest.mark.parametrize("side", ["visible", "infrared"])
def test_a_modality_without_labelled_images_contributes_no_image(side):
    lab = np.repeat(np.arange(4), 3)
    none = np.full(7, -1)
    lv, lr = (none, lab) if side == "visible" else (lab, none)
    b = IdentitySampler(lv, lr, ids=2, images=3).sample(np.random.default_rng(5))
    empty, full = (b.idx_v, b.idx_r) if side == "visible" else (b.idx_r, b.idx_v)
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert len(full) == 6 and len(set(lab[full].tolist())) == 2


def test_cameras_of_one_modality_only_are_refused():
    lab = np.repeat(np.arange(4), 3)
    with pytest.raises(ConfigError, match="both modalities or neither"):
        IdentitySampler(lab, lab, 2, 2, cams_v=np.ones(12))
    with pytest.raises(ConfigError, match="both modalities or neither"):
        IdentitySampler(lab, lab, 2, 2, cams_r=np.ones(12))


@pytest.mark.parametrize("bad", [True, 0, -2, 2.0])
def test_sizes_must_be_integers_of_at_least_one(bad):
    lab = np.repeat(np.arange(4), 3)
    with pytest.raises(ConfigError, match="must be an integer >= 1"):
        IdentitySampler(lab, lab, bad, 2)
    with pytest.raises(ConfigError, match="must be an integer >= 1"):
        PairedSampler(lab, lab, lab, lab, 2, bad)
    with pytest.raises(ConfigError, match="visible_ids must be an integer >= 1"):
        IdentityBatches(ids=2, images=2, visible_ids=bad)


def test_identity_batches_rows_and_epoch_sampler_use_visible_ids():
    """IdentityBatches(visible_ids=k): k x images visible rows and ids x images infrared
    rows, both in ``rows()`` (the manifest) and in the epoch sampler's batches."""
    from uvireid.losses.contract import EpochLabels

    lab_v, lab_r = np.repeat(np.arange(6), 3), np.repeat(np.arange(8), 3)
    labels = EpochLabels(
        vis_in_v=lab_v, vis_in_r=lab_v, ir_in_r=lab_r, ir_in_v=lab_r,
        init_v=lab_v, init_r=lab_r, num_v=6, num_r=8,
    )  # fmt: skip
    part = IdentityBatches(ids=4, images=2, visible_ids=2)
    assert part.rows() == (4, 8)
    b = part.for_epoch(labels, (np.ones(18), np.ones(24))).sample(np.random.default_rng(6))
    assert (len(b.idx_v), len(b.idx_r)) == part.rows()
    assert len(set(lab_v[b.idx_v].tolist())) == 2 and len(set(lab_r[b.idx_r].tolist())) == 4


def _all_samplers():
    lab = np.repeat(np.arange(6), 4)
    cams = np.tile([1, 2, 3, 4], 6)
    rng = np.random.default_rng(9)
    other = rng.permutation(lab)
    return {
        "identity": IdentitySampler(lab, lab, 3, 2),
        "camera": IdentitySampler(lab, lab, 3, 2, cams, cams),
        "paired": PairedSampler(lab, lab, other, other, 3, 2),
        "matched": MatchedPairSampler(lab, lab, np.array([[0, 1], [1, 2], [3, 3]]), 3, 2),
    }


@pytest.mark.parametrize("name", ["identity", "camera", "paired", "matched"])
def test_each_sampler_is_a_function_of_its_generator(name):
    """The generator is the only state (checkpoints store it): a seed gives the same
    sequence of batches, another seed another one, and a restored generator state resumes
    the sequence."""
    s = _all_samplers()[name]

    def run(rng, k=5):
        return [np.r_[b.idx_v, b.idx_r].tolist() for b in (s.sample(rng) for _ in range(k))]

    a, b = run(np.random.default_rng(11)), run(np.random.default_rng(11))
    assert a == b and run(np.random.default_rng(12)) != a
    rng = np.random.default_rng(11)
    run(rng, 2)
    state = rng.bit_generator.state
    resumed = np.random.default_rng(0)
    resumed.bit_generator.state = state
    assert run(resumed, 3) == a[2:]


def _relabelled():
    """An associator that relabelled: the clusterer's labels (init_*) group the images
    differently from the epoch's labels (vis_in_v / ir_in_r)."""
    from uvireid.losses.contract import EpochLabels

    vis_in_v, init_v = np.repeat(np.arange(5), 4), np.tile(np.arange(5), 4)
    ir_in_r, init_r = np.repeat(np.arange(4), 3), np.tile(np.arange(4), 3)
    return EpochLabels(
        vis_in_v=vis_in_v, vis_in_r=np.full(20, -1), ir_in_r=ir_in_r, ir_in_v=np.full(12, -1),
        init_v=init_v, init_r=init_r, num_v=5, num_r=4, has_cross=False,
        matches=np.array([[0, 1], [2, 3]]),
    )  # fmt: skip


def test_unpaired_batches_group_by_the_epoch_labels_not_the_clusterer_labels():
    """Batches.unpaired: each modality on its own (epoch) labels, vis_in_v and ir_in_r."""
    from uvireid.data.samplers import PairedBatches

    labels = _relabelled()
    s = PairedBatches(ids=2, images=2).unpaired(labels, (np.ones(20), np.ones(12)))
    rng = np.random.default_rng(13)
    for _ in range(20):
        b = s.sample(rng)
        for idx, lab in ((b.idx_v, labels.vis_in_v), (b.idx_r, labels.ir_in_r)):
            groups = lab[idx].reshape(2, 2)
            assert (groups[:, 0] == groups[:, 1]).all()


def test_matched_batches_pair_the_clusterer_clusters_the_matches_name():
    """MatchedBatches: ``matches`` name the clusterer's clusters (init_v, init_r), so the
    rows are those clusters' images and carry those labels."""
    from uvireid.data.samplers import MatchedBatches

    labels = _relabelled()
    s = MatchedBatches(ids=2, images=2).for_epoch(labels, (np.ones(20), np.ones(12)))
    rng = np.random.default_rng(14)
    for _ in range(10):
        b = s.sample(rng)
        lv, _, lr, _ = b.labels
        np.testing.assert_array_equal(labels.init_v[b.idx_v], lv)
        np.testing.assert_array_equal(labels.init_r[b.idx_r], lr)
        assert set(zip(lv.tolist(), lr.tolist())) <= {(0, 1), (2, 3)}
