"""uvireid.load_model: a run folder's trained model gives new images the features the run's
own evaluation gave its test images (its features.npz, to float rounding), with the run's
size, resize filter, feature head and flip setting."""

from __future__ import annotations

import numpy as np
import pytest
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
