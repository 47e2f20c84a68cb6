"""The data the t-SNE and curve figures are drawn from, checked against scikit-learn's
TSNE called as the spec says and against naive computations from hand-written metrics
records."""

from __future__ import annotations

import numpy as np
import pytest
from viz_data import toy_features

from uvireid.viz import curves, tsne


def _sklearn_tsne(x, seed, method="exact"):
    from sklearn.manifold import TSNE

    m = len(x)
    return TSNE(
        n_components=2,
        perplexity=min(30.0, max(1.0, (m - 1) / 3)),
        metric="cosine",
        init="pca",
        random_state=seed,
        method=method,
    ).fit_transform(np.asarray(x, dtype=np.float64))


@pytest.mark.parametrize("m, seed", [(13, 0), (7, 3)])
def test_embed_is_sklearn_tsne_with_the_documented_settings(m, seed):
    """embed = TSNE(perplexity min(30, (M-1)/3), cosine, PCA init of the features as
    given, seeded, exact). Features of unequal norms: a PCA of the unit vectors, or a
    euclidean metric, gives another embedding."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, 5)) * rng.uniform(0.2, 5.0, size=(m, 1)) + 0.5
    x = x.astype(np.float32)
    np.testing.assert_allclose(tsne.embed(x, seed=seed), _sklearn_tsne(x, seed), atol=1e-4)


def test_embed_uses_exact_gradients_up_to_exact_max_points(monkeypatch):
    """EXACT_MAX points still take exact gradients, one more takes Barnes-Hut."""
    monkeypatch.setattr(tsne, "EXACT_MAX", 8)
    rng = np.random.default_rng(1)
    x8 = rng.normal(size=(8, 4)) + 0.3
    np.testing.assert_allclose(tsne.embed(x8, seed=0), _sklearn_tsne(x8, 0), atol=1e-4)
    x9 = rng.normal(size=(9, 4)) + 0.3
    np.testing.assert_allclose(
        tsne.embed(x9, seed=0), _sklearn_tsne(x9, 0, method="barnes_hut"), atol=1e-4
    )


def test_plot_tsne_draws_the_seeded_sample_at_its_embedding(monkeypatch):
    """plot_tsne(seed=s) embeds the rows tsne_sample(seed=s) picks, with seed s, and
    each point is drawn at its row's embedding in its modality's marker."""
    n = 12
    rows = [(p, mod) for p in range(n) for mod in (0, 1) for _ in range(3)]
    pids = [r[0] for r in rows]
    mods = [r[1] for r in rows]
    feats = np.random.default_rng(0).normal(size=(len(rows), 6))
    f = toy_features(feats, pids, [3 if m else 1 for m in mods], mods)
    seen = {}

    def fake_embed(x, seed=0):
        seen["seed"] = seed
        return np.asarray(x)[:, :2] * 10 + seed

    monkeypatch.setattr(tsne, "embed", fake_embed)
    monkeypatch.setattr(tsne, "save", lambda fig, path, dpi: seen.setdefault("fig", fig) and path)
    tsne.plot_tsne(f, "unused.png", n_ids=4, per_id=2, seed=5)
    assert seen["seed"] == 5
    want_rows = tsne.tsne_sample(f, 4, 2, 5)
    assert not np.array_equal(want_rows, tsne.tsne_sample(f, 4, 2, 0))
    ax = seen["fig"].axes[0]
    for coll, code in zip(ax.collections, (0, 1), strict=True):
        sel = want_rows[f.modality[want_rows] == code]
        want = f.feats[sel][:, :2].astype(np.float64) * 10 + 5
        np.testing.assert_allclose(np.asarray(coll.get_offsets()), want, rtol=1e-6)


def _fig(monkeypatch, plot, records):
    seen = {}
    monkeypatch.setattr(curves, "save", lambda fig, path, dpi: seen.setdefault("fig", fig) and path)
    assert plot(records, "unused.png") is not None
    return seen["fig"]


def test_stage_lines_sit_half_an_epoch_before_each_stage_in_range(monkeypatch):
    """A dotted line at epoch - 0.5 for every stage start within the drawn epochs, the
    first record's stage included (its epoch is the low end of the range)."""
    records = [
        {"epoch": e, "stage": "dcl" if e < 3 else "salcr", "loss": {"total": 1.0 + e}}
        for e in range(1, 6)
    ]
    ax = _fig(monkeypatch, curves.plot_losses, records).axes[0]
    xs = sorted(
        float(line.get_xdata()[0]) for line in ax.get_lines() if line.get_linestyle() == ":"
    )
    assert xs == [0.5, 2.5]


def test_started_from_epoch_zero_is_named(monkeypatch):
    records = [
        {"epoch": 0, "stage": "a"},
        {"epoch": 1, "stage": "b", "started_from": {"epoch": 0}},
    ]
    assert curves.stage_starts(records) == [(0.0, "a"), (1.0, "b (from epoch 0)")]


