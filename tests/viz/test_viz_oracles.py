"""Mutation audit OB: the viz figures and the report, checked against hand computations
(naive loops, scikit-learn, the metrics file read by hand)."""

from __future__ import annotations

import json

import matplotlib.colors as mcolors
import numpy as np
import pytest
import yaml
from viz_data import toy_features

from uvireid.features import load_features, save_features
from uvireid.viz import curves, distances, ranking, tsne


def _capture(monkeypatch, module):
    """The figure ``module``'s plot function would save (nothing is written)."""
    seen = {}
    monkeypatch.setattr(module, "save", lambda fig, path, dpi: seen.setdefault("fig", fig) and path)
    return seen


def _quality(a):
    return {
        "ari": a,
        "fmi": a + 0.1,
        "ami": a + 0.2,
        "v_measure": a + 0.3,
        "num_clusters": 40,
        "outlier_fraction": 0.1,
    }


def _cross_records():
    """label_quality as the trainer logs it with cross labels (trainer._quality)."""
    quality = {
        "visible": _quality(0.3),
        "infrared": _quality(0.2),
        "cross_v": {**_quality(0.1), "link_precision": 0.5},
        "cross_r": {**_quality(0.15), "link_precision": 0.6},
        "links": {"link_precision": 0.55},
    }
    return [{"epoch": e, "label_quality": quality} for e in range(3)]


def _legend_and_lines(fig):
    legend = {
        t.get_text(): mcolors.to_hex(h.get_color())
        for lg in fig.legends
        for t, h in zip(lg.get_texts(), lg.legend_handles, strict=True)
    }
    lines = [
        (ax.get_title(), line.get_label(), mcolors.to_hex(line.get_color()))
        for ax in fig.axes
        if ax.get_visible()
        for line in ax.get_lines()
    ]
    return legend, lines


# -- three bugs the audit found ------------------------------------------------------------------------------------
def test_label_quality_lines_have_the_legend_colour_of_their_space(monkeypatch, tmp_path):
    """Every panel draws a space in the colour the one legend gives it (the legend was the
    first panel's while each panel coloured its lines in its own order: link_precision
    drew cross_v in "visible"'s colour)."""
    seen = _capture(monkeypatch, curves)
    curves.plot_label_quality(_cross_records(), tmp_path / "q.png")
    legend, lines = _legend_and_lines(seen["fig"])
    wrong = [(t, s, c) for t, s, c in lines if s in legend and legend[s] != c]
    assert wrong == []


def test_label_quality_legend_names_every_space_drawn(monkeypatch, tmp_path):
    """ "links" (drawn in link_precision only) is in the legend too."""
    seen = _capture(monkeypatch, curves)
    curves.plot_label_quality(_cross_records(), tmp_path / "q.png")
    legend, lines = _legend_and_lines(seen["fig"])
    assert {s for _, s, _ in lines} == {
        "visible",
        "infrared",
        "cross_v",
        "cross_r",
        "links",
    }
    assert set(legend) == {s for _, s, _ in lines}


def _sysu_run(tmp_path, shot):
    """A run folder evaluated on sysu-all with ``shot``: 3 ids x 6 cameras x 3 images."""
    from uvireid.evaluation.protocols import run_protocol

    run = tmp_path / "run"
    run.mkdir()
    rows = [(p, c, int(c in (3, 6))) for p in range(3) for c in range(1, 7) for _ in range(3)]
    feats = np.random.default_rng(0).normal(size=(len(rows), 8)).astype(np.float32)
    pids, cams, mods = ([r[i] for r in rows] for i in range(3))
    save_features(run / "features.npz", feats, pids, cams, mods, dataset="sysu", split="test")
    result = run_protocol(load_features(run / "features.npz"), "sysu-all", trials=1, shot=shot)
    cfg = {"name": "t", "evaluation": {"protocol": "sysu-all", "shot": shot}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "results.json").write_text(json.dumps({"none": result.to_dict()}))
    return run


