"""compare (engine/compare.py), mutation audit MD: which runs are comparable, how groups
and tables are formed and shown (each expectation read from the run folders here, or the
documented behaviour of compare_runs / format_comparison)."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
import yaml
from train_fixtures import copy_run, edit_json, eval_seed_runs

from uvireid.engine.compare import compare_runs, format_comparison
from uvireid.errors import ConfigError


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Two evaluation-only runs of one recipe (seeds 0 and 1)."""
    return eval_seed_runs(tmp_path_factory.mktemp("md_seeds"), (0, 1))


def _none(run):
    return json.loads((run / "results.json").read_text())["none"]


@pytest.mark.parametrize("key,value", [("test_size", [48, 24]), ("test_resize", "lanczos")])
def test_results_extracted_at_another_size_or_filter_are_not_comparable(
    seeds, tmp_path, key, value
):
    """Each of FEATURE_FIELDS makes runs not comparable (KB's C5 dropped test_size)."""
    a, b = seeds
    own = _none(b)["provenance"]["features_meta"][key]
    assert own != value

    def change(res):
        res["none"]["provenance"]["features_meta"][key] = value

    other = copy_run(b, tmp_path / "other", results=change)
    assert compare_runs([a, b])["comparable"]
    report = compare_runs([a, other])
    assert not report["comparable"]
    want = f"the 'none' results were extracted with another {key}: {[own, value]}"
    assert want in report["not_comparable"], report["not_comparable"]


def _validation(run):
    def change(res):
        res["none"]["provenance"]["dataset"] = "SYSU-MM01 validation ids"

    edit_json(run / "results.json", change)


def test_no_best_setting_is_named_for_validation_runs_that_are_not_comparable(seeds, tmp_path):
    """best_on_validation is for *comparable* runs (its docstring): a sweep on the
    validation ids where one run was evaluated over another number of trials gets none."""
    a, b = seeds
    runs = [copy_run(a, tmp_path / "a"), copy_run(b, tmp_path / "b")]
    for run, name in ((a, "a48"), (b, "b48")):
        runs.append(
            copy_run(run, tmp_path / name, config=lambda c: c["train"].__setitem__("height", 48))
        )
    for run in runs:
        _validation(run)
    report = compare_runs(runs)
    assert report["comparable"] and report["best_on_validation"] is not None
    edit_json(runs[3] / "results.json", lambda r: r["none"]["provenance"].__setitem__("trials", 10))
    report = compare_runs(runs)
    assert not report["comparable"]
    assert report["best_on_validation"] is None


def test_a_run_that_never_evaluated_is_marked_and_noted(seeds, tmp_path):
    """evaluation.protocol none writes results.json = {} (runner): compare says the run
    finished without an evaluation, marks its row 'no result' and calls the runs not
    comparable (no result in it)."""
    a, b = seeds
    plain = copy_run(b, tmp_path / "plain")
    (plain / "results.json").write_text("{}")
    (plain / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "loss": 1.0}) + "\n")
    report = compare_runs([a, plain])
    row = report["runs"][1]
    assert row["source"] == "" and row["results"] == {}
    assert row["notes"] == ["the run finished without an evaluation (evaluation.protocol: none)."]
    assert not report["comparable"]
    assert f"no evaluation result in {plain.name}" in report["not_comparable"]
    text = format_comparison(report)
    assert f"| {plain.name} (no result) |" in text


def test_a_folder_of_runs_stands_for_them_in_name_order(seeds, tmp_path, monkeypatch):
    """compare_runs: a folder that holds runs stands for them *in name order*, whatever
    order the file system lists them in."""
    a, b = seeds
    folder = tmp_path / "runs"
    for name, run in (("r1", a), ("r2", b), ("r3", a)):
        shutil.copytree(run, folder / name)
    listed = pathlib.Path.iterdir

    def backwards(self):
        return iter(sorted(listed(self), reverse=True))

    monkeypatch.setattr(pathlib.Path, "iterdir", backwards)
    report = compare_runs([folder])
    assert [pathlib.Path(r["run"]).name for r in report["runs"]] == ["r1", "r2", "r3"]
    assert [r["seed"] for r in report["runs"]] == [0, 1, 0]


