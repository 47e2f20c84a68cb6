"""evaluation.feature_head chooses the feature a run extracts, not only its label."""

from __future__ import annotations

import json

import yaml
from train_fixtures import run_killed_at, tiny_recipe

from uvireid.config import load_recipe
from uvireid.engine.runner import run_recipe
from uvireid.features import load_features
from uvireid.models.backbone import _ReidHead


def _spy_on_extract(tmp_path, monkeypatch):
    """``(calls, recipe)``: every ``extract`` call's (head, flip) is appended to ``calls``;
    ``recipe`` is an evaluation-only recipe file."""
    calls = []
    real = _ReidHead.extract

    def spy(self, x, modality, flip=True, head="bn_feat"):
        calls.append((head, flip))
        return real(self, x, modality, flip=flip, head=head)

    monkeypatch.setattr(_ReidHead, "extract", spy)
    rec = tiny_recipe(tmp_path, stages=None, clusterer=None)
    path = tmp_path / "eval_only.yaml"
    path.write_text(yaml.safe_dump(rec))
    return calls, path


def test_the_evaluated_head_is_the_extracted_one(tmp_path, recipe_file, monkeypatch):
    """evaluation.feature_head chooses the feature the backbone extracts (an evaluation
    run and a training run's evaluations), not only the label of the results."""
    asked, path = _spy_on_extract(tmp_path, monkeypatch)
    for recipe in (path, recipe_file):
        for head in ("bn_feat", "pool"):
            asked.clear()
            cfg = load_recipe(recipe, [f"evaluation.feature_head={head}"])
            folder = run_recipe(cfg, progress=False)
            feats = load_features(folder.path / "features.npz")
            assert feats.meta["feature_head"] == head
            # the test set is extracted flip-averaged; the training set (for clustering,
            # always the BN neck's feature) is not
            assert {h for h, flip in asked if flip} == {head}, (recipe, asked)
            assert {h for h, flip in asked if not flip} <= {"bn_feat"}
            table = json.loads((folder.path / "results.json").read_text())["none"]
            assert table["provenance"]["feature_head"] == head


def test_run_outputs_say_which_epoch_and_stage_they_come_from(recipe_file):
    """A run killed in its second stage leaves the first stage's features.npz: the file
    (and every result computed from it) says so, instead of passing for the final one."""

    cfg = load_recipe(recipe_file, ["evaluation.every=1"])
    folder = run_killed_at(cfg)
    meta = load_features(folder.path / "features.npz").meta
    assert (meta["epoch"], meta["stage"], meta["final"], meta["total_epochs"]) == (
        0,
        "dcl",
        False,
        2,
    )
    run_recipe(cfg, resume=True, progress=False)
    meta = load_features(folder.path / "features.npz").meta
    assert (meta["epoch"], meta["stage"], meta["final"]) == (1, "salcr", True)
    table = json.loads((folder.path / "results.json").read_text())["none"]
    assert table["provenance"]["features_meta"]["epoch"] == 1
    from uvireid.evaluation.protocols import run_protocol

    line = run_protocol(load_features(folder.path / "features.npz"), "sysu-all", trials=1)
    assert "epoch 1 (salcr, final)" in line.summary()


def test_evaluation_flip_false_extracts_the_test_set_unflipped(tmp_path, recipe_file, monkeypatch):
    """Audit BB: MBCCM tests on one unflipped pass; evaluation.flip=false does that in an
    evaluation run, a training run's evaluations and `uvireid extract`, and says so."""
    from uvireid.engine.export import export_features

    calls, path = _spy_on_extract(tmp_path, monkeypatch)
    for recipe in (path, recipe_file):
        for flip in (True, False):
            calls.clear()
            cfg = load_recipe(recipe, [f"evaluation.flip={str(flip).lower()}"])
            folder = run_recipe(cfg, progress=False)
            assert load_features(folder.path / "features.npz").meta["test_flip"] is flip
            # (clustering extracts unflipped anyway)
            assert any(f for _, f in calls) is flip, (recipe, flip)
    calls.clear()
    out = export_features(cfg, tmp_path / "x.npz", checkpoint=folder.checkpoints / "latest.pt")
    assert load_features(out).meta["test_flip"] is False and not any(f for _, f in calls)


def test_extract_uses_the_recipes_feature_head(tmp_path, recipe_file, monkeypatch):
    """`uvireid extract` of a run evaluated on evaluation.feature_head pool extracts the
    pooled feature, as the run's own evaluation did (mutation audit DC, E2: the file held
    BN-neck features under the label pool)."""
    import numpy as np

    from uvireid.engine.export import export_features

    calls, _ = _spy_on_extract(tmp_path, monkeypatch)
    cfg = load_recipe(recipe_file, ["evaluation.feature_head=pool"])
    folder = run_recipe(cfg, progress=False)
    calls.clear()
    out = export_features(cfg, tmp_path / "x.npz", checkpoint=folder.checkpoints / "latest.pt")
    f = load_features(out)
    assert f.meta["feature_head"] == "pool" and calls and {h for h, _ in calls} == {"pool"}
    # the same features as the run's own evaluation of that head
    np.testing.assert_allclose(
        f.feats, load_features(folder.path / "features.npz").feats, atol=1e-5
    )
