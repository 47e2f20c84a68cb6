"""``profile_ops``' kernel count of ops that only view or allocate (worked by hand from
the profiler's event tree: none launches a GPU kernel), and the waits it leaves out only
under ``Optimizer.step``."""

from __future__ import annotations

import pytest
import torch

from uvireid.engine.profiling import profile_ops

x = torch.arange(12.0).view(3, 4)
z43 = torch.zeros(4, 3)


@pytest.mark.parametrize(
    ("what", "fn"),
    [
        ("select", lambda: x[0]),
        ("expand", lambda: x[:1].expand(3, 4)),
        ("permute", lambda: x.permute(1, 0)),
        ("flatten", lambda: x.flatten()),
        ("to, same dtype", lambda: x.to(torch.float32)),
        ("empty_like", lambda: torch.empty_like(x)),
        ("narrow", lambda: x.narrow(0, 1, 2)),
        ("squeeze", lambda: x[None].squeeze(0)),
    ],
)
def test_views_and_allocations_launch_no_kernel(what, fn):
    assert profile_ops(fn) == ([], 0), what


def test_a_copy_below_a_view_named_op_is_the_one_kernel():
    """``reshape_as`` of a non-contiguous tensor: reshape_as -> reshape -> clone -> copy_;
    the copy is the one kernel, found two levels below an op that does not compute
    (reshape) and not counted again at reshape_as."""
    y, z = torch.arange(6.0).view(2, 3).t(), torch.zeros(6)
    assert profile_ops(lambda: y.reshape_as(z)) == ([], 1)


def test_a_read_back_inside_a_user_scope_named_step_is_counted():
    """Only the ops inside ``Optimizer.step`` are left out; a user's scope whose name
    merely contains "step" is not the optimiser's."""
    s = torch.arange(6.0).sum()

    def fn():
        with torch.autograd.profiler.record_function("train_step"):
            s.item()

    assert profile_ops(fn)[0] == ["aten::_local_scalar_dense"]


@pytest.mark.parametrize(
    ("what", "fn"),
    [
        ("chunk", lambda: x.chunk(2)),
        ("split", lambda: x.split(2)),
        ("unbind", lambda: x.unbind(0)),
        ("view_as", lambda: x.view_as(z43)),
        ("movedim", lambda: x.movedim(0, 1)),
        ("swapaxes", lambda: x.swapaxes(0, 1)),
        ("mT", lambda: x.mT),
        ("diagonal", lambda: x.diagonal()),
        ("broadcast_to", lambda: x[0].broadcast_to(3, 4)),
        ("unflatten", lambda: x.view(12).unflatten(0, (3, 4))),
        ("tensor from a list", lambda: torch.tensor([1.0, 2.0])),  # lift_fresh, detach_
    ],
)
def test_composite_views_launch_no_kernel(what, fn):
    """Composite views (chunk -> split -> narrow -> slice, view_as -> view, mT ->
    transpose, ...) launch nothing, nor anything below them: no kernel (the docstring:
    allocations and views left out). ``torch.tensor(list)`` on the CPU: lift_fresh and
    detach_, no computation."""
    assert profile_ops(fn) == ([], 0), what
