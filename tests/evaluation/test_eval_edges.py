"""Edges of the evaluation numerics (audit GC, session 24: a mutation test of the metrics,
the protocols and the pseudo-label quality; these tests killed its surviving mutants),
each against the naive reference of ``eval_oracles`` or the protocol note."""

from __future__ import annotations

import numpy as np
import pytest
from eval_fixtures import make_sysu_features
from eval_oracles import naive_eval_llcm, naive_eval_regdb, naive_eval_sysu

from uvireid.errors import ProtocolError
from uvireid.evaluation import (
    eval_llcm,
    eval_regdb,
    eval_sysu,
    run_protocol,
    sysu_gallery_indices,
    sysu_query_indices,
)
from uvireid.features import Features


def test_every_hit_at_rank_one_gives_a_full_cmc_of_ones():
    """Every query's positives ranked first: CMC is 1 at every rank, mAP = mINP = 1 (by
    the definitions of notes §2.1), and the curve has max_rank entries although no hit
    lies beyond rank 1 (a histogram sized by the hits alone came out one short)."""
    rng = np.random.default_rng(0)
    gp = np.repeat(np.arange(30), 2)  # 60 gallery items, 30 ids, 2 images each
    qp = rng.integers(0, 30, 40)
    dist = rng.uniform(1, 2, (40, 60))
    dist[qp[:, None] == gp[None, :]] = rng.uniform(0, 0.5, (40, 2)).ravel()
    qc, gc = np.full(40, 6), rng.choice([1, 4, 5], 60)
    for out in (
        eval_regdb(dist, qp, gp),
        eval_sysu(dist, qp, gp, qc, gc),
        eval_llcm(dist, qp, gp, qc, gc + 3),  # cameras never shared: nothing removed
    ):
        cmc, m_ap, m_inp = out
        assert cmc.shape == (20,)
        np.testing.assert_array_equal(cmc, np.ones(20, dtype=np.float32))
        assert m_ap == 1.0 and m_inp == 1.0


@pytest.mark.parametrize("rule", ["sysu", "llcm", "regdb"])
def test_early_hits_only_match_the_reference_at_full_length(rule):
    """Strong identity signal, so every first hit is within rank 19: the curve still has
    20 entries, equal to the naive reference (notes §2)."""
    rng = np.random.default_rng(1)
    nid = 30
    gp = np.r_[np.arange(nid), rng.integers(0, nid, 50)]
    qp = rng.integers(0, nid, 60)
    if rule == "llcm":
        qc, gc = rng.integers(1, 10, 60), rng.integers(1, 10, len(gp))
    else:
        qc, gc = rng.choice([3, 6], 60), rng.choice([1, 4, 5], len(gp))
    dist = rng.standard_normal((60, len(gp))) - 6.0 * (qp[:, None] == gp[None, :])
    if rule == "sysu":
        ours, ref = eval_sysu(dist, qp, gp, qc, gc), naive_eval_sysu(dist, qp, gp, qc, gc)
    elif rule == "llcm":
        ours, ref = eval_llcm(dist, qp, gp, qc, gc), naive_eval_llcm(dist, qp, gp, qc, gc)
    else:
        ours, ref = eval_regdb(dist, qp, gp), naive_eval_regdb(dist, qp, gp)
    assert len(ref[0]) == 20 and len(ours[0]) == 20
    assert ref[0][18] == 1.0  # the premise: every hit within rank 19
    np.testing.assert_allclose(ours[0], ref[0], atol=1e-6)
    assert ours[1:] == pytest.approx(ref[1:], abs=1e-12)


def _synthetic_perm_file(tmp_path, rows=10):
    """A rand_perm_cam.mat in the kit's layout (6 x 1 cell of per-id cells of (rows, n)
    1-based image numbers) and a matching zero-image SYSU test set."""
    import scipy.io

    rng = np.random.default_rng(2)
    ids = [1, 2]
    cells = np.empty((6, 1), dtype=object)
    perms = {}
    for cam in range(1, 7):
        per = np.empty((1, len(ids)), dtype=object)
        for p in ids:
            n = 5
            perms[(cam, p)] = np.stack([rng.permutation(n) + 1 for _ in range(rows)])
            per[0, p - 1] = perms[(cam, p)].astype(np.float64)
        cells[cam - 1, 0] = per
    mat = tmp_path / "rand_perm_cam.mat"
    scipy.io.savemat(mat, {"rand_perm_cam": cells})
    paths, pids, cams = [], [], []
    for (cam, p), perm in sorted(perms.items()):
        for i in range(1, perm.shape[1] + 1):
            paths.append(f"/d/SYSU-MM01/cam{cam}/{p:04d}/{i:04d}.jpg")
            pids.append(p)
            cams.append(cam)
    cams_a = np.asarray(cams)
    f = Features(
        feats=rng.normal(size=(len(paths), 4)).astype(np.float32),
        pids=np.asarray(pids),
        cams=cams_a,
        modality=np.isin(cams_a, (3, 6)).astype(np.int64),
        paths=np.asarray(paths),
    )
    return mat, perms, f


