"""The associations' edges against independent computations (mutation audit FA, session
23): Sinkhorn's stopping boundaries, matches without duplicates, MBCCM's partners of the
smaller side, input checks, CMFP(tr) against a naive propagation; and the public
matchers' refusals of an empty side, non-finite parameters and features without a
column (each was a hang, a ZeroDivisionError, NaN potentials or silent labels)."""

from __future__ import annotations

import signal
from functools import partial

import numpy as np
import pytest
import torch
from assoc_oracles import cmfp_naive, outlier_clusters
from scipy.optimize import linear_sum_assignment

from uvireid.associations.checks import as_features, prepare
from uvireid.associations.mbccm import MBCCM, bilateral_matching
from uvireid.associations.otla import OTLADual, sinkhorn_log, squared_distances
from uvireid.associations.pgm import PGM, progressive_matching
from uvireid.associations.quality import link_precision
from uvireid.associations.refine import cmfp_tr
from uvireid.errors import ConfigError, FeatureFileError, ProtocolError
from uvireid.types import CrossLabels

#: a few outliers: the first two instances of each modality
_clusters = partial(outlier_clusters, per_id=4, d=16, noise=0.8, outliers=2)


def _unit_means(x, lab, ids):
    c = np.stack([x[lab == i].mean(0) for i in ids])
    n = np.linalg.norm(c, axis=1, keepdims=True)
    return c / np.maximum(n, 1e-12)


