"""A checkpoint file given as SOURCE (`RUN/checkpoints/latest.pt` instead of `RUN`, an easy
slip since match and extract take --checkpoint too) is refused as a checkpoint, naming
the run folder: not called a recipe (extract) or a features file (match), and not a
listing of every entry of the torch archive."""

from __future__ import annotations

import pytest
import torch

from uvireid.cli import main
from uvireid.errors import UvireidError


@pytest.fixture
def ckpt(tmp_path):
    run = tmp_path / "runs" / "r-20260101-000000"
    (run / "checkpoints").mkdir(parents=True)
    path = run / "checkpoints" / "latest.pt"
    torch.save({"model": {f"w{i}": torch.zeros(2) for i in range(300)}, "epoch": 1}, path)
    img = tmp_path / "img"
    img.mkdir()
    return path


def _error(argv, capsys):
    capsys.readouterr()
    try:
        rc = main(argv)
    except UvireidError as exc:  # raised rather than printed: the message all the same
        return str(exc)
    assert rc == 2
    return capsys.readouterr().err


def test_extract_with_a_checkpoint_as_source_does_not_call_it_a_recipe(ckpt, tmp_path, capsys):
    msg = _error(["extract", str(ckpt), "-o", str(tmp_path / "f.npz")], capsys)
    assert "is a recipe" not in msg, msg
    assert "run folder" in msg, msg


def test_match_with_a_checkpoint_as_source_does_not_call_it_a_features_file(ckpt, tmp_path, capsys):
    msg = _error(["match", str(ckpt), "--infrared", str(tmp_path / "img")], capsys)
    assert "is a features file" not in msg, msg
    assert "run folder" in msg, msg


def test_match_with_a_checkpoint_alone_says_so_briefly(ckpt, capsys):
    msg = _error(["match", str(ckpt)], capsys)
    assert len(msg) < 1500, f"{len(msg)} characters: {msg[:300]}..."
    assert "checkpoint" in msg and "run folder" in msg, msg[:500]
