"""The scripts in ``examples/`` run, on a small synthetic dataset (the plugin example is
tested in ``tests/plugin/``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from uvireid.cli import main as cli
from uvireid.features import load_features

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from uvireid.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "data", ids=20, seed=0)


@pytest.mark.slow
def test_library_use_runs_the_loop_by_hand(synth):
    out = _load(EXAMPLES / "library_use.py").main(str(synth), ids=20)
    # the script's ARI is label_quality's: outliers scored as singletons; recomputed here
    for m in ("v", "r"):
        labels, gt = out[f"labels_{m}"].copy(), out[f"gt_{m}"]
        outl = labels < 0
        labels[outl] = labels.max() + 1 + np.arange(outl.sum())
        name = "visible" if m == "v" else "infrared"
        assert out[f"ari_{name}"] == pytest.approx(adjusted_rand_score(gt, labels), abs=1e-12)
    assert 0 <= out["mAP_none"] <= 100 and 0 <= out["mAP_cmfp"] <= 100
    feats = load_features(out["features"])
    assert len(feats.pids) == len(set(map(str, feats.paths))) > 0


def test_fixed_extractor_writes_a_file_the_cli_reranks(synth, tmp_path):
    script = _load(EXAMPLES / "export_features" / "fixed_extractor_synthetic.py")
    out = tmp_path / "hog.npz"
    script.main(str(synth), str(out), "hog")
    feats = load_features(out)
    assert feats.feats.shape[1] == 4 * 8 * 9  # 8x8 cells of 64x32, 9 bins
    assert np.allclose(np.linalg.norm(feats.feats, axis=1), 1.0, atol=1e-5)
    args = ["rerank", str(out), "--reranker", "cmfp", "--k", "8", "--protocol", "sysu-all"]
    assert cli([*args, "--trials", "2"]) == 0
