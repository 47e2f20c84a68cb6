"""What a second mutation audit (NG) of uvireid/associations found untested.

Sinkhorn against naive log-domain restatements of both iteration orders (stopping
iteration for several tolerances and ``check_every``; plans when the potentials are
absorbed at every step count), its parameter refusals, and OTLA-dual's options that no
test pinned: intra relabelling with label gaps, after CMFP(tr), on the infrared side of
``matches``; normalised prototypes on both sides; ``info['converged']``.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import ot
import pytest
import torch
from assoc_oracles import cmfp_naive, official_sinkhorn_log, outlier_clusters, pot_sinkhorn_log

from uvireid.associations.otla import OTLADual, sinkhorn_log, transport_plan
from uvireid.errors import ConfigError

# ------------------------------------------------------------- naive references -------


def _plan(cost, lam, lu, lv):
    return np.exp(-lam * cost + lu[:, None] + lv[None, :])


# ------------------------------------------------------------- sinkhorn_log -----------
def test_sinkhorn_log_refuses_every_documented_bad_parameter():
    """Docstring Raises: an empty cost, max_iter < 1, check_every < 1 and an infinite or
    negative tol are ConfigErrors (not a math domain error, a ZeroDivisionError, a
    silent 0-iteration 'result' or a stop before any iteration)."""
    cost = torch.ones(3, 2, dtype=torch.float64)
    for shape in ((0, 3), (3, 0)):
        with pytest.raises(ConfigError, match="empty cost matrix"):
            sinkhorn_log(torch.zeros(shape, dtype=torch.float64))
    for kw, match in (
        ({"max_iter": 0}, "max_iter must be an integer >= 1"),
        ({"check_every": 0}, "check_every must be an integer >= 1"),
        ({"tol": float("inf")}, "a finite tol >= 0"),
        ({"tol": -0.1}, "a finite tol >= 0"),
    ):
        with pytest.raises(ConfigError, match=f"sinkhorn_log: .*{match}"):
            sinkhorn_log(cost, **kw)


def test_stopping_iteration_equals_the_naive_rules_of_both_orders():
    """The iteration at which each order stops equals its naive restatement (docstring:
    default order ``sum_k |K colsum_k - 1| < tol`` after the row update; official order
    ``sum |v / v_new - 1| <= tol``), for several tolerances and check intervals; and the
    error reported is the one of that check."""
    for seed in range(6):
        rng = np.random.default_rng(seed)
        cost = rng.uniform(0, 4, size=(25, 7))
        for tol, every in ((3.0, 10), (0.3, 10), (0.1, 10), (0.03, 10), (0.1, 3), (0.02, 7)):
            kw = {"max_iter": 1000, "tol": tol, "check_every": every}
            for official, ref_fn in ((False, pot_sinkhorn_log), (True, official_sinkhorn_log)):
                res = sinkhorn_log(torch.from_numpy(cost), 5.0, official_order=official, **kw)
                _, _, n_iter, err = ref_fn(cost, 5.0, 1000, tol, every)
                assert res.n_iter == n_iter, (seed, tol, every, official)
                assert res.err == pytest.approx(err, rel=1e-6, abs=1e-12)
                assert res.converged


@pytest.mark.parametrize("official", [False, True])
def test_plans_with_absorbed_potentials_equal_the_log_domain_iterates(official):
    """lambda = 1000: the scalings leave the safe range and are absorbed into the kernel
    (module doc, Schmitzer Alg. 2). The plan after any number of iterations, absorbed on
    the last one or not, equals the plain log-domain iterates of the same order."""
    ref_fn = official_sinkhorn_log if official else pot_sinkhorn_log
    # seed 3: both scalings absorbed at the first iteration; seed 9 (6 x 30): also a
    # u-absorption at iteration 34 (default order) and 32 (official order); seed 0: a
    # v-absorption alone at iteration 55 (official order; 56 in the default one)
    problems = ((3, (30, 6), range(1, 16)), (9, (6, 30), range(1, 41)), (0, (30, 6), (55, 56)))
    for seed, shape, counts in problems:
        cost = np.random.default_rng(seed).uniform(0, 4, size=shape)
        for iters in counts:
            lu, lv, _, _ = ref_fn(cost, 1000.0, iters, 0.0)
            res = sinkhorn_log(
                torch.from_numpy(cost), 1000.0, max_iter=iters, tol=0.0, official_order=official
            )
            plan = transport_plan(torch.from_numpy(cost), 1000.0, res).numpy()
            ref = _plan(cost, 1000.0, lu, lv)
            np.testing.assert_allclose(plan, ref, rtol=1e-8, atol=1e-300, err_msg=f"{iters}")


def test_default_order_plan_equals_pot_with_absorption():
    """The default order is POT's ``sinkhorn_log`` (docstring), also at lambda = 1000."""
    rng = np.random.default_rng(3)
    cost = rng.uniform(0, 4, size=(30, 6))
    a, b = np.full(30, 1 / 30), np.full(6, 1 / 6)
    for iters in (1, 2, 5, 13):
        ref = ot.sinkhorn(
            a, b, cost, reg=1e-3, method="sinkhorn_log", numItermax=iters, stopThr=0.0, warn=False
        )
        res = sinkhorn_log(torch.from_numpy(cost), 1000.0, max_iter=iters, tol=0.0)
        plan = transport_plan(torch.from_numpy(cost), 1000.0, res).numpy()
        np.testing.assert_allclose(plan, ref, rtol=1e-8, atol=1e-300)


