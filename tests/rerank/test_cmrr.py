"""CMRR against MULT/SALCR's ``re_ranking_cross`` re-stated with loops (rerank_oracles)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from rerank_oracles import _intra_re_ranking, mult_re_ranking_cross, stable_argsort

import uvireid.rerank.cmrr as cmrr_mod
import uvireid.rerank.kreciprocal as krec
from uvireid.rerank import CMRR, cmrr_distance
from uvireid.rerank.distances import self_distances, squared_norms


@pytest.mark.parametrize("nq,ng,k", [(40, 25, 15), (30, 30, 8), (60, 20, 5), (5, 7, 15)])
def test_cmrr_equals_reference_loops(clustered, nq, ng, k):
    q, g = clustered(nq, ng, 8, seed=nq + k)
    ref = mult_re_ranking_cross(q, g, k, 0.1)
    out = cmrr_distance(q, g, k, 0.1)
    assert out.shape == (nq, ng) and out.dtype == np.float64
    assert np.abs(out - ref).max() < 1e-4


def test_cmrr_float16_reference_differs_only_by_its_precision(clustered):
    q, g = clustered(40, 25, 8, seed=9)
    with np.errstate(all="ignore"):
        ref16 = mult_re_ranking_cross(q, g, 15, 0.1, store=np.float16)
    out = cmrr_distance(q, g, 15, 0.1)
    assert np.abs(out - ref16).max() < 5e-2


def test_cmrr_duplicates_ties(clustered):
    q, g = clustered(30, 20, 6, seed=4)
    g[1] = g[2] = g[8]
    q[3] = q[4]
    ref = mult_re_ranking_cross(q, g, 6, 0.1)
    out = cmrr_distance(q, g, 6, 0.1)
    assert np.abs(out - ref).max() < 1e-4


def test_cmrr_single_query_is_finite_where_reference_gives_nan(clustered):
    q, g = clustered(1, 6, 4, seed=5)
    with np.errstate(all="ignore"):
        ref = mult_re_ranking_cross(q, g, 15, 0.1)
    assert np.isnan(ref).all()  # 0/0 in the query-query column normalisation
    out = CMRR().rerank(torch.from_numpy(q).float(), torch.from_numpy(g).float())
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------- building blocks
# The CMRR internals against naive computations written out here (loops over rows, dense
# numpy), with ties and duplicate rows, and with tiny working blocks so that every block
# loop runs many times.


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Working blocks of a few rows (every block loop of cmrr runs many times)."""
    monkeypatch.setattr(cmrr_mod, "_BLOCK_BYTES", 8 * 64)
    monkeypatch.setattr(cmrr_mod, "_BLOCK_TERMS", 64)


def _random_csr(rng, rows: int, cols: int, density: float, dup_rows=(), empty_rows=()):
    """Sparse nonnegative CSR with tied values (a few distinct levels), duplicate and empty
    rows; returns (torch CSR with shuffled column order inside rows, dense numpy copy)."""
    dense = rng.choice([0.25, 0.5, 1.0, 0.125], size=(rows, cols))
    dense *= rng.random((rows, cols)) < density
    for a, b in dup_rows:
        dense[a] = dense[b]
    for a in empty_rows:
        dense[a] = 0
    crow, col, val = [0], [], []
    for i in range(rows):
        nz = rng.permutation(np.flatnonzero(dense[i]))  # unsorted columns, as V's rows
        col.extend(nz.tolist())
        val.extend(dense[i, nz].tolist())
        crow.append(len(col))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t = torch.sparse_csr_tensor(
            torch.tensor(crow, dtype=torch.long),
            torch.tensor(col, dtype=torch.long),
            torch.tensor(val, dtype=torch.float64),
            (rows, cols),
            check_invariants=False,
        )
    return t, dense


def _naive_min_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0], b.shape[0]))
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = sum(min(x, y) for x, y in zip(a[i], b[j]))
    return out


@pytest.mark.parametrize("blocks", ["default", "tiny"])
def test_min_sum_paths_equal_naive_loop(request, blocks):
    if blocks == "tiny":
        request.getfixturevalue("tiny_blocks")
    rng = np.random.default_rng(3)
    va, a = _random_csr(rng, 37, 50, 0.2, dup_rows=[(4, 9)], empty_rows=[0, 20])
    vb, b = _random_csr(rng, 23, 50, 0.4, dup_rows=[(1, 2), (3, 2)], empty_rows=[5])
    want = _naive_min_sum(a, b)
    dense = cmrr_mod._min_sum_dense(va, vb)
    rows = torch.cat([blk.clone() for _, _, blk in cmrr_mod._min_sum_rows(va, vb)])
    cross = cmrr_mod._min_sum_cross(va, vb)
    for got in (dense, rows, cross):
        assert got.shape == want.shape
        assert np.abs(got.numpy() - want).max() < 1e-12
    # the three add each pair's terms in the same order: equal to the bit
    assert torch.equal(dense, rows) and torch.equal(dense, krec.min_sum(va, vb))
    # a wide, short vb (many rows, narrow columns) takes the row-block path
    vc, c = _random_csr(rng, 90, 50, 0.03)
    assert 2 * int(torch.bincount(vc.col_indices(), minlength=50).max()) < 90
    assert np.abs(cmrr_mod._min_sum_cross(va, vc).numpy() - _naive_min_sum(a, c)).max() < 1e-12


