"""Run by tests/engine/test_distributed.py (under torchrun, or alone): train a recipe,
writing each step's batch indices per rank; ``kill`` stops after epoch 0's checkpoint,
``resume`` / ``resume-allow`` continue it (the latter with ``allow_changes``). Each rank
writes ``MODE_leaveRANK.json`` as it leaves the process group: the DDP models alive then.

Usage: [torchrun --nproc_per_node N] ddp_resume_worker.py RECIPE OUT_DIR MODE
"""

from __future__ import annotations

import gc
import json
import sys

import numpy as np
import torch


def main() -> None:
    import uvireid  # noqa: F401
    import uvireid.engine.trainer as T
    from uvireid.config import load_recipe
    from uvireid.engine import distributed as D
    from uvireid.engine.runner import run_recipe

    recipe, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    real_epoch, real_step = T.Trainer.train_epoch, T.Trainer.step

    def train_epoch(self, epoch):
        if mode == "kill" and epoch == 1:
            raise KeyboardInterrupt("stopped after epoch 0")  # epoch 0 is checkpointed
        return real_epoch(self, epoch)

    def step(self, stage, losses, lab, batch, paired):
        with open(f"{out}/batches{D.rank()}.jsonl", "a") as fh:
            row = [self.epoch, np.asarray(batch.idx_v).tolist(), np.asarray(batch.idx_r).tolist()]
            fh.write(json.dumps(row) + "\n")
        return real_step(self, stage, losses, lab, batch, paired)

    T.Trainer.train_epoch, T.Trainer.step = train_epoch, step
    real_destroy = torch.distributed.destroy_process_group

    def destroy_process_group(*args, **kwargs):
        # the models still alive as the group goes (nothing is collected here): one left
        # to interpreter exit took the GIL in finalisation and aborted the rank at times
        from torch.nn.parallel import DistributedDataParallel as DDP

        alive = sum(isinstance(o, DDP) for o in gc.get_objects())
        with open(f"{out}/{mode}_leave{D.rank()}.json", "w") as fh:
            json.dump({"ddp_alive": alive}, fh)
        return real_destroy(*args, **kwargs)

    torch.distributed.destroy_process_group = destroy_process_group
    cfg = load_recipe(recipe)
    try:
        run_recipe(
            cfg,
            resume=mode.startswith("resume"),
            allow_changes=mode == "resume-allow",
            progress=False,
        )
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
