"""Mutation audit MC: profile_ops' waits and kernel count, op by op, against what each op is
known to do (worked by hand from the profiler's event tree)."""

from __future__ import annotations

import pytest
import torch

from uvireid.engine.profiling import profile_ops

x = torch.tensor([3, 1, 2, 2, 0])
mask = x > 1


@pytest.mark.parametrize(
    ("fn", "wait"),
    [
        (lambda: torch.unique(x), "aten::_unique2"),
        (lambda: torch.unique(x, return_inverse=True), "aten::_unique2"),
        (lambda: torch.unique(x[None], dim=1), "aten::unique_dim"),
        (lambda: torch.unique_consecutive(x), "aten::unique_consecutive"),
        (lambda: torch.masked_select(x, mask), "aten::masked_select"),
        (lambda: x[mask], "aten::nonzero"),
        (lambda: x.sum().item(), "aten::_local_scalar_dense"),
    ],
)
def test_each_data_dependent_op_is_named_as_a_wait(fn, wait):
    assert wait in profile_ops(fn)[0]


def test_views_reshapes_and_detach_launch_nothing():
    y = torch.arange(6.0)
    assert profile_ops(lambda: y.reshape(2, 3)) == ([], 0)
    assert profile_ops(lambda: y.detach()) == ([], 0)
    assert profile_ops(lambda: y.view(3, 2).t().unsqueeze(0)) == ([], 0)


def test_a_copying_reshape_counts_its_copy_once():
    y = torch.arange(6.0).view(2, 3).t()  # not contiguous: reshape copies
    assert profile_ops(lambda: y.reshape(6)) == ([], 1)


def test_only_aten_ops_count_as_kernels():
    """A user's record_function scope is not an op: an empty one launches nothing, one
    around an exp launches the exp's kernel only."""
    y = torch.arange(6.0)

    def empty():
        with torch.autograd.profiler.record_function("my scope"):
            pass

    def one_exp():
        with torch.autograd.profiler.record_function("my scope"):
            y.exp()

    assert profile_ops(empty) == ([], 0)
    assert profile_ops(one_exp) == ([], 1)


def test_a_read_back_is_one_wait_and_one_copy():
    """``.item()``: one wait, and one device operation (the copy back), not two."""
    y = torch.arange(6.0)
    s = y.sum()
    assert profile_ops(lambda: s.item()) == (["aten::_local_scalar_dense"], 1)


def test_the_optimizer_counter_reads_are_left_out_however_deep():
    """SGD with momentum reads no step counter; Adam's reads sit several levels below
    ``Optimizer.step#Adam.step``: none of them is named, a read outside it is."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()

    def step():
        opt.step()
        _ = bool(w.sum() > 0)

    assert profile_ops(step)[0] == ["aten::_local_scalar_dense"]


def test_a_read_back_inside_a_data_dependent_op_is_one_wait():
    """masked_select reads its output size back once; the profiler nests that read
    (aten::item -> aten::_local_scalar_dense) under aten::masked_select, and both are
    WAIT_OPS, so one host wait is named twice."""
    assert profile_ops(lambda: torch.masked_select(x, mask))[0] == ["aten::masked_select"]


@pytest.mark.parametrize(
    "fn",
    [lambda: torch.equal(x, x), lambda: torch.bincount(x)],
    ids=["equal", "bincount"],
)
def test_ops_that_read_back_on_cuda_are_waits(fn):
    """On CUDA ``torch.equal`` returns a host bool (``eq(...).all().item()``) and
    ``torch.bincount`` reads ``max().item()`` for its size: both make the host wait, but on
    the CPU neither calls ``item`` through the dispatcher, so profile_ops (which counts
    on the CPU "whatever the device") names no wait."""
    assert len(profile_ops(fn)[0]) == 1