# ---------------------------------------------------------------- otla.py --------------
def test_squared_distances_are_never_negative():
    """Docstring: ``>= 0``. In float32 ``|x|^2 + |x|^2 - 2 x.x`` cancels to small negative
    numbers on the diagonal; the clamp removes them (mutant O20)."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(200, 64)) * 10).float()
    d = squared_distances(x, x.double())
    assert d.dtype == torch.float32 and (d >= 0).all()
    ref = ((x.double()[:, None] - x.double()[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d.double().numpy(), ref.numpy(), atol=0.2)


@pytest.mark.parametrize("intra", [False, True])
def test_otla_matches_are_the_distinct_pairs_of_each_instances_two_labels(intra):
    """Class doc: ``matches`` lists the (visible, infrared) pairs that some instance's two
    labels join; with ``intra_relabel`` the own labels are the relabelled ones (O25), and
    each pair is listed once (K11)."""
    fv, gv, fr, gr = _clusters(1, 6, 5, noise=0.3)
    gv[[3, 5]] = [3, 5]  # two mislabelled instances (of clusters 0 and 1)
    out = OTLADual(intra_relabel=intra).associate(fv, gv, fr, gr)
    lv, lr = out.labels_in_v, out.labels_in_r
    both = (lv >= 0) & (lr >= 0)
    ref = sorted({(int(a), int(b)) for a, b in zip(lv[both], lr[both])})
    assert sorted(map(tuple, out.matches.tolist())) == ref
    assert len(out.matches) == len(ref)  # no duplicate rows
    if intra:  # relabelling puts both back, so the given labels would add wrong pairs
        np.testing.assert_array_equal(lv[[3, 5]], [0, 1])
        assert (3, int(lr[3])) not in ref and (5, int(lr[5])) not in ref


def test_otla_parameter_check_refuses_max_iter_zero():
    """``_check_params`` runs before a training starts (runner.check_parts): max_iter 0
    must be refused there, naming otla_dual (O26)."""
    with pytest.raises(ConfigError, match="otla_dual: max_iter must be an integer >= 1"):
        OTLADual(max_iter=0)._check_params()


def test_official_order_stops_when_the_error_equals_tol():
    """The official ``while err > tol`` loop stops at err == tol (O10, O13): a uniform
    cost is solved exactly at the first check (err 0), so tol 0 stops there."""
    res = sinkhorn_log(
        torch.zeros(4, 2, dtype=torch.float64), 5.0, max_iter=50, tol=0.0, official_order=True
    )
    assert res.err == 0.0 and res.converged and res.n_iter == 1


def test_default_order_stops_only_below_tol():
    """POT's rule ``err < stopThr`` (docstring: ``< tol``): at tol 0 it never stops, even
    on an exactly solved problem (O12)."""
    res = sinkhorn_log(torch.zeros(4, 2, dtype=torch.float64), 5.0, max_iter=30, tol=0.0)
    assert res.err == 0.0 and not res.converged and res.n_iter == 30


# ---------------------------------------------------------------- pgm.py ---------------
def test_pgm_matches_hold_every_pair_of_every_round_once():
    """Class doc: ``matches`` holds every (visible, infrared) pair of every round (P5),
    each once, and ``info['num_matches']`` counts them (P6, K11). Label ids with gaps."""
    fv, gv, fr, gr = _clusters(2, 7, 3)
    gv = np.where(gv >= 0, 2 * gv + 1, -1)
    gr = np.where(gr >= 0, gr + 4, -1)
    out = PGM().associate(fv, gv, fr, gr)
    ids_v, ids_r = np.unique(gv[gv >= 0]), np.unique(gr[gr >= 0])
    cost = np.exp(-(_unit_means(fv, gv, ids_v) @ _unit_means(fr, gr, ids_r).T))
    v2r, r2v, _ = progressive_matching(cost)
    ref = {(int(ids_v[a]), int(ids_r[v2r[a]])) for a in range(len(ids_v))}
    ref |= {(int(ids_v[r2v[b]]), int(ids_r[b])) for b in range(len(ids_r))}
    assert sorted(map(tuple, out.matches.tolist())) == sorted(ref)
    assert out.info["num_matches"] == len(ref) == len(out.matches)
    assert set(out.matches[:, 0].tolist()) == set(ids_v.tolist())  # every visible cluster


# ---------------------------------------------------------------- mbccm.py -------------
@pytest.mark.parametrize("k_r,k_v", [(7, 3), (3, 7), (5, 5), (9, 2)])
def test_mbccm_primary_partner_of_the_smaller_side_is_the_hungarian_one(k_r, k_v):
    """Module doc: the per-instance label of the smaller side is P1, the one-to-one
    Hungarian match (B11); the larger side's partners come from P2 and cover it."""
    dist = np.random.default_rng(k_r * 10 + k_v).uniform(0, 4, size=(k_r, k_v))
    _, r2v, v2r = bilateral_matching(dist)
    if k_v < k_r:
        rows, cols = linear_sum_assignment(dist.T)
        assert len(set(v2r.tolist())) == k_v  # one-to-one
        assert dist[v2r, np.arange(k_v)].sum() == pytest.approx(dist.T[rows, cols].sum())
    else:
        rows, cols = linear_sum_assignment(dist)
        assert len(set(r2v.tolist())) == k_r
        assert dist[np.arange(k_r), r2v].sum() == pytest.approx(dist[rows, cols].sum())
    assert (r2v >= 0).all() and (v2r >= 0).all()


def _mbccm_mask_naive(dist):
    """peers.md Sec. 3.1 and the official ``mbccm_matching`` loops, (K_r, K_v) bool."""
    k_r, k_v = dist.shape
    m = np.zeros((k_r, k_v), bool)
    if k_v >= k_r:
        k = k_v // k_r + 1
        p1 = zip(*linear_sum_assignment(dist))
        i2, v2 = linear_sum_assignment(np.tile(dist, (k, 1)))
        p2 = zip(i2 % k_r, v2)
    else:
        k = k_r // k_v + 1
        v1, i1 = linear_sum_assignment(dist.T)
        p1 = zip(i1, v1)
        v2, i2 = linear_sum_assignment(np.tile(dist.T, (k, 1)))
        p2 = zip(i2, v2 % k_v)
    for i, v in p1:
        for w in range(k_v):
            m[i, w] |= dist[i, w] <= dist[i, v]
    for i, v in p2:
        for j in range(k_r):
            m[j, v] |= dist[j, v] <= dist[i, v]
    return m


