"""``uvireid eval`` through ``uvireid.cli.main``."""

from __future__ import annotations

import importlib
import json

import pytest
from eval_fixtures import make_sysu_features

from uvireid import cli
from uvireid.evaluation import run_protocol
from uvireid.features import save_features


@pytest.fixture(autouse=True)
def importable_commands(monkeypatch):
    """Only sub-commands whose module imports (others are written in parallel)."""
    ok = []
    for name in cli.COMMANDS:
        try:
            importlib.import_module(f"uvireid.cli.{name}_cmd")
            ok.append(name)
        except ImportError:
            pass
    assert "eval" in ok
    monkeypatch.setattr(cli, "COMMANDS", ok)


@pytest.fixture
def features_file(tmp_path):
    f = make_sysu_features(seed=9)
    return save_features(
        tmp_path / "sysu.npz", f.feats, f.pids, f.cams, f.modality, f.paths, **f.meta
    )


def test_eval_prints_the_table_and_writes_json(tmp_path, features_file, capsys):
    out = tmp_path / "res" / "out.json"
    rc = cli.main(
        ["eval", str(features_file), "--protocol", "sysu-all", "--trials", "3", "--json", str(out)]
    )
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sysu-all | SYSU-MM01 | all-search | single-shot")
    assert lines[1].split()[:3] == ["trial", "R1", "R5"]
    assert lines[-1].startswith("mean±std")
    data = json.loads(out.read_text())
    expected = run_protocol(features_file, "sysu-all", trials=3)
    assert data["mean"] == pytest.approx(expected.mean)
    assert data["provenance"]["features_file"] == str(features_file)
    assert data["provenance"]["trials"] == 3 and len(data["per_trial"]) == 3


