"""Datasets read from their raw release folders (README "Datasets").

Importing this package registers the built-in datasets in
:data:`uvireid.registry.DATASETS`: ``sysu`` (SYSU-MM01), ``regdb`` (RegDB), ``llcm``
(LLCM) and ``folder`` (your own unlabelled images), and the stages' batch samplers in
:data:`uvireid.registry.SAMPLERS` (``identity``, ``paired``, ``matched``).
"""

from __future__ import annotations

# registered on import: the samplers, the `synthetic` dataset
from uvireid.data import samplers, synthetic  # noqa: F401
from uvireid.data.base import IdList, VIDataset
from uvireid.data.folder import FolderDataset
from uvireid.data.images import list_images, read_image
from uvireid.data.llcm import LLCM
from uvireid.data.regdb import RegDB
from uvireid.data.sysu import SYSUMM01

__all__ = [
    "LLCM",
    "SYSUMM01",
    "FolderDataset",
    "IdList",
    "RegDB",
    "VIDataset",
    "list_images",
    "read_image",
]
