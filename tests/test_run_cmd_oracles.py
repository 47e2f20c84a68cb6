"""`uvireid run` (uvireid/cli/run_cmd.py) argument paths, exit
codes and where its messages go, with stand-ins for run_recipe / run_sweep / the report
(no training)."""

from __future__ import annotations

import os
from types import SimpleNamespace

from uvireid.cli import main
from uvireid.config import dump, load_recipe


def _run_folder(tmp_path, name="demo-20260101-000000"):
    run = tmp_path / name
    run.mkdir()
    (run / "config.yaml").write_text(dump(load_recipe("demo", [f"output_dir={tmp_path}"])))
    return run


def test_a_run_folder_with_sweep_is_refused_even_with_resume(tmp_path, monkeypatch, capsys):
    """`uvireid run RUN --sweep ... --resume` is refused with the sweep's message (give
    the recipe); it never resumes RUN as a single run with the sweep ignored."""
    import uvireid.engine.runner as runner

    run = _run_folder(tmp_path)
    calls = []
    monkeypatch.setattr(runner, "run_recipe", lambda cfg, **kw: calls.append(kw))
    assert main(["run", str(run), "--sweep", "seed=1,2", "--resume", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "--sweep starts runs from a recipe" in err and "is a run folder" in err
    assert calls == []


def _fake_sweep(monkeypatch, folders, failed):
    import uvireid.engine.compare as compare
    import uvireid.engine.sweep as sweep

    seen = {}

    def fake_run_sweep(recipe, overrides, items, **kw):
        seen.update(recipe=recipe, overrides=list(overrides), items=list(items), **kw)
        return folders, failed

    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    monkeypatch.setattr(compare, "compare_runs", lambda paths: ("compared", list(paths)))
    monkeypatch.setattr(compare, "format_comparison", lambda c: f"TABLE {c[1]}\n")
    return seen


def test_a_sweep_with_a_failed_run_still_compares_the_others_and_exits_2(
    tmp_path, monkeypatch, capsys
):
    """One failed run of a sweep: the finished runs are still compared on stdout, the
    failure and the command that runs the failed ones again (overrides included, as
    sweep_command writes it) go to stderr, and the exit status is 2."""
    from uvireid.engine.sweep import sweep_command

    done = SimpleNamespace(path=tmp_path / "demo_seed1-x")
    seen = _fake_sweep(monkeypatch, [done], {"demo_seed2": "TrainingError: loss is NaN"})
    argv = ["run", "demo", "train.lr=0.001", "--sweep", "seed=1,2", "--no-report"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == f"TABLE {[str(done.path)]}\n"
    assert "error: sweep run demo_seed2 failed: TrainingError: loss is NaN" in err
    command = sweep_command("demo", ["train.lr=0.001"], ["seed=1,2"], True)
    assert "train.lr=0.001" in command
    assert f"after fixing the cause, `{command}` runs the failed ones again" in err
    assert seen["overrides"] == ["train.lr=0.001"] and seen["items"] == ["seed=1,2"]
    assert (seen["resume"], seen["dry_run"], seen["report"]) == (False, False, False)


def test_a_sweep_passes_resume_dry_run_and_report_and_exits_0(tmp_path, monkeypatch, capsys):
    seen = _fake_sweep(monkeypatch, [], {})
    assert main(["run", "demo", "--sweep", "seed=1,2", "--resume", "--dry-run"]) == 0
    assert (seen["resume"], seen["dry_run"], seen["report"]) == (True, True, True)
    out, err = capsys.readouterr()
    assert out == "" and "error" not in err


def test_a_rank_other_than_0_prints_nothing_and_draws_no_report(tmp_path, monkeypatch, capsys):
    """Under torchrun every rank runs the command: rank 0 alone prints the recipe, the run
    folder and draws the report."""
    import uvireid.engine.runner as runner
    import uvireid.viz.report as rep

    run = _run_folder(tmp_path)
    drawn = []
    monkeypatch.setattr(runner, "run_recipe", lambda cfg, **kw: SimpleNamespace(path=run))
    monkeypatch.setattr(rep, "maybe_report", lambda path: drawn.append(path) or None)
    monkeypatch.setenv("RANK", "1")
    assert main(["run", "demo", f"output_dir={tmp_path}", "--dry-run"]) == 0
    assert main(["run", "demo", f"output_dir={tmp_path}"]) == 0
    assert capsys.readouterr().out == "" and drawn == []
    monkeypatch.setenv("RANK", "0")
    assert main(["run", "demo", f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# resolved recipe 'demo'") and f"run folder: {run}" in out
    assert drawn == [run]
    assert "report:" not in out  # maybe_report drew none (viz missing): nothing said


def test_no_report_draws_none_and_a_drawn_one_is_named(tmp_path, monkeypatch, capsys):
    import uvireid.engine.runner as runner
    import uvireid.viz.report as rep

    run = _run_folder(tmp_path)
    drawn = []
    monkeypatch.setattr(runner, "run_recipe", lambda cfg, **kw: SimpleNamespace(path=run))
    monkeypatch.setattr(rep, "maybe_report", lambda path: drawn.append(path) or path / "r.html")
    assert main(["run", "demo", f"output_dir={tmp_path}", "--no-report"]) == 0
    assert drawn == [] and "report:" not in capsys.readouterr().out
    assert main(["run", "demo", f"output_dir={tmp_path}"]) == 0
    assert drawn == [run] and f"report: {run / 'r.html'}\n" in capsys.readouterr().out


def test_current_report_at_the_same_time_as_the_results_is_current(tmp_path):
    """`_current_report`: report.html at least as new as results.json (the same time
    stamp included) is kept; without results.json (or without the report) there is none
    to keep, and no error."""
    from uvireid.cli.run_cmd import _current_report

    html, results = tmp_path / "report.html", tmp_path / "results.json"
    html.write_text("r")
    assert _current_report(tmp_path) is None  # no results.json: no error either
    results.write_text("{}")
    stamp = results.stat().st_mtime_ns
    os.utime(html, ns=(stamp, stamp))
    assert _current_report(tmp_path) == html
    os.utime(html, ns=(stamp - 1000, stamp - 1000))
    assert _current_report(tmp_path) is None
    html.unlink()
    assert _current_report(tmp_path) is None


def test_dry_run_runs_the_preflight(tmp_path, capsys):
    """`--dry-run` refuses what the run would refuse before its first epoch (here a refine
    part whose constructor refuses a value), exit status 2, and makes no run folder."""
    over = [f"output_dir={tmp_path / 'runs'}", "refine={type: cmfp, mode: bogus}"]
    assert main(["run", "demo", *over, "--dry-run"]) == 2
    assert "refine (cmfp)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
