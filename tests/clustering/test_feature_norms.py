"""Clusterers on features that are not unit rows (audit H, session 16)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from uvireid.registry import CLUSTERERS


def _blobs(k=5, m=8, d=16, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((k, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = np.repeat(c, m, 0) + 0.05 * rng.standard_normal((k * m, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.from_numpy(x).float()


SPECS = [
    {"type": "dbscan"},
    {"type": "dbscan", "metric": "cosine", "eps": 0.2, "min_samples": 3},
    {"type": "hdbscan", "min_cluster_size": 4},
]


@pytest.mark.parametrize("layout", ["contiguous", "transposed_view"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['type']}-{s.get('metric', 'jaccard')}")
def test_zero_rows_are_outliers_and_leave_the_other_clusters_alone(spec, layout, caplog):
    """Three zero rows used to join one identity or bridge two (which, depended on the
    tensor's strides): every neighbour of a zero row is a near-tie."""
    x = _blobs()
    ref = CLUSTERERS.build(spec).fit_predict(x)
    assert len(set(ref.tolist()) - {-1}) == 5  # the five identities, apart
    z = torch.cat([x[:20], torch.zeros(2, 16), x[20:], torch.zeros(1, 16)])
    if layout == "transposed_view":
        z = z.T.contiguous().T
    with caplog.at_level(logging.WARNING):
        got = CLUSTERERS.build(spec).fit_predict(z)
    zero = np.zeros(len(z), dtype=bool)
    zero[[20, 21, len(z) - 1]] = True
    assert (got[zero] == -1).all()
    assert got[~zero].tolist() == ref.tolist()
    assert any(
        "3 feature row(s) of norm 0 (first: row 20)" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize("kind", ["dbscan", "hdbscan"])
def test_the_jaccard_metric_warns_on_features_that_are_not_unit_rows(kind, caplog):
    """Its weights use 2 - 2<x_i, x_j> (Cluster-Contrast): at a scale of 0.1 five separate
    identities became one cluster, and nothing said why."""
    x = _blobs()
    with caplog.at_level(logging.WARNING):
        CLUSTERERS.build({"type": kind}).fit_predict(x * 0.1)
    assert any("not L2-normalised (median row norm 0.1)" in r.getMessage() for r in caplog.records)
    caplog.clear()
    # PGM clusters the mean of two normalised flipped views (norms a little below 1), as
    # its reference does: no warning
    with caplog.at_level(logging.WARNING):
        CLUSTERERS.build({"type": kind}).fit_predict(x * 0.95)
        CLUSTERERS.build({"type": kind}).fit_predict(x)
    assert not [r for r in caplog.records if "normalised" in r.getMessage()]


def test_hdbscan_warns_when_every_point_is_an_outlier(caplog):
    with caplog.at_level(logging.WARNING):
        labels = CLUSTERERS.build({"type": "hdbscan", "min_cluster_size": 100}).fit_predict(
            _blobs()
        )
    assert (labels == -1).all()
    assert any("every one of the 40 points is an outlier" in r.getMessage() for r in caplog.records)


def test_hdbscan_names_allow_single_cluster_when_one_tight_group_is_all_outliers(caplog):
    """Ten nearly identical points: without allow_single_cluster HDBSCAN never returns the
    root cluster, so all are outliers; the warning names that setting (and, once it is
    on, one cluster comes out and nothing is warned)."""
    x = np.random.default_rng(0).normal(size=(1, 8)) + 1e-3 * np.random.default_rng(1).normal(
        size=(10, 8)
    )
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    with caplog.at_level(logging.WARNING):
        labels = CLUSTERERS.build({"type": "hdbscan", "min_cluster_size": 4}).fit_predict(x)
    assert (labels == -1).all()
    assert "or set allow_single_cluster: true" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        spec = {"type": "hdbscan", "min_cluster_size": 4, "allow_single_cluster": True}
        labels = CLUSTERERS.build(spec).fit_predict(x)
    assert labels.max() == 0 and (labels == 0).sum() >= 4  # one cluster (some outliers)
    assert "every one of" not in caplog.text