@pytest.mark.parametrize("ratio, log", [(40.0, False), (50.0, False), (51.0, True)])
def test_loss_axis_is_logarithmic_only_beyond_a_50x_span(monkeypatch, ratio, log):
    records = [{"epoch": 0, "loss": {"a": 1.0}}, {"epoch": 1, "loss": {"a": ratio}}]
    ax = _fig(monkeypatch, curves.plot_losses, records).axes[0]
    assert (ax.get_yscale() == "log") is log


def test_total_loss_is_drawn_first_whatever_the_logged_order(monkeypatch):
    records = [{"epoch": e, "loss": {"a": 1.0, "b": 2.0, "total": 3.0}} for e in range(2)]
    ax = _fig(monkeypatch, curves.plot_losses, records).axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["total", "a", "b"]


def test_time_bars_are_the_naive_per_epoch_stack(monkeypatch):
    """Bar heights and bottoms per (phase, epoch) from the records read by hand; a phase
    missing in an epoch is a zero bar there; the title's total is every second logged."""
    records = [
        {"epoch": 0, "seconds": {"train": 5.0, "custom": 1.0}},
        {"epoch": 1, "seconds": {"extract": 2.0, "train": 4.0}},
        {"epoch": 2, "seconds": {"extract": 3.0, "cluster": 1.5, "train": 6.0}},
    ]
    fig = _fig(monkeypatch, curves.plot_time, records)
    ax = fig.axes[0]
    phases = ["extract", "cluster", "train", "custom"]  # PHASES order, then the others
    epochs = [0.0, 1.0, 2.0]
    bottom = [0.0, 0.0, 0.0]
    got = [(p.get_x() + p.get_width() / 2, p.get_y(), p.get_height()) for p in ax.patches]
    want = []
    for phase in phases:
        heights = [r["seconds"].get(phase, 0.0) for r in records]
        want += list(zip(epochs, bottom, heights, strict=True))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    np.testing.assert_allclose(got, want)
    total = sum(v for r in records for v in r["seconds"].values())
    assert ax.get_title() == f"Time per phase ({total:.1f} s in all)"
    fixed = {tuple(ax.patches[i].get_facecolor()) for i in range(9)}
    assert tuple(ax.patches[9].get_facecolor()) not in fixed  # "custom" has its own colour


def test_quality_limits_of_constant_and_negative_scores(monkeypatch):
    """A constant score still has headroom above it; a negative ARI stays in view."""
    records = [
        {"epoch": e, "label_quality": {"visible": {"ari": -0.2 + 0.1 * e, "fmi": 0.5}}}
        for e in range(3)
    ]
    fig = _fig(monkeypatch, curves.plot_label_quality, records)
    by_title = {ax.get_title(): ax.get_ylim() for ax in fig.axes if ax.get_visible()}
    low, high = by_title["ARI"]
    assert low < -0.2 and high > 0.0
    low, high = by_title["FMI"]
    assert low == 0.0 and high > 0.5


def test_ten_label_spaces_get_ten_colours(monkeypatch):
    spaces = [f"s{i}" for i in range(10)]
    records = [
        {"epoch": e, "label_quality": {s: {"ari": 0.1 * e} for s in spaces}} for e in range(2)
    ]
    fig = _fig(monkeypatch, curves.plot_label_quality, records)
    colours = {line.get_color() for ax in fig.axes for line in ax.get_lines()}
    assert len(colours) == 10


def test_setting_changes_compare_with_the_previous_setting():
    """A -> B -> C is two changes, each from the setting just before; a field the earlier
    record did not log is no change."""

    def rec(epoch, **prov):
        return {"epoch": epoch, "eval": {"none": {"mean": {"R1": 1.0}, "provenance": prov}}}

    records = [
        rec(0, protocol="all"),
        rec(1, protocol="indoor", shot="single"),
        rec(2, protocol="all", shot="single"),
    ]
    assert curves.setting_changes(records) == [
        (1.0, "all", "indoor"),
        (2.0, "indoor", "all"),
    ]


def test_tsne_sample_rows_are_sorted_when_the_file_interleaves_identities():
    """Rows come back sorted (the docstring's contract) also when a file's rows are not
    grouped by identity: here infrared rows first, identities interleaved."""
    pids = [2, 1, 0, 2, 1, 0, 0, 1, 2, 0, 1, 2]
    mods = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    feats = np.random.default_rng(0).normal(size=(len(pids), 4))
    f = toy_features(feats, pids, [3 if m else 1 for m in mods], mods)
    rows = tsne.tsne_sample(f, n_ids=3, per_id=5, seed=0)
    np.testing.assert_array_equal(rows, np.arange(len(pids)))


def test_features_of_one_direction_and_unequal_norms_are_refused():
    """Features that differ only in norm point the same way: nothing for the cosine
    metric to separate, a FeatureFileError (not sklearn's bare error or a blob)."""
    from uvireid.errors import FeatureFileError

    v = np.array([0.3, -1.0, 2.0, 0.5])
    feats = np.outer([1.0, 2.0, 3.0, 4.0, 5.0], v)
    with pytest.raises(FeatureFileError, match="same way"):
        tsne.embed(feats)