# ------------------------------------------------------------- OTLADual ---------------
#: the first instance of each modality an outlier
_clusters = partial(outlier_clusters, per_id=5, d=8, noise=0.6, outliers=1)


def _pot_labels(x, protos, lam=5.0):
    """Row argmax of POT's entropic plan, instances x to prototypes (SALCR Eq. 4)."""
    cost = ((x[:, None] - protos[None]) ** 2).sum(-1)
    n, k = cost.shape
    plan = ot.sinkhorn(
        np.full(n, 1 / n),
        np.full(k, 1 / k),
        cost,
        reg=1 / lam,
        method="sinkhorn_log",
        numItermax=100000,
        stopThr=1e-13,
        warn=False,
    )
    return plan.argmax(1)


def _means(x, lab, ids):
    return np.stack([x[lab == i].mean(0) for i in ids])


def test_intra_relabel_keeps_the_cluster_ids_of_label_spaces_with_gaps():
    """Intra relabelling (salcr_reference.md Sec. 5.1 step 3) gives each instance the id of
    its nearest (inner product, un-normalised) centroid: an id of the input's label
    space, not the centroid's compact index."""
    fv, gv, fr, gr = _clusters(1, 4, 3)
    gv = np.where(gv >= 0, 3 * gv + 2, -1)  # ids 2, 5, 8, 11
    gr = np.where(gr >= 0, 2 * gr + 1, -1)  # ids 1, 3, 5
    gv[[2, 7]] = [11, 2]  # two mislabelled visible instances
    out = OTLADual(intra_relabel=True).associate(fv, gv, fr, gr)
    ids_v, ids_r = np.unique(gv[gv >= 0]), np.unique(gr[gr >= 0])
    nv = len(gv)
    for x, lab, ids, got in (
        (fv, gv, ids_v, out.labels_in_v[:nv]),
        (fr, gr, ids_r, out.labels_in_r[nv:]),
    ):
        ref = np.where(lab >= 0, ids[(x @ _means(x, lab, ids).T).argmax(1)], -1)
        np.testing.assert_array_equal(got, ref)


