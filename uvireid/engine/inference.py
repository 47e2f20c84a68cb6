"""A trained model for inference: a run folder in, images' features out.

``uvireid.load_model(RUN_DIR)`` gives a :class:`ReidModel` whose :meth:`~ReidModel.features`
turns image files (or decoded images) into the features the run evaluated with: the same
size and resize filter as its test images, ImageNet normalisation, the run's feature
head (``evaluation.feature_head``), flip-averaged unless ``evaluation.flip`` is false,
L2-normalised, in bf16 where the run trained in bf16 and the device has it. So features
of new images can be matched against each other, or against a features file of the run,
with a dot product::

    model = uvireid.load_model("runs/salcr-20260101-120000")
    q = model.features(["probe1.png", "probe2.png"], "infrared")
    g = model.features(gallery_paths, "visible")
    ranking = (q @ g.T).argsort(axis=1)[:, ::-1]

The weights load strictly: a missing, unexpected or mis-shaped key is an error naming it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uvireid.errors import CheckpointError, ConfigError, DatasetError
from uvireid.types import INFRARED, VISIBLE

__all__ = ["ReidModel", "load_model"]

logger = logging.getLogger(__name__)

_MODALITIES = {
    "visible": VISIBLE,
    "rgb": VISIBLE,
    "infrared": INFRARED,
    "ir": INFRARED,
    "thermal": INFRARED,
    "nir": INFRARED,
}


def _stack_decoded(images: list | tuple) -> list | tuple | torch.Tensor:
    """A list of decoded images (arrays, tensors or PIL images, as RGB) as one (N, ...)
    tensor; a list of file paths unchanged. Anything else is refused here: ``str()`` of
    an array would otherwise be read as a file name and reported as an unreadable image."""
    if all(isinstance(i, (str, os.PathLike)) for i in images):
        return images
    images = [_pil_rgb(i) for i in images]
    if not all(isinstance(i, (np.ndarray, torch.Tensor)) for i in images):
        kinds = sorted({type(i).__name__ for i in images})
        raise ConfigError(
            f"images: give a list of image files or a list of decoded images (arrays), not "
            f"a mix; got elements of type {', '.join(kinds)}"
        )
    shapes = sorted({tuple(i.shape) for i in images})
    if len(shapes) > 1:
        raise ConfigError(
            f"images: decoded images of {len(shapes)} different shapes ({shapes[0]}, "
            f"{shapes[1]}, ...); give them all at the model's size, or pass the files, "
            f"which are resized as the run's test images"
        )
    return torch.stack(
        [
            i.cpu() if torch.is_tensor(i) else torch.from_numpy(np.ascontiguousarray(i))
            for i in images
        ]
    )


def _is_pil(image: Any) -> bool:
    """Whether ``image`` is a PIL image (Pillow not imported to find out)."""
    return type(image).__module__.startswith("PIL.") and hasattr(image, "convert")


def _pil_rgb(image: Any) -> Any:
    """A PIL image as its (H, W, 3) uint8 RGB array, as its file would be read (a 16-bit
    thermal image stretched, not clipped to white); anything else unchanged."""
    if _is_pil(image):
        from uvireid.data.images import as_rgb

        return np.array(as_rgb(image))  # a writable copy (torch.from_numpy)
    return image


def _modalities(modality: Any, n: int) -> np.ndarray:
    """(n,) int64 modality codes from a name, a code, or one per image."""
    if isinstance(modality, str) or np.ndim(modality) == 0:  # np.array(1) too (audit KB)
        modality = [modality] * n
    codes = []
    for m in modality:
        if isinstance(m, str):
            if m.lower() not in _MODALITIES:
                raise ConfigError(
                    f"modality {m!r} is not one of visible, infrared (or rgb, ir, thermal, nir)"
                )
            codes.append(_MODALITIES[m.lower()])
        else:
            try:  # None or nan: int() raised a bare TypeError / ValueError (audit OI)
                code = None if isinstance(m, (bool, np.bool_)) else int(m)
            except (TypeError, ValueError, OverflowError):
                code = None
            if code not in (VISIBLE, INFRARED) or code != m:
                raise ConfigError(f"modality {m!r}: 0 (visible) or 1 (infrared)")
            codes.append(code)
    if len(codes) != n:
        raise ConfigError(f"{len(codes)} modalities for {n} images; give one, or one per image")
    return np.asarray(codes, dtype=np.int64)


class ReidModel:
    """A trained backbone with the test-time settings of the run it came from.

    Attributes:
        backbone: the model (eval mode), on ``device``.
        height, width: the input size; resize: the test images' resize filter.
        head, flip, amp: the run's feature head, flip-averaging and bf16 extraction.
        source: the checkpoint the weights came from; info: what it says about itself
            (``epoch`` finished, ``stage``).
        chunk: image files decoded at a time by :meth:`features` and :meth:`embed`
            (4096: ~0.5 GiB of decoded 288x144 images).
    """

    chunk = 4096

    def __init__(
        self,
        backbone: torch.nn.Module,
        train: dict,
        evaluation: dict,
        device: str = "cpu",
        source: str = "",
        info: dict | None = None,
    ):
        from uvireid.engine.trainer import eval_resize

        self.backbone = backbone.to(device).eval()
        self.device = device
        self.height, self.width = int(train["height"]), int(train["width"])
        self.resize = eval_resize(train)
        self.head = evaluation.get("feature_head", "bn_feat")
        self.flip = bool(evaluation.get("flip", True))
        # what train.amp came to where the run ran (float32 on a CPU without native bf16)
        self.amp = bool(train.get("amp", False)) and (info or {}).get("precision") != "float32"
        self.source = source
        self.info = dict(info or {})

    @classmethod
    def from_run(
        cls, run_dir: str | os.PathLike, checkpoint: str = "latest", device: str = "cpu"
    ) -> ReidModel:
        """The model of a run folder: its ``config.yaml`` and a checkpoint, ``latest``
        (``checkpoints/latest.pt``), ``best`` (``checkpoints/best.pt``, chosen on the
        test set) or a path (a relative one from the current folder, else from the run
        folder: ``checkpoints/epoch_10.pt``).

        Raises:
            ConfigError: not a run folder; CheckpointError: no such checkpoint, or its
                weights do not fit the run's backbone.
        """
        from uvireid.config import check_device, load_recipe, resolve_device
        from uvireid.engine.checkpoint import BEST, LATEST, load_state_strict
        from uvireid.engine.export import backbone_weights
        from uvireid.engine.run_folder import RunFolder
        from uvireid.registry import BACKBONES

        run = Path(run_dir)
        if not RunFolder.is_run(run):
            raise ConfigError(
                f"{run} is not a run folder (no config.yaml in it); give a folder written by "
                f"`uvireid run` (<output_dir>/<recipe>-<time>)"
            )
        names = {"latest": LATEST, "best": BEST}
        path = run / "checkpoints" / names[checkpoint] if checkpoint in names else Path(checkpoint)
        if not path.is_file() and not path.is_absolute() and (run / path).is_file():
            path = run / path  # relative to the run folder (audit OI: only the current one)
        if not path.is_file():
            said = (
                " (best.pt exists where evaluation.keep_best is true and an evaluation ran)"
                if checkpoint == "best"
                else " (a run writes latest.pt after its first epoch; for another checkpoint "
                "file: checkpoint=FILE, on the command line --checkpoint FILE)"
                if checkpoint == "latest"
                else " (give latest, best or the path of a checkpoint file)"
            )
            raise CheckpointError(f"no checkpoint {path}{said}")
        check_device(device, "device")
        device = resolve_device(device)
        cfg = load_recipe(run / "config.yaml")
        spec = {**cfg["backbone"]}
        if "pretrained" in spec:
            spec["pretrained"] = False  # every weight comes from the checkpoint
        backbone = BACKBONES.build(spec)
        weights, info = backbone_weights(path)
        load_state_strict(backbone, weights, source=f"the backbone of {path}")
        return cls(backbone, cfg["train"], cfg["evaluation"], device, str(path), info)

    @property
    def weights_sha1(self) -> str:
        """The fingerprint of the weights as they are now
        (:func:`~uvireid.engine.checkpoint.weights_sha1`)."""
        from uvireid.engine.checkpoint import weights_sha1

        return weights_sha1(self.backbone)

    def _read(self, paths: Sequence[str | os.PathLike]) -> tuple[torch.Tensor, np.ndarray]:
        """``(images, ok)``: the files decoded and resized as the run's test images, and
        which of them could be read (the others left black)."""
        from uvireid.data.transforms import load_images
        from uvireid.types import ImageRecord

        records = [ImageRecord(str(p), -1, -1, VISIBLE) for p in paths]  # decoding only
        return load_images(records, self.height, self.width, resize=self.resize, quiet=True)

    def embed(
        self,
        paths: Sequence[str | os.PathLike],
        modality: Any,
        batch: int = 256,
        chunk: int | None = None,
    ) -> tuple[np.ndarray, list[str], list[str]]:
        """Features of image files that may include unreadable ones, read ``chunk`` files
        at a time (so a large folder never sits decoded in memory at once).

        Args:
            paths: image files.
            modality: ``visible`` / ``infrared`` (or 0 / 1) for all, or one per file.
            batch: images per forward pass; chunk: files decoded at a time (default
                :attr:`chunk`).

        Returns:
            ``(feats, kept, skipped)``: (M, d) float32 features of the M files that could
            be read, their paths (in the order given), and the paths that could not (a
            corrupt, truncated or missing file; skipped, as training skips them).
        """
        paths = [str(p) for p in paths]
        codes = _modalities(modality, len(paths))
        chunk = self.chunk if chunk is None else chunk
        if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
            raise ConfigError(f"chunk: at least 1 file at a time, a whole number; got {chunk!r}")
        parts: list[np.ndarray] = []
        kept: list[str] = []
        skipped: list[str] = []
        for start in range(0, len(paths), chunk):
            names = paths[start : start + chunk]
            images, ok = self._read(names)
            skipped += [n for n, good in zip(names, ok) if not good]
            if ok.any():
                rows = torch.from_numpy(np.flatnonzero(ok))
                parts.append(self.features(images[rows], codes[start : start + chunk][ok], batch))
                kept += [n for n, good in zip(names, ok) if good]
            if len(paths) > chunk:
                done = min(start + chunk, len(paths))
                logger.info("embedded %d of %d images", done, len(paths))
        if not parts:
            return self.features([], "visible", batch), kept, skipped
        return np.concatenate(parts), kept, skipped

    def features(
        self,
        images: Sequence[str | os.PathLike] | torch.Tensor | np.ndarray,
        modality: Any,
        batch: int = 256,
    ) -> np.ndarray:
        """(N, d) float32 L2-normalised features, as the run's evaluation extracts them.

        Args:
            images: image files (decoded and resized as the run's test images), or
                decoded uint8 images already at the model's size, (N, 3, H, W) or
                (N, H, W, 3) (a tensor on any device), or a list of them (one (3, H, W) /
                (H, W, 3) each, or PIL images); one file or one PIL image is one image.
            modality: ``visible`` / ``infrared`` (or 0 / 1) for all, or one per image.
            batch: images per forward pass.

        Raises:
            DatasetError: an image file cannot be read; ConfigError: images of another
                size or type, a wrong modality.
        """
        from uvireid.engine.trainer import extract_images

        if isinstance(images, (str, os.PathLike)) or _is_pil(images):
            images = [images]  # one file, or one decoded PIL image
        elif isinstance(images, torch.Tensor):
            images = images.detach().cpu()  # a batch on the GPU: numpy reads host memory
        elif isinstance(images, np.ndarray) and images.dtype.kind in "USO":
            images = images.tolist()  # a features file's paths
        elif not isinstance(images, (np.ndarray, list, tuple)):
            images = list(images)  # a generator (Path.glob), a pandas Series
        if isinstance(images, (list, tuple)) and images:
            images = _stack_decoded(images)
        if isinstance(images, (list, tuple)) and images:
            # files: embed's chunks (a large folder never sits decoded in memory), every
            # file readable
            feats, _, bad = self.embed(images, modality, batch)
            if bad:
                raise DatasetError(
                    f"{len(bad)} image(s) cannot be read (e.g. {', '.join(bad[:3])}); check "
                    f"that they exist and are image files"
                )
            return feats
        if isinstance(images, (list, tuple)):
            x = torch.zeros(0, 3, self.height, self.width)
        else:
            arr = np.asarray(images)  # a read-only array (np.asarray of a PIL image): copied
            x = torch.as_tensor(arr if arr.flags.writeable else arr.copy())
            if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
                x = x.permute(0, 3, 1, 2)
            if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
                raise ConfigError(
                    f"images: give image files, or uint8 images (N, 3, H, W) / (N, H, W, 3); "
                    f"got {x.dtype} of shape {tuple(x.shape)}"
                )
            if tuple(x.shape[2:]) != (self.height, self.width):
                raise ConfigError(
                    f"images are {x.shape[2]}x{x.shape[3]}, the model takes "
                    f"{self.height}x{self.width} (the run's train.height x train.width); "
                    f"pass the files instead, which are resized as the run's test images"
                )
        codes = _modalities(modality, len(x))
        # amp: bf16 where the device has it natively, as the run's evaluation
        feats, _ = extract_images(
            self.backbone,
            x.contiguous(),
            codes,
            self.device,
            batch=batch,
            flip=self.flip,
            amp=self.amp,
            head=self.head,
        )
        return feats.numpy()


def load_model(
    run_dir: str | os.PathLike, checkpoint: str = "latest", device: str = "cpu"
) -> ReidModel:
    """:meth:`ReidModel.from_run`: a run folder's trained model, for inference."""
    return ReidModel.from_run(run_dir, checkpoint, device)
