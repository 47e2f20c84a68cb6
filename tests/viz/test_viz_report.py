"""report.html from a run folder: every plot embedded; a killed run still gets a report."""

from __future__ import annotations

import base64
import json
import logging
import sys

import pytest
from viz_data import expected_px, png_size

from uvireid.cli import main
from uvireid.errors import UvireidError
from uvireid.viz import curves, distances, ranking, tsne
from uvireid.viz.report import PLOTS, build_report, maybe_report

DPI = 30
KW = {"queries": 2, "k": 4, "tsne_ids": 4, "dpi": DPI}
MODULES = ("curves", "distances", "tsne", "ranking", "report")


def expected_sizes() -> dict[str, tuple[int, int]]:
    sizes = {name: expected_px(curves.FIGSIZE, DPI) for name in PLOTS if name.endswith(".png")}
    sizes["distances.png"] = expected_px(distances.FIGSIZE, DPI)
    sizes["tsne.png"] = expected_px(tsne.FIGSIZE, DPI)
    sizes["ranking.png"] = expected_px(ranking.ranking_figsize(4, 4), DPI)  # 2 queries x 2
    return sizes


def test_a_finished_run_gets_every_plot_embedded_in_a_self_contained_page(viz_run_dir):
    report = build_report(viz_run_dir, **KW)
    assert report.notes == []
    assert list(report.images) == list(PLOTS)
    page = report.html.read_text()
    for name, size in expected_sizes().items():
        path = viz_run_dir / name
        assert png_size(path) == size, name
        assert f'data-file="{name}"' in page
        assert base64.b64encode(path.read_bytes()).decode() in page  # embedded, not linked
    assert 'src="data:image/png;base64,' in page and 'src="cmc.png"' not in page
    results = json.loads((viz_run_dir / "results.json").read_text())
    assert f"{results['cmfp']['mean']['R1']:.2f}" in page  # the final table
    assert "sysu-all" in page and "single-shot" in page  # with its protocol
    assert "uvireid run tiny.yaml" in page  # the manifest's summary


