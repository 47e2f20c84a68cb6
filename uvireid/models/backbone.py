"""Backbones: the two-stream ResNet of AGW/DCL, the re-ID head every backbone shares
(pooling, BN neck, flip-averaged extraction); the timm wrapper is in
:mod:`uvireid.models.timm_backbone`.

Two-stream ResNet (Ye et al., AGW, TPAMI 2021; used by DCL, PGM, ADCA, SALCR: see
``shared/notes/salcr_reference.md`` Sec. 3.1-3.2 and ``notes/peers.md`` Sec. 0.1)::

    x_v --stem_v--\\                                       /-> GeM -> g --BN neck--> f
                   >-- shared layer1..layer4 -> F (B,C,h,w)
    x_r --stem_r--/

The stem (conv1, bn1, relu, maxpool) has one copy per modality; ``share_from`` moves the
start of the shared trunk deeper (``"layer2"`` makes layer1 modality-specific too) or to
the input (``"stem"``: one single stream). The last stage keeps stride 1 by default, so
an input of 288x144 gives an 18x9 map. The BN neck's bias is frozen, as in the peers.

Inputs are float images normalised with the ImageNet mean and std, (B, 3, H, W).
Modalities are coded as in :mod:`uvireid.types`: 0 visible, 1 infrared.
"""

from __future__ import annotations

import copy
import inspect
import logging
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uvireid.errors import ConfigError
from uvireid.models.non_local import StageWithNonLocal, check_non_local
from uvireid.models.pooling import GeM
from uvireid.models.prior import PRIOR_NAME
from uvireid.registry import BACKBONES
from uvireid.rerank.inputs import check_k, check_positive
from uvireid.types import INFRARED, VISIBLE

logger = logging.getLogger(__name__)

ARCHS = ("resnet18", "resnet34", "resnet50")
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
#: torchvision weights used by ``pretrained=True`` (the legacy ImageNet weights the peers load)
TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
}


@dataclass
class BackboneOutput:
    """What a backbone's ``forward`` returns.

    Attributes:
        global_feat: (B, C) pooled feature before the BN neck (triplet losses use it).
        bn_feat: (B, C) the BN neck's output (memories, clustering and retrieval use it).
        feature_map: (B, C, h, w) last stage before pooling (for part models).
    """

    global_feat: torch.Tensor
    bn_feat: torch.Tensor
    feature_map: torch.Tensor


#: test-time features a backbone can give (``evaluation.feature_head``) and the
#: :class:`BackboneOutput` field each one reads
FEATURE_HEADS = {"bn_feat": "bn_feat", "pool": "global_feat"}


def head_field(head: str) -> str:
    """The :class:`BackboneOutput` field of a feature head (ConfigError if unknown)."""
    if head not in FEATURE_HEADS:
        raise ConfigError(
            f"feature head {head!r} is not one of {', '.join(FEATURE_HEADS)} (bn_feat: the BN "
            f"neck's output; pool: the pooled feature before it)"
        )
    return FEATURE_HEADS[head]


def check_modality_codes(values: Any, num: int = 2) -> None:
    """Refuse modality codes outside ``0..num-1`` or not whole numbers (codes 1/2, or -1,
    would send images through no stream or the wrong one, silently)."""
    arr = np.asarray(values).reshape(-1)
    if arr.size == 0:
        return
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.number):  # "rgb", objects
        # (a boolean mask, True = infrared, is the codes 0 / 1)
        raise ConfigError(
            f"modality codes must be integers in 0..{num - 1} (0 visible, 1 infrared); got "
            f"{arr.dtype} values such as {arr[0]!r}: map your codes to these"
        )
    arr = np.unique(arr)
    whole = np.issubdtype(arr.dtype, np.integer) or bool(np.all(arr == np.round(arr)))
    bad = [v for v in arr.tolist() if not (whole and 0 <= v < num)]
    if bad or not whole:
        raise ConfigError(
            f"modality codes must be integers in 0..{num - 1} (0 visible, 1 infrared); got "
            f"{sorted(set(bad or arr.tolist()))[:5]}: map your codes to these"
        )


