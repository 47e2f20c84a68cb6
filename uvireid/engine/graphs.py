"""A stage's loss terms replayed as CUDA graphs (``train.cuda_graphs``), and TF32 products.

On a GPU the SALCR step is bound by the host: its losses and memories launch about a
thousand small kernels a step, each costing the host more time than the device
(``benchmarks/RESULTS.md``, issue 5 item 8). :class:`GraphedLosses` captures the losses'
forward and backward once (``torch.cuda.make_graphed_callables``) and replays them as two
graph launches a step.

What a graph needs, and where the engine provides it:

- fixed shapes: the capture is keyed by the shapes of the step's features and targets and
  by which part features it has (a paired batch and an unpaired one are two graphs);
- fixed addresses: the losses' memories are updated in place between steps (the
  momentum updates write into them), but :meth:`reset` at an epoch's start makes new
  ones: the trainer calls :meth:`GraphedLosses.invalidate` after it, and the next step
  captures again (about a tenth of a second);
- no host work on device values inside the losses' forward (the losses are written
  without it; a loss that reads a device value back cannot be captured): a capture that
  fails is reported once and the stage goes on with the eager losses.

The memory updates stay outside the graph: they group rows by label on the host, a
different number of rounds each step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator

import torch

from uvireid.losses import StepOutputs, StepTargets

logger = logging.getLogger(__name__)

__all__ = ["GraphedLosses", "tf32_products"]

#: the targets' tensors, in StepTargets' order (the capture rebuilds them positionally)
_TARGET_FIELDS = tuple(
    f.name for f in dataclasses.fields(StepTargets) if f.name not in ("paired", "host")
)


class GraphedLosses:
    """``fn(outputs, targets) -> (total, {name: term})`` with its forward and backward
    replayed as CUDA graphs on CUDA inputs that require grad; called eagerly otherwise
    (the CPU, evaluation without grad, or after a failed capture).

    Args:
        fn: the stage's loss function (the trainer's ``terms_of``).
        make_graphed: the capture function (``torch.cuda.make_graphed_callables``; a test
            passes its own).
        device_types: the devices whose inputs are captured (a test of the bookkeeping
            on the CPU passes ``("cpu",)`` with its own ``make_graphed``).
    """

    def __init__(
        self,
        fn: Callable,
        make_graphed: Callable | None = None,
        device_types: tuple[str, ...] = ("cuda",),
    ):
        self.fn = fn
        self.make_graphed = make_graphed or torch.cuda.make_graphed_callables
        self.device_types = device_types
        self.graphs: dict[tuple, tuple[Callable, list[str]]] = {}
        self.failed: str | None = None
        self.captures = 0

    def invalidate(self) -> None:
        """Forget the captured graphs (after the losses' memories were replaced)."""
        self.graphs.clear()

    def _applies(self, outputs: StepOutputs) -> bool:
        return (
            self.failed is None
            and torch.is_grad_enabled()
            and outputs.feat_v.device.type in self.device_types
            and outputs.feat_v.requires_grad
        )

    def __call__(self, outputs: StepOutputs, targets: StepTargets):
        if not self._applies(outputs):
            return self.fn(outputs, targets)
        keys = sorted(outputs.parts)
        feats = [outputs.feat_v, outputs.feat_a, outputs.feat_r]
        feats += [outputs.parts[k] for k in keys]
        pools = [outputs.pool_v, outputs.pool_a, outputs.pool_r]
        if pools[0] is not None:  # the pre-BN features, for a loss with needs_pool
            feats += pools
        tgts = [getattr(targets, f) for f in _TARGET_FIELDS]
        key = (
            tuple(keys),
            targets.paired,
            tuple((tuple(t.shape), t.dtype, t.requires_grad) for t in feats + tgts),
        )
        entry = self.graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(keys, feats, tgts, targets.paired)
            except Exception as exc:  # noqa: BLE001 - an op the capture refuses
                self.failed = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "train.cuda_graphs: the losses could not be captured as a CUDA graph "
                    "(%s); this stage goes on with the eager losses",
                    self.failed,
                )
                self.graphs.clear()
                return self.fn(outputs, targets)
            self.graphs[key] = entry
            self.captures += 1
        graphed, names = entry
        out = graphed(*feats, *tgts)
        return out[0], dict(zip(names, out[1:]))

    def _capture(self, keys: list, feats: list, tgts: list, paired: bool):
        names: list[str] = []
        n = 3 + len(keys)

        pools = len(feats) - n  # 3 with the pre-BN features, else 0

        def flat(*args):
            outputs = StepOutputs(
                args[0], args[1], args[2], dict(zip(keys, args[3:n])), *args[n : n + pools]
            )
            total, terms = self.fn(outputs, StepTargets(*args[n + pools :], paired=paired))
            names[:] = list(terms)
            return (total, *terms.values())

        # the step's own values as samples: the warm-up runs index the memories with them
        sample = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in feats)
        sample += tuple(t.clone() for t in tgts)
        # a feature no term of this stage reads (PGM's stages leave out some views) has a
        # zero gradient, not an error
        graphed = self.make_graphed(flat, sample, allow_unused_input=True)
        return graphed, names


@contextlib.contextmanager
def matmul_tf32(on: bool) -> Iterator[None]:
    """Within the block, float32 matrix products on CUDA use TF32 tensor cores (``on``) or
    full float32; the setting is restored after. Through
    ``torch.set_float32_matmul_precision`` ("high" / "highest"), which torch keeps
    consistent with its newer per-backend ``fp32_precision``: the legacy ``allow_tf32``
    crashed a process that had set the new API (audit MC), and setting
    ``torch.backends.cuda.matmul.fp32_precision`` alone left
    ``torch.get_float32_matmul_precision()`` raising inside the block (audit MI). Where the
    process has already mixed the APIs (the precision cannot be read), the backend's
    ``fp32_precision`` is set and restored instead."""
    try:
        before = torch.get_float32_matmul_precision()
    except RuntimeError:
        before = None
    if before is not None:
        torch.set_float32_matmul_precision("high" if on else "highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)
        return
    matmul = torch.backends.cuda.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = "tf32" if on else "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = previous


@contextlib.contextmanager
def tf32_products(enabled: bool) -> Iterator[None]:
    """Within the block, float32 matrix products on CUDA may use TF32 tensor cores
    (:func:`matmul_tf32`; cuDNN's convolutions do by default); the setting is restored
    after, so evaluation and re-ranking keep full float32. ``enabled`` False leaves the
    setting as it is."""
    if not enabled:
        yield
        return
    with matmul_tf32(True):
        yield
