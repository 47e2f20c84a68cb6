"""The commands' behaviour at its edges (audit IB, session 25, a mutation test of the
CLI): exit codes and interrupts, ``--json`` paths (empty, ``-``, a folder, the features
file itself), ``--k`` below 1, a stray ``KEY=VALUE`` word, and the tables and JSON of
``rerank``."""

from __future__ import annotations

import json
import logging
import signal
from typing import ClassVar

import numpy as np
import pytest
from feature_fixtures import sysu_like

from uvireid.cli import Terminated, main
from uvireid.errors import ConfigError
from uvireid.features import save_features


@pytest.fixture
def feats_file(tmp_path):
    return save_features(tmp_path / "f.npz", *sysu_like(1), dataset="sysu", split="test")


def _rc(argv):
    """main's exit code, an argparse refusal (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


# ---------------------------------------------------------------- entry point, exit codes


def test_no_command_prints_the_usage_and_exits_2(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: uvireid") and "rerank" in out


def test_verbose_after_the_subcommand_is_the_same_as_before_it(capsys):
    """`uvireid list rerankers -v` as `uvireid -v list rerankers`: the faiss loader is
    left to the root's DEBUG level (not quieted to WARNING)."""
    loader = logging.getLogger("faiss.loader")
    before = loader.level
    try:
        loader.setLevel(logging.NOTSET)
        assert main(["list", "rerankers", "-v"]) == 0
        assert loader.level == logging.NOTSET
        assert main(["list", "rerankers"]) == 0
        assert loader.level == logging.WARNING
    finally:
        loader.setLevel(before)
        capsys.readouterr()


@pytest.mark.parametrize(
    "stop, rc, said",
    [
        (KeyboardInterrupt, 130, "interrupted"),
        (Terminated, 143, "terminated (SIGTERM)"),
    ],
)
def test_an_interrupted_eval_exits_130_or_143_with_one_line(
    feats_file, monkeypatch, capsys, stop, rc, said
):
    from uvireid.evaluation import protocols

    def stopped(*a, **k):
        raise stop("SIGTERM")

    monkeypatch.setattr(protocols, "run_protocol", stopped)
    assert main(["eval", str(feats_file), "--protocol", "sysu-all"]) == rc
    err = capsys.readouterr().err
    assert err == said + "\n"  # one line, no traceback
    monkeypatch.setenv("RANK", "1")  # under torchrun: rank 0 alone speaks
    assert main(["eval", str(feats_file), "--protocol", "sysu-all"]) == rc
    assert capsys.readouterr().err == ""


def test_a_real_sigterm_ends_the_command_with_143_and_the_handler_is_restored(
    feats_file, monkeypatch, capsys
):
    from uvireid.evaluation import protocols

    def killed(*a, **k):
        signal.raise_signal(signal.SIGTERM)  # as `kill PID` while the evaluation runs
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(protocols, "run_protocol", killed)
    hits = []

    def outer(signum, frame):  # the handler before the command (not the default: the
        hits.append(signum)  # test process would end if the command set none)

    mine = signal.signal(signal.SIGTERM, outer)
    try:
        assert main(["eval", str(feats_file), "--protocol", "sysu-all"]) == 143
        assert signal.getsignal(signal.SIGTERM) is outer  # restored after the command
    finally:
        signal.signal(signal.SIGTERM, mine)
    assert hits == []  # the command's own handler took it
    assert capsys.readouterr().err == "terminated (SIGTERM)\n"


# ---------------------------------------------------------------- --json paths


