"""Command-line mistakes end in one clear line before any work, not in a traceback after
it: output paths that cannot be written, an empty features file, the same RegDB file twice,
non-positive report sizes, a folder that is not a run."""

from __future__ import annotations

import os

import numpy as np
import pytest

from uvireid.cli import main
from uvireid.features import save_features


@pytest.fixture()
def feats_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    path = tmp_path / "f.npz"
    save_features(
        path,
        rng.normal(size=(n, 8)).astype(np.float32),
        np.repeat(np.arange(10), 4),
        np.tile([1, 2], n // 2),
        np.tile([0, 1], n // 2),
        dataset="regdb",
        split=1,
        train_split=1,
    )
    return path


def _err(capsys):
    return capsys.readouterr().err


def test_json_output_that_cannot_be_written_stops_before_the_evaluation(
    feats_file, tmp_path, capsys, monkeypatch
):
    from uvireid.evaluation import protocols

    calls = []
    monkeypatch.setattr(protocols, "run_protocol", lambda *a, **k: calls.append(1))
    for cmd in ("eval", "rerank"):
        extra = ["--reranker", "cmfp"] if cmd == "rerank" else []
        args = [cmd, str(feats_file), "--protocol", "regdb-v2i", *extra]
        assert main([*args, "--json", str(tmp_path)]) == 2
        assert f"--json {tmp_path} is a folder" in _err(capsys)
        blocker = tmp_path / "blocker"
        blocker.write_text("a file where a folder should be")
        assert main([*args, "--json", str(blocker / "out.json")]) == 2
        assert "cannot create the folder" in _err(capsys)
    # a folder whose permission bits say yes but that takes no file (a read-only mount,
    # /proc; the tests run as root, so chmod cannot make one): the write probe fails
    import tempfile

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    for cmd in ("eval", "rerank"):
        extra = ["--reranker", "cmfp"] if cmd == "rerank" else []
        args = [cmd, str(feats_file), "--protocol", "regdb-v2i", *extra]
        assert main([*args, "--json", str(tmp_path / "out.json")]) == 2
        assert "cannot write into the folder" in _err(capsys)
    assert calls == []


def test_extract_refuses_a_folder_a_missing_checkpoint_and_no_source_before_any_work(
    tmp_path, capsys, monkeypatch
):
    from uvireid.engine import export

    calls = []
    monkeypatch.setattr(export, "export_features", lambda *a, **k: calls.append(1))
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["extract", "demo", "--checkpoint", "none", "-o", str(folder), "--force"]) == 2
    assert "is a folder; give a file path" in _err(capsys)
    missing = tmp_path / "nope.pt"
    assert main(["extract", "demo", "--checkpoint", str(missing), "-o", str(tmp_path / "f")]) == 2
    assert f"--checkpoint {missing} does not exist" in _err(capsys)
    nowhere = tmp_path / "runs" / "nonexist"
    assert main(["extract", str(nowhere), "-o", str(tmp_path / "f.npz")]) == 2
    assert "no such run folder or recipe file" in _err(capsys)
    assert calls == []


def test_an_empty_features_file_is_named(tmp_path, capsys):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    assert main(["eval", str(empty), "--protocol", "sysu-all"]) == 2
    assert "is empty (0 bytes)" in _err(capsys)


def test_the_same_regdb_file_twice_is_refused(feats_file, capsys):
    same = os.path.join(os.path.dirname(feats_file), ".", os.path.basename(feats_file))
    assert main(["eval", str(feats_file), same, "--protocol", "regdb-v2i"]) == 2
    assert "the same features file is given twice" in _err(capsys)


@pytest.mark.parametrize("flag", ["--dpi", "--queries", "--topk", "--ids"])
def test_report_sizes_must_be_positive(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as stop:
        main(["report", str(tmp_path), flag, "0"])
    assert stop.value.code == 2
    assert f"argument {flag}: must be >= 1, got 0" in _err(capsys)


def test_report_and_synth_refuse_the_wrong_kind_of_path(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run folder (no config.yaml)" in _err(capsys)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["data", "synth", "--out", str(afile)]) == 2
    assert f"--out {afile} is a file, not a folder" in _err(capsys)


def test_features_files_may_follow_options(feats_file, tmp_path, capsys):
    import shutil

    other = tmp_path / "split2.npz"
    shutil.copy(feats_file, other)
    from uvireid.features import load_features, save_features

    f = load_features(other)
    save_features(  # another split's features (the same ones twice are refused)
        other, f.feats * 0.5, f.pids, f.cams, f.modality, **{**f.meta, "split": 2, "train_split": 2}
    )
    assert main(["eval", str(feats_file), "--protocol", "regdb-v2i", str(other)]) == 0
    assert "2 splits" in capsys.readouterr().out


def test_regdb_refuses_trials_and_a_copied_split_file(feats_file, tmp_path, capsys):
    assert main(["eval", str(feats_file), "--protocol", "regdb-v2i", "--trials", "3"]) == 2
    assert "--trials does not apply to RegDB" in _err(capsys)
    copy = tmp_path / "copy.npz"
    copy.write_bytes(feats_file.read_bytes())
    assert main(["eval", str(feats_file), str(copy), "--protocol", "regdb-v2i"]) == 2
    assert "are the same file (identical bytes)" in _err(capsys)
    assert main(["eval", str(feats_file), "--protocol", "regdb-v2i"]) == 0
