"""A new user's mistakes: a run folder's own files kept from
``--json``, an eval JSON in place of a run's results named as such, a missing ``match``
source called missing."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from feature_fixtures import sysu_like

from uvireid.cli import main
from uvireid.engine.compare import compare_runs
from uvireid.features import save_features


def _err(capsys) -> str:
    return capsys.readouterr().err


def _run_folder(tmp_path, finished: bool = True) -> Path:
    """A run folder as `uvireid run` leaves it (config.yaml, features.npz; results.json of
    re-ranker tables when it finished), made by hand: no model to build."""
    run = tmp_path / "runs" / "tiny-20261129-030755"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "tiny", "seed": 1}))
    feats, pids, cams, modality = sysu_like(ids=6, d=8)
    save_features(run / "features.npz", feats, pids, cams, modality, dataset="sysu")
    if finished:
        table = {"mean": {"R1": 50.0, "mAP": 40.0}, "std": {"R1": 1.0, "mAP": 1.0}}
        (run / "results.json").write_text(json.dumps({"none": table}))
    return run


def _eval(run: Path) -> list[str]:
    return ["eval", str(run / "features.npz"), "--protocol", "sysu-all", "--trials", "1"]


def test_eval_json_of_ones_own_in_a_run_folder_can_be_written_again(tmp_path, capsys):
    # `--json RUN/indoor.json` twice (another re-ranker, a fixed bug): the file is the
    # user's, not the run's, and is written again
    run = _run_folder(tmp_path)
    out = run / "indoor.json"
    assert main([*_eval(run), "--json", str(out)]) == 0
    first = json.loads(out.read_text())
    capsys.readouterr()
    code = main([*_eval(run), "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["mean"] == first["mean"]


def test_eval_json_does_not_mark_an_unfinished_run_finished(tmp_path, capsys):
    # a run stopped after an evaluation has features.npz and no results.json yet: eval's
    # JSON written as RUN/results.json would mark it finished (`--resume`: "already
    # finished; nothing to resume"); a checkpoint path is the run's too
    run = _run_folder(tmp_path, finished=False)
    results = run / "results.json"
    assert main([*_eval(run), "--json", str(results)]) == 2
    assert "is the run folder's own results.json" in _err(capsys)
    assert not results.exists()
    assert main([*_eval(run), "--json", str(run / "checkpoints" / "x.json")]) == 2
    assert "own checkpoints/x.json" in _err(capsys)


def test_eval_json_refuses_to_replace_a_run_folders_results_json(tmp_path, capsys):
    # `uvireid eval RUN/features.npz --json RUN/results.json` would replace the run's
    # final record (the file that marks it finished) with eval's JSON
    run = _run_folder(tmp_path)
    results = run / "results.json"
    before = results.read_bytes()
    args = ["eval", str(run / "features.npz"), "--protocol", "sysu-all", "--trials", "1"]
    code = main([*args, "--json", str(results)])
    assert results.read_bytes() == before
    assert code == 2
    assert "results.json" in _err(capsys)
    # the same evaluation beside the run (not over its files) is written as before
    out = tmp_path / "indoor.json"
    assert main([*args, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["provenance"]["protocol"] == "sysu-all"


def test_compare_names_an_eval_json_as_not_a_runs_results(tmp_path, capsys):
    # a results.json that holds `uvireid eval --json` output ({provenance, mean, std, ...})
    # is not read as three re-rankers named 'provenance', 'mean', 'std'; the table falls
    # back to metrics.jsonl
    run = _run_folder(tmp_path)
    out = tmp_path / "e.json"
    args = ["eval", str(run / "features.npz"), "--protocol", "sysu-all", "--trials", "1"]
    assert main([*args, "--json", str(out)]) == 0
    capsys.readouterr()
    (run / "results.json").write_text(out.read_text())  # an eval JSON copied over it
    report = compare_runs([str(run)])
    (row,) = report["runs"]
    assert not {"provenance", "mean", "std"} & set(row["results"])
    assert any("results.json" in note for note in row["notes"])


def test_match_names_a_missing_source_as_missing(tmp_path, capsys):
    # a mistyped run folder (or an unmatched shell glob) is not "a features file"
    images = tmp_path / "probes"
    images.mkdir()
    missing = tmp_path / "runs" / "demo-2026112-030755"
    assert main(["match", str(missing), "--infrared", str(images)]) == 2
    err = _err(capsys)
    assert "does not exist" in err
    assert "is a features file" not in err


def test_a_finished_run_resumed_keeps_its_report(tmp_path, monkeypatch, capsys):
    """`uvireid run RUN --resume` of a finished run changes nothing, so the report the
    user drew (perhaps with other options) stays; a report older than the results is
    drawn again."""
    import os

    import uvireid.engine.runner as runner
    import uvireid.viz.report as rep
    from uvireid.config import dump, load_recipe

    run = tmp_path / "demo-20260101-000000"
    run.mkdir()
    (run / "config.yaml").write_text(dump(load_recipe("demo", [f"output_dir={tmp_path}"])))
    (run / "results.json").write_text("{}")
    html = run / "report.html"
    html.write_text("the user's report")
    drawn = []

    class Done:
        path = run

    monkeypatch.setattr(runner, "run_recipe", lambda cfg, **kw: Done)
    monkeypatch.setattr(rep, "maybe_report", lambda path: drawn.append(path) or html)
    assert main(["run", str(run), "--resume"]) == 0
    assert drawn == [] and html.read_text() == "the user's report"
    assert "(kept: the results have not changed since)" in capsys.readouterr().out
    stamp = (run / "results.json").stat().st_mtime_ns
    os.utime(html, ns=(stamp - 10**9, stamp - 10**9))  # results newer: drawn again
    assert main(["run", str(run), "--resume"]) == 0
    assert drawn == [run]


def test_a_missing_path_is_called_missing_by_compare_and_eval_runs(tmp_path, capsys):
    """An unmatched shell pattern reaches the command as itself: compare and eval --runs
    say it does not exist, not that it is no run folder or that two files are needed."""
    pattern = str(tmp_path / "runs" / "salcr-*")
    assert main(["compare", pattern]) == 2
    assert f"{pattern} does not exist" in _err(capsys)
    features = str(tmp_path / "runs" / "salcr-*" / "features.npz")
    assert main(["eval", features, "--protocol", "sysu-all", "--runs"]) == 2
    assert f"{features} does not exist" in _err(capsys)


def test_compare_json_is_refused_for_a_runs_own_file_existing_or_not(tmp_path, capsys):
    """`uvireid compare A B --json A/results.json` on runs not finished would create the
    record that marks A finished; a folder of runs stands for its runs; another name in
    a run folder is the user's, new or existing; a run's .lock is its own too."""
    a = _run_folder(tmp_path / "a", finished=False)
    b = _run_folder(tmp_path / "b", finished=False)
    assert main(["compare", str(a), str(b), "--json", str(a / "results.json")]) == 2
    assert "is the run folder's own results.json" in _err(capsys)
    assert not (a / "results.json").exists()
    assert main(["compare", str(a.parent), str(b), "--json", str(a / "log.txt")]) == 2
    assert "own log.txt" in _err(capsys)
    for _ in range(2):  # the user's own file, written again
        assert main(["compare", str(a), str(b), "--json", str(a / "cmp.json")]) == 0
    assert json.loads((a / "cmp.json").read_text())["runs"]
    assert main([*_eval(a), "--json", str(a / ".lock")]) == 2
    assert not (a / ".lock").exists()
