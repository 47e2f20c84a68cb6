"""What the engine hands to a loss: one step's outputs and targets, one epoch's context.

Every registered loss is an ``nn.Module`` with the same three calls:

* ``reset(context: EpochContext)`` at each epoch start, after clustering and association:
  (re-)initialise its memories from the epoch's features and labels;
* ``forward(outputs: StepOutputs, targets: StepTargets) -> scalar``;
* ``update(outputs, targets)`` after the optimiser step, with detached outputs: the
  explicit momentum update of its memories (none for memory-free losses).

For a loss written outside uvireid (a plugin), the trainer also relies on these:

* ``reset`` and ``update`` are called only where a loss defines them; a loss holding
  buffers with one of them but not the other is warned about (a misspelt ``update``
  would train against frozen prototypes); a loss with constant buffers needs neither.
* Under DDP every rank calls ``update`` with its own rows only: gather them first
  (:func:`uvireid.engine.distributed.all_gather_cat` for features,
  :func:`~uvireid.engine.distributed.gather_labels` for labels, as
  :meth:`uvireid.losses.memory.ClusterMemory.update` does), so that every rank applies
  the same update and the memories stay identical.
* Buffers are saved in checkpoints and may change size from epoch to epoch (``reset``
  sizes them to the cluster count); a resumed run's buffers take the checkpoint's sizes.
* A loss has no trainable parameters of its own: the optimiser holds the model's, so a
  loss with a learnable head is refused (put learnable modules in the backbone).
* ``outputs.feat_*`` are the BN neck's features; the pooled features before the neck
  (triplet losses use them) are in ``outputs.pool_*`` for a loss with ``needs_pool =
  True``. Camera ids come per epoch (``EpochContext.cams_v``, indexed by
  ``targets.idx_v``).
* ``forward`` returns a 0-dim tensor; flags the trainer reads: ``needs_parts = True``
  with ``num_parts`` (the part features in ``outputs.parts``; FGSAL's part module is
  built with that many parts), ``needs_pool`` (``outputs.pool_*``), ``needs_pairs``
  (paired batches only) and ``needs_cross_labels`` (a stage with an associator).

A batch holds ``S_v`` visible images (``feat_v``), their channel-augmented copies
(``feat_a``, same files, same labels) and ``S_r`` infrared images (``feat_r``). In the
paired (SALCR) stage ``S_v = S_r = S`` and row n of each is one potential-positive pair.
Labels use -1 for "none" (an outlier, or no cross-modal link this epoch): such rows take
no part in a term.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

__all__ = ["StepOutputs", "StepTargets", "EpochLabels", "EpochContext", "require_parts"]


@dataclass
class StepOutputs:
    """Model outputs of one training step.

    Attributes:
        feat_v, feat_a: (S_v, d) post-BN-neck global features of the visible images and
            of their channel-augmented views.
        feat_r: (S_r, d) the same for the infrared images.
        parts: part features by (query image, map image), e.g. ``parts["v", "r"]`` is
            (S, P, d): visible queries attending to the paired infrared map (FGSAL), for
            all nine pairs of v (visible), a (its channel-augmented view) and r
            (infrared), as the trainer's part module gives them. Empty when no loss
            asked for parts.
        pool_v, pool_a, pool_r: the same rows' pooled features before the BN neck
            (``BackboneOutput.global_feat``), or None when no loss of the stage has
            ``needs_pool``.
    """

    feat_v: torch.Tensor
    feat_a: torch.Tensor
    feat_r: torch.Tensor
    parts: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    pool_v: torch.Tensor | None = None
    pool_a: torch.Tensor | None = None
    pool_r: torch.Tensor | None = None

    def detach(self) -> StepOutputs:
        def cut(t):
            return None if t is None else t.detach()

        return StepOutputs(
            cut(self.feat_v),
            cut(self.feat_a),  # None where no channel-augmented view was made
            cut(self.feat_r),
            {k: v.detach() for k, v in self.parts.items()},
            cut(self.pool_v),
            cut(self.pool_a),
            cut(self.pool_r),
        )


@dataclass
class StepTargets:
    """Pseudo-labels of one step's images in both label spaces (torch long, -1 = none).

    Attributes:
        vis_in_v: (S_v,) visible images in the visible space (ỹ^v).
        vis_in_r: (S_v,) visible images in the infrared space (ŷ^r).
        ir_in_r: (S_r,) infrared images in the infrared space (ỹ^r).
        ir_in_v: (S_r,) infrared images in the visible space (ŷ^v).
        idx_v, idx_r: the images' indices in the epoch's visible / infrared lists (for
            instance memories).
        paired: True when row n of the visible and the infrared images form a pair.
        host: the same targets as CPU tensors, when the caller has them (the trainer
            builds them from host arrays): the memory updates group their rows by label
            from these, so that on a GPU they never read the device back.
    """

    vis_in_v: torch.Tensor
    vis_in_r: torch.Tensor
    ir_in_r: torch.Tensor
    ir_in_v: torch.Tensor
    idx_v: torch.Tensor
    idx_r: torch.Tensor
    paired: bool = False
    host: StepTargets | None = None

    def __post_init__(self) -> None:
        # numpy labels (EpochContext holds them so) or lists: the long tensors the losses
        # index with, instead of an AttributeError deep in a loss
        for name in ("vis_in_v", "vis_in_r", "ir_in_r", "ir_in_v", "idx_v", "idx_r"):
            value = getattr(self, name)
            if value is None or isinstance(value, torch.Tensor):
                continue  # None: a field a memory-free loss never reads (as before)
            arr = np.asarray(value)
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
                from uvireid.errors import ConfigError

                raise ConfigError(
                    f"StepTargets.{name}: labels and indices are whole numbers, got "
                    f"{arr[:5].tolist()}; pass integer labels (-1 for none)"
                )
            setattr(self, name, torch.as_tensor(arr, dtype=torch.long))

    def on_host(self) -> StepTargets:
        """The host copy of these targets when there is one, else these targets."""
        return self.host if self.host is not None else self


@dataclass(kw_only=True)
class EpochLabels:
    """One epoch's pseudo-labels (numpy int64, -1 = none) and label-space sizes.

    Attributes:
        vis_in_v, vis_in_r, ir_in_r, ir_in_v: (Nv,) / (Nr,) labels (see
            :class:`StepTargets`).
        init_v, init_r: (Nv,) / (Nr,) the clusterer's labels, from which cluster memories
            are initialised (the same as ``vis_in_v`` / ``ir_in_r`` unless the associator
            relabelled).
        num_v, num_r: sizes of the visible and infrared label spaces.
        has_cross: False when the association linked no clusters (cross terms skipped).
        info: what the associator reports (logged with the epoch's metrics).
        matches: (M, 2) (visible cluster, infrared cluster) pairs of the association, or
            None (for the ``matched`` sampler: MBCCM's many-to-many matching).
    """

    vis_in_v: np.ndarray
    vis_in_r: np.ndarray
    ir_in_r: np.ndarray
    ir_in_v: np.ndarray
    init_v: np.ndarray
    init_r: np.ndarray
    num_v: int
    num_r: int
    has_cross: bool = True
    info: dict = field(default_factory=dict)
    matches: np.ndarray | None = None


@dataclass(kw_only=True)
class EpochContext(EpochLabels):
    """One epoch's features and pseudo-labels, for :meth:`reset` of the losses.

    The labels' attributes (:class:`EpochLabels`) plus:

    Attributes:
        feats_v: (Nv, d) L2-normalised global features of the visible training images
            (the clustering features, in the engine's order); feats_r: (Nr, d).
        parts_v, parts_r: (N, P, d) L2-normalised self-attended part features (FGSAL),
            or None.
        part_weights_v, part_weights_r: (N, P) each part's share of the norm of its
            image's joint [parts ‖ global] vector, or None: ``parts * weights[..., None]``
            are the slices of that vector jointly normalised, from which the official
            SALCR code seeds its part memories (``official_quirks``).
        epoch: the epoch's index within its stage (0 for the stage's first epoch).
        cams_v, cams_r: (N,) int64 numpy camera ids of the training images, in the same
            order (a step's ``targets.idx_v`` index them: camera-aware memories), or None
            when the caller has none.
    """

    feats_v: torch.Tensor
    feats_r: torch.Tensor
    parts_v: torch.Tensor | None = None
    parts_r: torch.Tensor | None = None
    part_weights_v: torch.Tensor | None = None
    part_weights_r: torch.Tensor | None = None
    epoch: int = 0
    cams_v: np.ndarray | None = None
    cams_r: np.ndarray | None = None

    def __post_init__(self) -> None:
        # numpy features (the labels' type here): the tensors the losses' reset() reads
        for name in (
            "feats_v",
            "feats_r",
            "parts_v",
            "parts_r",
            "part_weights_v",
            "part_weights_r",
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, torch.Tensor):
                setattr(self, name, torch.as_tensor(np.asarray(value)))

    @classmethod
    def of(cls, labels: EpochLabels, **features) -> EpochContext:
        """The context of ``labels`` with the epoch's features (keyword arguments)."""
        return cls(**{f.name: getattr(labels, f.name) for f in fields(EpochLabels)}, **features)


def require_parts(parts: dict, keys, who: str) -> None:
    """Raise a :class:`~uvireid.errors.ConfigError` naming the (query, map) part features
    ``who`` needs and ``parts`` (:attr:`StepOutputs.parts`) lacks."""
    missing = [k for k in keys if k not in parts]
    if missing:
        from uvireid.errors import ConfigError

        raise ConfigError(
            f"{who} needs the part features of the (query, map) pairs "
            f"{', '.join(map(str, missing))}, which outputs.parts lacks (it has "
            f"{', '.join(map(str, parts)) or 'none'}); the trainer's part module gives all "
            f"nine pairs of v, a and r"
        )
