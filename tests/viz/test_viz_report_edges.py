"""uvireid report (viz/report.py, cli/report_cmd.py): the protocol a --features file is
plotted with, the notes on missing curves, escaping, the re-ranker's settings."""

from __future__ import annotations

import os
import shutil

import pytest

from uvireid import cli
from uvireid.viz.report import build_report

KW = {"queries": 2, "k": 4, "tsne_ids": 4, "dpi": 20}


def test_a_features_file_that_fits_the_runs_protocol_is_plotted_with_it(viz_run_dir, tmp_path):
    """--features of the run's own dataset: the run's protocol fits it, so the distance
    and ranking plots use it, with no note of another protocol (only a file of another
    dataset gets the first protocol it fits)."""
    copy = tmp_path / "copy.npz"
    shutil.copy(viz_run_dir / "features.npz", copy)
    report = build_report(viz_run_dir, features=copy, out=tmp_path / "r", **KW)
    assert {"distances.png", "ranking.png"} <= set(report.images)
    assert not any("plots use protocol" in n for n in report.notes), report.notes


def test_a_curve_missing_from_an_existing_metrics_file_names_its_own_cause(viz_run_dir):
    """metrics.jsonl is there but holds no 'clusters' (a run without clustering): the note
    says so; 'metrics.jsonl is missing.' is only for a folder without the file."""
    import json

    from viz_data import training_records

    records = [{k: v for k, v in r.items() if k != "clusters"} for r in training_records()]
    with open(viz_run_dir / "metrics.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    report = build_report(viz_run_dir, **KW)
    notes = [n for n in report.notes if n.startswith("curves_clusters.png not drawn")]
    assert len(notes) == 1 and "no 'clusters' in metrics.jsonl" in notes[0], report.notes
    assert not any("metrics.jsonl is missing" in n for n in report.notes)
    assert "curves_losses.png" in report.images  # the file itself was read


def test_text_from_the_run_folder_is_escaped_in_the_page(viz_run_dir):
    """A recipe name with markup characters (from manifest.json) is shown as text, not
    read as HTML: report.html is self-contained and opened in a browser."""
    import json

    path = viz_run_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["recipe"] = 'x<img src=y onerror="alert(1)">&z'
    path.write_text(json.dumps(manifest))
    page = build_report(viz_run_dir, **KW).html.read_text()
    assert "<img src=y" not in page
    assert "uvireid report: x&lt;img src=y onerror=&quot;alert(1)&quot;&gt;&amp;z" in page


def test_reranker_named_as_the_recipes_takes_the_recipes_settings():
    """--reranker cmfp on a run whose recipe has cmfp with k=3 plots cmfp(k=3), the
    run's re-ranker; another name (or no recipe section) gets that re-ranker's defaults."""
    import uvireid  # noqa: F401  (registers the re-rankers)
    from uvireid.viz.report import RECIPE, _build_reranker

    cfg = {"reranker": {"type": "cmfp", "k": 3}}
    notes: list[str] = []
    assert _build_reranker("cmfp", cfg, notes).name == "cmfp(k=3)"
    assert _build_reranker(RECIPE, cfg, notes).name == "cmfp(k=3)"
    assert _build_reranker("cmfp", {}, notes).name == "cmfp(k=30)"
    assert _build_reranker("kreciprocal", cfg, notes).name.startswith("kreciprocal(")
    assert notes == []


def test_report_out_that_is_a_file_is_refused_naming_the_option(viz_run_dir, tmp_path, capsys):
    """--out naming an existing file: the command's error names --out and says it is a
    file (exit 2), and nothing is drawn (the run folder gets no PNG or report.html)."""
    from uvireid.cli import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    before = sorted(p.name for p in viz_run_dir.iterdir())
    assert main(["report", str(viz_run_dir), "--out", str(afile), "--dpi", "20"]) == 2
    assert f"--out {afile} is a file, not a folder" in capsys.readouterr().err
    assert afile.read_text() == "x"
    assert sorted(p.name for p in viz_run_dir.iterdir()) == before


# `uvireid report RUN --out DIR` refused (a missing run folder, an unknown --protocol, a
# missing --features file) leaves no empty DIR (nor parents) behind: build_report's
# refusals come before anything is written, and the folders the check made are removed.


def _bare_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: demo\n")
    return run


@pytest.mark.parametrize("case", ["missing_run", "bad_protocol", "missing_features"])
def test_a_refused_report_creates_no_output_folder(tmp_path, capsys, case):
    out = tmp_path / "new" / "report"
    if case == "missing_run":
        argv = ["report", str(tmp_path / "no_such_run"), "--out", str(out)]
    elif case == "bad_protocol":
        argv = ["report", str(_bare_run_folder(tmp_path)), "--protocol", "bogus", "--out", str(out)]
    else:
        argv = [
            "report",
            str(_bare_run_folder(tmp_path)),
            "--features",
            str(tmp_path / "x.npz"),
            "--out",
            str(out),
        ]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err
    assert not out.exists(), f"{out} was created by a refused command"
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder that existed stays, even left empty
    assert cli.main(["report", str(tmp_path / "no_such_run"), "--out", str(tmp_path / "kept")]) == 2
    assert (tmp_path / "kept").is_dir()


def test_refused_report_with_dotdot_out_leaves_nothing(tmp_path, capsys):
    run = _bare_run_folder(tmp_path)
    before = sorted(os.listdir(tmp_path))
    out = f"{tmp_path}/new/../out"
    rc = cli.main(["report", str(run), "--protocol", "bogus", "--out", out])
    assert rc == 2 and "error:" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == before  # 'new' (and 'out') gone, 'run' kept


def test_refused_report_with_relative_dotdot_out(tmp_path, capsys, monkeypatch):
    _bare_run_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    rc = cli.main(["report", "run", "--protocol", "bogus", "--out", "a/b/../c"])
    assert rc == 2
    assert sorted(os.listdir(tmp_path)) == before