def _report_distance_figure(monkeypatch, run):
    """The distance histograms' figure of ``run``'s report (a stand-in PNG is written for
    the page; the other plots are skipped)."""
    from uvireid.viz.report import build_report

    seen = {}

    def keep(fig, path, dpi):
        seen["fig"] = fig
        path.write_bytes(b"png")
        return path

    monkeypatch.setattr(distances, "save", keep)
    for module, name in ((curves, "plot_cmc"), (tsne, "plot_tsne"), (ranking, "plot_ranking")):
        monkeypatch.setattr(module, name, lambda *a, **k: None)
    build_report(run, reranker=None, dpi=10)
    return seen["fig"]


def test_report_distance_plot_uses_the_gallery_the_run_was_evaluated_on(monkeypatch, tmp_path):
    """A multi-shot run (evaluation.shot: multi; the table says so) gets its distance
    histograms drawn on the multi-shot gallery (every image of an identity and camera, up
    to 10), not the single-shot one."""
    run = _sysu_run(tmp_path, "multi")
    fig = _report_distance_figure(monkeypatch, run)
    f = load_features(run / "features.npz")
    # multi-shot with 3 images per group: every visible image of cameras 1, 2, 4, 5
    n_pos = sum(
        1
        for i in range(len(f.pids))
        for j in range(len(f.pids))
        if f.modality[i] == 1
        and f.modality[j] == 0
        and f.cams[j] in (1, 2, 4, 5)
        and f.pids[i] == f.pids[j]
        and not (f.cams[i] == 3 and f.cams[j] == 2)
    )
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"positive pairs ({n_pos})" in texts, texts


def test_report_distance_plot_of_a_single_shot_run_has_one_image_per_group(monkeypatch, tmp_path):
    """The control of the test above: single shot, one gallery image per (identity,
    camera) of cameras 1, 2, 4, 5; a camera-3 query skips camera 2."""
    run = _sysu_run(tmp_path, "single")
    fig = _report_distance_figure(monkeypatch, run)
    f = load_features(run / "features.npz")
    queries = [i for i in range(len(f.pids)) if f.modality[i] == 1]
    n_pos = sum(3 if f.cams[i] == 3 else 4 for i in queries)  # gallery cameras per query
    n_neg = sum(2 * (3 if f.cams[i] == 3 else 4) for i in queries)  # 2 other identities
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == [f"negative pairs ({n_neg})", f"positive pairs ({n_pos})"]


# -- mutation survivors ----------------------------------------------------------------------
def test_a_flat_label_quality_is_one_space_named_all():
    """C3: ``{measure: value}`` is read as one space named "all" (quality_series doc)."""
    records = [{"epoch": 0, "label_quality": {"ari": 0.5, "FMI": 0.25, "num_clusters": 9}}]
    assert curves.quality_series(records) == {
        "ARI": {"all": ([0.0], [0.5])},
        "FMI": {"all": ([0.0], [0.25])},
    }


def _eval_record(epoch, **prov):
    return {
        "epoch": epoch,
        "eval": {"none": {"R1": 10.0, "mAP": 5.0, "provenance": prov}},
    }


def test_a_setting_recorded_only_from_some_epoch_on_is_no_change():
    """C6: a field the earlier records do not have (an older uvireid did not record it)
    is not a change of setting; a field both have and that differs is."""
    records = [
        _eval_record(0, protocol="sysu-all"),
        _eval_record(1, protocol="sysu-all", ranking="stable"),
        _eval_record(2, protocol="sysu-indoor", ranking="stable"),
    ]
    assert curves.setting_changes(records) == [(2.0, "sysu-all", "sysu-indoor")]


def _losses(epochs, **extra):
    return [{"epoch": e, "loss": {"a": 1.0 + e, "total": 2.0 + e}, **extra} for e in epochs]


def test_an_axis_spanning_a_whole_epoch_is_not_widened(monkeypatch, tmp_path):
    """C7: only a span *under* one epoch is widened to epoch +- 1 (_epoch_axis doc)."""
    seen = _capture(monkeypatch, curves)
    curves.plot_losses(_losses([0, 1]), tmp_path / "l.png")
    low, high = seen["fig"].axes[0].get_xlim()
    assert -1.0 < low < 0.0 and 1.0 < high < 2.0


