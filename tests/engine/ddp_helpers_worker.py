"""Run by tests/engine/test_distributed.py under torchrun (2 gloo processes): call the
distributed helpers and a cluster-memory update on rank-specific inputs, dump the results.

Usage: python -m torch.distributed.run --nproc_per_node 2 ddp_helpers_worker.py OUT_DIR
Each rank writes OUT_DIR/rank<r>.pt; the test recomputes every value by hand.
"""

from __future__ import annotations

import sys

import numpy as np
import torch


def inputs(rank: int) -> dict:
    """What rank ``rank`` holds (the test rebuilds both ranks' inputs from this too)."""
    rng = np.random.default_rng(100 + rank)
    return {
        "feats": torch.from_numpy(rng.normal(size=(6, 4))).float(),
        # labels shared across ranks (so the order of the sequential updates matters), -1 too
        "labels": torch.tensor([[0, 1, 0, -1, 2, 1], [1, 0, 3, 0, -1, 1]][rank]),
        "value": 1.0 + 2.0 * rank,
    }


def initial_memory() -> torch.Tensor:
    rng = np.random.default_rng(7)
    m = torch.from_numpy(rng.normal(size=(4, 4))).float()
    return torch.nn.functional.normalize(m, dim=1)


def main() -> None:
    from uvireid.engine import distributed as D
    from uvireid.losses.memory import ClusterMemory

    out = sys.argv[1]
    torch.set_num_threads(1)
    D.init_from_env("cpu")
    try:
        r = D.rank()
        mine = inputs(r)
        mem = ClusterMemory(4, momentum=0.2)
        mem.features = initial_memory()
        mem.update(mine["feats"], mine["labels"])
        state = {
            "rank": r,
            "world_size": D.world_size(),
            "memory": mem.features.clone(),
            "cat": D.all_gather_cat(torch.arange(3) + 10 * r),
            "labels": D.gather_labels(mine["labels"], "cpu"),
            "mean": D.all_reduce_mean(mine["value"]),
            "broadcast": D.broadcast_object(f"rank {r}'s object"),
            "objects": D.all_gather_object({"rank": r}),
            "from_main": D.from_main(lambda: f"computed on rank {D.rank()}"),
        }
        torch.save(state, f"{out}/rank{r}.pt")
    finally:
        D.leave()


if __name__ == "__main__":
    main()
