"""ReidModel (engine/inference.py) built directly, as a library user or a notebook does:
its defaults and argument checks. No training: an
untrained backbone is enough to tell the settings apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uvireid.engine.inference import ReidModel
from uvireid.errors import ConfigError


@pytest.fixture(scope="module")
def backbone():
    import uvireid  # noqa: F401  (registers the backbones)
    from uvireid.registry import BACKBONES

    torch.manual_seed(0)
    return BACKBONES.build({"type": "two_stream_resnet", "arch": "resnet18"})


def _pixels(n=3, seed=0):
    """Random, non-symmetric uint8 images at 32x16 (a flip changes their features)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 16), np.uint8)


def test_evaluation_without_flip_is_flip_averaged(backbone):
    """'flip-averaged unless evaluation.flip is false': an evaluation section without the
    key gives the features of flip=true, not those of flip=false."""
    train = {"height": 32, "width": 16}
    x = _pixels()
    default = ReidModel(backbone, train, {}).features(x, "visible")
    flipped = ReidModel(backbone, train, {"flip": True}).features(x, "visible")
    single = ReidModel(backbone, train, {"flip": False}).features(x, "visible")
    np.testing.assert_array_equal(default, flipped)
    assert np.abs(default - single).max() > 1e-4  # the flip matters: the check can fail


def test_embed_refuses_a_chunk_of_no_file(backbone, tmp_path):
    """chunk below 1 is a ConfigError naming it (chunk=0 looped for ever or raised a bare
    ValueError from range())."""
    from PIL import Image

    Image.fromarray(_pixels(1)[0].transpose(1, 2, 0)).save(tmp_path / "a.png")
    model = ReidModel(backbone, {"height": 32, "width": 16}, {})
    for chunk in (0, -1, 2.0, True):  # a float or bool: a bare TypeError of range() before
        with pytest.raises(ConfigError, match="chunk"):
            model.embed([tmp_path / "a.png"], "visible", chunk=chunk)
    feats, kept, skipped = model.embed([tmp_path / "a.png"], "visible", chunk=1)
    assert feats.shape[0] == 1 and kept == [str(tmp_path / "a.png")] and skipped == []
