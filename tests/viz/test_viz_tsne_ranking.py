"""t-SNE sample and ranking lists on a tiny features file with real images (the PNGs with
real images are drawn and measured in test_viz_report)."""

from __future__ import annotations

import dataclasses

import numpy as np
from viz_data import expected_px, png_size

from uvireid.evaluation.protocols import sysu_gallery_indices, sysu_query_indices
from uvireid.viz import ranking, tsne


def test_tsne_sample_takes_ids_of_both_modalities_capped_per_group(viz_features):
    rows = tsne.tsne_sample(viz_features, n_ids=4, per_id=3, seed=0)
    pids, mods = viz_features.pids[rows], viz_features.modality[rows]
    assert len(np.unique(pids)) == 4
    for pid in np.unique(pids):
        for m in (0, 1):
            assert 1 <= int(((pids == pid) & (mods == m)).sum()) <= 3


def test_top_k_ranks_like_a_naive_loop(viz_features):
    f = viz_features
    q, g = sysu_query_indices(f), sysu_gallery_indices(f, "all", 0)
    rows = np.arange(len(q))
    got = ranking.top_k(f, q, g, rows, 5, protocol="sysu-all")
    for r, i in enumerate(q):
        cand = [j for j in g if not (f.cams[i] == 3 and f.cams[j] == 2)]
        sims = [float(f.feats[i] @ f.feats[j]) for j in cand]
        order = sorted(range(len(cand)), key=lambda t: (-sims[t], t))
        want = [cand[t] for t in order[:5]] + [-1] * max(0, 5 - len(cand))
        assert got[r].tolist() == want


def test_ranking_without_image_paths_draws_tiles(tmp_path, viz_features):
    no_paths = dataclasses.replace(viz_features, paths=None)
    path = ranking.plot_ranking(no_paths, tmp_path / "r.png", queries=1, k=3, dpi=30)
    assert png_size(path) == expected_px(ranking.ranking_figsize(1, 3), 30)
