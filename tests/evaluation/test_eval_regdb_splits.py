"""``uvireid eval`` of several RegDB files (one per split): each file is a trial of the
protocol, and the printed / JSON mean is the mean of the files' own results (the
README's `uvireid eval regdb_split{1..10}.npz`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from feature_fixtures import regdb_like

from uvireid.cli import main
from uvireid.features import save_features


def _regdb_file(path, split, seed):
    feats, pids, mods = regdb_like(seed=seed, ids=10, per=2, shift=0.4, noise=1.2)
    return save_features(path, feats, pids, mods + 1, mods, dataset="regdb", split=split)


def test_eval_of_several_regdb_splits_averages_every_file(tmp_path, capsys):
    files = [str(_regdb_file(tmp_path / f"s{s}.npz", s, seed=s)) for s in (1, 2, 3)]
    alone = []
    for i, path in enumerate(files):
        out = tmp_path / f"one{i}.json"
        assert main(["eval", path, "--protocol", "regdb-v2i", "--json", str(out)]) == 0
        alone.append(json.loads(out.read_text())["mean"])
    # the files differ: a mean of the first file alone is not the mean of the three
    assert len({round(a["mAP"], 6) for a in alone}) == 3
    out = tmp_path / "all.json"
    assert main(["eval", *files, "--protocol", "regdb-v2i", "--json", str(out)]) == 0
    got = json.loads(out.read_text())["mean"]
    for key in ("R1", "R10", "mAP", "mINP"):
        assert got[key] == pytest.approx(np.mean([a[key] for a in alone]), abs=1e-6), key
    capsys.readouterr()