def test_self_distances_exactly_symmetric_and_naive(clustered):
    q, _ = clustered(600, 1, 12, seed=11)  # three tiles of 256 rows
    q[7] = q[400]
    x = torch.from_numpy(q)
    d, m = self_distances(x, squared_norms(x))
    assert torch.equal(d, d.T)
    from uvireid.rerank.distances import gram_symmetric

    g = gram_symmetric(x)  # CMFP's self blocks: exactly symmetric, equal to x x^T
    assert torch.equal(g, g.T) and (g - x @ x.T).abs().max() < 1e-12
    assert torch.equal(m, d.max(dim=1).values)
    sq = (q * q).sum(1)
    naive = np.array(
        [[sq[i] + sq[j] - 2 * float(q[i] @ q[j]) for j in range(600)] for i in range(600)]
    )
    assert np.abs(d.numpy() - naive).max() < 1e-12
    # a zero maximum (identical rows) is returned as 1: those rows stay unnormalised
    z = torch.ones((3, 4), dtype=torch.float64)
    assert torch.equal(
        self_distances(z, squared_norms(z))[1],
        torch.ones(3, dtype=torch.float64),
    )


@pytest.mark.parametrize("blocks", ["default", "tiny"])
@pytest.mark.parametrize("n,k,k2,lam", [(70, 15, 6, 0.3), (45, 8, 3, 0.5), (12, 15, 6, 0.3)])
def test_intra_ranks_equal_naive_loops(request, clustered, blocks, n, k, k2, lam):
    """The blocked, sparse intra-modality re-ranking gives the ranks of MULT's dense one."""
    if blocks == "tiny":
        request.getfixturevalue("tiny_blocks")
    q, _ = clustered(n, 1, 6, seed=n + k)
    q[3] = q[4] = q[10]  # duplicates: exact ties in d and in the re-ranked values
    x = torch.from_numpy(q)
    d, m = self_distances(x, squared_norms(x))
    dn = d.numpy() / m.numpy()[None, :]  # CMRR's column-normalised n_qq
    rr = _intra_re_ranking(dn, k, k2, lam, np.float64)
    want = stable_argsort(rr)[:, : k + 1]
    got = cmrr_mod._intra_ranks(d / m[:, None], k, k2, lam, k + 1)
    assert np.array_equal(got.numpy(), want)
    # the dense version of the step (public) gives the oracle's values themselves
    dense = cmrr_mod.intra_re_ranking(torch.from_numpy(dn), k, k2, lam)
    assert np.abs(dense.numpy() - rr).max() < 1e-12


def test_cmrr_blocked_equals_default_and_reference(request, clustered):
    q, g = clustered(70, 40, 8, seed=21)
    q[5] = q[6]
    g[0] = g[1]
    out = cmrr_distance(q, g, 15, 0.1)
    request.getfixturevalue("tiny_blocks")
    tiny = cmrr_distance(q, g, 15, 0.1)
    assert np.array_equal(out, tiny)
    assert np.abs(tiny - mult_re_ranking_cross(q, g, 15, 0.1)).max() < 1e-4


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_row_normalize_pair_takes_int32_indexed_blocks(index_dtype):
    """CUDA's sparse kernels may hand back CSR blocks indexed in int32 (seen on an H100:
    'Index put requires the source and destination dtypes match'); both widths must give
    [a, b] / row sums, checked against the dense computation."""
    rng = np.random.default_rng(0)
    a_dense = rng.random((5, 4)) * (rng.random((5, 4)) < 0.5)
    b_dense = rng.random((5, 6)) * (rng.random((5, 6)) < 0.5)
    a_dense[2] = 0.0
    b_dense[2] = 0.0  # an empty row stays empty (no division by zero)

    def csr(m):
        t = torch.from_numpy(m).to_sparse_csr()
        return torch.sparse_csr_tensor(
            t.crow_indices().to(index_dtype),
            t.col_indices().to(index_dtype),
            t.values(),
            t.shape,
            check_invariants=True,
        )

    out = cmrr_mod._row_normalize_pair(csr(a_dense), csr(b_dense)).to_dense().numpy()
    both = np.concatenate([a_dense, b_dense], axis=1)
    sums = both.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, np.divide(both, np.where(sums > 0, sums, 1.0)), atol=1e-12)
