"""uvireid.load_model: a run folder's trained model gives new images the features the run's
own evaluation gave its test images (its features.npz, to float rounding), with the run's
size, resize filter, feature head and flip setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import uvireid
from uvireid.config import load_recipe
from uvireid.engine.runner import run_recipe
from uvireid.errors import CheckpointError, ConfigError, DatasetError
from uvireid.features import load_features


@pytest.mark.parametrize(
    "overrides", [[], ["evaluation.feature_head=pool", "evaluation.flip=false"]]
)
def test_the_model_of_a_run_gives_its_test_images_the_runs_own_features(recipe_file, overrides):
    folder = run_recipe(load_recipe(recipe_file, overrides), progress=False).path
    own = load_features(folder / "features.npz")
    model = uvireid.load_model(folder)
    assert model.info["epoch"] == 2  # the checkpoint of the last epoch
    for code, name in ((0, "visible"), (1, "infrared")):
        rows = np.flatnonzero(own.modality == code)
        got = model.features([own.paths[i] for i in rows], name)
        # to float rounding: the run extracted all test images in one batch (the
        # products' blocking, and so their last bits, follow the batch's size)
        np.testing.assert_allclose(got, own.feats[rows], rtol=0, atol=1e-6)
    # one call with a modality per image: the same rows
    mixed = model.features(list(own.paths[:6]), own.modality[:6])
    np.testing.assert_allclose(mixed, own.feats[:6], rtol=0, atol=1e-6)


def test_decoded_images_and_bad_input(recipe_file, tmp_path):
    folder = run_recipe(load_recipe(recipe_file), progress=False).path
    model = uvireid.load_model(folder, device="cpu")
    own = load_features(folder / "features.npz")
    # a decoded image at the model's size, channels last: the features of the same pixels
    # written to a file of exactly that size (no resize then)
    pixels = np.random.default_rng(0).integers(0, 256, (model.height, model.width, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    from_file = model.features([tmp_path / "x.png"], "infrared")
    from_array = model.features(pixels[None], "infrared")
    np.testing.assert_array_equal(from_array, from_file)
    assert np.linalg.norm(from_file, axis=1) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="the model takes"):
        model.features(np.zeros((1, 3, model.height + 1, model.width), np.uint8), "visible")
    with pytest.raises(ConfigError, match="not one of visible, infrared"):
        model.features([own.paths[0]], "thermal-ish")
    with pytest.raises(ConfigError, match="2 modalities for 1 images"):
        model.features([own.paths[0]], ["visible", "infrared"])
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="cannot be read .*broken.jpg"):
        model.features([tmp_path / "broken.jpg"], "visible")
    with pytest.raises(CheckpointError, match="best.pt"):
        uvireid.load_model(folder, "best")
    with pytest.raises(ConfigError, match="is not a run folder"):
        uvireid.load_model(tmp_path)


def _texture_the_test_images(root, seed=0):
    """The fixture's images are of one colour each, so a flip, a resize filter or the
    precision leave their features alike: give every image of the tree random pixels at
    another size than the model's (and not mirror-symmetric)."""
    rng = np.random.default_rng(seed)
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in (".jpg", ".png", ".bmp"):
            img = rng.integers(0, 256, (45, 23, 3), np.uint8)
            Image.fromarray(img).save(path, quality=95) if path.suffix == ".jpg" else (
                Image.fromarray(img).save(path)
            )


def _own_features_again(folder, model):
    own = load_features(folder / "features.npz")
    for code in (0, 1):
        rows = np.flatnonzero(own.modality == code)
        got = model.features([own.paths[i] for i in rows], ["visible", "ir"][code])
        np.testing.assert_allclose(got, own.feats[rows], atol=1e-6, rtol=0)
    return own


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.test_resize=lanczos", "evaluation.flip=false"],
        ["train.resize=bicubic", "evaluation.flip=true"],
    ],
)
def test_textured_images_give_the_runs_own_features(recipe_file, overrides):
    """Textured test images: the model's resize filter (train.test_resize, else
    train.resize) and its flip setting decide the features; 'ir' names infrared."""
    import yaml

    cfg = yaml.safe_load(recipe_file.read_text())
    from pathlib import Path

    _texture_the_test_images(Path(cfg["data"]["root"]))
    folder = run_recipe(load_recipe(recipe_file, overrides), progress=False).path
    model = uvireid.load_model(folder)
    own = _own_features_again(folder, model)
    # the check can fail: another filter or the other flip gives other features
    rows = np.flatnonzero(own.modality == 0)[:4]
    paths = [own.paths[i] for i in rows]
    model.flip = not model.flip
    assert np.abs(model.features(paths, "visible") - own.feats[rows]).max() > 1e-4
    model.flip = not model.flip
    model.resize = "bilinear" if model.resize != "bilinear" else "lanczos"
    assert np.abs(model.features(paths, "visible") - own.feats[rows]).max() > 1e-4


