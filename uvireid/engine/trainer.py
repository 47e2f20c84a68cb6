"""The training engine: one loop over named stages (DESIGN.md "The unsupervised loop").

Every epoch, whatever the recipe::

    extract   train features of every image (eval mode, no flip)       -> FeatureBank
    cluster   per modality (the stage's clusterer)                      -> labels, -1 outliers
    associate across modalities (the stage's associator, if any)        -> CrossLabels
    reset     each loss re-initialises its memories from the epoch's features and labels
    train     sampler -> augment -> model -> sum of weighted losses -> optimiser step
              -> explicit memory updates (loss.update)
    evaluate  every ``evaluation.every`` epochs and at the end

A stage (``stages:`` in the recipe) names its epochs, sampler, clusterer, associator and
losses; the DCL stage has no associator and trains on intra-modality labels, the SALCR
stage associates with ``otla_dual`` and trains on dual labels. A recipe with top-level
``losses`` and no ``stages`` is one stage. Adam (``train.optimizer``) with a step schedule
on the absolute epoch (SALCR spec Sec. 9.3), after an optional linear warm-up. Each epoch appends one JSON line to ``metrics.jsonl``:
loss terms, cluster counts and outliers per modality, pseudo-label quality when the
ground truth is known, the association's summary, evaluation results, seconds per phase,
and warnings (a collapsing cluster count; no cross-modal link). A checkpoint is written
atomically after every epoch (:mod:`uvireid.engine.checkpoint`); a non-finite loss stops
the run with :class:`~uvireid.errors.TrainingError`, keeping the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from uvireid.associations.quality import link_precision
from uvireid.data.transforms import Augmenter, load_images, to_device
from uvireid.engine import distributed as D
from uvireid.engine.checkpoint import (
    BEST,
    LATEST,
    keep_as_best,
    load_checkpoint,
    load_state_strict,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from uvireid.engine.graphs import GraphedLosses, tf32_products
from uvireid.engine.run_folder import source_revision
from uvireid.errors import ConfigError, DatasetError, TrainingError
from uvireid.fileio import signals_deferred
from uvireid.losses.contract import EpochContext, EpochLabels, StepOutputs, StepTargets
from uvireid.models.backbone import check_input_size
from uvireid.registry import ASSOCIATORS, BACKBONES, CLUSTERERS, LOSSES, RERANKERS, SAMPLERS
from uvireid.rerank import workspace
from uvireid.types import INFRARED, VISIBLE, CrossLabels, FeatureBank

__all__ = [
    "Stage",
    "stages_of",
    "TrainModel",
    "Trainer",
    "extract_images",
    "lr_factors",
    "make_optimizer",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One resolved stage; ``first_epoch`` is its first absolute epoch index."""

    name: str
    epochs: int
    iters: int
    ltg_p: float
    sampler: dict
    clusterer: dict | None
    associator: dict | None
    losses: list[dict]
    first_epoch: int = 0
    lr: float | None = None
    lr_steps: list[int] | None = None
    reset_optimizer: bool = False
    start_from: str | None = None
    jitter_views: tuple[str, ...] = ("visible_ca", "infrared")

    @property
    def last_epoch(self) -> int:
        return self.first_epoch + self.epochs - 1


def term_names(losses: list[dict]) -> list[str]:
    """The metrics' name of each loss of a stage: its type, and ``type.N`` (N its index in
    the list) where the stage has several losses of one type, so that each term is logged
    and the terms add up to the total."""
    types = [item["type"] for item in losses]
    return [t if types.count(t) == 1 else f"{t}.{i}" for i, t in enumerate(types)]


def stages_of(cfg: dict) -> list[Stage]:
    """The recipe's stages; top-level ``losses`` without ``stages`` make one stage."""
    tr = cfg["train"]
    raw = cfg.get("stages") or []
    if not raw:
        if not cfg.get("losses"):
            raise ConfigError(f"recipe '{cfg.get('name')}' has neither stages nor losses")
        raw = [
            {
                "name": "train",
                "epochs": tr["epochs"],
                "iters_per_epoch": None,
                "ltg_p": 0.0,
                "sampler": {
                    "type": "paired" if cfg.get("associator") else "identity",
                    "ids": tr["batch_ids"],
                    "images": tr["images_per_id"],
                },
                "clusterer": cfg.get("clusterer"),
                "associator": cfg.get("associator"),
                "losses": cfg["losses"],
            }
        ]
    out, first = [], 0
    for s in raw:
        if not s.get("clusterer"):
            raise ConfigError(
                f"stage '{s['name']}' has no clusterer; set clusterer: {{type: dbscan, ...}} "
                f"at the top of the recipe or in the stage"
            )
        out.append(
            Stage(
                name=s["name"],
                epochs=int(s["epochs"]),
                iters=int(s.get("iters_per_epoch") or tr["iters_per_epoch"]),
                ltg_p=float(s.get("ltg_p", 0.0)),
                sampler=dict(s["sampler"]),
                clusterer=s["clusterer"],
                associator=s.get("associator"),
                losses=[dict(x) for x in s["losses"]],
                first_epoch=first,
                lr=None if s.get("lr") is None else float(s["lr"]),
                lr_steps=None if s.get("lr_steps") is None else [int(e) for e in s["lr_steps"]],
                reset_optimizer=bool(s.get("reset_optimizer", False)),
                start_from=s.get("start_from"),
                jitter_views=tuple(
                    s["jitter_views"]
                    if s.get("jitter_views") is not None
                    else tr.get("jitter_views", ("visible_ca", "infrared"))
                ),
            )
        )
        first += int(s["epochs"])
    return out


def _check_cross_labels(
    cl: CrossLabels, nv: int, nr: int, kv: int, kr: int, who: str
) -> CrossLabels:
    """An associator's labels before they index memories and losses: one per instance,
    integers in -1..K-1 of their space, matches within the clusters. K is the clusterer's
    cluster count (``kv``, ``kr``): an associator that keeps the two label spaces (every
    built-in one) relabels within them, so labels numbered 1..K, or a ``num_clusters_v``
    larger than the clusterer found, are an off-by-one (a memory row no cluster fills);
    a unified space may be as large as the associator says, or, where it leaves
    ``num_clusters_*`` at 0, as its labels and matches make it (``CrossLabels``'
    documented default: derived from the labels). Returns ``cl`` with the labels as numpy
    int64 arrays (and a unified space's derived sizes filled in).

    Raises:
        TrainingError: naming the associator, the array and the fix.
    """
    import dataclasses

    if not isinstance(cl, CrossLabels):
        raise TrainingError(
            f"associator '{who}' returned {type(cl).__name__}; associate(feats_v, labels_v, "
            f"feats_r, labels_r) must return a uvireid.types.CrossLabels"
        )
    bounds: dict[str, int | None] = {"v": kv, "r": kr}
    for side, k, said in (("v", kv, cl.num_clusters_v), ("r", kr, cl.num_clusters_r)):
        if cl.unified:  # 0: derived from the labels (audit NF: refused as "outside")
            bounds[side] = max(int(said), k) if int(said) > 0 else None
        elif int(said) > k:
            raise TrainingError(
                f"associator '{who}' reports num_clusters_{side} = {said}, but the clusterer "
                f"found {k} clusters in that space; labels of separate spaces are the "
                f"clusters' own 0..{k - 1} (set unified=True for a merged label space)"
            )
    out = {}
    for name in ("labels_in_v", "labels_in_r"):
        lab = getattr(cl, name)
        if isinstance(lab, torch.Tensor):
            lab = lab.detach().cpu().numpy()
        lab = np.asarray(lab)
        k = bounds[name[-1]]
        if lab.shape != (nv + nr,) or not np.issubdtype(lab.dtype, np.integer):
            raise TrainingError(
                f"associator '{who}' returned {name} of shape {lab.shape} and dtype "
                f"{lab.dtype}; it must be ({nv + nr},) integers, one label per visible then "
                f"infrared instance as passed to associate()"
            )
        if k is None and len(lab) and lab.min() < -1:
            raise TrainingError(
                f"associator '{who}' returned {name} down to {lab.min()}; labels are 0 or "
                f"more, -1 marks an instance without a label"
            )
        if k is not None and len(lab) and (lab.min() < -1 or lab.max() >= k):
            raise TrainingError(
                f"associator '{who}' returned {name} from {lab.min()} to {lab.max()}, outside "
                f"-1..{k - 1} (the {'visible' if name[-1] == 'v' else 'infrared'} label space "
                f"holds {k} clusters); -1 marks an instance without a label"
            )
        out[name] = lab.astype(np.int64, copy=False)
    matches = np.asarray(cl.matches, dtype=np.int64).reshape(-1, 2)
    if len(matches):  # negative ids in a unified space too (CrossLabels refuses them)
        bad = (matches < 0).any(1)
        if not cl.unified:
            bad |= (matches[:, 0] >= kv) | (matches[:, 1] >= kr)
        if bad.any():
            raise TrainingError(
                f"associator '{who}' returned {int(bad.sum())} matches outside the clusters "
                f"(first: {matches[bad][0].tolist()}; visible 0..{kv - 1}, infrared "
                f"0..{kr - 1})"
            )
    if cl.unified and None in bounds.values():
        sizes = dataclasses.replace(cl, matches=matches, **out).space_sizes()
        for side, size, k in (("v", sizes[0], kv), ("r", sizes[1], kr)):
            if bounds[side] is None:
                if size > nv + nr:
                    raise TrainingError(
                        f"associator '{who}' returned unified labels up to {size - 1} "
                        f"without num_clusters_{side}; {nv + nr} instances make at most "
                        f"{nv + nr} labels (number them 0..K-1, or set num_clusters_{side})"
                    )
                out[f"num_clusters_{side}"] = max(size, k)
    return dataclasses.replace(cl, matches=matches, **out)