def modality_tensor(modality: torch.Tensor | int, batch: int, device: torch.device, num: int = 2):
    """``modality`` as a (B,) long tensor on ``device``; an int applies to the whole batch.
    Codes are checked (:func:`check_modality_codes`) where they are on the host (a code on
    the GPU would need the device to wait)."""
    if isinstance(modality, numbers.Integral):
        check_modality_codes([int(modality)], num)
        return torch.full((batch,), int(modality), dtype=torch.long, device=device)
    if not isinstance(modality, torch.Tensor) or modality.device.type == "cpu":
        check_modality_codes(
            modality.numpy() if isinstance(modality, torch.Tensor) else modality, num
        )
    m = torch.as_tensor(modality, device=device).long().reshape(-1)
    if m.numel() != batch:
        raise ConfigError(
            f"modality has {m.numel()} entries for a batch of {batch}; pass one per image "
            f"(0 visible, 1 infrared) or a single int for the whole batch"
        )
    return m


def check_single_stream_modality(modality: torch.Tensor | int, batch: int) -> None:
    """The codes a backbone with one stream for every image (``share_from: stem``, timm)
    is given, checked as a two-stream one checks them (:func:`modality_tensor`): the
    caller's contract is the same whichever backbone the recipe names. A plain int code
    0 / 1 needs no tensor."""
    if not isinstance(modality, numbers.Integral) or not 0 <= modality < 2:
        src = modality.device if isinstance(modality, torch.Tensor) else "cpu"
        modality_tensor(modality, batch, src)


def _bn_neck(dim: int) -> nn.BatchNorm1d:
    """The BN neck: weight ~ N(1, 0.01), bias 0 and frozen (the AGW / SALCR
    ``weights_init_kaiming`` of ``bottleneck``, ``shared/notes/salcr_reference.md``
    Sec. 3.2), drawn from torch's global generator like the other initialisations."""
    neck = nn.BatchNorm1d(dim)
    nn.init.normal_(neck.weight, 1.0, 0.01)
    nn.init.zeros_(neck.bias)
    neck.bias.requires_grad_(False)  # frozen bias, as in the BNNeck of the peers
    return neck