def test_intra_relabel_and_cross_labels_use_the_cmfp_tr_features():
    """With k_tr set, the centroids, the intra relabelling and the costs all use the
    propagated features F' (salcr_reference.md Sec. 5.1 steps 1-4); checked against a
    naive CMFP(tr) and POT."""
    fv, gv, fr, gr = _clusters(2, 4, 4, noise=1.0)
    out = OTLADual(k_tr=3, intra_relabel=True, tol=1e-10, max_iter=100000).associate(fv, gv, fr, gr)
    kv, kr = gv >= 0, gr >= 0
    pv, pr = cmfp_naive(fv[kv], fr[kr], 3)
    cv, cr = _means(pv, gv[kv], range(4)), _means(pr, gr[kr], range(4))
    nv = len(gv)
    np.testing.assert_array_equal(out.labels_in_v[:nv][kv], (pv @ cv.T).argmax(1))
    np.testing.assert_array_equal(out.labels_in_r[nv:][kr], (pr @ cr.T).argmax(1))
    np.testing.assert_array_equal(out.labels_in_r[:nv][kv], _pot_labels(pv, cr))
    np.testing.assert_array_equal(out.labels_in_v[nv:][kr], _pot_labels(pr, cv))


def test_matches_use_the_relabelled_infrared_labels():
    """Class doc: ``matches`` are the pairs some instance's two labels join; with
    ``intra_relabel`` an infrared instance's own label is the relabelled one."""
    fv, gv, fr, gr = _clusters(3, 5, 4, noise=0.3)
    gr[[2, 6]] = [3, 2]  # two mislabelled infrared instances (of clusters 0 and 1)
    out = OTLADual(intra_relabel=True).associate(fv, gv, fr, gr)
    lv, lr = out.labels_in_v, out.labels_in_r
    nv = len(gv)
    np.testing.assert_array_equal(lr[nv:][[2, 6]], [0, 1])  # relabelled back
    both = (lv >= 0) & (lr >= 0)
    ref = sorted({(int(a), int(b)) for a, b in zip(lv[both], lr[both])})
    assert sorted(map(tuple, out.matches.tolist())) == ref


def test_normalized_centroids_are_the_prototypes_of_both_directions():
    """``normalize_centroids``: both modalities' prototypes are L2-normalised means."""
    fv, gv, fr, gr = _clusters(4, 4, 3, noise=1.2)
    fv, fr = fv * 3.0, fr * 0.5  # un-normalised features: the option matters
    out = OTLADual(normalize_centroids=True, tol=1e-10, max_iter=100000).associate(fv, gv, fr, gr)
    kv, kr = gv >= 0, gr >= 0
    cv, cr = _means(fv, gv, range(4)), _means(fr, gr, range(3))
    cv /= np.linalg.norm(cv, axis=1, keepdims=True)
    cr /= np.linalg.norm(cr, axis=1, keepdims=True)
    nv = len(gv)
    np.testing.assert_array_equal(out.labels_in_r[:nv][kv], _pot_labels(fv[kv], cr))
    np.testing.assert_array_equal(out.labels_in_v[nv:][kr], _pot_labels(fr[kr], cv))


def test_info_converged_needs_both_directions():
    """One visible cluster: the infrared-to-visible plan has one column and is exact at the
    first check; the visible-to-infrared one cannot meet tol 1e-9 in one iteration. The
    association is not converged."""
    fv, gv, fr, gr = _clusters(5, 1, 3)
    out = OTLADual(max_iter=1, tol=1e-9).associate(fv, gv, fr, gr)
    assert out.info["iterations"] == (1, 1)
    assert out.info["marginal_error"][1] < 1e-9 < out.info["marginal_error"][0]
    assert out.info["converged"] is False


@pytest.mark.parametrize("tol", [0.0, -0.1, float("inf")])
def test_parameter_check_refuses_a_bad_tol_before_a_run(tol):
    """``_check_params`` runs before training starts (runner.check_parts): a tol that is
    not a finite number > 0 is refused there, naming otla_dual and tol."""
    with pytest.raises(ConfigError, match="otla_dual: tol must be a finite number > 0"):
        OTLADual(tol=tol)._check_params()


