"""ReidModel.features against a hand-written forward pass of a tiny random-init
two-stream resnet18: uint8 -> /255 -> ImageNet normalisation (constants typed here) ->
backbone(x, modality) -> head field -> L2 -> (+ L2 of the flipped image) / 2 -> L2.
Files: PIL resize to (W, H) with the run's test filter (test_resize, else resize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import uvireid  # noqa: F401  (registers the backbones)
from uvireid.engine.inference import ReidModel
from uvireid.registry import BACKBONES

H, W = 32, 16
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    bb = BACKBONES.build({"type": "two_stream_resnet", "arch": "resnet18"})
    with torch.no_grad():  # the two stems differ, and BN running stats are not trivial
        for name, p in bb.named_parameters():
            if name.startswith("specific.1."):
                p.add_(0.2 * torch.randn_like(p))
        for name, b in bb.named_buffers():
            if name.endswith("running_mean"):
                b.add_(0.05 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.mul_(1 + 0.3 * torch.rand_like(b))
    return bb.eval()


def _unit(v):
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def _manual(bb, u8_nchw, mods, head="bn_feat", flip=True):
    field = {"bn_feat": "bn_feat", "pool": "global_feat"}[head]
    out = []
    for i in range(len(u8_nchw)):  # one image at a time: no batching artefacts
        x = torch.from_numpy(np.ascontiguousarray(u8_nchw[i : i + 1])).double() / 255.0
        x = ((x - MEAN.double()) / STD.double()).float()
        m = torch.tensor([int(mods[i])])
        f = _unit(getattr(bb(x, m), field).float())
        if flip:
            g = _unit(getattr(bb(x.flip(3), m), field).float())
            f = _unit((f + g) / 2)
        out.append(f)
    return torch.cat(out).numpy()


def _pixels(n, seed=0, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), np.uint8)


@pytest.mark.parametrize("head", ["bn_feat", "pool"])
@pytest.mark.parametrize("flip", [True, False])
def test_decoded_arrays_match_a_manual_forward(backbone, head, flip):
    model = ReidModel(backbone, {"height": H, "width": W}, {"feature_head": head, "flip": flip})
    px = _pixels(5)
    mods = np.array([0, 1, 1, 0, 1])
    got = model.features(px, mods, batch=2)  # batches of 2, 2, 1
    want = _manual(backbone, px.transpose(0, 3, 1, 2), mods, head, flip)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_flip_is_horizontal_and_averaged_after_normalising_each_half(backbone):
    """flip=True differs from flip=False and from a vertical flip's average."""
    model = ReidModel(backbone, {"height": H, "width": W}, {})
    px = _pixels(3, seed=4)
    got = model.features(px, "infrared")
    nchw = px.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, _manual(backbone, nchw, [1, 1, 1]), rtol=0, atol=2e-5)
    # a vertical flip average would be another thing
    with torch.no_grad():
        x = (torch.from_numpy(np.ascontiguousarray(nchw)).float() / 255 - MEAN) / STD
        m = torch.ones(3, dtype=torch.long)
        v = _unit(_unit(backbone(x, m).bn_feat) + _unit(backbone(x.flip(2), m).bn_feat))
    assert np.abs(got - v.numpy()).max() > 1e-4


@pytest.mark.parametrize(
    "train, pil_filter",
    [
        ({"height": H, "width": W}, Image.BILINEAR),
        ({"height": H, "width": W, "resize": "bicubic"}, Image.BICUBIC),
        ({"height": H, "width": W, "resize": "bicubic", "test_resize": "lanczos"}, Image.LANCZOS),
    ],
)
def test_files_are_resized_with_the_test_filter_then_forwarded(
    backbone, tmp_path, train, pil_filter
):
    """Files of another size: PIL resize to (W, H) with the run's test filter (and not
    the other way round: (H, W)), then the manual forward."""
    model = ReidModel(backbone, train, {})
    big = _pixels(3, seed=2, h=57, w=23)
    paths, resized = [], []
    for i, p in enumerate(big):
        path = tmp_path / f"{i}.png"
        Image.fromarray(p).save(path)
        paths.append(path)
        resized.append(np.asarray(Image.fromarray(p).resize((W, H), pil_filter)))
    resized = np.stack(resized)
    mods = ["visible", "ir", "rgb"]
    got = model.features(paths, mods, batch=2)
    want = _manual(backbone, resized.transpose(0, 3, 1, 2), [0, 1, 0])
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_embed_skips_unreadable_files_and_keeps_per_file_modalities(backbone, tmp_path):
    """embed over chunks of 2 with per-file modalities and a broken file in each chunk:
    each kept file has the manual features of its own modality."""
    model = ReidModel(backbone, {"height": H, "width": W}, {})
    px = _pixels(4, seed=7)
    paths, mods = [], []
    good = []
    for i in range(4):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"nope")
        Image.fromarray(px[i]).save(tmp_path / f"{i}.png")
        paths += [str(tmp_path / f"bad{i}.jpg"), str(tmp_path / f"{i}.png")]
        mods += [1 - i % 2, i % 2]
        good.append(i % 2)
    feats, kept, skipped = model.embed(paths, mods, chunk=3, batch=1)
    assert kept == paths[1::2] and skipped == paths[0::2]
    want = _manual(backbone, px.transpose(0, 3, 1, 2), good)
    np.testing.assert_allclose(feats, want, rtol=0, atol=2e-5)


def test_embed_of_only_unreadable_files_gives_zero_rows_of_the_feature_width(backbone, tmp_path):
    model = ReidModel(backbone, {"height": H, "width": W}, {})
    (tmp_path / "a.jpg").write_bytes(b"nope")
    feats, kept, skipped = model.embed([tmp_path / "a.jpg"], "visible")
    d = _manual(backbone, _pixels(1).transpose(0, 3, 1, 2), [0]).shape[1]
    assert feats.shape == (0, d) and feats.dtype == np.float32
    assert kept == [] and skipped == [str(tmp_path / "a.jpg")]
    empty = model.features([], "visible")
    assert empty.shape == (0, d) and empty.dtype == np.float32


def test_features_leave_the_backbone_in_eval_mode_and_do_not_change_the_weights(backbone):
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = ReidModel(backbone, {"height": H, "width": W}, {})
    model.features(_pixels(2), "visible")
    assert not model.backbone.training
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
