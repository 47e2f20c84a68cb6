"""Edges found by review OR of the fixes of audits OA-OG: the report of an official-sampler
run whose file is gone, dangling links named as files beside the camera folders, and the
paths the fixes must keep (a linked camera, a hidden dangling link, wrapped models'
fingerprints)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from PIL import Image
from torch import nn

from uvireid.errors import DatasetError
from uvireid.evaluation.protocols import run_protocol
from uvireid.features import load_features, save_features
from uvireid.viz import tsne


def _official_run(tmp_path, evaluation):
    """A sysu-all run folder (3 ids x 6 cameras x 3 images, paths as the official sampler
    reads them) whose table says sampler 'official'; ``evaluation``: its config section."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [(p, c, int(c in (3, 6))) for p in range(3) for c in range(1, 7) for _ in range(3)]
    feats = np.random.default_rng(0).normal(size=(len(rows), 8)).astype(np.float32)
    pids, cams, mods = ([r[i] for r in rows] for i in range(3))
    paths = [f"/data/SYSU-MM01/cam{c}/{p:04d}/{i:04d}.jpg" for i, (p, c, _) in enumerate(rows)]
    save_features(run / "features.npz", feats, pids, cams, mods, paths=paths, dataset="sysu")
    result = run_protocol(load_features(run / "features.npz"), "sysu-all", trials=1).to_dict()
    result["provenance"]["sampler"] = "official"  # as the run's table recorded it
    cfg = {"name": "t"}
    if evaluation is not None:
        cfg["evaluation"] = evaluation
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "results.json").write_text(json.dumps({"none": result}))
    return run


@pytest.mark.parametrize(
    "evaluation",
    [
        # the run folder copied to another machine, or the dataset moved since
        {"protocol": "sysu-all", "sampler": "official", "perm_file": "/moved/rand_perm_cam.mat"},
        None,  # a run folder without an evaluation section: the provenance says official
    ],
)
def test_report_of_an_official_sampler_run_whose_file_is_gone_draws_the_seeded_gallery(
    monkeypatch, tmp_path, evaluation
):
    """A run whose rand_perm_cam.mat is not at the recorded path (or not recorded): the
    distance and ranking plots are drawn on the seeded gallery, with a note saying so
    (handing the missing file on dropped both plots)."""
    from uvireid.viz.report import build_report

    monkeypatch.setattr(tsne, "plot_tsne", lambda *a, **k: None)
    report = build_report(_official_run(tmp_path, evaluation), reranker=None, dpi=10)
    assert {"distances.png", "ranking.png"} <= set(report.images), report.notes
    assert any("official sampler, but" in n and "seeded gallery" in n for n in report.notes)


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16)).save(path)


def test_a_dangling_link_named_as_a_file_does_not_refuse_the_folder_dataset(tmp_path):
    """A dangling link named as a file (README.txt) beside the camera folders is left out
    with a warning; a dangling link named as a folder is refused (a camera on a disk not
    mounted)."""
    from uvireid.data.folder import FolderDataset

    for mod in ("visible", "infrared"):
        _image(tmp_path / mod / "cam1" / "a.jpg")
    os.symlink(tmp_path / "gone.txt", tmp_path / "visible" / "README.txt")
    ds = FolderDataset(tmp_path)
    assert sorted(os.path.basename(r.path) for r in ds.train) == ["a.jpg", "a.jpg"]
    os.symlink(tmp_path / "gone", tmp_path / "visible" / "cam2")
    with pytest.raises(DatasetError, match="cam2 is a link to"):
        FolderDataset(tmp_path)


def test_a_valid_linked_camera_folder_and_a_hidden_dangling_link_are_read(tmp_path):
    """The paths the dangling-link refusal must keep: a camera folder that is a link to
    an existing folder is a camera; a hidden dangling link is ignored."""
    from uvireid.data.folder import FolderDataset

    for mod in ("visible", "infrared"):
        _image(tmp_path / mod / "cam1" / "a.jpg")
    _image(tmp_path / "elsewhere" / "b.jpg")
    os.symlink(tmp_path / "elsewhere", tmp_path / "visible" / "cam2")
    os.symlink(tmp_path / "gone", tmp_path / "infrared" / ".old")
    ds = FolderDataset(tmp_path)
    got = sorted((os.path.basename(r.path), ds.camera_names[r.cam]) for r in ds.train)
    assert got == [("a.jpg", "cam1"), ("a.jpg", "cam1"), ("b.jpg", "cam2")]


class _Wrap(nn.Module):
    """A wrapper as DDP is (its model as ``module``) or torch.compile (``_orig_mod``)."""

    def __init__(self, inner, name):
        super().__init__()
        self.add_module(name, inner)


def test_weights_sha1_of_wrapped_models_is_the_bare_models():
    """DDP, compile and compile-of-DDP prefixes on every name are dropped (a features
    file's fingerprint must not depend on how the model was wrapped), and two models that
    differ in one tensor differ in fingerprint."""
    from uvireid.engine.checkpoint import weights_sha1

    bare = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    sha = weights_sha1(bare)
    for wrapped in (
        _Wrap(bare, "module"),
        _Wrap(bare, "_orig_mod"),
        _Wrap(_Wrap(bare, "module"), "_orig_mod"),
    ):
        assert weights_sha1(wrapped) == sha
        assert weights_sha1(wrapped.state_dict()) == sha
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    other.load_state_dict(bare.state_dict())
    other[1].running_mean[0] += 1.0
    assert weights_sha1(_Wrap(other, "module")) != sha
