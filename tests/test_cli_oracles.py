"""Mutation audit OD: the CLI's argument checks (_checks), `uvireid data`, `uvireid list`, main()."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from uvireid.cli import _checks, main
from uvireid.errors import ConfigError


def test_a_blank_output_path_is_refused_as_empty(tmp_path):
    with pytest.raises(ConfigError, match="--json is empty"):
        _checks.output_file("   ", "--json")


def test_output_file_refuses_a_folder_and_a_dangling_link(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        _checks.output_file(tmp_path, "-o")
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "gone" / "x.json")
    with pytest.raises(ConfigError, match="which does not exist"):
        _checks.output_file(link, "--json")


def test_output_checks_leave_no_probe_file_behind(tmp_path):
    out = _checks.output_file(tmp_path / "sub" / "r.json", "--json")
    assert out == tmp_path / "sub" / "r.json"
    assert list((tmp_path / "sub").iterdir()) == []  # made, probed, left empty
    assert _checks.output_folder(tmp_path / "f", "--out") == tmp_path / "f"
    assert list((tmp_path / "f").iterdir()) == []


def test_output_folder_refuses_a_file(tmp_path):
    (tmp_path / "x").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        _checks.output_folder(tmp_path / "x", "--out")


@pytest.mark.parametrize("text,ok", [("1", True), ("7", True), ("0", False), ("-2", False)])
def test_positive_int(text, ok):
    if ok:
        assert _checks.positive_int(text) == int(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=">= 1"):
            _checks.positive_int(text)


def test_json_output_refuses_an_input_and_a_runs_own_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "user.json").write_text("{}")
    feats = tmp_path / "f.npz"
    feats.write_bytes(b"")
    with pytest.raises(ConfigError, match="being read"):
        _checks.json_output(SimpleNamespace(json="f.npz"), reading=[feats.resolve()])
    # the run folder named by a relative path: its own files, existing or not, are its
    names = ("results.json", "config.yaml", ".lock", "checkpoints/latest.pt", "Results.json")
    for name in (*names, "CHECKPOINTS/x.pt", "Features.NPZ"):
        with pytest.raises(ConfigError, match="is the run folder's own"):
            _checks.refuse_a_runs_own_file(Path("run") / name, ["run"])
    # another name in the run folder is the user's, new or existing; elsewhere replaced
    for name in ("new.json", "user.json", "results.json.bak", "checkpoints.json"):
        _checks.refuse_a_runs_own_file(Path("run") / name, ["run"])
    assert _checks.json_output(SimpleNamespace(json="f2.json"), reading=[feats.resolve()])
    assert _checks.json_output(SimpleNamespace(json="-")) is None


def _run_folder(tmp_path, ckpt=True):
    run = tmp_path / "tiny-20260101-120000"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: tiny\n")
    if ckpt:
        (run / "checkpoints" / "latest.pt").write_bytes(b"x")
    return run


def _stopped(run, **attrs):
    exc = RuntimeError("boom")
    exc.run_folder = str(run)
    for k, v in attrs.items():
        setattr(exc, k, v)
    return exc


def test_the_resume_hint_of_a_run_with_a_checkpoint(tmp_path, monkeypatch):
    from uvireid.cli import _resume_hint

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run = _run_folder(tmp_path)
    args = SimpleNamespace(command="run", sweep=None)
    hint = _resume_hint(args, _stopped(run))
    assert hint == (
        f"keeps its last finished epoch's checkpoint: after fixing the cause, continue with "
        f"`uvireid run {run} --resume`"
    )
    stopped = _resume_hint(args, KeyboardInterrupt(), stopped=True)  # no folder: nothing
    assert stopped == ""
    exc = KeyboardInterrupt()
    exc.run_folder = str(run)
    assert _resume_hint(args, exc, stopped=True) == (
        f"keeps its last finished epoch's checkpoint: continue with `uvireid run {run} --resume`"
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "`torchrun --nproc_per_node 2 -m uvireid run " in _resume_hint(args, _stopped(run))
    # the checkpoint that could not be read is no way back
    latest = str((run / "checkpoints" / "latest.pt").resolve())
    assert _resume_hint(args, _stopped(run, checkpoint=latest)) == ""
    # another command: no hint
    assert _resume_hint(SimpleNamespace(command="eval"), _stopped(run)) == ""


def test_the_resume_hint_of_a_run_without_a_checkpoint(tmp_path, monkeypatch):
    from uvireid.cli import _resume_hint

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run = _run_folder(tmp_path, ckpt=False)
    args = SimpleNamespace(command="run", sweep=None)
    assert _resume_hint(args, _stopped(run)) == ""  # a failure: starting again fails again
    exc = KeyboardInterrupt()
    exc.run_folder = str(run)
    assert _resume_hint(args, exc, stopped=True) == (
        f"in {run} has no finished epoch yet: `uvireid run {run} --resume` starts it again there"
    )


def test_the_rank_comes_from_the_launch_environment(monkeypatch):
    from uvireid.cli import _rank

    monkeypatch.delenv("RANK", raising=False)
    assert _rank() == 0
    monkeypatch.setenv("RANK", "3")
    assert _rank() == 3
    monkeypatch.setenv("RANK", "x")
    assert _rank() == 0


def _with_list_func(monkeypatch, func):
    from uvireid.cli import list_cmd

    monkeypatch.setattr(list_cmd, "run", func)


@pytest.mark.parametrize(
    "raised,code",
    [
        ("broken", 141),
        ("term", 143),
        ("int", 130),
        ("uvireid", 2),
    ],
)
def test_exit_codes_of_a_command_that_stops(monkeypatch, capsys, raised, code):
    from uvireid.cli import Terminated
    from uvireid.errors import DatasetError

    errors = {
        "broken": BrokenPipeError(),
        "term": Terminated("SIGTERM"),
        "int": KeyboardInterrupt(),
        "uvireid": DatasetError("no such folder"),
    }

    def func(args):
        raise errors[raised]

    _with_list_func(monkeypatch, func)
    assert main(["list"]) == code
    err = capsys.readouterr().err
    if raised == "uvireid":
        assert "error: DatasetError: no such folder" in err
    if raised == "term":
        assert err.strip() == "terminated (SIGTERM)"
    if raised == "int":
        assert err.strip() == "interrupted"


def test_json_dash_sends_the_tables_to_stderr(capsys):
    from uvireid.cli import _tables_to_stderr, write_json

    args = SimpleNamespace(json="-")
    with _tables_to_stderr(args):
        print("a table")
        write_json(args, {"mAP": 1.5})
    out, err = capsys.readouterr()
    assert err == "a table\n"
    import json

    assert json.loads(out) == {"mAP": 1.5}


def test_a_misspelt_option_with_its_value_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "demo", "--dry-rn"])
    assert exc.value.code == 2
    assert "did you mean '--dry-run'?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["run", "demo", "--sweeep=stages.1.clusterer.eps=0.5,0.6,0.7"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'--sweeep=stages.1.clusterer.eps=0.5,0.6,0.7': did you mean '--sweep'?" in err


def test_list_of_one_registry_and_its_count(capsys):
    from uvireid.registry import REGISTRIES

    assert main(["list", "rerankers"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"rerankers ({len(REGISTRIES['rerankers'])})"
    assert not any(line.startswith("datasets (") for line in lines)
    names = {line.split()[0] for line in lines[1:] if line.startswith("  ")}
    assert names == set(REGISTRIES["rerankers"].names())


def test_list_says_an_empty_registry_and_failed_plugins(monkeypatch):
    from uvireid.cli import list_cmd

    class Empty:
        def __len__(self):
            return 0

        def names(self):
            return []

    monkeypatch.setattr(list_cmd, "REGISTRIES", {"widgets": Empty()})
    monkeypatch.setattr(list_cmd, "PLUGIN_ERRORS", {"badpkg": "ImportError: nope"})
    text = list_cmd.format_registries()
    assert text == (
        "widgets (0)\n  (none registered)\n\nplugins that failed to load\n"
        "  badpkg: ImportError: nope\n"
    )


@pytest.mark.parametrize(
    "text,want", [("TRUE", True), (" yes ", True), ("On", True), ("No", False), ("0", False)]
)
def test_data_check_booleans_ignore_case_and_spaces(text, want):
    from uvireid.cli.data_cmd import _bool

    assert _bool(text) is want


def test_data_check_split_argument():
    from uvireid.cli.data_cmd import _split_arg

    assert _split_arg(" ALL ") == "all"
    assert _split_arg("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="not a split"):
        _split_arg("three")


def test_data_check_refuses_a_split_of_a_one_split_dataset(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path), "--dataset", "sysu", "--split", "2"]) == 2
    assert "--split applies to datasets with several splits" in capsys.readouterr().err


def _eval_args(features, **kw):
    return SimpleNamespace(
        protocol="sysu-all", features=[str(f) for f in features], json=None, **kw
    )


def test_runs_needs_two_files_and_a_file_named_with_equals_is_a_file(tmp_path, monkeypatch):
    from uvireid.errors import ProtocolError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.npz").write_bytes(b"a")
    with pytest.raises(ProtocolError, match="--runs needs the features files of two runs"):
        _checks.protocol_inputs(_eval_args(["a.npz"], runs=True, trials=None))
    (tmp_path / "lr=0.1.npz").write_bytes(b"b")
    args = _eval_args(["lr=0.1.npz", "a.npz"], runs=True, trials=None)
    assert _checks.protocol_inputs(args).name == "sysu-all"
    assert args.trials == 10
    with pytest.raises(ProtocolError, match="k2=1 is not a features file"):
        _checks.protocol_inputs(_eval_args(["a.npz", "k2=1"], trials=None))


def test_split_all_without_split_lists_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "r" / "idx").mkdir(parents=True)
    assert main(["data", "check", "~/r", "--dataset", "regdb", "--split", "all"]) == 2
    assert f"no split lists under {tmp_path / 'r'}/idx" in capsys.readouterr().err


def test_split_all_says_which_split_differs_and_exits_1(tmp_path, monkeypatch, capsys):
    from uvireid.cli import data_cmd
    from uvireid.data import check

    idx = tmp_path / "idx"
    idx.mkdir()
    for t in (1, 2, 3):
        (idx / f"train_visible_{t}.txt").write_text("")
    monkeypatch.setattr(data_cmd, "_open", lambda name, root, split=None: split)
    seen = []

    def fake_check(split, official, decode):
        seen.append((split, official, decode))
        return SimpleNamespace(ok=split != 2)

    monkeypatch.setattr(check, "check_dataset", fake_check)
    monkeypatch.setattr(check, "format_report", lambda report: "table")
    argv = ["data", "check", str(tmp_path), "--dataset", "regdb", "--split", "all"]
    assert main([*argv, "--official", "false", "--decode", "no"]) == 1
    assert seen == [(1, False, False), (2, False, False), (3, False, False)]
    assert "1 of 3 splits (1, 2, 3) failed: split 2: mismatch" in capsys.readouterr().out


@pytest.mark.parametrize("ok,code", [(True, 0), (False, 1)])
def test_check_passes_its_options_and_exits_1_on_a_difference(tmp_path, monkeypatch, ok, code):
    from uvireid.cli import data_cmd
    from uvireid.data import check

    seen = []
    monkeypatch.setattr(data_cmd, "_open", lambda name, root, split=None: (name, split))
    monkeypatch.setattr(
        check,
        "check_dataset",
        lambda ds, official, decode: seen.append((ds, official, decode)) or SimpleNamespace(ok=ok),
    )
    monkeypatch.setattr(check, "format_report", lambda report: "table")
    argv = ["data", "check", str(tmp_path), "--dataset", "regdb", "--split", "2"]
    assert main([*argv, "--official", "false", "--decode", "false"]) == code
    assert main(argv) == code
    assert seen == [(("regdb", 2), False, False), (("regdb", 2), True, True)]


@pytest.mark.parametrize(
    ("argv", "near"),
    [(["rnu"], "run"), (["data", "chek"], "check"), (["list", "rerankerz"], "rerankers")],
)
def test_a_misspelt_choice_gets_a_did_you_mean(capsys, argv, near):
    """A misspelt sub-command or choice: exit 2, the choices, and the nearest one."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "invalid choice" in err and err.rstrip().endswith(f"did you mean '{near}'?")


def test_a_choice_near_nothing_gets_no_guess(capsys):
    with pytest.raises(SystemExit):
        main(["list", "zzzzzz"])
    assert "did you mean" not in capsys.readouterr().err
