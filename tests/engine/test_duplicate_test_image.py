"""A test split listing an image twice is refused before training, not after (audit BD)."""

from __future__ import annotations

import pytest
from train_fixtures import tiny_recipe

from uvireid.config import load_recipe
from uvireid.data.fixtures import make_regdb_tree
from uvireid.engine.runner import run_recipe
from uvireid.errors import UvireidError


def test_duplicated_test_image_is_refused_before_the_first_epoch(tmp_path):
    """features.py now refuses a features file that holds an image twice; a RegDB (or
    LLCM) index file with a repeated line gives such a test set, and the run only finds
    out when it saves its first evaluation's features.npz: after training (every=0: the
    whole run). It should be refused (or deduplicated) before any epoch trains."""
    root = make_regdb_tree(tmp_path / "RegDB", ids=16, images_per=3)
    lst = root / "idx" / "test_visible_1.txt"
    lines = lst.read_text().splitlines()
    lst.write_text("\n".join(lines + [lines[0]]) + "\n")  # one line repeated
    rec = tiny_recipe(tmp_path)
    rec["data"] = {"type": "regdb", "root": str(root), "split": 1}
    rec["evaluation"] = {"protocol": "regdb-v2i", "trials": 1, "every": 0}
    rec["stages"] = rec["stages"][:1]
    path = tmp_path / "r.yaml"
    import yaml

    path.write_text(yaml.safe_dump(rec))
    cfg = load_recipe(path)
    with pytest.raises(UvireidError):
        run_recipe(cfg, progress=False)
    trained = list((tmp_path / "runs").glob("*/checkpoints/latest.pt"))
    assert not trained, f"an epoch was trained before the refusal: {trained}"