def test_json_into_folders_that_do_not_exist_yet_creates_them(feats_file, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "c" / "res.json"
    assert main(["eval", str(feats_file), "--protocol", "sysu-all", "--trials", "1",
                 "--json", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    from uvireid.evaluation import run_protocol

    want = run_protocol(feats_file, "sysu-all", trials=1).mean
    assert json.loads(out.read_text())["mean"] == pytest.approx(want)


# ---------------------------------------------------------------- rerank


def test_rerank_prints_the_baseline_table_before_the_reranked_one(feats_file, capsys):
    """The 'without re-ranking' table is run_protocol's own table of the same options."""
    from uvireid.evaluation import run_protocol
    from uvireid.registry import RERANKERS

    assert main(["rerank", str(feats_file), "--reranker", "cmfp", "--k", "5",
                 "--protocol", "sysu-all", "--trials", "2"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    before, after = text.split("== with cmfp(k=5) ==")
    base = run_protocol(feats_file, "sysu-all", trials=2)
    rr = run_protocol(
        feats_file,
        "sysu-all",
        trials=2,
        reranker=RERANKERS.build({"type": "cmfp", "k": 5}),
    )
    assert before.strip() == "== without re-ranking ==\n" + base.table().strip()
    assert rr.table().strip() in after


def _table_rows(text: str) -> dict:
    lines = text.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("reranker") and "time/trial" in ln)
    cols = lines[head].split()
    assert cols[:4] == ["reranker", "R1", "mAP", "mINP"]
    rows = {}
    for ln in lines[head + 2 :]:
        parts = ln.split()
        rows[parts[0]] = parts[1:]
    return rows


def test_rerank_all_side_by_side_columns_are_the_librarys_numbers(feats_file, capsys):
    from uvireid.evaluation import run_protocol
    from uvireid.registry import RERANKERS

    assert main(["rerank", str(feats_file), "--reranker", "all", "--protocol", "sysu-all",
                 "--trials", "1"]) == 0  # fmt: skip
    rows = _table_rows(capsys.readouterr().out)
    base = run_protocol(feats_file, "sysu-all", trials=1).mean
    cmfp = run_protocol(
        feats_file, "sysu-all", trials=1, reranker=RERANKERS.build({"type": "cmfp"})
    ).mean
    for name, mean in (("none", base), ("cmfp(k=30)", cmfp)):
        got = [float(v) for v in rows[name][:3]]
        assert got == pytest.approx([mean["R1"], mean["mAP"], mean["mINP"]], abs=0.006)
    assert base["mAP"] != pytest.approx(base["mINP"], abs=0.1)  # a swap would show


class _Refuses:
    """A plugin re-ranker that cannot be built (its settings refused)."""

    def __init__(self):
        raise ConfigError("zz_refuses: not today")


def test_rerank_all_lists_a_reranker_that_cannot_be_built(feats_file, tmp_path, capsys):
    from uvireid.registry import RERANKERS

    out = tmp_path / "all.json"
    with RERANKERS.registered("zz_refuses", _Refuses):
        rc = main(["rerank", str(feats_file), "--reranker", "all", "--protocol", "sysu-all",
                   "--trials", "1", "--json", str(out)])  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 2
    rows = _table_rows(cap.out)
    assert " ".join(rows["zz_refuses"]) == "failed: ConfigError: zz_refuses: not today"
    doc = json.loads(out.read_text())
    assert {
        "reranker": "zz_refuses",
        "failed": "ConfigError: zz_refuses: not today",
    } in doc["summary"]
    assert "error: re-ranker zz_refuses failed" in cap.err


class _Flag:
    """A plugin re-ranker with a boolean keyword; records what it was given."""

    got: ClassVar[list] = []

    def __init__(self, flag=False, scale=1.0, other=None):
        type(self).got.append((flag, scale, other))

    def rerank(self, query, gallery):
        return -np.asarray(query) @ np.asarray(gallery).T


@pytest.mark.parametrize(
    "text, want",
    [("true", True), ("False", False), ("none", None), ("4", 4), ("0.25", 0.25)],
)
def test_set_values_are_typed_as_the_help_says(feats_file, capsys, text, want):
    from uvireid.registry import RERANKERS

    _Flag.got = []
    with RERANKERS.registered("zz_flag", _Flag):
        key = {"true": "flag", "false": "flag", "none": "other"}.get(text.lower(), "scale")
        assert main(["rerank", str(feats_file), "--reranker", "zz_flag", "--set",
                     f"{key}={text}", "--protocol", "sysu-all", "--trials", "1"]) == 0  # fmt: skip
    capsys.readouterr()
    value = _Flag.got[0][("flag", "scale", "other").index(key)]
    assert value == want and type(value) is type(want)


# ---------------------------------------------------------------- extract, data check


def test_extract_refuses_an_existing_output_without_force(tmp_path, capsys):
    out = tmp_path / "f.npz"
    out.write_bytes(b"keep me")
    assert main(["extract", "demo", "--checkpoint", "none", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists; pass --force" in err and out.read_bytes() == b"keep me"


# ---------------------------------------------------------------- found by the audit, fixed


def _stub_compare(monkeypatch):
    from uvireid.engine import compare

    report = {"comparable": True, "runs": [{"seed": 0}], "not_comparable": []}
    calls = []

    def compare_runs(runs):
        calls.append(runs)
        return report

    monkeypatch.setattr(compare, "compare_runs", compare_runs)
    monkeypatch.setattr(compare, "format_comparison", lambda r: "the comparison table\n")
    return report, calls


def test_compare_json_to_a_folder_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """compare --json FOLDER ended in an IsADirectoryError traceback after the work."""
    _stub_compare(monkeypatch)
    rc = main(["compare", "runs", "--json", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "--json" in err and "folder" in err and "Traceback" not in err


def test_compare_json_dash_is_stdout_as_in_eval_and_rerank(tmp_path, monkeypatch, capsys):
    """compare --json - wrote a file named '-' into the current folder."""
    report, _ = _stub_compare(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "runs", "--json", "-"]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "-").exists()
    assert json.loads(out) == report


@pytest.mark.parametrize("command", ["eval", "rerank"])
def test_an_empty_json_path_is_refused_not_ignored(feats_file, capsys, command):
    """--json "" (an unset shell variable) exited 0 and wrote no JSON anywhere."""
    extra = ["--reranker", "cmfp"] if command == "rerank" else []
    rc = _rc([command, str(feats_file), *extra, "--protocol", "sysu-all", "--trials", "1",
              "--json", ""])  # fmt: skip
    assert rc == 2 and "--json" in capsys.readouterr().err


def test_match_output_onto_its_own_source_says_so_without_force(feats_file, capsys):
    """match F.npz -o F.npz advised --force, which is then refused for another reason."""
    assert main(["match", str(feats_file), "-o", str(feats_file)]) == 2
    err = capsys.readouterr().err
    assert "is the features file being read" in err and "--force" not in err


@pytest.mark.parametrize("k", ["0", "-3"])
def test_rerank_all_with_an_impossible_k_stops_before_any_evaluation(
    feats_file, monkeypatch, capsys, k
):
    """--reranker all --k 0: every other re-ranker was evaluated (minutes on SYSU-MM01)
    before the command reported the typo and exited 2."""
    from uvireid.evaluation import protocols

    calls = []
    real = protocols.run_protocol
    monkeypatch.setattr(
        protocols, "run_protocol", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    rc = _rc(["rerank", str(feats_file), "--reranker", "all", "--k", k,
              "--protocol", "sysu-all", "--trials", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and k in err
    assert calls == []


@pytest.mark.parametrize("command", ["eval", "rerank"])
def test_json_onto_the_features_file_being_read_is_refused(feats_file, capsys, command):
    """eval/rerank --json F.npz replaced the features file F.npz with the JSON (match
    refuses its -o onto the file it reads)."""
    before = feats_file.read_bytes()
    extra = ["--reranker", "cmfp"] if command == "rerank" else []
    rc = _rc([command, str(feats_file), *extra, "--protocol", "sysu-all", "--trials", "1",
              "--json", str(feats_file)])  # fmt: skip
    err = capsys.readouterr().err
    assert feats_file.read_bytes() == before
    assert rc == 2 and "--json" in err and "features file" in err


def test_a_stray_word_taken_as_a_features_file_is_named(feats_file, capsys):
    """`--set k1=4 k2=1` (one --set for two keywords): k2=1 joined the features files, and
    the error said "2 features files given for sysu-all ... pass one SYSU-MM01 test-set
    file" without naming k2=1, the word the user must fix."""
    rc = _rc(["rerank", str(feats_file), "--reranker", "aim", "--set", "k1=4", "k2=1",
              "--protocol", "sysu-all"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "k2=1" in err and "--set" in err


@pytest.mark.parametrize("argv", [["--ids", "0"], ["--ids", "-3"], ["--nir", "5"]])
def test_data_synth_refuses_its_numbers_before_making_the_folder(tmp_path, capsys, argv):
    out = tmp_path / "new"
    assert main(["data", "synth", "--out", str(out), *argv]) == 2
    assert "synthetic dataset: " in capsys.readouterr().err
    assert not out.exists()  # it was made, empty, before the refusal


def test_compare_json_onto_a_file_of_a_compared_run_is_refused(tmp_path, monkeypatch, capsys):
    """compare RUN --json RUN/metrics.jsonl replaced the run's evaluation records with
    the comparison; a new file in the run folder, or one beside it, is written."""
    report, calls = _stub_compare(monkeypatch)
    run = tmp_path / "runs" / "salcr-1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 1\n")
    metrics = run / "metrics.jsonl"
    metrics.write_text('{"epoch": 1}\n')
    for runs_arg in (run, run.parent):  # the run, or a folder of runs
        rc = main(["compare", str(runs_arg), "--json", str(metrics)])
        err = capsys.readouterr().err
        assert rc == 2 and "--json" in err and "being read" in err
        assert metrics.read_text() == '{"epoch": 1}\n' and calls == []
    assert main(["compare", str(run), "--json", str(run / "compare.json")]) == 0
    assert json.loads((run / "compare.json").read_text()) == report
