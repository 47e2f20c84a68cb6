"""Features files from a trained model: ``uvireid extract``.

A run already leaves the test features of its last evaluation in its folder
(``features.npz``). This re-extracts them with any checkpoint, on the run's dataset or
another one (a different root, RegDB split or dataset: cross-dataset tests), so that
``uvireid eval`` and ``uvireid rerank`` can take them. The extraction is the trainer's
evaluation: the decoded-image cache at the training size, the backbone's test feature
(``evaluation.feature_head``, flip-averaged unless ``evaluation.flip`` is false,
L2-normalised), in bf16 where the run trained in bf16.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from uvireid.errors import CheckpointError, DatasetError

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
    from uvireid.engine.checkpoint import backbone_state, load_checkpoint

    state = load_checkpoint(checkpoint)  # a dict of a uvireid checkpoint's format
    weights = backbone_state(state)
    if not weights:
        raise CheckpointError(
            f"{checkpoint}: no backbone weights (no 'model' entry with 'backbone.*' keys; the "
            f"file has {sorted(state)[:8]}). uvireid extract reads the checkpoints a uvireid "
            f"run writes (RUN/checkpoints/latest.pt); for other weights set "
            f"backbone.pretrained=PATH"
        )
    keys = ("epoch", "stage", "dataset", "best", "started_from", "precision")
    return weights, {k: state.get(k) for k in keys}


def export_features(
    cfg: dict,
    out: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str = "cpu",
    train_split: Any = None,
    source: str = "",
    changes: dict | None = None,
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
        changes: ``{dotted key: (run's value, value used)}`` of a run's recipe changed for
            this extraction, recorded as ``changes`` (a features file made with another
            pooling or image size is then not taken for the run's own).

    Returns:
        The path written.

    Raises:
        DatasetError: the dataset folder is missing or wrong.
        CheckpointError: see :func:`backbone_weights`; the weights do not fit the
            backbone (another ``backbone.arch``, say).
        DatasetError: test images that cannot be read (:func:`extract_test_bank`).
    """
    from uvireid.engine.checkpoint import load_state_strict, weights_sha1
    from uvireid.engine.run_folder import dataset_check, dataset_meta
    from uvireid.engine.trainer import eval_resize, extract_test_bank, precision_of, stages_of
    from uvireid.features import save_features
    from uvireid.registry import BACKBONES, DATASETS

    dataset = DATASETS.build(cfg["data"])
    if not len(dataset.test):
        raise DatasetError(
            f"dataset '{cfg['data'].get('type')}' has no test images (the folder dataset "
            f"holds training images only), so there is nothing to extract; extract needs a "
            f"dataset with a test split (sysu, regdb, llcm, synthetic): data.type=..."
        )
    check = dataset_check(dataset)  # a copy that is not the release: warned, and recorded
    spec = dict(cfg["backbone"])
    if checkpoint is not None and "pretrained" in spec:
        # the checkpoint replaces every weight: the starting weights (a download, or the
        # synthetic prior's minutes of training) would be fetched for nothing
        spec["pretrained"] = False
    backbone = BACKBONES.build(spec)
    meta = dataset_meta(dataset, cfg)
    amp = bool(cfg["train"].get("amp"))
    if checkpoint is not None:
        weights, info = backbone_weights(checkpoint)
        # what train.amp came to where the run ran, as ReidModel reads it: a run in float32
        # (no native bf16 there) is extracted in float32 here too (audit KB)
        amp = amp and info.get("precision") != "float32"
        load_state_strict(backbone, weights, source=f"the backbone of {checkpoint}")
        trained = info.get("dataset")
        if (
            train_split is None
            and isinstance(trained, dict)
            and trained.get("dataset") == getattr(dataset, "name", None)
        ):
            # the split the weights were trained on, as the checkpoint records it (whatever
            # file is given: RegDB's protocol refuses the test images of another split)
            train_split = trained.get("split")
        if (
            meta.get("validation")
            and isinstance(trained, dict)
            and trained.get("dataset") == getattr(dataset, "name", None)
        ):
            # whether the weights left the validation ids out: the protocols refuse
            # these features otherwise (they would test on training images)
            meta["train_validation"] = bool(trained.get("validation"))
            if not meta["train_validation"]:
                logger.warning(
                    "%s trained on the validation ids (as a run without data.validation "
                    "does); its features of them are written, but no protocol "
                    "evaluates them (train with data.validation=true to choose settings on "
                    "them)",
                    checkpoint,
                )
        meta.update(checkpoint=str(Path(checkpoint).resolve()), checkpoint_epoch=info["epoch"])
        if isinstance(info["epoch"], int) and info["epoch"] > 0:
            # the last trained epoch's index, stage and whether it is the run's last, as a
            # run's own features.npz records them (checkpoint_epoch counts the epochs the
            # checkpoint has finished)
            meta["epoch"] = info["epoch"] - 1
            # the trainer's count: stages, or the one stage of top-level losses
            trains = cfg.get("stages") or cfg.get("losses")
            total = sum(st.epochs for st in stages_of(cfg)) if trains else None
            meta.update(stage=info.get("stage"), final=info["epoch"] == total)
            if total is not None:
                meta["total_epochs"] = total
            if info.get("started_from"):  # a stage began from best.pt: test-set chosen
                meta["started_from"] = info["started_from"]
            best = info.get("best") or {}
            if best.get("epoch") == info["epoch"] - 1 and not meta["final"]:
                # best.pt (or a latest.pt saved at the best epoch): chosen on the test set
                meta["selected_on"] = best.get("selected_on", "test set")
    else:  # said in the file: features of a backbone no run trained
        meta.update(checkpoint=f"none (backbone.pretrained={cfg['backbone'].get('pretrained')})")
    backbone.to(device)
    ev = cfg["evaluation"]
    precision = precision_of(device, amp)
    if amp and precision == "float32":
        logger.warning(
            "train.amp: bf16 is not native on %s, so the features are extracted in float32; "
            "a run that trained in bf16 evaluated in bf16, so its own features.npz and these "
            "differ slightly (recorded as precision in the file)",
            device,
        )
    bank = extract_test_bank(
        backbone,
        dataset.test,
        {**cfg["train"], "amp": amp},
        device,
        head=ev["feature_head"],
        flip=ev["flip"],
    )
    meta.update(
        feature_head=ev["feature_head"],
        test_flip=ev["flip"],
        test_size=[int(cfg["train"]["height"]), int(cfg["train"]["width"])],
        test_resize=eval_resize(cfg["train"]),
        precision=precision,
        weights_sha1=weights_sha1(backbone),
        produced_by=f"uvireid extract {source}".strip(),
    )
    if train_split is not None:
        meta["train_split"] = train_split
    if check is not None:
        meta["dataset_check"] = check
    if changes:
        meta["changes"] = {k: f"{a!r} -> {b!r}" for k, (a, b) in changes.items()}
    path = save_features(
        out, bank.feats, bank.pids, bank.cams, bank.modality, paths=bank.paths, **meta
    )
    logger.info("wrote %d test features (d=%d) to %s", len(bank.pids), bank.feats.shape[1], path)
    return path
