"""What a step makes a GPU wait for and launch, counted by the CPU profiler on any machine.

A step that reads a value back from the device (``.item()``, ``bool(tensor)``), or makes a
tensor whose size depends on the data (boolean indexing, ``nonzero``, ``unique``), makes
the host wait until the device has run everything queued before it; on an H100 a SALCR
step was bound by 324 such waits (``benchmarks/RESULTS.md``, "Where an epoch's time goes").
These ops show in the CPU profiler whatever the device, so tests and
``benchmarks/training_overhead.py --count-ops`` can count them without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["WAIT_OPS", "NO_KERNEL", "profile_ops"]

#: ops that make the host wait for the device on CUDA (a value read back, or an output
#: whose size depends on the data). ``equal`` and ``bincount`` read a value back on CUDA
#: only (a bool; the largest bin), through no op the CPU profile shows (audit MC)
WAIT_OPS = frozenset(
    {
        "aten::_local_scalar_dense",  # .item(), bool(tensor), int(tensor)
        "aten::nonzero",  # boolean indexing, torch.nonzero
        "aten::_unique2",
        "aten::unique_consecutive",
        "aten::unique_dim",
        "aten::masked_select",
        "aten::equal",
        "aten::bincount",
    }
)

#: ops that only allocate, reshape or view: no kernel on a GPU. The composite views
#: (``chunk`` -> ``split`` -> ``narrow`` -> ``slice``, ``mT`` -> ``transpose``, ...) are
#: listed too: all below them is views, so each would count as a kernel (audit PC); a
#: copy below one (``reshape_as`` of a non-contiguous tensor) is still counted
NO_KERNEL = frozenset(
    "aten::" + name
    for name in (
        "empty empty_strided empty_like as_strided as_strided_ view _reshape_alias "
        "_unsafe_view reshape flatten unsqueeze squeeze expand transpose t permute slice "
        "select narrow alias detach detach_ lift_fresh resize_ resolve_conj resolve_neg "
        "real to scalar_tensor _local_scalar_dense contiguous "
        "chunk split split_with_sizes unsafe_split tensor_split unbind view_as reshape_as "
        "expand_as movedim moveaxis swapaxes swapdims mT mH T H adjoint numpy_T matrix_H "
        "diagonal broadcast_to unflatten unfold view_as_real view_as_complex"
    ).split()
)


def profile_ops(fn: Callable[[], object]) -> tuple[list[str], int]:
    """``(waits, kernels)`` of one call of ``fn``: the names of the ops in it that make
    the host wait for the device (in call order; one per wait: a read-back inside another
    such op, as ``masked_select``'s of its size, is that op's; the ops inside
    ``Optimizer.step``, the reads of its step counters, which are host tensors unless the
    optimiser is fused or capturable, left out) and the number of the deepest ops that
    compute something (allocations and views left out), about the kernels a GPU launches.

    Blind spot: a copy to the host (``.cpu()``, ``.tolist()``, ``.numpy()``) is no op at
    all on a CPU tensor, so the waits these make on a GPU are not counted here.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.events()

    def counted_above(e) -> bool:
        # inside Optimizer.step (its counters), or inside a wait already named
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("Optimizer.step") or p.name in WAIT_OPS:
                return True
            p = p.cpu_parent
        return False

    waits = [e.name for e in events if e.name in WAIT_OPS and not counted_above(e)]

    def computes(e) -> bool:
        return e.name.startswith("aten::") and e.name not in NO_KERNEL

    below: dict[int, bool] = {}

    def computes_below(e) -> bool:
        # whether an op that computes sits anywhere under ``e`` (memoised per event)
        key = id(e)
        if key not in below:
            below[key] = any(computes(c) or computes_below(c) for c in e.cpu_children)
        return below[key]

    # the deepest ops that compute: an op whose only aten children launch nothing (mm's
    # resolve_conj, a view) is one (counted as a leaf among all aten ops, every matrix
    # product counted 0: audit DB); on CUDA the runtime calls (cudaLaunchKernel) are an
    # op's children too, and are not aten ops
    kernels = sum(1 for e in events if computes(e) and not computes_below(e))
    return waits, kernels
