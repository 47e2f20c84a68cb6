from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

import uvireid.data
from uvireid.cli import main
from uvireid.data import SYSUMM01
from uvireid.data.fixtures import make_sysu_tree
from uvireid.registry import DATASETS, Entry


def test_data_without_subcommand_prints_help(capsys):
    assert main(["data"]) == 2
    assert "uvireid data check /data/SYSU-MM01 --dataset sysu" in capsys.readouterr().out


@pytest.mark.parametrize("sub", ["check", "synth"])
def test_data_subcommands_have_epilog_examples(sub, capsys):
    with pytest.raises(SystemExit):
        main(["data", sub, "--help"])
    assert f"\n  uvireid data {sub} " in capsys.readouterr().out


def test_check_rejects_a_bad_official_value(sysu_root, capsys):
    with pytest.raises(SystemExit):
        main(["data", "check", str(sysu_root), "--dataset", "sysu", "--official", "maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_synth_calls_generate_and_prints_where_and_counts(tmp_path, monkeypatch, capsys):
    """Wiring only: a stand-in generate() writes a SYSU-layout tree."""
    calls = []

    def generate(out, ids=None, seed=0):
        calls.append((out, ids, seed))
        return make_sysu_tree(Path(out), ids=ids or 6, images_per=1, seed=seed)

    from uvireid.data.synthetic import check_params

    fake = types.ModuleType("uvireid.data.synthetic")
    fake.generate = generate
    fake.check_params = check_params  # the real checks of --ids, --seed and --nir
    monkeypatch.setitem(sys.modules, "uvireid.data.synthetic", fake)
    monkeypatch.setattr(uvireid.data, "synthetic", fake, raising=False)
    monkeypatch.setitem(DATASETS._entries, "synthetic", Entry("synthetic", SYSUMM01, __name__))
    out = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(out), "--ids", "9", "--seed", "3"]) == 0
    assert calls == [(str(out), 9, 3)]
    text = capsys.readouterr().out
    assert f"wrote the synthetic dataset to {out}" in text
    assert "train  all     both        6      36" in text


def test_synth_with_the_real_generator(tmp_path, capsys):
    synthetic = pytest.importorskip("uvireid.data.synthetic")
    if "synthetic" not in DATASETS or not hasattr(synthetic, "generate"):
        pytest.skip("uvireid.data.synthetic does not register the 'synthetic' dataset yet")
    assert main(["data", "synth", "--out", str(tmp_path / "syn"), "--ids", "4"]) == 0
    text = capsys.readouterr().out
    assert "wrote the synthetic dataset to" in text and "train  all" in text
    # the table is that of the 4 identities just written, not of a regenerated default set
    manifest = synthetic.read_manifest(tmp_path / "syn")
    assert manifest["ids"] == 4 and "nir" not in manifest
    assert (
        main(["data", "synth", "--out", str(tmp_path / "nir"), "--ids", "4", "--nir", "0.5"]) == 0
    )
    assert synthetic.read_manifest(tmp_path / "nir")["nir"] == 0.5
    assert re.search(r"test\s+all\s+both\s+1\s", text), text  # 4 ids: one test id


def test_check_of_a_synthetic_folder_never_writes_one(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "check", str(empty), "--dataset", "synthetic"]) == 2
    assert "data synth --out" in capsys.readouterr().err
    assert not any(empty.iterdir())
    assert main(["data", "check", str(tmp_path / "never"), "--dataset", "synthetic"]) == 2
    assert not (tmp_path / "never").exists()
    assert main(["data", "synth", "--out", str(tmp_path / "syn"), "--ids", "4"]) == 0
    assert main(["data", "check", str(tmp_path / "syn"), "--dataset", "synthetic"]) == 0