def test_a_run_whose_pretrained_file_is_gone_still_loads(recipe_file, tmp_path):
    """Every weight comes from the checkpoint: backbone.pretrained (a file here, ImageNet
    weights from the network elsewhere) is not read again."""
    import torchvision

    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    folder = run_recipe(
        load_recipe(recipe_file, [f"backbone.pretrained={weights}"]), progress=False
    ).path
    weights.unlink()
    model = uvireid.load_model(folder)
    _own_features_again(folder, model)


@pytest.mark.skipif(
    not __import__("uvireid.engine.trainer", fromlist=["x"]).cpu_bf16_native(),
    reason="bf16 is not native on this CPU: train.amp runs in float32 here",
)
def test_an_amp_run_extracts_in_bf16_as_its_evaluation(recipe_file):
    from pathlib import Path

    import yaml

    _texture_the_test_images(Path(yaml.safe_load(recipe_file.read_text())["data"]["root"]))
    folder = run_recipe(load_recipe(recipe_file, ["train.amp=true"]), progress=False).path
    model = uvireid.load_model(folder)
    own = _own_features_again(folder, model)
    rows = np.flatnonzero(own.modality == 0)[:4]
    model.amp = False  # float32 would give other features: the check can fail
    got = model.features([own.paths[i] for i in rows], "visible")
    assert np.abs(got - own.feats[rows]).max() > 1e-4


@pytest.mark.skipif(
    not __import__("uvireid.engine.trainer", fromlist=["x"]).cpu_bf16_native(),
    reason="needs a CPU with native bf16 to load on",
)
def test_an_amp_run_that_ran_in_float32_is_extracted_in_float32(recipe_file, monkeypatch):
    """train.amp=true on a device without native bf16 ran (and evaluated) in float32
    (manifest precision float32); loaded where bf16 is native, the model must still give
    the run's float32 features."""
    from pathlib import Path

    import yaml

    import uvireid.engine.trainer as trainer

    _texture_the_test_images(Path(yaml.safe_load(recipe_file.read_text())["data"]["root"]))
    with monkeypatch.context() as mp:
        mp.setattr(trainer, "cpu_bf16_native", lambda: False)
        folder = run_recipe(load_recipe(recipe_file, ["train.amp=true"]), progress=False).path
    assert '"precision": "float32"' in (folder / "manifest.json").read_text()
    _own_features_again(folder, uvireid.load_model(folder))


def test_paths_as_a_numpy_array_or_a_generator(recipe_file):
    """A features file's paths are a numpy array of str; Path.glob gives a generator."""
    folder = run_recipe(load_recipe(recipe_file), progress=False).path
    model = uvireid.load_model(folder)
    own = load_features(folder / "features.npz")
    want = model.features(list(own.paths[:3]), "visible")
    np.testing.assert_array_equal(model.features(own.paths[:3], "visible"), want)
    np.testing.assert_array_equal(model.features((p for p in own.paths[:3]), "visible"), want)


def test_modality_codes_from_names_scalars_and_per_image_values():
    """A name, a code, a 0-d array or tensor (np.array(1): a TypeError before) for all
    images, or one per image."""
    from uvireid.engine.inference import _modalities

    for one in ("infrared", "IR", 1, np.int64(1), np.array(1), torch.tensor(1)):
        assert _modalities(one, 3).tolist() == [1, 1, 1]
    assert _modalities(["rgb", 1, np.array(0)], 3).tolist() == [0, 1, 0]
    for bad in (np.array(2), True, "depth", 0.5):
        with pytest.raises(ConfigError, match="modality"):
            _modalities(bad, 2)