def test_a_stage_outside_the_plotted_epochs_gets_no_line(monkeypatch, tmp_path):
    """C8: the untrained evaluation (epoch -1) starts a stage, but the loss curve starts
    at epoch 0: a line at -1.5 would widen the axis; dcl (0) and salcr (2) are drawn."""
    records = [{"epoch": -1, "stage": "untrained", "eval": {"none": {"R1": 1.0}}}]
    records += [{**r, "stage": "dcl" if r["epoch"] < 2 else "salcr"} for r in _losses(range(4))]
    seen = _capture(monkeypatch, curves)
    curves.plot_losses(records, tmp_path / "l.png")
    ax = seen["fig"].axes[0]
    vertical = sorted(
        float(line.get_xdata()[0])
        for line in ax.get_lines()
        if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2
    )
    assert vertical == [-0.5, 1.5]
    assert sorted(t.get_text() for t in ax.texts) == ["dcl", "salcr"]


def test_the_total_loss_is_drawn_first_under_the_terms(monkeypatch, tmp_path):
    """C9: "total" first (wide, pale), so a term equal to it still shows on top."""
    seen = _capture(monkeypatch, curves)
    curves.plot_losses(_losses([0, 1, 2]), tmp_path / "l.png")
    labels = [line.get_label() for line in seen["fig"].axes[0].get_lines()]
    assert labels == ["total", "a"]


def test_a_zero_loss_term_keeps_the_axis_linear(monkeypatch, tmp_path):
    """C10: log scale only when every value is positive (a zero term has no log)."""
    seen = _capture(monkeypatch, curves)
    curves.plot_losses([{"epoch": 0, "loss": {"a": 0.0, "b": 100.0}}], tmp_path / "l.png")
    assert seen["fig"].axes[0].get_yscale() == "linear"


