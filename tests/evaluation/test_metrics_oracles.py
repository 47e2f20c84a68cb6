"""CMC / mAP / mINP edges against a naive per-query loop written here from
notes/eval_datasets.md §2 (and sklearn's average precision where it applies: without ties
it is the non-interpolated AP of the spec)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from uvireid.errors import ProtocolError
from uvireid.evaluation import metrics
from uvireid.evaluation.metrics import eval_llcm, eval_regdb, eval_sysu, evaluate


def naive(dist, qp, gp, qc, gc, rule, max_rank=20):
    """One query at a time: stable ranking, the rule's removal, AP / INP over the kept
    list, the first hit's (deduplicated for sysu / llcm) rank; CMC extended to max_rank."""
    aps, inps, hits = [], [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        if rule == "sysu":
            kept = [j for j in order if not (qc[i] == 3 and gc[j] == 2)]
        elif rule == "llcm":
            kept = [j for j in order if not (gp[j] == qp[i] and gc[j] == qc[i])]
        else:
            kept = list(order)
        rel = [gp[j] == qp[i] for j in kept]
        if not any(rel):
            continue
        pos = [p + 1 for p, r in enumerate(rel) if r]
        aps.append(sum(k / p for k, p in enumerate(pos, 1)) / len(pos))
        inps.append(len(pos) / pos[-1])
        if rule == "regdb":
            hits.append(pos[0])
        else:
            distinct = list(dict.fromkeys(gp[j] for j in kept))
            hits.append(distinct.index(qp[i]) + 1)
    hits = np.asarray(hits)
    cmc = np.array([np.mean(hits <= r + 1) for r in range(max_rank)])
    return cmc, float(np.mean(aps)), float(np.mean(inps)), len(hits)


def case(seed, rule, nq=40, ng=90, nid=20):
    rng = np.random.default_rng(seed)
    gp = np.r_[np.arange(nid), rng.integers(0, nid, ng - nid)]
    qp = rng.integers(0, nid + 4, nq)  # some ids absent from the gallery
    if rule == "llcm":
        qc, gc = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    else:
        qc, gc = rng.choice([3, 6], nq), rng.choice([1, 2, 4, 5], ng)
    dist = rng.standard_normal((nq, ng)) - 0.8 * (qp[:, None] == gp[None, :])
    return dist, qp, gp, qc, gc


def check(out, ref, atol=1e-9):
    cmc, m_ap, m_inp, n_valid = out
    np.testing.assert_allclose(cmc, ref[0], atol=1e-6)
    assert m_ap == pytest.approx(ref[1], abs=atol)
    assert m_inp == pytest.approx(ref[2], abs=atol)
    assert n_valid == ref[3]


@pytest.mark.parametrize("rule", ["sysu", "llcm", "regdb"])
def test_map_equals_sklearn_average_precision_over_the_kept_gallery(rule):
    """Without ties, AP_i of the spec is sklearn's average_precision_score of the kept
    entries scored by -distance; mAP averages it over the valid queries only."""
    dist, qp, gp, qc, gc = case(1, rule)
    aps = []
    for i in range(len(qp)):
        if rule == "sysu":
            kept = ~((qc[i] == 3) & (gc == 2))
        elif rule == "llcm":
            kept = ~((gp == qp[i]) & (gc == qc[i]))
        else:
            kept = np.ones(len(gp), bool)
        y = gp[kept] == qp[i]
        if y.any():
            aps.append(average_precision_score(y, -dist[i, kept]))
    _, m_ap, _, n_valid = evaluate(dist, qp, gp, qc, gc, rule=rule)
    assert n_valid == len(aps) < len(qp)  # the premise: some queries are invalid
    assert m_ap == pytest.approx(np.mean(aps), abs=1e-12)


def test_one_query_per_block_gives_the_same_result(monkeypatch):
    """A block size smaller than one row (``_BLOCK_ELEMENTS < ng``) still processes one
    query per block (``max(1, ...)``), not zero queries per block."""
    dist, qp, gp, qc, gc = case(2, "sysu", nq=7, ng=30, nid=10)
    whole = evaluate(dist, qp, gp, qc, gc, rule="sysu")
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 1)
    single = evaluate(dist, qp, gp, qc, gc, rule="sysu")
    np.testing.assert_array_equal(whole[0], single[0])
    assert whole[1:] == pytest.approx(single[1:], abs=1e-15)
    check(single, naive(dist, qp, gp, qc, gc, "sysu"))


