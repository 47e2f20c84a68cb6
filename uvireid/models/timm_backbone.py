"""The single-stream timm backbone: any timm model with the re-ID head (pooling, BN neck)
of :mod:`uvireid.models.backbone`; ``modality`` is ignored.

Where timm's conventions meet the re-ID head: the weight sources (timm's own, a local
file read by timm's rules, a uvireid run's checkpoint, ``local-dir:``/``hf-hub:``
names), how a map is pooled (GeM on a non-negative map, timm's head on a signed one or
on tokens), fixed-size models (ViT) and sizes a model cannot take, each refused with a
ConfigError that names the setting to change.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uvireid.errors import ConfigError
from uvireid.models.backbone import (
    VISIBLE,
    BackboneOutput,
    _bn_neck,
    _load_run_weights,
    _ReidHead,
    check_single_stream_modality,
    unwrapped_key,
    uvireid_backbone_weights,
)
from uvireid.models.pooling import GeM
from uvireid.models.prior import PRIOR_NAME
from uvireid.registry import BACKBONES
from uvireid.rerank.inputs import check_k, check_positive

logger = logging.getLogger(__name__)


def _timm_build_error(
    name: str, exc: Exception, extra: dict, local: str | None, download: bool
) -> ConfigError | None:
    """The ConfigError for ``timm.create_model``'s failure, with the advice that fits
    what failed, or None when nothing the recipe set explains it.

    A failed read (an ``OSError``: the hub offline, a missing file; huggingface_hub's and
    the HTTP clients' errors) is advised on the source: the hub name, the local file or
    the download. Any other error on what was set: the stride, the size, the local file
    (audit CG: an offline download was blamed on a valid ``output_stride``)."""
    what = f"{type(exc).__name__}: {str(exc)[:200] or 'no message'}"
    root = type(exc).__module__.split(".")[0]
    hub = name.startswith(("local-dir:", "hf-hub:"))
    read_failed = isinstance(exc, OSError) or root in ("huggingface_hub", "requests", "httpx")
    hub_advice = (
        f"timm reads a '{name.split(':')[0]}:' model's config.json from "
        + (
            "the folder"
            if name.startswith("local-dir:")
            else "the Hugging Face Hub (or its local cache), even with pretrained: false"
        )
        + ". Offline, copy the model's folder (config.json and its weights) to this "
        "machine and name it local-dir:FOLDER"
    )
    local_advice = (
        f"backbone.pretrained: {local} could not be loaded into '{name}'; give a weights "
        f"file of that model (a .pth or .safetensors state dict)"
    )
    tails = []
    if read_failed:
        if hub:
            tails.append(hub_advice)
        elif local is not None:
            tails.append(local_advice)
        elif download:
            tails.append(
                "the pretrained weights could not be read: on a machine without internet, "
                "download them elsewhere and set backbone.pretrained to the local file, or "
                "use pretrained: false"
            )
    else:
        if "output_stride" in extra:
            tails.append(
                "backbone.output_stride: timm's convolutional models take 8, 16 or 32 "
                "(some 32 only); choose one of those or remove it"
            )
        if "img_size" in extra:
            tails.append(
                "backbone.img_size: choose a size the model supports (Swin: multiples of "
                "its patch size x window size)"
            )
        if local is not None:
            tails.append(local_advice)
        if not tails and hub:
            tails.append(hub_advice)
    if not tails:
        return None
    settings = [f"{k}={v}" for k, v in extra.items() if k != "pretrained_cfg_overlay"]
    if local is not None:
        settings.append(f"pretrained={local}")
    built = f" with {', '.join(settings)}" if settings else ""
    return ConfigError(f"timm: model '{name}' cannot be built{built} ({what}); " + "; ".join(tails))


def _timm_file_keys(path: str) -> set[str] | None:
    """The tensor names timm's loader (``timm.models.load_state_dict``) takes from a
    weights file, by its rules: a safetensors file or a torch file (timm's training
    checkpoints pickle ``argparse.Namespace`` arguments), the EMA weights first, then
    ``state_dict`` or ``model``, ``module.`` and ``_orig_mod.`` prefixes removed. Read
    memory-mapped: the tensors are not read a second time. None when torch cannot read
    the file (a format the model loads itself, as the original ViT's .npz)."""
    import argparse

    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                state: Any = dict.fromkeys(f.keys())
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # torch's legacy format cannot be mapped
                    state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a file torch reads; timm has loaded it
        return None
    if not isinstance(state, dict):
        return set()
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return {unwrapped_key(str(k)) for k in state}


class _UnexpectedKeys(logging.Handler):
    """Collects the keys timm's loader (``load_pretrained``) reports as unexpected: tensors
    of the file the model has no place for, after timm's own conversion of the file and the
    removal of its classifier. timm logs them as a warning and goes on. Attached to the
    loader's own logger for the build, that logger let through warnings meanwhile (a
    script that quieted ``timm``, or stopped its propagation, hid them: audit MI), and
    only the building thread's records are taken."""

    LOGGER = "timm.models._builder"

    def __init__(self) -> None:
        import threading

        super().__init__(logging.WARNING)
        self.keys: list[str] = []
        self.thread = threading.get_ident()
        self._level = logging.NOTSET

    def __enter__(self) -> _UnexpectedKeys:
        log = logging.getLogger(self.LOGGER)
        self._level = log.level
        if not log.isEnabledFor(logging.WARNING):
            log.setLevel(logging.WARNING)
        log.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        log = logging.getLogger(self.LOGGER)
        log.removeHandler(self)
        log.setLevel(self._level)

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        msg = record.getMessage()
        head, tail = "Unexpected keys (", ") found while loading"
        if msg.startswith(head) and tail in msg:
            self.keys += msg[len(head) : msg.index(tail)].split(", ")


def _check_local_timm_weights(
    model: nn.Module, path: str, name: str, unexpected: list[str] | None = None
) -> None:
    """timm loads a local weights file leniently (keys it does not know are a log line): a
    file of another model left the weights random without an error. Every weight of the
    model (its classifier removed) must be in the file, as timm reads it; and every tensor
    of the file must have gone into the model (``unexpected``, timm's list: a file of a
    deeper model of the same family, resnet34's for resnet18, held every key of the
    smaller one and loaded its first blocks without a word; audit MA).

    Raises:
        ConfigError: naming the missing or the unexpected keys."""
    if unexpected:
        raise ConfigError(
            f"backbone.pretrained: {path} does not hold the weights of timm model '{name}': "
            f"{len(unexpected)} of its tensors have no place in the model (e.g. "
            f"{', '.join(unexpected[:3])}): a file of another model? (a deeper one of the "
            f"same family holds every key of this one, and more); give the weights file of "
            f"'{name}', or set backbone.name to the model the file is of"
        )
    keys = _timm_file_keys(path)
    if keys is None:
        logger.info("backbone.pretrained: %s loaded by timm's model itself; not checked", path)
        return
    # batch norm fills in a missing num_batches_tracked itself (torchvision-era files
    # have none; timm loads them strictly), so it is not required (audit CG)
    missing = [
        k for k in model.state_dict() if k not in keys and not k.endswith("num_batches_tracked")
    ]
    if missing:
        raise ConfigError(
            f"backbone.pretrained: {path} does not hold the weights of timm model '{name}': "
            f"{len(missing)} of its {len(model.state_dict())} tensors are missing (e.g. "
            f"{', '.join(missing[:3])}); give that model's weights file, or a uvireid "
            f"checkpoint of a run with this backbone. If it is a checkpoint of the model's "
            f"original code, which timm converts as it loads it, save timm's version once: "
            f"torch.save(timm.create_model('{name}', pretrained=True, num_classes=0, "
            f"pretrained_cfg_overlay={{'file': '{path}'}}).state_dict(), 'converted.pth')"
        )


def check_timm_args(
    pretrained: object = False,
    gem_p: object = 3.0,
    output_stride: object = None,
    pooling: object = "auto",
) -> None:
    """The settings of :class:`TimmBackbone` that can be checked without timm building
    anything: a recipe's ``--dry-run`` refuses what the run would refuse at its build (a
    pretrained file that does not exist passed the dry run; audit MA)."""
    if pooling not in TIMM_POOLING:
        raise ConfigError(
            f"timm: pooling must be one of {', '.join(TIMM_POOLING)}, got {pooling!r}"
        )
    if isinstance(pretrained, str | Path) and not isinstance(pretrained, bool):
        if not Path(pretrained).expanduser().is_file():
            prior = (
                f" ({PRIOR_NAME} is a prior of the two-stream ResNet only: backbone.type="
                f"two_stream_resnet)"
                if str(pretrained) == PRIOR_NAME
                else ""
            )
            raise ConfigError(
                f"timm: pretrained {str(pretrained)!r} is not a file{prior}; give true (timm's "
                f"weights), false, or the path of a uvireid checkpoint or a timm weights file"
            )
    elif not isinstance(pretrained, bool):
        raise ConfigError(
            f"timm: pretrained must be true, false or a weights file, got {pretrained!r}"
        )
    if output_stride is not None:
        check_k(output_stride, "output_stride", "timm")
    check_positive(gem_p, "gem_p", "timm")


@BACKBONES.register("timm")
class TimmBackbone(_ReidHead):
    """A single-stream timm model with GeM and a BN neck; ``modality`` is ignored.

    Args:
        name: timm model name (``timm.list_models()``), e.g. ``"resnet50"``.
        pretrained: ``true`` loads timm's pretrained weights (downloaded once; never in
            tests); a path loads local weights: a uvireid run's checkpoint (its
            backbone, trained with the same ``name`` and settings) or a timm weights file
            (``.pth``/``.safetensors``, read by timm for this model, position embeddings
            resampled to ``img_size``).
        output_stride: the feature map's stride for convolutional models that take one
            (timm's ``output_stride``: 16 gives an 18 x 9 map at 288 x 144, as the
            two-stream ResNet's ``last_stride: 1``); None: the model's (32).
        gem_p: GeM exponent, where GeM pools (see ``pooling``).
        pooling: how a model with a spatial map is pooled to the global feature:
            ``gem``; ``head``, timm's own head before its classifier (an average, with
            the model's head norm where it has one); ``auto`` (default), GeM where the
            map is non-negative (the model ends in a ReLU: ResNet, RegNet), else the
            head. GeM clamps its input at 1e-6, so it would drop the negative half of a
            signed map (ConvNeXt's residual stream, Swin's LayerNorm, the SiLU of
            EfficientNet): ``auto`` looks once, at build time, at the map of a fixed
            random image. Models without a map (vision transformers) always use their
            head. ``legacy``: the rule of runs from before this setting (session 20):
            GeM on a channels-first map, whatever its sign; a run's ``config.yaml`` of
            that time, which has no ``pooling``, reads as ``legacy``, so the run resumes
            and extracts as it trained.
        img_size: ``[H, W]`` the model is built for, for models of a fixed input size
            (ViT, DeiT, Swin: timm resamples pretrained position embeddings to it); set
            it to ``train.height, train.width`` (the recipes' 288 x 144). None: timm's
            default (224 x 224 for those); convolutional models take any size and refuse
            it.

    Models whose feature map is channels-last (Swin: (B, h, w, C)) are read as such.
    """

    def __init__(
        self,
        name: str = "resnet50",
        pretrained: bool | str = False,
        gem_p: float = 3.0,
        img_size: list[int] | None = None,
        output_stride: int | None = None,
        pooling: str = "auto",
    ):
        super().__init__()
        check_timm_args(pretrained, gem_p, output_stride, pooling)
        own = None  # a uvireid run's backbone weights, loaded after the model is built
        local = None  # a timm weights file
        if isinstance(pretrained, str | Path) and not isinstance(pretrained, bool):
            path = Path(pretrained).expanduser()
            own = uvireid_backbone_weights(path)
            local = None if own is not None else str(path.resolve())
        if img_size is not None:
            if not isinstance(img_size, list | tuple) or len(img_size) != 2:
                raise ConfigError(f"timm: img_size must be [height, width], got {img_size!r}")
            for v in img_size:
                check_k(v, "img_size", "timm")
        try:
            import timm
        except ImportError:  # pragma: no cover - timm is a dependency
            raise ConfigError(
                "backbone type 'timm' needs the timm package: pip install timm"
            ) from None

        hub = name.startswith(("local-dir:", "hf-hub:"))  # timm's own forms of a source
        if name.startswith("local-dir:"):
            folder = Path(name.removeprefix("local-dir:")).expanduser()
            if not (folder / "config.json").is_file():
                raise ConfigError(
                    f"timm: model '{name}': {folder} is not a folder with a config.json "
                    f"(timm's layout of a saved model: config.json and the weights, "
                    f"model.safetensors or pytorch_model.bin); give that folder"
                )
            name = f"local-dir:{folder}"  # timm does not expand ~
        if (
            not hub
            and name not in timm.list_models()
            and name not in timm.list_models(pretrained=True)
        ):
            from uvireid._suggest import closest

            near = closest(name, timm.list_models(), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ConfigError(f"timm has no model '{name}'{hint}")
        extra: dict[str, Any] = {}
        if img_size is not None:
            extra["img_size"] = tuple(int(v) for v in img_size)
        if output_stride is not None:
            extra["output_stride"] = int(output_stride)
        if local is not None:
            extra["pretrained_cfg_overlay"] = {"file": local}
        fetch = pretrained is True or local is not None
        unexpected = _UnexpectedKeys()
        try:
            with unexpected:
                self.model = timm.create_model(name, pretrained=fetch, num_classes=0, **extra)
        except TypeError as exc:
            for key in ("img_size", "output_stride"):
                if key in extra and key in str(exc):
                    raise ConfigError(
                        f"timm: model '{name}' takes no {key}; remove backbone.{key}"
                    ) from None
            raise
        except Exception as exc:  # noqa: BLE001 - timm's and the hub's errors, named below
            err = _timm_build_error(name, exc, extra, local, pretrained is True)
            if err is None:  # nothing the recipe set explains it: timm's own error
                raise
            raise err from None
        if local is not None:
            _check_local_timm_weights(self.model, local, name, unexpected.keys)
        patch = getattr(getattr(self.model, "patch_embed", None), "patch_size", None)
        if img_size is not None and patch is not None:
            ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
            h, w = (int(v) for v in img_size)
            if h % ph or w % pw:
                near = f"{h - h % ph or ph} x {w - w % pw or pw}"
                raise ConfigError(
                    f"timm: model '{name}' cuts {h} x {w} images into {ph} x {pw} patches "
                    f"and would never read the last {h % ph} row(s) and {w % pw} column(s); "
                    f"use a multiple of the patch size for train.height/width "
                    f"and backbone.img_size, e.g. {near}"
                )
        self.name = name
        #: the size the model was built for (``img_size``), or None
        self.img_size = tuple(int(v) for v in img_size) if img_size is not None else None
        self.fixed_input_size = _fixed_input_size(self.model)
        self.channels_last_map = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
        #: "gem" or "head": how this model's features are pooled (``pooling`` resolved)
        self.pooling, self.out_dim = _resolve_pooling(self, pooling)
        self._sizes_run: set[tuple[int, int]] = set()  # input sizes run_input_size passed
        self.pool = GeM(gem_p)
        self.neck = _bn_neck(self.out_dim)
        if own is not None:
            _load_run_weights(
                self,
                own,
                pretrained,
                "name, img_size, pooling (a run from before session 20 trained with "
                "pooling: legacy)",
            )

    def check_input_size(self, height: int, width: int, where: str = "train") -> None:
        """Refuse an image size a fixed-size model cannot take, naming the fix.

        Raises:
            ConfigError: the model was built for another size.
        """
        fixed = self.fixed_input_size
        if fixed is not None and fixed != (int(height), int(width)):
            raise ConfigError(
                f"timm model '{self.name}' takes {fixed[0]} x {fixed[1]} images only, and "
                f"the {where} images are {height} x {width}; set backbone.img_size: "
                f"[{height}, {width}] (timm builds the model for that size)"
            )

    @torch.no_grad()
    def run_input_size(self, height: int, width: int) -> None:
        """Run one blank ``height x width`` image through the model (in eval mode, on its
        device; once per size), so that a size the model cannot take is a ConfigError
        before training.

        Raises:
            ConfigError: naming the model, the size and timm's error.
        """
        size = (int(height), int(width))
        if size in self._sizes_run:
            return
        p = next(self.parameters())
        was_training = self.training
        self.eval()
        try:
            self(torch.zeros(1, 3, *size, device=p.device, dtype=p.dtype))
        except (ConfigError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - any model's refusal of the size
            sized = (
                ""
                if self.img_size == size
                else f"a model whose attention is sized to its input (LeViT) needs "
                f"backbone.img_size: [{size[0]}, {size[1]}], "
            )
            raise ConfigError(
                f"timm: model '{self.name}' cannot take {size[0]} x {size[1]} images "
                f"(train.height x train.width) ({type(exc).__name__}: {str(exc)[:200]}); "
                f"{sized}a model built for one size only (EfficientFormer: 224 x 224) "
                f"needs that size, a window model (MaxViT, Swin) multiples of its window, "
                f"a model that downsamples much (Inception) larger images"
            ) from None
        finally:
            self.train(was_training)
        self._sizes_run.add(size)

    def forward(self, x: torch.Tensor, modality: torch.Tensor | int = VISIBLE) -> BackboneOutput:
        """One stream for both modalities; ``modality`` is checked as a two-stream
        backbone's is (codes 0/1, one per image or one int), so a caller's wrong codes are
        found whichever backbone the recipe names."""
        self.check_input_size(x.shape[-2], x.shape[-1], "input")
        check_single_stream_modality(modality, x.shape[0])
        fmap = self.model.forward_features(self._layout(x))
        if fmap.dim() == 4:
            # a channels-last map (Swin: (B, h, w, C)) is read as (B, C, h, w) for GeM and
            # the part stripes; timm's head takes it as the model gives it
            nchw = fmap.permute(0, 3, 1, 2) if self.channels_last_map else fmap
            if self.pooling == "head":
                return self._head(nchw, self.model.forward_head(fmap, pre_logits=True))
            return self._head(nchw)
        return self._head(fmap, self.model.forward_head(fmap, pre_logits=True))


#: ``TimmBackbone(pooling=...)`` values
TIMM_POOLING = ("auto", "gem", "head", "legacy")


@torch.no_grad()
def _resolve_pooling(backbone: TimmBackbone, pooling: str) -> tuple[str, int]:
    """(pooling, feature size): ``pooling`` resolved to "gem" or "head", and the size of
    the pooled feature (timm's head may change it: MobileNetV3's 576 channels become 1024).

    ``auto`` takes GeM where the model's map is non-negative, the head where it is signed
    (GeM's clamp at 1e-6 would drop the negative values: half of a LayerNorm'd or
    residual map, audit AM); a model without a spatial map (tokens) takes its head.
    ``legacy`` is the rule before ``pooling`` existed (session 20), under which earlier
    runs trained: GeM on a channels-first map, the head on a channels-last one or tokens,
    and a feature of the map's channel count.
    Looks at the map of one image drawn from its own generator (the global RNG, which
    draws the neck's initialisation next, is not touched), in eval mode (batch norm's
    running statistics are not updated), at ``img_size``, the model's fixed size or
    64 x 64 (then timm's default size, for a model that needs more).

    Raises:
        ConfigError: the model cannot run or its features are not a tensor; ``gem`` for a
            model without a spatial map.
    """
    model, name = backbone.model, backbone.name
    sizes = [backbone.img_size or backbone.fixed_input_size or (64, 64)]
    default = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", ())[-2:])
    if backbone.img_size is None and len(default) == 2 and default not in sizes:
        sizes.append(default)  # a model that needs more than 64 x 64
    was_training = model.training
    model.eval()
    try:
        for i, size in enumerate(sizes):
            x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
            try:
                fmap = model.forward_features(backbone._layout(x))
                break
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - any model's refusal of the size
                if i + 1 == len(sizes):
                    hint = (
                        "it does not take the size backbone.img_size names (a model built "
                        "for one size only, as EfficientFormer for 224 x 224, needs that "
                        "size)"
                        if backbone.img_size
                        else "if it takes a fixed size, set backbone.img_size"
                    )
                    raise ConfigError(
                        f"timm: model '{name}' could not run one image of "
                        f"{' or '.join(f'{h} x {w}' for h, w in sizes)} to find how to pool "
                        f"it ({type(exc).__name__}: {str(exc)[:200]}); {hint}"
                    ) from None
        if not isinstance(fmap, torch.Tensor):
            raise ConfigError(
                f"timm: model '{name}' gives its features as a {type(fmap).__name__}, not "
                f"one tensor (a multi-branch model): uvireid cannot pool it; choose another"
            )
        spatial = fmap.dim() == 4
        if pooling == "gem" and not spatial:
            raise ConfigError(
                f"timm: model '{name}' has no spatial map (its features are "
                f"{tuple(fmap.shape)}): GeM cannot pool it; set backbone.pooling: auto or head"
            )
        if pooling == "legacy":
            pooling = "gem" if spatial and not backbone.channels_last_map else "head"
        elif pooling == "auto":
            pooling = "gem" if spatial and bool((fmap >= 0).all()) else "head"
        if pooling == "head" or not spatial:
            return "head", int(model.forward_head(fmap, pre_logits=True).shape[-1])
        return "gem", int(fmap.shape[-1] if backbone.channels_last_map else fmap.shape[1])
    finally:
        model.train(was_training)


def _fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """(H, W) a timm model refuses other input sizes than (a patch embedding with
    ``strict_img_size``, not ``dynamic_img_size``: ViT's ``patch_embed``, MLP-Mixer's
    ``stem``, wherever it sits), or None."""
    pe = next(
        (m for m in model.modules() if hasattr(m, "strict_img_size") and hasattr(m, "img_size")),
        None,
    )
    size = getattr(pe, "img_size", None)
    if pe is None or size is None or not getattr(pe, "strict_img_size", False):
        return None
    if getattr(model, "dynamic_img_size", False) or getattr(pe, "dynamic_img_pad", False):
        return None
    return (int(size[0]), int(size[1]))


__all__ = ["TIMM_POOLING", "TimmBackbone"]
