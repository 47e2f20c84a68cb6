"""Running a recipe: build its parts, fill the run folder, evaluate.

The unsupervised training loop (extract → refine → cluster → associate → train) plugs
in here; a recipe without losses is an evaluation run: extract the test features of
the recipe's backbone, write them as a features file and measure the dataset's protocol,
without and with the recipe's re-ranker.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import numpy as np
import torch

from uvireid.config import resolve_device
from uvireid.engine.extract import extract_features
from uvireid.engine.run_folder import RunFolder, build_manifest
from uvireid.errors import ConfigError
from uvireid.registry import BACKBONES, DATASETS, RERANKERS

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate(model: torch.nn.Module, dataset: Any, cfg: dict, device: str,
             folder: RunFolder | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Extract the test set, save the features file, run the protocol (± re-ranker)."""
    from uvireid.evaluation.protocols import run_protocol
    from uvireid.features import load_features, save_features

    ev, tr = cfg["evaluation"], cfg["train"]
    protocol = ev["protocol"]
    if protocol == "auto":
        protocol = dataset.protocols[0]
    if protocol not in dataset.protocols:
        raise ConfigError(
            f"evaluation.protocol '{protocol}' does not fit dataset '{cfg['data']['type']}'; "
            f"its protocols: {', '.join(dataset.protocols)}"
        )
    t0 = time.perf_counter()
    bank = extract_features(model, dataset.test, height=tr["height"], width=tr["width"],
                            device=device, workers=tr["workers"], progress=progress)
    seconds = {"extract": time.perf_counter() - t0}
    meta = dict(dataset.meta())
    meta.update(feature_head=ev["feature_head"], produced_by=f"uvireid run {cfg['name']}")
    if "split" in meta:  # RegDB: the model of this run belongs to this split
        meta.setdefault("train_split", meta["split"])
    target = (folder.path if folder else None)
    path = save_features(
        (target / "features.npz") if target else "features.npz",
        bank.feats, bank.pids, bank.cams, bank.modality, paths=bank.paths, **meta,
    )
    feats = load_features(path)
    kwargs = dict(trials=ev["trials"], shot=ev["shot"], sampler=ev["sampler"],
                  perm_file=ev["perm_file"], feature_head=ev["feature_head"])
    t0 = time.perf_counter()
    results = {"none": run_protocol(feats, protocol, **kwargs)}
    seconds["evaluate"] = time.perf_counter() - t0
    if cfg.get("reranker"):
        reranker = RERANKERS.build(cfg["reranker"])
        t0 = time.perf_counter()
        results[cfg["reranker"]["type"]] = run_protocol(feats, protocol, reranker=reranker,
                                                        **kwargs)
        seconds["rerank"] = time.perf_counter() - t0
    return {"results": results, "seconds": seconds, "features": str(path)}


def run_recipe(cfg: dict, *, resume: bool = False, progress: bool = True) -> RunFolder:
    """Run a resolved recipe (see :func:`uvireid.config.load_recipe`) into a run folder."""
    if cfg.get("losses") or cfg.get("clusterer") or cfg.get("associator"):
        raise ConfigError(
            f"recipe '{cfg['name']}' names training parts (losses/clusterer/associator), "
            "but this version of uvireid has no training engine; remove them to evaluate "
            "the backbone, or update uvireid"
        )
    if not cfg.get("data") or not cfg.get("backbone"):
        raise ConfigError(f"recipe '{cfg['name']}' needs a 'data' and a 'backbone' section")
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    dataset = DATASETS.build(cfg["data"])
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"]) if resume else None
    if folder is not None and (folder.path / "results.json").exists():
        logger.info("run %s already finished; nothing to resume", folder.path)
        return folder
    folder = folder or RunFolder.create(cfg["output_dir"], cfg["name"])
    handler = folder.attach_log()
    try:
        folder.write_config(cfg)
        folder.write_manifest(build_manifest(cfg, device, dataset))
        logger.info("run folder %s (device %s)", folder.path, device)
        model = BACKBONES.build(cfg["backbone"]).to(device)
        out = evaluate(model, dataset, cfg, device, folder, progress=progress)
        tables = {name: res.to_dict() for name, res in out["results"].items()}
        folder.log_metrics({"epoch": 0, "eval": tables, "seconds": out["seconds"]})
        folder.write_json("results.json", tables)
        for res in out["results"].values():
            logger.info("\n%s", res.table())
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return folder