def test_json_dash_puts_the_json_alone_on_stdout_and_the_table_on_stderr(
    tmp_path, features_file, capsys, monkeypatch
):
    """Audit V (session 17): `--json -` wrote a file named '-', and `--json /dev/stdout`
    followed the table, so `| jq` failed."""
    monkeypatch.chdir(tmp_path)
    args = ["eval", str(features_file), "--protocol", "sysu-all", "--trials", "2", "--json", "-"]
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)  # stdout is the JSON and nothing else
    assert data["mean"] == pytest.approx(run_protocol(features_file, "sysu-all", trials=2).mean)
    assert err.splitlines()[0].startswith("sysu-all | SYSU-MM01")  # the table, on stderr
    assert not (tmp_path / "-").exists()
    args = ["rerank", str(features_file), "--reranker", "cmfp", "--k", "5"]
    assert cli.main([*args, "--protocol", "sysu-all", "--trials", "2", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert set(json.loads(out)) == {"baseline", "reranked", "summary", "failed"}
    assert "change:" in err and not (tmp_path / "-").exists()


def test_eval_errors_are_reported_not_raised(features_file, capsys):
    rc = cli.main(["eval", str(features_file), "--protocol", "sysu-everything"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "ProtocolError: unknown protocol 'sysu-everything'" in err
    rc = cli.main(["eval", str(features_file), str(features_file), "--protocol", "sysu-all"])
    err = capsys.readouterr().err
    assert rc == 2 and "only RegDB averages" in err and "add --runs" in err
    rc = cli.main(["eval", "missing.npz", "--protocol", "sysu-all"])
    assert rc == 2 and "FeatureFileError" in capsys.readouterr().err


def test_eval_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "uvireid eval sysu_test.npz --protocol sysu-all" in out
    assert "--perm-file" in out and "regdb-v2i" in out


def test_eval_runs_gives_each_run_and_the_spread_over_runs(tmp_path, capsys):
    """``--runs``: one row per run (its mean over trials, as ``run_protocol`` gives it for
    that file alone) and the mean ± population std of the runs' means."""
    import numpy as np

    f = make_sysu_features(seed=9)
    rng = np.random.default_rng(0)
    files = []
    for seed in range(3):  # three "seeds": the same test set, other features
        feats = f.feats + (0.3 * seed) * rng.standard_normal(f.feats.shape).astype(np.float32)
        path = tmp_path / f"seed{seed}.npz"
        files.append(str(save_features(path, feats, f.pids, f.cams, f.modality, f.paths)))
    out = tmp_path / "runs.json"
    args = ["eval", *files, "--protocol", "sysu-all", "--trials", "2", "--runs", "--json", str(out)]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    want = [run_protocol(p, "sysu-all", trials=2).mean for p in files]
    data = json.loads(out.read_text())
    assert [r["mean"] for r in data["runs"]] == [pytest.approx(w) for w in want]
    maps = np.array([w["mAP"] for w in want])
    assert data["mean"]["mAP"] == pytest.approx(maps.mean())
    assert data["std"]["mAP"] == pytest.approx(maps.std())
    # every metric, as in every other result (audit AY: R5 and R20 were missing)
    assert set(data["mean"]) == set(data["std"]) == set(data["runs"][0]["mean"])
    r5 = np.array([w["R5"] for w in want])
    assert data["mean"]["R5"] == pytest.approx(r5.mean())
    assert maps.std() > 0  # the runs differ: the spread is real
    last = [ln for ln in text.splitlines() if ln.startswith("mean±std over runs")][0]
    assert f"{maps.mean():.2f}±{maps.std():.2f}" in last
    assert all(p in text for p in files)
    # runs on different test sets are refused, as are RegDB and a single run
    other = make_sysu_features(seed=10)
    odd = save_features(tmp_path / "odd.npz", other.feats, other.pids, other.cams, other.modality)
    assert cli.main(["eval", files[0], str(odd), "--protocol", "sysu-all", "--runs"]) == 2
    assert "different test images" in capsys.readouterr().err
    assert cli.main(["eval", files[0], "--protocol", "sysu-all", "--runs"]) == 2
    assert "two runs or more" in capsys.readouterr().err
    assert cli.main(["eval", *files[:2], "--protocol", "regdb-v2i", "--runs"]) == 2
    assert "a RegDB run is ten split files" in capsys.readouterr().err
    assert cli.main(["eval", files[0], files[0], "--protocol", "sysu-all", "--runs"]) == 2
    assert "given twice" in capsys.readouterr().err


def test_eval_runs_refuses_files_of_different_methods(tmp_path, capsys):
    """``--runs`` averages seeds of one method: files whose feature dimension, recorded
    feature head or test images differ are refused before any protocol runs, naming
    what differs; the same images in another row order are one test set."""
    import numpy as np

    f = make_sysu_features(seed=9)
    a = save_features(tmp_path / "a.npz", f.feats, f.pids, f.cams, f.modality, f.paths)
    wider = np.concatenate([f.feats, f.feats[:, :3]], 1)
    b = save_features(tmp_path / "b.npz", wider, f.pids, f.cams, f.modality, f.paths)
    assert cli.main(["eval", str(a), str(b), "--protocol", "sysu-all", "--runs"]) == 2
    err = capsys.readouterr().err
    assert "differ in feature dimension" in err and f"{b}: {f.dim + 3}" in err
    heads = []
    for head in ("global", "part"):
        heads.append(
            save_features(
                tmp_path / f"{head}.npz",
                f.feats,
                f.pids,
                f.cams,
                f.modality,
                f.paths,
                feature_head=head,
            )
        )
    assert cli.main(["eval", *map(str, heads), "--protocol", "sysu-all", "--runs"]) == 2
    assert "differ in meta 'feature_head'" in capsys.readouterr().err
    # one label moved to another identity: other test images
    pids = f.pids.copy()
    pids[0] = pids.max() + 1
    c = save_features(tmp_path / "c.npz", f.feats, pids, f.cams, f.modality, f.paths)
    assert cli.main(["eval", str(a), str(c), "--protocol", "sysu-all", "--runs"]) == 2
    assert "different test images" in capsys.readouterr().err
    # the same images, rows reversed: accepted
    r = slice(None, None, -1)
    d = save_features(
        tmp_path / "d.npz", f.feats[r], f.pids[r], f.cams[r], f.modality[r], f.paths[r]
    )
    args = ["eval", str(a), str(d), "--protocol", "sysu-all", "--runs", "--trials", "1"]
    assert cli.main(args) == 0
    capsys.readouterr()


def test_eval_runs_refuses_an_unfinished_run_and_another_recipe(tmp_path, capsys):
    """Audit G (session 16): a killed run's epoch-1 features were averaged with a finished
    run's final ones as one more seed; so were runs of two recipes."""
    f = make_sysu_features(seed=9)

    def run_file(name, **meta):
        meta = {"produced_by": "uvireid run demo", "total_epochs": 4, "final": True, **meta}
        return str(save_features(tmp_path / name, f.feats, f.pids, f.cams, f.modality, **meta))

    done = run_file("done.npz", epoch=3)
    killed = run_file("killed.npz", epoch=1, final=False)
    argv = ["--protocol", "sysu-all", "--runs", "--trials", "1"]
    assert cli.main(["eval", done, killed, *argv]) == 2
    err = capsys.readouterr().err
    assert f"{killed} holds the features of epoch 1 of 4, not its run's final epoch" in err
    other = run_file("pgm.npz", epoch=3, produced_by="uvireid run pgm")
    assert cli.main(["eval", done, other, *argv]) == 2
    assert "differ in recipe (meta 'produced_by')" in capsys.readouterr().err
    longer = run_file("longer.npz", epoch=7, total_epochs=8)
    assert cli.main(["eval", done, longer, *argv]) == 2
    assert "differ in meta 'total_epochs'" in capsys.readouterr().err
    # a run's own file and one extracted from another finished run of the recipe: accepted
    extracted = run_file("x.npz", epoch=3, produced_by="uvireid extract runs/demo-2")
    assert cli.main(["eval", done, extracted, *argv]) == 0


def test_eval_runs_refuses_flipped_and_single_pass_runs_together(tmp_path, capsys):
    """Audit BD: files extracted with and without the flip were averaged as runs."""
    f = make_sysu_features(seed=9)
    files = []
    for i, flip in enumerate((True, False)):
        path = tmp_path / f"run{i}.npz"
        files.append(
            str(save_features(path, f.feats, f.pids, f.cams, f.modality, f.paths, test_flip=flip))
        )
    assert cli.main(["eval", *files, "--protocol", "sysu-all", "--trials", "2", "--runs"]) == 2
    assert "meta 'test_flip'" in capsys.readouterr().err


# --- audit BK: --json through links and pipes -------------------------------------------


def test_json_to_a_dev_fd_pipe_is_written(features_file):
    import os

    r, w = os.pipe()
    try:
        rc = cli.main(
            [
                "eval",
                str(features_file),
                "--protocol",
                "sysu-all",
                "--trials",
                "1",
                "--json",
                f"/dev/fd/{w}",
            ]
        )
        os.close(w)
        w = None
        text = os.read(r, 1 << 20).decode()
    finally:
        os.close(r)
        if w is not None:
            os.close(w)
    assert rc == 0
    assert '"provenance"' in text


def test_json_through_a_dangling_link_is_no_traceback(tmp_path, features_file, capsys):
    link = tmp_path / "latest.json"
    link.symlink_to(tmp_path / "gone" / "results.json")
    rc = cli.main(
        ["eval", str(features_file), "--protocol", "sysu-all", "--trials", "1", "--json", str(link)]
    )
    assert rc == 2  # refused before the evaluation, with the reason
    assert "which does not exist" in capsys.readouterr().err


def test_eval_passes_shot_stable_and_feature_head_to_the_protocol(tmp_path, capsys):
    """`--shot multi`, `--stable` and `--feature-head` change what is computed or recorded;
    the CLI's numbers must equal the library's with the same options."""
    f = make_sysu_features(seed=9)
    meta = {k: v for k, v in f.meta.items() if k != "feature_head"}  # the flag labels it
    path = save_features(tmp_path / "s.npz", f.feats, f.pids, f.cams, f.modality, f.paths, **meta)
    out = tmp_path / "o.json"
    argv = [
        "eval",
        str(path),
        "--protocol",
        "sysu-all",
        "--trials",
        "2",
        "--shot",
        "multi",
        "--stable",
        "--feature-head",
        "pool",
        "--json",
        str(out),
    ]
    assert cli.main(argv) == 0
    data = json.loads(out.read_text())
    want = run_protocol(path, "sysu-all", trials=2, shot="multi", stable=True, feature_head="pool")
    single = run_protocol(path, "sysu-all", trials=2)
    assert want.mean["mAP"] != pytest.approx(single.mean["mAP"])  # the option matters here
    assert data["mean"] == pytest.approx(want.mean)
    assert data["provenance"]["shot"] == "multi"
    assert (
        data["provenance"]["ranking"] == want.provenance["ranking"] != single.provenance["ranking"]
    )
    assert data["provenance"]["feature_head"] == "pool"
    assert "single-shot" not in capsys.readouterr().out.splitlines()[0]


def test_eval_runs_rows_print_each_metric_under_its_header(tmp_path, capsys):
    """Each run's row and the mean±std row hold the metrics named by the header, in
    its order (the existing test reads only the mAP of the last row)."""
    import numpy as np

    f = make_sysu_features(seed=9)
    rng = np.random.default_rng(0)
    files = []
    for seed in range(3):
        feats = f.feats + (0.3 * seed) * rng.standard_normal(f.feats.shape).astype(np.float32)
        path = tmp_path / f"seed{seed}.npz"
        files.append(str(save_features(path, feats, f.pids, f.cams, f.modality, f.paths)))
    argv = ["eval", *files, "--protocol", "sysu-all", "--trials", "2", "--runs"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    cols = next(ln for ln in lines if ln.startswith("run ")).split()[1:-1]
    assert cols == ["R1", "R10", "mAP", "mINP"]
    want = [run_protocol(p, "sysu-all", trials=2).mean for p in files]
    for p, w in zip(files, want):
        cells = next(ln for ln in lines if ln.startswith(p))[len(p) :].split()[:-1]
        got = [float(c.split("±")[0]) for c in cells]
        assert got == pytest.approx([w[c] for c in cols], abs=0.006)
    cells = next(ln for ln in lines if ln.startswith("mean±std over runs")).split()[3:]
    table = np.array([[w[c] for c in cols] for w in want])
    got = [tuple(map(float, c.split("±"))) for c in cells]
    for (m, s), wm, ws in zip(got, table.mean(0), table.std(0)):
        assert m == pytest.approx(wm, abs=0.006) and s == pytest.approx(ws, abs=0.006)
