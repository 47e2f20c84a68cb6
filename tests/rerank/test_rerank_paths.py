"""Re-ranking and kNN paths the other tests never took: float64 features wider than 64,
the sorting branch of the reciprocal sets, ivf's blocked assignment and scans, faiss's
base normalisation and ties, mixed dtypes, bfloat16, reversed views, OnDevice("auto")
(mutation audit CJ)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uvireid.clustering.ivf as ivf_mod
import uvireid.rerank.cmfp as cmfp_mod
import uvireid.rerank.kreciprocal as krec
from uvireid.clustering.knn import knn
from uvireid.errors import ConfigError
from uvireid.rerank import CMFP, CMRR, OnDevice, propagate, rerank
from uvireid.rerank.cmrr import cmrr_distance


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(nq, ng, d, seed=0, ids=8, noise=0.6):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(ids, d))
    q = c[rng.integers(0, ids, nq)] + noise * rng.normal(size=(nq, d))
    g = c[rng.integers(0, ids, ng)] + noise * rng.normal(size=(ng, d))
    return _unit(q), _unit(g)


def _official_agg_feature(fa, fb, k):
    """SALCR agg_feature restated (numpy, float64): four knn_graph blocks, G f, normalise."""

    def graph(s):
        thr = -np.sort(-s, axis=1)[:, min(k, s.shape[1]) - 1 : min(k, s.shape[1])]
        a = np.where(s >= thr, s, 0.0).clip(min=0)
        return a / a.sum(1, keepdims=True)

    big = np.block([[graph(fa @ fa.T), graph(fa @ fb.T)], [graph(fb @ fa.T), graph(fb @ fb.T)]])
    out = big @ np.concatenate([fa, fb])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


# ---------------------------------------------------------------- tests/rerank/test_cmfp.py


@pytest.mark.parametrize("mode,mixed", [("sparse", None), ("dense", False)])
def test_cmfp_float64_wide_features_equal_official_agg_feature(mode, mixed):
    """tests/rerank/test_cmfp.py. float64 features of d > 64 on the CPU take _spmm's
    column-chunked product, which must ADD the second block of each row (audit CJ, S02)."""
    q, g = _clustered(50, 30, 80, seed=3)  # d = 80 > _SPMM_COLS
    qp, gp = propagate(torch.from_numpy(q), torch.from_numpy(g), 7, mode=mode, mixed=mixed)
    want = _official_agg_feature(q, g, 7)
    got = torch.cat([qp, gp]).numpy()
    assert np.abs(got - want).max() < 1e-10


def test_cmfp_class_passes_its_backend_to_the_search(monkeypatch):
    """tests/rerank/test_cmfp.py. CMFP(backend=...) must reach the kNN search (audit CJ, S03)."""
    seen = []
    real_knn, real_within = cmfp_mod.knn, cmfp_mod.ivf_within

    def spy_knn(*a, **kw):
        seen.append(kw.get("backend"))
        return real_knn(*a, **kw)

    def spy_within(*a, **kw):
        seen.append("ivf")
        return real_within(*a, **kw)

    monkeypatch.setattr(cmfp_mod, "knn", spy_knn)
    monkeypatch.setattr(cmfp_mod, "ivf_within", spy_within)
    q, g = _clustered(40, 30, 16, seed=1)
    CMFP(k=5, mode="sparse", backend="ivf").rerank(q, g)
    assert seen and set(seen) == {"ivf"}
    seen.clear()
    CMFP(k=5, mode="sparse", backend="torch").rerank(q, g)
    assert seen and set(seen) == {"torch"}


# ---------------------------------------------------------------- tests/rerank/test_kreciprocal.py


def _naive_sets(fwd, bwd, expand, k1):
    half = int(np.around(k1 / 2))

    def rec(tf, tb, i, k):
        return [c for c in tf[i][: k + 1] if i in tb[c][: k + 1]]

    out = []
    for i in range(len(fwd)):
        r = rec(fwd, bwd, i, k1)
        star = set(r)
        for c in r:
            rc = rec(expand, expand, c, half)
            if len(set(rc) & set(r)) > 2.0 / 3 * len(rc):
                star |= set(rc)
        out.append(sorted(star))
    return out


@pytest.mark.parametrize("tiny", [False, True])
def test_reciprocal_sets_of_the_sorting_branch_equal_naive_loops(monkeypatch, tiny):
    """tests/rerank/test_kreciprocal.py (next to test_reciprocal_sets_equal_naive_loops).
    Wide bitmaps (m above ~2,000 columns: SYSU-MM01 test scale) take the branch that sorts
    the set positions instead of scanning the bitmap; _SCAN_FACTOR = 0 forces it here
    (audit CJ, B02/B03)."""
    monkeypatch.setattr(krec, "_SCAN_FACTOR", 0)
    if tiny:
        monkeypatch.setattr(krec, "_TILE_ELEMENTS", 16)
    rng = np.random.default_rng(5)
    for n, m, k1 in [(30, 20, 6), (25, 25, 15), (1, 9, 4), (12, 1, 3), (40, 33, 0), (9, 50, 20)]:
        dn = rng.integers(0, 4, size=(n, m)).astype(float)
        dm = rng.integers(0, 4, size=(m, n)).astype(float)
        de = rng.integers(0, 4, size=(m, m)).astype(float)
        fwd = np.argsort(dn, axis=1, kind="stable")[:, : k1 + 1]
        bwd = np.argsort(dm, axis=1, kind="stable")[:, : k1 + 1]
        expand = np.argsort(de, axis=1, kind="stable")
        r, c = krec.reciprocal_sets(
            torch.from_numpy(fwd), torch.from_numpy(bwd), torch.from_numpy(expand), k1, m
        )
        got = [[] for _ in range(n)]
        for i, j in zip(r.tolist(), c.tolist()):
            got[i].append(j)
        assert got == _naive_sets(fwd.tolist(), bwd.tolist(), expand.tolist(), k1), (n, m, k1)


# ---------------------------------------------------------------- tests/clustering/test_knn.py


def _oracle(q, b, k, metric):
    q, b = q.astype(np.float64), b.astype(np.float64)
    if metric == "l2":
        s = ((q[:, None] - b[None]) ** 2).sum(-1)
        order = np.argsort(s, axis=1, kind="stable")
    else:
        s = q @ b.T
        order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(s, order[:, :k], 1), order[:, :k]


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_l2_values_of_a_search_against_another_copy_are_never_negative(backend):
    """tests/clustering/test_knn.py. The non-self torch path and faiss clamp squared
    distances at 0 too (audit CJ, Q02/Q05; the self path is pinned already)."""
    if backend == "faiss":
        pytest.importorskip("faiss")
    torch.set_num_threads(1)
    x = torch.randn(400, 64, generator=torch.Generator().manual_seed(0)) * 5
    v, i = knn(x, x.clone(), 3, metric="l2", backend=backend)
    assert float(v.min()) >= 0.0
    exact = ((x.double()[:, None] - x.double()[None]) ** 2).sum(-1)
    assert torch.allclose(v.double(), exact.gather(1, i), rtol=1e-4, atol=5e-3)


def test_faiss_cosine_self_search_normalises_the_base():
    """tests/clustering/test_knn.py (audit CJ, Q03)."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(60, 8)) * rng.uniform(0.1, 10, (60, 1))).astype(np.float32)
    v, i = knn(x, None, 6, metric="cosine", backend="faiss")
    xn = _unit(x.astype(np.float64))
    want_v, want_i = _oracle(xn, xn, 6, "ip")
    assert np.allclose(v, want_v, atol=1e-5)
    assert (i == want_i).all()


