"""Feature extraction: a model and image records in, a :class:`FeatureBank` out."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from uvireid.types import FeatureBank, ImageRecord

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def test_transform(height: int, width: int, resize: str = "bilinear"):
    """Resize to (height, width) with PIL's ``resize`` filter (``bilinear``, ``bicubic``
    or ``lanczos``: ``train.test_resize``), tensor, ImageNet normalisation (the peers' test
    path)."""
    import torchvision.transforms as T

    from uvireid.data.transforms import check_resize

    # torchvision's modes carry the same names (InterpolationMode("bicubic"))
    mode = T.InterpolationMode(check_resize(resize))
    return T.Compose(
        [
            T.Resize((height, width), interpolation=mode),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class RecordImages(Dataset):
    """Images of a list of records, with their modality (for the two-stream stem)."""

    def __init__(self, records: Sequence[ImageRecord], transform):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        from uvireid.data.images import read_image

        rec = self.records[i]
        return self.transform(read_image(rec.path)), rec.modality


def usable_workers(workers: int) -> int:
    """``train.workers`` capped at the CPUs this process may use (more loader processes
    than CPUs only compete with each other; torch warns about it)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(int(workers), cpus))


def _autocast(device, amp: bool):
    from uvireid.engine.trainer import _autocast as autocast

    return autocast(str(device), amp)


def extract_features(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    *,
    height: int,
    width: int,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    workers: int = 0,
    progress: bool = False,
    head: str = "bn_feat",
    resize: str = "bilinear",
    flip: bool = True,
    amp: bool = False,
) -> FeatureBank:
    """Test-time features of ``records`` (``model.extract(images, modality, flip)``; ``head``:
    see :data:`uvireid.models.backbone.FEATURE_HEADS`; ``resize``: the images' filter, see
    :func:`test_transform`).

    Returns a FeatureBank with ``feats`` (N, d) float32 numpy, L2-normalised as the
    model's ``extract`` returns them, in the order of ``records``.
    """
    loader = DataLoader(
        RecordImages(records, test_transform(height, width, resize)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=usable_workers(workers),
        pin_memory=torch.device(device).type == "cuda",
    )
    was_training = model.training
    model.eval()
    chunks = []
    it = loader
    if progress:
        from tqdm import tqdm

        # disable=None: no bars where stderr is not a terminal (a batch job's log, where
        # each refresh would be written and the next log line glued to an erased bar)
        it = tqdm(loader, desc="extract", unit="batch", leave=False, disable=None)
    # the mode restored whatever happens (audit NI: an error left the model in eval mode,
    # as extract_images never did); no graph kept for a plugin whose extract has no no_grad
    try:
        with torch.no_grad():
            for images, modality in it:
                x = images.to(device, non_blocking=True)  # modality stays on the host
                kwargs = {} if flip else {"flip": False}  # a plain extract(x, m) stays valid
                if head != "bn_feat":
                    kwargs["head"] = head
                with _autocast(device, amp):  # bf16 where train.amp takes effect
                    feats = model.extract(x, modality, **kwargs)
                chunks.append(feats.float().cpu())
    finally:
        model.train(was_training)
    # no records: (0, d) as extract_images gives, where the model says its width
    d = getattr(model, "out_dim", 0)
    feats = torch.cat(chunks).numpy() if chunks else np.zeros((0, d), np.float32)
    return FeatureBank(
        feats=feats,
        modality=np.array([r.modality for r in records], dtype=np.int64),
        cams=np.array([r.cam for r in records], dtype=np.int64),
        pids=np.array([r.pid for r in records], dtype=np.int64),
        paths=[r.path for r in records],
    )
