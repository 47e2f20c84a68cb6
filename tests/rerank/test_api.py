"""The re-rankers' device adapter used by the trainer's evaluation."""

from __future__ import annotations

import numpy as np
import torch


def test_on_device_reranks_where_it_is_told_and_returns_numpy(device):
    """The trainer's evaluation wraps its re-ranker in OnDevice: the protocols hand over
    numpy arrays, the re-ranker gets tensors on the training device, the protocol gets
    numpy back, and the provenance name is the re-ranker's."""
    from uvireid.rerank import CMFP, OnDevice

    rng = np.random.default_rng(0)
    q = rng.normal(size=(40, 16)).astype(np.float32)
    g = rng.normal(size=(12, 16)).astype(np.float32)
    seen = []

    class Spy(CMFP):
        def rerank(self, query, gallery):
            seen.append((type(query), query.device.type, type(gallery), gallery.device.type))
            return super().rerank(query, gallery)

    wrapped = OnDevice(Spy(k=5), device)
    out = wrapped.rerank(q, g)
    assert isinstance(out, np.ndarray) and out.shape == (40, 12)
    assert seen == [(torch.Tensor, device, torch.Tensor, device)]
    np.testing.assert_allclose(out, CMFP(k=5).rerank(q, g), rtol=1e-5, atol=1e-5)
    assert wrapped.name == "cmfp(k=5)"


def test_device_strings_are_checked_where_a_part_takes_one():
    """A CPU-only user writing 'cuda' or 'gpu' gets uvireid's error naming the fix, not a
    torch RuntimeError about NVIDIA drivers."""
    import numpy as np
    import pytest
    import torch

    from uvireid.errors import ConfigError
    from uvireid.registry import CLUSTERERS
    from uvireid.rerank import CMFP, OnDevice

    with pytest.raises(ConfigError, match="device 'gpu' is not a device"):
        OnDevice(CMFP(), "gpu")
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    with pytest.raises(ConfigError, match="device 'gpu' is not a device"):
        CLUSTERERS.build({"type": "dbscan", "device": "gpu"}).fit_predict(x)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no GPU"):
            OnDevice(CMFP(), "cuda")


def test_library_misuse_gives_uvireid_errors():
    """From the library audit: NaN distances into re_ranking, a loss used before its
    reset, fractional pseudo-labels into label_quality."""
    import numpy as np
    import pytest
    import torch

    from uvireid.errors import ConfigError, FeatureFileError
    from uvireid.evaluation.quality import label_quality
    from uvireid.losses.contract import StepOutputs, StepTargets
    from uvireid.registry import LOSSES
    from uvireid.rerank.kreciprocal import re_ranking

    d = np.random.default_rng(0).random((5, 5))
    qg = d[:2, 2:].copy()
    qg[1, 1] = np.nan
    with pytest.raises(FeatureFileError, match="q_g_dist holds NaN or inf"):
        re_ranking(qg, d[:2, :2], d[2:, 2:])
    out = StepOutputs(*(torch.randn(4, 8) for _ in range(3)))
    y = torch.tensor([0, 1, 0, 1])
    t = StepTargets(y, y, y, y, torch.arange(4), torch.arange(4), paired=True)
    for name in ("cluster_contrast", "modality_agnostic", "instance_neighbour"):
        with pytest.raises(ConfigError, match="never filled; call"):
            LOSSES.build({"type": name})(out, t)
    with pytest.raises(ConfigError, match="part_contrast needs the part features"):
        LOSSES.build({"type": "part_contrast"})(out, t)
    with pytest.raises(FeatureFileError, match="whole numbers"):
        label_quality(np.array([0.5, 0, 0, 1]), np.array([0, 0, 1, 1]))


def test_the_functions_check_their_settings_as_the_classes_do():
    """The public functions refuse the settings their classes refuse (from the audit:
    ``re_ranking(lambda_value=5)`` ran, ``block_rows=-5`` was a torch RuntimeError)."""
    import pytest

    from uvireid.errors import ConfigError
    from uvireid.rerank.cmfp import affinity_blocks, propagate
    from uvireid.rerank.cmrr import cmrr_distance
    from uvireid.rerank.kreciprocal import k_reciprocal_distance, re_ranking

    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    d = rng.random((11, 11))
    for bad in (5, -0.1, "x"):
        with pytest.raises(ConfigError, match="lambda_value must be a finite number in"):
            re_ranking(d[:6, 6:], d[:6, :6], d[6:, 6:], lambda_value=bad)
        with pytest.raises(ConfigError, match="lambda_value must be a finite number in"):
            k_reciprocal_distance(q, g, lambda_value=bad)
        with pytest.raises(ConfigError, match="lambda_intra must be a finite number in"):
            cmrr_distance(q, g, lambda_intra=bad)
    with pytest.raises(ConfigError, match="eta must be a finite number >= 0"):
        cmrr_distance(q, g, eta=-1)
    for bad in (-5, 0, 2.5):
        with pytest.raises(ConfigError, match="block_rows must be an integer >= 1"):
            propagate(q, g, 3, mode="sparse", block_rows=bad)
    for bad in ("yes", 1):
        with pytest.raises(ConfigError, match="mixed must be true, false or null"):
            propagate(q, g, 3, mixed=bad)
        with pytest.raises(ConfigError, match="mixed must be true, false or null"):
            affinity_blocks(torch.from_numpy(q), torch.from_numpy(g), 3, mixed=bad)
    out = propagate(q, g, 3, mode="sparse", block_rows=2)  # a valid block size still runs
    exact = propagate(q, g, 3, mode="dense", mixed=False)[0]
    np.testing.assert_allclose(out[0], exact, atol=1e-12)


def test_no_reranker_writes_into_its_input():
    """Inputs are shared with the caller, not copied (a read-only ``np.load(...,
    mmap_mode="r")`` array too, without torch's not-writable warning): no re-ranker may
    change them."""
    import warnings

    from uvireid.registry import RERANKERS

    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        q = rng.normal(size=(30, 8)).astype(dtype)
        g = rng.normal(size=(12, 8)).astype(dtype)
        keep = q.copy(), g.copy()
        q.flags.writeable = g.flags.writeable = False
        for name in RERANKERS.names():
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                RERANKERS.build({"type": name}).rerank(q, g)
            np.testing.assert_array_equal(q, keep[0])
            np.testing.assert_array_equal(g, keep[1])
