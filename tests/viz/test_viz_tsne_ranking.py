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


def _figure_of(monkeypatch, features, n_ids):
    """The t-SNE figure ``plot_tsne`` would save."""
    import matplotlib.colors as mcolors

    seen = {}
    monkeypatch.setattr(tsne, "save", lambda fig, path, dpi: seen.setdefault("fig", fig) and path)
    tsne.plot_tsne(features, "unused.png", n_ids=n_ids, per_id=2, dpi=30)
    fig = seen["fig"]
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    colours = {mcolors.to_hex(c) for coll in fig.axes[0].collections for c in coll.get_facecolors()}
    return texts, colours


def test_every_identity_gets_its_own_colour_and_a_long_legend_is_left_out(monkeypatch):
    """Audit Z2 (session 17): colours repeated every 20 identities, and above about 70
    the legend ran off the figure (ids missing from it, silently)."""
    from uvireid.features import Features

    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(60), 4)
    f = Features(
        rng.normal(size=(240, 8)).astype(np.float32),
        ids,
        np.tile([1, 3, 2, 6], 60),
        np.tile([0, 1, 0, 1], 60),
        None,
        {},
        "test",
    )
    texts, colours = _figure_of(monkeypatch, f, 60)
    assert len(colours) == 60  # one colour an identity, none repeated
    assert "(60 identities)" in texts and not any(t.startswith("id ") for t in texts)
    texts, colours = _figure_of(monkeypatch, f, 30)
    assert len(colours) == 30 and sum(t.startswith("id ") for t in texts) == 30