def lr_factors(stages: list[Stage], tr: dict):
    """The learning rate of each epoch as a factor of ``train.lr`` (for ``LambdaLR``).

    An epoch of a stage with ``lr`` or ``lr_steps`` gets ``(stage lr or train.lr) *
    gamma ** (steps of the stage passed)``, counted from the stage's first epoch; any other
    epoch ``train.lr * gamma ** (train.lr_steps passed)`` on the absolute epoch. The
    run's first ``train.warmup_epochs`` epochs are scaled by the linear warm-up factor
    ``w + (1 - w) * epoch / warmup_epochs`` (``w = train.warmup_factor``; the
    WarmupMultiStepLR of reid-strong-baseline and fast-reid)."""
    base, gamma = float(tr["lr"]), float(tr["lr_gamma"])
    warm, w0 = int(tr.get("warmup_epochs") or 0), float(tr.get("warmup_factor", 0.01))

    def scheduled(epoch: int) -> float:
        stage = next((s for s in stages if s.first_epoch <= epoch <= s.last_epoch), None)
        if stage is not None and (stage.lr is not None or stage.lr_steps is not None):
            lr = base if stage.lr is None else stage.lr
            local = epoch - stage.first_epoch
            passed = sum(local >= e for e in stage.lr_steps or [])
            return lr / base * gamma**passed if base else 0.0
        return gamma ** sum(epoch >= e for e in tr["lr_steps"])

    def factor(epoch: int) -> float:
        if epoch < warm:
            alpha = epoch / warm
            return scheduled(epoch) * (w0 * (1 - alpha) + alpha)
        return scheduled(epoch)

    return factor


def make_optimizer(params: list, tr: dict, on_cuda: bool = False) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``params`` at ``train.lr`` with ``train.weight_decay``:
    Adam (L2 decay in the gradient, as the reference codes), AdamW (decoupled decay) or
    SGD with ``train.momentum``. On CUDA the fused kernels (one launch for all
    parameters; the same update)."""
    kind = tr.get("optimizer", "adam")
    lr, wd, fused = tr["lr"], tr["weight_decay"], on_cuda or None
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=fused)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=fused)
    if kind == "sgd":
        return torch.optim.SGD(
            params, lr=lr, weight_decay=wd, momentum=tr.get("momentum", 0.9), fused=fused
        )
    raise ConfigError(f"train.optimizer must be adam, adamw or sgd, got {kind!r}")


# --------------------------------------------------------------------------------------
# model and extraction
# --------------------------------------------------------------------------------------
class TrainModel(nn.Module):
    """The backbone and, when a loss needs part features, the FGSAL part module."""

    def __init__(self, backbone: nn.Module, parts: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.parts = parts

    def forward(self, x: torch.Tensor, modality: torch.Tensor, parts_of: int | None = None):
        """Backbone output and, with ``parts_of=S`` on a paired batch [v; a; r] of 3 S
        images, the nine part features (inside the forward, so DDP sees them)."""
        out = self.backbone(x, modality)
        parts: dict = {}
        if parts_of is not None and self.parts is not None:
            s, fm = parts_of, out.feature_map
            parts = self.parts.pairs(fm[:s], fm[s : 2 * s], fm[2 * s :])
        return out, parts


#: steps whose loss values are read back from the device at once (and checked finite)
READ_EVERY = 10


def set_deterministic() -> None:
    """Deterministic kernels for this process (``train.deterministic``): torch's
    deterministic algorithms (a warning, not an error, where an op has none), cuDNN without
    autotuning, and the cuBLAS workspace its reproducibility notes ask for (set before the
    first CUDA product)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    logger.info("train.deterministic: deterministic kernels requested (slower on a GPU)")


def _kernel_state() -> tuple[bool, bool, bool, bool]:
    """torch's process-wide kernel settings that a trainer may change."""
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )


def _restore_kernel_state(state: tuple[bool, bool, bool, bool]) -> None:
    algorithms, warn_only, cudnn_deterministic, benchmark = state
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
    torch.backends.cudnn.deterministic = cudnn_deterministic
    torch.backends.cudnn.benchmark = benchmark


