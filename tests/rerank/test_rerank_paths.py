"""Re-ranking and kNN paths the other tests never took: float64 features wider than 64,
CMFP's backend reaching the search, bfloat16, an infinite eta, reversed views,
OnDevice("auto"), CMFP's name (mutation audit CJ; its k-reciprocal and kNN cases are in
test_kreciprocal.py and tests/clustering/test_knn.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rerank_oracles import clustered_pair, official_agg_feature

import uvireid.rerank.cmfp as cmfp_mod
from uvireid.errors import ConfigError
from uvireid.rerank import CMFP, CMRR, OnDevice, propagate, rerank
from uvireid.rerank.cmrr import cmrr_distance


def _clustered(nq, ng, d, seed=0, ids=8, noise=0.6):
    return clustered_pair(nq, ng, d, seed, ids, noise)


@pytest.mark.parametrize("mode,mixed", [("sparse", None), ("dense", False)])
def test_cmfp_float64_wide_features_equal_official_agg_feature(mode, mixed):
    """float64 features of d > 64 on the CPU take _spmm's
    column-chunked product, which must ADD the second block of each row (audit CJ, S02)."""
    q, g = _clustered(50, 30, 80, seed=3)  # d = 80 > _SPMM_COLS
    qp, gp = propagate(torch.from_numpy(q), torch.from_numpy(g), 7, mode=mode, mixed=mixed)
    want = official_agg_feature(torch.from_numpy(q), torch.from_numpy(g), 7).numpy()
    got = torch.cat([qp, gp]).numpy()
    assert np.abs(got - want).max() < 1e-10


def test_cmfp_class_passes_its_backend_to_the_search(monkeypatch):
    """CMFP(backend=...) must reach the kNN search (audit CJ, S03)."""
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


def test_bfloat16_features_are_reranked_in_float32():
    """propagate's doc: float16 and bfloat16 inputs are
    computed and returned in float32 (audit CJ, P04)."""
    q, g = _clustered(20, 15, 16, seed=2)
    qb, gb = torch.from_numpy(q).bfloat16(), torch.from_numpy(g).bfloat16()
    d = CMFP(k=5).rerank(qb, gb)
    assert d.dtype == torch.float32
    want = CMFP(k=5).rerank(qb.float(), gb.float())
    assert torch.equal(d, want)


def test_an_infinite_eta_is_refused():
    """eta must be finite, as the other settings (audit CJ, P07)."""
    q, g = _clustered(10, 8, 8)
    with pytest.raises(ConfigError, match="eta"):
        CMRR(eta=float("inf"))
    with pytest.raises(ConfigError, match="eta"):
        cmrr_distance(q, g, eta=float("inf"))


def test_reversed_numpy_views_are_reranked():
    """A negative-stride view (x[::-1]) is a valid
    numpy array; torch.from_numpy refuses it unless made contiguous (audit CJ, P08)."""
    q, g = _clustered(12, 10, 8)
    got = rerank(q[::-1], g[::-1], "cmfp", k=3)
    want = rerank(q[::-1].copy(), g[::-1].copy(), "cmfp", k=3)
    assert np.array_equal(got, want)


def test_on_device_auto_is_resolved_to_a_real_device():
    """OnDevice(rr, "auto") resolves the device (audit CJ, O04)."""
    q, g = _clustered(12, 10, 8)
    od = OnDevice(CMFP(k=3), "auto")
    assert od.device in ("cpu", "cuda") or od.device.startswith("cuda")
    out = od.rerank(q, g)
    assert isinstance(out, np.ndarray)
    assert np.allclose(out, CMFP(k=3).rerank(q, g), atol=1e-6)


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
