"""`uvireid report` (uvireid/cli/report_cmd.py) wiring, defaults, stdout, refusals.

The oracle for the defaults is the help text / build_report's docstring (6 ranking lists,
10 gallery images, 12 t-SNE identities, 100 dpi, the recipe's re-ranker); the CLI's printed
lines are compared against the exact format. build_report is replaced by a stand-in where
the real one would draw plots (the drawing is tested in tests/viz)."""

from __future__ import annotations

import inspect
import re

import pytest

from uvireid.cli import build_parser, main


def _run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "config.yaml").write_text("name: x\n")
    return run


def _fake(monkeypatch, tmp_path, *, images=None, notes=None, raises=None):
    import uvireid.viz.report as rep

    seen: dict = {}

    def fake_build_report(run_dir, **kw):
        seen.clear()
        seen.update(kw, run_dir=run_dir)
        if raises is not None:
            raise raises
        return rep.Report(tmp_path / "R" / "report.html", dict(images or {}), list(notes or []))

    monkeypatch.setattr(rep, "build_report", fake_build_report)
    return seen


# -- defaults: what the help says --------------------------------------------------------------
HELP_DEFAULTS = {"queries": 6, "k": 10, "tsne_ids": 12, "dpi": 100}
FLAG = {"queries": "--queries", "k": "--topk", "tsne_ids": "--ids", "dpi": "--dpi"}


def test_defaults_reaching_build_report_are_the_ones_the_help_states(monkeypatch, tmp_path, capsys):
    import uvireid.viz.report as rep

    seen = _fake(monkeypatch, tmp_path)
    run = _run_folder(tmp_path)
    assert main(["report", str(run)]) == 0
    for key, value in HELP_DEFAULTS.items():
        assert seen[key] == value, (FLAG[key], seen[key])
    assert seen["reranker"] is rep.RECIPE
    assert seen["features"] is None  # RUN_DIR/features.npz, resolved by build_report
    assert seen["protocol"] is None and seen["image_root"] is None and seen["out"] is None
    assert str(seen["run_dir"]) == str(run)


