"""eval_sysu / eval_regdb / eval_llcm against the naive per-query oracles (notes §5.A, §5.B)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_oracles import naive_eval_llcm, naive_eval_regdb, naive_eval_sysu

from uvireid.errors import ProtocolError
from uvireid.evaluation import metrics
from uvireid.evaluation.metrics import eval_llcm, eval_regdb, eval_sysu

TOL = 1e-6


def random_case(seed: int, dataset: str):
    """A case as in notes §5.A: repeated ids, camera combinations, invalid queries."""
    rng = np.random.default_rng(seed)
    nid = int(rng.integers(25, 61))
    ng = int(rng.integers(60, 301))
    g_pids = np.concatenate([np.arange(nid), rng.integers(0, nid, max(0, ng - nid))])
    rng.shuffle(g_pids)
    ng = len(g_pids)
    nq = int(rng.integers(5, 301))
    q_pids = rng.integers(0, nid + 5, nq)  # ids >= nid are absent from the gallery
    if dataset == "llcm":
        q_cams, g_cams = rng.integers(1, 10, nq), rng.integers(1, 10, ng)
    else:
        g_cams = rng.choice([1, 2, 4, 5], ng)
        moved = rng.random(nid) < 0.2  # ~20% of ids only in cam 2: invalid for cam3 queries
        g_cams[moved[g_pids]] = 2
        q_cams = rng.choice([3, 6], nq)
    offset = rng.uniform(0, 0.8)
    dist = rng.standard_normal((nq, ng)) - offset * (q_pids[:, None] == g_pids[None, :])
    return dist, q_pids, g_pids, q_cams, g_cams


def call(dataset, fn_ours, dist, qp, gp, qc, gc, **kw):
    if dataset == "regdb":
        return fn_ours(dist, qp, gp, **kw)
    return fn_ours(dist, qp, gp, qc, gc, **kw)


PAIRS = {
    "sysu": (eval_sysu, naive_eval_sysu),
    "llcm": (eval_llcm, naive_eval_llcm),
    "regdb": (eval_regdb, naive_eval_regdb),
}


def assert_close(ours, ref):
    cmc, m_ap, m_inp = ours
    cmc_r, m_ap_r, m_inp_r = ref
    assert cmc.dtype == np.float32
    assert len(cmc) == 20
    np.testing.assert_allclose(cmc[: len(cmc_r)], cmc_r, rtol=0, atol=TOL)
    assert abs(m_ap - m_ap_r) <= TOL
    assert abs(m_inp - m_inp_r) <= TOL


def compare_random_cases(dataset: str, seeds: range) -> int:
    ours_fn, ref_fn = PAIRS[dataset]
    compared = undefined = 0
    for seed in seeds:
        dist, qp, gp, qc, gc = random_case(1000 * seed + len(dataset), dataset)
        try:
            ref = call(dataset, ref_fn, dist, qp, gp, qc, gc)
        except (AssertionError, ValueError):
            undefined += 1  # checked by the dedicated tests below
            continue
        try:
            assert_close(call(dataset, ours_fn, dist, qp, gp, qc, gc), ref)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, shape {dist.shape}: {exc}") from None
        compared += 1
    return compared


@pytest.mark.parametrize("dataset", ["sysu", "llcm", "regdb"])
def test_vectorised_metrics_equal_naive_reference_on_random_cases(dataset):
    assert compare_random_cases(dataset, range(70)) >= 60


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["sysu", "llcm", "regdb"])
def test_vectorised_metrics_equal_naive_reference_on_many_random_cases(dataset):
    assert compare_random_cases(dataset, range(70, 370)) >= 280


def test_sysu_cmc_length_equals_reference_when_sysu_invalid_queries_are_many():
    # cam3 queries whose ids live only in cam2 are invalid: denominator is N_valid
    dist, qp, gp, qc, gc = random_case(5, "sysu")
    gc[:] = 2
    gc[: len(gc) // 3] = 4
    assert_close(eval_sysu(dist, qp, gp, qc, gc), naive_eval_sysu(dist, qp, gp, qc, gc))


@pytest.mark.parametrize("dataset", ["sysu", "llcm", "regdb"])
def test_ties_stable_sort_equals_reference_with_stable_argsort(dataset):
    ours_fn, ref_fn = PAIRS[dataset]
    for seed in range(15):
        dist, qp, gp, qc, gc = random_case(77 + seed, dataset)
        dist = np.round(dist, 1)  # exact ties are common
        ref = call(dataset, ref_fn, dist, qp, gp, qc, gc, kind="stable")
        assert_close(call(dataset, ours_fn, dist, qp, gp, qc, gc, stable=True), ref)


@pytest.mark.parametrize("dataset", ["sysu", "regdb"])
def test_ties_default_sort_equals_reference_default_argsort_on_this_machine(dataset):
    ours_fn, ref_fn = PAIRS[dataset]
    for seed in range(10):
        dist, qp, gp, qc, gc = random_case(300 + seed, dataset)
        dist = np.round(dist, 1).astype(np.float32)
        assert_close(
            call(dataset, ours_fn, dist, qp, gp, qc, gc),
            call(dataset, ref_fn, dist, qp, gp, qc, gc),
        )


def test_blocks_of_queries_give_the_same_result(monkeypatch):
    dist, qp, gp, qc, gc = random_case(11, "sysu")
    whole = eval_sysu(dist, qp, gp, qc, gc)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 3 * dist.shape[1] + 1)  # 3 queries a block
    blocked = eval_sysu(dist, qp, gp, qc, gc)
    np.testing.assert_array_equal(whole[0], blocked[0])
    assert whole[1:] == pytest.approx(blocked[1:], abs=1e-15)


def test_hand_computed_ap_inp_and_dedup_cmc():
    # one cam6 query of id 7; ranked gallery ids: 3, 7, 3, 5, 7  (distances ascending)
    g_pids = np.array([3, 7, 3, 5, 7])
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    cmc, m_ap, m_inp = eval_sysu(dist, [7], g_pids, [6], [1, 1, 4, 5, 4])
    assert m_ap == pytest.approx((1 / 2 + 2 / 5) / 2)
    assert m_inp == pytest.approx(2 / 5)
    # dedup list 3, 7, 5: hit at rank 2 (standard CMC also 2)
    np.testing.assert_array_equal(cmc[:3], [0, 1, 1])
    # standard CMC for RegDB: first hit at rank 2 too
    cmc_r, ap_r, _ = eval_regdb(dist, [7], g_pids)
    np.testing.assert_array_equal(cmc_r[:3], [0, 1, 1])
    assert ap_r == pytest.approx(m_ap)


def test_sysu_cam3_query_drops_every_cam2_item_whatever_its_pid():
    # ids ranked: 4 (cam2), 4 (cam2), 9 (cam1), 4 (cam1)
    dist = np.array([[0.1, 0.2, 0.3, 0.4]] * 2)
    g_pids, g_cams = [4, 4, 9, 4], [2, 2, 1, 1]
    cmc, m_ap, m_inp = eval_sysu(dist, [4, 4], g_pids, [3, 6], g_cams)
    # cam3: kept 9, 4 -> AP 1/2; cam6: kept all -> AP (1 + 1 + 3/4) / 3
    assert m_ap == pytest.approx((0.5 + (1 + 1 + 0.75) / 3) / 2)
    assert m_inp == pytest.approx((1 / 2 + 3 / 4) / 2)
    assert cmc[0] == pytest.approx(0.5)


def test_llcm_removes_same_id_same_camera_only():
    dist = np.array([[0.1, 0.2, 0.3]])
    cmc, m_ap, _ = eval_llcm(dist, [5], [5, 8, 5], [2], [2, 2, 3])
    assert m_ap == pytest.approx(1 / 2)  # kept: 8, 5
    assert cmc[0] == 0 and cmc[1] == 1


def test_dedup_cmc_dominates_standard_cmc_and_rank1_is_equal():
    dist, qp, gp, qc, gc = random_case(21, "sysu")
    qc[:] = 6  # nothing removed: SYSU and RegDB differ only by deduplication
    ded = eval_sysu(dist, qp, gp, qc, gc)[0]
    std = eval_regdb(dist, qp, gp)[0]
    assert ded[0] == std[0]
    assert np.all(ded >= std - 1e-7)


def test_no_valid_query_is_a_protocol_error():
    dist = np.zeros((2, 3))
    with pytest.raises(ProtocolError, match="none of the 2 queries has a positive"):
        eval_sysu(dist, [1, 2], [3, 4, 5], [3, 6], [1, 1, 1])
    with pytest.raises(ProtocolError, match="none of the 1 queries"):
        eval_sysu(np.zeros((1, 2)), [1], [1, 2], [3], [2, 1])  # only positive is in cam2


def test_fewer_gallery_items_than_max_rank_pads_with_the_last_value():
    rng = np.random.default_rng(3)
    dist = rng.standard_normal((8, 6))
    qp, gp = rng.integers(0, 3, 8), np.array([0, 1, 2, 0, 1, 2])
    ref = naive_eval_regdb(dist, qp, gp)
    cmc, m_ap, m_inp = eval_regdb(dist, qp, gp)
    assert len(ref[0]) == 6 and len(cmc) == 20
    np.testing.assert_allclose(cmc[:6], ref[0], atol=TOL)
    np.testing.assert_array_equal(cmc[6:], np.full(14, cmc[5]))
    assert (m_ap, m_inp) == pytest.approx(ref[1:], abs=TOL)


def test_ragged_dedup_rows_where_reference_raises_are_padded_per_query():
    # 25 gallery items with 22 ids; cam3 queries lose the 5 cam2 items (4 ids exclusive to cam2)
    rng = np.random.default_rng(4)
    gp = np.r_[np.arange(22), [0, 1, 2]]
    gc = np.r_[np.ones(18, int), 2 * np.ones(4, int), [2, 1, 1]]
    qp, qc = rng.integers(0, 18, 30), rng.choice([3, 6], 30)
    dist = rng.standard_normal((30, 25))
    with pytest.raises(ValueError):
        naive_eval_sysu(dist, qp, gp, qc, gc)  # the reference: inhomogeneous rows
    cmc, m_ap, m_inp = eval_sysu(dist, qp, gp, qc, gc)
    # every query keeps >= 18 distinct ids: equal to the reference cut at 18
    ref = naive_eval_sysu(dist, qp, gp, qc, gc, max_rank=18)
    np.testing.assert_allclose(cmc[:18], ref[0], atol=TOL)
    assert (m_ap, m_inp) == pytest.approx(ref[1:], abs=TOL)
    # the documented padding: each query's curve continues with its last value, i.e.
    # cmc[r] = fraction of valid queries whose deduplicated hit rank is <= r + 1
    hit_ranks = []
    for i in range(len(qp)):
        order = np.argsort(dist[i], kind="stable")
        kept = [int(p) for p, c in zip(gp[order], gc[order]) if not (qc[i] == 3 and c == 2)]
        distinct = list(dict.fromkeys(kept))
        if qp[i] in distinct:
            hit_ranks.append(distinct.index(qp[i]) + 1)
    expected = [np.mean(np.asarray(hit_ranks) <= r + 1) for r in range(20)]
    np.testing.assert_allclose(cmc, expected, atol=TOL)


def test_uniformly_short_dedup_rows_extend_the_reference_curve():
    rng = np.random.default_rng(5)
    gp = np.repeat(np.arange(10), 4)  # 10 ids < max_rank
    gc = rng.choice([1, 4], 40)
    qp, qc = rng.integers(0, 10, 25), rng.choice([3, 6], 25)
    dist = rng.standard_normal((25, 40))
    ref = naive_eval_sysu(dist, qp, gp, qc, gc)
    assert len(ref[0]) == 10
    cmc = eval_sysu(dist, qp, gp, qc, gc)[0]
    np.testing.assert_allclose(cmc[:10], ref[0], atol=TOL)
    np.testing.assert_array_equal(cmc[10:], cmc[9])


def test_lists_and_torch_tensors_are_accepted():
    dist, qp, gp, qc, gc = random_case(8, "sysu")
    ref = eval_sysu(dist, qp, gp, qc, gc)
    as_lists = eval_sysu(dist.tolist(), qp.tolist(), gp.tolist(), qc.tolist(), gc.tolist())
    as_torch = eval_sysu(*(torch.as_tensor(x) for x in (dist, qp, gp, qc, gc)))
    for other in (as_lists, as_torch):
        np.testing.assert_array_equal(ref[0], other[0])
        assert ref[1:] == other[1:]


def test_bad_inputs_name_the_problem():
    with pytest.raises(ProtocolError, match="expected a 2-D"):
        eval_regdb(np.zeros(3), [1], [1, 2, 3])
    with pytest.raises(ProtocolError, match=r"g_pids has shape \(2,\)"):
        eval_regdb(np.zeros((1, 3)), [1], [1, 2])
    with pytest.raises(ProtocolError, match="NaN"):
        eval_regdb(np.full((1, 2), np.nan), [1], [1, 2])
    with pytest.raises(ProtocolError, match="needs q_camids"):
        metrics.evaluate(np.zeros((1, 2)), [1], [1, 2], rule="sysu")
    with pytest.raises(ProtocolError, match="unknown metric rule"):
        metrics.evaluate(np.zeros((1, 2)), [1], [1, 2], rule="market")
