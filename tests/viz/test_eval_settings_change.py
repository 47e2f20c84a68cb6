"""Report curves and notes where a run changed its evaluation settings (a resume) or lost
its metrics file (audit BV, session 19)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from uvireid.viz import curves
from uvireid.viz.report import build_report


def _eval(protocol: str, reranker: str | None, m_ap: float) -> dict:
    prov = {"protocol": protocol, "trials": 2}
    if reranker:
        prov["reranker"] = reranker
    return {"mean": {"R1": m_ap, "mAP": m_ap}, "std": {"R1": 0.0, "mAP": 0.0}, "provenance": prov}


def _records(change: str) -> list[dict]:
    """Epochs 0-1 evaluated as logged first, epochs 2-3 after a resume that changed
    `change` (reranker.k or evaluation.protocol; both are RESUME_FREE_KEYS)."""
    out = []
    for epoch in range(4):
        later = epoch >= 2
        proto = "sysu-indoor" if later and change == "protocol" else "sysu-all"
        k = 30 if later and change == "k" else 10
        out.append(
            {
                "epoch": epoch,
                "stage": "salcr",
                "eval": {
                    "none": _eval(proto, None, 40.0 + epoch),
                    "cmfp": _eval(proto, f"cmfp(k={k})", 45.0 + epoch),
                },
            }
        )
    return out


def test_eval_curves_keep_two_re_ranker_settings_apart():
    series = curves.eval_series(_records("k"))["mAP"]
    # were joined: ([0, 1, 2, 3], ...) under k=30's name
    assert series["cmfp(k=10)"][0] == [0, 1]
    assert series["cmfp(k=30)"][0] == [2, 3]


def test_eval_curves_do_not_join_two_protocols_into_one_line():
    series = curves.eval_series(_records("protocol"))["mAP"]
    # were joined: one line "none" over epochs 0-3, sysu-all then sysu-indoor
    lines_of_none = [name for name in series if name.startswith("none")]
    assert len(lines_of_none) == 2, series.keys()
    assert any("sysu-indoor" in name for name in series)


def test_report_notes_a_protocol_change_within_the_run(viz_run_dir):
    with open(viz_run_dir / "metrics.jsonl", "w") as fh:
        for record in _records("protocol"):
            fh.write(json.dumps(record) + "\n")
    report = build_report(viz_run_dir, queries=2, k=4, tsne_ids=4, dpi=30)
    assert any("sysu-indoor" in note and "sysu-all" in note for note in report.notes)


def test_missing_metrics_file_does_not_blame_the_run(viz_run_dir):
    (viz_run_dir / "metrics.jsonl").unlink()
    report = build_report(viz_run_dir, queries=2, k=4, tsne_ids=4, dpi=30)
    # were: "... (no clustering in this run)" and "... (an evaluation-only run, ...)"
    assert not any("no clustering in this run" in n for n in report.notes)
    assert not any("an evaluation-only run" in n for n in report.notes)


def test_stage_line_says_the_stage_restarted_from_an_earlier_best_epoch(tmp_path, monkeypatch):
    records = [
        {"epoch": 0, "stage": "dcl", "eval": {"none": _eval("sysu-all", None, 50.0)}},
        {"epoch": 1, "stage": "dcl", "eval": {"none": _eval("sysu-all", None, 40.0)}},
        {
            "epoch": 2,
            "stage": "pgm",
            "started_from": {"checkpoint": "best.pt", "epoch": 0, "mAP": 50.0},
            "eval": {"none": _eval("sysu-all", None, 52.0)},
        },
    ]
    texts = []

    def grab(fig, path, dpi):
        texts.extend(t.get_text() for ax in fig.axes for t in ax.texts)
        return path

    monkeypatch.setattr(curves, "save", grab)
    curves.plot_eval(records, tmp_path / "e.png")
    # was labelled "pgm" only, though epoch 2 descends from epoch 0, not 1
    assert any("pgm" in t and "0" in t for t in texts), texts


def test_an_evaluation_only_run_draws_no_epoch_curves(viz_run_dir):
    """An evaluation-only run has one record, epoch -1: its 'curves' were a single point on
    an epoch axis (audit BV); now a note, and the tables hold its results."""
    with open(viz_run_dir / "metrics.jsonl", "w") as fh:
        record = {"epoch": -1, "stage": "evaluation only", "seconds": {"eval_extract": 1.0}}
        record["eval"] = {"none": _eval("sysu-all", None, 40.0)}
        fh.write(json.dumps(record) + "\n")
    report = build_report(viz_run_dir, queries=2, k=4, tsne_ids=4, dpi=30)
    assert any("an evaluation-only run: no epochs" in n for n in report.notes)
    assert not (viz_run_dir / "curves_eval.png").exists()
    assert not (viz_run_dir / "curves_time.png").exists()


def test_long_re_ranker_names_are_wrapped_to_a_rows_height():
    """The rotated row label of a long re-ranker name ran into the row above (audit BV)."""
    from uvireid.viz.ranking import _row_label

    assert _row_label("cmfp(k=30)") == "cmfp(k=30)"
    lines = _row_label("kreciprocal(k1=20,k2=6,lambda=0.3)").split("\n")
    assert lines[0] == "kreciprocal" and max(map(len, lines)) <= 16
    assert "".join(lines).replace(" ", "") == "kreciprocal(k1=20,k2=6,lambda=0.3)"
    # a plugin's long name is cut too (audit CA: it stayed one 23-character line)
    lines = _row_label("a_long_plugin_name_here(k=3)").split("\n")
    assert max(map(len, lines)) <= 16 and "".join(lines) == "a_long_plugin_name_here(k=3)"


def _setting_records(key: str) -> list[dict]:
    """Epochs 2-3 resumed with another evaluation.shot / feature_head / trials (audit CA)."""
    out = []
    for epoch in range(4):
        later = epoch >= 2
        prov = {"protocol": "sysu-all", "shot": "single", "feature_head": "bn_feat", "trials": 10}
        if later:
            prov[key] = {"shot": "multi", "feature_head": "pool", "trials": 1}[key]
        result = {"mean": {"R1": 40.0 + 10 * later, "mAP": 40.0 + 10 * later}, "provenance": prov}
        out.append({"epoch": epoch, "stage": "s", "eval": {"none": result}})
    return out


@pytest.mark.parametrize(
    ("key", "before", "after"),
    [
        ("shot", "single-shot", "multi-shot"),
        ("feature_head", "head bn_feat", "head pool"),
        ("trials", "10 trials", "1 trials"),
    ],
)
def test_eval_curves_keep_two_evaluation_settings_apart(key, before, after, viz_run_dir):
    """Only the protocol's name and the re-ranker split the lines: a resume to multi-shot
    (far higher scores) drew one line with a jump, and the report said nothing (CA)."""
    records = _setting_records(key)
    series = curves.eval_series(records)["mAP"]
    assert series == {
        f"none [{before}]": ([0, 1], [40.0, 40.0]),
        f"none [{after}]": ([2, 3], [50.0, 50.0]),
    }
    assert curves.setting_changes(records) == [(2, before, after)]
    with open(viz_run_dir / "metrics.jsonl", "w") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
    report = build_report(viz_run_dir, queries=2, k=4, tsne_ids=4, dpi=30)
    assert any(f"{before} -> {after} at epoch 2" in note for note in report.notes)
