"""A stand-in for ImageNet weights on machines that cannot download any.

Every USL-VI-ReID method starts from an ImageNet-pretrained backbone: RGB photographs of
other things, labelled, never an infrared image and never a person of the target set.
From random initialisation the first clusters are noise (pseudo-label ARI about 0.02 on
the synthetic dataset) and a CPU budget of a few hundred steps is not enough to get out of
it. ``pretrained: synthetic-visible`` gives the same kind of start offline: a ResNet
trained with identity labels on the **visible** images of a separate synthetic population
(its own seed, so none of its people are in the target set; no infrared image is used).
What it teaches is what ImageNet teaches a ReID model: RGB appearance; bridging the
modalities is left to the unsupervised method.

The weights are built on first use (about 2 minutes on 2 CPU cores for the defaults) and
cached as a torchvision state dict in ``<cache>/priors/`` (``$UVIREID_CACHE``, else
``~/.cache/uvireid``), keyed by every parameter and the generator version, written
atomically; :func:`uvireid.models.backbone.build_resnet` loads them like any local
checkpoint. They are built with :data:`PRIOR_THREADS` torch threads whatever the machine:
CPU arithmetic depends on the thread count, and over 400 steps a prior built with 1 thread
ends far from one built with 2 (weights up to 20 apart, the demo's start 16.2 against
18.2 mAP), so a cache filled by another command or on a machine with more cores would
give another demo.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uvireid.errors import ConfigError

__all__ = [
    "PRIOR_NAME",
    "PRIOR_VERSION",
    "batch_hard_triplet",
    "prior_path",
    "synthetic_visible_prior",
    "warmup_cosine",
]

logger = logging.getLogger(__name__)

#: the value of ``backbone.pretrained`` that asks for this prior
PRIOR_NAME = "synthetic-visible"
#: bump when the training below changes (cached priors with another version are rebuilt);
#: 2: built with PRIOR_THREADS threads (version 1 took whatever the process had)
PRIOR_VERSION = 2
#: torch threads the prior is built with, on any machine (the result depends on it)
PRIOR_THREADS = 2
#: the default batch (identities x images) and learning rate of the prior's training
BATCH_IDS, IMAGES, LR = 16, 4, 1e-3


def prior_path(
    arch: str,
    *,
    ids: int,
    seed: int,
    iters: int,
    height: int,
    width: int,
    batch_ids: int = BATCH_IDS,
    images: int = IMAGES,
    lr: float = LR,
    cache_dir: str | Path | None = None,
) -> Path:
    """Where the prior with these parameters is (or will be) cached: every parameter of
    :func:`synthetic_visible_prior` is in the name (the batch and the learning rate only
    where they are not the defaults, so that the caches of the defaults keep their names;
    they were left out, and a prior of other batch settings was the first one's; audit MA).
    """
    from uvireid.data.synthetic import GENERATOR_VERSION, cache_root

    training = ""
    if (batch_ids, images, lr) != (BATCH_IDS, IMAGES, LR):
        training = f"-b{batch_ids}x{images}-lr{lr!r}"
    name = (
        f"{PRIOR_NAME}-v{PRIOR_VERSION}-gen{GENERATOR_VERSION}-{arch}-ids{ids}-seed{seed}"
        f"-it{iters}-{height}x{width}{training}.pth"
    )
    return cache_root(cache_dir) / "priors" / name


def batch_hard_triplet(feat: torch.Tensor, labels: torch.Tensor, margin: float = 0.3):
    """Batch-hard triplet loss (Hermans et al. 2017) on Euclidean distances."""
    d = torch.cdist(feat, feat)
    same = labels[:, None] == labels[None, :]
    hardest_pos = (d * same).max(1).values
    hardest_neg = (d + same * 1e6).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def warmup_cosine(iters: int):
    """Learning-rate factor of step ``it`` for ``LambdaLR``: linear warm-up over the first
    tenth of ``iters``, then a cosine decay to 0."""
    warm = max(1, iters // 10)

    def factor(it: int) -> float:
        if it < warm:
            return (it + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (it - warm) / max(1, iters - warm)))

    return factor


def synthetic_visible_prior(
    arch: str = "resnet18",
    *,
    ids: int = 300,
    seed: int = 7,
    iters: int = 400,
    height: int = 64,
    width: int = 32,
    batch_ids: int = BATCH_IDS,
    images: int = IMAGES,
    lr: float = LR,
    cache_dir: str | Path | None = None,
) -> Path:
    """The path of the ``synthetic-visible`` prior for ``arch``, trained if not cached.

    Args:
        arch: a torchvision ResNet (``resnet18``, ``resnet34``, ``resnet50``).
        ids, seed: the synthetic population (all its identities, train and test split
            alike; ``seed`` differs from the datasets' default 0, so the people differ).
        iters: optimiser steps of ``batch_ids`` x ``images`` visible images.
        height, width: training image size.
        lr: AdamW learning rate (cosine schedule after a 10 % warm-up).
        cache_dir: see :func:`uvireid.data.synthetic.cache_root`.

    Training: cross-entropy with label smoothing 0.1 on a BN-neck feature plus a
    batch-hard triplet loss on the GeM-pooled feature; pad-and-crop, flip, and on half of
    the images one colour channel copied into all three (channel exchange), so the prior
    does not lean on hue alone. Seeded: the same parameters give the same weights on CPU.
    """
    from uvireid.data.samplers import pools
    from uvireid.data.synthetic import SyntheticSYSU, ensure_synthetic
    from uvireid.data.transforms import load_images
    from uvireid.fileio import atomic_torch_save
    from uvireid.types import VISIBLE

    if iters < 1 or ids < 3 or batch_ids < 2 or images < 2:
        raise ConfigError(
            f"synthetic-visible prior: iters={iters}, ids={ids}, batch_ids={batch_ids}, "
            f"images={images}; need iters >= 1, ids >= 3, batch_ids >= 2 and images >= 2"
        )
    path = prior_path(
        arch,
        ids=ids,
        seed=seed,
        iters=iters,
        height=height,
        width=width,
        batch_ids=batch_ids,
        images=images,
        lr=lr,
        cache_dir=cache_dir,
    )
    if path.is_file():
        return path
    t0 = time.perf_counter()
    root = ensure_synthetic(cache_dir, ids=ids, seed=seed)
    ds = SyntheticSYSU(str(root))
    recs = [r for r in ds.train + ds.test if r.modality == VISIBLE]
    imgs, ok = load_images(recs, height, width)
    pids = np.array([r.pid for r in recs])
    label_of = np.full(len(recs), -1)
    label_of[ok] = np.unique(pids[ok], return_inverse=True)[1]
    by_label = list(pools(label_of).values())  # label 0, 1, ...: its sorted image indices
    n_cls = len(by_label)
    if n_cls < batch_ids:
        raise ConfigError(
            f"synthetic-visible prior: {n_cls} identities for batches of {batch_ids}; raise ids"
        )
    logger.info(
        "building the %s prior: %s on %d visible images of %d synthetic identities "
        "(seed %d), %d steps",
        PRIOR_NAME,
        arch,
        int(ok.sum()),
        n_cls,
        seed,
        iters,
    )
    rng_state = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(PRIOR_THREADS)
    try:
        net = _train_prior(
            arch, imgs, label_of, by_label, seed, iters, batch_ids, images, lr, n_cls
        )
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng_state)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    atomic_torch_save(path, state)
    logger.info("prior saved to %s (%.0f s)", path, time.perf_counter() - t0)
    return path


def _train_prior(arch, imgs, label_of, by_label, seed, iters, batch_ids, images, lr, n_cls):
    """The prior's training loop (:func:`synthetic_visible_prior`); returns the ResNet."""
    from uvireid.data.transforms import channel_exchange, normalize, pad_crop_flip
    from uvireid.models.backbone import build_resnet
    from uvireid.models.pooling import GeM

    torch.manual_seed(seed)
    net = build_resnet(arch, False, last_stride=1)
    dim = 2048 if hasattr(net.layer4[-1], "conv3") else 512  # bottleneck / basic blocks
    body = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    pool, neck = GeM(3.0), nn.BatchNorm1d(dim)
    neck.bias.requires_grad_(False)
    classifier = nn.Linear(dim, n_cls, bias=False)
    params = [p for m in (body, neck, classifier) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(iters))
    rng = np.random.default_rng([seed, 17])
    gen = torch.Generator().manual_seed(seed)
    body.train(), neck.train()
    for it in range(iters):
        chosen = rng.choice(n_cls, batch_ids, replace=False)
        idx = np.concatenate(
            [rng.choice(by_label[c], images, replace=len(by_label[c]) < images) for c in chosen]
        )
        y = torch.as_tensor(label_of[idx])
        x = pad_crop_flip(imgs[torch.as_tensor(idx)].float() / 255.0, 4, gen)
        half = len(idx) // 2
        x = torch.cat([x[:half], channel_exchange(x[half:], gen)])
        feat = pool(body(normalize(x))).flatten(1)
        loss = F.cross_entropy(classifier(neck(feat)), y, label_smoothing=0.1)
        loss = loss + batch_hard_triplet(feat, y)
        if not bool(torch.isfinite(loss)):
            raise ConfigError(
                f"synthetic-visible prior: the loss became {float(loss.detach())} at step {it}"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if it % 100 == 0 or it == iters - 1:
            logger.info("prior step %d/%d: loss %.3f", it + 1, iters, float(loss.detach()))
    return net
