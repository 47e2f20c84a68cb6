"""Mutation audit OI: uvireid.load_model / ReidModel on a hand-made run folder (a
config.yaml and checkpoints of an untrained backbone; no training), checked against
features computed file by file or against the weights written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import uvireid
from uvireid.engine.checkpoint import FORMAT, weights_sha1
from uvireid.engine.inference import ReidModel
from uvireid.errors import CheckpointError, ConfigError
from uvireid.registry import BACKBONES


def _backbone(seed):
    """An untrained backbone whose infrared stem differs from the visible one (the two
    start alike: a wrong modality code would not change the features)."""
    torch.manual_seed(seed)
    bb = BACKBONES.build({"type": "two_stream_resnet", "arch": "resnet18"})
    with torch.no_grad():
        for name, p in bb.named_parameters():
            if name.startswith("specific.1."):
                p.add_(0.2 * torch.randn_like(p))
    return bb


def _save(backbone, path, **extra):
    model = {"backbone." + k: v for k, v in backbone.state_dict().items()}
    torch.save({"format": FORMAT, "epoch": 1, "model": model, **extra}, path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder: the tiny recipe's config.yaml, latest.pt (seed 0), best.pt (seed 1)."""
    from train_fixtures import tiny_recipe

    tmp = tmp_path_factory.mktemp("oi")
    folder = tmp / "run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp)))
    latest, best = _backbone(0), _backbone(1)
    _save(latest, folder / "checkpoints" / "latest.pt")
    _save(best, folder / "checkpoints" / "best.pt")
    return folder, weights_sha1(latest), weights_sha1(best)


def _pixels(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 16, 3), np.uint8)


def test_latest_best_and_a_path_load_their_own_weights(run):
    folder, latest, best = run
    assert latest != best
    assert uvireid.load_model(folder).weights_sha1 == latest
    assert uvireid.load_model(folder, "latest").weights_sha1 == latest
    assert uvireid.load_model(folder, "best").weights_sha1 == best
    path = folder / "checkpoints" / "best.pt"
    model = uvireid.load_model(folder, str(path))
    assert model.weights_sha1 == best and model.source == str(path)


def test_a_relative_checkpoint_path_is_found_in_the_run_folder(run, tmp_path, monkeypatch):
    """``checkpoints/best.pt`` from another folder: read from the run folder (it was looked
    for in the current folder only); one that exists in the current folder wins."""
    folder, latest, best = run
    monkeypatch.chdir(tmp_path)
    model = uvireid.load_model(folder, "checkpoints/best.pt")
    assert model.weights_sha1 == best
    assert model.source == str(folder / "checkpoints" / "best.pt")
    (tmp_path / "checkpoints").mkdir()
    _save(_backbone(0), tmp_path / "checkpoints" / "best.pt")
    assert uvireid.load_model(folder, "checkpoints/best.pt").weights_sha1 == latest
    with pytest.raises(CheckpointError, match="no checkpoint"):
        uvireid.load_model(folder, "checkpoints/none.pt")


