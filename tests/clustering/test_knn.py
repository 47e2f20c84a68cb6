"""The shared kNN utility against a stable numpy argsort (ties broken by index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cluster_oracles import brute_knn

import uvireid.clustering.ivf as ivf_mod
from uvireid.clustering.knn import knn, topk_stable
from uvireid.errors import ConfigError


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_equals_stable_argsort_on_integer_data_with_ties(metric, backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    # integer features: exact scores, many exact ties
    q = rng.integers(-2, 3, (50, 5)).astype(np.float32)
    b = rng.integers(-2, 3, (80, 5)).astype(np.float32)
    q[q.sum(1) == 0, 0] = 1.0
    b[(b == 0).all(1), 0] = 1.0
    vals, idx = knn(q, b, 7, metric=metric, backend=backend, block_rows=16)
    want_vals, want_idx = brute_knn(q.astype(np.float64), b.astype(np.float64), 7, metric)
    assert idx.dtype == np.int64 and idx.shape == (50, 7)
    assert np.allclose(vals, want_vals, atol=1e-5)
    if metric != "cosine":  # cosine scores of integer vectors are not exact
        assert (idx == want_idx).all()


def test_knn_self_search_is_deterministic_and_clamps_k():
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v1, i1 = knn(x, None, 50)
    v2, i2 = knn(x.clone(), x.clone(), 50)
    assert i1.shape == (20, 20) and v1.dtype == torch.float64
    assert torch.equal(i1, i2) and torch.equal(v1, v2)
    _, i3 = knn(x, None, 3, metric="l2")
    assert (i3[:, 0] == torch.arange(20)).all()  # each row finds itself first


def test_topk_stable_breaks_ties_by_index():
    s = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    v, i = topk_stable(s, 2)
    assert i.tolist() == [[1, 2], [0, 1]]
    v, i = topk_stable(s, 3, largest=False)
    assert i.tolist() == [[0, 3, 1], [0, 1, 2]]
    assert v.tolist() == [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]


def test_knn_errors_name_the_fix():
    x = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ConfigError, match="unknown metric 'dot'"):
        knn(x, x, 2, metric="dot")
    with pytest.raises(ConfigError, match="unknown backend"):
        knn(x, x, 2, backend="annoy")
    with pytest.raises(ConfigError, match="query has d=4 but base has d=3"):
        knn(x, x[:, :3], 2)
    with pytest.raises(ConfigError, match="empty input"):
        knn(x[:0], x, 2)
    with pytest.raises(ConfigError, match="k must be >= 1"):
        knn(x, x, 0)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("block_rows", [7, 16, 64, None])
def test_self_search_over_symmetric_tiles_equals_stable_argsort(metric, block_rows):
    # integer features: exact scores and many ties, some straddling the k-th place and
    # block borders; duplicate rows give equal scores in both directions
    rng = np.random.default_rng(3)
    x = rng.integers(-1, 2, (61, 4)).astype(np.float32)
    x[10] = x[40]
    x[(x == 0).all(1), 0] = 1.0
    want_vals, want_idx = brute_knn(x.astype(np.float64), x.astype(np.float64), 9, metric)
    for base in (None, "same"):
        t = torch.from_numpy(x)
        vals, idx = knn(t, t if base else None, 9, metric=metric, block_rows=block_rows)
        assert torch.equal(idx, torch.from_numpy(want_idx))
        assert np.allclose(vals.numpy(), want_vals, atol=0)
    # a copy of the query is an ordinary (non-self) search with the same answer
    _, idx2 = knn(x, x.copy(), 9, metric=metric, block_rows=block_rows)
    assert (idx2 == want_idx).all()


def test_blocked_transpose_equals_transpose():
    from uvireid.clustering.knn import copy_transposed

    panel = torch.randn(13, 40)
    tile = panel[:, 5:32]  # a strided slice, as the self search passes
    out = copy_transposed(torch.empty(27, 13), tile, sub=4)
    assert out.is_contiguous() and torch.equal(out, tile.T)
    # into a strided destination, casting, as k-reciprocal's squared blocks
    dst = torch.zeros(40, 30, dtype=torch.float64)[3:30, 2:15]
    copy_transposed(dst, tile, sub=5)
    assert torch.equal(dst, tile.T.double())


@pytest.mark.parametrize("backend", ["faiss-ivf", "ivf"])
def test_approximate_knn_is_exact_when_every_cell_is_probed_and_falls_back_on_short_rows(
    monkeypatch, backend
):
    import uvireid.clustering.knn as knn_mod

    if backend == "faiss-ivf":
        pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(400, 16, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1)
    for metric in ("ip", "l2"):
        for dtype in (torch.float32, torch.float64):
            want_v, want_i = knn(q.to(dtype), x.to(dtype), 12, metric=metric, backend="torch")
            # 400 points -> 10 faiss cells or 12 ivf cells of ~32, all probed: exhaustive
            got_v, got_i = knn(q.to(dtype), x.to(dtype), 12, metric=metric, backend=backend)
            assert got_v.dtype == dtype
            assert torch.equal(got_i, want_i)
            assert torch.allclose(got_v, want_v, atol=1e-5)
    # one probed cell cannot hold 300 neighbours: those rows are searched exactly
    if backend == "faiss-ivf":
        monkeypatch.setattr(knn_mod, "IVF_NPROBE", 1)
    else:
        monkeypatch.setattr(ivf_mod, "NPROBE", 1)
    got_v, got_i = knn(q, x, 300, metric="ip", backend=backend)
    want_v, want_i = knn(q, x, 300, metric="ip", backend="torch")
    assert (got_i >= 0).all() and torch.equal(got_i, want_i)
    # a real approximation (1 cell probed) is deterministic
    a = knn(q, x, 5, backend=backend)[1]
    assert torch.equal(a, knn(q, x, 5, backend=backend)[1])


@pytest.mark.parametrize("two_levels", [False, True])
def test_ivf_finds_most_neighbours_of_clustered_points_and_is_deterministic(
    monkeypatch, two_levels
):
    # 6,000 points of 600 identities: ~190 cells of ~32, 16 probed per query; scored flat,
    # or (as above 1,024 cells) through ~24 coarse nodes of ~8 cells, the 6 nearest kept
    from uvireid.clustering import ivf

    if two_levels:
        monkeypatch.setattr(ivf, "_DENSE_LEVEL", 64)
        monkeypatch.setattr(ivf, "GROUP", 8)
        monkeypatch.setattr(ivf, "BEAM", 6)
        assert len(ivf._Index(torch.randn(6000, 8), "ip", 0).levels) == 2
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(600, 48, generator=g)
    x = centres.repeat_interleave(10, 0) + 0.6 * torch.randn(6000, 48, generator=g)
    x = torch.nn.functional.normalize(x, dim=1)
    want_v, want_i = knn(x, None, 10, backend="torch")
    got_v, got_i = knn(x, x, 10, backend="ivf")
    recall = (got_i[:, :, None] == want_i[:, None, :]).any(-1).float().mean()
    # a real approximation, and a good one (the coarse beam costs a little recall)
    assert (0.92 if two_levels else 0.95) <= recall < 1.0
    # every returned score is the true inner product of its pair
    assert torch.allclose(got_v, (x[:, None, :] * x[got_i]).sum(-1), atol=1e-5)
    # rows best first
    assert (got_v[:, 1:] <= got_v[:, :-1]).all()
    assert torch.equal(got_i, knn(x, x, 10, backend="ivf")[1])


@pytest.mark.parametrize("two_levels", [False, True])
def test_ivf_within_a_block_of_the_queries_finds_what_the_plain_search_finds(
    monkeypatch, two_levels
):
    """CMFP's ivf path searches queries + gallery against each set; placing each base
    point in the first of its own probed cells (instead of probing the base again) gives
    the same neighbours and scores as the plain approximate search."""
    from uvireid.clustering import ivf
    from uvireid.clustering.knn import ivf_within

    if two_levels:
        monkeypatch.setattr(ivf, "_DENSE_LEVEL", 64)
        monkeypatch.setattr(ivf, "GROUP", 8)
        monkeypatch.setattr(ivf, "BEAM", 6)
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(500, 32, generator=g)
    x = centres.repeat_interleave(8, 0)[torch.randperm(4000, generator=g)]
    x = torch.nn.functional.normalize(x + 0.5 * torch.randn(4000, 32, generator=g), dim=1)
    for rows in (slice(0, 700), slice(700, None)):
        want = knn(x, x[rows], 12, backend="ivf")
        got = ivf_within(x, rows, 12)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
        # a real approximation (not every cell probed), and the base's own rows first
        exact = knn(x, x[rows], 12, backend="torch")[1]
        assert not torch.equal(got[1], exact)
        own = torch.arange(4000)[rows]
        assert (got[1][own, 0] == torch.arange(len(own))).float().mean() > 0.99
    with pytest.raises(ValueError, match="base_rows"):
        ivf.search(x, x[:10], 5, "ip", base_rows=slice(0, 20))


def test_everything_but_the_faiss_backends_works_without_faiss(monkeypatch):
    import sys

    from uvireid.clustering.jaccard import jaccard_distance
    from uvireid.clustering.knn import faiss_available
    from uvireid.rerank import propagate

    monkeypatch.setitem(sys.modules, "faiss", None)  # "import faiss" now fails
    assert not faiss_available()
    x = torch.nn.functional.normalize(
        torch.randn(60, 8, generator=torch.Generator().manual_seed(2)), dim=1
    )
    want = knn(x, None, 5, backend="torch")
    got = knn(x, None, 5)  # auto: the exact torch path
    assert torch.equal(got[1], want[1])
    assert jaccard_distance(x, k1=6, k2=2).shape == (60, 60)
    assert propagate(x[:10], x[10:], 5, mode="sparse")[0].shape == (10, 8)
    assert torch.equal(knn(x, x, 5, backend="ivf")[1], want[1])  # 60 points: 2 cells, exact
    for backend in ("faiss", "faiss-ivf"):
        with pytest.raises(ConfigError, match="pip install faiss-cpu"):
            knn(x, x, 3, backend=backend)


def test_a_faiss_that_fails_at_search_time_falls_back_to_torch_under_auto(monkeypatch, caplog):
    """faiss-gpu builds that import and then fail on the machine's CUDA (a recurring peer
    complaint): ``backend="auto"`` warns once and gives the exact torch search's answer;
    an explicit ``backend="faiss"`` still raises."""
    import logging

    from uvireid.clustering import knn as knn_mod

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution")

    rng = np.random.default_rng(0)
    q = torch.from_numpy(rng.normal(size=(30, 8)).astype(np.float32))
    b = torch.from_numpy(rng.normal(size=(50, 8)).astype(np.float32))
    want = knn_mod.knn(q, b, 5, backend="torch")
    monkeypatch.setattr(knn_mod, "_auto_backend", lambda x: "faiss")
    monkeypatch.setattr(knn_mod, "_knn_faiss", broken)
    monkeypatch.setattr(knn_mod, "faiss_available", lambda gpu=False: True)
    knn_mod._warn_faiss_failed_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        got = knn_mod.knn(q, b, 5)
        knn_mod.knn(q, b, 5)
    assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0])
    assert caplog.text.count("faiss-gpu failed (RuntimeError: CUDA error") == 1
    with pytest.raises(RuntimeError, match="no kernel image"):
        knn_mod.knn(q, b, 5, backend="faiss")


@pytest.mark.slow
def test_self_search_holds_o_n_k_candidates_not_every_tiles():
    """Audit Y (session 17): each row block kept one candidate chunk per earlier block
    until its turn, O(N^3 k / tile) in all (2.2 GiB at 100k rows); the running top-k per
    block keeps it at O(N k). Peak RSS of a search with many blocks, in a fresh process."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import resource, torch
        torch.set_num_threads(1)
        from uvireid.clustering import knn as K
        K._TILE_BYTES_CPU = 2**20  # a small tile budget: 250 blocks of 32 rows,
        K._SELF_MAX_BLOCKS = 10**6  # all through the self search
        x = torch.nn.functional.normalize(torch.randn(8000, 8, generator=torch.Generator().manual_seed(0)), dim=1)
        K.knn(x[:200], k=30, metric="l2", backend="torch")  # libraries and allocator warm
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        K.knn(x, k=30, metric="l2", backend="torch")
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**10)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown = float(out.stdout.split()[-1])
    # the output (8000 x 30 x 12 B = 2.7 MiB) and a 1 MiB tile; the chunks took ~180 MiB
    assert grown < 48, f"the self search grew the peak RSS by {grown:.0f} MiB"