def test_package_versions_and_source_are_differences_not_settings(seeds, tmp_path):
    """The package versions and the source revision are differences listed, not
    settings (module docstring, compare_runs): two seeds on another torch and an edited
    tree are one group, and the source column says '(changed)' for the edited tree."""
    a, b = seeds
    commit = "0123456789abcdef0123456789abcdef01234567"

    def clean(m):
        m["source"] = {"commit": commit, "dirty": False}

    def edited(m):
        m["source"] = {"commit": commit, "dirty": True}
        m["versions"]["torch"] = "0.0.1"

    a2 = copy_run(a, tmp_path / "a", manifest=clean)
    b2 = copy_run(b, tmp_path / "b", manifest=edited)
    torch_a = json.loads((a / "manifest.json").read_text())["versions"]["torch"]
    report = compare_runs([a2, b2])
    assert report["comparable"], report["not_comparable"]
    (group,) = report["groups"]["none"]
    assert group["settings"] == {} and group["runs"] == [str(a2), str(b2)]
    assert report["differences"]["source"] == ["0123456789", "0123456789 (changed)"]
    assert report["differences"]["versions.torch"] == [torch_a, "0.0.1"]


def test_each_runs_row_shows_its_mean_and_std_over_trials(seeds):
    """format_comparison: a run's cell is 'mean ± std' (over its trials), as in its
    results.json."""
    a, b = seeds
    text = format_comparison(compare_runs([a, b]))
    for run in (a, b):
        res = _none(run)
        assert res["std"]["mAP"] > 0  # the check below can fail
        row = next(line for line in text.splitlines() if line.startswith(f"| {run.name} |"))
        assert f"{res['mean']['mAP']:.2f} ± {res['std']['mAP']:.2f}" in row
        assert f"{res['mean']['R1']:.2f} ± {res['std']['R1']:.2f}" in row


def test_an_unreadable_manifest_is_a_note_not_a_traceback(seeds, tmp_path):
    """A manifest.json that is no JSON (cut short, edited by hand) is said in the run's
    notes; the comparison goes on."""
    a, b = seeds
    broken = copy_run(b, tmp_path / "broken")
    (broken / "manifest.json").write_text('{"seed": 1, "data')
    report = compare_runs([a, broken])
    notes = report["runs"][1]["notes"]
    assert len(notes) == 1 and notes[0].startswith("manifest.json cannot be read")
    assert report["runs"][1]["results"]["none"]["mAP"] == _none(b)["mean"]["mAP"]


def test_files_with_bytes_that_are_not_utf8_are_notes_or_skipped_lines(seeds, tmp_path):
    """A manifest or results file damaged into bytes that are not UTF-8 is a note, as a
    file that is no JSON is; such a line of metrics.jsonl is skipped, the others read."""
    from uvireid.engine.run_folder import RunFolder

    a, b = seeds
    broken = copy_run(b, tmp_path / "broken")
    (broken / "manifest.json").write_bytes(b'{"seed": "\xff\xfe"}')
    report = compare_runs([a, broken])
    assert report["runs"][1]["notes"][0].startswith("manifest.json cannot be read")
    lines = (broken / "metrics.jsonl").read_bytes().splitlines()
    (broken / "metrics.jsonl").write_bytes(b"\n".join([lines[0], b'{"x": "\xff"}', *lines[1:]]))
    assert RunFolder(broken).read_metrics() == [json.loads(x) for x in lines]


def test_a_run_without_any_result_is_not_said_to_lack_one_table(seeds, tmp_path):
    """'(no 'none' table in X: not evaluated with it)' is for a run that has other
    tables; a run without any result is said once, as not comparable."""
    a, _ = seeds
    empty = copy_run(a, tmp_path / "empty")
    (empty / "results.json").unlink()
    (empty / "metrics.jsonl").write_text("")
    text = format_comparison(compare_runs([a, empty]))
    assert "(no 'none' table" not in text
    assert f"no evaluation result in {empty.name}" in text


