"""Run by tests/engine/test_distributed.py under torchrun: train a recipe, dump the state.

Usage: python -m torch.distributed.run --nproc_per_node 2 ddp_worker.py RECIPE OUT_DIR [KEY=VALUE]
Each rank writes OUT_DIR/rank<r>.pt with its model and loss-memory state after training.
"""

from __future__ import annotations

import sys

import torch


def main() -> None:
    import uvireid  # noqa: F401
    import uvireid.data.transforms as transforms
    import uvireid.engine.trainer as T
    from uvireid.config import load_recipe
    from uvireid.engine import distributed as D
    from uvireid.engine.runner import run_recipe

    recipe, out = sys.argv[1], sys.argv[2]
    real_fit = T.Trainer.fit
    real_decode = transforms._decode
    decoded = []  # images this rank decoded (the rest it mapped from the cache)

    def counting_decode(records, *args, **kwargs):
        decoded.append(len(records))
        return real_decode(records, *args, **kwargs)

    transforms._decode = counting_decode

    def fit_and_dump(self):
        tables = real_fit(self)
        state = {
            "model": self.model.state_dict(),
            "losses": {k: v.state_dict() for k, v in self.losses.items()},
            "world_size": D.world_size(),
            "rank": D.rank(),
            "decoded": list(decoded),
        }
        torch.save(state, f"{out}/rank{D.rank()}.pt")
        return tables

    T.Trainer.fit = fit_and_dump
    torch.set_num_threads(1)
    run_recipe(load_recipe(recipe, sys.argv[3:]), progress=False)


if __name__ == "__main__":
    main()
