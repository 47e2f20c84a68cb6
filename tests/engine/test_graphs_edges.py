"""Mutation audit MC: the bookkeeping of GraphedLosses (what is captured and when) and the scope
of tf32_products, on the CPU with a stand-in capture function."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from uvireid.engine.graphs import GraphedLosses, tf32_products
from uvireid.losses import StepOutputs, StepTargets


def _fn(outputs, targets):
    """A loss function in the trainer's form whose value depends on ``targets.paired``."""
    a = (outputs.feat_v * outputs.feat_r).sum()
    b = outputs.feat_a.pow(2).sum() * (2.0 if targets.paired else 1.0)
    return a + b, {"a": a, "b": b}


def _targets(s: int = 4, paired: bool = False) -> StepTargets:
    cols = [torch.arange(s) % 2 for _ in range(4)] + [torch.arange(s) for _ in range(2)]
    return StepTargets(*cols, paired=paired)


def _leaves(s: int = 4, d: int = 3, dtype=torch.float32, grad=(True, True, True)):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, d, generator=g, dtype=dtype).requires_grad_(r) for r in grad]


class _Recorder:
    """A stand-in for ``make_graphed_callables``: records each capture's sample and
    returns the flattened function itself (eager replay)."""

    def __init__(self):
        self.samples = []

    def __call__(self, fn, sample, **kwargs):
        self.samples.append(sample)
        return fn


def _graphed():
    rec = _Recorder()
    return GraphedLosses(_fn, rec, device_types=("cpu",)), rec


def test_no_capture_without_grad_even_for_leaf_features_that_require_it():
    graphed, rec = _graphed()
    leaves = _leaves()
    with torch.no_grad():
        total, _ = graphed(StepOutputs(*leaves), _targets())
    assert graphed.captures == 0 and rec.samples == []
    want = _fn(StepOutputs(*leaves), _targets())[0]
    assert torch.equal(total, want.detach())


def test_no_capture_when_the_features_do_not_require_grad():
    graphed, rec = _graphed()
    leaves = _leaves(grad=(False, False, False))
    graphed(StepOutputs(*leaves), _targets())
    assert graphed.captures == 0 and rec.samples == []


def test_a_paired_and_an_unpaired_batch_of_one_shape_are_two_graphs():
    """``paired`` is baked into the capture (the rebuilt StepTargets): an unpaired batch
    must not replay the paired batch's graph (here a term doubles on paired batches)."""
    graphed, _ = _graphed()
    leaves = _leaves()
    graphed(StepOutputs(*leaves), _targets(paired=True))
    total, terms = graphed(StepOutputs(*leaves), _targets(paired=False))
    assert graphed.captures == 2
    want_total, want_terms = _fn(StepOutputs(*leaves), _targets(paired=False))
    assert torch.equal(terms["b"], want_terms["b"]) and torch.equal(total, want_total)


def test_another_dtype_is_another_graph():
    graphed, _ = _graphed()
    graphed(StepOutputs(*_leaves()), _targets())
    graphed(StepOutputs(*_leaves(dtype=torch.float64)), _targets())
    assert graphed.captures == 2


def test_another_requires_grad_pattern_is_another_graph():
    graphed, _ = _graphed()
    graphed(StepOutputs(*_leaves()), _targets())
    graphed(StepOutputs(*_leaves(grad=(True, False, True))), _targets())
    assert graphed.captures == 2


def test_the_capture_sample_copies_the_features_with_their_requires_grad():
    """make_graphed_callables needs sample inputs whose requires_grad states are the
    real inputs' (else it builds no backward for them): fresh copies, same values."""
    graphed, rec = _graphed()
    leaves = _leaves(grad=(True, False, True))
    graphed(StepOutputs(*leaves), _targets())
    (sample,) = rec.samples
    assert [t.requires_grad for t in sample[:3]] == [True, False, True]
    assert all(s is not x and torch.equal(s, x) for s, x in zip(sample[:3], leaves))
    assert all(t.is_leaf for t in sample[:3])
    assert len(sample) == 3 + 6


def test_tf32_products_restore_a_setting_that_was_on():
    """The block restores what was set before it, TF32 on ("high", "medium") or off, and
    the precision stays readable inside it (CMFP's mixed_available and Inductor read it)."""
    before = torch.get_float32_matmul_precision()
    try:
        for setting in ("high", "medium", "highest"):
            torch.set_float32_matmul_precision(setting)
            with tf32_products(True):
                assert torch.get_float32_matmul_precision() == "high"
                if _NEW_API:
                    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
            assert torch.get_float32_matmul_precision() == setting
    finally:
        torch.set_float32_matmul_precision(before)


_NEW_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")


def _in_a_fresh_process(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in its own interpreter: the TF32 flags are process-wide and, once
    the legacy and the new API are mixed, cannot be put back from here."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(not _NEW_API, reason="torch without torch.backends.cuda.matmul.fp32_precision")
def test_tf32_products_after_the_new_precision_api_was_used():
    """torch >= 2.9 has ``torch.backends.cuda.matmul.fp32_precision``; a process (a script
    using uvireid as a library) that set it to "tf32" and runs with ``train.tf32=true``
    crashed at the first step: reading the legacy ``allow_tf32`` raises RuntimeError
    ("mix of the legacy and new APIs")."""
    r = _in_a_fresh_process(
        """
        import torch
        from uvireid.engine.graphs import tf32_products
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        with tf32_products(True):
            pass
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        """
    )
    assert r.returncode == 0, r.stderr[-600:]


@pytest.mark.skipif(not _NEW_API, reason="torch without torch.backends.cuda.matmul.fp32_precision")
def test_tf32_products_keep_a_medium_matmul_precision_readable():
    """After ``torch.set_float32_matmul_precision("medium")`` a tf32_products block leaves
    the flags mixed: ``torch.get_float32_matmul_precision()`` (which
    uvireid.rerank.cmfp calls) raises RuntimeError."""
    r = _in_a_fresh_process(
        """
        import torch
        from uvireid.engine.graphs import tf32_products
        torch.set_float32_matmul_precision("medium")
        with tf32_products(True):
            pass
        assert torch.get_float32_matmul_precision() == "medium"
        """
    )
    assert r.returncode == 0, r.stderr[-600:]
