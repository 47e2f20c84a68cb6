"""An evaluation run fills its run folder with everything it produced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from train_fixtures import write_eval_recipe

from uvireid.cli import main
from uvireid.config import load_recipe
from uvireid.engine.run_folder import RunFolder
from uvireid.engine.runner import run_recipe
from uvireid.errors import ConfigError
from uvireid.evaluation.metrics import eval_sysu
from uvireid.features import load_features


@pytest.fixture()
def recipe(tmp_path):
    return write_eval_recipe(tmp_path, reranker={"type": "cmfp", "k": 3}, evaluation={"trials": 2})


def test_evaluation_run_writes_config_manifest_features_and_results(recipe):
    cfg = load_recipe(recipe)
    folder = run_recipe(cfg, progress=False)
    files = {p.name for p in folder.path.iterdir()}
    assert {
        "config.yaml",
        "manifest.json",
        "features.npz",
        "results.json",
        "metrics.jsonl",
        "log.txt",
    } <= files
    assert yaml.safe_load((folder.path / "config.yaml").read_text()) == cfg
    manifest = json.loads((folder.path / "manifest.json").read_text())
    assert manifest["world_size"] == 1 and manifest["device"]["device"] == "cpu"
    assert manifest["dataset"] and manifest["versions"]["torch"] and "source" in manifest
    import shlex
    import sys

    assert shlex.split(manifest["command"]) == sys.argv  # pastes back into a shell (audit AY)
    results = json.loads((folder.path / "results.json").read_text())
    assert set(results) == {"none", "cmfp"}
    assert results["cmfp"]["provenance"]["reranker"].startswith("cmfp")
    assert results["none"]["provenance"]["reranker"] == "none"
    # the saved features reproduce the first trial's numbers through the bare metric
    feats = load_features(folder.path / "features.npz")
    assert len(feats.pids) == 4 * 6 * 2  # 4 test ids x 6 cams x 2 images
    lines = folder.read_metrics()
    # the record of a training run's untrained evaluation (audit AY)
    assert len(lines) == 1 and (lines[0]["epoch"], lines[0]["stage"]) == (-1, "evaluation only")
    assert "eval_extract" in lines[0]["seconds"] and "extract" not in lines[0]["seconds"]
    assert set(lines[0]["eval"]["none"]) == {"mean", "std", "provenance"}
    assert lines[0]["eval"]["none"]["mean"] == results["none"]["mean"]


def test_evaluation_reranks_on_the_run_device(recipe, monkeypatch):
    """The recipe's re-ranker gets tensors on the run's device (a GPU run re-ranks on
    the GPU), through the OnDevice adapter, and the provenance keeps its name."""
    import torch

    from uvireid.rerank.cmfp import CMFP

    seen = []
    rerank = CMFP.rerank

    def spy(self, query, gallery):
        seen.append((type(query), getattr(query, "device", None)))
        return rerank(self, query, gallery)

    monkeypatch.setattr(CMFP, "rerank", spy)
    folder = run_recipe(load_recipe(recipe), progress=False)
    assert seen and all(t is torch.Tensor and d.type == "cpu" for t, d in seen)
    results = json.loads((folder.path / "results.json").read_text())
    assert results["cmfp"]["provenance"]["reranker"] == "cmfp(k=3)"


def test_first_trial_matches_the_metric_on_the_saved_features(recipe):
    from uvireid.evaluation.protocols import sysu_gallery_indices, sysu_query_indices

    cfg = load_recipe(recipe, ["reranker=null", "evaluation.trials=1"])
    folder = run_recipe(cfg, progress=False)
    feats = load_features(folder.path / "features.npz")
    q = sysu_query_indices(feats)
    g = sysu_gallery_indices(feats, "all", 0, "single", "seeded")
    cmc, mAP, _ = eval_sysu(
        -(feats.feats[q] @ feats.feats[g].T),
        feats.pids[q],
        feats.pids[g],
        feats.cams[q],
        feats.cams[g],
    )
    res = json.loads((folder.path / "results.json").read_text())["none"]
    assert np.isclose(res["mean"]["mAP"], 100 * mAP, atol=1e-4)
    assert np.isclose(res["mean"]["R1"], 100 * cmc[0], atol=1e-4)


def test_resume_of_a_finished_run_reuses_its_folder(recipe):
    cfg = load_recipe(recipe, ["reranker=null", "evaluation.trials=1"])
    first = run_recipe(cfg, progress=False)
    again = run_recipe(cfg, resume=True, progress=False)
    assert again.path == first.path
    assert RunFolder.latest(cfg["output_dir"], cfg["name"]).path == first.path


def test_cli_run_reports_the_run_folder(recipe, capsys):
    assert main(["run", str(recipe), "reranker=null", "evaluation.trials=1"]) == 0
    out = capsys.readouterr().out
    assert "run folder:" in out
    # `uvireid run` ends with the run's report (matplotlib is in the dev environment)
    html = out.split("report:", 1)[1].split()[0]
    assert html.endswith("report.html") and "data:image/png;base64," in open(html).read()


def test_protocol_that_does_not_fit_the_dataset_is_refused(recipe):
    cfg = load_recipe(recipe, ["evaluation.protocol=regdb-v2i"])
    with pytest.raises(ConfigError, match="does not fit dataset 'sysu'; its protocols: sysu-all"):
        run_recipe(cfg, progress=False)
    assert not (recipe.parent / "runs").exists(), "no run folder for a refused recipe"


def test_source_revision_is_the_checkout_head_or_none_outside_git(tmp_path):
    import shutil
    import subprocess

    from uvireid.engine.run_folder import source_revision

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    pkg = Path(__file__).resolve().parents[2] / "uvireid"
    head = subprocess.run(
        ["git", "-C", str(pkg), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:
        pytest.skip("the tests do not run from a git checkout")
    rev = source_revision(pkg)
    assert rev is not None and rev["commit"] == head.stdout.strip()
    assert isinstance(rev["dirty"], bool)
    # a copy of the package that git does not track (an installed wheel) has no revision
    copy = tmp_path / "uvireid"
    copy.mkdir()
    (copy / "__init__.py").write_text("")
    assert source_revision(copy) is None


def test_an_evaluation_only_resume_holds_its_folder_and_clears_a_killed_write(recipe):
    """Audit IC: an evaluation-only run resumed without the folder lock (a second process
    could evaluate into it meanwhile) and left a killed run's half-written file there."""
    from uvireid.errors import RunFolderError

    cfg = load_recipe(recipe)
    folder = run_recipe(cfg, progress=False)
    (folder.path / "results.json").unlink()  # as if killed in the evaluation
    stale = folder.path / ".features.npz.k3j2.tmp"
    stale.write_bytes(b"\0" * 64)
    with folder.locked(), pytest.raises(RunFolderError, match="in use by another process"):
        run_recipe(cfg, resume=folder.path, progress=False)
    assert stale.exists() and not (folder.path / "results.json").exists()
    assert run_recipe(cfg, resume=folder.path, progress=False).path == folder.path
    assert not stale.exists() and (folder.path / "results.json").exists()
