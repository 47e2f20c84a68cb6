"""ReidModel.features / embed input handling (modality codes, paths as object
arrays, read-only arrays, progress logging), each against the documented behaviour or a
reference call with the plain form of the same input."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import uvireid  # noqa: F401  (registers the backbones)
from uvireid.engine.inference import ReidModel
from uvireid.errors import ConfigError
from uvireid.registry import BACKBONES


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    bb = BACKBONES.build({"type": "two_stream_resnet", "arch": "resnet18"})
    with torch.no_grad():  # the infrared stem differs from the visible one
        for name, p in bb.named_parameters():
            if name.startswith("specific.1."):
                p.add_(0.2 * torch.randn_like(p))
    return ReidModel(bb, {"height": 32, "width": 16}, {"flip": False})


def _px(n=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 16, 3), np.uint8)


def test_modality_names_and_scalar_codes(model):
    px = _px()
    vis, ir = model.features(px, [0, 0]), model.features(px, [1, 1])
    assert np.abs(vis - ir).max() > 1e-4  # the stems differ: the checks can fail
    for name in ("thermal", "IR", "nir", "Infrared"):
        np.testing.assert_array_equal(model.features(px, name), ir)
    for name in ("rgb", "Visible"):
        np.testing.assert_array_equal(model.features(px, name), vis)
    for scalar in (np.int64(1), np.array(1), 1.0, torch.tensor(1)):
        np.testing.assert_array_equal(model.features(px, scalar), ir)
    np.testing.assert_array_equal(model.features(px, np.array([0, 1]))[1], ir[1])


@pytest.mark.parametrize("bad", [True, np.bool_(False), 0.5, 1.5, -1, 2, "vis"])
def test_modalities_that_are_not_0_or_1_are_refused(model, bad):
    with pytest.raises(ConfigError, match="modality"):
        model.features(_px(), bad)


def test_more_or_fewer_modalities_than_images_are_refused(model):
    for mods in ([0, 1, 1], [0]):
        with pytest.raises(ConfigError, match=f"{len(mods)} modalities for 2 images"):
            model.features(_px(), mods)


def test_paths_in_an_object_array_are_files(model, tmp_path):
    px = _px()
    paths = []
    for i in range(2):
        Image.fromarray(px[i]).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    want = model.features(px, "visible")
    np.testing.assert_array_equal(model.features(np.array(paths, dtype=object), "visible"), want)
    np.testing.assert_array_equal(model.features(np.array([str(p) for p in paths]), 0), want)


def test_a_read_only_array_is_accepted_without_a_warning(model):
    px = _px()
    ro = px.copy()
    ro.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = model.features(ro, "visible")
    np.testing.assert_array_equal(got, model.features(px, "visible"))


def test_progress_is_logged_only_for_more_than_one_chunk(model, tmp_path, caplog):
    px = _px(3)
    paths = []
    for i in range(3):
        Image.fromarray(px[i]).save(tmp_path / f"{i}.png")
        paths.append(Path(tmp_path / f"{i}.png"))
    with caplog.at_level(logging.INFO, logger="uvireid.engine.inference"):
        model.embed(paths, "visible", chunk=3)
    assert not [r for r in caplog.records if "embedded" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="uvireid.engine.inference"):
        model.embed(paths, "visible", chunk=2)
    assert [r.getMessage() for r in caplog.records if "embedded" in r.getMessage()] == [
        "embedded 2 of 3 images",
        "embedded 3 of 3 images",
    ]


def test_a_backbone_given_in_train_mode_is_used_and_left_in_eval_mode():
    """ReidModel(backbone in train mode): the model is put in eval mode (BN running
    statistics) and stays there after features()."""
    torch.manual_seed(1)
    bb = BACKBONES.build({"type": "two_stream_resnet", "arch": "resnet18"})
    assert bb.training
    model = ReidModel(bb, {"height": 32, "width": 16}, {"flip": False})
    assert not model.backbone.training
    model.features(_px(), "visible")
    assert not model.backbone.training


def test_a_single_pil_image_is_one_image(model):
    px = np.random.default_rng(0).integers(0, 256, (32, 16, 3), np.uint8)
    img = Image.fromarray(px)
    got = model.features(img, "visible")  # one PIL image is one image, as one file is
    np.testing.assert_array_equal(got, model.features([img], "visible"))


def test_a_run_without_a_checkpoint_yet_names_the_checkpoint_option(tmp_path):
    """A run folder stopped before its first epoch: the refusal says latest.pt comes after
    the first epoch and how to give another checkpoint file (library and command line)."""
    from uvireid.errors import CheckpointError

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    with pytest.raises(CheckpointError) as info:
        ReidModel.from_run(run)
    msg = str(info.value)
    assert "after its first epoch" in msg
    assert "checkpoint=FILE" in msg and "--checkpoint FILE" in msg
