"""Cross-modality pair distances, checked against naive loops and scikit-learn (the
histogram PNG itself is drawn and measured in test_viz_report)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from uvireid.evaluation.protocols import sysu_gallery_indices, sysu_query_indices
from uvireid.viz import distances


def test_separation_auc_equals_scikit_learn():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0, 1, 50), rng.normal(1, 1, 80)
    pos[:5] = neg[:5]  # ties count one half
    want = roc_auc_score(np.r_[np.ones(50), np.zeros(80)], -np.r_[pos, neg])
    assert distances.separation_auc(pos, neg) == pytest.approx(want)


def test_pairs_follow_the_sysu_protocol_of_trial_0(viz_features):
    f = viz_features
    pos, neg = distances.pair_distances(f, protocol="sysu-all")
    q, g = sysu_query_indices(f), sysu_gallery_indices(f, "all", 0)
    want_pos, want_neg = [], []
    for i in q:  # naive: every pair, camera-3 queries skip camera 2
        for j in g:
            if f.cams[i] == 3 and f.cams[j] == 2:
                continue
            a = f.feats[i] / np.linalg.norm(f.feats[i])
            b = f.feats[j] / np.linalg.norm(f.feats[j])
            d = float(np.sum((a - b) ** 2))
            (want_pos if f.pids[i] == f.pids[j] else want_neg).append(d)
    assert np.sort(pos) == pytest.approx(np.sort(want_pos), abs=1e-6)
    assert np.sort(neg) == pytest.approx(np.sort(want_neg), abs=1e-6)


def test_without_protocol_every_infrared_image_meets_every_visible_one(viz_features):
    pos, neg = distances.pair_distances(viz_features)
    n_ir = int((viz_features.modality == 1).sum())
    n_vis = int((viz_features.modality == 0).sum())
    assert len(pos) + len(neg) == n_ir * n_vis