@pytest.mark.parametrize("rule", ["sysu", "llcm"])
def test_an_id_whose_items_are_all_removed_is_not_counted_before_the_hit(rule):
    """Dedup CMC (notes §2): ids among the *kept* list only. Id 9 lives only in removed
    entries (camera 2 for a cam-3 SYSU query; the query's own camera for LLCM) ranked
    before the hit, and must not push the hit to rank 2; ranked last, it must not either."""
    if rule == "sysu":
        gp, gc, qc = np.array([9, 9, 4, 1]), np.array([2, 2, 1, 1]), [3]
    else:
        # llcm removes same id + same camera: make the query's id 4 appear in its camera
        gp, gc, qc = np.array([4, 1, 4, 7]), np.array([5, 1, 1, 1]), [5]
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    cmc, m_ap, m_inp, n = evaluate(dist, [4], gp, qc, gc, rule=rule)
    ref = naive(dist, np.array([4]), gp, np.array(qc), gc, rule)
    check((cmc, m_ap, m_inp, n), ref)
    if rule == "sysu":
        np.testing.assert_array_equal(cmc[:2], [1, 1])  # kept: 4, 1 -> hit at rank 1
    else:
        np.testing.assert_array_equal(cmc[:3], [0, 1, 1])  # kept: 1, 4, 7 -> rank 2


def test_positions_past_32767_are_exact():
    """One query over 40 000 gallery items with removal (LLCM): the kept positions of the
    positives, which lie at the end, exceed int16 and must be exact (AP, INP)."""
    ng = 40_000
    gp = np.arange(ng) % 1000 + 1
    gp[-3:] = 0  # the query's id: three positives ranked last
    gp[5] = 0  # and one in the query's camera, removed
    gc = np.ones(ng, int)
    gc[5] = 7
    dist = np.arange(ng, dtype=np.float64)[None]
    cmc, m_ap, m_inp, n = evaluate(dist, [0], gp, [7], gc, rule="llcm", max_rank=5)
    pos = np.array([ng - 3, ng - 2, ng - 1])  # 1-based kept positions (one item removed)
    assert m_ap == pytest.approx(np.mean(np.arange(1, 4) / pos), abs=1e-15)
    assert m_inp == pytest.approx(3 / (ng - 1), abs=1e-15)
    assert n == 1 and cmc.tolist() == [0.0] * 5  # 1000 distinct ids before the hit


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, np.float64(3.0)])
def test_max_rank_must_be_a_positive_integer(bad):
    dist, qp, gp, qc, gc = case(3, "regdb", nq=5, ng=25, nid=5)
    with pytest.raises(ProtocolError, match="max_rank must be an integer >= 1"):
        eval_regdb(dist, qp, gp, max_rank=bad)


def test_max_rank_one_and_numpy_integer_max_rank():
    dist, qp, gp, qc, gc = case(4, "sysu", nq=12, ng=40, nid=10)
    cmc1 = eval_sysu(dist, qp, gp, qc, gc, max_rank=1)[0]
    cmc20 = eval_sysu(dist, qp, gp, qc, gc, max_rank=np.int64(20))[0]
    assert cmc1.shape == (1,) and cmc20.shape == (20,) and cmc1[0] == cmc20[0]


@pytest.mark.parametrize("shape", [(2, 0), (0, 3)])
def test_an_empty_query_or_gallery_is_refused(shape):
    with pytest.raises(ProtocolError, match="no query or no gallery"):
        eval_regdb(np.zeros(shape), np.zeros(shape[0], int), np.zeros(shape[1], int))


