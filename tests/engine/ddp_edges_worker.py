"""Run by test_distributed_edges.py: N gloo processes (spawned here, joined through
``init_from_env`` with torchrun's variables) call the distributed helpers on rank-specific
inputs and pickle what they saw to OUT/rank<r>.pkl.

Usage: python ddp_edges_worker.py OUT WORLD PORT
"""

from __future__ import annotations

import os
import pickle
import sys
import weakref

import torch


class Held:
    """An object only a failed frame's locals hold."""


def _fails_holding(ref_box):
    held = Held()
    ref_box.append(weakref.ref(held))
    raise ValueError("stopped while holding an object")


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        return (type(exc).__name__, str(exc))


def work(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from uvireid.engine import distributed as D

    got: dict = {"device": D.init_from_env("cpu")}
    got["again"] = D.init_from_env("cpu")  # already joined: nothing happens
    got["who"] = (D.is_distributed(), D.rank(), D.world_size(), D.is_main())
    calls: list[int] = []
    got["from_main"] = D.from_main(lambda: calls.append(rank) or f"from {D.rank()}")
    got["from_main_calls"] = list(calls)

    def boom():
        raise ValueError("boom on rank 0\nsecond line")

    got["from_main_fail"] = _outcome(lambda: D.from_main(boom))
    got["gather_0d"] = _outcome(lambda: D.all_gather_cat(torch.tensor(float(rank))).tolist())

    def fail_on(ranks):
        def fn():
            if rank in ranks:
                raise KeyError(f"rank {rank} failed")
            return rank

        return fn

    got["agree_ok"] = _outcome(lambda: D.agree(fail_on(())))
    got["agree_some"] = _outcome(lambda: D.agree(fail_on((1, 2))))
    got["bcast1"] = D.broadcast_object({"from": rank}, src=1)
    got["objects"] = D.all_gather_object(("r", rank))
    got["mean"] = D.all_reduce_mean(float(rank * rank))
    bn = torch.nn.BatchNorm1d(3)
    bn.running_mean.fill_(rank)
    bn.running_var.fill_(10.0 + rank)
    bn.num_batches_tracked.fill_(100 + rank)
    D.broadcast_buffers(bn, src=1)
    got["buffers"] = (
        bn.running_mean.tolist(),
        bn.running_var.tolist(),
        int(bn.num_batches_tracked),
    )
    base = torch.arange(6).reshape(2, 3) + 10 * rank
    gathered = {}
    for dtype in (torch.float16, torch.int32, torch.float64, torch.bool):
        g = D.all_gather_cat(base.to(dtype))
        gathered[str(dtype)] = (g.dtype, tuple(g.shape), g.tolist())
    g = D.all_gather_cat(base.t().float())  # not contiguous
    gathered["transposed"] = (g.dtype, tuple(g.shape), g.tolist())
    got["gathered"] = gathered
    labels = D.gather_labels(torch.tensor([rank, -1], dtype=torch.int32), "cpu")
    got["labels"] = (labels.dtype, labels.tolist())
    refs: list = []
    try:
        _fails_holding(refs)
    except ValueError as exc:
        D.leave(stopped_by=exc)
        got["freed"] = refs[0]() is None
    got["left"] = torch.distributed.is_initialized()
    with open(f"{out}/rank{rank}.pkl", "wb") as fh:
        pickle.dump(got, fh)


def single(out: str) -> None:
    """A process group of one process (torchrun --nproc_per_node 1 could make one)."""
    import torch.distributed as dist

    from uvireid.engine import distributed as D

    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=0, world_size=1)
    t = torch.arange(3)
    got = {
        "who": (D.is_distributed(), D.rank(), D.world_size()),
        "same": D.all_gather_cat(t) is t,
        "objects": D.all_gather_object("x"),
    }
    D.leave()
    with open(f"{out}/single.pkl", "wb") as fh:
        pickle.dump(got, fh)


if __name__ == "__main__":
    out, world, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if world == 1:
        single(out)
    else:
        torch.multiprocessing.spawn(work, args=(world, port, out), nprocs=world, join=True)