# ------------------------------------------------------------- MBCCM ------------------
def test_mbccm_info_counts_the_mean_partners_of_each_side():
    """``info``: ``mean_partners_r`` is the mean number of visible partners of an infrared
    cluster, ``mean_partners_v`` that of infrared partners of a visible one."""
    from uvireid.associations.mbccm import MBCCM

    fv, gv, fr, gr = _clusters(6, 6, 3, noise=1.5)
    out = MBCCM().associate(fv, gv, fr, gr)
    mask = out.match_mask()  # (K_v, K_r), visible-major
    assert mask.shape == (6, 3)
    assert out.info["mean_partners_r"] == pytest.approx(mask.sum(0).mean())
    assert out.info["mean_partners_v"] == pytest.approx(mask.sum(1).mean())
    assert out.info["num_matches"] == int(mask.sum())


# ------------------------------------------------------- refusals and devices ---------
@pytest.mark.parametrize(
    "kw",
    [
        {"max_iter": float("inf")},
        {"max_iter": float("nan")},
        {"check_every": float("inf")},
        {"max_iter": 2.5},
    ],
)
def test_sinkhorn_log_refuses_non_integer_counts_with_a_config_error(kw):
    """The public sinkhorn_log checked its counts with ``int(max_iter) < 1``: an infinite or
    NaN count escaped as OverflowError/ValueError ('cannot convert float infinity to
    integer') instead of the documented ConfigError (OTLADual refuses them with check_k)."""
    cost = torch.ones(3, 2, dtype=torch.float64)
    with pytest.raises(ConfigError, match="sinkhorn_log"):
        sinkhorn_log(cost, **kw)


@pytest.mark.parametrize("name", ["otla_dual", "pgm", "mbccm"])
def test_device_auto_passes_the_recipe_check_and_runs_the_association(name):
    """``associator.device=auto`` (and ``clusterer.device=auto``) passes the recipe check
    (config.check_device accepts 'auto') and runner.check_parts, but
    checks.resolve_device called ``torch.device('auto')``: a raw RuntimeError at the
    first association, possibly hours into a run. 'auto' is the GPU when there is one,
    else the CPU, as the recipe's own ``device: auto``."""
    import uvireid  # noqa: F401  (registers the parts)
    from uvireid.registry import ASSOCIATORS

    fv, gv, fr, gr = _clusters(7, 3, 3)
    ref = ASSOCIATORS.build({"type": name}).associate(fv, gv, fr, gr)
    out = ASSOCIATORS.build({"type": name, "device": "auto"}).associate(fv, gv, fr, gr)
    np.testing.assert_array_equal(out.labels_in_v, ref.labels_in_v)
    np.testing.assert_array_equal(out.labels_in_r, ref.labels_in_r)
    from uvireid.associations.checks import resolve_device

    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", torch.zeros(1)).type == want


def test_as_features_refuses_no_rows_unless_allowed():
    """as_features' docstring: empty input is a FeatureFileError unless ``allow_empty``
    (the clusterers rely on it; the associators allow an empty modality)."""
    from uvireid.associations.checks import as_features
    from uvireid.errors import FeatureFileError

    with pytest.raises(FeatureFileError, match="got 0 feature rows"):
        as_features(np.zeros((0, 3), np.float32), "t")
    assert as_features(np.zeros((0, 3), np.float32), "t", allow_empty=True).shape == (0, 3)


def test_a_torch_cuda_device_without_cuda_is_refused_with_a_config_error(monkeypatch):
    """resolve_device's docstring: CUDA asked for but not available is a ConfigError (a
    torch.device object bypasses the string check of config.check_device)."""
    from uvireid.associations.checks import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="torch sees no CUDA device"):
        resolve_device(torch.device("cuda"), torch.zeros(2, 2))


@pytest.mark.parametrize("k_tr", [True, "8"])
def test_k_tr_must_be_a_number_not_a_bool_or_a_string(k_tr):
    """check_k_tr: a positive integer or None; a bool is not a count (True would run
    CMFP(tr) with k = 1), nor is a string."""
    from uvireid.associations.refine import check_k_tr

    with pytest.raises(ConfigError, match="k_tr must be a positive integer"):
        check_k_tr(k_tr, "otla_dual")