def test_mbccm_mask_uses_exact_squared_distances_with_a_zero_centroid():
    """D = squared L2 of the normalised centroids (peers.md Sec. 3.1). A cluster whose mean
    is exactly 0 keeps a zero centroid, where ``2 - cos`` and ``2 - 2 cos`` disagree (B7)."""
    rng = np.random.default_rng(3)
    fv = rng.normal(size=(8, 4))
    fv /= np.linalg.norm(fv, axis=1, keepdims=True)
    fv[1] = -fv[0]  # cluster 0 = {f, -f}: mean exactly zero
    gv = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    fr = rng.normal(size=(6, 4))
    fr /= np.linalg.norm(fr, axis=1, keepdims=True)
    gr = np.array([0, 0, 1, 1, 2, 2])
    out = MBCCM().associate(fv, gv, fr, gr)
    cv, cr = _unit_means(fv, gv, range(4)), _unit_means(fr, gr, range(3))
    assert np.abs(cv[0]).max() == 0
    dist = ((cr[:, None] - cv[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(out.match_mask(), _mbccm_mask_naive(dist).T)


@pytest.mark.parametrize("seed", range(4))
def test_mbccm_mask_equals_the_naive_loops_through_the_associator(seed):
    fv, gv, fr, gr = _clusters(seed, 3 + seed, 6 - seed, noise=1.5)
    out = MBCCM().associate(fv, gv, fr, gr)
    ids_v, ids_r = np.unique(gv[gv >= 0]), np.unique(gr[gr >= 0])
    cv, cr = _unit_means(fv, gv, ids_v), _unit_means(fr, gr, ids_r)
    dist = ((cr[:, None] - cv[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(out.match_mask(), _mbccm_mask_naive(dist).T)


# ---------------------------------------------------------------- checks.py ------------
def test_float16_features_are_computed_in_float32():
    """as_features doc: float16/bfloat16 become float32 (K1); the associators give on
    half features what they give on the same values in float32."""
    x = torch.randn(5, 3).half()
    assert as_features(x, "t").dtype == torch.float32
    assert as_features(x.bfloat16(), "t").dtype == torch.float32
    fv, gv, fr, gr = _clusters(4, 4, 4)
    hv, hr = torch.from_numpy(fv).half(), torch.from_numpy(fr).half()
    for part in (OTLADual(), PGM(), MBCCM()):
        a = part.associate(hv, gv, hr, gr)
        b = part.associate(hv.float(), gv, hr.float(), gr)
        np.testing.assert_array_equal(a.labels_in_v, b.labels_in_v)
        np.testing.assert_array_equal(a.labels_in_r, b.labels_in_r)


def test_mixed_precision_inputs_are_promoted():
    """float32 visible and float64 infrared features are both computed in float64 (K5)."""
    v, r = prepare(np.zeros((3, 2), np.float32), [0, 0, 1], np.zeros((2, 2)), [0, 1], "t")
    assert v.feats.dtype == r.feats.dtype == torch.float64
    v, r = prepare(np.zeros((3, 2)), [0, 0, 1], np.zeros((2, 2), np.float32), [0, 1], "t")
    assert v.feats.dtype == r.feats.dtype == torch.float64


@pytest.mark.parametrize(
    "labels,match",
    [
        ([0, -2, 1], "below -1"),  # K3
        ([0, 3, -1], "is not below the number of instances"),  # K6: id == N
        ([True, False, True], "dtype bool"),  # K14
    ],
)
def test_bad_labels_are_refused_with_their_message(labels, match):
    x = np.random.default_rng(0).normal(size=(3, 4))
    with pytest.raises(FeatureFileError, match=match):
        PGM().associate(x, np.array(labels), x, [0, 0, 1])


def test_infinite_features_are_refused_for_torch_input():
    """check_finite refuses inf as well as NaN (K15)."""
    x = torch.randn(4, 3)
    x[1, 2] = float("inf")
    with pytest.raises(FeatureFileError, match="features hold NaN or inf in 1 row"):
        OTLADual().associate(x, [0, 0, 1, 1], torch.randn(4, 3), [0, 1, 0, 1])


def test_infinite_costs_are_refused_by_the_matchers():
    """numpy check_finite refuses inf (K13): scipy would say 'cost matrix is infeasible'."""
    cost = np.ones((3, 2))
    cost[0, 1] = np.inf
    with pytest.raises(FeatureFileError, match="NaN or inf in 1 row"):
        progressive_matching(cost)
    with pytest.raises(FeatureFileError, match="NaN or inf in 1 row"):
        bilateral_matching(cost)


# ---------------------------------------------------------------- refine.py ------------


def test_cmfp_tr_equals_the_naive_propagation_of_the_clustered_rows():
    """Kept rows: naive CMFP(tr) of the normalised kept features (R2); the other rows:
    normalised only (R4). Input row scales must not matter (R2)."""
    rng = np.random.default_rng(5)
    fv, fr = rng.normal(size=(12, 6)), rng.normal(size=(9, 6))
    fv[:, 0] += 2.0  # positive similarities, no all-zero rows
    fr[:, 0] += 2.0
    keep_v, keep_r = np.arange(2, 12), np.arange(1, 9)
    scale_v = rng.uniform(0.5, 3.0, size=(12, 1))
    scale_r = rng.uniform(0.5, 3.0, size=(9, 1))
    out_v, out_r = cmfp_tr(
        torch.from_numpy(fv * scale_v),
        torch.from_numpy(fr * scale_r),
        4,
        keep_v=keep_v,
        keep_r=keep_r,
    )
    ref_v, ref_r = cmfp_naive(fv[keep_v], fr[keep_r], 4)
    np.testing.assert_allclose(out_v.numpy()[keep_v], ref_v, atol=1e-6)
    np.testing.assert_allclose(out_r.numpy()[keep_r], ref_r, atol=1e-6)
    unit = fv[:2] / np.linalg.norm(fv[:2], axis=1, keepdims=True)
    np.testing.assert_allclose(out_v.numpy()[:2], unit, atol=1e-12)
    np.testing.assert_allclose(out_r.numpy()[:1], fr[:1] / np.linalg.norm(fr[:1]), atol=1e-12)


def test_cmfp_tr_with_one_side_unclustered_only_normalises():
    """Docstring: when one side keeps no row the features are returned normalised but
    not propagated (R3)."""
    rng = np.random.default_rng(6)
    fv, fr = torch.from_numpy(rng.normal(size=(5, 3))), torch.from_numpy(rng.normal(size=(4, 3)))
    out_v, out_r = cmfp_tr(fv, fr, 2, keep_v=np.arange(5), keep_r=np.zeros(0, np.int64))
    torch.testing.assert_close(out_v, fv / fv.norm(dim=1, keepdim=True))
    torch.testing.assert_close(out_r, fr / fr.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("k_tr", [0, 2.5, -1])
def test_bad_k_tr_is_refused(k_tr):
    """check_k_tr: a positive integer or None (R1, R5)."""
    fv, gv, fr, gr = _clusters(7, 3, 3)
    for part in (PGM(k_tr=k_tr), OTLADual(k_tr=k_tr)):
        with pytest.raises(ConfigError, match="k_tr must be a positive integer"):
            part.associate(fv, gv, fr, gr)


# ---------------------------------------------------------------- quality.py -----------
def _links_naive(lv, lr, gt, nv):
    same = total = 0
    n = len(gt)
    for i in range(n):
        space = lr if i < nv else lv
        others = range(nv, n) if i < nv else range(nv)
        if space[i] < 0:
            continue
        for j in others:
            if space[j] == space[i]:
                total += 1
                same += int(gt[i] == gt[j])
    return same, total


def test_link_precision_without_cluster_counts_equals_pair_counting():
    """CrossLabels' num_clusters default to 0; link_precision sizes its tables from the
    labels then (Q8)."""
    lv = np.array([0, 2, 1, -1, 2, 0, 1])
    lr = np.array([1, 0, 1, -1, 1, 0, 1])
    gt = np.array([4, 5, 6, 7, 5, 4, 6])
    cross = CrossLabels(
        labels_in_v=lv, labels_in_r=lr, matches=np.zeros((0, 2), int), num_visible=4
    )
    q = link_precision(cross, gt)
    s, t = _links_naive(lv, lr, gt, 4)
    assert q["num_links_v2r"] + q["num_links_r2v"] == t
    assert q["link_precision"] == pytest.approx(s / t)


def test_link_precision_needs_num_visible():
    """CrossLabels without num_visible (-1) is refused, not scored from garbage (Q6)."""
    cross = CrossLabels(
        labels_in_v=np.array([0, 1]), labels_in_r=np.array([0, 0]), matches=np.zeros((0, 2), int)
    )
    with pytest.raises(ProtocolError, match="num_visible"):
        link_precision(cross, np.array([1, 2]))


# ---------------------------------------------------------------- bugs -----------------
class _Hang(Exception):
    pass


def _with_alarm(fn, seconds=5):
    def handler(*_):
        raise _Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
def test_progressive_matching_with_an_empty_side_is_refused_not_a_hang(shape):
    """progressive_matching is public (``__all__``); with no cluster on one side its
    ``while`` loop never ended (linear_sum_assignment on (K, 0) matches nothing)."""
    with pytest.raises(ConfigError, match="pgm: a matching needs a cluster on each side"):
        _with_alarm(lambda: progressive_matching(np.zeros(shape)))


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
def test_bilateral_matching_with_an_empty_side_is_refused(shape):
    """bilateral_matching divided by the empty side's size: ZeroDivisionError."""
    with pytest.raises(ConfigError, match="mbccm: a matching needs a cluster on each side"):
        bilateral_matching(np.zeros(shape))


@pytest.mark.parametrize("kw", [{"lambda_ot": float("inf")}, {"tol": float("nan")}])
def test_sinkhorn_log_refuses_non_finite_parameters(kw):
    """lambda_ot = inf gave -inf * 0 = NaN potentials (a 'not converged' warning only);
    tol = NaN never converged. OTLADual refused both (check_positive), the public
    sinkhorn_log did not."""
    cost = torch.from_numpy(np.random.default_rng(0).uniform(0, 4, size=(5, 3)))
    with pytest.raises(ConfigError, match="sinkhorn_log: need lambda_ot > 0 and finite"):
        sinkhorn_log(cost, **{"lambda_ot": 5.0, **kw})


def test_otla_max_iter_takes_numpy_integers_and_refuses_bools():
    """max_iter was checked with ``isinstance(x, int)``: numpy's 500 was refused with
    'must be an integer >= 1, got 500', and True passed as 1 iteration."""
    fv, gv, fr, gr = _clusters(8, 3, 3)
    out = OTLADual(max_iter=np.int64(500)).associate(fv, gv, fr, gr)
    assert out.has_cross_links
    with pytest.raises(ConfigError, match="max_iter"):
        OTLADual(max_iter=True).associate(fv, gv, fr, gr)


@pytest.mark.parametrize("part", [OTLADual(), PGM(), MBCCM()], ids=repr)
def test_zero_dimensional_features_are_refused(part):
    """(N, 0) features carry no information: every centroid is 0 and the labels were an
    arbitrary tie-break, silently (feature files with d = 0 were refused already)."""
    with pytest.raises(FeatureFileError, match="the features have no column"):
        part.associate(np.zeros((4, 0)), [0, 0, 1, 1], np.zeros((3, 0)), [0, 1, 1])
