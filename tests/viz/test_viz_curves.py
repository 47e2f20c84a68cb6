"""Curves over epochs: what is read from metrics records, and the PNGs drawn from them."""

from __future__ import annotations

import math

import pytest
from viz_data import expected_px, png_size, training_records

from uvireid.viz import curves

DPI = 40


def test_series_take_the_later_record_of_a_repeated_epoch_and_skip_non_numbers():
    records = [
        {"epoch": 0, "losses": {"a": 1.0, "b": "oops"}},
        {"epoch": 1, "losses": {"a": 2.0, "b": math.nan}},
        {"epoch": 1, "losses": {"a": 3.0, "b": True}},  # a resumed run re-logs epoch 1
        {"losses": {"a": 4.0, "nested": {"visible": 5.0}}},  # no epoch: its line number
    ]
    got = curves.loss_series(records)
    assert got == {"a": ([0.0, 1.0, 3.0], [1.0, 3.0, 4.0]), "nested/visible": ([3.0], [5.0])}


def test_quality_series_are_per_measure_then_per_space_with_canonical_names():
    got = curves.quality_series(training_records(3))
    assert set(got) == {"ARI", "FMI", "AMI", "V"}  # num_clusters, outlier_fraction left out
    assert set(got["ARI"]) == {"visible", "infrared"}
    assert got["ARI"]["visible"][0] == [0.0, 1.0, 2.0]
    assert got["ARI"]["visible"][1] == pytest.approx([0.3, 0.4, 0.5])
    assert got["V"]["visible"][1] == pytest.approx([0.6] * 3)


def test_eval_series_read_flat_means_and_protocol_results():
    got = curves.eval_series(training_records(4))
    assert set(got) == {"R1", "mAP"}
    assert got["R1"]["cmfp"] == ([-1.0, 1.0, 3.0], [4.0, 30.0, 40.0])
    assert got["mAP"]["none"] == ([-1.0, 1.0, 3.0], [9.0, 22.0, 30.0])
    result = {"mean": {"R1": 50.0, "mAP": 40.0}, "provenance": {"reranker": "cmfp(k=3)"}}
    got = curves.eval_series([{"epoch": 7, "eval": {"cmfp": result}}])
    assert got == {"R1": {"cmfp(k=3)": ([7.0], [50.0])}, "mAP": {"cmfp(k=3)": ([7.0], [40.0])}}
    # flat means and a full result of one re-ranker make one series, with the full name
    mixed = [{"epoch": 6, "eval": {"cmfp": {"R1": 45.0}}}, {"epoch": 7, "eval": {"cmfp": result}}]
    assert curves.eval_series(mixed)["R1"] == {"cmfp(k=3)": ([6.0, 7.0], [45.0, 50.0])}


def test_losses_are_read_under_either_spelling():
    records = [{"epoch": 0, "losses": {"a": 1.0}}, {"epoch": 1, "loss": {"a": 2.0}}]
    assert curves.loss_series(records) == {"a": ([0.0, 1.0], [1.0, 2.0])}


def test_stage_starts_mark_where_the_stage_changes():
    assert curves.stage_starts(training_records(4)) == [
        (-1.0, "untrained"),
        (0.0, "dcl"),
        (2.0, "salcr"),
    ]


def test_time_series_keep_the_order_of_the_phases():
    records = [{"epoch": 0, "seconds": {"zzz": 1, "eval_extract": 1, "train": 2, "extract": 3}}]
    assert list(curves.time_series(records)) == ["extract", "train", "eval_extract", "zzz"]


def test_a_curve_is_a_png_of_the_documented_size(tmp_path):
    # every curve is drawn and measured in test_viz_report; this one alone, at another dpi
    path = curves.plot_time(training_records(), tmp_path / "time.png", dpi=DPI)
    assert path.is_file()
    assert png_size(path) == expected_px(curves.FIGSIZE, DPI)


@pytest.mark.parametrize(
    "name", ["plot_losses", "plot_clusters", "plot_label_quality", "plot_eval", "plot_time"]
)
def test_a_curve_without_data_writes_nothing_and_returns_none(tmp_path, name):
    records = [{"epoch": 0, "something_else": 1}, {"epoch": 1, "losses": {}}]
    assert getattr(curves, name)(records, tmp_path / "x.png", dpi=DPI) is None
    assert not (tmp_path / "x.png").exists()


def test_cmc_is_drawn_from_protocol_results(tmp_path):
    results = {
        "none": {"mean": {"R1": 10.0, "mAP": 12.0}, "cmc": [10.0, 20.0, 30.0]},
        "bad": {"cmc": ["x"]},
    }
    path = curves.plot_cmc(results, tmp_path / "cmc.png", dpi=DPI)
    assert png_size(path) == expected_px(curves.FIGSIZE, DPI)
    assert curves.plot_cmc({"none": {"mean": {}}}, tmp_path / "none.png", dpi=DPI) is None


def test_series_are_in_epoch_order_whatever_the_record_order():
    # records concatenated out of order (two metrics files, a resume from an earlier
    # checkpoint that logs epoch 1 only after epoch 3): a line drawn in record order
    # would zig-zag back
    records = [
        {"epoch": 2, "losses": {"a": 20.0}},
        {"epoch": 3, "losses": {"a": 30.0}},
        {"epoch": 1, "losses": {"a": 10.0}},
    ]
    naive = sorted((r["epoch"], r["losses"]["a"]) for r in records)
    got = curves.loss_series(records)["a"]
    assert got == ([float(e) for e, _ in naive], [v for _, v in naive])
