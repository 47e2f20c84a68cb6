"""`uvireid match RUN --infrared ROOT --visible OTHER` where ROOT is a folder dataset's root
(ROOT/visible/..., ROOT/infrared/...) is refused, naming ROOT/infrared: every image under
ROOT/visible/ would otherwise be embedded and ranked as an infrared query."""

from __future__ import annotations

import csv
import io
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image
from train_fixtures import tiny_recipe

from uvireid.cli import main
from uvireid.config import load_recipe
from uvireid.engine.runner import run_recipe
from uvireid.errors import UvireidError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qp_match")
    recipe = tmp / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp)))
    return run_recipe(load_recipe(recipe), progress=False).path


def _folder(root):
    rng = np.random.default_rng(0)
    for modality in ("visible", "infrared"):
        d = root / modality / "cam1"
        d.mkdir(parents=True)
        for i in range(3):
            a = rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)
            Image.fromarray(a).save(d / f"{i}.png")


def test_infrared_root_with_a_visible_subfolder_is_not_read_as_infrared(run_dir, tmp_path, capsys):
    root = tmp_path / "mine"
    _folder(root)
    gallery = tmp_path / "gallery"
    shutil.copytree(root / "visible" / "cam1", gallery)  # other visible images
    try:
        rc = main(["match", str(run_dir), "--infrared", str(root), "--visible", str(gallery)])
    except UvireidError as exc:  # refused: fine, if it names the visible/ folder
        assert "visible" in str(exc)
        return
    out, err = capsys.readouterr()
    if rc != 0:  # refused (printed): fine, if it names the visible/ folder
        assert rc == 2 and "visible" in err.split("error:")[-1], err
        return
    rows = list(csv.DictReader(io.StringIO(out)))
    queries = {r["query"] for r in rows}
    wrong = sorted(q for q in queries if "/visible/" in q)
    assert not wrong, f"visible images ranked as infrared queries: {wrong}"
