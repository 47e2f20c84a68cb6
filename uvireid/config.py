"""Recipes: YAML files with ``_base_`` inheritance, dotted overrides and strict validation.

One dialect, YAML only::

    _base_: [datasets/sysu.yaml]       # paths relative to this file; several levels
    clusterer: {type: dbscan, eps: 0.6}
    train: {epochs: 40}

* ``_base_`` files are merged first, in order, then this file on top. Mappings merge
  deeply, lists (and scalars) are replaced whole but for a mapping of indices, which
  refines those items (``stages: {1: {epochs: 30}}``), ``_delete_: true`` inside a mapping
  replaces the base's mapping instead of merging into it. A component mapping whose
  ``type`` changes is replaced whole too, since the old component's keywords mean
  nothing to the new one.
* Overrides from the command line are dotted paths, values in YAML syntax:
  ``train.epochs=10``, ``clusterer.eps=0.5``, ``stages.1.losses.0.weight=2``,
  ``train.lr_steps=[20,60]``, ``reranker=null``, ``train.amp=true``. A mapping given
  for a mapping (a section, or a list item such as ``stages.1={epochs: 3}``) merges into
  it, as a mapping of indices does into a list (``stages={1: {epochs: 3}}``);
  ``X.type=new`` replaces part X (a loss keeps its ``weight``). Relative paths
  (``data.root``, ``evaluation.perm_file``) are resolved against the current folder when
  the recipe is loaded, ``_base_`` against the file that names it.
* Every key is checked: an unknown or misspelt key is a :class:`ConfigError` naming the
  file that set it (or the override) and the closest valid key, never silently added.
  Keys listed in :data:`RENAMED_KEYS` say what they were renamed to.
* Defaults live in the components' constructor signatures and in the settings
  dataclasses below; :func:`resolve` fills them in, so the resolved config written into a
  run folder shows every value actually used.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from uvireid._suggest import closest
from uvireid.errors import ConfigError, RegistryError, check_seed
from uvireid.registry import (
    ASSOCIATORS,
    BACKBONES,
    CLUSTERERS,
    DATASETS,
    LOSSES,
    RECIPES,
    RERANKERS,
    SAMPLERS,
    Registry,
)

logger = logging.getLogger(__name__)

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
OVERRIDE_SOURCE = "command-line override"

# ---------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    """Optimisation settings shared by every stage (SALCR spec §9; paper Sec. 4.2).

    Attributes:
        epochs: epochs of the run.
        iters_per_epoch: optimiser steps per epoch (SYSU 300, RegDB 100).
        lr: learning rate (3.5e-4, Adam's in every recipe).
        weight_decay: L2 weight decay (5e-4).
        lr_steps: epochs at which the learning rate is divided by ``lr_gamma``.
        lr_gamma: the step factor (0.1).
        optimizer: ``adam`` (the recipes', as SALCR and its peers), ``adamw`` (decoupled
            weight decay, as ViT-based methods train) or ``sgd``.
        momentum: SGD's momentum (``sgd`` only; 0.9).
        warmup_epochs: a linear warm-up of the learning rate over the run's first epochs
            (0: none), as reid-strong-baseline's and fast-reid's WarmupMultiStepLR: epoch
            e < warmup_epochs is trained at ``warmup_factor * (1 - e / warmup_epochs) +
            e / warmup_epochs`` times its scheduled rate.
        warmup_factor: the warm-up's starting factor (0.01).
        batch_ids: pseudo-identities per batch.
        images_per_id: images per pseudo-identity and modality in a batch.
        height, width: input size (paper 288x144).
        workers: data-loading processes (evaluation-only runs).
        amp: bf16 autocast for the training forward and extraction, on CUDA and on CPUs
            with native bf16 (AVX512-BF16 or AMX; elsewhere a warning, and float32).
        channels_last: keep the convolution weights (and so the images) in NHWC memory
            format; null = on CUDA only, where cuDNN's tensor-core convolutions want it
            (it spares a layout conversion of every layer's input and gradient); true or
            false force it on every device.
        images_on_device: keep the decoded uint8 training images on the training GPU
            (batches are gathered there instead of on the host and copied); null = when
            they take at most a quarter of its free memory; ignored on the CPU.
        cudnn_benchmark: let cuDNN time its convolution algorithms once for the fixed
            training size (CUDA; faster steps). false picks them by heuristics, for GPU
            runs that repeat more closely.
        deterministic: ask torch for deterministic kernels (``torch.use_deterministic_
            algorithms``, warning where an op has none), cuDNN's deterministic
            convolutions without autotuning, and cuBLAS's fixed workspace; slower on a GPU.
            A seeded CPU run repeats without it, on the same number of CPU threads
            (torch's CPU kernels sum in another order with another count).
        compile_losses: compile each stage's loss terms (forward and backward) with
            ``torch.compile``: the elementwise work of the memories' InfoNCE and GPCR's
            neighbour sets fused into a few kernels. On a GPU the SALCR step's losses are
            bound by kernel launches (benchmarks/RESULTS.md); the compilation costs tens of
            seconds at a stage's first step and again when the cluster count changes
            shape, and needs Triton (CUDA) or a C++ compiler (CPU). Off by default.
        cuda_graphs: replay each stage's loss terms (forward and backward) as CUDA graphs,
            captured at the first step of each epoch and batch shape
            (``uvireid.engine.graphs``), and each view's augmentation likewise
            (``Augmenter.cuda_graphs``): the host queues a few graph launches a step
            instead of the losses' thousand kernels and the augmentation's hundreds.
            The same draws as without, the same values to float rounding. Ignored on the
            CPU; a part that cannot be captured is reported and runs eagerly. Not with
            ``compile_losses``. Off by default.
        tf32: float32 matrix products of the training step (the losses' products with the
            memories, which stay float32 under ``amp``) in TF32 on CUDA, as cuDNN's
            convolutions already are by default; evaluation keeps full float32. Off by
            default (the reference codes' products are float32).
        threads: torch CPU threads (0: torch's default). On a small shared CPU, 1 is often
            fastest.
        pad, erasing_p, jitter, hue, gray_p: augmentation (zero padding before the random
            crop; channel random erasing probability; colour-jitter strength of the CA and
            infrared views, and its hue shift in turns, at most 0.5; ChannelAdapGray's
            luminance probability).
        jitter_views: the views the colour jitter applies to, among ``visible_ca`` and
            ``infrared`` (a stage's ``jitter_views`` overrides it: PGM's stage 2 jitters
            only the CA view).
        cluster_flip: the training features (clustering, memory initialisation,
            association) are the mean of the L2-normalised features of each image and its
            flip, not normalised again, as PGM's ``extract_features(flip=True)``; false:
            the image's feature alone (SALCR, MBCCM).
        ltg_official: LTG as the official SALCR code runs it: rescalings repeated until
            some pixel's gain is at most 1e-6 (item 14 of docs/design_notes.md, "SALCR's official code vs the paper"); false: one patch,
            as the paper describes it. See
            :mod:`uvireid.data.transforms`.
        resize: how the training images (also those the clustering features come from)
            are resized to ``height x width`` when decoded: ``bilinear`` (torchvision's
            default, as SALCR), ``bicubic`` (PGM's ``interpolation=3``) or ``lanczos``
            (MBCCM's ``Image.ANTIALIAS``, for its training, clustering and test images).
        test_resize: the same for the test images (null: ``resize``; PGM resizes its test
            images with LANCZOS, ``Image.ANTIALIAS``).
        image_cache: folder of decoded-image caches; ``auto`` = ``$UVIREID_CACHE/images``
            (else ``~/.cache/uvireid/images``); null = decode in memory every run.
        extract_batch: images per forward when extracting features.
        collapse_ratio: warn when a modality's cluster count falls below this fraction of
            the previous epoch's (or to one cluster).

    Where the official SALCR code departs from the paper (docs/design_notes.md), the parts offer
    the official behaviour as an option: ``otla_dual``'s ``intra_relabel`` and
    ``official_solver``, ``official_quirks`` of ``part_contrast`` and
    ``instance_neighbour``, and ``train.ltg_official`` (item 14).
    """

    epochs: int = 40
    iters_per_epoch: int = 300
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    lr_steps: list[int] = field(default_factory=lambda: [20, 60])
    lr_gamma: float = 0.1
    optimizer: str = "adam"
    momentum: float = 0.9
    warmup_epochs: int = 0
    warmup_factor: float = 0.01
    batch_ids: int = 8
    images_per_id: int = 4
    height: int = 288
    width: int = 144
    workers: int = 4
    amp: bool = False
    channels_last: bool | None = None
    cudnn_benchmark: bool = True
    deterministic: bool = False
    images_on_device: bool | None = None
    compile_losses: bool = False
    cuda_graphs: bool = False
    tf32: bool = False
    threads: int = 0
    pad: int = 10
    erasing_p: float = 0.5
    jitter: float = 0.5
    hue: float = 0.5
    jitter_views: list[str] = field(default_factory=lambda: ["visible_ca", "infrared"])
    gray_p: float = 0.5
    cluster_flip: bool = False
    ltg_official: bool = False
    resize: str = "bilinear"
    test_resize: str | None = None
    image_cache: str | None = "auto"
    extract_batch: int = 256
    collapse_ratio: float = 0.5


@dataclass
class EvalSettings:
    """How a run evaluates (see :mod:`uvireid.evaluation.protocols`).

    Attributes:
        protocol: ``sysu-all``, ``sysu-indoor``, ``regdb-v2i``, ``regdb-i2v``,
            ``llcm-v2i``, ``llcm-i2v`` or ``llcm-v2i-deen`` (DEEN's transposed "VIS to IR"
            branch: sampled infrared queries, see :mod:`uvireid.evaluation.protocols`);
            ``auto`` picks the dataset's first protocol (none
            for a dataset without one, e.g. ``folder``); ``none`` trains without evaluating.
        trials: gallery trials (SYSU/LLCM: 10).
        shot: ``single`` or ``multi``.
        sampler: ``seeded`` (the peers' random.seed(trial) sampler) or ``official``
            (SYSU-MM01's rand_perm_cam.mat, read from ``perm_file``).
        perm_file: path of rand_perm_cam.mat for the official sampler.
        every: evaluate every this many epochs (0: only at the end).
        feature_head: which feature is extracted and evaluated (recorded in every result):
            ``bn_feat`` the BN neck's output, ``pool`` the pooled feature before it.
        flip: the test feature is the mean of the image's and its horizontal flip's
            (SALCR, PGM, mangye16's baseline); false: the image alone (MBCCM's
            evaluator). Recorded in every result's features meta (``test_flip``).
        at_start: also evaluate the untrained model before the first epoch (logged as
            epoch -1), so a run shows how far training moved it.
        keep_best: also keep the checkpoint of the evaluated epoch with the highest mAP
            (without re-ranking) as ``checkpoints/best.pt``. It is chosen ON THE TEST SET:
            for inspection, not for the numbers a paper reports (the final epoch's are
            those; the log and metrics.jsonl say which epoch best.pt holds). Off by
            default.
    """

    protocol: str = "auto"
    trials: int = 10
    shot: str = "single"
    sampler: str = "seeded"
    perm_file: str | None = None
    every: int = 1
    feature_head: str = "bn_feat"
    flip: bool = True
    at_start: bool = False
    keep_best: bool = False


#: keys every sampler had before samplers were a registry (session 21), with their old
#: defaults: a run's config.yaml from then lists them for every sampler type, and reads
#: as it trained (dropped where the type has no such keyword)
#: ``train.optimizer`` values (:func:`uvireid.engine.trainer.make_optimizer`)
OPTIMIZERS = ("adam", "adamw", "sgd")

_OLD_SAMPLER_DEFAULTS = {"camera_aware": False, "visible_ids": None}


@dataclass
class StageSettings:
    """One named stage of training (``stages:`` in a recipe).

    Attributes:
        name: shown in logs and metrics (``dcl``, ``salcr``).
        epochs: epochs of this stage; the run's epochs are the sum over stages.
        iters_per_epoch: optimiser steps per epoch (null: ``train.iters_per_epoch``).
        ltg_p: LTG probability on the visible view (SALCR: 0.5 in DCL, 0 after).
        sampler: ``{type: NAME, ...}`` in :data:`uvireid.registry.SAMPLERS` (null: the
            ``identity`` sampler with its defaults; ``uvireid list samplers``).
        clusterer, associator: parts (absent: the recipe's top-level ones; an explicit
            null associator means no cross-modal association, as in DCL).
        losses: ``[{type: NAME, weight: W, ...}]`` summed with their weights.
        lr, lr_steps: a stage that sets either restarts the learning-rate schedule at its
            first epoch, as a method trained in separate runs per stage does (PGM's stage
            2 starts again at 3.5e-4): ``lr`` (null: ``train.lr``) times ``train.lr_gamma``
            per step of ``lr_steps`` passed, counted in epochs from the stage's start.
            A stage with neither follows ``train.lr_steps`` on the run's absolute epoch.
        reset_optimizer: start the stage with a new Adam (its moment estimates and step
            counts cleared), as a method whose stages are separate runs does: SALCR's
            second run builds a new optimiser, PGM's stage-2 script too.
        start_from: null (the model as the previous epoch left it) or ``best``: the stage
            starts from ``checkpoints/best.pt``, the evaluated epoch with the highest mAP
            so far, as PGM's stage-2 script reloads stage 1's best model. That epoch is
            chosen ON THE TEST SET (needs ``evaluation.keep_best: true`` and evaluations
            in the earlier stages): offered to reproduce such methods, not as a practice.
        jitter_views: this stage's colour-jittered views (null: ``train.jitter_views``).
    """

    name: str = "train"
    epochs: int = 1
    iters_per_epoch: int | None = None
    ltg_p: float = 0.0
    lr: float | None = None
    lr_steps: list[int] | None = None
    reset_optimizer: bool = False
    start_from: str | None = None
    jitter_views: list[str] | None = None


STAGE_COMPONENTS = ("clusterer", "associator")
STAGE_KEYS = (
    *[f.name for f in dataclasses.fields(StageSettings)],
    "sampler",
    "losses",
    *STAGE_COMPONENTS,
)


@dataclass(frozen=True)
class StageListKey:
    """``stages: [{name, epochs, sampler, losses, clusterer, associator, ...}, ...]``."""


@dataclass(frozen=True)
class ScalarKey:
    """A top-level scalar (name, seed, device, ...)."""

    types: tuple[type, ...]
    default: Any
    doc: str
    check: Callable[[Any, str], Any] | None = None  # (value, where) -> raises when out of range


@dataclass(frozen=True)
class ComponentKey:
    """A section naming one registered part: ``{type: name, **kwargs}`` or null."""

    registry: Registry
    default: Any = None
    extra: tuple[str, ...] = ()  # keys the engine reads besides the constructor's


@dataclass(frozen=True)
class ComponentListKey:
    """A list of parts, e.g. ``losses: [{type: cluster_contrast, weight: 1.0}]``."""

    registry: Registry
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class SettingsKey:
    """A section backed by a settings dataclass (its fields are the valid keys)."""

    cls: type


def check_not_blank(value: Any, where: str) -> None:
    """A path that is empty or blank (``output_dir=$OUT`` with ``OUT`` unset) would be the
    current folder, silently (audit IA): refused."""
    if isinstance(value, str) and not value.strip():
        raise ConfigError(
            f"{where} is empty, which would mean the current folder; give a folder (e.g. "
            f"output_dir=runs), or leave the key out for its default"
        )


def check_run_name(value: Any, where: str) -> None:
    """A recipe name names its run folders (``<output_dir>/<name>-<time>``): one plain
    folder-name part, so that ``--resume`` finds them again."""
    if value is None:
        return
    if not value or value in (".", "..") or any(c in value for c in "/\\\0"):
        raise ConfigError(
            f"{where} is {value!r}; a recipe name names its run folders "
            f"(<output_dir>/<name>-<time>), so it is one folder name without '/' or '\\'; "
            f"put the runs elsewhere with output_dir=..."
        )


SCHEMA: dict[str, Any] = {
    "name": ScalarKey((str,), None, "recipe name (defaults to the file name)", check_run_name),
    "description": ScalarKey((str,), "", "one line shown by `uvireid list`"),
    "seed": ScalarKey((int,), 1, "seed of Python, NumPy and torch", check_seed),
    "device": ScalarKey((str,), "auto", "auto | cpu | cuda | cuda:N"),
    "output_dir": ScalarKey((str,), "runs", "parent folder of run folders", check_not_blank),
    "data": ComponentKey(DATASETS),
    "backbone": ComponentKey(BACKBONES),
    "clusterer": ComponentKey(CLUSTERERS),
    "associator": ComponentKey(ASSOCIATORS),
    "refine": ComponentKey(RERANKERS),
    "losses": ComponentListKey(LOSSES, extra=("weight",)),
    "stages": StageListKey(),
    "reranker": ComponentKey(RERANKERS),
    "train": SettingsKey(TrainSettings),
    "evaluation": SettingsKey(EvalSettings),
}

#: old dotted key -> new dotted key; an old key is an error that names the new one
RENAMED_KEYS: dict[str, str] = {
    "dataset": "data",
    "model": "backbone",
    "rerank": "reranker",
    "eval": "evaluation",
    "test": "evaluation",
    "optimizer": "train",
    "train.max_epoch": "train.epochs",
    "train.max_epochs": "train.epochs",
    "train.train_iter": "train.iters_per_epoch",
    "train.iters": "train.iters_per_epoch",
    "train.img_h": "train.height",
    "train.img_w": "train.width",
    "evaluation.num_trials": "evaluation.trials",
    "evaluation.eval_step": "evaluation.every",
    "evaluation.mode": "evaluation.protocol",
}

# ---------------------------------------------------------------------------------------
# Loading and merging
# ---------------------------------------------------------------------------------------


class Provenance(dict):
    """Dotted key -> the file (or override) that last set it."""

    def source(self, dotted: str) -> str:
        parts = dotted.split(".")
        while parts:
            key = ".".join(parts)
            if key in self:
                return self[key]
            parts.pop()
        return self.get("", "the recipe")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-4`` as a float as YAML 1.2 does (YAML 1.1,
    PyYAML's dialect, wants ``1.0e-4`` and silently gives the string '1e-4'), and refusing
    a key given twice in one mapping (PyYAML keeps the last one without a word, so a second
    ``train:`` section silently dropped the first one's settings)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:  # the mapping's own keys (a << merge may repeat)
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                mark = key_node.start_mark
                first = seen.setdefault((key_node.tag, key_node.value), mark)
                if first is not mark:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"duplicate key '{key_node.value}' (first on line {first.line + 1}): "
                        f"YAML keeps only the last one; merge the two into one",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    """YAML 1.1 reads ``010`` as octal 8 and ``1:30`` as base-60 90; YAML 1.2 has neither.
    Both are refused rather than read either way (``0x10`` is read as hexadecimal)."""
    text = str(loader.construct_scalar(node)).replace("_", "")
    body = text.lstrip("+-")
    if ":" in body or (len(body) > 1 and body[0] == "0" and body[1].isdigit()):
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"integer {text!r}: YAML 1.1 reads a leading 0 as octal and a:b as base 60; "
            f"write the number without leading zeros (or quote it for a string; on a "
            f"command line inside the argument's own quotes: \"key='010'\")",
            node.start_mark,
        )
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _Dumper(yaml.SafeDumper):
    """Writes what :class:`_Loader` reads back as the same value: a string that the
    loader would read as a number (``'1e-4'``, YAML 1.1's dumper leaves it bare) is
    quoted."""


_Dumper.yaml_implicit_resolvers = {k: list(v) for k, v in _Loader.yaml_implicit_resolvers.items()}


def _load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _tab_hint(exc: yaml.YAMLError) -> str:
    """The fix of PyYAML's "found character '\\t' that cannot start any token"."""
    return "; YAML indents with spaces, not tabs" if "'\\t'" in str(exc) else ""


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"recipe file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(
            f"{path} is a folder, not a recipe file; name a .yaml file (a run folder's "
            f"recipe is its config.yaml)"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not a text file in UTF-8 ({exc.reason} at byte {exc.start}); a recipe "
            f"is YAML text"
        ) from None
    except OSError as exc:
        raise ConfigError(f"recipe file {path} cannot be read ({exc.strerror})") from None
    try:
        data = _load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}{_tab_hint(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must hold a mapping of sections (data:, backbone:, ...), "
            f"got a {type(data).__name__}"
        )
    return data


def _record(prov: Provenance, value: Any, prefix: str, source: str) -> None:
    prov[prefix] = source
    if isinstance(value, Mapping):
        for k, v in value.items():
            if k != DELETE_KEY:
                _record(prov, v, f"{prefix}.{k}" if prefix else str(k), source)


def merge(
    base: Any, child: Any, prov: Provenance | None = None, prefix: str = "", source: str = ""
) -> Any:
    """Merge ``child`` onto ``base`` (mappings deeply; lists and scalars replaced, but a
    mapping of indices onto a list refines those items: ``stages: {1: {epochs: 30}}``).

    ``_delete_: true`` in a child mapping, or a change of its ``type``, replaces the
    base mapping whole. Returns a new object; ``prov`` records who set each key.
    """
    if isinstance(base, Mapping) and isinstance(child, Mapping):
        child = dict(child)
        replace = child.pop(DELETE_KEY, False)
        if not isinstance(replace, bool):
            raise ConfigError(
                f"{source or 'the recipe'}: {prefix + '.' if prefix else ''}{DELETE_KEY} must be "
                f"true or false (unquoted), got {replace!r}"
            )
        if "type" in child and "type" in base and child["type"] != base["type"]:
            replace = True
        if replace:
            if prov is not None:
                for key in [k for k in prov if k == prefix or k.startswith(prefix + ".")]:
                    if prefix:
                        del prov[key]
                _record(prov, child, prefix, source)
            out = merge({}, child, prov, prefix, source)
            if replace is True and _stage_part(prefix):  # True: given, and true
                out[DELETE_KEY] = True  # _validate_stages: not a refinement of the top-level part
            return out
        out = copy.deepcopy(dict(base))
        for key, value in child.items():
            sub = f"{prefix}.{key}" if prefix else str(key)
            out[key] = merge(base.get(key), value, prov, sub, source)
        return out
    if isinstance(base, list) and _index_mapping(child):
        # ``stages: {1: {epochs: 30}}`` refines items of the base's list (a derived
        # recipe changes one stage without restating the list)
        out = copy.deepcopy(base)
        seen: dict[int, Any] = {}
        for key, value in child.items():
            i = int(key)
            if i in seen:  # 1 and "1" (or 0x1) are two keys to YAML, one item here (audit IA)
                raise ConfigError(
                    f"{source or 'the recipe'}: {prefix}.{i} is given twice (as {seen[i]!r} "
                    f"and {key!r}); give each item once"
                )
            seen[i] = key
            if not 0 <= i < len(out):
                raise ConfigError(
                    f"{source or 'the recipe'}: {prefix}.{key} refines item {i} of "
                    + _list_bounds(prefix, len(out))
                )
            out[i] = merge(out[i], value, prov, f"{prefix}.{i}", source)
        return out
    if prov is not None:
        _record(prov, child, prefix, source)
    if isinstance(child, Mapping):
        keep = _stage_part(prefix)  # _validate_stages reads a stage part's _delete_
        child = {k: v for k, v in child.items() if k != DELETE_KEY or keep}
        return {
            k: merge(None, v, None, f"{prefix}.{k}" if prefix else str(k), source)
            for k, v in child.items()
        }
    return copy.deepcopy(child)


def _stage_part(prefix: str) -> bool:
    """Whether dotted ``prefix`` is a stage's clusterer or associator, whose ``_delete_``
    also means "do not refine the top-level part" (:func:`_validate_stages`)."""
    return re.fullmatch(rf"stages\.\d+\.({'|'.join(STAGE_COMPONENTS)})", prefix) is not None


def _list_bounds(key: str, n: int) -> str:
    """The end of a message about an index past the list ``key`` of ``n`` items."""
    if n == 0:
        return f"an empty list; set it whole: {key}=[...]"
    return f"a list of {n} item(s); use an index 0..{n - 1}"


def _index_mapping(value: Any) -> bool:
    """A non-empty mapping whose keys are all list indices (0, 1, "2")."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(
            (isinstance(k, int) and not isinstance(k, bool))
            or (isinstance(k, str) and k.isascii() and k.isdigit())
            for k in value
        )
    )


def is_builtin_name(text: str | os.PathLike) -> bool:
    """Whether ``text`` names a built-in recipe (a bare name, not a path): it then means
    that recipe even where the current folder holds a file or folder of the same name
    (``uvireid run demo output_dir=demo`` leaves a ``demo/`` folder behind)."""
    name = str(text)
    return "/" not in name and os.sep not in name and name in RECIPES


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A recipe file: the name of a registered recipe (``salcr``), or an existing file."""
    p = Path(name_or_path)
    name = str(name_or_path)
    if is_builtin_name(name):
        return Path(RECIPES.get(name)())
    if p.is_file():
        return p
    if p.suffix in (".yaml", ".yml") or os.sep in name:
        if p.stem in RECIPES:  # `uvireid run recipes/salcr.yaml` after pip install (audit KD)
            raise ConfigError(
                f"recipe file {p} does not exist; the built-in recipe '{p.stem}' is named "
                f"without a path: uvireid run {p.stem} (a recipes/ folder exists in a "
                f"source checkout only; uvireid run {p.stem} --dry-run > my.yaml writes an "
                f"editable copy)"
            )
        raise ConfigError(
            f"recipe file {p} does not exist; give a path to a YAML file or the name of a "
            f"built-in recipe ({', '.join(RECIPES.names())})"
        )
    raise ConfigError(RECIPES._unknown_message(name) + " (or give a path to a YAML file)")


def _drop_inherited_copies(data: Any) -> None:
    """Drop each stage's copy of a part equal to the same file's top-level one: a
    resolved config.yaml gives every stage its own copy of the parts it inherited, and
    those copies won over a later change of the top-level part (`uvireid run RUN
    clusterer.eps=0.3`, an edited copy of config.yaml, a recipe with ``_base_:
    RUN/config.yaml``: the stages trained with the old eps; audits BF, BK). Without the
    copy the stage inherits the top-level part, which is what the copy said."""
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        return
    for stage in data["stages"]:
        for comp in STAGE_COMPONENTS:
            top = data.get(comp)
            if isinstance(stage, dict) and top is not None and stage.get(comp) == top:
                stage.pop(comp)


def load_raw(path: str | os.PathLike, _stack: tuple[Path, ...] = ()) -> tuple[dict, Provenance]:
    """Read a recipe and its ``_base_`` files, merged, without validation."""
    path = Path(path).resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"_base_ inheritance loops: {chain}")
    return _with_bases(_read_yaml(path), path, _stack)


def _with_bases(data: dict, path: Path, _stack: tuple[Path, ...]) -> tuple[dict, Provenance]:
    """The recipe ``data`` read from ``path``, merged over its ``_base_`` files."""
    _drop_inherited_copies(data)
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    prov = Provenance()
    for base in bases:
        base_path = (path.parent / base).resolve()
        builtin = RECIPE_DIR / (base if base.endswith((".yaml", ".yml")) else f"{base}.yaml")
        if not base_path.exists() and not os.path.isabs(base) and builtin.is_file():
            # a user's recipe building on a built-in one after `pip install` (the package's
            # folder is nowhere near it): `_base_: salcr.yaml`
            base_path = builtin.resolve()
        if not base_path.exists():
            raise ConfigError(
                f"{path}: _base_ file {base} not found (looked for {base_path}); "
                f"_base_ paths are relative to the file that names them, or name a "
                f"built-in recipe ({', '.join(p.stem for p in sorted(RECIPE_DIR.glob('*.yaml')))})"
            )
        base_data, base_prov = load_raw(base_path, (*_stack, path))
        merged = merge(merged, base_data, None)
        prov.update(base_prov)
    merged = merge(merged, data, prov, "", str(path))
    return merged, prov


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is read as YAML (lists, booleans, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value, e.g. train.epochs=10")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w-]+)*", key):
        raise ConfigError(f"override key {key!r} is not a dotted key like train.epochs")
    try:
        value = _load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override {text!r}: value is not valid YAML ({exc}){_tab_hint(exc)}"
        ) from None
    if re.search(r"(^|\s)#", raw) and "#" not in str(value):
        raise ConfigError(
            f"override {text!r}: YAML reads ' #' as the start of a comment, which would "
            f"drop the rest of the value; quote the value inside the argument's quotes: "
            f"\"{key}='{raw.strip()}'\""
        )
    return key, value


def _names_a_part(dotted: str) -> bool:
    """Whether dotted ``dotted`` is a registered part a recipe may give by its name alone
    (``clusterer: dbscan``): a top-level part, a stage's clusterer, associator or sampler,
    or a loss."""
    if isinstance(SCHEMA.get(dotted), ComponentKey) or _stage_part(dotted):
        return True
    return re.fullmatch(r"(stages\.\d+\.)?losses\.\d+|stages\.\d+\.sampler", dotted) is not None


def apply_override(cfg: dict, prov: Provenance, key: str, value: Any) -> None:
    """Set dotted ``key`` in ``cfg``; list items are addressed by index (``losses.0.weight``).

    Only the leaf may be new; its validity is checked by :func:`validate`.
    """
    parts = key.split(".")
    if parts[0] == "losses" and len(parts) > 1 and not cfg.get("losses") and cfg.get("stages"):
        raise ConfigError(
            f"{OVERRIDE_SOURCE} {key}=...: this recipe has no top-level losses; its losses "
            f"are in its stages: stages.N.{key} (e.g. stages.{len(cfg['stages']) - 1}."
            f"{key}; `uvireid run RECIPE --dry-run` shows them)"
        )
    if parts[0] == "stages" and len(parts) > 1 and not cfg.get("stages"):
        raise ConfigError(
            f"{OVERRIDE_SOURCE} {key}=...: this recipe has no stages; it trains one stage "
            f"from train.epochs, train.batch_ids / train.images_per_id and the top-level "
            f"losses (losses.N....): set those instead"
        )
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = node[_index(part, node, here)]
        else:
            if part not in node or node[part] is None:
                _check_known_path(here, OVERRIDE_SOURCE)
                following = parts[i + 1]
                if following.isascii() and following.isdigit():
                    # an item of a list the recipe leaves to its default: a section made
                    # here would read {'0': ...} (audit IA)
                    raise ConfigError(
                        f"{OVERRIDE_SOURCE} {key}=...: {here} is not set in the recipe (its "
                        f"default applies), so it has no item {following} to change; set it "
                        f"whole: {here}=[...] (`uvireid run RECIPE --dry-run` shows the "
                        f"default)"
                    )
                node[part] = {}
                prov[here] = OVERRIDE_SOURCE  # a section the command line made
            node = node[part]
        if isinstance(node, str) and _names_a_part(here):
            # a part given by name (clusterer=kmeans, or `clusterer: dbscan` in a recipe)
            raise ConfigError(
                f"{OVERRIDE_SOURCE} {key}=...: {here} is given by its name only "
                f"({node!r}); to set its keys, give it as a mapping: "
                f"{here}={{type: {node}, {parts[i + 1]}: ...}}"
            )
        if not isinstance(node, (dict, list)):
            raise ConfigError(
                f"{OVERRIDE_SOURCE} {key}=...: {here} is a {type(node).__name__}, not a section"
            )
    leaf = parts[-1]
    given = value
    if isinstance(node, list):
        i = _index(leaf, node, key)
        if isinstance(node[i], dict) and isinstance(value, dict):
            # a list item that is a mapping (a stage, a loss) merges as every mapping does:
            # stages.1={epochs: 3} changes the epochs, not the whole stage
            value = merge(node[i], value, None, key, OVERRIDE_SOURCE)
        node[i] = value
    else:
        old = node.get(leaf)
        if isinstance(old, dict) and isinstance(value, dict):
            value = merge(old, value, None, key, OVERRIDE_SOURCE)
        elif isinstance(old, list) and _index_mapping(value):
            # stages={1: {epochs: 3}}: refines item 1
            value = merge(old, value, None, key, OVERRIDE_SOURCE)
        if leaf == "type" and old is not None and value != old:
            # X.type=new replaces the part, as X={type: new} does: the old part's keywords
            # (from the recipe files) mean nothing to the new one; the command line's own
            # keywords for X stay
            prefix = ".".join(parts[:-1])
            # a loss's weight is the engine's, not the part's: it stays with the new part
            engine = ("weight",) if len(parts) >= 3 and parts[-3] == "losses" else ()
            for k in [k for k in node if k != "type" and k not in engine]:
                if prov.source(f"{prefix}.{k}") != OVERRIDE_SOURCE:
                    del node[k]
        node[leaf] = value
    if not isinstance(given, Mapping):
        # the value replaces the node whole (clusterer=dbscan): nothing under it still
        # comes from the recipe files
        for k in [k for k in prov if k.startswith(key + ".")]:
            del prov[k]
    _record(prov, given, key, OVERRIDE_SOURCE)


def _index(part: str, seq: list, where: str) -> int:
    if not (part.isascii() and part.isdigit()) or int(part) >= len(seq):
        raise ConfigError(
            f"{OVERRIDE_SOURCE}: {where} addresses "
            + _list_bounds(where.rsplit(".", 1)[0], len(seq))
        )
    return int(part)


def _check_known_path(dotted: str, source: str) -> None:
    top = dotted.split(".")[0]
    if top not in SCHEMA:
        _unknown(top, list(SCHEMA), source, what="section")


# ---------------------------------------------------------------------------------------
# Validation and resolution
# ---------------------------------------------------------------------------------------


def _unknown(dotted: str, valid: Sequence[str], source: str, what: str = "key") -> None:
    if dotted in RENAMED_KEYS:
        raise ConfigError(f"{source}: '{dotted}' was renamed to '{RENAMED_KEYS[dotted]}'")
    leaf = dotted.rsplit(".", 1)[-1]
    prefix = dotted[: -len(leaf)]
    near = closest(leaf, valid, n=1)
    hint = f"; did you mean '{prefix}{near[0]}'?" if near else ""
    raise ConfigError(
        f"{source}: unknown {what} '{dotted}'{hint}; valid keys here: {', '.join(valid)}"
    )


def _check_scalar(name: str, spec: ScalarKey, value: Any, source: str) -> None:
    if value is None and spec.default is None:
        return
    if isinstance(value, bool) and bool not in spec.types:
        ok = False
    else:
        ok = isinstance(value, spec.types)
    if not ok:
        want = " or ".join(t.__name__ for t in spec.types)
        hint = ""
        if isinstance(value, Mapping) and str in spec.types:
            hint = (
                " (YAML reads 'a: b' as a mapping: quote the value, on a command line inside "
                "the argument's quotes: \"key='a: b'\")"
            )
        elif isinstance(value, bool) and str in spec.types:
            hint = (
                " (YAML reads yes/no/on/off/true/false as a boolean: quote the word, on a "
                "command line inside the argument's quotes: \"key='off'\")"
            )
        raise ConfigError(f"{source}: '{name}' must be {want} ({spec.doc}), got {value!r}{hint}")
    if spec.check is not None:
        spec.check(value, f"{source}: '{name}'")


def _validate_component(
    dotted: str, reg: Registry, value: Any, prov: Provenance, extra: tuple[str, ...] = ()
) -> dict | None:
    if value is None:
        return None
    source = prov.source(dotted)
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{source}: '{dotted}' names a {reg.kind}: a mapping like {{type: NAME, ...}} "
            f"or null, got {value!r}"
        )
    if "type" not in value:
        raise ConfigError(
            f"{source}: '{dotted}' has no 'type'; choose a {reg.kind}: {', '.join(reg.names())}"
        )
    kwargs = {k: v for k, v in value.items() if k != "type" and k not in extra}
    name = value["type"]
    try:
        reg.entry(name)
    except RegistryError as exc:
        raise ConfigError(f"{prov.source(dotted + '.type')}: {dotted}.type: {exc}") from None
    valid = inspect_params(reg, name)  # None: the constructor takes **kwargs (any key)
    if valid is not None:
        for key in kwargs:
            if key not in valid:
                full = f"{dotted}.{key}"
                near = closest(key, ["type", *valid, *extra], n=1)
                hint = f"; did you mean '{dotted}.{near[0]}'?" if near else ""
                raise ConfigError(
                    f"{prov.source(full)}: unknown key '{full}': {reg.kind} '{name}' has no "
                    f"keyword '{key}'{hint}; valid keys: {', '.join(['type', *valid, *extra])}"
                )
    missing = [k for k in reg.required(name) if k not in kwargs]
    if missing:
        raise ConfigError(
            f"{source}: {reg.kind} '{name}' in '{dotted}' needs {', '.join(missing)} "
            f"(e.g. {dotted}.{missing[0]}=...)"
        )
    resolved = {"type": name, **reg.defaults(name), **kwargs}
    for key in extra:
        if key in value:
            resolved[key] = value[key]
    if isinstance(resolved.get("device"), str):  # a part's own device, e.g. clusterer.device
        check_device(
            resolved["device"],
            f"{prov.source(dotted + '.device')}: {dotted}.device",
            f"{dotted}.device",
        )
    return resolved


def inspect_params(reg: Registry, name: str) -> list[str] | None:
    """Keyword names accepted by ``name``'s constructor (None when it takes ``**kwargs``)."""
    params = reg.signature(name).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _validate_settings(dotted: str, cls: type, value: Any, prov: Provenance) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{prov.source(dotted)}: '{dotted}' must be a mapping, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            _unknown(f"{dotted}.{key}", list(fields), prov.source(f"{dotted}.{key}"))
    obj = cls(**value)
    out = dataclasses.asdict(obj)
    for key, f in fields.items():
        want = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if not _type_ok(want, out[key]):
            raise ConfigError(
                f"{prov.source(f'{dotted}.{key}')}: '{dotted}.{key}' must be "
                f"{_TYPE_WORDS.get(want, want)}, got {out[key]!r}"
            )
        rule = _RANGES.get(f"{cls.__name__}.{key}")
        if rule is not None and out[key] is not None and not rule[0](out[key]):
            value = out[key]
            finite = isinstance(value, float) and not math.isfinite(value)
            raise ConfigError(
                f"{prov.source(f'{dotted}.{key}')}: '{dotted}.{key}' must be "
                f"{'a finite number ' if finite else ''}{rule[1]}, got {value!r}"
            )
    return out


def _at_least(n: float, strict: bool = False):
    """``v > n`` (strict) or ``v >= n``, and finite (``lr: 1e400`` reads as inf)."""
    if strict:
        return lambda v: n < v < math.inf
    return lambda v: n <= v < math.inf


def _known_protocol(name: str) -> bool:
    from uvireid.evaluation.protocols import PROTOCOLS

    return name in ("auto", "none") or name in PROTOCOLS


#: value ranges of the settings (checked with the recipe, not when a value is first used:
#: ``train.iters_per_epoch=0`` used to train nothing and evaluate an untrained model)
#: the resampling filters of ``train.resize`` / ``train.test_resize``
RESIZE_FILTERS = ("bilinear", "bicubic", "lanczos")
#: the views ``jitter_views`` may name (train-wide and per stage)
JITTER_VIEWS = ("visible_ca", "infrared")
_JITTER_VIEWS_RULE = (
    lambda v: isinstance(v, list) and set(v) <= set(JITTER_VIEWS),
    "a list of visible_ca, infrared (the colour-jittered views; [] for none)",
)

_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "TrainSettings.epochs": (_at_least(0), ">= 0"),
    "TrainSettings.iters_per_epoch": (_at_least(1), ">= 1"),
    "TrainSettings.lr": (_at_least(0), ">= 0"),
    "TrainSettings.weight_decay": (_at_least(0), ">= 0"),
    "TrainSettings.lr_gamma": (_at_least(0, True), "> 0"),
    "TrainSettings.lr_steps": (lambda v: all(s >= 0 for s in v), "a list of epochs >= 0"),
    "TrainSettings.optimizer": (lambda v: v in OPTIMIZERS, "adam, adamw or sgd"),
    "TrainSettings.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "TrainSettings.warmup_epochs": (_at_least(0), ">= 0 (0: no warm-up)"),
    "TrainSettings.warmup_factor": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "TrainSettings.batch_ids": (_at_least(1), ">= 1"),
    "TrainSettings.images_per_id": (_at_least(1), ">= 1"),
    "TrainSettings.height": (_at_least(8), "an image height >= 8"),
    "TrainSettings.width": (_at_least(8), "an image width >= 8"),
    "TrainSettings.workers": (_at_least(0), ">= 0"),
    "TrainSettings.threads": (_at_least(0), ">= 0 (0: torch's default)"),
    "TrainSettings.pad": (_at_least(0), ">= 0"),
    "TrainSettings.erasing_p": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "TrainSettings.gray_p": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "TrainSettings.jitter": (_at_least(0), ">= 0"),
    "TrainSettings.jitter_views": _JITTER_VIEWS_RULE,
    "TrainSettings.hue": (lambda v: 0 <= v <= 0.5, "in [0, 0.5] (turns of the colour wheel)"),
    "TrainSettings.extract_batch": (_at_least(1), ">= 1"),
    "TrainSettings.resize": (lambda v: v in RESIZE_FILTERS, "bilinear, bicubic or lanczos"),
    "TrainSettings.test_resize": (
        lambda v: v in RESIZE_FILTERS,
        "bilinear, bicubic or lanczos (or null: train.resize)",
    ),
    "TrainSettings.collapse_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "EvalSettings.protocol": (
        _known_protocol,
        "auto, none (train without evaluating) or a protocol: sysu-all, sysu-indoor, "
        "regdb-v2i, regdb-i2v, llcm-v2i, llcm-i2v, llcm-v2i-deen",
    ),
    "EvalSettings.trials": (_at_least(1), ">= 1"),
    "EvalSettings.feature_head": (
        lambda v: v in ("bn_feat", "pool"),
        "bn_feat (the BN neck's output) or pool (the pooled feature before it)",
    ),
    "EvalSettings.shot": (lambda v: v in ("single", "multi"), "single or multi"),
    "EvalSettings.sampler": (lambda v: v in ("seeded", "official"), "seeded or official"),
    "EvalSettings.every": (_at_least(0), ">= 0 (0: only at the end)"),
    "StageSettings.iters_per_epoch": (_at_least(1), ">= 1 (or null: train.iters_per_epoch)"),
    "StageSettings.ltg_p": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "StageSettings.lr": (_at_least(0), ">= 0 (or null: train.lr)"),
    "StageSettings.lr_steps": (
        lambda v: all(s >= 0 for s in v),
        "a list of epochs >= 0 (or null: train.lr_steps)",
    ),
    "StageSettings.jitter_views": _JITTER_VIEWS_RULE,
}


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "str | None": "a string or null",
    "int | None": "an integer or null",
    "bool | None": "true, false or null",
    "list[int]": "a list of integers",
    "list[str]": "a list of strings",
}


def _type_ok(want: str, val: Any) -> bool:
    """Check a settings value against its annotation (the few forms the settings use)."""
    if want.endswith(" | None"):
        return val is None or _type_ok(want[: -len(" | None")], val)
    if want.startswith("list[") and want.endswith("]"):
        return isinstance(val, list) and all(_type_ok(want[5:-1], v) for v in val)
    if want == "bool":
        return isinstance(val, bool)
    if want == "int":
        return isinstance(val, int) and not isinstance(val, bool)
    if want == "float":
        return isinstance(val, (int, float)) and not isinstance(val, bool)
    if want == "str":
        return isinstance(val, str)
    return True


def validate(cfg: Mapping[str, Any], prov: Provenance | None = None) -> dict:
    """Check every key of a merged recipe and return it resolved (all defaults filled)."""
    prov = prov or Provenance()
    for key in cfg:
        if key not in SCHEMA:
            _unknown(str(key), list(SCHEMA), prov.source(str(key)), what="section")
    out: dict[str, Any] = {}
    for key, spec in SCHEMA.items():
        value = cfg.get(key, None)
        if isinstance(spec, ScalarKey):
            value = spec.default if key not in cfg else value
            _check_scalar(key, spec, value, prov.source(key))
            out[key] = value
        elif isinstance(spec, ComponentKey):
            out[key] = _validate_component(key, spec.registry, value, prov, spec.extra)
        elif isinstance(spec, ComponentListKey):
            if value is None:
                value = []
            if not isinstance(value, list):
                raise ConfigError(
                    f"{prov.source(key)}: '{key}' must be a list of {spec.registry.kind} "
                    f"mappings, got {value!r}"
                )
            out[key] = [
                _validate_component(f"{key}.{i}", spec.registry, item, prov, spec.extra)
                for i, item in enumerate(value)
            ]
            if key == "losses":
                _check_loss_weights(out[key], key, prov)
        elif isinstance(spec, SettingsKey):
            out[key] = _validate_settings(key, spec.cls, value, prov)
        elif isinstance(spec, StageListKey):
            out[key] = _validate_stages(cfg, value, prov)
    train = out.get("train") or {}
    if train.get("compile_losses") and train.get("cuda_graphs"):
        raise ConfigError(
            f"{prov.source('train.cuda_graphs')}: train.compile_losses and train.cuda_graphs "
            f"are two ways to cut the losses' kernel launches and do not combine; set one of "
            f"them to false"
        )
    if (
        train.get("optimizer", "adam") != "sgd"
        and prov.get("train.momentum") is not None
        and train.get("momentum") != TrainSettings().momentum  # a run's config.yaml lists it
    ):
        raise ConfigError(
            f"{prov.source('train.momentum')}: train.momentum is SGD's and does nothing with "
            f"train.optimizer={train['optimizer']}; set train.optimizer=sgd or drop it"
        )
    if out["stages"]:
        if out.get("losses"):
            raise ConfigError(
                f"{prov.source('losses')}: top-level losses do nothing in a recipe with "
                f"stages: each stage trains with its own (stages.N.losses); move them there, "
                f"or set losses: null"
            )
        _check_stage_epochs(out, prov)
        _check_stage_batch(out, prov)
        _check_stage_schedule(out, prov)
    if out["device"] is not None:
        check_device(out["device"], prov.source("device"))
    return out


def _check_start_from_best(
    cfg: Mapping[str, Any], earlier: list[dict], where: str, prov: Provenance
) -> None:
    """``start_from: best`` needs a ``best.pt`` before the stage starts: keep_best, a
    protocol, and an evaluation within the earlier stages' epochs (checked here, not after
    they have trained)."""
    ev = cfg.get("evaluation") or {}
    if not isinstance(ev, Mapping):  # read before the section is validated
        raise ConfigError(
            f"{prov.source('evaluation')}: 'evaluation' must be a mapping, got {ev!r}"
        )
    src = prov.source(where + ".start_from")
    first = sum(int(s["epochs"]) for s in earlier)
    if first == 0:
        raise ConfigError(
            f"{src}: {where} starts at epoch 0, with no earlier epoch to start from; "
            f"start_from: best is for a stage after others that train"
        )
    if not ev.get("keep_best") or ev.get("protocol") == "none":
        raise ConfigError(
            f"{src}: {where}.start_from: best loads checkpoints/best.pt, which only "
            f"evaluation.keep_best: true writes (with an evaluation protocol); set it, or "
            f"remove start_from"
        )
    every = ev.get("every", EvalSettings.every)
    if not isinstance(every, int) or isinstance(every, bool) or not 1 <= every <= first:
        raise ConfigError(
            f"{src}: {where}.start_from: best needs an evaluation before epoch {first}, where "
            f"the stage starts; evaluation.every is {every!r}: set it to 1..{first}"
        )


def _validate_stages(cfg: Mapping[str, Any], value: Any, prov: Provenance) -> list[dict]:
    """Each stage: its settings, sampler, losses and parts (inherited when absent)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(
            f"{prov.source('stages')}: 'stages' must be a list of stage mappings "
            f"({{name, epochs, sampler, losses, ...}}), got {value!r}"
        )
    out = []
    names: set[str] = set()
    for i, stage in enumerate(value):
        where = f"stages.{i}"
        if not isinstance(stage, Mapping):
            raise ConfigError(f"{prov.source(where)}: '{where}' must be a mapping, got {stage!r}")
        for key in stage:
            if key not in STAGE_KEYS:
                _unknown(f"{where}.{key}", list(STAGE_KEYS), prov.source(f"{where}.{key}"))
        plain = {
            k: v
            for k, v in stage.items()
            if k in {f.name for f in dataclasses.fields(StageSettings)}
        }
        res = _validate_settings(where, StageSettings, plain, prov)
        if res["epochs"] < 0:
            raise ConfigError(f"{prov.source(where + '.epochs')}: {where}.epochs must be >= 0")
        if not res["name"].strip():  # it names the stage in the metrics, logs and plots
            raise ConfigError(
                f"{prov.source(where + '.name')}: {where}.name is blank; give the stage a "
                f"name (e.g. dcl, salcr)"
            )
        if res["name"] in names:
            raise ConfigError(f"{prov.source(where)}: two stages are named '{res['name']}'")
        names.add(res["name"])
        sampler = _validate_sampler(where, stage.get("sampler"), prov)
        if res.get("start_from") not in (None, "best"):
            raise ConfigError(
                f"{prov.source(where + '.start_from')}: {where}.start_from must be null (the "
                f"previous epoch's model) or best, got {res['start_from']!r}"
            )
        if res.get("start_from") == "best":
            _check_start_from_best(cfg, out, where, prov)
        res["sampler"] = sampler
        for comp in STAGE_COMPONENTS:
            spec = SCHEMA[comp]
            raw = stage[comp] if comp in stage else cfg.get(comp)
            top = cfg.get(comp)
            delete = False
            if comp in stage and isinstance(raw, Mapping) and DELETE_KEY in raw:
                # as merge reads it at the top level: a boolean, false a no-op (audit IA)
                delete = raw[DELETE_KEY]
                if not isinstance(delete, bool):
                    raise ConfigError(
                        f"{prov.source(f'{where}.{comp}')}: {where}.{comp}.{DELETE_KEY} must "
                        f"be true or false (unquoted), got {delete!r}"
                    )
                raw = {k: v for k, v in raw.items() if k != DELETE_KEY}
            if (
                comp in stage
                and isinstance(raw, Mapping)
                and raw.get("type", top.get("type") if isinstance(top, Mapping) else None)
                == (top.get("type") if isinstance(top, Mapping) else object())
                and not delete
            ):
                # keys without a type, or with the top-level part's own type, refine the
                # top-level part: stages.1.clusterer.eps=0.5 (naming the same type kept
                # none of its settings: stages.1.associator.type=otla_dual turned the
                # demo's CMFP(tr) off, audit AA); another type replaces it
                raw = {**top, **raw}
            res[comp] = _validate_component(
                f"{where}.{comp}" if comp in stage else comp, spec.registry, raw, prov, spec.extra
            )
        losses = stage.get("losses", [])
        if not isinstance(losses, list) or not losses:
            raise ConfigError(
                f"{prov.source(where)}: '{where}.losses' must be a non-empty list of loss "
                f"mappings, e.g. [{{type: cluster_contrast, weight: 1.0}}]"
            )
        res["losses"] = [
            _validate_component(f"{where}.losses.{j}", LOSSES, item, prov, ("weight",))
            for j, item in enumerate(losses)
        ]
        _check_loss_weights(res["losses"], f"{where}.losses", prov)
        out.append(res)
    return out


def _check_loss_weights(items: list[dict], dotted: str, prov: Provenance) -> None:
    """Each loss's ``weight`` (default 1.0, written into the resolved config): a finite
    number >= 0, for a stage's losses and the top-level ones alike."""
    for j, item in enumerate(items):
        item.setdefault("weight", 1.0)
        w = item["weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
            raise ConfigError(
                f"{prov.source(f'{dotted}.{j}.weight')}: '{dotted}.{j}.weight' "
                f"must be a finite number >= 0, got {w!r}"
            )


def _validate_sampler(where: str, value: Any, prov: Provenance) -> dict:
    """A stage's ``sampler`` in :data:`~uvireid.registry.SAMPLERS` (no ``type``: the
    ``identity`` sampler), built once so that a bad value fails here, with its source."""
    dotted = f"{where}.sampler"
    if value is None:
        value = {}
    if isinstance(value, Mapping):
        value = {"type": "identity", **value}
        name = value["type"]
        if isinstance(name, str) and name in SAMPLERS:
            valid = inspect_params(SAMPLERS, name)
            value = {
                k: v
                for k, v in value.items()
                if not (
                    valid is not None
                    and k not in valid
                    and k in _OLD_SAMPLER_DEFAULTS
                    and v is _OLD_SAMPLER_DEFAULTS[k]
                )
            }
    out = _validate_component(dotted, SAMPLERS, value, prov)
    try:
        part = SAMPLERS.build(out)
        if getattr(part, "pairs", False):
            # the trainer's batches for an epoch whose association linked nothing
            from uvireid.data.samplers import Batches

            unpaired = getattr(type(part), "unpaired", None)
            if not callable(getattr(part, "unpaired", None)):
                raise ConfigError(
                    f"sampler '{out['type']}' pairs its batches (pairs = True) but has no "
                    f"unpaired(labels, cams) for an epoch without cross-modal links; subclass "
                    f"uvireid.data.samplers.Batches, which has one"
                )
            if unpaired is Batches.unpaired and not (
                hasattr(part, "ids") and hasattr(part, "images")
            ):
                raise ConfigError(
                    f"sampler '{out['type']}' pairs its batches and keeps Batches.unpaired, "
                    f"which draws ids x images per modality, but has no ids or images: call "
                    f"super().__init__(ids, images) in its constructor, or override unpaired()"
                )
    except (ConfigError, RegistryError) as exc:
        key = getattr(exc, "key", None)  # the keyword a built-in sampler refused
        if key in out:
            full = f"{dotted}.{key}"
            raise ConfigError(
                f"{prov.source(full)}: '{full}' must be an integer >= 1, got {out[key]!r}"
            ) from None
        raise ConfigError(f"{prov.source(dotted)}: {dotted}: {exc}") from None
    return out


def _check_stage_epochs(out: dict, prov: Provenance) -> None:
    """With stages, the run's epochs are their sum; a different train.epochs is an error."""
    total = sum(s["epochs"] for s in out["stages"])
    source = prov.get("train.epochs")
    if source is not None and out["train"]["epochs"] != total:
        raise ConfigError(
            f"{source}: train.epochs={out['train']['epochs']} but the stages add up to "
            f"{total} epochs; set each stage's epochs (stages.N.epochs=...) instead"
        )
    out["train"]["epochs"] = total


def _check_stage_batch(out: dict, prov: Provenance) -> None:
    """With stages, each stage's sampler sets its batch; a train.batch_ids or
    train.images_per_id set to another value than the default would change nothing
    (a user halving the batch with the learning rate would halve only the rate)."""
    defaults = TrainSettings()
    for key, sampler_key in (("batch_ids", "ids"), ("images_per_id", "images")):
        source = prov.get(f"train.{key}")
        if source is not None and out["train"][key] != getattr(defaults, key):
            now = ", ".join(
                f"{s['name']}: {s['sampler'].get(sampler_key, '-')}" for s in out["stages"]
            )
            raise ConfigError(
                f"{source}: train.{key}={out['train'][key]} does nothing in a recipe with "
                f"stages: each stage's sampler sets its batch (stages.N.sampler."
                f"{sampler_key}; now {now}); set those instead"
            )


def _check_stage_schedule(out: dict, prov: Provenance) -> None:
    """A ``train.lr``, ``train.lr_steps`` or ``train.iters_per_epoch`` override that stages
    replace with their own value (``stages.N.lr``, as PGM's second stage;
    ``stages.N.iters_per_epoch``, as the demo's; a stage with its own ``lr`` or
    ``lr_steps`` follows its own schedule) is refused when it reaches no stage, and warned
    when it reaches only some: the README's rescaling rule, applied to ``train.*`` alone,
    was half applied silently. ``train.lr: 0`` with a stage ``lr`` above 0 is refused: the
    scheduler scales ``train.lr``, so such a stage trained at 0 (audit BS, session 19)."""
    zero = [
        f"stages.{i}.lr={s['lr']} ({s['name']})"
        for i, s in enumerate(out["stages"])
        if s.get("lr") is not None and s["lr"] > 0
    ]
    if out["train"]["lr"] == 0 and zero:
        raise ConfigError(
            f"train.lr is 0 while {', '.join(zero)}: a stage's lr is applied as a factor of "
            f"train.lr, so it would train at 0 too. Set train.lr to a positive value (the "
            f"stages with their own lr keep theirs) and stages.N.lr=0 for a stage to freeze"
        )
    source = prov.get("train.lr_steps")
    if source == OVERRIDE_SOURCE and out["stages"]:
        own = [
            (i, s)
            for i, s in enumerate(out["stages"])
            if s.get("lr") is not None or s.get("lr_steps") is not None
        ]
        names = ", ".join(
            f"stages.{i} ({s['name']}: "
            + (f"lr_steps={s['lr_steps']}" if s.get("lr_steps") is not None else "its own lr")
            + ")"
            for i, s in own
        )
        steps = out["train"]["lr_steps"]
        if own and len(own) == len(out["stages"]):
            raise ConfigError(
                f"{source}: train.lr_steps={steps} reaches no stage: every stage follows its "
                f"own schedule ({names}); set stages.N.lr_steps instead"
            )
        if own:
            logger.warning(
                "train.lr_steps=%s reaches only the stages without their own schedule; %s "
                "keep theirs",
                steps,
                names,
            )
    for key in ("lr", "iters_per_epoch"):
        source = prov.get(f"train.{key}")
        value = out["train"][key]
        if source != OVERRIDE_SOURCE:
            # an override only: a file's value may be a dataset file's, serving several
            # recipes, and a run's config.yaml states every value, used or not
            continue
        own = [
            (i, s)
            for i, s in enumerate(out["stages"])
            if s.get(key) is not None and s[key] != value
        ]
        if not own:
            continue
        names = ", ".join(f"stages.{i}.{key}={s[key]} ({s['name']})" for i, s in own)
        if len(own) == len(out["stages"]):
            raise ConfigError(
                f"{source}: train.{key}={value} reaches no stage: every stage sets its own "
                f"({names}); set those instead"
            )
        logger.warning(
            "train.%s=%s reaches only the stages without their own; %s keep theirs (rescale "
            "those too if that is what you mean)",
            key,
            value,
            names,
        )


def check_device(device: str, source: str = "device", key: str = "device") -> str:
    """Validate a device string now, not deep inside a run. Returns it unchanged.

    ``key`` is how the user sets it, named in the fix: ``device`` (a recipe key or a
    ``KEY=VALUE`` override), ``clusterer.device``, or a command's ``--device`` option."""
    import torch

    fix = f"{key} cpu or {key} auto" if key.startswith("--") else f"{key}=cpu or {key}=auto"

    if device == "auto":
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"{source}: device '{device}' is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{source}: device '{device}' asked for CUDA but torch sees no GPU "
                f"(torch {torch.__version__}); use {fix}"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{source}: device '{device}' does not exist; this machine has "
                f"{torch.cuda.device_count()} GPU(s): cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    elif dev.type == "mps":
        if not (torch.backends.mps.is_built() and torch.backends.mps.is_available()):
            raise ConfigError(
                f"{source}: device '{device}' asked for Apple's MPS, which this torch "
                f"(torch {torch.__version__}) cannot use here; use {fix}"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"{source}: device '{device}' is not supported; use auto, cpu or cuda")
    return device


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is available, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(device)


def _legacy_timm_pooling(cfg: dict, prov: Any) -> None:
    """A run's ``config.yaml`` written before timm backbones had ``pooling`` (session 20)
    reads with ``pooling: legacy``, the rule it trained with: the default ``auto`` pools
    a signed map (ConvNeXt) with timm's head, which would change the run's features on a
    resume or an extract, or refuse its checkpoint (audit CG). Such a file is the
    resolved config of a run: named config.yaml, with every timm setting of its time
    written out (``gem_p``, ``img_size``, ``output_stride``) and no ``pooling``."""
    bb = cfg.get("backbone")
    if (
        isinstance(bb, dict)
        and bb.get("type") == "timm"
        and "pooling" not in bb
        and {"gem_p", "img_size", "output_stride"} <= set(bb)
        and Path(str(prov.source("backbone.type"))).name == "config.yaml"
    ):
        bb["pooling"] = "legacy"


def load_recipe(recipe: str | os.PathLike, overrides: Sequence[str] = ()) -> dict:
    """Load, override, validate and resolve a recipe (a path or a built-in name, or a run
    folder, whose ``config.yaml`` is then the recipe)."""
    folder = Path(recipe)
    if is_builtin_name(recipe):
        path, folder = recipe_path(recipe), Path()  # the built-in recipe, not ./<name>/
    elif folder.is_dir() and (folder / "config.yaml").is_file():
        path = folder / "config.yaml"
    elif folder.is_dir():
        raise ConfigError(
            f"{folder} is a folder without config.yaml: give a recipe file, a built-in "
            f"recipe name, or a run folder (as `uvireid run` writes them)"
        )
    else:
        path = recipe_path(recipe)
    cfg, prov = load_raw(path)
    return _resolved(cfg, prov, path, overrides)


def resolve_recipe(
    data: Mapping[str, Any], source: str | os.PathLike, overrides: Sequence[str] = ()
) -> dict:
    """:func:`load_recipe` of a recipe given as a mapping (a run's manifest records the
    one it started with) rather than a file; ``source`` stands for its file: errors name
    it, its ``_base_`` paths are relative to its folder, and a ``config.yaml`` is read as
    a run's resolved recipe is (its ``train.epochs`` follows the stages).

    Raises:
        ConfigError: as :func:`load_recipe`, or ``data`` is not a mapping.
    """
    path = Path(source).resolve()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a recipe is a mapping of keys, got {type(data).__name__}")
    cfg, prov = _with_bases(copy.deepcopy(dict(data)), path, ())
    return _resolved(cfg, prov, path, overrides)


def _resolved(cfg: dict, prov: Provenance, path: Path, overrides: Sequence[str]) -> dict:
    """The recipe ``cfg`` read from ``path``: overridden, validated and resolved."""
    train = cfg.get("train")
    if (
        cfg.get("stages")
        and isinstance(train, dict)
        and "epochs" in train
        and Path(str(prov.source("train.epochs"))).name == "config.yaml"
    ):
        # a run's resolved config.yaml states train.epochs as the stages' sum; an override
        # of a stage's epochs (on the run folder, its config.yaml, or a recipe whose _base_
        # it is) must be able to change that sum
        train.pop("epochs")
        prov.pop("train.epochs", None)
    _legacy_timm_pooling(cfg, prov)
    for text in overrides:
        key, value = parse_override(text)
        _check_known_path(key, OVERRIDE_SOURCE)
        apply_override(cfg, prov, key, value)
    resolved = validate(cfg, prov)
    if not resolved.get("name"):
        resolved["name"] = path.stem
    _absolute_paths(resolved)
    for comp in STAGE_COMPONENTS:
        top, stages = resolved.get(comp), resolved.get("stages") or []
        if top is not None and stages and all(s.get(comp) != top for s in stages):
            # every stage has a part of its own: a change of the top-level one does
            # nothing (an edited copy of a run's config.yaml whose stages kept theirs)
            logger.warning(
                "%s: the top-level %s (%s) is used by no stage, each stage has its own "
                "(stages.N.%s); change those to change the training",
                path,
                comp,
                top.get("type"),
                comp,
            )
    return resolved


def _absolute_paths(cfg: dict) -> None:
    """``data.root`` and ``evaluation.perm_file`` as absolute paths (``~`` expanded), as
    the run reads them: a run folder's config.yaml then names what it read wherever it is
    used from (audit AQ: ``root: ../synth`` in config.yaml made `extract` from another
    folder read, or generate, another dataset)."""
    builtin = _builtin_dataset((cfg.get("data") or {}).get("type"))
    if isinstance(cfg.get("output_dir"), str):
        # "~/runs" made a folder named "~" in the current one (audit IC)
        cfg["output_dir"] = os.path.expanduser(cfg["output_dir"])
    train = cfg.get("train")
    cache = train.get("image_cache") if isinstance(train, dict) else None
    if isinstance(cache, str) and cache != "auto":
        # "~/cache" is checked by the preflight in $HOME: written there too (audit QO)
        train["image_cache"] = os.path.expanduser(cache)
    for section, key in (("data", "root"), ("evaluation", "perm_file")):
        part = cfg.get(section)
        value = part.get(key) if isinstance(part, dict) else None
        if isinstance(value, str) and not value.strip() and (builtin or section != "data"):
            raise ConfigError(
                f"{section}.{key} is empty, which would mean the current folder; give the "
                f"{'folder' if key == 'root' else 'file'}, or null for the default"
            )
        if (
            section == "data"
            and not builtin
            and not (isinstance(value, str) and os.path.exists(value))
        ):
            continue  # a plugin dataset's root may be a URL or its own notation (audit BD)
        if isinstance(value, str) and value.strip() and "://" not in value:
            part[key] = os.path.abspath(os.path.expanduser(value))


def _builtin_dataset(name: Any) -> bool:
    """Whether dataset ``name`` is one of uvireid's own (their ``data.root`` is a local
    folder), by the module that registered it."""
    try:
        return DATASETS.entry(name).module.startswith("uvireid.")
    except RegistryError:
        return False


def dump(cfg: Mapping[str, Any]) -> str:
    """YAML text of a resolved config (sections in schema order)."""
    ordered = {k: cfg[k] for k in SCHEMA if k in cfg}
    return yaml.dump(_plain(ordered), Dumper=_Dumper, sort_keys=False, default_flow_style=None)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------------
# Built-in recipes
# ---------------------------------------------------------------------------------------

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


def _recipe_entry(path: Path):
    def recipe() -> str:
        return str(path)

    try:
        desc = (_read_yaml(path).get("description") or "").strip()
    except ConfigError:
        desc = ""
    recipe.__doc__ = desc or f"recipe {path.name}"
    recipe.__qualname__ = f"recipe_{path.stem}"
    recipe.__module__ = "uvireid.recipes"
    return recipe


def register_builtin_recipes() -> None:
    """Register every ``uvireid/recipes/*.yaml`` in :data:`RECIPES` under its file stem."""
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        RECIPES.register(path.stem, _recipe_entry(path))


register_builtin_recipes()
