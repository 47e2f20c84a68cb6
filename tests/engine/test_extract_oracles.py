"""``extract_features`` with a plugin's plain ``extract``, the model's mode, the bank's
dtype, the resize filter (against PIL by hand) and the worker cap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from uvireid.engine.extract import IMAGENET_MEAN, IMAGENET_STD, extract_features, usable_workers
from uvireid.errors import ConfigError
from uvireid.types import ImageRecord


def _records(tmp_path, n=3, h=12, w=6):
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(path)
        recs.append(ImageRecord(str(path), 20 + i, 1 + i, i % 2))
    return recs


class Pixels(torch.nn.Module):
    """extract(x, modality) without the optional keywords: the pixels as the feature, in
    the dtype asked for (a plugin's model need not accept flip or head)."""

    out_dim = 3 * 8 * 4

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.dtype, self.calls = dtype, []

    def extract(self, x, modality):
        self.calls.append(modality.tolist())
        return x.flatten(1).to(self.dtype)


def _by_hand(recs, h, w, resample):
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    rows = []
    for r in recs:
        img = Image.open(r.path).convert("RGB").resize((w, h), resample)
        a = np.asarray(img, np.float32).transpose(2, 0, 1) / 255
        rows.append(((a - mean) / std).reshape(-1))
    return np.stack(rows)


@pytest.mark.parametrize(
    ("resize", "resample"),
    [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC), ("lanczos", Image.LANCZOS)],
)
def test_a_plain_extract_gets_the_images_resized_by_the_named_filter(tmp_path, resize, resample):
    """The defaults (flip, head bn_feat) pass no keyword to ``extract`` (a plain
    ``extract(x, m)`` stays valid); the images are resized (height, width) with PIL's
    filter of that name, made [0, 1] and ImageNet-normalised, in the records' order."""
    recs = _records(tmp_path)
    m = Pixels()
    bank = extract_features(m, recs, height=8, width=4, batch_size=2, resize=resize)
    np.testing.assert_allclose(bank.feats, _by_hand(recs, 8, 4, resample), atol=1e-5, rtol=0)
    assert m.calls == [[0, 1], [0]]
    assert bank.pids.tolist() == [20, 21, 22] and bank.cams.tolist() == [1, 2, 3]
    assert bank.paths == [r.path for r in recs]


def test_the_optional_keywords_are_passed_only_when_not_the_default(tmp_path):
    recs = _records(tmp_path, n=2)
    seen = []

    class Keywords(Pixels):
        def extract(self, x, modality, **kw):
            seen.append(kw)
            return super().extract(x, modality)

    extract_features(Keywords(), recs, height=8, width=4, flip=False, head="pool")
    extract_features(Keywords(), recs, height=8, width=4, flip=True, head="bn_feat")
    assert seen == [{"flip": False, "head": "pool"}, {}]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
def test_the_bank_is_float32_whatever_the_model_returns(tmp_path, dtype):
    recs = _records(tmp_path, n=2)
    bank = extract_features(Pixels(dtype), recs, height=8, width=4)
    assert bank.feats.dtype == np.float32 and bank.feats.shape == (2, 96)
    want = _by_hand(recs, 8, 4, Image.BILINEAR)  # values within [-2.2, 2.7]
    np.testing.assert_allclose(bank.feats, want, atol=2e-2 if dtype == torch.bfloat16 else 3e-3)


def test_a_model_in_eval_mode_stays_in_eval_mode(tmp_path):
    recs = _records(tmp_path, n=2)
    m = Pixels().eval()
    extract_features(m, recs, height=8, width=4)
    assert not m.training
    m.train()
    extract_features(m, recs, height=8, width=4)
    assert m.training


def test_an_unknown_resize_filter_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="resize must be one of"):
        extract_features(Pixels(), _records(tmp_path, n=1), height=8, width=4, resize="nearest")


def test_negative_workers_are_no_workers():
    assert usable_workers(-3) == 0 and usable_workers(0) == 0
    assert usable_workers(1.0) == 1
