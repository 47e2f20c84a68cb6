"""The figures' edge cases (audit KA): LLCM's DEEN split, collapsed features, garbled
results, unreadable images, long names; and where rows, columns and panels are drawn."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from viz_data import expected_px, make_run_dir, png_size, toy_features

from uvireid.errors import UvireidError
from uvireid.features import load_features, save_features
from uvireid.viz import curves, distances, ranking, tsne


def _llcm_like():
    """6 ids; visible cameras 1-6, infrared 7-9; 3 images per (id, camera)."""
    rows = [(pid, cam, int(cam >= 7)) for pid in range(6) for cam in range(1, 10) for _ in range(3)]
    pids, cams, mods = (np.array(c) for c in zip(*rows, strict=True))
    feats = np.random.default_rng(0).normal(size=(len(rows), 8))
    return toy_features(feats, pids, cams, mods)


# -- edges -------------------------------------------------------------------------------------
def test_llcm_deen_query_gallery_follow_the_protocol():
    """llcm-v2i-deen samples the infrared *queries* (single shot: one per id and camera)
    and takes the whole visible gallery (protocols.PROTOCOLS, run_protocol)."""
    f = _llcm_like()
    q, g = distances.query_gallery(f, "llcm-v2i-deen")
    assert sorted(g.tolist()) == np.flatnonzero(f.modality == 0).tolist()
    assert set(f.modality[q].tolist()) == {1}
    groups = {(int(f.pids[i]), int(f.cams[i])) for i in np.flatnonzero(f.modality == 1)}
    assert len(q) == len(groups)
    assert {(int(f.pids[i]), int(f.cams[i])) for i in q} == groups


def test_llcm_v2i_takes_every_visible_query_and_samples_the_gallery():
    f = _llcm_like()
    q, g = distances.query_gallery(f, "llcm-v2i")
    assert sorted(q.tolist()) == np.flatnonzero(f.modality == 0).tolist()
    groups = {(int(f.pids[i]), int(f.cams[i])) for i in np.flatnonzero(f.modality == 1)}
    assert {(int(f.pids[i]), int(f.cams[i])) for i in g} == groups and len(g) == len(groups)


def _collapsed(n_ids=4):
    pids = np.repeat(np.arange(n_ids), 2)
    return toy_features(
        np.ones((2 * n_ids, 4)), pids, np.tile([1, 3], n_ids), np.tile([0, 1], n_ids)
    )


def test_collapsed_features_tsne_is_a_uvireid_error(tmp_path):
    """A collapsed model (every feature the same vector): sklearn's bare ValueError
    escaped; it must be a UvireidError so the report notes it."""
    with pytest.raises(UvireidError):
        tsne.plot_tsne(_collapsed(), tmp_path / "t.png")


def test_collapsed_features_still_draw_histograms_and_rankings(tmp_path):
    f = _collapsed()
    path = distances.plot_distance_histograms(f, tmp_path / "d.png", dpi=20)
    assert png_size(path) == expected_px(distances.FIGSIZE, 20)
    pos, neg = distances.pair_distances(f)
    assert np.allclose(pos, 0.0) and np.allclose(neg, 0.0)  # all distances equal (zero)
    path = ranking.plot_ranking(f, tmp_path / "r.png", queries=2, k=3, dpi=20)
    assert png_size(path) == expected_px(ranking.ranking_figsize(2, 3), 20)


def test_report_of_a_collapsed_model_is_written(tmp_path, viz_features_file):
    from uvireid.viz.report import build_report

    run = make_run_dir(tmp_path, viz_features_file)
    f = load_features(run / "features.npz")
    save_features(
        run / "features.npz",
        np.ones_like(f.feats),
        f.pids,
        f.cams,
        f.modality,
        paths=f.paths,
        dataset="synthetic",
        split="test",
    )
    report = build_report(run, reranker=None, dpi=20, queries=2, k=3)
    assert report.html.is_file()
    assert "tsne.png" not in report.images
    assert any(n.startswith("tsne.png not drawn") for n in report.notes)
    assert {"distances.png", "ranking.png"} <= set(report.images)


def test_cmc_of_a_result_whose_mean_is_not_a_mapping(tmp_path):
    """A garbled results.json (``"mean": [..]``) crashed build_report with AttributeError."""
    path = curves.plot_cmc({"none": {"mean": [1, 2], "cmc": [10.0, 20.0]}}, tmp_path / "c.png")
    assert png_size(path) == expected_px(curves.FIGSIZE, curves.DPI)


def test_report_says_when_ranking_images_cannot_be_read(tmp_path, viz_features_file, monkeypatch):
    """Paths relative to the folder training ran in (data.root: data/RegDB), report run
    elsewhere: every tile grey, and no note said so."""
    from uvireid.viz.report import build_report

    run = make_run_dir(tmp_path, viz_features_file)
    f = load_features(run / "features.npz")
    base = viz_features_file.parent
    rel = [os.path.relpath(p, base) for p in f.paths]
    assert all((base / p).is_file() for p in rel)
    save_features(
        run / "features.npz", f.feats, f.pids, f.cams, f.modality, paths=rel, dataset="synthetic"
    )
    monkeypatch.chdir(tmp_path)  # not the folder the paths are relative to
    report = build_report(run, reranker=None, dpi=20, queries=2, k=3)
    assert "ranking.png" in report.images
    n = min(50, len(rel))
    note = f"{n} of {n} image paths checked are no file (e.g. {rel[0]}; relative paths are read under {tmp_path})"
    assert any(x.startswith(note) and "--image-root" in x for x in report.notes), report.notes
    # given the folder they are relative to: read, and no note
    report = build_report(run, reranker=None, dpi=20, queries=2, k=3, image_root=base)
    assert not any("image paths checked" in x for x in report.notes), report.notes


def test_a_png_with_a_long_legal_name_is_written(tmp_path):
    name = "x" * 240 + ".png"  # 244 bytes: a legal file name (NAME_MAX 255)
    path = curves.plot_cmc({"none": {"cmc": [10.0, 20.0]}}, tmp_path / name, dpi=10)
    assert path.name == name and png_size(path) == expected_px(curves.FIGSIZE, 10)


# -- mutation survivors ---------------------------------------------------------------------
def test_choose_queries_are_ascending_distinct_and_valid(viz_features):
    """R7 (np.sort dropped): the docstring promises ascending positions."""
    f = viz_features
    q, g = distances.query_gallery(f)
    same = f.pids[q][:, None] == f.pids[g][None, :]
    valid = set(np.flatnonzero(same.any(axis=1)).tolist())
    for seed in range(5):
        got = ranking.choose_queries(f, q, g, 7, None, seed).tolist()
        assert got == sorted(set(got)) and len(got) == 7 and set(got) <= valid


def test_k_beyond_the_gallery_draws_only_the_gallery(monkeypatch, tmp_path):
    """R8 (k not clamped): a 2-image gallery asked for 10 draws 2 columns, titled Top-2."""
    f = toy_features(np.eye(4), [1, 2, 1, 2], [1, 1, 3, 3], [0, 0, 1, 1])
    seen = {}
    monkeypatch.setattr(ranking, "save", lambda fig, path, dpi: seen.setdefault("fig", fig))
    ranking.plot_ranking(f, tmp_path / "r.png", queries=2, k=10, dpi=10)
    fig = seen["fig"]
    width, _ = ranking.ranking_figsize(2, 2)
    assert fig.get_size_inches()[0] == pytest.approx(width)
    assert fig.get_suptitle().startswith("Top-2 ranking lists")


def test_rank1_count_counts_the_first_place_only(monkeypatch, tmp_path):
    """R9: a query whose match is second is not a rank-1 hit."""
    # query (row 4, id 1) is closest to gallery row 1 (id 2), then row 0 (id 1)
    feats = [[1, 0], [1, 0.2], [0, 1], [-1, 0], [0.95, 0.05]]
    f = toy_features(feats, [1, 2, 3, 4, 1], [1, 1, 1, 1, 3], [0, 0, 0, 0, 1])
    seen = {}
    monkeypatch.setattr(ranking, "save", lambda fig, path, dpi: seen.setdefault("fig", fig))
    ranking.plot_ranking(f, tmp_path / "r.png", queries=1, k=3, dpi=10)
    sims = np.asarray(feats)[:4] @ np.asarray(feats)[4]
    first = int(np.argsort(-sims, kind="stable")[0])
    assert f.pids[first] != 1  # the naive first place is another identity
    assert "rank-1 correct 0/1" in seen["fig"].get_suptitle()


def test_separation_auc_of_unequal_group_sizes_matches_a_pair_loop():
    """D5 (U with the positives' count): a pair loop with ties counting one half."""
    pos, neg = np.array([0.1, 0.5, 0.5]), np.array([0.5, 0.7, 0.2, 0.9, 0.05])
    pairs = [1.0 if p < n else 0.5 if p == n else 0.0 for p in pos for n in neg]
    assert distances.separation_auc(pos, neg) == pytest.approx(np.mean(pairs))


def test_loss_axis_at_exactly_50x_stays_linear(monkeypatch, tmp_path):
    """C6: 'log scale when the terms span more than 50x'."""
    seen = {}
    monkeypatch.setattr(curves, "save", lambda fig, path, dpi: seen.setdefault("fig", fig))
    curves.plot_losses([{"epoch": 0, "loss": {"a": 50.0, "b": 1.0}}], tmp_path / "l.png")
    assert seen["fig"].axes[0].get_yscale() == "linear"


def test_curves_without_epochs_use_the_line_number(tmp_path):
    """C4: records without ``epoch`` take their line number (0-based)."""
    got = curves.loss_series([{"loss": {"a": 1.0}}, {"loss": {"a": 2.0}}, {"loss": {"a": 3.0}}])
    assert got == {"a": ([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])}


def test_report_tail_is_the_last_lines_of_the_log(viz_run_dir):
    """P7: the report shows the *last* 40 lines of log.txt."""
    from uvireid.viz.report import build_report

    lines = [f"line {i:03d}" for i in range(100)]
    (viz_run_dir / "log.txt").write_text("\n".join(lines) + "\n")
    (viz_run_dir / "features.npz").unlink()
    report = build_report(viz_run_dir, reranker=None, dpi=10)
    text = report.html.read_text()
    assert "line 099" in text and "line 060" in text and "line 059" not in text


def test_report_of_a_results_file_with_nan_means_notes_the_missing_cmc(tmp_path):
    """The report's results table and notes survive a results.json of NaN means (json
    NaN read by Python): no crash, cmc left out with a note."""
    from uvireid.viz.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: t\n")
    (run / "results.json").write_text(json.dumps({"none": {"mean": {"R1": float("nan")}}}))
    report = build_report(run, reranker=None, dpi=10)
    assert "cmc.png not drawn: no result holds a CMC curve." in report.notes


def test_distances_keep_sysu_camera_3_vs_2_out_only(viz_features):
    """D3: a camera-3 query ignores camera 2 (not camera-2 queries vs camera 3)."""
    f = dataclasses.replace(viz_features)
    q, g = np.flatnonzero(f.modality == 1), np.flatnonzero(f.modality == 0)
    got = distances.kept_pairs(f, q, g, "sysu-all")
    want = [[not (f.cams[i] == 3 and f.cams[j] == 2) for j in g] for i in q]
    assert got.tolist() == want


class _Negated:
    """A re-ranker: distance = similarity (the reverse of the plain ranking)."""

    name = "neg"

    def rerank(self, query, gallery):
        return np.asarray(query, np.float64) @ np.asarray(gallery, np.float64).T


def test_each_query_gets_its_own_rows_before_and_after_the_re_ranker(monkeypatch, tmp_path):
    """R10 (row = query + variant): query 1's re-ranked row was drawn over query 2's
    plain row. Rows go query 1 plain, query 1 re-ranked, query 2 plain, ..."""
    f = toy_features(
        np.eye(6)[:, :4] + 0.1, [1, 2, 3, 1, 2, 3], [1, 1, 1, 3, 3, 3], [0, 0, 0, 1, 1, 1]
    )
    seen = {}
    monkeypatch.setattr(ranking, "save", lambda fig, path, dpi: seen.setdefault("fig", fig))
    ranking.plot_ranking(
        f, tmp_path / "r.png", queries=np.array([0, 1, 2]), k=2, reranker=_Negated(), dpi=10
    )
    labels = [t for t in seen["fig"].axes[0].texts if t.get_rotation() == 90]
    assert [t.get_text() for t in labels] == ["no re-ranking", "neg"] * 3
    ys = [t.get_position()[1] for t in labels]
    assert ys == sorted(ys) and len(set(ys)) == 6  # six rows, one below the other


def test_relative_image_paths_are_read_under_image_root(monkeypatch, tmp_path, viz_features):
    """R12: ``image_root`` is what relative paths are relative to (module docstring)."""
    base = tmp_path.parent  # any folder above the images
    f = viz_features
    rel = np.asarray([os.path.relpath(p, base) for p in f.paths])
    assert not any(os.path.isabs(p) for p in rel)
    seen = {}
    monkeypatch.setattr(ranking, "save", lambda fig, path, dpi: seen.setdefault("fig", fig))
    monkeypatch.chdir(tmp_path)  # the relative paths do not resolve from here
    ranking.plot_ranking(
        dataclasses.replace(f, paths=rel), "r.png", queries=2, k=3, image_root=base, dpi=10
    )
    texts = [t.get_text() for t in seen["fig"].axes[0].texts]
    assert not any("(no image)" in t for t in texts)
    seen.clear()
    ranking.plot_ranking(dataclasses.replace(f, paths=rel), "r.png", queries=2, k=3, dpi=10)
    texts = [t.get_text() for t in seen["fig"].axes[0].texts]
    assert sum("(no image)" in t for t in texts) == 2 * 4  # without the root: grey tiles


def test_the_first_gallery_column_sits_a_query_gap_after_the_query():
    """R13: 'columns are GAP apart (plus QUERY_GAP after the query column)'."""
    m = ranking._Mosaic(2, 4, 1)
    tile = ranking.THUMB[0] + 2 * m.BORDER
    x0, x1, x2 = (m.origin(0, c)[0] for c in range(3))
    assert x1 - (x0 + tile) == m.GAP + m.QUERY_GAP
    assert x2 - (x1 + tile) == m.GAP


@pytest.mark.parametrize("k", [1, 3, 10])
def test_thumbnails_keep_their_aspect_ratio(monkeypatch, tmp_path, viz_features, k):
    """R14: the figure is as wide as its k + 1 columns, so the mosaic (drawn with
    aspect='auto') is scaled alike in x and y: person crops are not squashed."""
    seen = {}
    monkeypatch.setattr(ranking, "save", lambda fig, path, dpi: seen.setdefault("fig", fig))
    ranking.plot_ranking(viz_features, "r.png", queries=2, k=k, dpi=10)
    fig = seen["fig"]
    ax = fig.axes[0]
    height_px, width_px = ax.images[0].get_array().shape[:2]
    box = ax.get_position()
    w_in, h_in = box.width * fig.get_figwidth(), box.height * fig.get_figheight()
    x_scale, y_scale = width_px / w_in, height_px / h_in
    assert x_scale / y_scale == pytest.approx(1.0, abs=0.15)


def test_a_row_label_of_exactly_the_width_stays_on_one_line():
    """R17: names up to 16 characters are not wrapped."""
    assert ranking._row_label("cmfp(k=30,x=123)") == "cmfp(k=30,x=123)"
    assert ranking._row_label("cmfp(k=30,x=1234)") != "cmfp(k=30,x=1234)"


def test_a_gallery_image_of_unknown_identity_is_grey_not_wrong(monkeypatch, tmp_path):
    """R18: plot_matches frames an unknown gallery id (-1) grey, even for a known query."""
    seen = {}
    monkeypatch.setattr(ranking, "save", lambda fig, path, dpi: seen.setdefault("fig", fig))
    ranking.plot_matches(
        ["q.png"],
        ["a.png", "b.png"],
        np.array([[1, 0]]),
        np.array([[0.1, 0.2]]),
        tmp_path / "m.png",
        query_pids=np.array([7]),
        gallery_pids=np.array([7, -1]),
    )
    captions = {
        t.get_text(): t.get_color() for t in seen["fig"].axes[0].texts if ": " in t.get_text()
    }
    assert captions == {"1: 0.1": "#969696", "2: 0.2": ranking.COLORS["correct"]}
    assert "rank-1 same id 0/1 " in seen["fig"].get_suptitle().replace("\n", " ")


def test_squared_distances_of_unit_vectors_are_never_negative():
    """D1: 2 - 2 cos is a squared distance (>= 0); rounding gave -4e-16 for a vector and
    itself without the clip."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16))
    f = toy_features(np.r_[x, x], np.r_[np.arange(40), np.arange(40)], np.r_[[1] * 40, [3] * 40],
             np.r_[[0] * 40, [1] * 40])  # fmt: skip
    f = dataclasses.replace(f, feats=np.r_[x, x])  # float64, as a re-exported file may hold
    pos, neg = distances.pair_distances(f)
    assert len(pos) == 40 and (pos >= 0).all() and (neg >= 0).all()
    naive = [float(np.sum((a / np.linalg.norm(a) - a / np.linalg.norm(a)) ** 2)) for a in x]
    assert np.allclose(pos, naive, atol=1e-12)


def test_histograms_without_a_positive_pair_are_an_error(tmp_path):
    """D10: documented Raises: no identity in both modalities -> ProtocolError, no PNG."""
    from uvireid.errors import ProtocolError

    f = toy_features(np.eye(4), [1, 2, 3, 4], [1, 1, 3, 3], [0, 0, 1, 1])
    with pytest.raises(ProtocolError, match="0 positive"):
        distances.plot_distance_histograms(f, tmp_path / "d.png")
    assert not (tmp_path / "d.png").exists()


class _Constant:
    name = "const"

    def rerank(self, query, gallery):
        return np.full((len(query), len(gallery)), 0.3)


def test_all_identical_distances_still_draw_a_panel(monkeypatch, tmp_path, viz_features):
    """D6: a re-ranker whose distances are all equal: one bin holds every pair, AUC 0.5."""
    seen = {}
    monkeypatch.setattr(distances, "save", lambda fig, path, dpi: seen.setdefault("fig", fig))
    distances.plot_distance_histograms(viz_features, tmp_path / "d.png", reranker=_Constant())
    ax = seen["fig"].axes[1]
    assert "AUC 0.500" in ax.get_title()
    full = [p for p in ax.patches if p.get_height() > 0]
    assert len(full) == 2  # one full bin per colour, of area 1 (density)
    assert [p.get_height() * p.get_width() for p in full] == pytest.approx([1.0, 1.0])


def test_a_cmc_with_a_non_finite_rank_is_not_drawn(tmp_path):
    """C12: a curve with a NaN rank (results.json written with NaN) is left out, not drawn
    with a hole: no result has a usable CMC, so nothing is written."""
    path = tmp_path / "c.png"
    assert curves.plot_cmc({"none": {"cmc": [10.0, float("nan"), 30.0]}}, path) is None
    assert not path.exists()


def test_a_single_epoch_axis_spans_a_whole_epoch_either_side(monkeypatch, tmp_path):
    """C15: one evaluation (epoch 3) is drawn on an axis from 2 to 4, not 2.95-3.05."""
    seen = {}
    monkeypatch.setattr(curves, "save", lambda fig, path, dpi: seen.setdefault("fig", fig))
    curves.plot_losses([{"epoch": 3, "loss": {"a": 1.0}}], tmp_path / "l.png")
    assert seen["fig"].axes[0].get_xlim() == pytest.approx((2.0, 4.0))


def test_label_quality_axis_stops_just_above_one(monkeypatch, tmp_path):
    """C17: agreement scores are at most 1: the axis ends at 1.02, whatever the margin."""
    seen = {}
    monkeypatch.setattr(curves, "save", lambda fig, path, dpi: seen.setdefault("fig", fig))
    records = [{"epoch": e, "label_quality": {"visible": {"ari": v}}} for e, v in
               enumerate([0.5, 0.9, 1.0])]  # fmt: skip
    curves.plot_label_quality(records, tmp_path / "q.png")
    assert seen["fig"].axes[0].get_ylim() == pytest.approx((0.0, 1.02))


def test_a_recipe_protocol_of_auto_is_not_a_protocol_name(viz_run_dir):
    """P3: evaluation.protocol 'auto' (and results without provenance) leaves the plots'
    protocol unset (infrared vs visible), instead of failing them with 'unknown protocol'."""
    import yaml

    from uvireid.viz.report import build_report

    cfg = yaml.safe_load((viz_run_dir / "config.yaml").read_text())
    cfg["evaluation"]["protocol"] = "auto"
    (viz_run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    results = json.loads((viz_run_dir / "results.json").read_text())
    for result in results.values():
        result.pop("provenance")
    (viz_run_dir / "results.json").write_text(json.dumps(results))
    (viz_run_dir / "metrics.jsonl").unlink()
    report = build_report(viz_run_dir, reranker=None, queries=2, k=3, tsne_ids=3, dpi=10)
    assert {"distances.png", "ranking.png"} <= set(report.images), report.notes


def test_a_plot_that_raises_a_bug_is_a_note_not_a_lost_report(
    tmp_path, viz_features_file, monkeypatch
):
    """Any other exception of one plot (a bug in it, or in a library under it) ended
    build_report with no report.html; now the page is written with the others."""
    from uvireid.viz.report import build_report

    def broken(*args, **kwargs):
        raise RuntimeError("plot bug")

    monkeypatch.setattr(tsne, "plot_tsne", broken)
    run = make_run_dir(tmp_path, viz_features_file)
    report = build_report(run, reranker=None, dpi=20, queries=2, k=3)
    assert report.html.is_file() and "tsne.png" not in report.images
    assert "tsne.png not drawn: RuntimeError: plot bug (a bug;" in " ".join(report.notes)
    assert {"distances.png", "ranking.png"} <= set(report.images)
