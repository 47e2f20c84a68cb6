"""Features files from a trained model: ``uvireid extract``.

A run already leaves the test features of its last evaluation in its folder
(``features.npz``). This re-extracts them with any checkpoint, on the run's dataset or
another one (a different root, RegDB split or dataset: cross-dataset tests), so that
``uvireid eval`` and ``uvireid rerank`` can take them. The extraction is the trainer's
evaluation: the decoded-image cache at the training size, the backbone's test feature
(BN neck, flip-averaged, L2-normalised), in bf16 where the run trained in bf16.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uvireid.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

__all__ = ["backbone_weights", "export_features"]


def backbone_weights(checkpoint: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The backbone's state dict in a uvireid training checkpoint, and what the checkpoint
    says about itself (``epoch``, ``stage``).

    Raises:
        CheckpointError: the file is missing or unreadable, or holds no backbone weights
            (say, a torchvision or another code's file: load those with
            ``backbone.pretrained: PATH``).
    """
    from uvireid.engine.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    model = state.get("model") if isinstance(state, dict) else None
    weights = {
        k[len("backbone.") :]: v
        for k, v in (model or {}).items()
        if isinstance(k, str) and k.startswith("backbone.")
    }
    if not weights:
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{checkpoint}: no backbone weights (no 'model' entry with 'backbone.*' keys; the "
            f"file has {keys}). uvireid extract reads the checkpoints a uvireid run writes "
            f"(RUN/checkpoints/latest.pt); for other weights set backbone.pretrained=PATH"
        )
    return weights, {k: state.get(k) for k in ("epoch", "stage")}


def export_features(
    cfg: dict,
    out: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str = "cpu",
    train_split: Any = None,
    source: str = "",
) -> Path:
    """Extract the test set of ``cfg``'s dataset with ``cfg``'s backbone and write a
    features file.

    Args:
        cfg: a resolved recipe (:func:`uvireid.config.load_recipe`; a run folder's
            ``config.yaml`` is one).
        out: the features file to write (atomically).
        checkpoint: a uvireid training checkpoint whose backbone weights are loaded
            strictly (a missing, unexpected or mis-shaped key is an error naming it);
            None = the backbone as the recipe builds it (``backbone.pretrained``).
        device: where to extract.
        train_split: the split the weights were trained on, recorded as ``train_split``
            (RegDB's protocol then refuses test images of another split).
        source: recorded in ``produced_by``.

    Returns:
        The path written.

    Raises:
        DatasetError: the dataset folder is missing or wrong.
        CheckpointError: see :func:`backbone_weights`; the weights do not fit the
            backbone (another ``backbone.arch``, say).
        ConfigError: test images that cannot be read.
    """
    from uvireid.data.transforms import load_images
    from uvireid.engine.checkpoint import load_state_strict
    from uvireid.engine.trainer import extract_images, image_cache_dir
    from uvireid.features import save_features
    from uvireid.registry import BACKBONES, DATASETS

    dataset = DATASETS.build(cfg["data"])
    backbone = BACKBONES.build(cfg["backbone"])
    about: dict[str, Any] = {}
    if checkpoint is not None:
        weights, info = backbone_weights(checkpoint)
        load_state_strict(backbone, weights, source=f"the backbone of {checkpoint}")
        about = {
            "checkpoint": str(Path(checkpoint).resolve()),
            "checkpoint_epoch": info.get("epoch"),
        }
    backbone.to(device)
    tr, ev = cfg["train"], cfg["evaluation"]
    test = dataset.test
    images, ok = load_images(test, tr["height"], tr["width"], cache_dir=image_cache_dir(tr))
    if not ok.all():
        bad = [r.path for r, good in zip(test, ok) if not good][:3]
        raise ConfigError(
            f"{int((~ok).sum())} test image(s) cannot be read (e.g. {', '.join(bad)}); the "
            f"protocol needs every test image: restore them from the dataset's release archive"
        )
    modality = np.array([r.modality for r in test], dtype=np.int64)
    feats, _ = extract_images(
        backbone,
        images,
        modality,
        device,
        batch=tr["extract_batch"],
        flip=True,
        amp=tr["amp"],
    )
    meta = dict(dataset.meta())
    meta.update(about)
    meta.update(feature_head=ev["feature_head"], produced_by=f"uvireid extract {source}".strip())
    if train_split is not None:
        meta["train_split"] = train_split
    path = save_features(
        out,
        feats.numpy(),
        np.array([r.pid for r in test], dtype=np.int64),
        np.array([r.cam for r in test], dtype=np.int64),
        modality,
        paths=[r.path for r in test],
        **meta,
    )
    logger.info("wrote %d test features (d=%d) to %s", len(test), feats.shape[1], path)
    return path
