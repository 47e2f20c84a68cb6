"""`uvireid compare`: run folders side by side, the mean over them, and what keeps them from
being comparable (the manifest's and the results' provenance)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from train_fixtures import write_eval_recipe

from uvireid.cli import main
from uvireid.config import load_recipe
from uvireid.engine.compare import compare_runs
from uvireid.engine.runner import run_recipe
from uvireid.errors import ConfigError


@pytest.fixture
def three_seeds(tmp_path):
    """Three evaluation-only runs of one recipe with seeds 0, 1, 2 (the starting
    backbone's random weights differ, so do the numbers)."""
    path = write_eval_recipe(tmp_path, evaluation={"trials": 2})
    return [run_recipe(load_recipe(path, [f"seed={s}"]), progress=False).path for s in range(3)]


def test_three_seeds_are_comparable_and_averaged(three_seeds, capsys):
    report = compare_runs(three_seeds)
    assert report["comparable"] and report["not_comparable"] == []
    assert [r["seed"] for r in report["runs"]] == [0, 1, 2]
    want = {}
    for folder in three_seeds:  # the runs' own results.json, read here
        for metric, value in json.loads((folder / "results.json").read_text())["none"][
            "mean"
        ].items():
            want.setdefault(metric, []).append(value)
    for metric in ("R1", "mAP", "mINP"):
        agg = report["aggregate"]["none"][metric]
        vals = np.array(want[metric])
        assert agg["mean"] == pytest.approx(vals.mean(), rel=1e-12)
        assert agg["std"] == pytest.approx(vals.std(ddof=0), rel=1e-9, abs=1e-12)
        assert (agg["min"], agg["max"], agg["n"]) == (vals.min(), vals.max(), 3)
    assert len(set(want["mAP"])) > 1  # the seeds did change the numbers
    # only the seed differs: it is a column, not a difference
    assert report["differences"] == {}
    assert main(["compare", str(three_seeds[0].parent)]) == 0  # a folder of runs
    out = capsys.readouterr().out
    assert out.count("| tiny-") == 3 and "mean ± std [min, max] over 3 runs" in out
    assert "comparable: the same test set" in out


def test_another_protocol_or_test_set_is_not_comparable(three_seeds, tmp_path, capsys):
    a, b = three_seeds[:2]
    res = json.loads((b / "results.json").read_text())
    res["none"]["provenance"]["trials"] = 10
    (b / "results.json").write_text(json.dumps(res))
    man = json.loads((b / "manifest.json").read_text())
    man["dataset"]["sha1"] = "0" * 40
    man["world_size"] = 4
    (b / "manifest.json").write_text(json.dumps(man))
    report = compare_runs([a, b])
    assert not report["comparable"]
    said = "\n".join(report["not_comparable"])
    assert "dataset.sha1 differs" in said and "evaluated with another trials: [2, 10]" in said
    assert report["differences"]["world_size"] == [1, 4]
    assert main(["compare", str(a), str(b), "--strict", "--json", str(tmp_path / "c.json")]) == 1
    out = capsys.readouterr().out
    assert "NOT COMPARABLE" in out and "world_size: 1 | 4" in out
    assert json.loads((tmp_path / "c.json").read_text())["comparable"] is False


def test_a_changed_setting_is_listed_and_an_unfinished_run_shows_its_last_evaluation(
    three_seeds, tmp_path
):
    a = three_seeds[0]
    b = tmp_path / "runs" / "tiny-20990101-000000"
    shutil.copytree(three_seeds[1], b)
    cfg = (b / "config.yaml").read_text().replace("height: 32", "height: 48")
    (b / "config.yaml").write_text(cfg)
    # b "was killed": no results.json; its metrics hold an evaluation at epoch 3
    (b / "results.json").unlink()
    record = {"epoch": 3, "eval": {"none": {"mean": {"R1": 12.5, "mAP": 7.25}, "std": {}}}}
    (b / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    report = compare_runs([a, b])
    assert report["differences"]["train.height"] == [32, 48]
    row = report["runs"][1]
    assert row["source"] == "metrics.jsonl, epoch 3" and row["epochs"] == 4
    assert row["results"]["none"]["mAP"] == 7.25 and "mINP" not in row["results"]["none"]
    assert report["aggregate"]["none"]["mINP"]["n"] == 1


def test_a_folder_that_is_not_a_run_is_named(tmp_path):
    with pytest.raises(ConfigError, match="is not a run folder"):
        compare_runs([tmp_path])
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