def test_official_sampler_refuses_a_trial_the_file_does_not_have(tmp_path):
    """Rows 0..9 exist (MATLAB 1..10); trial 10 is named as missing, not an IndexError."""
    mat, perms, f = _synthetic_perm_file(tmp_path)
    last = sysu_gallery_indices(f, "all", 9, "single", "official", mat)
    want = [f"/d/SYSU-MM01/cam{c}/{p:04d}/{perms[(c, p)][9, 0]:04d}.jpg"
            for c in (1, 2, 4, 5) for p in (1, 2)]  # fmt: skip
    assert f.paths[last].tolist() == want
    with pytest.raises(ProtocolError, match="trial 10 does not exist"):
        sysu_gallery_indices(f, "all", 10, "single", "official", mat)


def test_run_protocol_stable_ranks_ties_as_a_stable_argsort():
    """`stable=True` reaches the metric: with exact ties (quantised features), each trial
    equals the naive reference with a stable argsort (notes §5.B)."""
    f = make_sysu_features(seed=5, n_ids=30)
    feats = np.round(f.feats * 2) / 2  # few distinct values: many tied distances
    f = Features(feats.astype(np.float32), f.pids, f.cams, f.modality, f.paths, dict(f.meta))
    result = run_protocol(f, "sysu-all", trials=3, stable=True)
    q = sysu_query_indices(f)
    for t in range(3):
        g = sysu_gallery_indices(f, "all", t)
        dist = -(f.feats[q] @ f.feats[g].T)
        cmc, m_ap, m_inp = naive_eval_sysu(
            dist, f.pids[q], f.pids[g], f.cams[q], f.cams[g], kind="stable"
        )
        row = result.per_trial[t]
        got = [row["R1"], row["R5"], row["R10"], row["mAP"], row["mINP"]]
        want = 100 * np.array([cmc[0], cmc[4], cmc[9], m_ap, m_inp])
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("rule", ["sysu", "llcm", "regdb"])
def test_evaluate_ranks_ties_as_the_named_evaluators_by_default(rule):
    """`metrics.evaluate` without `stable` ranks as eval_sysu / eval_llcm / eval_regdb
    without it (numpy's default argsort, the reference's), and its first three outputs
    are theirs; on tied distances, equal to the naive reference with the default sort."""
    from uvireid.evaluation.metrics import evaluate

    rng = np.random.default_rng(4)
    nid, ng, nq = 30, 200, 80
    gp = np.r_[np.arange(nid), rng.integers(0, nid, ng - nid)]
    qp = rng.integers(0, nid, nq)
    if rule == "llcm":
        qc, gc = rng.integers(1, 10, nq), rng.integers(1, 10, ng)
    else:
        qc, gc = rng.choice([3, 6], nq), rng.choice([1, 2, 4, 5], ng)
    dist = np.round(rng.standard_normal((nq, ng)) - 0.7 * (qp[:, None] == gp[None, :]), 1)
    cmc, m_ap, m_inp, n_valid = evaluate(dist, qp, gp, qc, gc, rule=rule)
    if rule == "sysu":
        named, ref = eval_sysu(dist, qp, gp, qc, gc), naive_eval_sysu(dist, qp, gp, qc, gc)
    elif rule == "llcm":
        named, ref = eval_llcm(dist, qp, gp, qc, gc), naive_eval_llcm(dist, qp, gp, qc, gc)
    else:
        named, ref = eval_regdb(dist, qp, gp), naive_eval_regdb(dist, qp, gp)
    np.testing.assert_array_equal(cmc, named[0])
    assert (m_ap, m_inp) == (named[1], named[2])
    np.testing.assert_allclose(cmc, ref[0], atol=1e-6)
    assert (m_ap, m_inp) == pytest.approx(ref[1:], abs=1e-12)
