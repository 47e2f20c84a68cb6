"""`uvireid match F.npz` on another codebase's file (raw, not unit-length features, no
paths): the CSV against a naive -cosine ranking computed here, both directions, --top
larger than the gallery; and `data check --dataset folder` on a broken image."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from PIL import Image

from uvireid.cli import main


def _file(path):
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(9, 5)) * rng.uniform(0.5, 4, size=(9, 1))
    modality = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0])
    np.savez(path, feats=feats, pids=np.arange(9) + 100, cams=np.ones(9, int), modality=modality)
    return feats, modality


def _naive(feats, modality, q_code, top):
    rows = []
    q = [i for i in range(len(feats)) if modality[i] == q_code]
    g = [i for i in range(len(feats)) if modality[i] != q_code]
    for i in q:
        d = []
        for j in g:
            dot = sum(float(a) * float(b) for a, b in zip(feats[i], feats[j]))
            n = math.sqrt(sum(float(a) ** 2 for a in feats[i])) * math.sqrt(
                sum(float(b) ** 2 for b in feats[j])
            )
            d.append((-dot / n, j))
        d.sort()
        rows += [
            (f"row:{i}", r, f"row:{j}", dist, 100 + i, 100 + j)
            for r, (dist, j) in enumerate(d[:top], start=1)
        ]
    return rows


@pytest.mark.parametrize("direction,q_code,top", [("i2v", 1, 3), ("v2i", 0, 50)])
def test_csv_is_the_naive_cosine_ranking(tmp_path, capsys, direction, q_code, top):
    feats, modality = _file(tmp_path / "f.npz")
    out = tmp_path / "m.csv"
    rc = main(
        [
            "match",
            str(tmp_path / "f.npz"),
            "--direction",
            direction,
            "--top",
            str(top),
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "not unit length" in err  # said, and normalised
    got = list(csv.reader(io.StringIO(out.read_text())))
    assert got[0] == ["query", "rank", "gallery", "distance", "query_pid", "gallery_pid"]
    want = _naive(feats, modality, q_code, top)
    assert len(got) - 1 == len(want)
    for row, ref in zip(got[1:], want):
        assert (row[0], int(row[1]), row[2]) == ref[:3]
        assert float(row[3]) == pytest.approx(ref[3], abs=1e-5)
        assert (int(row[4]), int(row[5])) == ref[4:]
    if top > (modality != q_code).sum():
        assert "the whole gallery" in err


def test_folder_check_names_an_undecodable_image_and_exits_1(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for modality in ("visible", "infrared"):
        d = tmp_path / "mine" / modality / "c1"
        d.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (8, 4, 3), dtype=np.uint8)).save(d / "a.png")
    (tmp_path / "mine" / "visible" / "c1" / "b.jpg").write_bytes(b"not an image")
    rc = main(["data", "check", str(tmp_path / "mine"), "--dataset", "folder"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "1 image(s) cannot be decoded" in out and "b.jpg" in out
    rc = main(["data", "check", str(tmp_path / "mine"), "--dataset", "folder", "--decode", "false"])
    assert rc == 0