@pytest.mark.parametrize("backend", ["torch", "ivf"])
def test_l2_knn_values_are_squared_distances_never_negative(backend):
    """Squared distances are >= 0 (the module doc: clamped at 0); rows of norm ~40 round
    |x|^2 + |y|^2 - 2 x.y below 0 by ~1e-3 without the clamp."""
    x = torch.randn(400, 64, generator=torch.Generator().manual_seed(0)) * 5
    v, i = knn(x, k=3, metric="l2", backend=backend)
    assert float(v.min()) >= 0.0
    exact = ((x.double()[:, None] - x.double()[None]) ** 2).sum(-1)
    assert torch.allclose(v.double(), exact.gather(1, i), rtol=1e-4, atol=5e-3)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_l2_values_of_a_search_against_another_copy_are_never_negative(backend):
    """The non-self torch path and faiss clamp squared
    distances at 0 too (audit CJ, Q02/Q05; the self path is pinned already)."""
    if backend == "faiss":
        pytest.importorskip("faiss")
    x = torch.randn(400, 64, generator=torch.Generator().manual_seed(0)) * 5
    v, i = knn(x, x.clone(), 3, metric="l2", backend=backend)
    assert float(v.min()) >= 0.0
    exact = ((x.double()[:, None] - x.double()[None]) ** 2).sum(-1)
    assert torch.allclose(v.double(), exact.gather(1, i), rtol=1e-4, atol=5e-3)


