"""`uvireid eval`: options that reach the protocol, --runs refusals whatever the file
order, and the --runs table's columns."""

from __future__ import annotations

import numpy as np
import pytest
from eval_fixtures import make_sysu_features

from uvireid import cli
from uvireid.features import save_features


def _file(tmp_path, name, noise=0.0, seed=0, **meta):
    f = make_sysu_features(seed=9)
    rng = np.random.default_rng(seed)
    feats = f.feats + noise * rng.standard_normal(f.feats.shape).astype(np.float32)
    return str(save_features(tmp_path / name, feats, f.pids, f.cams, f.modality, f.paths, **meta))


def test_perm_file_reaches_the_official_sampler(tmp_path, capsys):
    """--perm-file is passed on: the refusal names the given file, not a missing option."""
    p = _file(tmp_path, "s.npz")
    perm = tmp_path / "no_such" / "rand_perm_cam.mat"
    rc = cli.main(
        ["eval", p, "--protocol", "sysu-all", "--sampler", "official", "--perm-file", str(perm)]
    )
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert str(perm) in err and "does not exist" in err
    # without it: the refusal says it is needed, by the flag's name (eval and rerank)
    for command in (["eval"], ["rerank", "--reranker", "cmfp"]):
        base = [*command, p, "--protocol", "sysu-all"]
        assert cli.main([*base, "--sampler", "official"]) == 2
        assert "--sampler official needs --perm-file" in capsys.readouterr().err
        assert cli.main([*base, "--trials", "0"]) == 2
        assert "--trials must be 1 or more, got 0" in capsys.readouterr().err


def test_runs_refuses_an_unfinished_first_file(tmp_path, capsys):
    """The unfinished-run refusal holds for every file, the first one included."""
    base = {"produced_by": "uvireid run demo", "total_epochs": 4}
    killed = _file(tmp_path, "killed.npz", epoch=1, final=False, **base)
    done = _file(tmp_path, "done.npz", noise=0.2, epoch=3, final=True, **base)
    rc = cli.main(["eval", killed, done, "--protocol", "sysu-all", "--runs", "--trials", "1"])
    out, err = capsys.readouterr()
    assert rc == 2 and "mean±std" not in out
    assert f"{killed} holds the features of epoch 1 of 4" in err


def test_runs_table_columns_line_up_with_long_paths(tmp_path, capsys):
    """Paths longer than the 'mean±std over runs' label widen the first column, so each
    row's first metric starts where the header's first metric name ends."""
    deep = tmp_path / ("a_rather_long_folder_name_for_a_seed_run" * 2)
    deep.mkdir()
    files = [_file(deep, f"seed{i}_features.npz", noise=0.2 * i, seed=i) for i in range(2)]
    assert all(len(f) > len("mean±std over runs") for f in files)
    rc = cli.main(["eval", *files, "--protocol", "sysu-all", "--trials", "1", "--runs"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(ln for ln in lines if ln.startswith("run "))
    width = max(map(len, files))
    # header: 'run' padded to the width of the longest path, two spaces, R1 right-aligned in 8
    assert header.index("R1") + 2 == width + 2 + 8
    for f in files:
        row = next(ln for ln in lines if ln.startswith(f))
        assert row[width : width + 2] == "  "
        # the R1 value right-aligned under its header (8 characters before the ±)
        assert row.index("±") == width + 2 + 8
    last = next(ln for ln in lines if ln.startswith("mean±std over runs"))
    assert last.index("±", len("mean±std")) == width + 2 + 8


# the flag refusals never send the user to a fix the protocol's next check refuses: on
# LLCM / RegDB --sampler official is wrong whatever --perm-file says, and on RegDB
# --trials is to be dropped, not raised to 1
_COMMANDS = (["eval"], ["rerank", "--reranker", "cmfp"])


@pytest.mark.parametrize("command", _COMMANDS)
@pytest.mark.parametrize("protocol", ["llcm-v2i", "regdb-v2i"])
def test_official_sampler_on_a_non_sysu_protocol(tmp_path, capsys, command, protocol):
    rc = cli.main(
        [*command, str(tmp_path / "f.npz"), "--protocol", protocol, "--sampler", "official"]
    )
    err = capsys.readouterr().err
    assert rc == 2
    # the advice "add --perm-file <SYSU-MM01 root>/exp/rand_perm_cam.mat" is wrong here:
    # with it the library refuses the official sampler for this dataset
    assert "needs --perm-file" not in err, err


@pytest.mark.parametrize("command", _COMMANDS)
def test_trials_zero_on_regdb_says_drop_it(tmp_path, capsys, command):
    rc = cli.main([*command, str(tmp_path / "f.npz"), "--protocol", "regdb-v2i", "--trials", "0"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "does not apply to RegDB" in err, err
