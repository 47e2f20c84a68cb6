"""`uvireid data check ROOT --dataset folder` names the cameras by the user's camera
folders (visible/cam3, infrared/cam6, or door/gate), not by the dataset's internal
numbering cam1, cam2, ... (cameras the user does not have)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from uvireid.cli import main


def _tree(root, cams):
    rng = np.random.default_rng(0)
    for modality, cam in cams:
        d = root / modality / cam
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (16, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")


def _camera_column(out):
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("split"))
    rows = [line.split() for line in lines[head + 1 :] if line.startswith("train")]
    return {(r[1], r[2]) for r in rows if r[1] != "all"}


def test_folder_check_names_the_users_camera_folders(tmp_path, capsys):
    root = tmp_path / "mine"
    _tree(root, [("visible", "cam3"), ("infrared", "cam6")])
    assert main(["data", "check", str(root), "--dataset", "folder", "--decode", "false"]) == 0
    cams = _camera_column(capsys.readouterr().out)
    # the folder names (as FolderDataset.camera_names gives them), not cam1/cam2
    assert cams == {("cam3", "visible"), ("cam6", "infrared")}, cams


def test_folder_check_names_non_numeric_camera_folders(tmp_path, capsys):
    root = tmp_path / "mine"
    _tree(root, [("visible", "door"), ("infrared", "gate")])
    assert main(["data", "check", str(root), "--dataset", "folder", "--decode", "false"]) == 0
    out = capsys.readouterr().out
    assert "door" in out and "gate" in out, out
