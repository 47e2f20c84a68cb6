"""Mutation audit OE: GraphedLosses' bookkeeping on the CPU (a stand-in capture) and the TF32
block's fallback for a process that mixed torch's precision APIs."""

from __future__ import annotations

import types

import pytest
import torch

from uvireid.engine import graphs
from uvireid.engine.graphs import GraphedLosses, matmul_tf32
from uvireid.losses import StepOutputs, StepTargets


def _targets(s: int = 4) -> StepTargets:
    cols = [torch.arange(s) % 2 for _ in range(4)] + [torch.arange(s) for _ in range(2)]
    return StepTargets(*cols, paired=False)


def _outputs(s: int = 4) -> StepOutputs:
    g = torch.Generator().manual_seed(s)
    return StepOutputs(*(torch.randn(s, 3, generator=g).requires_grad_() for _ in range(3)), {})


def _fn(outputs, targets):
    """Terms in an order that is not sorted by name, each of a different value."""
    z = outputs.feat_v.sum() * 0 + 3.0
    a = outputs.feat_a.pow(2).sum()
    m = outputs.feat_r.abs().sum()
    return z + a + m, {"zeta": z, "alpha": a, "mid": m}


def _replay(fn, sample, **kwargs):
    return fn  # the flattened function itself: eager replay


def test_graphed_terms_keep_their_names_in_the_functions_order():
    """The replay returns ``(total, *terms.values())``: each value goes back under its own
    name, whatever the names' sorted order."""
    graphed = GraphedLosses(_fn, _replay, device_types=("cpu",))
    outputs, targets = _outputs(), _targets()
    total, terms = graphed(outputs, targets)
    want_total, want = _fn(outputs, targets)
    assert graphed.captures == 1
    assert list(terms) == ["zeta", "alpha", "mid"]
    assert torch.equal(total, want_total)
    assert all(torch.equal(terms[k], want[k]) for k in want)


def test_a_failed_capture_releases_the_graphs_captured_before():
    """A capture that fails (another shape) switches the stage to the eager losses for
    good; the graphs captured earlier, which hold their memory pools, are dropped."""
    calls = []

    def capture(fn, sample, **kwargs):
        calls.append(len(sample[0]))
        if len(sample[0]) == 6:
            raise RuntimeError("operation not permitted when stream is capturing")
        return fn

    graphed = GraphedLosses(_fn, capture, device_types=("cpu",))
    graphed(_outputs(4), _targets(4))
    assert len(graphed.graphs) == 1
    total, terms = graphed(_outputs(6), _targets(6))  # eager after the failure
    assert graphed.failed.startswith("RuntimeError") and graphed.graphs == {}
    assert torch.equal(total, _fn(_outputs(6), _targets(6))[0])
    graphed(_outputs(4), _targets(4))
    assert calls == [4, 6]  # no capture after the failure, the old graph not replayed


@pytest.mark.parametrize("on", [True, False])
def test_the_fallback_sets_and_restores_the_backends_precision(monkeypatch, on):
    """Where torch.get_float32_matmul_precision raises (the APIs already mixed), the
    block sets the backend's fp32_precision ("tf32" on, "ieee" off) and restores it."""

    def unreadable():
        raise RuntimeError("mix of the legacy and new APIs")

    fake = types.SimpleNamespace(fp32_precision="none")
    monkeypatch.setattr(graphs.torch, "get_float32_matmul_precision", unreadable)
    monkeypatch.setattr(graphs.torch.backends.cuda, "matmul", fake)
    with matmul_tf32(on):
        assert fake.fp32_precision == ("tf32" if on else "ieee")
    assert fake.fp32_precision == "none"
    with pytest.raises(ValueError), matmul_tf32(on):
        raise ValueError("inside")
    assert fake.fp32_precision == "none"