def test_faiss_cosine_self_search_normalises_the_base():
    """The base is normalised as the queries are (audit CJ, Q03)."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(60, 8)) * rng.uniform(0.1, 10, (60, 1))).astype(np.float32)
    v, i = knn(x, None, 6, metric="cosine", backend="faiss")
    x64 = x.astype(np.float64)
    xn = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    want_v, want_i = brute_knn(xn, xn, 6, "ip")
    assert np.allclose(v, want_v, atol=1e-5)
    assert (i == want_i).all()


def test_knn_of_a_float32_query_against_float64_base_is_float64():
    """Mixed dtypes are promoted, not cast down to the
    query's (audit CJ, Q04)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(10, 8, generator=g)
    b = torch.randn(50, 8, generator=g, dtype=torch.float64)
    v, i = knn(q, b, 4, backend="torch")
    assert v.dtype == torch.float64
    want_v, want_i = brute_knn(q.double().numpy(), b.numpy(), 4, "ip")
    assert np.abs(v.numpy() - want_v).max() < 1e-12 and (i.numpy() == want_i).all()


def _exhaustive_case():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(400, 16, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1)
    return x, q


def test_ivf_nearest_centroid_blocks_keep_their_rows(monkeypatch):
    """Past 16,384 rows the centroid search runs in blocks
    (_ROWS): a small _ROWS shows whether each block scores its own rows (audit CJ, I02)."""
    monkeypatch.setattr(ivf_mod, "_ROWS", 7)
    x, q = _exhaustive_case()
    for metric in ("ip", "l2"):
        want_v, want_i = knn(q, x, 12, metric=metric, backend="torch")
        got_v, got_i = knn(q, x, 12, metric=metric, backend="ivf")  # all 12 cells probed
        assert torch.equal(got_i, want_i)
        assert torch.allclose(got_v, want_v, atol=1e-5)