def test_a_killed_run_gets_a_report_of_what_is_there(viz_run_dir, caplog):
    (viz_run_dir / "results.json").unlink()
    (viz_run_dir / "features.npz").unlink()
    lines = (viz_run_dir / "metrics.jsonl").read_text().splitlines()
    (viz_run_dir / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    with caplog.at_level(logging.WARNING):
        report = build_report(viz_run_dir, **KW)
    page = report.html.read_text()
    notes = " ".join(report.notes)
    assert "a line cut short" in notes and "results.json is missing" in notes
    assert "features.npz is missing" in notes
    assert "What is missing" in page and "not finished" in page
    assert "metrics.jsonl, epoch 1" in page  # the table falls back to the last evaluation
    assert "<td>30.00</td>" in page and "Percent, means." in page  # its flat means, no std
    assert {"curves_losses.png", "curves_eval.png", "curves_time.png"} <= set(report.images)
    assert not {"distances.png", "tsne.png", "ranking.png"} & set(report.images)
    for name in report.images:
        assert f'data-file="{name}"' in page


def test_a_run_still_training_is_reported_as_such_not_as_killed(viz_run_dir):
    import subprocess
    import time

    (viz_run_dir / "results.json").unlink()
    (viz_run_dir / "features.npz").unlink()
    held = viz_run_dir / "held"
    code = (
        "import sys, time; from pathlib import Path; "
        "from uvireid.engine.run_folder import RunFolder\n"
        "with RunFolder(sys.argv[1]).locked():\n"
        "    Path(sys.argv[1], 'held').touch(); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(viz_run_dir)])
    try:
        for _ in range(600):
            if held.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert held.exists(), "the helper process did not take the lock"
        notes = " ".join(build_report(viz_run_dir, **KW).notes)
        assert f"still training (pid {proc.pid} holds the folder)" in notes
        assert "did not finish" not in notes
    finally:
        proc.kill()
        proc.wait()
    notes = " ".join(build_report(viz_run_dir, **KW).notes)  # the process has ended
    assert "the run did not finish (or was killed)" in notes and "still training" not in notes


def test_missing_metrics_and_stale_pngs(viz_run_dir):
    (viz_run_dir / "features.npz").unlink()  # not needed here; keeps it quick
    build_report(viz_run_dir, **KW)
    (viz_run_dir / "metrics.jsonl").unlink()
    report = build_report(viz_run_dir, **KW)
    assert "metrics.jsonl is missing" in " ".join(report.notes)
    assert not (viz_run_dir / "curves_losses.png").exists()  # the earlier report's PNG is gone
    assert "cmc.png" in report.images  # results.json still gives the CMC


def test_an_empty_folder_still_gets_a_page(tmp_path):
    report = build_report(tmp_path, **KW)
    assert report.images == {} and report.html.is_file()
    assert "No plot could be drawn" in report.html.read_text()


def test_no_matplotlib_says_how_to_install_it(viz_run_dir, monkeypatch, caplog, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(UvireidError, match=r'pip install "uvireid\[viz\]"'):
        build_report(viz_run_dir)
    with caplog.at_level(logging.INFO, logger="uvireid.viz.report"):
        assert maybe_report(viz_run_dir) is None
    assert 'pip install "uvireid[viz]"' in caplog.text
    assert main(["report", str(viz_run_dir)]) == 2
    assert 'pip install "uvireid[viz]"' in capsys.readouterr().err
    assert not (viz_run_dir / "report.html").exists()


def test_cli_report_writes_into_out(viz_run_dir, tmp_path, capsys):
    (viz_run_dir / "features.npz").unlink()  # the plots are tested above; keep it quick
    out = tmp_path / "elsewhere"
    argv = ["report", str(viz_run_dir), "--out", str(out), "--reranker", "none", "--dpi", "20"]
    assert main([*argv, "--queries", "1", "--topk", "3", "--ids", "3"]) == 0
    assert (out / "report.html").is_file()
    assert png_size(out / "cmc.png") == expected_px(curves.FIGSIZE, 20)
    assert not (viz_run_dir / "report.html").exists()
    assert "report:" in capsys.readouterr().out


def test_a_misspelt_reranker_is_an_error_before_anything_is_drawn(viz_run_dir):
    with pytest.raises(UvireidError, match="cmpf"):
        build_report(viz_run_dir, reranker="cmpf", **KW)
    assert not (viz_run_dir / "cmc.png").exists()


def test_maybe_report_returns_the_page(tmp_path):
    assert maybe_report(tmp_path) == tmp_path / "report.html"


def test_the_viz_modules_import_without_matplotlib(monkeypatch):
    import importlib

    import uvireid
    import uvireid.cli

    # fresh imports of every viz module with matplotlib unimportable; monkeypatch puts the
    # original module objects back afterwards (in sys.modules and as package attributes)
    monkeypatch.setattr(uvireid, "viz", uvireid.viz)
    monkeypatch.setattr(
        uvireid.cli, "report_cmd", importlib.import_module("uvireid.cli.report_cmd")
    )
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    names = [n for n in sys.modules if n.startswith("uvireid.viz")] + ["uvireid.cli.report_cmd"]
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    for name in ["uvireid.viz", *(f"uvireid.viz.{m}" for m in MODULES), "uvireid.cli.report_cmd"]:
        importlib.import_module(name)


def test_a_misspelt_features_file_is_an_error_and_leaves_the_earlier_report(viz_run_dir):
    build_report(viz_run_dir, **KW)
    before = {p.name: p.stat().st_mtime_ns for p in viz_run_dir.glob("*.png")}
    assert {"distances.png", "tsne.png", "ranking.png"} <= set(before)
    with pytest.raises(UvireidError, match=r"features file .*typo\.npz does not exist"):
        build_report(viz_run_dir, features=viz_run_dir / "typo.npz", **KW)
    assert {p.name: p.stat().st_mtime_ns for p in viz_run_dir.glob("*.png")} == before
    with pytest.raises(UvireidError, match="is a file, not a run folder"):
        build_report(viz_run_dir / "features.npz", **KW)


def test_a_killed_run_whose_evaluations_logged_their_protocol_shows_it(viz_run_dir):
    """The trainer's eval rows carry mean, std and provenance (audit G, session 16): a
    killed run's report then states the protocol and the ± instead of "not recorded"."""
    results = json.loads((viz_run_dir / "results.json").read_text())
    (viz_run_dir / "results.json").unlink()
    (viz_run_dir / "features.npz").unlink()
    lines = (viz_run_dir / "metrics.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row["eval"] = {k: {f: v[f] for f in ("mean", "std", "provenance")} for k, v in results.items()}
    (viz_run_dir / "metrics.jsonl").write_text("\n".join([*lines[:2], json.dumps(row)]) + "\n")
    page = build_report(viz_run_dir, **KW).html.read_text()
    assert "not recorded with these numbers" not in page
    assert "sysu-all | synthetic (SYSU-MM01 protocol) | all-search | single-shot" in page
    m, s = results["none"]["mean"]["mAP"], results["none"]["std"]["mAP"]
    assert f"<td>{m:.2f} ± {s:.2f}</td>" in page


def test_the_plots_say_which_features_file_they_show(viz_run_dir, tmp_path):
    """Audit G (session 16): the distance, t-SNE and ranking plots never named their
    features file or its epoch, even for another model's file (--features) that the
    run's protocol would refuse."""
    from uvireid.features import load_features, save_features

    page = build_report(viz_run_dir, **KW).html.read_text()
    assert f"plots are of {viz_run_dir / 'features.npz'}" in page
    f = load_features(viz_run_dir / "features.npz")
    other = save_features(
        tmp_path / "other_model.npz",
        f.feats[:, ::-1].copy(),
        f.pids,
        f.cams,
        f.modality,
        paths=f.paths,
        **{**(f.meta or {}), "dataset": "llcm", "epoch": 3, "final": False},
    )
    report = build_report(viz_run_dir, features=other, out=tmp_path / "rep", **KW)
    page = report.html.read_text()
    assert f"plots are of {other}, epoch 3 (not the final epoch)" in page
    assert any("--features does not fit the run's protocol sysu-all" in n for n in report.notes)


def _llcm_like(viz_run_dir, tmp_path):
    """The run's test features as an LLCM file (every camera shoots both modalities), as
    `uvireid extract` of the run's model on another dataset writes it."""
    import numpy as np

    from uvireid.features import load_features, save_features

    f = load_features(viz_run_dir / "features.npz")
    remap = {1: 1, 2: 2, 4: 1, 5: 2, 3: 1, 6: 2}
    cams = np.array([remap[int(c)] for c in f.cams])
    meta = {**(f.meta or {}), "dataset": "llcm"}
    return save_features(tmp_path / "llcm.npz", f.feats, f.pids, cams, f.modality, **meta)


def test_features_of_another_dataset_are_plotted_with_a_protocol_they_fit(viz_run_dir, tmp_path):
    """Audit Z2 (session 17): a --features file of another dataset (the README's extract
    on LLCM of a SYSU run) got no distance or ranking plot, and a note advising a
    protocol that report could not take."""
    other = _llcm_like(viz_run_dir, tmp_path)
    report = build_report(viz_run_dir, features=other, out=tmp_path / "auto", **KW)
    assert {"distances.png", "ranking.png"} <= set(report.images)
    notes = " ".join(report.notes)
    assert "plots use protocol llcm-v2i, which the features file fits (the run's, sysu-all" in notes
    chosen = build_report(
        viz_run_dir, features=other, out=tmp_path / "i2v", protocol="llcm-i2v", **KW
    )
    assert {"distances.png", "ranking.png"} <= set(chosen.images)
    assert "plots use protocol" not in " ".join(chosen.notes)
    with pytest.raises(UvireidError, match="'llcm' is not a protocol; use one of .*llcm-v2i"):
        build_report(viz_run_dir, features=other, out=tmp_path / "x", protocol="llcm", **KW)


def test_a_results_file_without_provenance_is_said_to_be_older(viz_run_dir):
    """A results.json of an older uvireid (no provenance, std or per-trial rows) was
    described as "only their means were logged", the wording for metrics.jsonl (BV)."""
    path = viz_run_dir / "results.json"
    results = json.loads(path.read_text())
    old = {name: {"mean": r["mean"]} for name, r in results.items()}
    path.write_text(json.dumps(old))
    page = build_report(viz_run_dir, **KW).html.read_text()
    assert "results.json has no provenance (written by an older uvireid)" in page
    assert "only their means were logged" not in page
    assert "the run&#x27;s protocol: sysu-all" in page or "the run's protocol: sysu-all" in page