def peak_memory(device: str) -> dict[str, float]:
    """Peak memory so far, in GiB: the process's resident set on the host (``ru_maxrss``)
    and, on CUDA, the tensors allocated on the device since the last call (its peak is
    reset, so each epoch reports its own). What a user needs to size a machine."""
    out: dict[str, float] = {}
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["host_peak_rss_gib"] = rss / (2**30 if sys.platform == "darwin" else 2**20)
    except (ImportError, OSError):  # pragma: no cover - not POSIX
        pass
    dev = torch.device(device)
    if dev.type == "cuda":
        out["gpu_peak_allocated_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        torch.cuda.reset_peak_memory_stats(dev)
    return out


def nonfinite_state(module: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``module`` holding a NaN or
    an infinity (one read-back from the device for all of them). A model can diverge
    with a finite loss: a BatchNorm's running variance overflows while the loss of a
    single cluster stays 0."""
    named = [
        (name, t)
        for name, t in (*module.named_parameters(), *module.named_buffers())
        if t.is_floating_point()
    ]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).cpu()
    return [name for (name, _), ok in zip(named, finite.tolist()) if not ok]


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 matrix products and convolutions natively (oneDNN
    with AVX512-BF16 or AMX); elsewhere bf16 is emulated, slower than float32. Asked once
    per process (every training step's autocast asks)."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and bool(
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _amp_device(device: str) -> str | None:
    """The autocast device type ``train.amp`` uses on ``device``: ``"cuda"``, ``"cpu"`` on
    a CPU with native bf16, else None (float32)."""
    kind = torch.device(device).type
    return kind if kind == "cuda" or (kind == "cpu" and cpu_bf16_native()) else None


def precision_of(device: str, amp: bool) -> str:
    """``"bf16"`` where ``train.amp`` takes effect on ``device`` (CUDA, a CPU with native
    bf16), else ``"float32"``."""
    return "bf16" if amp and _amp_device(device) else "float32"


def _autocast(device: str, amp: bool):
    """bf16 autocast where ``train.amp`` can use it: CUDA, or a CPU with native bf16."""
    kind = _amp_device(device) if amp else None
    return torch.autocast(kind, dtype=torch.bfloat16) if kind else contextlib.nullcontext()


@torch.no_grad()
def extract_images(
    backbone: nn.Module,
    images: torch.Tensor,
    modality: np.ndarray,
    device: str,
    *,
    batch: int = 256,
    flip: bool = False,
    amp: bool = False,
    part_module: nn.Module | None = None,
    head: str = "bn_feat",
    renormalize: bool = True,
    part_weights: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features of uint8 ``images`` (N, 3, H, W) with their ``modality`` (N,).

    Returns ``(feats, parts)``: (N, d) float32 L2-normalised test features on the CPU
    (``backbone.extract``: the ``head`` feature, the BN neck's by default, flip-averaged
    when ``flip``) and, with a
    ``part_module`` (:class:`uvireid.models.parts.PartQuery`), the (N, P, d) L2-normalised
    self parts computed batch by batch (the feature maps are never kept), else None. Eval
    mode; the previous mode is restored. With ``flip`` and ``renormalize=False`` the
    features are the mean of the two normalised halves as it is (norm <= 1: PGM's
    clustering features). With a ``part_module``, a ``part_weights`` list receives the
    (N, P) share of each part in the norm of the image's joint [parts ‖ global] vector
    (the official SALCR code seeds its part memories from slices of that vector,
    jointly normalised; :class:`~uvireid.losses.part.PartContrastLoss` with
    ``official_quirks``), one tensor per batch.
    """
    from uvireid.data.transforms import normalize

    was = backbone.training
    backbone.eval()
    feats, parts = [], []
    mod = torch.as_tensor(np.asarray(modality), dtype=torch.long)
    try:
        for s in range(0, len(images), batch):
            x = normalize(images[s : s + batch].to(device).float().div_(255.0))
            m = mod[s : s + batch]  # on the host: the backbone splits the batch there
            with _autocast(device, amp):
                unit = torch.nn.functional.normalize
                if part_module is not None:
                    out = backbone(x, m)
                    f = unit(out.bn_feat.float(), dim=1)
                    if flip:  # the normalised halves averaged, as backbone.extract does
                        f = (f + unit(backbone(x.flip(3), m).bn_feat.float(), dim=1)) / 2
                        f = unit(f, dim=1) if renormalize else f
                    raw = part_module.self_parts(out.feature_map.float(), normalize=False)
                    parts.append(torch.nn.functional.normalize(raw, dim=-1).cpu())
                    if part_weights is not None:  # |part_p| / |[parts ‖ bn_feat]|
                        norms = torch.linalg.vector_norm(raw, dim=-1)  # (B, P)
                        joint = torch.sqrt(
                            norms.square().sum(1) + out.bn_feat.float().square().sum(1)
                        )
                        part_weights.append((norms / joint.clamp_min(1e-12)[:, None]).cpu())
                elif flip and not renormalize:
                    hk = {} if head == "bn_feat" else {"head": head}
                    f = backbone.extract(x, m, flip=False, **hk)
                    f = (f + backbone.extract(x.flip(3), m, flip=False, **hk)) / 2
                elif head == "bn_feat":  # any backbone's extract (plugins' too)
                    f = backbone.extract(x, m, flip=flip)
                else:
                    f = backbone.extract(x, m, flip=flip, head=head)
            feats.append(f.float().cpu())
    finally:
        backbone.train(was)
    d = getattr(backbone, "out_dim", 0)
    f = torch.cat(feats) if feats else torch.zeros(0, d)
    return f, (torch.cat(parts) if part_module is not None and parts else None)


# --------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------
def image_cache_dir(train: dict) -> str | None:
    """The folder of decoded-image caches that ``train.image_cache`` names (``auto``:
    ``$UVIREID_CACHE/images``), or None (decode in memory)."""
    c = train.get("image_cache")
    if c is None:
        return None
    if c == "auto":
        from uvireid.data.synthetic import cache_root

        return str(cache_root() / "images")
    return c


def eval_resize(train: dict) -> str:
    """The test images' resize filter: ``train.test_resize``, else ``train.resize``."""
    return train.get("test_resize") or train.get("resize", "bilinear")


def load_test_images(test: list, train: dict) -> torch.Tensor:
    """The test images decoded at the training size (through the decoded-image cache).

    Raises:
        DatasetError: a test image cannot be read (the protocol needs every one).
    """
    imgs, ok = load_images(
        test,
        train["height"],
        train["width"],
        cache_dir=image_cache_dir(train),
        resize=eval_resize(train),
    )
    if not ok.all():
        bad = [r.path for r, good in zip(test, ok) if not good][:3]
        raise DatasetError(
            f"{int((~ok).sum())} test image(s) are unreadable (e.g. {', '.join(bad)}); the "
            f"protocol needs every test image: restore them from the release archive"
        )
    return imgs


def extract_test_bank(
    backbone: nn.Module,
    test: list,
    train: dict,
    device: str,
    images: torch.Tensor | None = None,
    head: str = "bn_feat",
    flip: bool = True,
) -> FeatureBank:
    """The test features a run evaluates: ``test`` records decoded at the training size
    (:func:`load_test_images`, or ``images`` already decoded), the backbone's ``head``
    feature (``evaluation.feature_head``), flip-averaged unless ``flip`` is false
    (``evaluation.flip``), in bf16 where ``train.amp``; in the order of ``test``.

    Raises:
        DatasetError: a test image cannot be read (the protocol needs every one).
    """
    imgs = load_test_images(test, train) if images is None else images
    modality = np.array([r.modality for r in test], dtype=np.int64)
    feats, _ = extract_images(
        backbone,
        imgs,
        modality,
        device,
        batch=train["extract_batch"],
        flip=flip,
        amp=train["amp"],
        head=head,
    )
    return FeatureBank(
        feats=feats.numpy(),
        modality=modality,
        cams=np.array([r.cam for r in test], dtype=np.int64),
        pids=np.array([r.pid for r in test], dtype=np.int64),
        paths=[r.path for r in test],
    )


def check_part_map(bb: nn.Module, h: int, w: int, num_parts: int, kind: str) -> int:
    """Refuse, before the first epoch (and in ``--dry-run`` for timm backbones), ``num_parts``
    stripes the backbone's feature map at the training size cannot give (each stripe needs
    a pixel; a vision transformer gives no map): found otherwise when the first part loss
    runs, after the stages before it have trained.

    Returns the map's channel count, which sizes the part module: it may differ from the
    pooled feature's size (a timm head that resizes it: MobileNetV3's 576 channels pool
    to 1024 features).

    Raises:
        ConfigError: naming the backbone, the map and the fix.
    """
    param = next(bb.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    was = bb.training
    bb.eval()
    try:
        with torch.no_grad():
            fmap = bb(torch.zeros(1, 3, h, w, device=dev), VISIBLE).feature_map
    finally:
        bb.train(was)
    if fmap.dim() != 4:
        raise ConfigError(
            f"the part losses (num_parts {num_parts}) cut the backbone's (B, C, h, w) "
            f"feature map into stripes, but backbone '{kind}' gives features of shape "
            f"{tuple(fmap.shape)}; use a convolutional backbone or drop the part losses"
        )
    fh, fw = fmap.shape[-2:]
    if fh * fw < num_parts:
        raise ConfigError(
            f"num_parts {num_parts}: at train.height x train.width = {h} x {w} the "
            f"backbone's feature map is {fh} x {fw} = {fh * fw} pixel(s), fewer than the "
            f"parts (each part is a stripe of at least one pixel); raise train.height and "
            f"train.width or lower the part losses' num_parts"
        )
    return int(fmap.shape[1])


def check_loss_module(loss: Any, where: str, warn: bool = True) -> None:
    """What the trainer does with a loss, checked on a built one (audit BO, session 19):
    it optimises the model's parameters only, so a loss with trainable parameters of its
    own is refused (they would take gradients and never move); a loss holding buffers (a
    memory) with ``reset`` but no ``update`` (or the reverse) is warned about, since the
    trainer calls those only where they exist (a misspelt ``update`` trains against
    frozen prototypes).

    Raises:
        ConfigError: a loss with trainable parameters, naming it.
    """
    params = [p for p in getattr(loss, "parameters", lambda: [])() if p.requires_grad]
    if params:
        n = sum(p.numel() for p in params)
        raise ConfigError(
            f"{where}: the loss has {len(params)} trainable parameter tensor(s) ({n:,} "
            f"values), which the trainer does not optimise (it optimises the model's): put "
            f"learnable modules in the backbone, or freeze them (requires_grad_(False))"
        )
    if warn and any(True for _ in getattr(loss, "buffers", lambda: [])()):
        missing = [m for m in ("reset", "update") if not callable(getattr(loss, m, None))]
        # one of the two without the other: a memory with a misspelt method (a loss with
        # constant buffers, e.g. class weights, has neither: audit BT)
        if len(missing) == 1:
            logger.warning(
                "%s holds buffers (a memory?) but has no %s(): the trainer calls reset"
                "(context) at each epoch's start and update(outputs, targets) after each "
                "step only where a loss defines them (uvireid.losses.contract)",
                where,
                " or ".join(missing),
            )


def _fit_buffers(module: nn.Module, state: dict) -> None:
    """Give each buffer of ``module`` (a stage's losses) the shape its checkpoint holds: a
    loss's memories take the epoch's cluster count (``reset``), so a resumed run's fresh
    losses hold other sizes than the saved ones. The built-in memories do this in their
    ``_load_from_state_dict``; a plugin loss need not (audit BO, session 19). Parameters
    are not touched: a parameter of another shape is still a checkpoint that does not fit."""
    for name, buf in list(module.named_buffers()):
        saved = state.get(name)
        if isinstance(saved, torch.Tensor) and saved.shape != buf.shape:
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            owner._buffers[leaf] = torch.empty_like(saved, device=buf.device)


def _plain_info(value: Any) -> Any:
    """An associator's ``info`` value as metrics.jsonl keeps it: a plain scalar (numpy and
    torch scalars as Python ones), or a short list of them (OTLA's iterations and
    marginal errors per direction); None for anything else (arrays, objects), which is
    left out. numpy scalars were dropped (audit AY)."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        value = item()
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and len(value) <= 16:
        out = [_plain_info(v) for v in value]
        if all(isinstance(v, (bool, int, float, str)) for v in out):
            return out
    return None


def _applies(loss: nn.Module, outputs: StepOutputs) -> bool:
    """Whether ``loss`` takes part in this step: a loss that needs part features sits out
    an unpaired batch (no cross-modal link, so no parts)."""
    return bool(outputs.parts) or not getattr(loss, "needs_parts", False)


def _compiled(fn):
    """``torch.compile(fn)`` with every size symbolic, the loss modules' memories
    included (dynamo takes a module's buffers as fixed-size by default, and the memories
    change size every epoch): one compilation per stage, not one per epoch."""
    import torch._dynamo

    compiled = torch.compile(fn, dynamic=True)
    keys = ("force_nn_module_property_static_shapes", "force_parameter_static_shapes")
    dynamic = {k: False for k in keys if hasattr(torch._dynamo.config, k)}  # per torch version

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with torch._dynamo.config.patch(**dynamic):
            return compiled(*args, **kwargs)

    call.compiled = True
    return call


class Trainer:
    """Runs a resolved recipe's stages on a dataset (see the module docstring).

    Args:
        cfg: resolved recipe (:func:`uvireid.config.load_recipe`).
        dataset: a built dataset, or any object with ``train`` and ``test`` lists of
            :class:`~uvireid.types.ImageRecord`; optionally ``protocols`` (the names of the
            evaluation protocols it fits; without them ``evaluation.protocol: auto`` trains
            without evaluating) and ``meta()`` (a dict recorded in its features files).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        folder: the run folder (metrics, checkpoints, results); None writes nothing.
        progress: show progress bars.
    """

    def __init__(self, cfg: dict, dataset: Any, device: str, folder=None, *, progress=True):
        from uvireid.config import validate
        from uvireid.engine.runner import seed_everything

        # a resolved recipe comes back as it is; a hand-written dict is resolved (its
        # stages inherit the top-level parts, defaults filled) or refused with the key
        # (audit BF: a raw KeyError deep inside)
        cfg = validate(cfg)
        # the recipe's seed decides the starting weights, as in `uvireid run` (two Trainers
        # of one recipe in a notebook started from different weights: audit BF)
        seed_everything(cfg["seed"])
        self.cfg = cfg
        self.dataset = dataset
        self.device = device
        self.folder = folder
        self.progress = progress and D.is_main()
        self.stages = stages_of(cfg)
        from uvireid.engine.runner import protocol_for

        #: the evaluation protocol, None when the run does not evaluate
        self.protocol = protocol_for(dataset, cfg)
        self.total_epochs = sum(s.epochs for s in self.stages)
        tr = cfg["train"]
        self.tr = tr
        self.vis = [r for r in dataset.train if r.modality == VISIBLE]
        self.ir = [r for r in dataset.train if r.modality == INFRARED]
        if not self.vis or not self.ir:
            raise ConfigError(
                f"dataset '{cfg['data']['type']}' has {len(self.vis)} visible and "
                f"{len(self.ir)} infrared training images; training needs both"
            )
        self.cams_v = np.array([r.cam for r in self.vis], dtype=np.int64)
        self.cams_r = np.array([r.cam for r in self.ir], dtype=np.int64)
        #: the forward passes' precision: "bf16" where train.amp takes effect on this
        #: device, else "float32" (recorded in checkpoints and features files)
        self.precision = precision_of(device, bool(tr.get("amp")))
        #: torch's process-wide kernel settings before this trainer changed them, given
        #: back at the end of fit() as the thread count is (audit BF: a notebook stayed
        #: deterministic, with cuDNN's autotuning off, after the run)
        self._kernel_state = _kernel_state()
        self.model = TrainModel(BACKBONES.build(cfg["backbone"]))
        check_input_size(self.model.backbone, tr["height"], tr["width"])
        self.losses: dict[str, nn.ModuleList] = {}
        self._loss_fns: dict = {}  # stage name -> its (compiled) loss function
        for stage in self.stages:
            self.losses_of(stage)
        self._build_parts()
        self.model.to(device)
        on_cuda = torch.device(device).type == "cuda"
        cl = tr.get("channels_last")
        if on_cuda if cl is None else cl:
            self.model.to(memory_format=torch.channels_last)
        self._apply_kernel_settings()
        if not on_cuda and (tr.get("cuda_graphs") or tr.get("tf32")):
            logger.warning(
                "%s has no effect on %s (CUDA only); this run trains as without it",
                " and ".join(f"train.{k}=true" for k in ("cuda_graphs", "tf32") if tr.get(k)),
                device,
            )
        if not on_cuda and tr.get("amp") and _amp_device(device) is None:
            logger.warning(
                "train.amp=true has no effect on %s: bf16 autocast is used on CUDA and on "
                "CPUs with native bf16 (AVX512-BF16 or AMX), where this is not; this run "
                "trains and extracts in float32",
                device,
            )
        self.ddp_model: nn.Module = self.model
        if D.is_distributed():
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(device).index] if device.startswith("cuda") else None
            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=True
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, tr, on_cuda)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factors(self.stages, tr)
        )
        seed = int(cfg["seed"])
        self.rng = np.random.default_rng([seed, D.rank()])
        self.rank_streams: list[dict] | None = None  # every rank's, at the last epoch's end
        self.augment = Augmenter(
            pad=tr["pad"],
            erasing_p=tr["erasing_p"],
            jitter=tr["jitter"],
            hue=tr["hue"],
            ltg_official=bool(tr.get("ltg_official", False)),
            gray_p=tr["gray_p"],
            seed=seed * 1000 + D.rank(),
            cuda_graphs=bool(tr.get("cuda_graphs")),  # used on CUDA only
        )
        if any(st.start_from == "best" for st in self.stages) and (
            # under torchrun only rank 0 holds the folder (it reads best.pt and broadcasts
            # it): the other ranks have none by design (audit AG: PGM could not run on
            # more than one GPU)
            self.protocol is None or (folder is None and D.is_main())
        ):
            raise ConfigError(
                "a stage has start_from: best, but this run "
                + (
                    "does not evaluate (no test protocol)"
                    if self.protocol is None
                    else "has no run folder"
                )
                + ", so no checkpoints/best.pt is ever written; remove start_from"
            )
        self.epoch = 0  # next epoch to run
        self.labels: EpochLabels | None = None
        self.source = source_revision()  # the code's git commit, kept in checkpoints
        self.counts: dict[str, int] = {}
        self.images_v = self.images_r = None
        self.test_images: torch.Tensor | None = None  # decoded in load_data (rank 0)
        self.ok_v = self.ok_r = None
        self.last_eval: dict | None = None
        #: the evaluated epoch with the highest mAP (no re-ranker), for evaluation.keep_best
        self.best: dict | None = None
        #: stages that started from best.pt (chosen on the test set): said in every result
        self.started_from: list[dict] = []
        #: the record of the last epoch saved, kept in its checkpoint until logged
        self.pending: dict | None = None

    # -- parts ------------------------------------------------------------------------
    def _build_parts(self) -> None:
        """Build the FGSAL part module when some stage's loss asks for part features."""
        needs = [
            loss
            for s in self.stages
            for loss in self.losses[s.name]
            if getattr(loss, "needs_parts", False)
        ]
        if not needs:
            return
        from uvireid.models.parts import PartQuery

        num_parts = {int(loss.num_parts) for loss in needs}
        if len(num_parts) != 1:
            said = ", ".join(
                f"stage '{s.name}' losses.{i} ({spec['type']}): {loss.num_parts}"
                for s in self.stages
                for i, (spec, loss) in enumerate(zip(s.losses, self.losses[s.name]))
                if getattr(loss, "needs_parts", False)
            )
            raise ConfigError(
                f"the part losses share one part module, so their num_parts must agree; "
                f"they are {said}"
            )
        parts = num_parts.pop()
        channels = self._check_part_map(parts)
        self.model.parts = PartQuery(channels, parts)

    def _check_part_map(self, num_parts: int) -> int:
        """:func:`check_part_map` of this trainer's backbone at the training size (the
        map's channel count)."""
        return check_part_map(
            self.model.backbone,
            self.tr["height"],
            self.tr["width"],
            num_parts,
            self.cfg["backbone"]["type"],
        )

    def stage_at(self, epoch: int) -> Stage:
        for s in self.stages:
            if s.first_epoch <= epoch <= s.last_epoch:
                return s
        raise IndexError(epoch)

    def losses_of(self, stage: Stage) -> nn.ModuleList:
        if stage.name not in self.losses:
            mods = []
            for i, item in enumerate(stage.losses):
                kwargs = {k: v for k, v in item.items() if k != "weight"}
                loss = LOSSES.build(kwargs)
                check_loss_module(loss, f"stage '{stage.name}': losses.{i} ({item['type']})")
                mods.append(loss)
            self.losses[stage.name] = nn.ModuleList(mods).to(self.device)
        return self.losses[stage.name]

    # -- data -------------------------------------------------------------------------
    def load_data(self) -> None:
        """Decode the training images once (uint8, at the training size)."""
        if self.images_v is not None:
            return
        t0 = time.perf_counter()
        h, w, cache = self.tr["height"], self.tr["width"], image_cache_dir(self.tr)

        def decode() -> None:
            resize = self.tr.get("resize", "bilinear")
            self.images_v, self.ok_v = load_images(self.vis, h, w, cache_dir=cache, resize=resize)
            self.images_r, self.ok_r = load_images(self.ir, h, w, cache_dir=cache, resize=resize)

        if D.is_distributed() and cache is not None:
            # rank 0 decodes into the cache first; the other ranks then map it (its pages
            # shared), instead of each decoding (and holding) the whole training set
            D.agree(lambda: decode() if D.is_main() else None)
        if self.images_v is None:
            decode()
        if D.is_main() and self.protocol is not None:
            # every test image must be readable: found now, not after training
            self.test_images = load_test_images(self.dataset.test, self.tr)
        where = self._place_images()
        bad_v, bad_r = int((~self.ok_v).sum()), int((~self.ok_r).sum())
        logger.info(
            "training images: %d visible, %d infrared at %dx%d, on %s (%.1f s)%s",
            len(self.vis) - bad_v,
            len(self.ir) - bad_r,
            h,
            w,
            where,
            time.perf_counter() - t0,
            f"; {bad_v} visible and {bad_r} infrared unreadable, left out" if bad_v + bad_r else "",
        )

    def unreadable_training_images(self) -> dict | None:
        """``{"count", "visible", "infrared", "first"}`` of the training images that could
        not be read and are left out of training (None when every one was read)."""
        ok_v, ok_r = getattr(self, "ok_v", None), getattr(self, "ok_r", None)
        if ok_v is None or ok_r is None or (ok_v.all() and ok_r.all()):
            return None
        bad = [r.path for r, ok in zip(self.vis, ok_v) if not ok]
        bad += [r.path for r, ok in zip(self.ir, ok_r) if not ok]
        return {
            "count": len(bad),
            "visible": int((~ok_v).sum()),
            "infrared": int((~ok_r).sum()),
            "first": bad[:10],
        }

    def _place_images(self) -> str:
        """Move the uint8 training images to the training GPU when ``train.images_on_device``
        says so (null: when they take at most a quarter of its free memory; SYSU-MM01 at
        288x144 is 4.2 GB), so a batch is gathered there instead of on the host and
        copied; returns where they are."""
        dev = torch.device(self.device)
        flag = self.tr.get("images_on_device")
        if dev.type != "cuda" or flag is False:
            return "the host"
        need = self.images_v.nbytes + self.images_r.nbytes
        if flag is None:
            free, _ = torch.cuda.mem_get_info(dev)
            if need > free // 4:
                logger.info(
                    "training images (%.1f GB) kept on the host: more than a quarter of "
                    "the GPU's free %.1f GB (train.images_on_device=true forces them)",
                    need / 1e9,
                    free / 1e9,
                )
                return "the host"
        self.images_v = self.images_v.to(dev)
        self.images_r = self.images_r.to(dev)
        return str(dev)

    # -- one epoch's pseudo-labels ----------------------------------------------------
    def _extract_train(self, with_parts: bool):
        part_module = self.model.parts if with_parts else None
        amp, bs = self.tr["amp"], self.tr["extract_batch"]
        flip = bool(self.tr.get("cluster_flip"))  # PGM: mean of normalised halves, as is
        kw = dict(batch=bs, amp=amp, part_module=part_module, flip=flip, renormalize=not flip)
        wv: list = []
        wr: list = []
        fv, mv = extract_images(
            self.model.backbone,
            self.images_v,
            np.zeros(len(self.vis)),
            self.device,
            part_weights=wv,
            **kw,
        )
        fr, mr = extract_images(
            self.model.backbone,
            self.images_r,
            np.ones(len(self.ir)),
            self.device,
            part_weights=wr,
            **kw,
        )
        # parts with each image's part shares of its joint [parts ‖ global] norm
        pv = None if mv is None else (mv, torch.cat(wv) if wv else None)
        pr = None if mr is None else (mr, torch.cat(wr) if wr else None)
        return fv, fr, pv, pr

    def _refine(self, fv: torch.Tensor, fr: torch.Tensor, seconds: dict) -> tuple:
        """The recipe's ``refine:`` part (DESIGN.md's loop: extract -> refine -> cluster):
        the features the pseudo-labels are made from, propagated across the modalities
        (``propagate(visible, infrared)``, e.g. CMFP(tr)) over the readable images. The
        memories are still initialised from the model's own features, the space its
        outputs are compared in. Without ``refine:``, the features as extracted."""
        spec = self.cfg.get("refine")
        iv, ir = np.flatnonzero(self.ok_v), np.flatnonzero(self.ok_r)
        if not spec or not len(iv) or not len(ir):
            return fv, fr
        t0 = time.perf_counter()
        part = RERANKERS.build(spec)
        qv, qr = part.propagate(fv[iv].to(self.device), fr[ir].to(self.device))
        gv, gr = fv.clone(), fr.clone()
        gv[torch.from_numpy(iv)] = torch.as_tensor(qv).to(gv.device, gv.dtype)
        gr[torch.from_numpy(ir)] = torch.as_tensor(qr).to(gr.device, gr.dtype)
        seconds["refine"] = time.perf_counter() - t0
        return gv, gr

    def _cluster(self, stage: Stage, feats: torch.Tensor, ok: np.ndarray) -> np.ndarray:
        """Labels of one modality; the clusterer runs on the training device (its kNN and
        Jaccard on a GPU when training on one: SYSU's 22,258 visible features take 0.3 s on
        an H100 against about 20 s on 16 host cores)."""
        labels = np.full(len(feats), -1, dtype=np.int64)
        idx = np.flatnonzero(ok)
        if len(idx):
            clusterer = CLUSTERERS.build(stage.clusterer)
            x = feats[torch.from_numpy(idx)].to(self.device)
            found = np.asarray(clusterer.fit_predict(x))
            who = f"clusterer '{stage.clusterer['type']}'"
            if found.shape != (len(idx),) or not np.issubdtype(found.dtype, np.integer):
                raise TrainingError(
                    f"{who} returned labels of shape {found.shape} and dtype {found.dtype} "
                    f"for {len(idx)} features; fit_predict must return one integer per row"
                )
            if len(found) and found.min() < -1:
                raise TrainingError(
                    f"{who} returned label {found.min()}; labels are 0..K-1, and -1 marks an "
                    f"outlier (map the library's other noise codes to -1)"
                )
            kept = found >= 0
            if kept.any():
                # the memories are sized largest id + 1 and the counts are the distinct
                # ids: ids with gaps (a plugin's {0, 5}, or sparse ones that asked for
                # terabytes, audit H) are renumbered 0..K-1, the partition kept (audit JA)
                ids, dense = np.unique(found[kept], return_inverse=True)
                if int(ids[-1]) != len(ids) - 1:
                    found = found.astype(np.int64)
                    found[kept] = dense
            labels[idx] = found
        return labels

    def pseudo_labels(self, stage: Stage, fv, fr, seconds: dict) -> EpochLabels:
        """Cluster each modality, then associate (rank 0; broadcast under DDP)."""
        t0 = time.perf_counter()
        lv = self._cluster(stage, fv, self.ok_v)
        lr = self._cluster(stage, fr, self.ok_r)
        seconds["cluster"] = time.perf_counter() - t0
        kv = int(lv.max()) + 1 if (lv >= 0).any() else 0
        kr = int(lr.max()) + 1 if (lr >= 0).any() else 0
        none_v, none_r = np.full(len(lv), -1), np.full(len(lr), -1)
        if stage.associator is None:
            return EpochLabels(
                vis_in_v=lv,
                vis_in_r=none_v,
                ir_in_r=lr,
                ir_in_v=none_r,
                init_v=lv,
                init_r=lr,
                num_v=kv,
                num_r=kr,
                has_cross=False,
            )
        t0 = time.perf_counter()
        assoc = ASSOCIATORS.build(stage.associator)
        cl = assoc.associate(fv.to(self.device), lv, fr.to(self.device), lr)
        seconds["associate"] = time.perf_counter() - t0
        nv = len(lv)
        cl = _check_cross_labels(cl, nv, len(lr), kv, kr, stage.associator["type"])
        info = {k: p for k, v in cl.info.items() if (p := _plain_info(v)) is not None}
        return EpochLabels(
            vis_in_v=cl.labels_in_v[:nv],
            vis_in_r=cl.labels_in_r[:nv],
            ir_in_r=cl.labels_in_r[nv:],
            ir_in_v=cl.labels_in_v[nv:],
            init_v=lv,
            init_r=lr,
            num_v=max(int(cl.num_clusters_v), kv),
            num_r=max(int(cl.num_clusters_r), kr),
            has_cross=bool(cl.has_cross_links),
            info={**info, "matches": int(len(cl.matches))},
            matches=cl.matches,  # (M, 2) int64 from _check_cross_labels
        )

    def _quality(self, lab: EpochLabels) -> dict | None:
        """Pseudo-label quality against the ground truth (when the dataset has it), over
        the readable images: the unreadable ones were never clustered, and counted as
        the clusterer's outliers they lowered its scores (audit JA)."""
        okv = self.ok_v if self.ok_v is not None else np.ones(len(self.vis), bool)
        okr = self.ok_r if self.ok_r is not None else np.ones(len(self.ir), bool)
        gv = np.array([r.pid for r in self.vis])[okv]
        gr = np.array([r.pid for r in self.ir])[okr]
        if (gv < 0).any() or (gr < 0).any():
            return None
        from uvireid.evaluation.quality import label_quality

        keys = ("ari", "fmi", "ami", "v_measure", "num_clusters", "outlier_fraction")

        def q(pred, gt):
            res = label_quality(pred, gt)
            return {k: res[k] for k in keys}

        out = {"visible": q(lab.vis_in_v[okv], gv), "infrared": q(lab.ir_in_r[okr], gr)}
        if lab.has_cross:
            gt = np.concatenate([gv, gr])
            in_v = np.concatenate([lab.vis_in_v[okv], lab.ir_in_v[okr]])
            in_r = np.concatenate([lab.vis_in_r[okv], lab.ir_in_r[okr]])
            out["cross_v"] = q(in_v, gt)
            out["cross_r"] = q(in_r, gt)
            # ARI mixes the clusters' quality with the links'; the links alone: the
            # fraction of cross-modal instance pairs the labels join that are one person
            cross = CrossLabels(
                in_v,
                in_r,
                np.zeros((0, 2), dtype=np.int64),
                num_visible=len(gv),
                num_clusters_v=lab.num_v,
                num_clusters_r=lab.num_r,
            )
            links = link_precision(cross, gt)
            out["cross_v"]["link_precision"] = links["link_precision_r2v"]
            out["cross_r"]["link_precision"] = links["link_precision_v2r"]
            out["links"] = {"link_precision": links["link_precision"]}
        return out

    def _check_counts(self, lab: EpochLabels, warnings: list[str]) -> dict:
        counts = {}
        for name, y in (("visible", lab.init_v), ("infrared", lab.init_r)):
            k = len(np.unique(y[y >= 0]))
            counts[name] = k
            prev = self.counts.get(name)
            if k <= 1 and prev is not None and prev <= 1:
                # "still" only for the same count (1 -> 0 was called "still 0", audit JA)
                was = "still " if k == prev else ""
                since = "as the epoch before" if k == prev else f"from {prev} the epoch before"
                msg = (
                    f"{name}: {was}{k} cluster(s), {since}; the features do not separate "
                    f"the images (check the clusterer's eps, the learning rate)"
                )
            elif k <= 1 or (prev and k < self.tr["collapse_ratio"] * prev):
                msg = (
                    f"{name} cluster count collapsed to {k}"
                    + (f" from {prev} the epoch before" if prev else "")
                    + "; check the clusterer's eps, the learning rate, or the features"
                )
            else:
                msg = None
            if msg:
                logger.warning(msg)
                warnings.append(msg)
        self.counts = counts
        return counts

    # -- training ---------------------------------------------------------------------
    def _targets(self, lab: EpochLabels, iv: np.ndarray, ir: np.ndarray, paired: bool, labels=None):
        # built on the host and copied to the device in one transfer; the host copy goes
        # along (``StepTargets.host``) for the memory updates, which then never wait.
        # ``labels``: the batch rows' labels where the sampler decides them
        if labels is None:
            labels = (lab.vis_in_v[iv], lab.vis_in_r[iv], lab.ir_in_r[ir], lab.ir_in_v[ir])
        cols = [*labels, iv, ir]
        sizes = [len(c) for c in cols]
        flat = torch.from_numpy(np.concatenate(cols).astype(np.int64))
        host = StepTargets(*flat.split(sizes), paired=paired)
        if torch.device(self.device).type == "cpu":
            return host
        dev = to_device(flat, self.device).split(sizes)
        return StepTargets(*dev, paired=paired, host=host)

    def _sampler(self, stage: Stage, lab: EpochLabels, warnings: list[str]):
        """The epoch's sampler (``stage.sampler`` in :data:`~uvireid.registry.SAMPLERS`)
        and whether its batches are paired; a pairing sampler on an epoch without cross
        links draws each modality on its own labels instead, and says so."""
        spec = SAMPLERS.build(stage.sampler)
        cams = (self.cams_v, self.cams_r)
        if getattr(spec, "pairs", False):  # a plugin's may not say
            if lab.has_cross:
                try:
                    return spec.for_epoch(lab, cams), True
                except ConfigError as exc:
                    logger.warning("stage '%s': %s", stage.name, exc)
                    warnings.append(f"stage '{stage.name}': {exc}")
            why = (
                "the pairing sampler refused this epoch's links (above)"
                if lab.has_cross  # audit NF: said "no cross-modal link" though there were
                else "no cross-modal link this epoch"
            )
            msg = (
                f"stage '{stage.name}': {why}; sampling each modality on its own labels and "
                "skipping the cross-modal terms"
            )
            logger.warning(msg)
            warnings.append(msg)
            return spec.unpaired(lab, cams), False
        return spec.for_epoch(lab, cams), False

    def step(self, stage: Stage, losses: nn.ModuleList, lab: EpochLabels, batch, paired: bool):
        """One optimiser step; returns ``(names, values)``: the loss terms' names ("total"
        first) and their values as one (T,) tensor on the device, not read back (the
        epoch loop reads a window of steps at once: :data:`READ_EVERY`)."""
        iv, ir = batch.idx_v, batch.idx_r
        xv = self.images_v[to_device(torch.as_tensor(iv, dtype=torch.long), self.images_v.device)]
        xr = self.images_r[to_device(torch.as_tensor(ir, dtype=torch.long), self.images_r.device)]
        self.augment.ltg_p = stage.ltg_p
        self.augment.jitter_views = stage.jitter_views
        x = torch.cat(
            [
                self.augment(xv, "visible", self.device),
                self.augment(xv, "visible_ca", self.device),
                self.augment(xr, "infrared", self.device),
            ]
        )
        sv, sr = len(iv), len(ir)
        mod = torch.cat([torch.zeros(2 * sv, dtype=torch.long), torch.ones(sr, dtype=torch.long)])
        targets = self._targets(lab, iv, ir, paired, getattr(batch, "labels", None))
        want_parts = paired and any(getattr(loss, "needs_parts", False) for loss in losses)
        with tf32_products(self.tr.get("tf32", False)):
            with _autocast(self.device, self.tr["amp"]):
                # the modality stays on the host: the backbone splits the batch there
                out, parts = self.ddp_model(x, mod, sv if want_parts else None)
            # the losses in float32 outside autocast (under it their products with the
            # memories, logits of cosines / 0.05, would be bf16: ~0.08 off at a logit of 20)
            feat = out.bn_feat.float()
            parts = {key: p.float() for key, p in parts.items()}
            outputs = StepOutputs(feat[:sv], feat[sv : 2 * sv], feat[2 * sv :], parts)
            if any(getattr(loss, "needs_pool", False) for loss in losses):
                pool = out.global_feat.float()
                outputs.pool_v, outputs.pool_a = pool[:sv], pool[sv : 2 * sv]
                outputs.pool_r = pool[2 * sv :]
            total, terms = self._loss_terms(stage, losses)(outputs, targets)
            used = [loss for loss in losses if _applies(loss, outputs)]
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
        detached = outputs.detach()
        for loss in used:
            if hasattr(loss, "update"):
                loss.update(detached, targets)
        read = torch.stack([total.detach().float(), *(v.detach().float() for v in terms.values())])
        return ("total", *terms), read

    def _loss_terms(self, stage: Stage, losses: nn.ModuleList):
        """The stage's loss function ``(outputs, targets) -> (total, {name: term})``:
        the weighted sum of its losses (those that need part features left out of an
        unpaired batch), compiled with ``torch.compile`` under ``train.compile_losses``
        or replayed as CUDA graphs under ``train.cuda_graphs``
        (made once per stage; torch recompiles when a memory's size changes)."""
        fn = self._loss_fns.get(stage.name)
        if fn is not None:
            return fn
        items = [
            (name, float(item.get("weight", 1.0)), loss)
            for name, item, loss in zip(term_names(stage.losses), stage.losses, losses)
        ]

        def terms_of(outputs: StepOutputs, targets: StepTargets):
            terms = {}
            total = outputs.feat_v.sum() * 0.0
            for name, weight, loss in items:
                if not _applies(loss, outputs):
                    continue
                value = loss(outputs, targets)
                if not (isinstance(value, torch.Tensor) and value.dim() == 0):
                    what = (
                        f"a tensor of shape {tuple(value.shape)}"
                        if isinstance(value, torch.Tensor)
                        else type(value).__name__
                    )
                    raise TrainingError(
                        f"stage '{stage.name}': loss {name} returned {what}; a loss's "
                        f"forward(outputs, targets) must return a scalar tensor (0-dim, "
                        f"connected to outputs for its gradient)"
                    )
                terms[name] = value
                total = total + weight * value
            return total, terms

        if self.tr.get("compile_losses"):
            fn = _compiled(terms_of)
        elif self.tr.get("cuda_graphs") and torch.device(self.device).type == "cuda":
            fn = GraphedLosses(terms_of)
        else:
            fn = terms_of
        self._loss_fns[stage.name] = fn
        return fn

    def _read_losses(self, pending: list, sums: dict[str, float], first_step: int) -> dict:
        """Read a window of steps' loss values back in one transfer (on a GPU the host
        waits here only, every :data:`READ_EVERY` steps, so it can queue the next step
        while the device finishes this one); add them to ``sums``; return the last step's.

        Raises:
            TrainingError: a non-finite loss, naming its step. Checkpoints are written at
                the end of an epoch, after its last window is read, so nothing of that
                epoch is saved: the last good checkpoint is kept (the error says whether
                there is one).
        """
        values: dict[str, float] = {}
        rows = torch.stack([r for _, r in pending]).tolist() if pending else []
        for i, ((names, _), row) in enumerate(zip(pending, rows)):
            values = dict(zip(names, row))
            if not math.isfinite(values["total"]):
                parts = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "total")
                raise TrainingError(
                    f"epoch {self.epoch}, step {first_step + i}: the loss is "
                    f"{values['total']} ({parts}); training stopped, and "
                    f"{self._kept_checkpoint()}. Lower train.lr, or check the data and the "
                    f"pseudo-labels"
                )
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
        return values

    @property
    def _held_out(self) -> str:
        """The ids the evaluations test on, as a best epoch's choice names them."""
        dataset = getattr(self, "dataset", None)
        return "validation ids" if getattr(dataset, "validation", False) else "test set"

    def _kept_checkpoint(self) -> str:
        """What a run stopped by a diverged epoch keeps, for its error: the last good
        checkpoint where one was written (no epoch finished: none, and said so)."""
        if not D.is_main():
            return "rank 0 keeps the last good checkpoint, if an epoch finished"
        if self.folder is None:
            return "nothing is saved (no run folder: a Trainer without one writes no checkpoint)"
        ckpt = self.folder.checkpoints / LATEST
        if ckpt.exists():
            return f"the last good checkpoint is kept ({ckpt}: --resume continues from it)"
        return (
            "no checkpoint was written (no epoch finished), so there is nothing to resume: "
            "start the run again"
        )

    def train_epoch(self, epoch: int) -> dict:
        """One epoch (extract, cluster, associate, reset, train); returns its metrics."""
        self.load_data()  # decoded once (fit() does it first; a caller may not)
        stage = self.stage_at(epoch)
        losses = self.losses_of(stage)
        record: dict[str, Any] = {
            "epoch": epoch,
            "stage": stage.name,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if stage.start_from == "best" and epoch == stage.first_epoch and epoch > 0:
            record["started_from"] = self._load_best(stage)
            self.started_from.append(
                {"stage": stage.name, **record["started_from"], "selected_on": self._held_out}
            )
        if stage.reset_optimizer and epoch == stage.first_epoch and epoch > 0:
            # a new optimiser for the stage: moments and step counts start again (the learning
            # rate is the scheduler's, as set for this epoch)
            self.optimizer.state.clear()
            record["optimizer_reset"] = True
            logger.info("stage '%s' starts with a new optimiser state", stage.name)
        seconds: dict[str, float] = {}
        warnings: list[str] = []
        with_parts = self.model.parts is not None and any(
            getattr(loss, "needs_parts", False) for loss in losses
        )
        t0 = time.perf_counter()

        def labels_on_rank0():
            fv, fr, pv, pr = self._extract_train(with_parts)
            seconds["extract"] = time.perf_counter() - t0
            gv, gr = self._refine(fv, fr, seconds)
            lab = self.pseudo_labels(stage, gv, gr, seconds)
            # the (n, n) buffers CMFP(tr) borrowed have this epoch's clustered count, which
            # never recurs: not kept through the epoch (audit Z: up to 512 MiB)
            workspace.release()
            return fv, fr, pv, pr, lab

        # under DDP rank 0 clusters and associates, the others receive the result (or
        # stop with rank 0's reason if it fails)
        fv, fr, pv, pr, lab = D.from_main(labels_on_rank0)
        self.labels = lab
        record["clusters"] = self._check_counts(lab, warnings)
        # the clusterer's outliers: the unreadable images are counted on their own
        record["clusters"]["outliers_visible"] = int(((lab.init_v < 0) & self.ok_v).sum())
        record["clusters"]["outliers_infrared"] = int(((lab.init_r < 0) & self.ok_r).sum())
        record["unreadable_images"] = int((~self.ok_v).sum() + (~self.ok_r).sum())
        if stage.associator is not None:
            record["association"] = lab.info
            if not lab.has_cross:
                warnings.append(f"no cross-modal link in epoch {epoch}: cross terms skipped")
        quality = self._quality(lab) if D.is_main() else None
        if quality is not None:
            record["label_quality"] = quality
        if lab.num_v == 0 and lab.num_r == 0:
            raise TrainingError(
                f"epoch {epoch}: the clusterer found no cluster in either modality; nothing "
                f"to train on. Raise the clusterer's eps or lower min_samples"
            )
        ctx = EpochContext.of(
            lab,
            feats_v=fv.to(self.device),
            feats_r=fr.to(self.device),
            epoch=epoch - stage.first_epoch,
            parts_v=None if pv is None else pv[0].to(self.device),
            parts_r=None if pr is None else pr[0].to(self.device),
            part_weights_v=None if pv is None or pv[1] is None else pv[1].to(self.device),
            part_weights_r=None if pr is None or pr[1] is None else pr[1].to(self.device),
            cams_v=self.cams_v,
            cams_r=self.cams_r,
        )
        for loss in losses:
            if hasattr(loss, "reset"):
                loss.reset(ctx)
        fn = self._loss_fns.get(stage.name)
        if isinstance(fn, GraphedLosses):  # the memories are new tensors: capture again
            fn.invalidate()
        sampler, paired = self._sampler(stage, lab, warnings)
        t0 = time.perf_counter()
        self.model.train()
        sums: dict[str, float] = {}
        it = range(stage.iters)
        if self.progress:
            from tqdm import tqdm

            it = tqdm(
                it, desc=f"epoch {epoch} ({stage.name})", leave=False, unit="it", disable=None
            )  # none where stderr is not a terminal (see extract_features)
        n_images = 0
        pending: list = []
        for i in it:
            batch = sampler.sample(self.rng)
            pending.append(self.step(stage, losses, lab, batch, paired))
            n_images += 2 * len(batch.idx_v) + len(batch.idx_r)
            if len(pending) == READ_EVERY or i == stage.iters - 1:
                values = self._read_losses(pending, sums, i + 1 - len(pending))
                pending = []
                if self.progress:
                    it.set_postfix(loss=f"{values['total']:.3f}")
        seconds["train"] = time.perf_counter() - t0
        bad = nonfinite_state(self.model)
        if bad:
            raise TrainingError(
                f"epoch {epoch}: {len(bad)} weight tensor(s) hold NaN or inf after training "
                f"(e.g. {', '.join(bad[:3])}) although every loss was finite; training "
                f"stopped, and {self._kept_checkpoint()}. Lower train.lr, or check the "
                f"data and the pseudo-labels"
            )
        D.broadcast_buffers(self.model)
        if D.is_distributed():  # every rank's own random streams, for the checkpoint
            self.rank_streams = D.all_gather_object(self._streams())
        self.scheduler.step()
        record["loss"] = {k: D.all_reduce_mean(v / max(1, stage.iters)) for k, v in sums.items()}
        record["paired"] = paired
        # the run's rate: every rank trains as many images as this one (audit W: rank 0's
        # alone was logged, so N GPUs read as one)
        record["images_per_s"] = n_images * D.world_size() / max(seconds["train"], 1e-9)
        record["memory"] = peak_memory(self.device)
        record["seconds"] = seconds
        if warnings:
            record["warnings"] = warnings
        logger.info(
            "epoch %d (%s): loss %.4f, clusters %d visible / %d infrared%s, %.0f s",
            epoch,
            stage.name,
            record["loss"].get("total", math.nan),
            record["clusters"]["visible"],
            record["clusters"]["infrared"],
            (
                f", ARI {quality['visible']['ari']:.3f} / {quality['infrared']['ari']:.3f}"
                + (
                    f", cross-modal link precision {quality['links']['link_precision']:.3f}"
                    if "links" in quality
                    else ""
                )
                if quality
                else ""
            ),
            sum(seconds.values()),
        )
        return record

    # -- evaluation -------------------------------------------------------------------
    def evaluate(self, tag: str) -> dict:
        """Extract the test set (flip-averaged unless ``evaluation.flip`` is false), run
        the protocol (± re-ranker)."""
        from uvireid.engine.runner import evaluate

        t0 = time.perf_counter()
        bank = extract_test_bank(
            self.model.backbone,
            self.dataset.test,
            self.tr,
            self.device,
            self.test_images,
            head=self.cfg["evaluation"]["feature_head"],
            flip=self.cfg["evaluation"]["flip"],
        )
        out = evaluate(
            self.model.backbone,
            self.dataset,
            self.cfg,
            self.device,
            self.folder,
            progress=False,
            bank=bank,
            meta={
                "epoch": self.epoch - 1,  # the last trained epoch (-1: untrained)
                "stage": self.stage_at(self.epoch - 1).name if self.epoch else "untrained",
                "final": self.epoch == self.total_epochs,
                "total_epochs": self.total_epochs,
                "precision": self.precision,
                # a model that descends from a checkpoint chosen on the test set says so
                **({"started_from": self.started_from} if self.started_from else {}),
            },
        )
        out["seconds"]["extract"] = (
            time.perf_counter() - t0 - sum(v for k, v in out["seconds"].items() if k != "extract")
        )
        tables = {name: res.to_dict() for name, res in out["results"].items()}
        for name, res in out["results"].items():
            logger.info("%s evaluation (%s):\n%s", tag, name, res.table())
        self.last_eval = tables
        return {"tables": tables, "seconds": out["seconds"], "results": out["results"]}

    @staticmethod
    def summary(tables: dict) -> dict:
        """``{reranker: {"mean", "std", "provenance"}}`` of evaluation tables: the metrics'
        means and stds over trials, and the protocol that produced them (the rows of
        metrics.jsonl held bare means: a killed run's report could not say its protocol,
        and a resume may change the evaluation settings). Per-trial rows and the CMC are
        in results.json."""
        return {
            name: {"mean": dict(t["mean"]), "std": dict(t["std"]), "provenance": t["provenance"]}
            for name, t in tables.items()
        }

    # -- checkpoints ------------------------------------------------------------------
    def _streams(self) -> dict:
        """This process's random streams: the global generators, the sampler's and the
        augmentations'."""
        return {
            **rng_state(),
            "sampler": self.rng.bit_generator.state,
            "augment": self.augment.state_dict(),
        }

    def state_dict(self) -> dict:
        lab = self.labels
        rng = self._streams()
        if self.rank_streams is not None:
            # under DDP each rank draws its own batches and augmentations: all of them are
            # kept (rank 0 saves), so a resume gives each rank back its own (with rank 0's
            # alone, every rank drew rank 0's batches after a resume: audit W)
            rng.update(per_rank=self.rank_streams, world_size=len(self.rank_streams))
        return {
            "epoch": self.epoch,
            "stage": self.stage_at(self.epoch - 1).name if self.epoch else None,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "losses": {name: m.state_dict() for name, m in self.losses.items()},
            "rng": rng,
            "labels": None if lab is None else lab.__dict__,
            "counts": self.counts,
            "seed": self.cfg["seed"],
            "dataset": _fingerprint(self.dataset),
            "recipe": self.cfg.get("name"),
            "source": self.source,
            "best": self.best,
            "started_from": self.started_from,
            "pending_record": self.pending,
            # torch's CPU kernels (a convolution's backward) sum in another order with
            # another thread count: a resume compares (audit AQ)
            "cpu_threads": torch.get_num_threads(),
            # what train.amp came to on this device (bf16 only where it is native)
            "precision": self.precision,
        }

    def save(self, best: bool = False) -> None:
        """``checkpoints/latest.pt``; with ``best``, the same file as ``best.pt`` too."""
        if self.folder is not None and D.is_main():
            state = self.state_dict()
            # a Ctrl-C or SIGTERM now is delivered once the file is complete: the epoch
            # just trained is kept (audit AV: cut, torch.save lost it)
            with signals_deferred():
                save_checkpoint(self.folder.checkpoints, state)
                if best:
                    keep_as_best(self.folder.checkpoints)

    def _improves_best(self, epoch: int, tables: dict) -> bool:
        """Whether this evaluation's mAP (no re-ranker) beats the best so far (then it
        becomes the best: ``evaluation.keep_best``)."""
        if not self.cfg["evaluation"].get("keep_best"):
            return False
        value = float(tables["none"]["mean"]["mAP"])
        if self.best is not None and not value > self.best["mAP"]:
            return False
        self.best = {"epoch": epoch, "mAP": value, "selected_on": self._held_out}
        return True

    def _load_best(self, stage: Stage) -> dict:
        """The model of ``checkpoints/best.pt`` (rank 0 reads it, every rank loads it), for
        a stage with ``start_from: best``; returns which epoch that was."""
        payload = None
        if D.is_main():
            path = None if self.folder is None else self.folder.checkpoints / BEST
            if path is None or not path.is_file():
                payload = f"stage '{stage.name}' starts from checkpoints/best.pt (start_from: "
                payload += "best), but no evaluated epoch before it kept one: evaluate during "
                payload += "the earlier stages (evaluation.every >= 1) with evaluation.keep_best"
            else:
                state = load_checkpoint(path)
                best = state.get("best") or {}
                info = {"checkpoint": "best.pt", "epoch": best.get("epoch"), "mAP": best.get("mAP")}
                # where the epoch was chosen, as its record says (older ones: this run's ids)
                payload = (state["model"], info, str(best.get("selected_on") or self._held_out))
        payload = D.broadcast_object(payload)  # every rank raises, not rank 0 alone
        if isinstance(payload, str):
            raise TrainingError(payload)
        weights, info, where = payload
        load_state_strict(self.model, weights, f"checkpoints/best.pt (stage '{stage.name}')")
        logger.warning(
            "stage '%s' starts from checkpoints/best.pt: epoch %s, mAP %s, chosen %s "
            "(start_from: best, as PGM's stage 2 does)",
            stage.name,
            info["epoch"],
            info["mAP"],
            # a validation run's best is chosen on its validation ids (audit NF)
            "ON THE TEST SET" if where == "test set" else f"on the {where}",
        )
        return info

    def _restore_streams(self, rng: dict) -> None:
        """This rank's random streams from a checkpoint: its own under DDP (``per_rank``),
        the single process's otherwise. A rank the checkpoint holds no streams for (a
        checkpoint of a smaller world, or of a version that kept rank 0's alone) keeps the
        streams it was seeded with, so no two ranks draw the same batches."""
        per_rank = rng.get("per_rank")
        rank, world = D.rank(), D.world_size()
        if per_rank is not None and rank < len(per_rank):
            mine = per_rank[rank]
        elif rank == 0:
            mine = rng
        else:
            mine = None
        if per_rank is None and world > 1 and rank == 0:
            logger.warning(
                "resume: the checkpoint holds one process's random streams; rank 0 continues "
                "them, the other ranks start from their seeds (the run does not repeat the "
                "uninterrupted one)"
            )
        if mine is None:
            return
        set_rng_state(mine)
        self.rng.bit_generator.state = mine["sampler"]
        self.augment.load_state_dict(mine["augment"])

    def restore(self, path) -> None:
        """Continue from a checkpoint (see :mod:`uvireid.engine.checkpoint`)."""
        state = load_checkpoint(path)
        if state.get("seed") != self.cfg["seed"]:
            logger.warning(
                "resume: the checkpoint was trained with seed %s, this recipe has seed %s; "
                "the run will not repeat the uninterrupted one",
                state.get("seed"),
                self.cfg["seed"],
            )
        fp = _fingerprint(self.dataset)
        if state.get("dataset") != fp:
            logger.warning(
                "resume: the dataset differs from the checkpoint's (%s vs %s); the "
                "pseudo-labels and the memories will be rebuilt on other data",
                (state.get("dataset") or {}).get("sha1"),
                (fp or {}).get("sha1"),
            )
        # the count this run will train with (fit() applies train.threads after restore)
        threads, now = state.get("cpu_threads"), self.tr["threads"] or torch.get_num_threads()
        if threads is not None and threads != now and torch.device(self.device).type == "cpu":
            logger.warning(
                "resume: the run trained on %d CPU thread(s), this process has %d "
                "(train.threads / OMP_NUM_THREADS); torch's CPU kernels sum in another "
                "order with another thread count, so the run will not repeat the "
                "uninterrupted one bit for bit (resume with train.threads=%d to repeat it)",
                threads,
                now,
                threads,
            )
        old_precision = state.get("precision")
        if old_precision is not None and old_precision != self.precision:
            # train.amp may be unchanged while the device decides otherwise (a bf16 run
            # resumed on a CPU without native bf16 trains on in float32; audit BH)
            logger.warning(
                "resume: the run trained in %s, it continues in %s on %s; the epochs after "
                "the checkpoint are not computed as the earlier ones",
                old_precision,
                self.precision,
                self.device,
            )
        old_src, src = state.get("source"), self.source
        if old_src and src and old_src != src:
            logger.warning(
                "resume: the checkpoint was written by uvireid at commit %s%s, this is %s%s; "
                "changed code can change the results (even a different summation order "
                "does), so the run may not repeat the uninterrupted one",
                old_src["commit"][:12],
                " with uncommitted changes" if old_src.get("dirty") else "",
                src["commit"][:12],
                " with uncommitted changes" if src.get("dirty") else "",
            )
        load_state_strict(self.model, state["model"], f"checkpoint {path}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for s in self.stages:
            # a stage that has not started holds nothing trained (its memories are filled
            # at its first epoch): skipped, so --allow-changes may change its losses
            if s.name in state["losses"] and s.first_epoch < int(state["epoch"]):
                losses = self.losses_of(s)
                _fit_buffers(losses, state["losses"][s.name])
                load_state_strict(
                    losses,
                    state["losses"][s.name],
                    f"checkpoint {path} (losses of stage '{s.name}')",
                )
        self._restore_streams(state["rng"])
        self.epoch = int(state["epoch"])
        self.counts = dict(state.get("counts") or {})
        if state.get("labels"):
            self.labels = EpochLabels(**state["labels"])
        self.best = state.get("best")
        self.started_from = list(state.get("started_from") or [])
        self.pending = state.get("pending_record")
        self._relink_best(path)
        logger.info(
            "resumed from %s after epoch %d (%d of %d epochs done)",
            path,
            self.epoch - 1,
            self.epoch,
            self.total_epochs,
        )

    def _relink_best(self, path) -> None:
        """A run killed between writing ``latest.pt`` and linking it as ``best.pt`` left a
        ``latest.pt`` that names itself the best and an older ``best.pt``: link it again,
        so that a later ``start_from: best`` loads what the uninterrupted run would."""
        if self.folder is None or not D.is_main() or not self.best:
            return
        ckpt = self.folder.checkpoints
        latest = ckpt / LATEST
        if self.best.get("epoch") != self.epoch - 1 or not latest.is_file():
            return
        if Path(path).resolve() != latest.resolve():
            return
        best = ckpt / BEST
        if best.is_file() and os.path.samefile(latest, best):
            return
        keep_as_best(ckpt)
        logger.warning(
            "checkpoints/best.pt was older than the best epoch %d; linked again", self.epoch - 1
        )

    def _apply_kernel_settings(self) -> None:
        """``train.deterministic`` and, on CUDA, cuDNN's autotuning (``train.cudnn_benchmark``,
        off under ``deterministic``): torch's process-wide settings, set when the trainer
        is built and at each :meth:`fit` (whose end gives back the ones before)."""
        if self.tr.get("deterministic"):
            set_deterministic()
        if torch.device(self.device).type == "cuda":
            torch.backends.cudnn.benchmark = bool(
                self.tr.get("cudnn_benchmark", True)
            ) and not bool(self.tr.get("deterministic"))

    # -- the run ----------------------------------------------------------------------
    def fit(self) -> dict | None:
        """Run the remaining epochs; returns the final evaluation tables (rank 0). With
        ``train.threads`` the run uses that many torch threads, and the process gets its
        own count back afterwards (a notebook or a test that trains keeps its setting)."""
        threads = torch.get_num_threads()
        if self.tr["threads"] > 0:
            torch.set_num_threads(int(self.tr["threads"]))
        self._apply_kernel_settings()  # again: a second fit() of this trainer
        try:
            return self._fit()
        finally:
            torch.set_num_threads(threads)
            _restore_kernel_state(self._kernel_state)

    def _fit(self) -> dict | None:
        # what only rank 0 does before the first epoch (test images, the untrained
        # evaluation, a resumed epoch's record) is agreed on: a failure there stops the
        # other ranks with its reason instead of a closed connection
        evaluated_last = D.agree(self._before_training)
        log = self._metrics_log()
        while self.epoch < self.total_epochs:
            epoch = self.epoch
            record = self.train_epoch(epoch)
            self.epoch = epoch + 1
            evaluated_last = D.agree(functools.partial(self._finish_epoch, record, log))
        if (
            self.protocol is not None
            and D.is_main()
            and not evaluated_last
            and self.last_eval is None
        ):
            self.evaluate("final")
        return self.last_eval

    def _metrics_log(self) -> Any:
        """``metrics.jsonl``'s writer on the rank that writes the run folder, else None."""
        return self.folder.log_metrics if (self.folder is not None and D.is_main()) else None

    def _before_training(self) -> bool:
        """Load the data, evaluate the untrained model if asked, log a resumed epoch's
        missing record; returns whether that was the run's last epoch, evaluated."""
        ev = self.cfg["evaluation"]
        self.load_data()
        unreadable = self.unreadable_training_images()
        if unreadable and D.is_main() and self.folder is not None:
            # the manifest says what was trained on: the listed images less these
            path = self.folder.path / "manifest.json"
            if path.is_file():
                manifest = json.loads(path.read_text())
                manifest["unreadable_training_images"] = unreadable
                self.folder.write_manifest(manifest)
        log = self._metrics_log()
        evaluates = self.protocol is not None
        if not evaluates:
            logger.info(
                "no evaluation: evaluation.protocol is none, or the dataset has no test "
                "protocol; the run trains and keeps its checkpoints"
            )
        logged = (
            self.folder is not None
            and D.is_main()
            and any(m.get("epoch") == -1 and "eval" in m for m in self.folder.read_metrics())
        )
        if logged:
            # a run killed before its first checkpoint restarts from epoch 0 in its folder:
            # the untrained model's record is there already (audit AQ: it was evaluated and
            # logged a second time)
            logger.info("the untrained model's evaluation is in metrics.jsonl already")
        if evaluates and ev["at_start"] and self.epoch == 0 and D.is_main() and not logged:
            res = self.evaluate("untrained")
            if log:
                log(
                    {
                        "epoch": -1,
                        "stage": "untrained",
                        "eval": self.summary(res["tables"]),
                        # evaluation phases, named as in every epoch's record (plain
                        # "extract" was drawn as a training phase)
                        "seconds": {f"eval_{k}": v for k, v in res["seconds"].items()},
                    }
                )
        return self._log_pending(log)

    def _finish_epoch(self, record: dict, log: Any) -> bool:
        """Save the epoch just trained (``self.epoch`` counts it), evaluate it when due,
        and log its record; returns whether the run's last epoch was evaluated.

        The record rides in each checkpoint written here (``pending_record``) until the
        next epoch's replaces it: a run killed after the save and before the record's line
        (in the evaluation, say: a SIGKILL or an out-of-memory kill runs no handler) logs it
        when it is resumed (:meth:`_log_pending`), evaluating the saved weights first if
        the evaluation had not finished."""
        ev = self.cfg["evaluation"]
        epoch, last = record["epoch"], self.epoch == self.total_epochs
        due = last or (ev["every"] > 0 and self.epoch % ev["every"] == 0)
        best = saved = evaluated = False
        self.pending = record
        if self.protocol is not None and D.is_main() and due and "eval" not in record:
            # the epoch's training is kept whatever its evaluation does (an evaluation
            # that fails, or a run killed in it, resumes after this epoch); it is
            # written again below only if the evaluation made it the best
            self.save(False)
            saved = True
            try:
                res = self.evaluate(f"epoch {epoch}")
            except BaseException as exc:
                # a Ctrl-C / SIGTERM logs nothing: the checkpoint's pending record makes
                # the resume evaluate this epoch, as after a SIGKILL (audit AV: logged
                # with eval_error, the epoch was never evaluated)
                if log and not isinstance(exc, KeyboardInterrupt):
                    log({**record, "eval_error": f"{type(exc).__name__}: {exc}"[:500]})
                raise
            record["eval"] = self.summary(res["tables"])
            record["seconds"].update({f"eval_{k}": v for k, v in res["seconds"].items()})
            evaluated = last
            best = self._improves_best(epoch, res["tables"])
            if self.best is not None:
                record["best"] = dict(self.best)
                logger.info(
                    "checkpoints/best.pt: epoch %d, mAP %.2f (chosen on the %s; %s)",
                    self.best["epoch"],
                    self.best["mAP"],
                    self._held_out,
                    "report the final epoch"
                    if self._held_out == "test set"
                    else "train the chosen setting without data.validation for the test set",
                )
        if best or not saved:
            self.save(best)
        if log:
            log(record)
        return evaluated

    def _log_pending(self, log: Any) -> bool:
        """On a resume: the record of the checkpoint's epoch, if metrics.jsonl lacks it
        (the run was killed between saving the epoch and logging it), evaluated if it was
        due and logged, as :meth:`_finish_epoch` would have; returns whether that was the
        run's last epoch, evaluated."""
        record, self.pending = self.pending, None
        if record is None or not log or not D.is_main() or self.folder is None:
            return False
        if record.get("epoch") in {m.get("epoch") for m in self.folder.read_metrics()}:
            return False
        logger.warning(
            "resume: epoch %s was saved but not logged (the run was stopped in between); "
            "finishing its record%s",
            record.get("epoch"),
            "" if "eval" in record or self.protocol is None else " and its evaluation",
        )
        return self._finish_epoch(dict(record), log)


def _fingerprint(dataset: Any) -> dict | None:
    return dataset.fingerprint() if hasattr(dataset, "fingerprint") else None
