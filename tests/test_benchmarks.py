"""The benchmarks that issue figures come from still run (tiny sizes, CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    yield
    for name in ("training_overhead", "training_loop", "pseudo_labels"):
        sys.modules.pop(name, None)


def test_training_overhead_step_makes_no_device_wait(bench, capsys):
    """The SALCR step the benchmark times (the trainer's targets with their host copy, a
    host modality) makes no host-device wait, plain or with FGSAL + GPCR."""
    import training_overhead

    args = ["--arch", "resnet18", "--height", "64", "--width", "32", "--ids", "2",
            "--images", "2", "--memory", "40", "--clusters", "6", "--repeats", "1",
            "--count-ops"]  # fmt: skip
    assert training_overhead.main(args) == 0
    out = capsys.readouterr().out
    rows = [
        line
        for line in out.splitlines()
        if line.startswith("| plain") or line.startswith("| SALCR")
    ]
    assert len(rows) == 4  # the timing table and the counts table
    waits = [int(r.split("|")[2]) for r in rows[2:]]
    kernels = [int(r.split("|")[3].replace(",", "")) for r in rows[2:]]
    assert waits == [0, 0]
    assert 0 < kernels[0] < kernels[1]


@pytest.mark.slow
def test_training_loop_quick_projects_both_stages(bench, tmp_path, capsys):
    import training_loop

    out = tmp_path / "loop.json"
    assert (
        training_loop.main(["--quick", "--iters", "2", "--out", str(tmp_path), "--json", str(out)])
        == 0
    )
    doc = json.loads(out.read_text())
    assert {r["stage"] for r in doc["rows"]} == {"dcl", "salcr"}
    assert set(doc["bare"]) == {"dcl", "salcr"} and all(v > 0 for v in doc["bare"].values())
    assert doc["pseudo_labels"]["n_v"] > 0 and doc["pseudo_labels"]["cluster"] > 0
    assert doc["evaluation"]["reranked"] > 0 and doc["hours"] > 0
    assert "projected salcr.yaml" in capsys.readouterr().out