@pytest.mark.parametrize("n", [20, 21])
def test_identity_colours_are_tab20_up_to_20_then_evenly_spaced_turbo(monkeypatch, n):
    """Up to 20 identities tab20's colours in identity order; beyond, turbo at i / (n - 1),
    the first and last identities at the two ends of the map."""
    from matplotlib import colormaps

    rows = [(p, m) for p in range(n) for m in (0, 1)]
    f = toy_features(
        np.random.default_rng(0).normal(size=(len(rows), 4)),
        [r[0] for r in rows],
        [3 if r[1] else 1 for r in rows],
        [r[1] for r in rows],
    )
    monkeypatch.setattr(tsne, "embed", lambda feats, seed=0: np.asarray(feats)[:, :2])
    seen = {}
    monkeypatch.setattr(tsne, "save", lambda fig, path, dpi: seen.setdefault("fig", fig) and path)
    tsne.plot_tsne(f, "unused.png", n_ids=n, per_id=1)
    visible = seen["fig"].axes[0].collections[0]
    cmap = colormaps["tab20"] if n <= 20 else colormaps["turbo"]
    want = [cmap(i) if n <= 20 else cmap(i / (n - 1)) for i in range(n)]
    np.testing.assert_allclose(visible.get_facecolors(), want, atol=1e-6)


def test_bare_numbers_and_unknown_measures():
    """A bare number where a mapping of terms belongs names no series; a measure outside
    MEASURES keeps its own spelling."""
    assert curves.cluster_series([{"epoch": 0, "clusters": 5}]) == {}
    assert curves.loss_series([{"epoch": 0, "loss": 2.5}]) == {}
    got = curves.quality_series([{"epoch": 1, "label_quality": {"visible": {"Purity": 0.5}}}])
    assert got == {"Purity": {"visible": ([1.0], [0.5])}}


def test_cmc_is_drawn_from_rank_one(monkeypatch):
    """The CMC's first value is rank 1; a result without mAP gets no (R1, mAP) label."""
    seen = {}
    monkeypatch.setattr(curves, "save", lambda fig, path, dpi: seen.setdefault("fig", fig) and path)
    results = {"none": {"cmc": [40.0, 55.0, 70.0], "mean": {"R1": 40.0}}}
    curves.plot_cmc(results, "unused.png")
    (line,) = seen["fig"].axes[0].get_lines()
    assert list(line.get_xdata()) == [1, 2, 3] and list(line.get_ydata()) == [40.0, 55.0, 70.0]
    assert line.get_label() == "none"


def test_an_empty_provenance_field_is_no_setting():
    """protocol "" is not logged: with one real value it does not vary, no bracket."""

    def rec(epoch, protocol):
        prov = {"protocol": protocol}
        return {"epoch": epoch, "eval": {"none": {"mean": {"R1": 1.0}, "provenance": prov}}}

    got = curves.eval_series([rec(0, ""), rec(1, "all")])
    assert got == {"R1": {"none": ([0.0, 1.0], [1.0, 1.0])}}


def test_outlier_counts_go_to_their_own_panel_whatever_their_case(monkeypatch):
    """``Outliers_visible`` (another logger's capitalisation) is an outlier count: drawn in
    the second panel under its modality's name, not among the cluster counts."""
    records = [
        {"epoch": e, "clusters": {"visible": 10 + e, "Outliers_visible": 5 - e}} for e in range(3)
    ]
    counts, outliers = _fig(monkeypatch, curves.plot_clusters, records).axes
    assert counts.get_title() == "Clusters per modality"
    assert [line.get_label() for line in counts.get_lines() if line.get_linestyle() != ":"] == [
        "visible"
    ]
    assert outliers.get_title() == "Outliers per modality"
    drawn = [line for line in outliers.get_lines() if line.get_linestyle() != ":"]
    assert len(drawn) == 1 and list(drawn[0].get_ydata()) == [5, 4, 3]


def test_a_cmc_with_an_entry_that_is_no_number_is_not_drawn(monkeypatch):
    """A CMC holding a string or a NaN is not a curve: no plot when it is the only one, the
    other result's curve alone beside it."""
    bad = {"none": {"cmc": [40.0, "55", 70.0]}}
    assert curves.plot_cmc(bad, "unused.png") is None
    assert curves.plot_cmc({"none": {"cmc": [40.0, float("nan")]}}, "unused.png") is None
    fig = _fig(monkeypatch, curves.plot_cmc, {**bad, "cmfp": {"cmc": [50.0, 60.0]}})
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["cmfp"]


@pytest.mark.parametrize(
    "trials, title",
    [
        (None, "CMC, all (SYSU-MM01)"),
        (0, "CMC, all (SYSU-MM01)"),
        (10, "CMC, all (SYSU-MM01, mean of 10 trials)"),
    ],
)
def test_the_cmc_title_names_the_trials_only_where_known(monkeypatch, trials, title):
    prov = {"protocol": "all", "dataset": "SYSU-MM01", "trials": trials}
    fig = _fig(monkeypatch, curves.plot_cmc, {"none": {"cmc": [1.0, 2.0], "provenance": prov}})
    assert fig.axes[0].get_title() == title
