"""`uvireid compare`: run folders side by side, the mean over them, and what keeps them from
being comparable (the manifest's and the results' provenance)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from train_fixtures import copy_run, edit_json, eval_seed_runs, write_eval_recipe

from uvireid.cli import main
from uvireid.config import load_recipe
from uvireid.engine.compare import compare_runs, format_comparison
from uvireid.engine.runner import run_recipe
from uvireid.errors import ConfigError


@pytest.fixture
def three_seeds(tmp_path):
    """Three evaluation-only runs of one recipe with seeds 0, 1, 2 (the starting
    backbone's random weights differ, so do the numbers)."""
    return eval_seed_runs(tmp_path, range(3))


def test_three_seeds_are_comparable_and_averaged(three_seeds, capsys):
    report = compare_runs(three_seeds)
    assert report["comparable"] and report["not_comparable"] == []
    assert [r["seed"] for r in report["runs"]] == [0, 1, 2]
    want = {}
    for folder in three_seeds:  # the runs' own results.json, read here
        for metric, value in json.loads((folder / "results.json").read_text())["none"][
            "mean"
        ].items():
            want.setdefault(metric, []).append(value)
    for metric in ("R1", "mAP", "mINP"):
        agg = report["aggregate"]["none"][metric]
        vals = np.array(want[metric])
        assert agg["mean"] == pytest.approx(vals.mean(), rel=1e-12)
        assert agg["std"] == pytest.approx(vals.std(ddof=0), rel=1e-9, abs=1e-12)
        assert (agg["min"], agg["max"], agg["n"]) == (vals.min(), vals.max(), 3)
    assert len(set(want["mAP"])) > 1  # the seeds did change the numbers
    # only the seed differs: it is a column, not a difference
    assert report["differences"] == {}
    assert main(["compare", str(three_seeds[0].parent)]) == 0  # a folder of runs
    out = capsys.readouterr().out
    assert out.count("| tiny-") == 3 and "mean ± std [min, max] over 3 runs" in out
    assert "comparable: the same test set" in out


def test_another_protocol_or_test_set_is_not_comparable(three_seeds, tmp_path, capsys):
    a, b = three_seeds[:2]
    res = json.loads((b / "results.json").read_text())
    res["none"]["provenance"]["trials"] = 10
    (b / "results.json").write_text(json.dumps(res))
    man = json.loads((b / "manifest.json").read_text())
    man["dataset"]["sha1"] = "0" * 40
    man["world_size"] = 4
    (b / "manifest.json").write_text(json.dumps(man))
    report = compare_runs([a, b])
    assert not report["comparable"]
    said = "\n".join(report["not_comparable"])
    assert "dataset.sha1 differs" in said and "evaluated with another trials: [2, 10]" in said
    assert report["differences"]["world_size"] == [1, 4]
    assert main(["compare", str(a), str(b), "--strict", "--json", str(tmp_path / "c.json")]) == 1
    out = capsys.readouterr().out
    assert "NOT COMPARABLE" in out and "world_size: 1 | 4" in out
    assert json.loads((tmp_path / "c.json").read_text())["comparable"] is False


def test_a_changed_setting_is_listed_and_an_unfinished_run_shows_its_last_evaluation(
    three_seeds, tmp_path
):
    a = three_seeds[0]
    b = tmp_path / "runs" / "tiny-20990101-000000"
    shutil.copytree(three_seeds[1], b)
    cfg = (b / "config.yaml").read_text().replace("height: 32", "height: 48")
    (b / "config.yaml").write_text(cfg)
    # b "was killed": no results.json; its metrics hold an evaluation at epoch 3
    (b / "results.json").unlink()
    record = {"epoch": 3, "eval": {"none": {"mean": {"R1": 12.5, "mAP": 7.25}, "std": {}}}}
    (b / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    report = compare_runs([a, b])
    assert report["differences"]["train.height"] == [32, 48]
    row = report["runs"][1]
    assert row["source"] == "metrics.jsonl, epoch 3" and row["epochs"] == 4
    assert row["results"]["none"]["mAP"] == 7.25 and "mINP" not in row["results"]["none"]
    assert report["aggregate"]["none"]["mINP"]["n"] == 1
    # two settings of one run each: no mean over them is printed
    assert [g["settings"] for g in report["groups"]["none"]] == [
        {"train.height": 32},
        {"train.height": 48},
    ]
    out = format_comparison(report)
    assert "each run has its own train.height: no mean over them." in out
    assert "mean ± std" not in out


def test_a_folder_that_is_not_a_run_is_named(tmp_path):
    with pytest.raises(ConfigError, match="is not a run folder"):
        compare_runs([tmp_path])
    assert main(["compare", str(tmp_path / "nowhere")]) == 2


def test_each_run_shows_its_own_mean_and_std_over_trials(three_seeds):
    report = compare_runs(three_seeds)
    for folder, row in zip(three_seeds, report["runs"]):
        res = json.loads((folder / "results.json").read_text())["none"]
        for metric in ("R1", "R10", "R20", "mAP", "mINP"):
            assert row["results"]["none"][metric] == res["mean"][metric]
            assert row["results"]["none"][f"{metric}_std"] == res["std"][metric]
    assert any(row["results"]["none"]["mAP_std"] > 0 for row in report["runs"])


@pytest.mark.parametrize(
    "field,value",
    [
        ("feature_head", "pool"),
        ("sampler", "official"),
        ("shot", "multi"),
        ("mode", "indoor"),
        ("direction", "visible->infrared"),
        ("num_gallery", 1),
        ("reranker", "cmfp(k=9)"),
    ],
)
def test_every_protocol_field_of_the_provenance_makes_runs_not_comparable(
    three_seeds, field, value
):
    a, b = three_seeds[:2]
    edit_json(b / "results.json", lambda r: r["none"]["provenance"].__setitem__(field, value))
    report = compare_runs([a, b])
    assert not report["comparable"]
    assert any(f"another {field}:" in why for why in report["not_comparable"])


def test_the_last_evaluation_of_an_unfinished_run_is_shown(three_seeds, tmp_path):
    b = tmp_path / "runs" / "tiny-20990101-000000"
    shutil.copytree(three_seeds[1], b)
    (b / "results.json").unlink()
    records = [
        {"epoch": 0, "eval": {"none": {"mean": {"mAP": 5.0}, "std": {}}}},
        {"epoch": 1},
        {"epoch": 2, "eval": {"none": {"mean": {"mAP": 9.0}, "std": {}}}},
        {"epoch": 3},
    ]
    (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    row = compare_runs([b])["runs"][0]
    assert row["results"]["none"]["mAP"] == 9.0 and row["source"] == "metrics.jsonl, epoch 2"


def test_a_run_without_any_result_makes_them_not_comparable(three_seeds, tmp_path):
    b = tmp_path / "runs" / "tiny-20990101-000000"
    shutil.copytree(three_seeds[1], b)
    (b / "results.json").unlink()
    (b / "metrics.jsonl").write_text(json.dumps({"epoch": 0}) + "\n")
    report = compare_runs([three_seeds[0], b])
    assert not report["comparable"]
    assert any(b.name in why for why in report["not_comparable"])


def test_another_per_batchnorm_batch_is_a_difference(three_seeds):
    a, b = three_seeds[:2]
    stages = [{"stage": "s", "per_gpu": 64, "per_batchnorm": 64, "global": 64}]
    for folder, per_bn in ((a, 64), (b, 32)):
        edit_json(
            folder / "manifest.json",
            lambda m, n=per_bn: m.__setitem__(
                "batch", {"stages": [{**stages[0], "per_batchnorm": n}]}
            ),
        )
    assert compare_runs([a, b])["differences"]["batch.s.per_batchnorm"] == [64, 32]


def test_an_unfinished_run_is_not_averaged_as_comparable(three_seeds, tmp_path):
    """A run killed after its first evaluation (epoch 0 of 2) beside a finished one: the
    mean mixes a half-trained model with a trained one, which --strict must not pass."""
    a = three_seeds[0]
    b = tmp_path / "runs" / "tiny-20990101-000000"
    shutil.copytree(three_seeds[1], b)
    (b / "results.json").unlink()
    record = {"epoch": 0, "eval": {"none": {"mean": {"mAP": 7.25}, "std": {}}}}
    (b / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    report = compare_runs([a, b])
    assert not report["comparable"]
    assert any(
        "did not finish" in why or "metrics.jsonl" in why for why in report["not_comparable"]
    )


def test_regdb_runs_of_distinct_splits_are_the_protocols_trials(tmp_path):
    """RegDB's figure is the mean over its splits, one run per split (README: `uvireid run
    salcr_regdb data.split=$s`): their test sets differ by design. The mean equals what
    `uvireid eval` gives over the runs' features files, and --strict must not fail on it;
    two runs of one split with another split's run are still refused."""
    from train_fixtures import write_eval_recipe

    from uvireid.config import load_recipe
    from uvireid.data.fixtures import make_regdb_tree
    from uvireid.engine.runner import run_recipe

    root = make_regdb_tree(tmp_path / "RegDB", ids=8, images_per=2, splits=(1, 2))
    path = write_eval_recipe(
        tmp_path,
        data={"type": "regdb", "root": str(root), "split": 1},
        evaluation={"protocol": "regdb-v2i", "trials": 1},
    )
    runs = [run_recipe(load_recipe(path, [f"data.split={s}"]), progress=False).path for s in (1, 2)]
    report = compare_runs(runs)
    assert report["comparable"], report["not_comparable"]
    maps = [json.loads((r / "results.json").read_text())["none"]["mean"]["mAP"] for r in runs]
    assert report["aggregate"]["none"]["mAP"]["mean"] == pytest.approx(np.mean(maps))
    assert len(report["groups"]["none"]) == 1  # the splits are one setting's trials
    again = run_recipe(load_recipe(path, ["data.split=1", "seed=5"]), progress=False).path
    assert not compare_runs([*runs, again])["comparable"]  # split 1 twice: not the protocol
    # a sweep of a setting over the splits (audit FD: each (setting, split) was its own
    # group, and the runs not comparable): a setting's runs are its trials
    other = []
    for run in runs:
        copy = tmp_path / "eps" / f"{run.name}-eps"
        shutil.copytree(run, copy)
        cfg = (copy / "config.yaml").read_text().replace("height: 32", "height: 48")
        (copy / "config.yaml").write_text(cfg)
        other.append(copy)
    report = compare_runs([*runs, *other])
    assert report["comparable"], report["not_comparable"]
    got = [(g["settings"], len(g["runs"])) for g in report["groups"]["none"]]
    assert got == [({"train.height": 32}, 2), ({"train.height": 48}, 2)]
    # the same splits in each setting, or they are not the protocol's trials
    assert not compare_runs([*runs, other[0]])["comparable"]


def test_a_table_only_some_runs_have_is_said_and_averaged_over_those(tmp_path, capsys):
    """One run evaluated with CMFP as well, one without: the 'cmfp' table's summary is over
    the one run that has it, and the output says which run has no such table."""
    plain = write_eval_recipe(tmp_path / "a")
    with_cmfp = write_eval_recipe(tmp_path / "b", reranker={"type": "cmfp", "k": 3})
    a = run_recipe(load_recipe(plain), progress=False).path
    b = run_recipe(load_recipe(with_cmfp), progress=False).path
    report = compare_runs([a, b])
    names = {rr for row in report["runs"] for rr in row["results"]}
    cmfp = next(n for n in names if n != "none")
    assert report["aggregate"][cmfp]["mAP"]["n"] == 1
    assert report["aggregate"]["none"]["mAP"]["n"] == 2
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert f"(no '{cmfp}' table in {a.name}: not evaluated with it)" in out
    assert "over 1 run |" in out and "over 2 runs |" in out


def _height_48(three_seeds, tmp_path):
    """Copies of the first two seeds' runs as runs of train.height 48 (a sweep's other
    setting)."""
    out = []
    for seed_run, name in ((three_seeds[0], "h48-a"), (three_seeds[1], "h48-b")):
        b = tmp_path / "sweep" / name
        shutil.copytree(seed_run, b)
        cfg = (b / "config.yaml").read_text().replace("height: 32", "height: 48")
        (b / "config.yaml").write_text(cfg)
        out.append(b)
    return out


def test_a_sweep_of_a_setting_and_seeds_is_summarised_per_setting(three_seeds, tmp_path, capsys):
    """`--sweep train.height=32,48 --sweep seed=...`: the summary rows are per height, each
    over its own seeds (a mean over both heights would mean nothing); a run that differs
    only in data.root or its evaluation's re-ranker is of the same setting."""
    runs = [*three_seeds, *_height_48(three_seeds, tmp_path)]
    moved = tmp_path / "sweep" / "moved"  # the same setting, its data elsewhere
    shutil.copytree(three_seeds[2], moved)
    cfg = (moved / "config.yaml").read_text()
    assert "root: " in cfg
    (moved / "config.yaml").write_text(cfg.replace("root: ", "root: /elsewhere", 1))
    runs.append(moved)
    maps = [json.loads((r / "results.json").read_text())["none"]["mean"]["mAP"] for r in runs]
    report = compare_runs(runs)
    assert [(g["settings"], len(g["runs"])) for g in report["groups"]["none"]] == [
        ({"train.height": 32}, 4),
        ({"train.height": 48}, 2),
    ]
    for group, members in zip(report["groups"]["none"], ([0, 1, 2, 5], [3, 4])):
        assert group["runs"] == [str(runs[i]) for i in members]
        agg = group["aggregate"]["none"]["mAP"]
        vals = np.array([maps[i] for i in members])
        assert agg["mean"] == pytest.approx(vals.mean(), rel=1e-12)
        assert agg["std"] == pytest.approx(vals.std(), rel=1e-9, abs=1e-12)
        assert (agg["min"], agg["max"], agg["n"]) == (vals.min(), vals.max(), len(vals))
    assert report["aggregate"]["none"]["mAP"]["n"] == 6  # the JSON keeps the all-runs figures
    assert main(["compare", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    assert "over 4 runs, train.height=32 |" in out and "over 2 runs, train.height=48 |" in out
    assert "over 6 runs" not in out
    assert "the runs differ in train.height: each setting is summarised over its own runs" in out


def test_the_best_setting_is_named_only_for_runs_on_the_validation_ids(three_seeds, tmp_path):
    """A sweep of data.validation runs ends with the setting of the highest mean mAP (the
    first of equal ones); runs on the test set get no 'best' (a setting chosen on the test
    ids is tuned to them)."""
    runs = [*three_seeds, *_height_48(three_seeds, tmp_path)]
    assert compare_runs(runs)["best_on_validation"] is None  # the test set
    tuned = "choosing one by these figures tunes it on the test set"
    assert tuned in format_comparison(compare_runs(runs))  # several settings: a warning
    assert tuned not in format_comparison(compare_runs(three_seeds))  # one setting, seeds
    maps = [20.0, 10.0, 30.0, 24.0, 25.0]  # height 32: mean 20; height 48: 24.5
    for run, value in zip(runs, maps):

        def val(r, value=value):
            r["none"]["provenance"]["dataset"] = "SYSU-MM01 validation ids"
            r["none"]["mean"]["mAP"] = value

        edit_json(run / "results.json", val)
    report = compare_runs(runs)
    assert report["best_on_validation"] == {
        "settings": {"train.height": 48},
        "mAP": pytest.approx(np.mean(maps[3:])),
        "runs": 2,
    }
    out = format_comparison(report)
    assert "best on the validation ids (mean mAP of the 'none' table): train.height=48 " in out
    assert tuned not in out
    edit_json(runs[3] / "results.json", lambda r: r["none"]["mean"].__setitem__("mAP", 15.0))
    assert compare_runs(runs)["best_on_validation"]["settings"] == {"train.height": 32}
    edit_json(runs[3] / "results.json", lambda r: r["none"]["mean"].__setitem__("mAP", 25.0))
    assert compare_runs(runs)["best_on_validation"]["settings"] == {"train.height": 48}
    edit_json(runs[0] / "results.json", lambda r: r["none"]["mean"].__setitem__("mAP", 35.0))
    assert compare_runs(runs)["best_on_validation"]["settings"] == {"train.height": 32}  # 25=25
    edit_json(
        runs[4] / "results.json",
        lambda r: r["none"]["provenance"].__setitem__("dataset", "SYSU-MM01"),
    )
    report = compare_runs(runs)
    assert report["best_on_validation"] is None and not report["comparable"]
    assert tuned not in format_comparison(report)  # not comparable: said otherwise


def test_an_evaluation_setting_that_changes_the_numbers_is_a_setting(three_seeds, tmp_path):
    """Audit FD: a sweep of evaluation.flip was averaged as one setting, and comparable;
    the re-ranker's settings group the re-ranked tables only, and 1 and 1.0 are one value."""
    a, b = three_seeds[:2]
    flipped = tmp_path / "sweep" / "noflip"
    shutil.copytree(b, flipped)
    cfg = yaml.safe_load((flipped / "config.yaml").read_text())
    cfg["evaluation"]["flip"] = False
    (flipped / "config.yaml").write_text(yaml.safe_dump(cfg))
    meta = json.loads((a / "results.json").read_text())["none"]["provenance"]["features_meta"]
    assert meta["test_flip"] is True
    edit_json(
        flipped / "results.json",
        lambda r: r["none"]["provenance"]["features_meta"].__setitem__("test_flip", False),
    )
    report = compare_runs([a, b, flipped])
    got = [(g["settings"], len(g["runs"])) for g in report["groups"]["none"]]
    assert got == [({"evaluation.flip": True}, 2), ({"evaluation.flip": False}, 1)]
    assert any(
        "extracted with another test_flip: [True, True, False]" in r
        for r in report["not_comparable"]
    )
    # settings that change no number: one group
    moved = tmp_path / "sweep" / "moved"
    shutil.copytree(b, moved)
    cfg = yaml.safe_load((moved / "config.yaml").read_text())
    cfg["evaluation"]["at_start"] = not cfg["evaluation"].get("at_start", False)
    cfg["train"]["image_cache"] = str(tmp_path / "elsewhere")
    cfg["train"]["height"] = 32.0  # YAML's 32.0 is the 32 of the others
    (moved / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert len(compare_runs([a, b, moved])["groups"]["none"]) == 1
    # a re-ranker's settings: another setting of its table, not of the plain one
    k9 = tmp_path / "sweep" / "k9"
    shutil.copytree(b, k9)
    cfg = yaml.safe_load((k9 / "config.yaml").read_text())
    cfg["reranker"] = {"type": "cmfp", "k": 9}
    (k9 / "config.yaml").write_text(yaml.safe_dump(cfg))
    k3 = tmp_path / "sweep" / "k3"
    shutil.copytree(b, k3)
    cfg["reranker"] = {"type": "cmfp", "k": 3}
    (k3 / "config.yaml").write_text(yaml.safe_dump(cfg))
    for run in (k9, k3):
        edit_json(run / "results.json", lambda r: r.__setitem__("cmfp", r["none"]))
    report = compare_runs([k9, k3])
    assert len(report["groups"]["none"]) == 1
    assert [g["settings"] for g in report["groups"]["cmfp"]] == [
        {"reranker.k": 9},
        {"reranker.k": 3},
    ]


def test_group_edges(three_seeds, tmp_path):
    """Audit FD's survivors: a run without results is a member of its group but not
    counted; a stage's copy of a setting is hidden only where it copies it in every run;
    a summary counts the runs of the metric most runs have (an older file without mINP)
    and averages means, not the trials' stds; another world size is another setting; the
    note says which settings differ only when some setting has several runs."""
    a, b, c = three_seeds
    empty = copy_run(c, tmp_path / "empty")
    (empty / "results.json").unlink()
    (empty / "metrics.jsonl").write_text("")
    report = compare_runs([a, b, empty])
    (group,) = report["groups"]["none"]
    assert group["runs"] == [str(a), str(b)]  # a run without any table is in none of them
    assert group["aggregate"]["none"]["mAP"]["n"] == 2 and not report["comparable"]

    def stages(top, values):
        def edit(cfg):
            cfg["clusterer"] = {"type": "dbscan", "eps": top}
            cfg["stages"] = [
                {"name": f"s{i}", "clusterer": {"type": "dbscan", "eps": v}}
                for i, v in enumerate(values)
            ]

        return edit

    s1 = copy_run(a, tmp_path / "s1", config=stages(0.5, [0.5, 0.5]))
    s2 = copy_run(b, tmp_path / "s2", config=stages(0.6, [0.6, 0.7]))
    assert [g["settings"] for g in compare_runs([s1, s2])["groups"]["none"]] == [
        {"clusterer.eps": 0.5, "stages.1.clusterer.eps": 0.5},
        {"clusterer.eps": 0.6, "stages.1.clusterer.eps": 0.7},
    ]

    def drop(res):
        for table in res.values():
            table["mean"].pop("mINP", None)

    older = copy_run(a, tmp_path / "older", results=drop)
    report = compare_runs([a, b, older])
    agg = report["groups"]["none"][0]["aggregate"]["none"]
    assert (agg["R1"]["n"], agg["mINP"]["n"]) == (3, 2)
    assert set(agg) == {"R1", "R10", "R20", "mAP", "mINP"}
    assert "over 3 runs |" in format_comparison(report)

    ddp = copy_run(b, tmp_path / "ddp", manifest=lambda m: m.__setitem__("world_size", 2))
    report = compare_runs([a, ddp])
    assert [g["settings"] for g in report["groups"]["none"]] == [
        {"world_size": 1},
        {"world_size": 2},
    ]
    assert report["differences"]["world_size"] == [1, 2]

    h48 = copy_run(a, tmp_path / "h48", config=lambda cfg: cfg["train"].__setitem__("height", 48))
    text = format_comparison(compare_runs([a, b, h48]))
    assert "over 2 runs, train.height=32 |" in text and "train.height=48 |" not in text
    assert "the runs differ in train.height: each setting is summarised over its own" in text
    assert "each run has its own" not in text
    plain = format_comparison(compare_runs([a, b]))
    assert "the runs differ in" not in plain and "each run has its own" not in plain