def test_four_quality_measures_are_one_row_five_are_two(monkeypatch, tmp_path):
    """C11: up to four panels in one row, more in two."""
    for measures, rows in (
        ({"ari": 0.1, "fmi": 0.2, "ami": 0.3, "v": 0.4}, 1),
        ({"ari": 0.1, "fmi": 0.2, "ami": 0.3, "v": 0.4, "nmi": 0.5}, 2),
    ):
        seen = _capture(monkeypatch, curves)
        curves.plot_label_quality(
            [{"epoch": 0, "label_quality": {"visible": measures}}], tmp_path / "q.png"
        )
        geometry = {ax.get_subplotspec().get_geometry()[:2] for ax in seen["fig"].axes}
        assert geometry == {(rows, -(-len(measures) // rows))}


def test_a_negative_ari_is_inside_the_axis(monkeypatch, tmp_path):
    """C12: ARI and AMI can be negative (worse than chance); the axis must show it."""
    records = [
        {"epoch": e, "label_quality": {"visible": {"ari": v}}} for e, v in enumerate([-0.2, 0.1])
    ]
    seen = _capture(monkeypatch, curves)
    curves.plot_label_quality(records, tmp_path / "q.png")
    low, high = seen["fig"].axes[0].get_ylim()
    assert low < -0.2 and 0.1 < high <= 1.02


def test_cmc_title_names_protocol_dataset_and_trials(monkeypatch, tmp_path):
    """C13: the CMC of a 10-trial protocol says it is their mean."""
    prov = {"protocol": "sysu-all", "dataset": "SYSU-MM01", "trials": 10}
    seen = _capture(monkeypatch, curves)
    curves.plot_cmc({"none": {"cmc": [10.0, 20.0], "provenance": prov}}, tmp_path / "c.png")
    assert seen["fig"].axes[0].get_title() == "CMC, sysu-all (SYSU-MM01, mean of 10 trials)"


def test_a_stage_started_from_epoch_zero_says_so():
    """C15: start_from: best at epoch 0 is still "from epoch 0" (0 is an epoch)."""
    records = [
        {"epoch": 0, "stage": "dcl"},
        {"epoch": 1, "stage": "salcr", "started_from": {"epoch": 0}},
    ]
    assert curves.stage_starts(records) == [(0.0, "dcl"), (1.0, "salcr (from epoch 0)")]


def test_outliers_logged_as_a_nested_dict_go_to_the_outlier_panel(monkeypatch, tmp_path):
    """C17: ``{"outliers": {"visible": n}}`` (nested) is an outlier count, as
    ``outliers_visible`` is."""
    records = [
        {"epoch": e, "clusters": {"visible": 10 + e, "outliers": {"visible": 5 - e}}}
        for e in range(2)
    ]
    seen = _capture(monkeypatch, curves)
    curves.plot_clusters(records, tmp_path / "c.png")
    panels = {
        ax.get_title(): {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
        for ax in seen["fig"].axes
    }
    assert panels == {
        "Clusters per modality": {"visible": [10, 11]},
        "Outliers per modality": {"visible": [5, 4]},
    }


def test_a_complete_record_with_a_line_separator_is_not_called_cut_short(tmp_path):
    """metrics.jsonl's lines are counted as RunFolder.read_metrics splits them (bytes):
    a complete record holding U+2028 (valid JSON, e.g. a stage name written by a tool
    with ensure_ascii=False) is no line cut short by a kill, as str.splitlines made it."""
    from uvireid.viz.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: t\n")
    record = {"epoch": 0, "stage": "dcl\u2028warm-up", "loss": {"a": 1.0}}
    (run / "metrics.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n", "utf-8")
    report = build_report(run, reranker=None, dpi=10)
    assert not any("unreadable line" in note for note in report.notes), report.notes
    assert "curves_losses.png" in report.images


def test_a_truncated_last_line_is_counted_and_the_rest_plotted(tmp_path):
    """A killed run: two complete records and a cut line; the note counts them right."""
    from uvireid.viz.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: t\n")
    lines = [json.dumps({"epoch": e, "loss": {"a": 1.0 + e}}) for e in range(2)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 2, "loss": {"a"')
    report = build_report(run, reranker=None, dpi=10)
    assert any(
        n.startswith("metrics.jsonl has 1 unreadable line(s)") and "the 2 complete" in n
        for n in report.notes
    ), report.notes
    assert not any("metrics.jsonl is empty" in n for n in report.notes)
    assert "curves_losses.png" in report.images


def test_a_metrics_file_of_only_a_cut_line_is_not_called_empty(tmp_path):
    """P1: a file whose only line a kill cut short is not "empty": its note says why."""
    from uvireid.viz.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: t\n")
    (run / "metrics.jsonl").write_text('{"epoch": 0, "loss": {"a"')
    report = build_report(run, reranker=None, dpi=10)
    assert any(n.startswith("metrics.jsonl has 1 unreadable line(s)") for n in report.notes)
    assert not any("metrics.jsonl is empty" in n for n in report.notes), report.notes


# -- t-SNE -----------------------------------------------------------------------------------
def _ids_features(n_ids, per=2, extra_visible_only=0, dim=8, seed=0):
    """``n_ids`` identities with ``per`` images in each modality, then identities seen in
    the visible modality only."""
    rows = [(p, m) for p in range(n_ids) for m in (0, 1) for _ in range(per)]
    rows += [(n_ids + p, 0) for p in range(extra_visible_only) for _ in range(per)]
    pids = [r[0] for r in rows]
    mods = [r[1] for r in rows]
    cams = [3 if m else 1 for m in mods]
    feats = np.random.default_rng(seed).normal(size=(len(rows), dim))
    return toy_features(feats, pids, cams, mods)


def test_tsne_sample_draws_only_identities_of_both_modalities():
    """T1: an identity seen in one modality only is never drawn."""
    f = _ids_features(3, extra_visible_only=4)
    for seed in range(4):
        rows = tsne.tsne_sample(f, n_ids=7, per_id=5, seed=seed)
        assert sorted(set(f.pids[rows].tolist())) == [0, 1, 2]
        assert len(rows) == 12  # every image of the three


def test_tsne_sample_of_every_identity_takes_each_once():
    """T2: ``n_ids`` identities, distinct (drawn without replacement)."""
    f = _ids_features(6)
    for seed in range(6):
        rows = tsne.tsne_sample(f, n_ids=6, per_id=1, seed=seed)
        assert sorted(f.pids[rows].tolist()) == sorted(list(range(6)) * 2)


def test_tsne_of_an_all_zero_feature_is_a_feature_file_error():
    """T3: a zero row has no direction for the cosine metric: a named error."""
    from uvireid.errors import FeatureFileError

    feats = np.random.default_rng(0).normal(size=(6, 4))
    feats[2] = 0.0
    with pytest.raises(FeatureFileError, match="all zero"):
        tsne.embed(feats)


def test_tsne_of_fewer_than_four_images_is_a_feature_file_error():
    """T5: "t-SNE needs at least 4 images"."""
    from uvireid.errors import FeatureFileError

    with pytest.raises(FeatureFileError, match="at least 4"):
        tsne.embed(np.random.default_rng(0).normal(size=(3, 4)))


def _tsne_figure(monkeypatch, f, n_ids):
    """The t-SNE figure of ``f`` with the embedding replaced by the first two feature
    columns (the legend and colours do not depend on it)."""
    monkeypatch.setattr(tsne, "embed", lambda feats, seed=0: np.asarray(feats)[:, :2])
    seen = _capture(monkeypatch, tsne)
    tsne.plot_tsne(f, "unused.png", n_ids=n_ids, per_id=1)
    return seen["fig"]


def test_a_legend_of_exactly_legend_ids_identities_lists_them_all(monkeypatch):
    """T4: up to LEGEND_IDS (48) identities the legend names each one."""
    n = tsne.LEGEND_IDS
    fig = _tsne_figure(monkeypatch, _ids_features(n, per=1), n)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert sum(t.startswith("id ") for t in texts) == n


def test_the_legend_has_two_columns_beyond_16_identities(monkeypatch):
    """T6: the identity legend takes two columns above 16 identities (one up to 16)."""
    for n, ncols in ((16, 1), (17, 2)):
        fig = _tsne_figure(monkeypatch, _ids_features(n, per=1), n)
        assert fig.legends[0]._ncols == ncols


def test_tsne_rows_are_embedded_in_the_order_given():
    """T7: row i of the embedding is feature i: two well separated groups of unequal
    size stay two groups under their own labels."""
    rng = np.random.default_rng(0)
    a = np.array([1.0, 0, 0, 0]) + rng.normal(scale=0.01, size=(3, 4))
    b = np.array([0, 0, 0, 1.0]) + rng.normal(scale=0.01, size=(6, 4))
    xy = tsne.embed(np.vstack([a, b]), seed=0)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    label = np.array([0] * 3 + [1] * 6)
    same = label[:, None] == label[None]
    off = ~np.eye(len(label), dtype=bool)
    assert d[same & off].max() < d[~same].min()


# -- distances and ranking -------------------------------------------------------------------
def test_a_zero_feature_row_has_distance_two_to_every_gallery_image():
    """D1: squared distance of L2-normalised features; a zero vector (no direction) is
    kept finite by the norm floor: ||0 - u||^2 = 1 for unit u... as 2 - 2 cos with cos 0."""
    feats = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.6, 0.8]]
    f = toy_features(feats, [1, 2, 1, 2], [1, 1, 3, 3], [0, 0, 1, 1])
    pos, neg = distances.pair_distances(f)
    # queries: rows 2 (id 1, zero) and 3 (id 2); gallery rows 0 (id 1), 1 (id 2)
    assert np.sort(pos).tolist() == pytest.approx(sorted([2.0, 2 - 2 * 0.8]))
    assert np.sort(neg).tolist() == pytest.approx(sorted([2.0, 2 - 2 * 0.6]))


class _Float32Reranker:
    name = "f32"

    def rerank(self, query, gallery):
        q, g = np.asarray(query, np.float32), np.asarray(gallery, np.float32)
        return (1 - q @ g.T).astype(np.float32)


def test_re_ranked_pair_distances_are_float64():
    """D6: "Returns: 1-D float64 arrays" whatever the re-ranker's dtype."""
    f = _ids_features(3)
    pos, neg = distances.pair_distances(f, _Float32Reranker())
    assert pos.dtype == np.float64 and neg.dtype == np.float64
    q, g = np.flatnonzero(f.modality == 1), np.flatnonzero(f.modality == 0)
    want = [
        (
            1 - float(np.float32(f.feats[i]) @ np.float32(f.feats[j])),
            f.pids[i] == f.pids[j],
        )
        for i in q
        for j in g
    ]
    assert np.sort(pos) == pytest.approx(sorted(d for d, s in want if s), abs=1e-5)
    assert np.sort(neg) == pytest.approx(sorted(d for d, s in want if not s), abs=1e-5)


def test_top_k_beyond_the_gallery_pads_with_minus_one():
    """R2: (len(rows), k), -1 where fewer than k are kept (here: the gallery has 2)."""
    f = toy_features(np.eye(4), [1, 2, 1, 2], [1, 1, 3, 3], [0, 0, 1, 1])
    q, g = np.array([2, 3]), np.array([0, 1])
    got = ranking.top_k(f, q, g, np.array([0, 1]), 4)
    sims = f.feats[q] @ f.feats[g].T  # identity rows: all zero, ties kept in gallery order
    want = [[int(g[j]) for j in np.argsort(-s, kind="stable")] + [-1, -1] for s in sims]
    assert got.tolist() == want


def test_missing_images_checks_the_last_path_too(tmp_path):
    """R4: the paths checked are evenly spaced from the first to the last."""
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    paths = [str(tmp_path / n) for n in ("a.png", "b.png", "gone.png")]
    f = toy_features(np.eye(3), [1, 1, 2], [1, 3, 1], [0, 1, 0], paths=np.asarray(paths))
    assert ranking.missing_images(f) == (1, 3, paths[2])
    assert ranking.missing_images(f, sample=2) == (1, 2, paths[2])


# -- report ----------------------------------------------------------------------------------
def test_an_unbuildable_recipe_reranker_is_a_note_not_an_error():
    """P2: the recipe's re-ranker that cannot be built: plots without it, said so."""
    from uvireid.viz.report import RECIPE, _build_reranker

    for spec in ({"type": "no-such-reranker"}, {"type": "cmfp", "k": -1}):
        notes: list[str] = []
        assert _build_reranker(RECIPE, {"reranker": spec}, notes) is None
        assert len(notes) == 1 and "cannot be built" in notes[0], notes


def _stubbed_report(monkeypatch, tmp_path, **kwargs):
    """build_report of a run with a small features file, every feature plot replaced by
    a stub that records its arguments."""
    from uvireid.viz.report import build_report

    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "config.yaml").write_text("name: t\n")
    f = _ids_features(3)
    save_features(run / "features.npz", f.feats, f.pids, f.cams, f.modality, dataset="toy")
    calls = {}

    def stub(name):
        def plot(*args, **kw):
            calls[name] = kw

        return plot

    for module, name in (
        (distances, "plot_distance_histograms"),
        (tsne, "plot_tsne"),
        (ranking, "plot_ranking"),
    ):
        monkeypatch.setattr(module, name, stub(name))
    build_report(run, reranker=None, **kwargs)
    return calls


def test_report_hands_its_options_to_the_feature_plots(monkeypatch, tmp_path):
    """P3, P4, P5: queries, k, tsne_ids and image_root reach the plots they are for."""
    root = tmp_path / "images"
    calls = _stubbed_report(
        monkeypatch, tmp_path, queries=3, k=5, tsne_ids=7, dpi=11, image_root=root
    )
    assert calls["plot_ranking"]["queries"] == 3 and calls["plot_ranking"]["k"] == 5
    assert calls["plot_ranking"]["image_root"] == root
    assert calls["plot_tsne"]["n_ids"] == 7
    assert {c["dpi"] for c in calls.values()} == {11}


# -- uvireid report (CLI) ----------------------------------------------------------------------
def _cli_report(monkeypatch, tmp_path, argv):
    import uvireid.viz.report as rep
    from uvireid.cli import main

    seen: dict = {}

    class Built:
        html = tmp_path / "report.html"
        images = ()
        notes = ()

    def fake_build_report(run_dir, **kw):
        seen.clear()
        seen.update(kw, run_dir=run_dir)
        return Built

    monkeypatch.setattr(rep, "build_report", fake_build_report)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "config.yaml").write_text("name: x\n")
    code = main(["report", str(run), *argv])
    return code, seen


def test_cli_report_hands_protocol_image_root_features_and_out(monkeypatch, tmp_path):
    """K3, K4: --protocol, --image-root, --features, --out reach build_report as given."""
    argv = ["--protocol", "sysu-indoor", "--image-root", str(tmp_path / "img")]
    argv += ["--features", str(tmp_path / "f.npz"), "--out", str(tmp_path / "out")]
    code, seen = _cli_report(monkeypatch, tmp_path, argv)
    assert code == 0
    assert seen["protocol"] == "sysu-indoor"
    assert seen["image_root"] == str(tmp_path / "img")
    assert seen["features"] == str(tmp_path / "f.npz")
    assert seen["out"] == str(tmp_path / "out")


def test_cli_report_of_a_folder_without_config_is_refused(monkeypatch, tmp_path, capsys):
    """K2: a folder that is not a run (no config.yaml) is a usage error, nothing built."""
    import uvireid.viz.report as rep
    from uvireid.cli import main

    calls = []
    monkeypatch.setattr(rep, "build_report", lambda *a, **k: calls.append(a))
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    assert main(["report", str(folder)]) != 0
    assert calls == [] and "config.yaml" in capsys.readouterr().err


# -- the report's table ----------------------------------------------------------------------
def _result(r1, m_ap, reranker, std=None, **prov):
    mean = {"R1": r1, "R5": 0.0, "R10": 0.0, "R20": 0.0, "mAP": m_ap, "mINP": 0.0}
    return {"mean": mean, "std": std, "provenance": {"reranker": reranker, **prov}}


def test_table_rows_are_named_by_the_re_rankers_full_name_with_std():
    """P7, P8, P12: a row per result named as its provenance names the re-ranker; mean
    +- std where the std is known; the full provenance without features_meta."""
    from uvireid.viz.report import _results_html

    std = {k: 0.5 for k in ("R1", "R5", "R10", "R20", "mAP", "mINP")}
    results = {
        "none": _result(10.0, 12.5, "none", std, trials=2, features_meta={"x": "SECRET"}),
        "cmfp": _result(20.0, 22.25, "cmfp(k=3)", std, trials=2),
    }
    page = _results_html(results, "results.json", "sysu-all")
    assert '<td class="k">none</td><td>10.00 ± 0.50</td>' in page
    assert '<td class="k">cmfp(k=3)</td><td>20.00 ± 0.50</td>' in page
    assert "<td>22.25 ± 0.50</td>" in page
    assert "Full provenance" in page and ">trials<" in page and "SECRET" not in page


def test_a_finished_run_without_evaluation_is_reported_finished(tmp_path):
    """P10: results.json present (empty: evaluation.protocol none) is a finished run."""
    from uvireid.viz.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: t\n")
    (run / "results.json").write_text("{}")
    page = build_report(run, reranker=None, dpi=10).html.read_text()
    assert "finished (results.json present)" in page and 'class="status-bad"' not in page


def test_a_training_run_with_a_later_evaluation_only_record_keeps_its_curves(tmp_path):
    """P6: only a run whose every record is an evaluation-only one loses its epoch curves."""
    from uvireid.viz.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: t\n")
    ev = {"none": {"R1": 10.0, "mAP": 5.0}}
    records = [
        {"epoch": 0, "stage": "dcl", "eval": ev, "seconds": {"train": 1.0}},
        {"epoch": 1, "stage": "evaluation only", "eval": ev},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = build_report(run, reranker=None, dpi=10)
    assert {"curves_eval.png", "curves_time.png"} <= set(report.images)


def test_a_flat_evaluation_of_a_name_with_two_full_names_keeps_its_own_line():
    """C14: a record without provenance takes its name's full name only when there is
    one; with two (cmfp(k=20), then cmfp(k=30)) it cannot say which: its own line."""

    def rec(epoch, r1, full=None):
        result = {"R1": r1, "mAP": r1}
        if full:
            result["provenance"] = {"reranker": full}
        return {"epoch": epoch, "eval": {"cmfp": result}}

    records = [rec(0, 1.0), rec(1, 2.0, "cmfp(k=20)"), rec(2, 3.0, "cmfp(k=30)")]
    assert curves.eval_series(records)["R1"] == {
        "cmfp": ([0.0], [1.0]),
        "cmfp(k=20)": ([1.0], [2.0]),
        "cmfp(k=30)": ([2.0], [3.0]),
    }


def test_features_that_fit_the_runs_protocol_keep_it_even_if_another_fits_first():
    """P11: the run's protocol (sysu-indoor) is kept when the file fits it, though
    sysu-all, registered first, fits too; no note."""
    from uvireid.viz.report import _fitting_protocol

    rows = [(p, c, int(c in (3, 6))) for p in range(2) for c in range(1, 7)]
    f = toy_features(np.eye(12, 4) + 0.1, *([r[i] for r in rows] for i in range(3)))
    notes: list[str] = []
    assert _fitting_protocol(f, "sysu-indoor", notes) == "sysu-indoor"
    assert notes == []


def test_ranking_lists_of_a_multi_shot_run_rank_the_multi_shot_gallery(monkeypatch, tmp_path):
    """The ranking lists under a multi-shot table rank the gallery it measured (every
    visible image of cameras 1, 2, 4 and 5 here), and their title says multi-shot."""
    from uvireid.evaluation.protocols import get_protocol, trial_indices
    from uvireid.viz.report import build_report

    run = _sysu_run(tmp_path, "multi")
    seen = {}
    real_top_k = ranking.top_k

    def spy_top_k(features, q, g, *a, **k):
        seen.setdefault("g", g)
        return real_top_k(features, q, g, *a, **k)

    def keep(fig, path, dpi):
        seen["title"] = fig._suptitle.get_text()
        path.write_bytes(b"png")
        return path

    monkeypatch.setattr(ranking, "top_k", spy_top_k)
    monkeypatch.setattr(ranking, "save", keep)
    for module, name in ((curves, "plot_cmc"), (tsne, "plot_tsne"), (distances, "plot_distance_histograms")):  # fmt: skip
        monkeypatch.setattr(module, name, lambda *a, **k: None)
    build_report(run, reranker=None, dpi=10)
    f = load_features(run / "features.npz")
    _, multi = trial_indices(f, get_protocol("sysu-all"), 0, shot="multi")
    want = np.flatnonzero((f.modality == 0) & np.isin(f.cams, (1, 2, 4, 5)))
    assert sorted(seen["g"].tolist()) == sorted(multi.tolist()) == want.tolist()
    assert "sysu-all, trial 0, multi-shot" in seen["title"]


def test_a_json_line_that_is_no_record_is_noted_apart_from_cut_lines(tmp_path):
    """A line that is JSON but not an object (``null``) is left out with its own note, not
    called a line cut short; a line cut short still is."""
    from uvireid.viz.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: t\n")
    good = json.dumps({"epoch": 0, "loss": {"a": 1.0}})
    (run / "metrics.jsonl").write_text(f"{good}\nnull\n{good[:9]}\n")
    notes = build_report(run, reranker=None, dpi=10).notes
    assert any("1 line(s) that are JSON but not records" in n for n in notes), notes
    assert any("1 unreadable line(s) (a line cut short" in n for n in notes), notes