def test_knn_of_a_float32_query_against_float64_base_is_float64():
    """tests/clustering/test_knn.py. Mixed dtypes are promoted, not cast down to the
    query's (audit CJ, Q04)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(10, 8, generator=g)
    b = torch.randn(50, 8, generator=g, dtype=torch.float64)
    v, i = knn(q, b, 4, backend="torch")
    assert v.dtype == torch.float64
    want_v, want_i = _oracle(q.double().numpy(), b.numpy(), 4, "ip")
    assert np.abs(v.numpy() - want_v).max() < 1e-12 and (i.numpy() == want_i).all()


def _exhaustive_case():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(400, 16, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1)
    return x, q


def test_ivf_nearest_centroid_blocks_keep_their_rows(monkeypatch):
    """tests/clustering/test_knn.py. Past 16,384 rows the centroid search runs in blocks
    (_ROWS): a small _ROWS shows whether each block scores its own rows (audit CJ, I02)."""
    monkeypatch.setattr(ivf_mod, "_ROWS", 7)
    x, q = _exhaustive_case()
    for metric in ("ip", "l2"):
        want_v, want_i = knn(q, x, 12, metric=metric, backend="torch")
        got_v, got_i = knn(q, x, 12, metric=metric, backend="ivf")  # all 12 cells probed
        assert torch.equal(got_i, want_i)
        assert torch.allclose(got_v, want_v, atol=1e-5)


def test_ivf_scan_in_several_row_blocks_equals_exact_when_every_cell_is_probed(monkeypatch):
    """tests/clustering/test_knn.py. A small candidate buffer splits the final scan into
    row blocks: each block must score its own query rows (audit CJ, I01)."""
    monkeypatch.setattr(ivf_mod, "_SCAN_BUFFER_BYTES", 1)
    x, q = _exhaustive_case()
    for metric in ("ip", "l2"):
        want_v, want_i = knn(q, x, 12, metric=metric, backend="torch")
        got_v, got_i = knn(q, x, 12, metric=metric, backend="ivf")
        assert torch.equal(got_i, want_i)
        assert torch.allclose(got_v, want_v, atol=1e-5)


def test_ivf_rows_whose_cells_are_smaller_than_k_are_searched_exactly(monkeypatch):
    """tests/clustering/test_knn.py. One probed cell: k between the smallest and the
    widest cell leaves padding slots in some rows, which must read as 'not found' (-1, then
    an exact search), never as a point of the next cell with score -inf (audit CJ, I03)."""
    monkeypatch.setattr(ivf_mod, "NPROBE", 1)
    x, q = _exhaustive_case()
    v, i = knn(q, x, 30, metric="ip", backend="ivf")
    assert torch.isfinite(v).all() and (i >= 0).all()
    assert torch.allclose(v, (q[:, None] * x[i]).sum(-1), atol=1e-5)
    assert all(len(set(r)) == 30 for r in i.tolist())


# ---------------------------------------------------------------- tests/rerank/test_rerank_errors.py


def test_bfloat16_features_are_reranked_in_float32():
    """tests/rerank/test_rerank_errors.py. propagate's doc: float16 and bfloat16 inputs are
    computed and returned in float32 (audit CJ, P04)."""
    q, g = _clustered(20, 15, 16, seed=2)
    qb, gb = torch.from_numpy(q).bfloat16(), torch.from_numpy(g).bfloat16()
    d = CMFP(k=5).rerank(qb, gb)
    assert d.dtype == torch.float32
    want = CMFP(k=5).rerank(qb.float(), gb.float())
    assert torch.equal(d, want)


def test_an_infinite_eta_is_refused():
    """tests/rerank/test_rerank_errors.py (audit CJ, P07)."""
    q, g = _clustered(10, 8, 8)
    with pytest.raises(ConfigError, match="eta"):
        CMRR(eta=float("inf"))
    with pytest.raises(ConfigError, match="eta"):
        cmrr_distance(q, g, eta=float("inf"))


def test_reversed_numpy_views_are_reranked():
    """tests/rerank/test_rerank_errors.py. A negative-stride view (x[::-1]) is a valid
    numpy array; torch.from_numpy refuses it unless made contiguous (audit CJ, P08)."""
    q, g = _clustered(12, 10, 8)
    got = rerank(q[::-1], g[::-1], "cmfp", k=3)
    want = rerank(q[::-1].copy(), g[::-1].copy(), "cmfp", k=3)
    assert np.array_equal(got, want)


# ---------------------------------------------------------------- tests/rerank/test_api.py


def test_on_device_auto_is_resolved_to_a_real_device():
    """tests/rerank/test_api.py. OnDevice(rr, "auto") resolves the device (audit CJ, O04)."""
    q, g = _clustered(12, 10, 8)
    od = OnDevice(CMFP(k=3), "auto")
    assert od.device in ("cpu", "cuda") or od.device.startswith("cuda")
    out = od.rerank(q, g)
    assert isinstance(out, np.ndarray)
    assert np.allclose(out, CMFP(k=3).rerank(q, g), atol=1e-6)


def test_faiss_ties_are_redone_whatever_tied_indices_faiss_returns(monkeypatch):
    """tests/clustering/test_knn.py. faiss-cpu keeps the first-seen (lowest) indices among
    equal scores, so a real faiss-cpu cannot show whether the exact redo of rows whose tie
    reaches past the k + 8 candidates runs; faiss-gpu makes no such promise. A stand-in
    faiss that returns the HIGHEST tied indices first (audit CJ, Q06)."""
    import sys
    import types

    class _Flat:
        def __init__(self, d, l2):
            self.l2, self.b = l2, None

        def add(self, b):
            self.b = np.asarray(b, np.float64)

        def search(self, q, k):
            q = np.asarray(q, np.float64)
            if self.l2:
                s = ((q[:, None] - self.b[None]) ** 2).sum(-1)
                key = s
            else:
                s = q @ self.b.T
                key = -s
            idx = np.arange(self.b.shape[0])
            order = np.array([np.lexsort((-idx, row)) for row in key])[:, :k]
            return np.take_along_axis(s, order, 1).astype(np.float32), order.astype(np.int64)

    fake = types.ModuleType("faiss")
    fake.IndexFlatIP = lambda d: _Flat(d, False)
    fake.IndexFlatL2 = lambda d: _Flat(d, True)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    rng = np.random.default_rng(1)
    b = rng.integers(-3, 4, (200, 6)).astype(np.float32)
    b[rng.choice(200, 40, replace=False)] = 3.0  # 40 copies of one point: a wide tie
    q = np.ones((5, 6), np.float32)
    for metric in ("ip", "l2"):
        v, i = knn(q, b, 5, metric=metric, backend="faiss")
        want_v, want_i = _oracle(q, b, 5, metric)
        assert (i == want_i).all(), metric
        assert np.allclose(v, want_v)


def test_cmfp_names_the_settings_that_change_its_result():
    """An approximate or unnormalised CMFP was recorded in provenance as the exact,
    normalised one: all three read cmfp(k=30) (audit CJ)."""
    names = {
        CMFP(k=30).name,
        CMFP(k=30, backend="torch").name,  # exact: the same neighbours, the same name
        CMFP(k=30, mode="sparse").name,
    }
    assert names == {"cmfp(k=30)"}
    assert CMFP(k=30, backend="ivf", mode="sparse").name == "cmfp(k=30, backend=ivf)"
    assert CMFP(k=30, normalize=False).name == "cmfp(k=30, normalize=False)"
    assert "backend='faiss-ivf'" in repr(CMFP(backend="faiss-ivf"))
