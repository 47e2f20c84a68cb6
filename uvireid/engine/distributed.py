"""The few ``torch.distributed`` calls the engine needs, each a no-op without a launcher.

One GPU or the CPU never needs ``torchrun``: every helper checks
:func:`is_distributed` and falls back to the single-process behaviour. Under DDP
(``torchrun --nproc_per_node N -m uvireid run ...``) clustering and association run on
rank 0 and their results are broadcast (:func:`broadcast_object`); memory updates gather
the features and labels of every rank first (:func:`all_gather_cat`), so the memories
stay identical on all ranks (``shared/notes/peers.md`` Sec. 0.3 pitfall b).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


_SINGLE = "unset WORLD_SIZE and RANK for a single-process run"


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset or empty).

    Raises:
        ConfigError: it is set to something that is not a whole number.
    """
    raw = os.environ.get("WORLD_SIZE", "").strip()
    if not raw:
        return 1
    try:
        return int(raw)
    except ValueError:
        from uvireid.errors import ConfigError

        raise ConfigError(
            f"the environment variable WORLD_SIZE={raw!r} is not a number of processes; "
            f"torchrun sets it (torchrun --nproc_per_node N -m uvireid run ...): {_SINGLE}"
        ) from None


def launched_by_torchrun() -> bool:
    """True when torchrun's environment (``WORLD_SIZE`` > 1, ``RANK``) is present.

    Raises:
        ConfigError: ``WORLD_SIZE`` is set but not a number.
    """
    return env_world_size() > 1 and "RANK" in os.environ


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes; returns this rank's device.

    ``nccl`` for CUDA (one GPU per local rank), ``gloo`` for the CPU. Without torchrun's
    environment nothing happens and ``device`` is returned unchanged.

    Raises:
        ConfigError: the environment is torchrun's in part (``WORLD_SIZE`` and ``RANK``
            without ``MASTER_ADDR``/``MASTER_PORT``, as a job script or a shell can leave
            them): torch's own error was a traceback.
    """
    if dist.is_initialized():
        return device
    if not launched_by_torchrun():
        if env_world_size() > 1:
            logger.warning(
                "WORLD_SIZE=%s is set but RANK is not: this is one process, not a "
                "distributed run (launch with torchrun --nproc_per_node N -m uvireid run ... "
                "for DDP, or unset WORLD_SIZE)",
                os.environ["WORLD_SIZE"].strip(),
            )
        return device
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        from uvireid.errors import ConfigError

        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE'].strip()} and RANK={os.environ['RANK']} "
            f"are set, as torchrun sets them, but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not: launch with torchrun "
            f"--nproc_per_node N -m uvireid run ..., or {_SINGLE}"
        )
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        device = f"cuda:{local}"
    else:
        dist.init_process_group("gloo")
    logger.info("rank %d of %d on %s", dist.get_rank(), dist.get_world_size(), device)
    return device


def leave(wait_s: float = 30.0, stopped_by: BaseException | None = None) -> None:
    """Leave the process group :func:`init_from_env` joined (nothing without one), after
    the other ranks reach the same point (at most ``wait_s`` seconds; a rank that never
    comes, stopped elsewhere, is not waited for longer): ranks tearing their connections
    down while a peer still used them aborted ("terminate called without an active
    exception").

    The model goes first: ``stopped_by``, the exception in flight, has its traceback's
    frames cleared (they held the trainer, and its DDP reducer the group's last pieces of
    work with their tensors), and what is left of it is collected. Freed only at
    interpreter exit, after the group, that work took the GIL during finalisation and
    aborted the process now and then, after a Ctrl-C (a rank's SIGABRT, 1 run in about
    4 of the test suite in two processes)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if stopped_by is not None:
        traceback.clear_frames(stopped_by.__traceback__)
    gc.collect()
    if dist.get_world_size() > 1 and dist.get_backend() == "gloo":
        from datetime import timedelta

        with contextlib.suppress(Exception):
            dist.monitored_barrier(timeout=timedelta(seconds=wait_s))
    dist.destroy_process_group()


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (same shape on every rank) from all ranks, in rank order; a 0-d
    tensor gives the (world size,) vector of every rank's value."""
    if not is_distributed():
        return t if t.dim() else t.reshape(1)
    t = t if t.dim() else t.reshape(1)  # torch.cat refuses 0-d tensors (audit MH)
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def gather_labels(labels: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``labels`` of every rank, in rank order (as :func:`all_gather_cat`); on one process
    they stay where they are (labels on the host keep the memory updates from waiting
    for the device), under DDP they travel through ``device`` (NCCL gathers GPU tensors)."""
    if not is_distributed():
        return labels
    return all_gather_cat(torch.as_tensor(labels).to(device).long())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; for labels and small results)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (pickled; small states such as RNG streams)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _stopped(rank_: int, said: str) -> Exception:
    from uvireid.errors import RunFolderError

    return RunFolderError(f"rank {rank_} stopped the run ({said.splitlines()[0][:200]})")


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def from_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0, its result on every rank (the other ranks wait for it).

    An exception on rank 0 is raised there, and on the other ranks as a short error naming
    it: otherwise they would die of the closed connection while waiting, a long
    traceback that buries rank 0's reason (a Ctrl-C or SIGTERM reaches every rank and is
    not announced)."""
    if not is_distributed():
        return fn()
    result, failure = None, None
    if is_main():
        try:
            result = fn()
        except Exception as exc:
            failure = exc
    said = broadcast_object(("failed", _said(failure)) if failure is not None else ("ok", result))
    if failure is not None:
        raise failure
    if said[0] == "failed":
        raise _stopped(0, said[1])
    return said[1]


def agree(fn: Callable[[], Any]) -> Any:
    """``fn()`` on every rank (rank 0 doing what only it does, the others waiting), then
    every rank's outcome on all, as a barrier would: a rank that failed raises its own
    error, the others a short one naming the first rank that failed (see
    :func:`from_main`). Calls nest: every rank takes part in each exchange."""
    if not is_distributed():
        return fn()
    result, failure = None, None
    try:
        result = fn()
    except Exception as exc:
        failure = exc
    said = all_gather_object(None if failure is None else _said(failure))
    if failure is not None:
        raise failure
    for rank_, what in enumerate(said):
        if what is not None:
            raise _stopped(rank_, what)
    return result


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(value: float) -> float:
    """Mean of a float over ranks (for logging)."""
    if not is_distributed():
        return value
    dev = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP keeps parameters identical but each rank's running statistics follow its own
    batches after the last forward; the engine calls this at each epoch end so that the
    model every rank holds (and rank 0 saves) is one model.
    """
    if not is_distributed():
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src)
