"""What the figures draw, read back from the matplotlib objects and checked against loops
over the records / naive numpy (audit DB)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from viz_data import training_records

from uvireid.viz import curves, distances, ranking, tsne


def _capture(monkeypatch, module, write=False):
    seen = {}

    real = module.save

    def grab(fig, path, dpi):
        seen["fig"] = fig
        return real(fig, path, dpi) if write else path

    monkeypatch.setattr(module, "save", grab)
    return seen


# -- curves ----------------------------------------------------------------------------------
def test_eval_figure_draws_each_metric_of_each_reranker_at_its_epochs(monkeypatch, tmp_path):
    records = training_records()
    want: dict = {}
    for rec in records:  # naive: every eval record, in epoch order
        for name, result in (rec.get("eval") or {}).items():
            for metric in ("R1", "mAP"):
                want.setdefault((metric, name), []).append((float(rec["epoch"]), result[metric]))
    seen = _capture(monkeypatch, curves)
    curves.plot_eval(records, tmp_path / "e.png")
    got = {}
    for ax in seen["fig"].axes:
        for line in ax.get_lines():
            if line.get_label().startswith("_"):
                continue
            pts = list(zip(map(float, line.get_xdata()), map(float, line.get_ydata())))
            got[(ax.get_title(), line.get_label())] = pts
            last = pts[-1][1]  # the value written next to the line is its last one
            assert f"{last:.1f}" in [t.get_text() for t in ax.texts], (ax.get_title(), last)
    assert got == {k: sorted(v) for k, v in want.items()}


def test_stage_lines_sit_just_before_the_epoch_the_stage_starts(monkeypatch, tmp_path):
    records = training_records()  # untrained at -1, dcl from 0, salcr from 2
    seen = _capture(monkeypatch, curves)
    curves.plot_eval(records, tmp_path / "e.png")  # evaluated at -1, 1, 3, 4
    ax = seen["fig"].axes[0]
    dotted = [float(ln.get_xdata()[0]) for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert dotted == [-1.5, -0.5, 1.5]
    assert [t.get_text() for t in ax.texts if t.get_text() in ("untrained", "dcl", "salcr")] == [
        "untrained",
        "dcl",
        "salcr",
    ]


def test_time_bars_stack_every_phase_of_every_epoch(monkeypatch, tmp_path):
    records = training_records()
    seen = _capture(monkeypatch, curves)
    curves.plot_time(records, tmp_path / "t.png")
    ax = seen["fig"].axes[0]
    per_epoch: dict = {}
    total = 0.0
    for rec in records:  # naive totals
        for phase, s in rec["seconds"].items():
            per_epoch.setdefault(float(rec["epoch"]), {})[phase] = s
            total += s
    tops: dict = {}
    for container in ax.containers:
        phase = container.get_label().split(" (")[0]
        want_sum = sum(d.get(phase, 0.0) for d in per_epoch.values())
        assert container.get_label() == f"{phase} ({want_sum:.1f} s)"
        for bar in container.patches:
            x = round(bar.get_x() + bar.get_width() / 2, 6)
            assert bar.get_height() == pytest.approx(per_epoch[x].get(phase, 0.0))
            if bar.get_height() > 0:  # stacked: each bar starts where the one below ends
                assert bar.get_y() == pytest.approx(tops.get(x, 0.0))
            tops[x] = tops.get(x, 0.0) + bar.get_height()
    assert tops == pytest.approx({e: sum(d.values()) for e, d in per_epoch.items()})
    assert ax.get_title() == f"Time per phase ({total:.1f} s in all)"


def test_cluster_panels_hold_counts_and_outliers_apart(monkeypatch, tmp_path):
    records = training_records()
    seen = _capture(monkeypatch, curves)
    curves.plot_clusters(records, tmp_path / "c.png")
    panels = {
        ax.get_title(): {
            ln.get_label(): list(ln.get_ydata())
            for ln in ax.get_lines()
            if not ln.get_label().startswith("_")
        }
        for ax in seen["fig"].axes
    }
    naive = lambda key: [r["clusters"][key] for r in records if "clusters" in r]  # noqa: E731
    assert panels == {
        "Clusters per modality": {m: naive(m) for m in ("visible", "infrared")},
        "Outliers per modality": {m: naive(f"outliers_{m}") for m in ("visible", "infrared")},
    }


def test_label_quality_panel_of_each_measure_draws_that_measure(monkeypatch, tmp_path):
    records = training_records()
    seen = _capture(monkeypatch, curves)
    curves.plot_label_quality(records, tmp_path / "q.png")
    keys = {"ARI": "ari", "FMI": "fmi", "AMI": "ami", "V": "v_measure"}
    drawn = [ax for ax in seen["fig"].axes if ax.get_visible()]
    assert sorted(ax.get_title() for ax in drawn) == sorted(keys)
    for ax in drawn:
        for ln in ax.get_lines():
            if ln.get_label().startswith("_"):  # a stage line
                continue
            space, key = ln.get_label(), keys[ax.get_title()]
            want = [r["label_quality"][space][key] for r in records if "label_quality" in r]
            assert list(ln.get_ydata()) == pytest.approx(want), (ax.get_title(), space)


def test_cmc_is_drawn_from_rank_1_with_its_own_r1_and_map(monkeypatch, tmp_path):
    results = {"none": {"mean": {"R1": 10.0, "mAP": 12.5}, "cmc": [10.0, 20.0, 30.0]}}
    seen = _capture(monkeypatch, curves)
    curves.plot_cmc(results, tmp_path / "cmc.png")
    (line,) = seen["fig"].axes[0].get_lines()
    assert list(line.get_xdata()) == [1, 2, 3] and list(line.get_ydata()) == [10.0, 20.0, 30.0]
    assert line.get_label() == "none  (R1 10.0, mAP 12.5)"


@pytest.mark.parametrize(("ratio", "scale"), [(10.0, "linear"), (60.0, "log")])
def test_loss_axis_is_logarithmic_only_beyond_a_50x_span(monkeypatch, tmp_path, ratio, scale):
    records = [{"epoch": 0, "loss": {"a": ratio, "b": 1.0}}, {"epoch": 1, "loss": {"a": 2.0}}]
    seen = _capture(monkeypatch, curves)
    curves.plot_losses(records, tmp_path / "l.png")
    assert seen["fig"].axes[0].get_yscale() == scale


# -- distances -------------------------------------------------------------------------------
class _Reversed:
    """A re-ranker whose distances are not symmetric in (query, gallery)."""

    name = "rev(x=1)"

    def rerank(self, query, gallery):
        q, g = np.asarray(query, np.float64), np.asarray(gallery, np.float64)
        return ((q[:, None, :] - g[None, :, ::-1]) ** 2).sum(-1) + 0.01 * np.arange(len(g))


def test_histograms_draw_positives_green_negatives_red_with_their_counts(
    monkeypatch, tmp_path, viz_features
):
    from sklearn.metrics import roc_auc_score

    f = viz_features
    seen = _capture(monkeypatch, distances)
    distances.plot_distance_histograms(f, tmp_path / "d.png", reranker=_Reversed())
    ir, vis = np.flatnonzero(f.modality == 1), np.flatnonzero(f.modality == 0)
    naive = {}
    for which, dist in (
        ("plain", lambda i, j: float(np.sum((f.feats[i] / np.linalg.norm(f.feats[i])
                                              - f.feats[j] / np.linalg.norm(f.feats[j])) ** 2))),
        ("rev", lambda i, j: float(_Reversed().rerank(f.feats[[i]], f.feats[vis])[0, list(vis).index(j)])),
    ):  # fmt: skip
        pos, neg = [], []
        for i in ir:  # naive: infrared queries against the visible gallery
            for j in vis:
                (pos if f.pids[i] == f.pids[j] else neg).append(dist(i, j))
        naive[which] = (np.array(pos), np.array(neg))
    axes = seen["fig"].axes
    assert len(axes) == 2
    for ax, which in zip(axes, ("plain", "rev"), strict=True):
        pos, neg = naive[which]
        bins = np.linspace(min(pos.min(), neg.min()), max(pos.max(), neg.max()), 50)
        bars = {}
        for p in ax.patches:
            bars.setdefault(tuple(np.round(p.get_facecolor()[:3], 3)), []).append(p.get_height())
        from matplotlib.colors import to_rgb

        green, red = (tuple(np.round(to_rgb(c), 3)) for c in ("tab:green", "tab:red"))
        assert bars[green] == pytest.approx(np.histogram(pos, bins, density=True)[0])
        assert bars[red] == pytest.approx(np.histogram(neg, bins, density=True)[0])
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == [f"negative pairs ({len(neg)})", f"positive pairs ({len(pos)})"]
        auc = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], -np.r_[pos, neg])
        assert f"AUC {auc:.3f}" in ax.get_title()


def test_distances_normalise_features_that_are_not_unit_length(viz_features):
    f = viz_features
    scaled = dataclasses.replace(f, feats=f.feats * np.linspace(0.5, 3.0, len(f.feats))[:, None])
    assert [np.sort(a) for a in distances.pair_distances(scaled)] == [
        pytest.approx(np.sort(a)) for a in distances.pair_distances(f)
    ]


def test_llcm_pairs_leave_out_same_identity_same_camera_only(viz_features):
    f = viz_features
    q, g = np.flatnonzero(f.modality == 1), np.flatnonzero(f.modality == 0)
    cams = np.where(np.arange(len(f.cams)) % 2 == 0, 1, 2)  # both modalities share cameras
    f = dataclasses.replace(f, cams=cams)
    got = distances.kept_pairs(f, q, g, "llcm-v2i")
    want = [[not (cams[i] == cams[j] and f.pids[i] == f.pids[j]) for j in g] for i in q]
    assert got.tolist() == want


def test_without_protocol_queries_are_infrared_and_gallery_visible(viz_features):
    q, g = distances.query_gallery(viz_features)
    assert set(viz_features.modality[q].tolist()) == {1}
    assert set(viz_features.modality[g].tolist()) == {0}


# -- ranking ---------------------------------------------------------------------------------
def test_ranking_lists_show_the_naive_order_and_colour_by_identity(
    monkeypatch, tmp_path, viz_features
):
    from uvireid.features import Features  # noqa: F401

    f = dataclasses.replace(viz_features, paths=None)
    seen = _capture(monkeypatch, ranking)
    rer = _Reversed()
    ranking.plot_ranking(f, tmp_path / "r.png", queries=np.array([0, 5, 11]), k=4, reranker=rer)
    ir, vis = np.flatnonzero(f.modality == 1), np.flatnonzero(f.modality == 0)
    full = rer.rerank(f.feats[ir], f.feats[vis])
    want_rows, hits = [], [0, 0]
    for pos in (0, 5, 11):
        i = ir[pos]
        for v, dist in enumerate((-(f.feats[vis] @ f.feats[i]), full[pos])):
            order = sorted(range(len(vis)), key=lambda t: (dist[t], t))[:4]
            row = []
            for j, t in enumerate(order):
                ok = f.pids[vis[t]] == f.pids[i]
                row.append((f"{j + 1}: id {f.pids[vis[t]]} {'✓' if ok else '✗'}",
                            ranking.COLORS["correct" if ok else "wrong"]))  # fmt: skip
                hits[v] += int(ok and j == 0)
            want_rows.append(row)
    texts = [(t.get_text(), t.get_color()) for t in seen["fig"].axes[0].texts]
    captions = [t for t in texts if t[0][:1].isdigit() and ": id " in t[0]]
    assert captions == [c for row in want_rows for c in row]
    title = seen["fig"].get_suptitle()
    assert f"no re-ranking: rank-1 correct {hits[0]}/3" in title
    assert f"rev(x=1): rank-1 correct {hits[1]}/3" in title


def test_top_k_of_a_re_ranker_takes_the_rows_asked_for(viz_features):
    f = viz_features
    q, g = np.flatnonzero(f.modality == 1), np.flatnonzero(f.modality == 0)
    rows = np.array([3, 7])
    got = ranking.top_k(f, q, g, rows, 3, reranker=_Reversed())
    full = _Reversed().rerank(f.feats[q], f.feats[g])
    want = [[g[t] for t in sorted(range(len(g)), key=lambda t: (full[r, t], t))[:3]] for r in rows]
    assert got.tolist() == want


def test_choose_queries_skips_a_query_whose_only_match_the_protocol_removes():
    from uvireid.features import Features

    # rows: 0 infrared cam 3 id 1 (its match, row 2, is camera 2: removed by SYSU);
    # 1 infrared cam 6 id 2; 2 visible cam 2 id 1; 3 visible cam 1 id 2
    f = Features(
        np.eye(4, dtype=np.float32), np.array([1, 2, 1, 2]), np.array([3, 6, 2, 1]),
        np.array([1, 1, 0, 0]), None, {}, "t",
    )  # fmt: skip
    got = ranking.choose_queries(f, np.array([0, 1]), np.array([2, 3]), 5, "sysu-all")
    assert got.tolist() == [1]


def test_a_kept_list_shorter_than_k_ends_in_minus_one():
    from uvireid.features import Features

    f = Features(
        np.eye(4, dtype=np.float32), np.array([1, 2, 1, 2]), np.array([3, 6, 2, 1]),
        np.array([1, 1, 0, 0]), None, {}, "t",
    )  # fmt: skip
    got = ranking.top_k(f, np.array([0]), np.array([2, 3]), np.array([0]), 2, protocol="sysu-all")
    assert got.tolist() == [[3, -1]]  # camera 2 is removed for a camera-3 query


# -- t-SNE -----------------------------------------------------------------------------------
def test_tsne_points_keep_their_modality_marker_and_identity_colour(monkeypatch, viz_features):
    from matplotlib.colors import to_hex

    f = viz_features
    monkeypatch.setattr(tsne, "embed", lambda feats, seed=0: np.asarray(feats)[:, :2])
    seen = _capture(monkeypatch, tsne)
    tsne.plot_tsne(f, "unused.png", n_ids=4, per_id=3)
    rows = tsne.tsne_sample(f, 4, 3, 0)
    colour_of: dict = {}
    visible, infrared = seen["fig"].axes[0].collections
    for coll, m, marker in ((visible, 0, "o"), (infrared, 1, "^")):
        sel = rows[f.modality[rows] == m]
        assert np.allclose(coll.get_offsets(), f.feats[sel][:, :2])
        from matplotlib.markers import MarkerStyle

        style = MarkerStyle(marker)
        want_path = style.get_path().transformed(style.get_transform()).vertices
        assert np.allclose(coll.get_paths()[0].vertices, want_path)
        for pid, c in zip(f.pids[sel].tolist(), coll.get_facecolors(), strict=True):
            colour_of.setdefault(pid, set()).add(to_hex(c))
    assert all(len(c) == 1 for c in colour_of.values())  # one colour an identity
    assert len({next(iter(c)) for c in colour_of.values()}) == len(colour_of)


# -- report ----------------------------------------------------------------------------------
def test_report_table_puts_each_metric_under_its_own_column(viz_run_dir):
    import re

    from uvireid.evaluation.protocols import METRIC_KEYS
    from uvireid.viz.report import build_report

    (viz_run_dir / "features.npz").unlink()
    path = viz_run_dir / "results.json"
    results = json.loads(path.read_text())
    for r, result in enumerate(results.values()):  # a distinct value in every cell
        result["mean"] = {k: 10.0 * r + i + 0.25 for i, k in enumerate(METRIC_KEYS)}
        result["std"] = {k: 0.5 + i / 100 for i, k in enumerate(METRIC_KEYS)}
    path.write_text(json.dumps(results))
    page = build_report(viz_run_dir, queries=1, k=2, tsne_ids=2, dpi=20).html.read_text()
    table = re.search(r"<table><tr><th class=\"k\">re-ranker</th>(.*?)</table>", page).group(0)
    heads = re.findall(r"<th>(.*?)</th>", table)
    assert heads == list(METRIC_KEYS)
    rows = re.findall(r'<tr><td class="k">(.*?)</td>(.*?)</tr>', table)
    assert [r[0] for r in rows] == [
        results[n]["provenance"].get("reranker", n) if n != "none" else "none" for n in results
    ]
    for (_label, cells), name in zip(rows, results, strict=True):
        values = re.findall(r"<td>(.*?)</td>", cells)
        for head, cell in zip(heads, values, strict=True):
            m, s = results[name]["mean"][head], results[name]["std"][head]
            assert cell == f"{m:.2f} ± {s:.2f}", (name, head)


def test_report_distance_histograms_include_the_run_re_ranker(monkeypatch, viz_run_dir):
    from uvireid.viz.report import build_report

    seen = _capture(monkeypatch, distances, write=True)
    build_report(viz_run_dir, queries=1, k=2, tsne_ids=2, dpi=20)
    titles = [ax.get_title() for ax in seen["fig"].axes]
    assert len(titles) == 2 and titles[1].startswith("with cmfp")


def test_tsne_colours_of_up_to_20_identities_are_all_different(monkeypatch):
    from matplotlib.colors import to_hex

    from uvireid.features import Features

    rng = np.random.default_rng(0)
    f = Features(
        rng.normal(size=(60, 8)).astype(np.float32), np.repeat(np.arange(15), 4),
        np.tile([1, 3, 2, 6], 15), np.tile([0, 1, 0, 1], 15), None, {}, "test",
    )  # fmt: skip
    monkeypatch.setattr(tsne, "embed", lambda feats, seed=0: np.asarray(feats)[:, :2])
    seen = _capture(monkeypatch, tsne)
    tsne.plot_tsne(f, "unused.png", n_ids=15, per_id=2)
    colour_of = {}
    rows = tsne.tsne_sample(f, 15, 2, 0)
    for coll, m in zip(seen["fig"].axes[0].collections, (0, 1), strict=True):
        sel = rows[f.modality[rows] == m]
        for pid, c in zip(f.pids[sel].tolist(), coll.get_facecolors(), strict=True):
            colour_of.setdefault(pid, set()).add(to_hex(c))
    assert len(colour_of) == 15 and all(len(c) == 1 for c in colour_of.values())
    assert len({next(iter(c)) for c in colour_of.values()}) == 15


def test_the_value_written_next_to_an_eval_line_is_its_last_epoch(monkeypatch, tmp_path):
    records = [
        {"epoch": e, "eval": {"none": {"R1": r1, "mAP": m}}}
        for e, r1, m in ((0, 30.0, 20.0), (1, 50.0, 35.0), (2, 45.0, 31.0))  # best is not last
    ]
    seen = _capture(monkeypatch, curves)
    curves.plot_eval(records, tmp_path / "e.png")
    written = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in seen["fig"].axes}
    assert written == {"R1": ["45.0"], "mAP": ["31.0"]}


def test_match_figure_puts_each_ranked_image_in_its_tile_coloured_by_identity(
    monkeypatch, tmp_path
):
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (7, 3), dtype=np.uint8)
    paths = []
    for i, c in enumerate(colours):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(np.tile(c, (40, 20, 1))).save(paths[-1])
    queries, gallery = paths[:2], [*paths[2:], str(tmp_path / "gone.png")]
    index = np.array([[2, 0, 5], [5, 1, 3]])  # 5: the file that is not there
    dist = np.array([[0.1, 0.25, 0.5], [0.2, 0.3, 0.4]])
    qpids, gpids = np.array([5, -1]), np.array([5, 6, 5, 7, 8, 9])
    seen = _capture(monkeypatch, ranking)
    ranking.plot_matches(queries, gallery, index, dist, tmp_path / "m.png",
                         query_pids=qpids, gallery_pids=gpids, title="t")  # fmt: skip
    texts = [(t.get_text(), t.get_color()) for t in seen["fig"].axes[0].texts]
    want = []
    for r in range(2):  # naive: a caption per match; green/red only where both ids are known
        want.append(
            (f"query id {qpids[r]}" if qpids[r] >= 0 else "query img1.png", ranking.COLORS["query"])
        )
        for j, g in enumerate(index[r]):
            colour = "#969696"
            if qpids[r] >= 0:
                colour = ranking.COLORS["correct" if gpids[g] == qpids[r] else "wrong"]
            want.append((f"{j + 1}: {dist[r, j]:.3g}", colour))
            if g == 5:
                want.append(("(no image)", "black"))
    assert texts == want
    pixels = seen["fig"].axes[0].images[0].get_array()
    mosaic = ranking._Mosaic(2, 4, 1)
    b, (tw, th) = mosaic.BORDER, ranking.THUMB
    for r in range(2):  # each tile's centre holds its image's colour (grey: unreadable)
        for c, path in enumerate([queries[r], *[gallery[g] for g in index[r]]]):
            x, y = mosaic.origin(r, c)
            centre = np.asarray(pixels[y + b + th // 2, x + b + tw // 2])
            i = paths.index(path) if path in paths else None
            assert centre.tolist() == (colours[i].tolist() if i is not None else [200] * 3)
    # the one query with a known id counts, the other is not checked
    title = " ".join(seen["fig"].get_suptitle().split())  # wrapped to the width
    assert "rank-1 same id 1/1 of the queries with a known id" in title