class _ReidHead(nn.Module):
    """Shared tail of the backbones: pooling, BN neck, flip-averaged extraction."""

    out_dim: int

    def _head(self, fmap: torch.Tensor, global_feat: torch.Tensor | None = None):
        g = self.pool(fmap) if global_feat is None else global_feat
        return BackboneOutput(global_feat=g, bn_feat=self.neck(g), feature_map=fmap)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory format of the model's first convolution: after
        ``model.to(memory_format=torch.channels_last)`` (the trainer does it on CUDA) the
        images are converted once here, instead of cuDNN converting every layer's input
        and gradient (NHWC convolutions run on the tensor cores without layout kernels)."""
        for p in self.parameters():
            if p.dim() == 4:
                if not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last):
                    return x.contiguous(memory_format=torch.channels_last)
                return x
        return x

    @torch.no_grad()
    def extract(
        self,
        x: torch.Tensor,
        modality: torch.Tensor | int,
        flip: bool = True,
        head: str = "bn_feat",
    ) -> torch.Tensor:
        """Test-time feature: (B, 3, H, W) -> (B, C) float, L2-normalised.

        The mean of the L2-normalised features of the image and of its horizontal flip,
        L2-normalised again (SALCR's and PGM's test features: each half is the model's
        normalised eval output; ``flip=False``: the image alone). ``head`` (:data:`FEATURE_HEADS`):
        ``bn_feat`` the BN neck's output (what SALCR/DCL test with), ``pool`` the pooled
        feature before it (mangye16's AGW ``x_pool``, some peers' "pool" results). Runs
        without gradients; call ``model.eval()`` first so that batch norm uses its running
        statistics.
        """
        if self.training:
            logger.warning("extract() called in train mode; call model.eval() first")
        field = head_field(head)
        feat = F.normalize(getattr(self(x, modality), field), dim=1)
        if flip:
            flipped = getattr(self(torch.flip(x, dims=[3]), modality), field)
            feat = (feat + F.normalize(flipped, dim=1)) / 2
        return F.normalize(feat, dim=1)


def check_resnet_args(
    arch: str, pretrained: bool | str = False, where: str = "", last_stride: int = 1
) -> None:
    """What :func:`build_resnet` refuses before building anything: an ``arch`` it has no
    ResNet for, a ``pretrained`` path (any string but ``"synthetic-visible"``) that is
    not a file, a ``last_stride`` other than 1 or 2. ``where`` prefixes the keys in the
    messages (``"backbone."`` for a recipe's preflight, :func:`uvireid.engine.runner.preflight`).

    Raises:
        ConfigError: naming the key and the fix.
    """
    if arch not in ARCHS:
        raise ConfigError(f"{where}arch '{arch}' is not supported; use one of {', '.join(ARCHS)}")
    if not isinstance(pretrained, bool | str | Path):  # pretrained=5 used to mean random init
        raise ConfigError(
            f"{where}pretrained must be true (torchvision ImageNet weights), false (random "
            f"initialisation), {PRIOR_NAME} or the path of a .pth file; got {pretrained!r}"
        )
    if isinstance(pretrained, str | Path) and pretrained != PRIOR_NAME:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{where}pretrained checkpoint {path} does not exist; pass pretrained=True "
                f"for the torchvision ImageNet weights or the path of a local .pth file"
            )
    if isinstance(last_stride, bool) or last_stride not in (1, 2):
        raise ConfigError(f"{where}last_stride must be 1 or 2, got {last_stride!r}")


def check_two_stream_args(where: str = "", **kwargs: Any) -> None:
    """What :class:`TwoStreamResNet` refuses, checked before anything is built (the run's
    preflight passes a recipe's ``backbone`` keywords, ``where="backbone."``): the arch and
    pretrained weights (:func:`check_resnet_args`), ``share_from`` a stage, ``last_stride``
    1 or 2, ``gem_p`` a number > 0 (0 divides by zero in the pooling's 1/p power),
    ``num_modalities`` and ``non_local_channels`` integers >= 1.

    Keywords not given take :class:`TwoStreamResNet`'s own defaults.

    Raises:
        ConfigError: naming the key and its range.
    """
    params = inspect.signature(TwoStreamResNet).parameters.values()
    a = {p.name: p.default for p in params if p.default is not p.empty} | kwargs
    check_resnet_args(a["arch"], a["pretrained"], where, a["last_stride"])
    if a["share_from"] not in STAGES:
        raise ConfigError(
            f"{where}share_from '{a['share_from']}' is not a stage; use one of {', '.join(STAGES)}"
        )
    check_positive(a["gem_p"], f"{where}gem_p", "two_stream_resnet")
    check_k(a["num_modalities"], f"{where}num_modalities", "two_stream_resnet")
    check_k(a["non_local_channels"], f"{where}non_local_channels", "two_stream_resnet")
    if a["share_from"] == STAGES[0] and "num_modalities" in kwargs and a["num_modalities"] != 2:
        # audit BS: a single-stream model has no per-modality stage for it to count
        raise ConfigError(
            f"{where}num_modalities={a['num_modalities']} has no effect with share_from: "
            f"{STAGES[0]} (every stage shared, one stream); set share_from to a later stage "
            f"for modality-specific stages, or drop num_modalities"
        )


#: what a uvireid training checkpoint pickles besides tensors (numpy's RNG state), allowed
#: when one is read as ``pretrained`` weights; nothing else is unpickled
_CHECKPOINT_GLOBALS = {
    "numpy.dtype",
    "numpy.ndarray",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
}


def uvireid_backbone_weights(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The backbone weights of a uvireid training checkpoint (``RUN/checkpoints/*.pt``),
    names as the backbone's own ``state_dict``; None for any other file.

    Raises:
        ConfigError: a uvireid checkpoint of another format version, or without backbone
            weights (the advice for other files would not help).

    Read with ``weights_only`` loading, allowing only the numpy types a uvireid checkpoint
    holds (its RNG state): a file that needs anything else is not unpickled."""
    from uvireid.engine.checkpoint import FORMAT, backbone_state

    state = _uvireid_checkpoint(path)
    if state is None:
        return None

    if state["format"] != FORMAT:
        raise ConfigError(
            f"backbone.pretrained: {path} is a uvireid checkpoint of format "
            f"{state['format']!r}; this version reads format {FORMAT}. Its backbone may "
            f"still load (the load names any weight that differs) from a copy marked with "
            f"this format: ck = torch.load(path, weights_only=False); ck['format'] = "
            f"{FORMAT}; torch.save(ck, 'converted.pt')"
        )
    weights = backbone_state(state)
    if not weights:
        raise ConfigError(
            f"backbone.pretrained: {path} is a uvireid checkpoint without backbone weights "
            f"(no 'model' entry with 'backbone.*' keys); give a run's checkpoints/latest.pt "
            f"or best.pt"
        )
    return weights


def uvireid_checkpoint_dataset(path: str | Path) -> dict | None:
    """The dataset record (``fingerprint()``: name, split, validation, counts) of a uvireid
    training checkpoint, None for any other file or a checkpoint without one."""
    state = _uvireid_checkpoint(path)
    record = (state or {}).get("dataset")
    return record if isinstance(record, dict) else None


def _uvireid_checkpoint(path: str | Path) -> dict | None:
    """A uvireid training checkpoint's state, None for any other file (read with
    ``weights_only`` loading, allowing only the numpy types such a checkpoint holds)."""
    path = Path(path).expanduser()
    try:
        needs = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a torch zip file
        return None
    allowed = {g for g in needs if g in _CHECKPOINT_GLOBALS or g.startswith("numpy.dtypes.")}
    if not needs or needs - allowed:  # plain weights (read once, by the caller), or foreign
        return None
    import importlib

    objs = []
    for name in allowed:
        mod, _, attr = name.rpartition(".")
        try:
            objs.append(getattr(importlib.import_module(mod), attr))
        except (ImportError, AttributeError):
            return None
    # numpy's dtype classes (UInt32DType for the RNG state) are reached through
    # numpy.dtype's reduce, which the scan above does not list
    objs += [getattr(np.dtypes, n) for n in getattr(np.dtypes, "__all__", ())]
    try:
        with torch.serialization.safe_globals(objs):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    from uvireid.engine.checkpoint import has_checkpoint_shape

    if not has_checkpoint_shape(state):
        return None
    return state


def _load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchvision-style ResNet state dict from a local file (nested, or saved under a
    DDP, DataParallel or ``torch.compile`` wrapper: :func:`unwrapped_key`).

    Raises:
        ConfigError: the file is not a readable torch file of tensors (damaged, another
            format, or a checkpoint that also pickles Python objects, which
            ``weights_only`` loading refuses), or holds no dict of tensors.
    """
    try:
        sd = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged, not a torch file, or pickled objects
        # (torch's own message is long and suggests weights_only=False: not repeated)
        raise ConfigError(
            f"pretrained checkpoint {path} could not be read as a file of tensors "
            f"({type(exc).__name__}). If it is damaged, copy it again; if it is "
            "a checkpoint you trust that also holds Python objects (training arguments, "
            "an optimiser), save its weights alone once: torch.save(torch.load(path, "
            "weights_only=False)[KEY], 'weights.pth') with KEY the entry that holds them "
            "(often 'state_dict' or 'model'), and pass that file"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(
            f"pretrained checkpoint {path} holds a {type(sd).__name__}, not a state dict "
            "(names to tensors, as model.state_dict() gives); save the model's state_dict()"
        )
    return {unwrapped_key(k): v for k, v in sd.items()}


def unwrapped_key(key: str) -> str:
    """A weight's name without the prefixes of the wrappers it was saved under: DDP's or
    DataParallel's ``module.``, ``torch.compile``'s ``_orig_mod.``, nested either way."""
    while key.startswith(("module.", "_orig_mod.")):
        key = key.removeprefix("module.").removeprefix("_orig_mod.")
    return key


def build_resnet(arch: str, pretrained: bool | str = False, last_stride: int = 1) -> nn.Module:
    """A torchvision ResNet without its classifier; ``last_stride`` for layer4.

    ``pretrained=True`` loads the torchvision ImageNet weights (downloaded once into the
    torch hub cache, ``$TORCH_HOME``); ``"synthetic-visible"`` the offline stand-in of
    :mod:`uvireid.models.prior` (built on first use, cached); any other string is the path
    of a local checkpoint.
    """
    import torchvision  # here, not at import: 0.9 s that `uvireid rerank`/`eval` never need

    check_resnet_args(arch, pretrained, last_stride=last_stride)
    weights = TORCHVISION_WEIGHTS[arch] if pretrained is True else None
    try:
        net = getattr(torchvision.models, arch)(weights=weights)
    except OSError as exc:  # URLError (offline, a proxy), a full disk, a damaged download
        if weights is None:
            raise
        raise ConfigError(
            f"backbone.pretrained: true could not fetch torchvision's ImageNet {arch} weights "
            f"({type(exc).__name__}: {exc}); on a machine without internet, download "
            f"{torchvision.models.get_weight(weights).url} elsewhere and set "
            f"backbone.pretrained=PATH (or put it in the torch "
            f"hub cache, $TORCH_HOME/hub/checkpoints), or train from scratch with "
            f"backbone.pretrained=false"
        ) from exc
    if pretrained == PRIOR_NAME:
        from uvireid.models.prior import synthetic_visible_prior

        pretrained = str(synthetic_visible_prior(arch))
    if isinstance(pretrained, str | Path) and not isinstance(pretrained, bool):
        sd = {k: v for k, v in _load_checkpoint(pretrained).items() if not k.startswith("fc.")}
        if not set(sd) & set(net.state_dict()):
            raise ConfigError(
                f"checkpoint {pretrained} has none of the {arch} weights (keys such as "
                f"'conv1.weight', 'layer1.0.bn1.weight'); is it a torchvision {arch}?"
            )
        own = net.state_dict()
        # torchvision's 2017 files (the peers' resnet50-19c8e357.pth) predate BatchNorm's
        # num_batches_tracked buffer; torch's strict load fills it in, and no BN here
        # uses it (momentum is set): not a missing weight
        missing = [
            k
            for k in own
            if k not in sd and not k.startswith("fc.") and not k.endswith(".num_batches_tracked")
        ]
        unexpected = [k for k in sd if k not in own]
        wrong = [
            f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
            for k in sd
            if k in own and sd[k].shape != own[k].shape
        ]
        if missing or unexpected or wrong:
            raise ConfigError(
                f"checkpoint {pretrained} does not fit a torchvision {arch}: "
                + "; ".join(
                    f"{len(keys)} {what} ({', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''})"
                    for what, keys in (
                        ("missing keys", missing),
                        ("unexpected keys", unexpected),
                        ("keys of another shape", wrong),
                    )
                    if keys
                )
                + ". A half-loaded backbone trains to a few percent R1; convert the "
                "checkpoint to torchvision names or pick the arch it was saved from"
            )
        net.load_state_dict(sd, strict=False)
    net.fc = nn.Identity()
    if last_stride == 1:
        block = net.layer4[0]
        conv = block.conv2 if hasattr(block, "conv3") else block.conv1  # bottleneck / basic
        conv.stride = (1, 1)
        block.downsample[0].stride = (1, 1)
    return net


@BACKBONES.register("two_stream_resnet")
class TwoStreamResNet(_ReidHead):
    """Two-stream ResNet with modality-specific stems and a shared trunk (AGW/DCL).

    Args:
        arch: ``resnet18``, ``resnet34`` or ``resnet50`` (torchvision).
        pretrained: False (random init), True (torchvision ImageNet weights: downloaded
            once into the torch hub cache), ``"synthetic-visible"`` (an offline stand-in
            for ImageNet weights: a ResNet trained with labels on the visible images of
            a separate synthetic population, built on first use in about 2 minutes on 2
            CPU cores and cached; :mod:`uvireid.models.prior`) or the path of a local
            checkpoint: a torchvision-style ResNet state dict, or a uvireid run's
            checkpoint (its backbone, loaded strictly: the same backbone settings).
        share_from: first shared stage: ``"layer1"`` (the peers: only the stem is
            per modality), ``"layer2"`` .. ``"layer4"``, or ``"stem"`` (one stream).
        last_stride: stride of layer4 (1 as in the peers, 2 as in ImageNet ResNets).
        gem_p: GeM exponent; ``gem_learnable`` learns it.
        num_modalities: streams (2: visible and infrared).
        non_local: non-local blocks after the last blocks of layer1..layer4, e.g. AGW's
            ``[0, 2, 3, 0]`` (PGM, ADCA); None or zeros: none (SALCR).
            :mod:`uvireid.models.non_local`.
        non_local_channels: inner channels of those blocks (AGW: 1).

    ``forward(x, modality)``: x (B, 3, H, W), modality (B,) long or an int for the whole
    batch -> :class:`BackboneOutput` with C = 512 (resnet18/34) or 2048 (resnet50).
    """

    def __init__(
        self,
        arch: str = "resnet50",
        pretrained: bool | str = False,
        share_from: str = "layer1",
        last_stride: int = 1,
        gem_p: float = 3.0,
        gem_learnable: bool = False,
        num_modalities: int = 2,
        non_local: list[int] | None = None,
        non_local_channels: int = 1,
    ):
        super().__init__()
        check_two_stream_args(
            arch=arch,
            pretrained=pretrained,
            share_from=share_from,
            last_stride=last_stride,
            gem_p=gem_p,
            num_modalities=num_modalities,
            non_local_channels=non_local_channels,
        )
        own = None
        if isinstance(pretrained, str | Path) and not isinstance(pretrained, bool):
            if pretrained != PRIOR_NAME:
                own = uvireid_backbone_weights(pretrained)  # a uvireid run's checkpoint
        net = build_resnet(arch, False if own is not None else pretrained, last_stride)
        layers = [net.layer1, net.layer2, net.layer3, net.layer4]
        self.non_local = check_non_local(non_local, [len(x) for x in layers], arch)
        layers = [
            StageWithNonLocal(layer, n, non_local_channels) if n else layer
            for layer, n in zip(layers, self.non_local)
        ]
        stages = {
            "stem": nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
            **{f"layer{i + 1}": layer for i, layer in enumerate(layers)},
        }
        k = STAGES.index(share_from)
        specific = nn.Sequential(*[stages[s] for s in STAGES[:k]])
        self.share_from = share_from
        self.num_modalities = num_modalities
        # every stream starts from the same (pretrained or random) weights
        self.specific = nn.ModuleList(
            [copy.deepcopy(specific) for _ in range(num_modalities)] if k > 0 else []
        )
        self.shared = nn.Sequential(*[stages[s] for s in STAGES[k:]])
        last = net.layer4[-1]
        self.out_dim = (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features
        self.pool = GeM(gem_p, learnable=gem_learnable)
        self.neck = _bn_neck(self.out_dim)
        if own is not None:
            _load_run_weights(self, own, pretrained, "arch, share_from, non_local, gem_learnable")

    def stream(self, modality: int) -> nn.Sequential:
        """The modality-specific stages of stream ``modality`` (VISIBLE or INFRARED).

        ``stream(m)[0]`` is its stem (conv1, bn1, relu, maxpool), ``stream(m)[1]`` its
        layer1 when ``share_from`` is ``"layer2"`` or deeper.
        """
        if not len(self.specific):
            raise ConfigError("share_from='stem' builds one shared stream: there is no stem")
        return self.specific[modality]

    def forward_map(self, x: torch.Tensor, modality: torch.Tensor | int) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w): each image through its modality's stream."""
        x = self._layout(x)
        if len(self.specific):
            if isinstance(modality, numbers.Integral):
                check_modality_codes([int(modality)], self.num_modalities)
                x = self.specific[int(modality)](x)
            else:
                # the split is computed where the modality is: a host tensor (as the
                # trainer passes it) costs a GPU run no wait, only an index copy
                src = modality.device if isinstance(modality, torch.Tensor) else "cpu"
                m = modality_tensor(modality, x.shape[0], src, self.num_modalities)
                if m.device.type == "cpu":
                    on_host = m.numpy()
                    parts = [
                        torch.from_numpy(np.flatnonzero(on_host == k)).to(
                            x.device, non_blocking=True
                        )
                        for k in range(self.num_modalities)
                    ]
                else:
                    parts = [(m == k).nonzero(as_tuple=True)[0] for k in range(self.num_modalities)]
                outs = [(idx, self.specific[k](x[idx])) for k, idx in enumerate(parts) if len(idx)]
                if not outs:  # an empty batch: its shape through a stream (audit HB)
                    x = self.specific[0](x)
                elif len(outs) == 1:
                    x = outs[0][1]
                else:
                    first = outs[0][1]
                    y = first.new_empty((x.shape[0], *first.shape[1:]))
                    for idx, o in outs:
                        y[idx] = o
                    x = y
        else:
            check_single_stream_modality(modality, x.shape[0])
        return self.shared(x)

    def forward(self, x: torch.Tensor, modality: torch.Tensor | int) -> BackboneOutput:
        return self._head(self.forward_map(x, modality))


def _load_run_weights(model: nn.Module, weights: dict, source: Any, settings: str) -> None:
    """A uvireid run's backbone weights into ``model``: every key, or an error naming the
    differences and the settings that must match the run's."""
    from uvireid.engine.checkpoint import load_state_strict
    from uvireid.errors import CheckpointError

    try:
        load_state_strict(model, weights, source=f"the backbone of {source}")
    except CheckpointError as exc:
        raise ConfigError(
            f"backbone.pretrained: {exc} (a uvireid checkpoint loads into the backbone "
            f"settings of the run that wrote it: {settings})"
        ) from None
    logger.info("backbone: weights of the uvireid checkpoint %s", source)


def check_input_size(backbone: nn.Module, height: int, width: int) -> None:
    """Before a run's first image: a backbone built for a fixed input size (a timm ViT
    at 224 x 224) refuses the recipe's ``train.height x train.width`` with the fix, and
    a timm backbone runs one blank image of that size (models whose attention is sized
    to their input, LeViT, EfficientFormer, or that need larger images, Inception, failed
    at the first batch with a raw error).

    Raises:
        ConfigError: the backbone takes another size only.
    """
    check = getattr(backbone, "check_input_size", None)
    if callable(check):
        check(height, width, "train.height x train.width")
    run = getattr(backbone, "run_input_size", None)
    if callable(run):
        run(height, width)


# the timm backbone lives in its own module; imported last (it builds on the head above)
from uvireid.models.timm_backbone import TimmBackbone  # noqa: E402

__all__ = [
    "ARCHS",
    "INFRARED",
    "VISIBLE",
    "BackboneOutput",
    "TimmBackbone",
    "TwoStreamResNet",
    "build_resnet",
    "check_input_size",
    "check_single_stream_modality",
    "modality_tensor",
]
