"""``uvireid run RECIPE --sweep KEY=V1,V2``: one run per combination of values, named
after them, compared at the end; a failed run does not stop the others, and --resume
continues a sweep without touching its finished runs."""

from __future__ import annotations

import pytest
import yaml

from uvireid.cli import main
from uvireid.engine.sweep import parse_sweep, split_values, variants
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
    # two keys with the same last part: the whole keys; folder-unsafe characters: '-'
    plan = variants("x", parse_sweep(["stages.0.clusterer.eps=0.5", "stages.1.clusterer.eps=[1]"]))
    assert plan[0].name == "x_stages-0-clusterer-eps0.5_stages-1-clusterer-eps-1"
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