def test_a_checkpoint_with_an_extra_key_is_refused(run, tmp_path):
    folder, _, _ = run
    state = torch.load(folder / "checkpoints" / "latest.pt", weights_only=False)
    state["model"]["backbone.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="extra"):
        uvireid.load_model(folder, str(tmp_path / "x.pt"))


def test_embed_with_an_unreadable_file_among_readable_ones(run, tmp_path):
    """chunk=2, modalities per file, a broken file in the middle: each kept file gets the
    features it gets alone, in order."""
    model = uvireid.load_model(run[0])
    px = _pixels(3)
    names = []
    for i in range(3):
        Image.fromarray(px[i]).save(tmp_path / f"{i}.png")
        names.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths = [str(tmp_path / "bad.jpg"), names[0], names[1], names[2]]
    mods = ["visible", "visible", "infrared", "visible"]
    feats, kept, skipped = model.embed(paths, mods, chunk=2)
    assert kept == names and skipped == [str(tmp_path / "bad.jpg")]
    alone = [model.features(px[i : i + 1], m) for i, m in zip(range(3), mods[1:])]
    np.testing.assert_allclose(feats, np.concatenate(alone), rtol=0, atol=1e-6)
    with pytest.raises(uvireid.DatasetError, match="1 image"):
        model.features(paths, mods)


def test_decoded_images_of_another_type_shape_or_width_are_refused():
    model = ReidModel(_backbone(0), {"height": 32, "width": 16}, {})
    px = _pixels(2)
    for bad in (
        px.astype(np.float32) / 255,  # float images in [0, 1]: would be divided by 255
        px[..., :1].transpose(0, 3, 1, 2),  # (N, 1, H, W) grayscale
        np.zeros((2, 3, 32, 17), np.uint8),  # the right height, another width
    ):
        with pytest.raises(ConfigError):
            model.features(bad, "visible")


def test_a_list_of_decoded_images_is_stacked_not_read_as_file_names():
    model = ReidModel(_backbone(0), {"height": 32, "width": 16}, {})
    px = _pixels(3)
    want = model.features(px, "visible")
    np.testing.assert_array_equal(model.features(list(px), "visible"), want)
    tensors = [torch.from_numpy(p).permute(2, 0, 1) for p in px]  # (3, H, W) each
    np.testing.assert_array_equal(model.features(tensors, "visible"), want)
    with pytest.raises(ConfigError, match="2 different shapes"):
        model.features([px[0], px[1, :16]], "visible")
    with pytest.raises(ConfigError, match="not a mix; got elements of type ndarray, str"):
        model.features([px[0], "a.jpg"], "visible")
    pil = [Image.fromarray(p).convert("RGBA") for p in px]  # PIL images, as RGB
    np.testing.assert_array_equal(model.features(pil, "visible"), want)


def test_nir_names_infrared_and_the_default_head_is_bn_feat():
    bb = _backbone(0)
    train = {"height": 32, "width": 16}
    model = ReidModel(bb, train, {})
    assert model.head == "bn_feat"
    px = _pixels(2)
    ir = model.features(px, "infrared")
    np.testing.assert_array_equal(model.features(px, "NIR"), ir)
    assert np.abs(model.features(px, "visible") - ir).max() > 1e-4  # the stems differ
    pool = ReidModel(bb, train, {"feature_head": "pool"}).features(px, "infrared")
    assert np.abs(pool - ir).max() > 1e-4  # the head matters: the check can fail


def test_amp_follows_the_precision_the_run_ran_in():
    """train.amp of a run that ran in float32 (no native bf16 there) is not bf16 here."""
    bb, train = _backbone(0), {"height": 32, "width": 16, "amp": True}
    assert ReidModel(bb, train, {}, info={"precision": "float32"}).amp is False
    assert ReidModel(bb, train, {}, info={"precision": "bfloat16"}).amp is True
    assert ReidModel(bb, {**train, "amp": False}, {}).amp is False


def test_channels_first_images_three_pixels_wide_are_not_transposed():
    """(N, 3, H, 3) is channels first already: the same features as its (N, H, 3, 3)
    channels-last form."""
    model = ReidModel(_backbone(0), {"height": 8, "width": 3}, {})
    nchw = np.random.default_rng(1).integers(0, 256, (1, 3, 8, 3), np.uint8)
    got = model.features(nchw, "visible")
    np.testing.assert_array_equal(got, model.features(nchw.transpose(0, 2, 3, 1), "visible"))


@pytest.mark.parametrize("bad", [None, float("nan")])
def test_a_modality_of_none_or_nan_is_a_config_error(bad):
    """features() raises its documented ConfigError for a modality of None or nan (they
    gave a bare TypeError and ValueError from int())."""
    model = ReidModel(_backbone(0), {"height": 32, "width": 16}, {})
    with pytest.raises(ConfigError, match="modality"):
        model.features(_pixels(1), bad)


def test_pil_images_are_read_as_their_files_are(tmp_path):
    """A list of PIL images gives the features of the same images read from their files:
    a 16-bit thermal image stretched over its range (not clipped to white), 8-bit L, RGB
    and palette images converted to RGB."""
    from uvireid.data.images import read_image

    model = ReidModel(_backbone(0), {"height": 32, "width": 16}, {})
    rng = np.random.default_rng(0)
    wide = (np.arange(32 * 16).reshape(32, 16) * 7 + 1000).astype(np.uint16)
    images = {"I;16": Image.fromarray(wide)}
    for mode in ("L", "RGB", "P"):
        images[mode] = Image.fromarray(rng.integers(0, 256, (32, 16, 3), np.uint8)).convert(mode)
    for mode, img in images.items():
        path = tmp_path / f"x_{mode.replace(';', '')}.png"
        img.save(path)
        with Image.open(path) as back:
            assert back.mode == mode
            got = model.features([back], "infrared")
        decoded = np.asarray(read_image(path))
        assert decoded.max() > decoded.min()  # stretched, not flat
        np.testing.assert_array_equal(got, model.features(decoded[None], "infrared"))
