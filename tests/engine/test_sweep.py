"""``uvireid run RECIPE --sweep KEY=V1,V2``: one run per combination of values, named
after them, compared at the end; a failed run does not stop the others, and --resume
continues a sweep without touching its finished runs."""

from __future__ import annotations

import re
import shlex
from types import SimpleNamespace

import pytest
import yaml

from uvireid.cli import main
from uvireid.engine import sweep as sweep_mod
from uvireid.engine.sweep import parse_sweep, split_values, sweep_command, variants
from uvireid.errors import ConfigError, TrainingError


def test_values_split_at_commas_outside_lists_and_quotes():
    assert split_values("0.5, 0.6,0.7") == ["0.5", "0.6", "0.7"]
    assert split_values("[20,60],[40,80]") == ["[20,60]", "[40,80]"]
    assert split_values("{type: a, k: 1},'x,y',\"p,q\"") == ["{type: a, k: 1}", "'x,y'", '"p,q"']
    assert split_values("1") == ["1"]


@pytest.mark.parametrize(
    "items,message",
    [
        (["clusterer.eps"], "not of the form KEY=V1,V2"),
        (["clusterer.eps=0.5,,0.6"], "empty value"),
        (["clusterer.eps=0.5,0.5"], "repeats a value"),
        (["seed=1,2", "seed=3"], "given twice"),
        (["name=a,b"], "named after its values"),
        (["train..lr=1,2"], "not a dotted key"),
        (["train.lr=[1,2"], "not valid YAML"),
    ],
)
def test_bad_sweeps_are_refused_with_the_form(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_sweep(items)


def test_variants_are_the_grid_named_after_their_values():
    sweep = parse_sweep(["stages.1.clusterer.eps=0.5,0.6", "seed=1,2,3"])
    plan = variants("salcr", sweep)
    assert [v.settings for v in plan] == [
        (("stages.1.clusterer.eps", e), ("seed", s)) for e in ("0.5", "0.6") for s in "123"
    ]
    assert plan[0].name == "salcr_eps0.5_seed1"
    assert plan[0].overrides == ["stages.1.clusterer.eps=0.5", "seed=1", "name=salcr_eps0.5_seed1"]
    # two keys with the same last part: the whole keys; folder-unsafe characters: '-', and
    # the settings' hash (the name lost characters)
    plan = variants("x", parse_sweep(["stages.0.clusterer.eps=0.5", "stages.1.clusterer.eps=[1]"]))
    assert re.fullmatch(
        r"x_stages-0-clusterer-eps0\.5_stages-1-clusterer-eps-1_[0-9a-f]{8}", plan[0].name
    )
    # values that differ only in dropped characters: numbered to stay apart
    plan = variants("x", parse_sweep(["train.lr_steps=[1],(1)"]))
    assert len({v.name for v in plan}) == 2


def _folders(tmp_path):
    return sorted(p for p in (tmp_path / "runs").iterdir() if (p / "config.yaml").exists())


def test_a_sweep_runs_each_value_compares_them_and_resumes(
    recipe_file, tmp_path, monkeypatch, capsys
):
    from uvireid.engine import runner

    argv = ["run", str(recipe_file), "--sweep", "clusterer.eps=0.5,0.6", "--no-report"]
    real = runner.run_recipe
    calls = []

    def flaky(cfg, **kw):
        calls.append(cfg["name"])
        if cfg["name"].endswith("eps0.6") and len(calls) < 3:
            raise TrainingError("loss is NaN (injected)")
        return real(cfg, **kw)

    monkeypatch.setattr(runner, "run_recipe", flaky)
    assert main(argv) == 2  # one failed run: the sweep goes on, and says so
    out, err = capsys.readouterr()
    assert "error: sweep run tiny_train_eps0.6 failed: TrainingError: loss is NaN" in err
    (done,) = _folders(tmp_path)
    assert done.name.startswith("tiny_train_eps0.5-")
    assert yaml.safe_load((done / "config.yaml").read_text())["clusterer"]["eps"] == 0.5
    assert "| tiny_train_eps0.5-" in out  # the comparison of the finished run
    before = (done / "results.json").read_bytes()
    # --resume: the finished run is left as it is, the failed one runs
    assert main([*argv, "--resume"]) == 0
    out, _ = capsys.readouterr()
    assert calls == [
        "tiny_train_eps0.5",
        "tiny_train_eps0.6",
        "tiny_train_eps0.5",
        "tiny_train_eps0.6",
    ]
    assert (done / "results.json").read_bytes() == before
    first, second = _folders(tmp_path)
    assert first == done and second.name.startswith("tiny_train_eps0.6-")
    assert yaml.safe_load((second / "config.yaml").read_text())["clusterer"]["eps"] == 0.6
    assert "| tiny_train_eps0.5-" in out and "| tiny_train_eps0.6-" in out
    assert "clusterer.eps: 0.5 | 0.6" in out  # what differs between them, said
    # one run per setting: no mean over the two settings (it would mean nothing)
    assert "each run has its own clusterer.eps: no mean over them." in out
    assert "mean ± std" not in out


def test_a_sweep_checks_every_value_before_the_first_run(recipe_file, tmp_path, capsys):
    argv = ["run", str(recipe_file), "--sweep", "clusterer.eps=0.5,-1", "--no-report"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "sweep run tiny_train_eps-1 (clusterer.eps=-1)" in err
    assert not (tmp_path / "runs").exists() or not _folders(tmp_path)
    # --dry-run lists the runs and checks each, running none
    assert main(["run", str(recipe_file), "--sweep", "seed=1,2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#   tiny_train_seed1: seed=1" in out and "#   tiny_train_seed2: seed=2" in out
    assert not (tmp_path / "runs").exists() or not _folders(tmp_path)


def test_sweep_refusals(recipe_file, tmp_path, monkeypatch, capsys):
    assert main(["run", str(recipe_file), "--sweep", "seed=1", "--allow-changes"]) == 2
    assert "--allow-changes does not go with --sweep" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", str(recipe_file), "--sweep", "seed=1"]) == 2
    assert "--sweep under torchrun" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    assert (
        main(["run", str(recipe_file), "clusterer.eps=0.3", "--sweep", "clusterer.eps=0.5,0.6"])
        == 2
    )
    assert "clusterer.eps is both set (clusterer.eps=0.3) and swept" in capsys.readouterr().err
    run = tmp_path / "somerun"
    run.mkdir()
    (run / "config.yaml").write_text(recipe_file.read_text())
    assert main(["run", str(run), "--sweep", "seed=1,2"]) == 2
    assert "is a run folder" in capsys.readouterr().err


def test_nested_lists_are_one_value():  # S03: depth reset at the first ']'
    assert split_values("[[1,2],[3]],[4]") == ["[[1,2],[3]]", "[4]"]
    assert split_values("{a: [1, 2]},{a: [3]}") == ["{a: [1, 2]}", "{a: [3]}"]


def test_a_key_is_read_without_its_spaces():  # P07
    assert parse_sweep([" seed =1,2"]) == [("seed", ["1", "2"])]


def test_names_squeeze_runs_of_unsafe_characters_and_stay_short():
    (v,) = variants("x", parse_sweep(["train.lr_steps=[1, 2]"]))
    assert re.fullmatch(r"x_lr_steps-1-2_[0-9a-f]{8}", v.name)
    long = "a" * 300
    plan = variants("x", parse_sweep([f"description={long},{long}b"]))
    assert all(len(p.name) <= 120 for p in plan) and len({p.name for p in plan}) == 2
    (v, *_) = variants("x", parse_sweep(["clusterer.eps=0.5", "seed=1,2"]))
    assert v.describe() == "clusterer.eps=0.5, seed=1"


def test_names_of_colliding_values_do_not_depend_on_their_order():
    """Positional suffixes bound a variant to another one's folder after the values were
    reordered or extended (audit EC): a hash of the settings instead, on the value whose
    name lost characters, in whatever sweep it is (audit MF)."""
    a = {v.settings: v.name for v in variants("x", parse_sweep(["description=a b,a-b"]))}
    b = {v.settings: v.name for v in variants("x", parse_sweep(["description=a-b,a b,c"]))}
    alone = {v.settings: v.name for v in variants("x", parse_sweep(["description=a b"]))}
    assert len(set(a.values())) == 2 and all(b[s] == n for s, n in a.items())
    assert re.fullmatch(r"x_descriptiona-b_[0-9a-f]{8}", a[(("description", "a b"),)])
    assert a[(("description", "a-b"),)] == "x_descriptiona-b"
    assert alone[(("description", "a b"),)] == a[(("description", "a b"),)]


def test_a_long_recipe_name_keeps_the_values_in_the_run_names():
    plan = variants("r" * 130, parse_sweep(["seed=1,2"]))
    assert [f"_seed{i}_" in p.name and len(p.name) <= 120 for i, p in enumerate(plan, 1)] == [
        True,
        True,
    ]


def test_the_continue_command_is_the_same_sweep_with_resume():  # C01, C02, C03
    cmd = sweep_command(
        "my recipe.yaml",
        ["data.root=/d/SYSU MM01"],
        ["clusterer.eps=0.5,0.6", "train.lr_steps=[1],[2]"],
    )
    assert shlex.split(cmd) == [
        "uvireid", "run", "my recipe.yaml", "data.root=/d/SYSU MM01",
        "--sweep", "clusterer.eps=0.5,0.6", "--sweep", "train.lr_steps=[1],[2]", "--resume",
    ]  # fmt: skip


def test_an_interrupt_stops_the_sweep_and_names_the_command_to_continue(
    recipe_file, monkeypatch, capsys
):
    from uvireid.engine import runner

    calls = []

    def fake(cfg, **kw):
        calls.append(cfg["name"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return SimpleNamespace(path=recipe_file.parent / cfg["name"])

    monkeypatch.setattr(runner, "run_recipe", fake)
    items = ["clusterer.eps=0.5,0.6,0.7"]
    assert (
        main(["run", str(recipe_file), *sum((["--sweep", i] for i in items), []), "--no-report"])
        == 130
    )
    assert calls == ["tiny_train_eps0.5", "tiny_train_eps0.6"]  # the third never starts
    err = capsys.readouterr().err
    command = sweep_command(str(recipe_file), [], items, no_report=True)
    assert f"the sweep continues with `{command}`" in err
    assert command.endswith("--no-report --resume")


def test_reports_follow_the_report_flag_and_runs_are_numbered_from_one(
    recipe_file, monkeypatch, capsys
):  # R10 (report inverted), R12 (numbered from 0), R18 (--no-report ignored by _sweep)
    from uvireid.engine import runner
    from uvireid.viz import report

    reported = []
    monkeypatch.setattr(
        runner, "run_recipe", lambda cfg, **kw: SimpleNamespace(path=f"/x/{cfg['name']}")
    )
    monkeypatch.setattr(report, "maybe_report", lambda path: reported.append(str(path)))
    sweep_mod.run_sweep(str(recipe_file), [], ["seed=1,2"], report=True, progress=False)
    assert reported == ["/x/tiny_train_seed1", "/x/tiny_train_seed2"]
    out = capsys.readouterr().out
    assert "# sweep run 1/2: tiny_train_seed1 (seed=1)" in out
    assert "# sweep run 2/2: tiny_train_seed2 (seed=2)" in out
    reported.clear()
    sweep_mod.run_sweep(str(recipe_file), [], ["seed=1,2"], report=False, progress=False)
    assert reported == []
    # through the CLI: --no-report reaches run_sweep
    seen = {}
    monkeypatch.setattr(sweep_mod, "run_sweep", lambda *a, **kw: (seen.update(kw), ([], {}))[1])
    assert main(["run", str(recipe_file), "--sweep", "seed=1,2", "--no-report"]) == 0
    assert seen["report"] is False


def test_an_override_key_with_spaces_still_conflicts_with_the_sweep(recipe_file, capsys):  # R02
    argv = ["run", str(recipe_file), "clusterer.eps =0.3", "--sweep", "clusterer.eps=0.5,0.6"]
    assert main(argv) == 2
    assert "clusterer.eps is both set" in capsys.readouterr().err


def test_a_value_the_recipe_refuses_names_its_sweep_run(recipe_file, capsys):  # R03
    # 'abc' is valid YAML (parse_sweep passes it) but not a seed: load_recipe refuses it
    argv = ["run", str(recipe_file), "--sweep", "seed=1,abc", "--dry-run"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "sweep run tiny_train_seedabc (seed=abc): " in err and "must be int" in err


def test_values_that_read_as_the_same_value_are_refused():
    with pytest.raises(ConfigError, match="repeats a value"):
        parse_sweep(["clusterer.eps=0.5,0.50,5e-1"])
    with pytest.raises(ConfigError, match="repeats a value"):
        parse_sweep(["train.lr_steps=[1],[ 1 ]"])


def test_an_override_of_a_parent_or_child_of_a_swept_key_is_refused(recipe_file, capsys, caplog):
    for override, swept in (
        ("clusterer={type: dbscan, eps: 0.3}", "clusterer.eps=0.5,0.6"),
        ("clusterer.eps=0.3", "clusterer=[{type: dbscan, eps: 0.5}]"),
    ):
        assert main(["run", str(recipe_file), override, "--sweep", swept, "--dry-run"]) == 2
        assert "is both set" in capsys.readouterr().err
    # a stage's own value of the swept key: that stage keeps it, and it is said
    argv = ["run", str(recipe_file), "stages.1.clusterer.eps=0.3"]
    assert main([*argv, "--sweep", "clusterer.eps=0.5,0.6", "--dry-run"]) == 0
    assert "stage 1 keeps its own value" in caplog.text
