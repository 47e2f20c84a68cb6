"""compare (engine/compare.py): which recipe keys are settings, and which result fields
make runs not comparable."""

from __future__ import annotations

import shutil

import pytest
import yaml
from train_fixtures import eval_seed_runs

from uvireid.engine.compare import compare_runs


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """Two evaluation-only runs of one recipe (seeds 0 and 1)."""
    return eval_seed_runs(tmp_path_factory.mktemp("la_seeds"), (0, 1))


def test_runs_that_differ_in_the_device_key_alone_are_one_setting(two_seeds, tmp_path):
    """The recipe's `device` says where a run ran, not how it trained or was evaluated
    (the manifest records the device itself): two seeds whose recipes say cpu and auto
    are one setting, summarised together."""
    a, b = two_seeds
    other = tmp_path / b.name
    shutil.copytree(b, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    assert cfg["device"] == "cpu"
    cfg["device"] = "auto"
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    report = compare_runs([a, other])
    assert report["comparable"], report["not_comparable"]
    groups = report["groups"]["none"]
    assert len(groups) == 1 and groups[0]["runs"] == [str(a), str(other)]
    assert "device" not in report["differences"]


def test_results_over_another_number_of_queries_are_not_comparable(two_seeds, tmp_path):
    """num_query is one of the provenance fields that define what a result measures (a
    result over another query set, say of an older run whose manifest lacks the dataset's
    figures): runs that differ in it are not comparable, and the reason names it."""
    import json

    a, b = two_seeds
    other = tmp_path / b.name
    shutil.copytree(b, other)
    path = other / "results.json"
    results = json.loads(path.read_text())
    for table in results.values():
        table["provenance"]["num_query"] += 1
    path.write_text(json.dumps(results))
    report = compare_runs([a, other])
    assert not report["comparable"]
    assert any("num_query" in why for why in report["not_comparable"]), report["not_comparable"]
    assert compare_runs([a, b])["comparable"]