def test_two_dimensional_labels_are_refused_even_with_the_right_length():
    """(nq, 1) pids broadcast against (ng,) gallery ids into a matrix; refused by shape."""
    dist = np.zeros((3, 3))
    with pytest.raises(ProtocolError, match=r"q_pids has shape \(3, 1\)"):
        eval_regdb(dist, np.zeros((3, 1), int), [0, 1, 2])
    with pytest.raises(ProtocolError, match=r"g_camids has shape \(3, 1\)"):
        eval_llcm(dist, [0, 1, 2], [0, 1, 2], [1, 1, 1], np.ones((3, 1), int))


@pytest.mark.parametrize("rule", ["sysu", "llcm", "regdb"])
def test_non_contiguous_and_integer_distances_equal_the_contiguous_float_ones(rule):
    dist, qp, gp, qc, gc = case(5, rule, nq=20, ng=50, nid=12)
    dist_i = np.round(dist * 1000).astype(np.int64)  # integer distances (ties: stable)
    want = evaluate(dist_i.astype(np.float64), qp, gp, qc, gc, rule=rule, stable=True)
    fortran = np.asfortranarray(dist_i)
    strided = np.zeros((40, 100), np.int64)
    strided[::2, ::2] = dist_i
    for d in (dist_i, fortran, strided[::2, ::2], torch.as_tensor(dist_i).T.contiguous().T):
        got = evaluate(d, qp, gp, qc, gc, rule=rule, stable=True)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1:] == want[1:]
    check(want, naive(dist_i, qp, gp, qc, gc, rule))


@pytest.mark.parametrize("rule", ["sysu", "llcm", "regdb"])
def test_permuting_queries_or_gallery_changes_nothing(rule):
    """The metrics depend on the distances and labels only (no ties here), not on the
    order of the rows or columns; and equal the naive loop."""
    dist, qp, gp, qc, gc = case(6, rule)
    ref = evaluate(dist, qp, gp, qc, gc, rule=rule)
    check(ref, naive(dist, qp, gp, qc, gc, rule))
    rng = np.random.default_rng(0)
    pq, pg = rng.permutation(len(qp)), rng.permutation(len(gp))
    got = evaluate(dist[pq][:, pg], qp[pq], gp[pg], qc[pq], gc[pg], rule=rule)
    np.testing.assert_array_equal(got[0], ref[0])
    assert got[1:3] == pytest.approx(ref[1:3], abs=1e-12) and got[3] == ref[3]


def test_absent_query_ids_inside_and_outside_the_gallery_range_are_invalid():
    """Query ids missing from the gallery (below, between and above its ids) have no
    positive: skipped, not mapped onto a neighbouring gallery id."""
    gp = np.array([2, 5, 9, 2, 5, 9])
    qp = np.array([1, 3, 7, 10, 5, 2])  # only the last two are valid
    rng = np.random.default_rng(7)
    dist = rng.standard_normal((6, 6))
    cmc, m_ap, m_inp, n = evaluate(dist, qp, gp, rule="regdb")
    assert n == 2
    check((cmc, m_ap, m_inp, n), naive(dist, qp, gp, None, None, "regdb"))


def test_single_query_single_gallery_item():
    cmc, m_ap, m_inp = eval_regdb(np.array([[0.3]]), [4], [4], max_rank=3)
    assert cmc.tolist() == [1.0, 1.0, 1.0] and m_ap == 1.0 and m_inp == 1.0
    cmc, m_ap, m_inp = eval_sysu(np.array([[0.3]]), [4], [4], [6], [2], max_rank=2)
    assert cmc.tolist() == [1.0, 1.0] and m_ap == 1.0


def test_bfloat16_tensor_distances_are_evaluated_as_their_float32_values():
    rng = np.random.default_rng(8)
    d = torch.as_tensor(rng.standard_normal((6, 9)), dtype=torch.bfloat16)
    qp, gp = rng.integers(0, 3, 6), np.r_[np.arange(3), rng.integers(0, 3, 6)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = eval_regdb(d, qp, gp, stable=True)
    want = eval_regdb(d.float().numpy(), qp, gp, stable=True)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1:] == want[1:]
