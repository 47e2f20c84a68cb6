"""Edges of the re-rankers (audit GB, session 24: a mutation test of ``uvireid/rerank``;
these tests killed its surviving mutants, and the last ones test its findings). Each test
compares against an independent computation written here (a plain matrix product, a loop
over pairs, exact rational arithmetic), not through uvireid."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from rerank_oracles import naive_knn_graph_loop

from uvireid.errors import FeatureFileError
from uvireid.rerank.cmfp import affinity_blocks
from uvireid.rerank.distances import gram_symmetric, self_distances, squared_norms


@pytest.mark.parametrize("n", [257, 513])
def test_gram_symmetric_fills_the_block_below_a_one_row_last_tile(n):
    # tile = max(256, ceil(n / 8)) = 256: the last tile holds one row, and the block
    # below the first tile must still be filled
    x = torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = torch.full((n, n), float("nan"), dtype=torch.float64)
    got = gram_symmetric(x, out=out)
    want = x.numpy() @ x.numpy().T
    assert np.isfinite(got.numpy()).all()
    assert np.allclose(got.numpy(), want, atol=1e-12, rtol=0)
    assert torch.equal(got, got.T)


@pytest.mark.parametrize("n", [257, 513])
def test_self_distances_fill_the_block_below_a_one_row_last_tile(n):
    # tile = max(256, ceil(n / 12)) = 256: as above
    x = torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = torch.full((n, n), float("nan"), dtype=torch.float64)
    d, m = self_distances(x, squared_norms(x), out=out)
    xn = x.numpy()
    want = ((xn[:, None, :] - xn[None, :, :]) ** 2).sum(2)
    assert np.allclose(d.numpy(), want, atol=1e-12, rtol=0)
    assert np.allclose(m.numpy(), want.max(1), atol=1e-12, rtol=0)


def test_screening_bound_of_the_gallery_query_block_uses_the_query_norms():
    # unnormalised features, queries 1e6 times longer than gallery rows: the float32 error
    # of a gallery-query product scales with |g_i| max|q_j|.
    # Two queries 3e-8 apart: float32 products pick the wrong nearest query for many
    # gallery rows; the screened selection must still equal float64's argmax.
    gen = torch.Generator().manual_seed(2)
    d = 64
    q = torch.nn.functional.normalize(torch.randn(6, d, generator=gen, dtype=torch.float64), dim=1)
    g = torch.nn.functional.normalize(
        torch.randn(500, d, generator=gen, dtype=torch.float64), dim=1
    )
    q[1] = torch.nn.functional.normalize(
        q[0] + 3e-8 * torch.randn(d, generator=gen, dtype=torch.float64), dim=0
    )
    g[:400] = torch.nn.functional.normalize(q[0] + 0.05 * g[:400], dim=1)
    q, g = q * 1e3, g * 1e-3
    s64 = g.numpy() @ q.numpy().T
    s32 = g.numpy().astype(np.float32) @ q.numpy().astype(np.float32).T
    assert ((s64[:, 0] > s64[:, 1]) != (s32[:, 0] > s32[:, 1])).sum() > 0  # float32 flips some
    screened = affinity_blocks(q, g, 1, mode="dense", mixed=True)
    assert screened["gq"].col.tolist() == s64.argmax(1).tolist()
    assert screened["qg"].col.tolist() == s64.T.argmax(1).tolist()


def test_kreciprocal_with_lambda_one_is_the_clamped_normalised_squared_distance():
    # lambda = 1 leaves only the reference's d = (|x - y|^2 / row max)^T term; a query
    # duplicated in the gallery has distance 0 there, never the negative rounding of
    # |x|^2 + |y|^2 - 2 x.y in float32
    from scipy.spatial.distance import cdist

    from uvireid.rerank import k_reciprocal_distance

    rng = np.random.default_rng(0)
    q = (rng.normal(size=(20, 32)) * 30).astype(np.float32)
    g = np.concatenate([q, (rng.normal(size=(5, 32)) * 30).astype(np.float32)])
    got = k_reciprocal_distance(q, g, 3, 1, 1.0)
    x = np.concatenate([q, g]).astype(np.float64)
    full = cdist(x, x) ** 2
    want = (full / full.max(1, keepdims=True))[:20, 20:]
    assert got.min() >= 0
    assert np.allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("max_pairs", [1, 2, 7, 1 << 23])
def test_min_sum_in_small_chunks_equals_a_loop_over_pairs(max_pairs):
    # every chunk of at most max_pairs pairs, the last one included
    from uvireid.rerank.kreciprocal import min_sum

    rng = np.random.default_rng(3)
    a = rng.random((5, 9)) * (rng.random((5, 9)) < 0.4)
    b = rng.random((6, 9)) * (rng.random((6, 9)) < 0.4)
    a[-1, -1] = b[0, -1] = 0.5  # the last entry of ``a`` meets a column of ``b``
    got = min_sum(
        torch.from_numpy(a).to_sparse_csr(),
        torch.from_numpy(b).to_sparse_csr(),
        max_pairs=max_pairs,
    )
    want = np.array([[np.minimum(a[i], b[j]).sum() for j in range(6)] for i in range(5)])
    assert np.allclose(got.numpy(), want, atol=1e-12, rtol=0)


def _quantised_pair():
    """Unit features with exact ties: gallery rows 2, 3 and 9 are bit-identical and row 6
    has the same inner product with row 7 in exact arithmetic (6 / sqrt(42))."""
    g = np.array(
        [[1, 1, 0, 1], [0, 1, 1, 0], [1, 2, 1, 0], [1, 2, 1, 0], [1, 1, 1, 0],
         [0, 2, 1, 0], [1, 2, 0, 1], [1, 2, 1, 1], [1, 1, 0, 0], [1, 2, 1, 0]],
        dtype=np.float64,
    )  # fmt: skip
    q = np.array([[2, 1, 0, 1], [2, 1, 1, 1], [1, 0, 0, 0], [3, 1, 1, 0]], dtype=np.float64)
    return q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(
        g, axis=1, keepdims=True
    )


def _exact(a: np.ndarray, b: np.ndarray) -> list[list[Fraction]]:
    """``a @ b.T`` in exact arithmetic: the float inputs as fractions, no rounding."""
    fa = [[Fraction(float(v)) for v in row] for row in a]
    fb = [[Fraction(float(v)) for v in row] for row in b]
    return [[sum(x * y for x, y in zip(ra, rb)) for rb in fb] for ra in fa]


def _assert_kept_as_exact_arithmetic_up_to_rounding(blocks, q, g, k):
    """Each block row keeps every entry above its exact k-th value, none below it, and at
    least k; entries within a float64 rounding (1e-12) of that value are ties in exact
    arithmetic that a matrix product may separate by an ulp: some may be left out."""
    sides = {"q": q, "g": g}
    for name, block in blocks.items():
        sims = _exact(sides[name[0]], sides[name[1]])
        for i, row in enumerate(sims):
            kth = sorted(row, reverse=True)[min(k, len(row)) - 1]
            kept = set(block.col[block.crow[i] : block.crow[i + 1]].tolist())
            above = {j for j, s in enumerate(row) if s - kth > 1e-12}
            below = {j for j, s in enumerate(row) if kth - s > 1e-12}
            assert above <= kept and not (below & kept), (name, i)
            assert len(kept) >= min(k, len(row)), (name, i)  # the k-th itself


@pytest.mark.parametrize("mixed", [True, False])
def test_exact_ties_are_kept_as_exact_arithmetic_up_to_an_ulp(mixed):
    """Audit GB: on features with ties in exact arithmetic the float64 product (GEMM,
    mirrored tiles) gives some tied entries one ulp less than others and keeps part of the
    tie; the mixed path re-scores its band one product at a time and keeps all of it
    (propagated features 5.6e-2 apart). Which part of such a tie the official code keeps
    depends on its BLAS too (numpy's product keeps all four here, torch's two). Both paths
    keep what exact arithmetic keeps wherever it is decided by more than a rounding; the
    docstrings said "the same entries as float64 products, ties included"."""
    q, g = _quantised_pair()
    blocks = affinity_blocks(torch.from_numpy(q), torch.from_numpy(g), 3, mode="dense", mixed=mixed)
    _assert_kept_as_exact_arithmetic_up_to_rounding(blocks, q, g, 3)
    rng = np.random.default_rng(4)
    for _ in range(3):  # many ties: small integer features, normalised
        q = rng.integers(0, 3, size=(12, 5)).astype(np.float64) + np.eye(1, 5)
        g = rng.integers(0, 3, size=(30, 5)).astype(np.float64) + np.eye(1, 5)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        blocks = affinity_blocks(
            torch.from_numpy(q), torch.from_numpy(g), 4, mode="dense", mixed=mixed
        )
        _assert_kept_as_exact_arithmetic_up_to_rounding(blocks, q, g, 4)


def test_knn_affinity_refuses_nan_similarities():
    """A NaN similarity made ``topk``'s threshold NaN and its whole row silently 0."""
    from uvireid.rerank.cmfp import knn_affinity

    with pytest.raises(FeatureFileError, match=r"NaN or \+inf in 1 row\(s\) \(first: row 0\)"):
        knn_affinity(np.array([[np.nan, 1.0, 2.0], [0.5, 1.0, 2.0]]), 1)
    with pytest.raises(FeatureFileError, match="first: row 1"):
        knn_affinity(torch.tensor([[0.5, 1.0, 2.0], [0.5, float("inf"), 2.0]]), 1)


@pytest.mark.parametrize("method", ["cmfp", "kreciprocal", "cmrr", "aim"])
def test_features_without_columns_are_refused(method):
    """(N, 0) features passed every check and gave a constant distance matrix."""
    from uvireid.rerank import rerank

    with pytest.raises(FeatureFileError, match=r"no columns \(d=0, 3 query and 4 gallery"):
        rerank(np.zeros((3, 0)), np.zeros((4, 0)), method)


def test_knn_affinity_takes_minus_inf_as_a_masked_entry():
    """-inf masks an entry (same-camera pairs, say), as in the official knn_graph; audit
    GB's check refused it for a while (review HA)."""
    from uvireid.rerank.cmfp import knn_affinity

    rng = np.random.default_rng(0)
    s = rng.uniform(-0.2, 1.0, size=(6, 9))
    s[rng.random(s.shape) < 0.3] = -np.inf  # masked pairs (same camera, say)
    s[5, :8] = -np.inf  # a row with fewer than k candidates
    np.testing.assert_allclose(knn_affinity(s, 3), naive_knn_graph_loop(s, 3), atol=1e-12)
