"""Models: backbones (two-stream ResNet, timm), pooling.

Importing this package registers the backbones in :data:`uvireid.registry.BACKBONES`.
"""

from __future__ import annotations

from uvireid.models.backbone import BackboneOutput, TimmBackbone, TwoStreamResNet
from uvireid.models.pooling import GeM, gem

__all__ = ["BackboneOutput", "GeM", "TimmBackbone", "TwoStreamResNet", "gem"]
