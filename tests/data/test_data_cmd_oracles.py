"""`uvireid data`: the true/false spellings of --official/--decode,
and `data synth` refusing bad numbers before making the --out folder."""

from __future__ import annotations

import argparse

import pytest

from uvireid.cli import main
from uvireid.cli.data_cmd import _bool


@pytest.mark.parametrize("text", ["true", "TRUE", " yes", "on", "1"])
def test_bool_true_spellings(text):
    assert _bool(text) is True


@pytest.mark.parametrize("text", ["false", "No", "off", "0 "])
def test_bool_false_spellings(text):
    assert _bool(text) is False


@pytest.mark.parametrize("text", ["maybe", "2", ""])
def test_bool_refuses_others(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected true or false"):
        _bool(text)


@pytest.mark.parametrize("ids", ["0", "-3"])
def test_synth_refuses_bad_ids_before_making_the_out_folder(tmp_path, ids, capsys):
    out = tmp_path / "deep" / "syn"
    rc = main(["data", "synth", "--out", str(out), "--ids", ids])
    assert rc == 2
    assert "error" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "deep").exists()
