"""profile_ops: the waits and the kernel count of a step, against what the step is known
to do by hand (audit DB; matrix products counted 0 kernels before it)."""

from __future__ import annotations

import pytest
import torch

from uvireid.engine.profiling import profile_ops


def test_profile_ops_names_each_wait_and_counts_compute_leaves_only():
    x = torch.arange(6.0)

    def step():
        y = (x + 1).view(2, 3).t().contiguous()  # one add; views and a copy of a view
        z = torch.mm(y, y.t())  # one mm
        _ = z.sum().item()  # one sum, one read-back
        _ = x[x > 2]  # a comparison and a boolean index (nonzero)

    waits, kernels = profile_ops(step)
    assert waits == ["aten::_local_scalar_dense", "aten::nonzero"]
    # naive count of the leaf ops that compute: add, clone (of contiguous), mm, sum, gt,
    # and the index's own work; allocations, views and the read-back are not counted
    plain = profile_ops(lambda: (x + 1).view(2, 3).t())[1]
    assert plain == 1  # only the add: view and t launch nothing
    assert kernels > plain


def test_profile_ops_leaves_out_the_optimizer_step_counter_reads():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()  # the lazily made state out of the count

    def step():
        opt.step()
        _ = w.sum().item()

    assert profile_ops(step)[0] == ["aten::_local_scalar_dense"]


a, b = torch.randn(4, 8), torch.randn(8, 5)


@pytest.mark.parametrize(
    ("what", "fn"),
    [
        ("mm", lambda: torch.mm(a, b)),
        ("matmul", lambda: a @ b),
        ("bmm", lambda: torch.bmm(a[None], b[None])),  # unsqueeze is a view: no kernel
        ("exp", lambda: a.exp()),
    ],
)
def test_a_matrix_product_counts_as_one_kernel(what, fn):
    """Worked by hand: each of these launches one kernel on a GPU (a GEMM, or the
    element-wise exp); the profiler's mm/bmm have only resolve_conj (no kernel) below."""
    assert profile_ops(fn) == ([], 1), what