def test_ivf_scan_in_several_row_blocks_equals_exact_when_every_cell_is_probed(monkeypatch):
    """A small candidate buffer splits the final scan into
    row blocks: each block must score its own query rows (audit CJ, I01)."""
    monkeypatch.setattr(ivf_mod, "_SCAN_BUFFER_BYTES", 1)
    x, q = _exhaustive_case()
    for metric in ("ip", "l2"):
        want_v, want_i = knn(q, x, 12, metric=metric, backend="torch")
        got_v, got_i = knn(q, x, 12, metric=metric, backend="ivf")
        assert torch.equal(got_i, want_i)
        assert torch.allclose(got_v, want_v, atol=1e-5)


def test_ivf_rows_whose_cells_are_smaller_than_k_are_searched_exactly(monkeypatch):
    """One probed cell: k between the smallest and the
    widest cell leaves padding slots in some rows, which must read as 'not found' (-1, then
    an exact search), never as a point of the next cell with score -inf (audit CJ, I03)."""
    monkeypatch.setattr(ivf_mod, "NPROBE", 1)
    x, q = _exhaustive_case()
    v, i = knn(q, x, 30, metric="ip", backend="ivf")
    assert torch.isfinite(v).all() and (i >= 0).all()
    assert torch.allclose(v, (q[:, None] * x[i]).sum(-1), atol=1e-5)
    assert all(len(set(r)) == 30 for r in i.tolist())


def test_faiss_ties_are_redone_whatever_tied_indices_faiss_returns(monkeypatch):
    """faiss-cpu keeps the first-seen (lowest) indices among
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
        want_v, want_i = brute_knn(q, b, 5, metric)
        assert (i == want_i).all(), metric
        assert np.allclose(v, want_v)