def test_one_run_has_its_row_and_no_summary(seeds):
    """One run: its row, no 'mean ± std over 1 run' row (the mean over the runs is shown
    where there are several)."""
    a, b = seeds
    one = format_comparison(compare_runs([a]))
    assert f"| {a.name} |" in one and "mean ± std [min, max]" not in one
    two = format_comparison(compare_runs([a, b]))
    assert "mean ± std [min, max] over 2 runs |" in two


def test_regdb_runs_that_do_not_record_their_split_are_not_the_protocols_trials(seeds, tmp_path):
    """RegDB runs are the protocol's trials only where each run's split is known from its
    manifest; two runs whose manifests lack it, of two test sets (another sha1), are not
    comparable."""
    a, b = seeds

    def regdb(sha1):
        def change(m):
            m["dataset"].pop("split", None)
            m["dataset"].update(dataset="regdb", sha1=sha1)

        return change

    runs = [
        copy_run(
            run,
            tmp_path / f"split{split}",
            config=lambda c, s=split: c["data"].__setitem__("split", s),
            manifest=regdb(sha1),
        )
        for run, split, sha1 in ((a, 1, "1" * 40), (b, 2, "2" * 40))
    ]
    report = compare_runs(runs)
    assert not report["comparable"]
    assert any("dataset.sha1 differs" in why for why in report["not_comparable"])


def test_a_list_setting_of_integral_floats_is_the_setting_of_its_ints(seeds, tmp_path):
    """1 and 1.0 are one setting, in a list too (train.lr_steps [20, 60] and
    [20.0, 60.0]); [30, 60] is another."""
    a, b = seeds
    steps = yaml.safe_load((a / "config.yaml").read_text())["train"]["lr_steps"]
    assert steps == [20, 60]
    floats = copy_run(
        b, tmp_path / "floats", config=lambda c: c["train"].__setitem__("lr_steps", [20.0, 60.0])
    )
    other = copy_run(
        b, tmp_path / "other", config=lambda c: c["train"].__setitem__("lr_steps", [30, 60])
    )
    groups = compare_runs([a, floats, other])["groups"]["none"]
    assert [g["runs"] for g in groups] == [[str(a), str(floats)], [str(other)]]


def test_no_run_is_an_error():
    with pytest.raises(ConfigError, match="give at least one run folder"):
        compare_runs([])


def test_a_run_named_by_two_spellings_counts_once(seeds, caplog):
    """The same run as RUNS/r and RUNS/../RUNS/r: one run (compare resolves the paths),
    shown as first named, and the repetition is said."""
    a, b = seeds
    again = a.parent / ".." / a.parent.name / a.name
    assert str(again) != str(a) and again.resolve() == a.resolve()
    with caplog.at_level("WARNING", logger="uvireid.engine.compare"):
        report = compare_runs([a, b, again])
    assert [r["run"] for r in report["runs"]] == [str(a), str(b)]
    assert report["aggregate"]["none"]["mAP"]["n"] == 2
    assert any("is given twice; counted once" in r.getMessage() for r in caplog.records)


def test_the_plain_table_comes_first_and_a_table_of_some_runs_is_compared_among_them(
    seeds, tmp_path
):
    """format_comparison: the 'none' table first, then the re-ranked ones (by name); a
    table only some runs have is compared among those that have it (the others were not
    evaluated with it: no other protocol)."""
    a, b = seeds
    both = copy_run(
        b,
        tmp_path / "both",
        results=lambda r: r.__setitem__("zzz", json.loads(json.dumps(r["none"]))),
    )
    other = copy_run(
        b,
        tmp_path / "other",
        results=lambda r: r.__setitem__("cmfp", json.loads(json.dumps(r["none"]))),
    )
    report = compare_runs([a, both, other])
    assert report["comparable"], report["not_comparable"]
    text = format_comparison(report)
    heads = [line for line in text.splitlines() if line.startswith("re-ranker: ")]
    assert heads == ["re-ranker: none", "re-ranker: cmfp", "re-ranker: zzz"]
