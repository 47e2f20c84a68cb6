"""A kNN backend the run cannot use is refused before the run (and in --dry-run), as
the dbscan clusterer's is (audit KD)."""

from __future__ import annotations

import builtins

import pytest
import torch

from uvireid.cli import main
from uvireid.config import load_recipe
from uvireid.engine.runner import check_parts
from uvireid.errors import ConfigError
from uvireid.registry import CLUSTERERS, RERANKERS


def test_dbscan_refuses_a_misspelt_knn_backend_in_dry_run(capsys):
    """The reference behaviour the hdbscan test below asks for."""
    assert main(["run", "demo", "clusterer.knn_backend=fais", "--dry-run"]) == 2
    assert "knn_backend must be one of" in capsys.readouterr().err


def test_hdbscan_refuses_a_misspelt_knn_backend_before_the_run(capsys):
    """hdbscan's _check_params never checked knn_backend: 'fais' passed check_parts and
    --dry-run and failed at the first epoch's clustering ("knn: unknown backend 'fais'")."""
    override = "clusterer={type: hdbscan, knn_backend: fais}"
    with pytest.raises(ConfigError, match="knn_backend"):
        check_parts(load_recipe("demo", [override]))
    assert main(["run", "demo", override, "--dry-run"]) == 2
    assert "knn_backend" in capsys.readouterr().err


def test_hdbscan_fails_on_the_misspelt_backend_once_it_runs():
    """The misspelt backend is an error on every route (the check above is about when)."""
    clusterer = CLUSTERERS.build({"type": "hdbscan", "knn_backend": "fais"})
    x = torch.nn.functional.normalize(torch.randn(60, 8), dim=1)
    with pytest.raises(ConfigError, match="'fais'"):
        clusterer.fit_predict(x)


@pytest.fixture
def no_faiss(monkeypatch):
    """faiss made unimportable, as in an install without the uvireid[faiss] extra."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "faiss" or name.startswith("faiss."):
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "faiss", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)


@pytest.mark.parametrize(
    "override",
    [
        "clusterer.knn_backend=faiss",
        "reranker={type: cmfp, k: 10, backend: faiss}",
        "reranker={type: cmfp, k: 10, mode: sparse, backend: faiss-ivf}",
    ],
)
def test_a_faiss_backend_without_faiss_is_refused_before_the_run(no_faiss, override, capsys):
    """Without faiss, a recipe that named backend faiss passed --dry-run; `uvireid run`
    then created its run folder, decoded the images, extracted the training features and
    stopped at the first clustering (or, for CMFP, only once the features outgrow the dense
    path) with "knn: backend='faiss' but faiss is not installed"."""
    from uvireid.clustering.knn import faiss_available

    assert not faiss_available()
    assert main(["run", "demo", override, "--dry-run"]) == 2
    assert "faiss" in capsys.readouterr().err


def test_cmfp_with_backend_faiss_without_faiss_is_refused_when_built(no_faiss):
    """CMFP(backend='faiss') without faiss re-ranked a small input (dense path, no kNN)
    and failed only once an input was large enough for the sparse path."""
    with pytest.raises(ConfigError, match="faiss"):
        RERANKERS.build({"type": "cmfp", "k": 5, "backend": "faiss"})