def test_help_text_states_the_same_numbers():
    """The help strings themselves: "(default 6)" etc.; a default changed without its help
    (or the reverse) shows here."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["report"]
    helps = {a.dest: a.help for a in sub._actions}
    for key, value in HELP_DEFAULTS.items():
        dest = FLAG[key].lstrip("-")
        assert re.search(rf"\(default {value}\)", helps[dest]), (dest, helps[dest])


def test_library_defaults_are_the_documented_ones():
    """maybe_report (the end of `uvireid run`) calls build_report(run_dir) with its own
    defaults: the same plots as a plain `uvireid report RUN` (6 / 10 / 12 / 100 dpi, the
    recipe's re-ranker)."""
    from uvireid.viz.report import RECIPE, build_report

    params = inspect.signature(build_report).parameters
    for key, value in HELP_DEFAULTS.items():
        assert params[key].default == value, key
    assert params["reranker"].default == RECIPE
    for key in ("features", "out", "protocol", "image_root"):
        assert params[key].default is None, key


def test_topk_is_passed_as_k_and_queries_as_queries(monkeypatch, tmp_path):
    seen = _fake(monkeypatch, tmp_path)
    run = _run_folder(tmp_path)
    assert main(["report", str(run), "--topk", "3", "--queries", "2"]) == 0
    assert (seen["k"], seen["queries"]) == (3, 2)


# -- what is printed ----------------------------------------------------------------------------
def test_stdout_is_the_report_line_then_every_note_and_stderr_has_no_error(
    monkeypatch, tmp_path, capsys
):
    images = {"cmc.png": tmp_path / "cmc.png", "tsne.png": tmp_path / "tsne.png", "x.png": tmp_path}
    _fake(monkeypatch, tmp_path, images=images, notes=["first note", "second note"])
    run = _run_folder(tmp_path)
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    out, err = capsys.readouterr()
    html = tmp_path / "R" / "report.html"
    assert out == f"report: {html} (3 plots)\n  note: first note\n  note: second note\n"
    assert "note:" not in err and "error" not in err


def test_no_notes_prints_one_line(monkeypatch, tmp_path, capsys):
    _fake(monkeypatch, tmp_path, images={}, notes=[])
    run = _run_folder(tmp_path)
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out == f"report: {tmp_path / 'R' / 'report.html'} (0 plots)\n"


# -- refusals -----------------------------------------------------------------------------------
def test_a_missing_run_folder_is_said_not_to_exist(tmp_path, capsys):
    """Not "is not a run folder (no config.yaml)": the path is wrong, not the folder."""
    missing = tmp_path / "no_such_run"
    assert main(["report", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert f"run folder {missing} does not exist" in err
    assert "no config.yaml" not in err and out == ""
    assert not missing.exists()


def test_a_file_given_as_run_folder_gets_the_features_hint(tmp_path, capsys):
    """A features file given in place of the run folder: the message says how to plot it
    (--features), not merely that the folder has no config.yaml."""
    afile = tmp_path / "features.npz"
    afile.write_bytes(b"not really")
    assert main(["report", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a run folder" in err
    assert f"--features {afile}" in err


def test_an_interrupted_report_leaves_no_empty_out_folder(monkeypatch, tmp_path, capsys):
    """Ctrl-C while the plots are drawn (a KeyboardInterrupt, not an Exception): the
    folders --out made, still empty, are removed as for a refusal; exit code 130."""
    _fake(monkeypatch, tmp_path, raises=KeyboardInterrupt())
    run = _run_folder(tmp_path)
    out = tmp_path / "new" / "deeper"
    assert main(["report", str(run), "--out", str(out)]) == 130
    assert not (tmp_path / "new").exists()


def test_a_failing_report_keeps_a_folder_it_wrote_into(monkeypatch, tmp_path):
    """remove_empty removes only empty folders: one the report wrote into stays."""
    import uvireid.viz.report as rep
    from uvireid.errors import UvireidError

    out = tmp_path / "new" / "rep"

    def half_written(run_dir, **kw):
        (out / "cmc.png").write_bytes(b"png")
        raise UvireidError("stopped half way")

    monkeypatch.setattr(rep, "build_report", half_written)
    run = _run_folder(tmp_path)
    assert main(["report", str(run), "--out", str(out)]) == 2
    assert (out / "cmc.png").read_bytes() == b"png"


def test_an_empty_protocol_is_refused_not_taken_as_the_runs(tmp_path, capsys):
    """`--protocol "$P"` with P unset: refused (build_report names the protocols), not the
    run's protocol silently."""
    run = _run_folder(tmp_path)
    assert main(["report", str(run), "--protocol", ""]) == 2
    assert "is not a protocol" in capsys.readouterr().err
    assert not (run / "report.html").exists()


@pytest.mark.parametrize("flag", ["--protocol", "--features"])
def test_refusals_write_nothing_into_the_run_folder(tmp_path, capsys, flag):
    run = _run_folder(tmp_path)
    value = "bogus" if flag == "--protocol" else str(tmp_path / "none.npz")
    assert main(["report", str(run), flag, value]) == 2
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


# --out "" (`--out "$OUT"` with OUT unset) is refused, not the current folder; --out naming
# another run folder is refused: its report.html and plots are that run's own
def test_an_empty_out_is_refused_and_nothing_lands_in_the_current_folder(
    tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    rc = main(["report", str(run), "--out", "", "--dpi", "20", "--reranker", "none"])
    assert list(cwd.iterdir()) == [], "report written into the current folder"
    assert rc == 2
    assert "--out is empty" in capsys.readouterr().err


def _run_with_report(path, report_text=None):
    path.mkdir()
    (path / "config.yaml").write_text("name: x\n")
    if report_text is not None:
        (path / "report.html").write_text(report_text)
        (path / "cmc.png").write_bytes(b"B's cmc")
    return path


def test_out_naming_another_run_folder_leaves_that_run_untouched(tmp_path, capsys):
    run_a = _run_with_report(tmp_path / "runA")
    run_b = _run_with_report(tmp_path / "runB", report_text="report of runB")
    rc = main(["report", str(run_a), "--out", str(run_b), "--dpi", "20", "--reranker", "none"])
    assert (run_b / "cmc.png").read_bytes() == b"B's cmc", "runB's plot deleted"
    assert (run_b / "report.html").read_text() == "report of runB", "runB's report replaced"
    assert rc == 2 and "run folder" in capsys.readouterr().err


def test_the_notes_are_said_once_on_stdout_not_logged_again(tmp_path, capsys, caplog):
    """`uvireid report` prints the report's path and its notes on stdout; the report
    module's INFO lines (the same path and notes, for `uvireid run`'s log) are not emitted
    a second time, and the logger's level is left as it was."""
    import logging

    run = tmp_path / "bare"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    logger = logging.getLogger("uvireid.viz.report")
    before = logger.level
    with caplog.at_level(logging.INFO):
        assert main(["report", str(run), "--dpi", "20", "--reranker", "none"]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("  note: ")]
    assert notes  # a bare run folder: curves and plots are missing, each said
    assert not [r for r in caplog.records if r.name == "uvireid.viz.report"]
    assert logger.level == before
