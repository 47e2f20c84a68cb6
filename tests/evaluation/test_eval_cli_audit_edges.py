"""``uvireid eval --runs``: its rows, JSON and checks that a second mutation audit (NK)
found untested."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_fixtures import make_sysu_features

from uvireid import cli
from uvireid.evaluation import run_protocol
from uvireid.features import save_features


def _runs(tmp_path, n=2, **meta):
    f = make_sysu_features(seed=9)
    rng = np.random.default_rng(0)
    files = []
    for seed in range(n):
        feats = f.feats + (0.3 * seed) * rng.standard_normal(f.feats.shape).astype(np.float32)
        path = tmp_path / f"seed{seed}.npz"
        files.append(str(save_features(path, feats, f.pids, f.cams, f.modality, **meta)))
    return files


def test_eval_runs_rows_give_each_runs_spread_over_trials_and_epoch(tmp_path, capsys):
    """Each run's row: mean ± std over its trials as run_protocol gives them, and the
    run's epoch; the file names are in the JSON; the first file's epoch is not on the
    protocol line (it belongs to one run only)."""
    files = _runs(tmp_path, epoch=7, total_epochs=8, final=True)
    out = tmp_path / "runs.json"
    argv = ["eval", *files, "--protocol", "sysu-all", "--trials", "3", "--runs"]
    assert cli.main([*argv, "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "epoch 7" not in lines[0] and "2 runs" in lines[0]
    cols = ["R1", "R10", "mAP", "mINP"]
    for p in files:
        want = run_protocol(p, "sysu-all", trials=3)
        assert any(want.std[c] > 0.01 for c in cols)  # the trials differ
        cells = next(ln for ln in lines if ln.startswith(p))[len(p) :].split()
        assert cells[-1] == "7"
        got = [tuple(map(float, c.split("±"))) for c in cells[:-1]]
        assert [s for _, s in got] == pytest.approx([want.std[c] for c in cols], abs=0.006)
    data = json.loads(out.read_text())
    assert [r["file"] for r in data["runs"]] == files


@pytest.mark.parametrize("key", ["dataset", "split"])
def test_eval_runs_refuses_files_of_another_dataset_or_split(tmp_path, capsys, key):
    f = make_sysu_features(seed=9)
    files = [
        str(save_features(tmp_path / f"{v}.npz", f.feats, f.pids, f.cams, f.modality, **{key: v}))
        for v in ("a", "b")
    ]
    assert cli.main(["eval", *files, "--protocol", "sysu-all", "--runs", "--trials", "1"]) == 2
    assert f"differ in meta '{key}'" in capsys.readouterr().err


def test_eval_runs_meta_is_compared_only_where_both_files_record_it(tmp_path, capsys):
    """A meta entry one file records and the other does not is no difference ("where both
    record it"); extract's 'changes' against none (the run's own recipe) is one."""
    f = make_sysu_features(seed=9)

    def write(name, **meta):
        return str(save_features(tmp_path / name, f.feats, f.pids, f.cams, f.modality, **meta))

    plain = write("plain.npz")
    argv = ["--protocol", "sysu-all", "--runs", "--trials", "1"]
    assert cli.main(["eval", plain, write("head.npz", feature_head="pool"), *argv]) == 0
    capsys.readouterr()
    changed = write("changed.npz", changes={"data.height": "288 -> 384"})
    assert cli.main(["eval", plain, changed, *argv]) == 2
    assert "differ in meta 'changes'" in capsys.readouterr().err
