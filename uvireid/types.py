"""Plain data passed between parts (DESIGN.md "Contracts").

Shapes are documented on each field; modalities are coded ``VISIBLE = 0`` and
``INFRARED = 1`` everywhere (records, features files, feature banks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

VISIBLE = 0
INFRARED = 1
MODALITY_NAMES = {VISIBLE: "visible", INFRARED: "infrared"}


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset, read straight from the raw release.

    Attributes:
        path: absolute path of the image file.
        pid: identity label as in the release (``-1`` when unknown, e.g. unlabelled crops).
        cam: camera number as in the release (SYSU-MM01: 1..6).
        modality: :data:`VISIBLE` or :data:`INFRARED`.
    """

    path: str
    pid: int
    cam: int
    modality: int


@dataclass(frozen=True)
class FeatureBank:
    """Features of a set of images, with what is known about each.

    Attributes:
        feats: (N, d) float tensor or array.
        modality: (N,) int, :data:`VISIBLE` or :data:`INFRARED`.
        cams: (N,) int camera numbers.
        pids: (N,) int ground-truth identities, or ``None`` when unknown (unsupervised).
        paths: optional list of N image paths.
    """

    feats: object
    modality: np.ndarray
    cams: np.ndarray
    pids: np.ndarray | None = None
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.modality)


@dataclass(frozen=True)
class CrossLabels:
    """Pseudo-labels of every instance in both label spaces after association.

    ``labels_in_v[i]`` is instance i's label in the visible clusters' label space and
    ``labels_in_r[i]`` in the infrared one (``-1`` where it has none). Instances are
    ordered visible first, then infrared, as passed to ``associate``.

    Attributes:
        labels_in_v: (Nv + Nr,) int64.
        labels_in_r: (Nv + Nr,) int64.
        matches: (M, 2) int64 pairs (visible cluster, infrared cluster) the associator used.
        unified: True when both spaces were merged into one (PGM/MBCCM): then
            ``labels_in_v == labels_in_r`` wherever both are defined.
        info: free-form diagnostics (counts, policies applied) for logging.
    """

    labels_in_v: np.ndarray
    labels_in_r: np.ndarray
    matches: np.ndarray
    unified: bool = False
    info: dict = field(default_factory=dict)
