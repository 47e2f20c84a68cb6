"""Mutation audit OC: ``uvireid compare`` on hand-made run folders (config.yaml, manifest.json,
results.json, metrics.jsonl), its numbers recomputed by hand from those files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from uvireid.cli import main
from uvireid.engine.compare import compare_runs, format_comparison


def make_run(
    root,
    name,
    seed=1,
    *,
    cfg=None,
    manifest=None,
    results=None,
    mean=None,
    prov=None,
    metrics=None,
    meta=None,
):
    """A run folder as ``uvireid run`` leaves it, written by hand."""
    d = Path(root) / name
    d.mkdir(parents=True)
    config = {"name": "t", "seed": seed, "train": {"lr": 0.1}}
    for key, value in (cfg or {}).items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    man = {"seed": seed, "world_size": 1, "dataset": {"dataset": "sysu", "sha1": "abc"}}
    man.update(manifest or {})
    (d / "manifest.json").write_text(json.dumps(man))
    if results is None and mean is not None:
        provenance = {"protocol": "sysu-all", "dataset": "sysu", **(prov or {})}
        if meta is not None:
            provenance["features_meta"] = meta
        results = {
            "none": {
                "mean": mean,
                "std": {k: 0.25 * (i + 1) for i, k in enumerate(mean)},
                "provenance": provenance,
            }
        }
    if results is not None:
        (d / "results.json").write_text(json.dumps(results))
    if metrics is not None:
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    return d


def naive_stats(values):
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def test_table_and_aggregate_are_the_files_numbers_and_population_stats(tmp_path):
    means = [
        {"R1": 50, "mAP": 40.5, "mINP": 20.0},  # an integer, as another writer's JSON has it
        {"R1": 54.25, "mAP": 44.0, "mINP": 21.5},
        {"R1": 57.0, "mAP": 41.0},  # no mINP: averaged over the runs that have it
    ]
    for i, m in enumerate(means):
        make_run(tmp_path, f"r{i}", seed=i, mean=m)
    report = compare_runs([tmp_path])
    assert report["comparable"], report["not_comparable"]
    assert [Path(r["run"]).name for r in report["runs"]] == ["r0", "r1", "r2"]
    for row, m in zip(report["runs"], means):
        for i, (k, v) in enumerate(m.items()):
            assert row["results"]["none"][k] == pytest.approx(v)
            assert row["results"]["none"][f"{k}_std"] == pytest.approx(0.25 * (i + 1))
    agg = report["aggregate"]["none"]
    for metric in ("R1", "mAP", "mINP"):
        values = [float(m[metric]) for m in means if metric in m]
        for key, value in naive_stats(values).items():
            assert agg[metric][key] == pytest.approx(value), (metric, key)
    assert "R10" not in agg
    # one group (only seeds differ), its aggregate the same as the whole one
    (group,) = report["groups"]["none"]
    assert group["settings"] == {} and len(group["runs"]) == 3
    assert group["aggregate"]["none"] == agg
    assert "seed" not in report["differences"]  # the seed is a column, not a difference
    text = format_comparison(report)
    r1 = naive_stats([50.0, 54.25, 57.0])
    assert f"{r1['mean']:.2f} ± {r1['std']:.2f} [{r1['min']:.2f}, {r1['max']:.2f}]" in text
    assert "over 3 runs" in text


def test_a_sweep_is_summarised_per_setting_by_hand(tmp_path):
    # lr 0.1 (x2 seeds, one written 0.1 and one as the same number) and lr 1 (1 and 1.0:
    # one setting, as != has it)
    specs = [("a", 0.1, 1, 50.0), ("b", 0.1, 2, 52.0), ("c", 1, 1, 30.0), ("d", 1.0, 2, 36.0)]
    for name, lr, seed, r1 in specs:
        make_run(tmp_path, name, seed, cfg={"train": {"lr": lr}}, mean={"R1": r1, "mAP": r1 / 2})
    report = compare_runs([tmp_path])
    groups = report["groups"]["none"]
    assert len(groups) == 2
    assert [len(g["runs"]) for g in groups] == [2, 2]
    assert [g["settings"]["train.lr"] for g in groups] == [0.1, 1]
    for g, values in zip(groups, ([50.0, 52.0], [30.0, 36.0])):
        for key, value in naive_stats(values).items():
            assert g["aggregate"]["none"]["R1"][key] == pytest.approx(value)
        assert "R1_std" not in g["aggregate"]["none"]
    text = format_comparison(report)
    assert "the runs differ in train.lr" in text
    assert "over 2 runs, train.lr=0.1" in text and "over 2 runs, train.lr=1" in text


def test_the_best_setting_on_validation_ids_is_the_first_of_equal_means(tmp_path):
    prov = {"dataset": "sysu validation ids"}
    for name, lr, r in (("a", 0.1, 30.0), ("b", 0.2, 40.0), ("c", 0.3, 40.0)):
        make_run(tmp_path, name, cfg={"train": {"lr": lr}}, mean={"mAP": r}, prov=prov)
    best = compare_runs([tmp_path])["best_on_validation"]
    assert best == {"settings": {"train.lr": 0.2}, "mAP": 40.0, "runs": 1}
    # one run on the test set: no setting is chosen on it
    make_run(tmp_path, "d", cfg={"train": {"lr": 0.4}}, mean={"mAP": 50.0})
    report = compare_runs([tmp_path])
    assert report["best_on_validation"] is None


def test_an_unfinished_run_shows_its_last_evaluation_and_its_epochs(tmp_path):
    make_run(tmp_path, "done", mean={"R1": 50.0})
    records = [
        {"epoch": 0, "eval": {"none": {"mean": {"R1": 10.0}}}},
        {"epoch": 1, "eval": {"none": {"mean": {"R1": 20.0}}}},
        {"epoch": 2, "loss": 1.0},
    ]
    d = make_run(tmp_path, "killed", seed=2, metrics=records)
    with open(d / "metrics.jsonl", "a") as fh:  # a line the kill cut short
        fh.write('{"epoch": 3, "ev')
    report = compare_runs([tmp_path])
    row = {Path(r["run"]).name: r for r in report["runs"]}["killed"]
    assert row["results"]["none"]["R1"] == 20.0
    assert row["source"] == "metrics.jsonl, epoch 1"
    assert row["epochs"] == 3  # epochs 0, 1 and 2 were done
    assert not report["comparable"]
    assert any("did not finish" in r for r in report["not_comparable"])


def test_a_run_named_twice_through_a_link_counts_once(tmp_path):
    a = make_run(tmp_path / "runs", "a", mean={"R1": 50.0})
    make_run(tmp_path / "runs", "b", seed=2, mean={"R1": 60.0})
    (tmp_path / "alias").symlink_to(a)
    report = compare_runs([tmp_path / "runs", tmp_path / "alias"])
    assert len(report["runs"]) == 2
    assert report["aggregate"]["none"]["R1"]["n"] == 2
    assert report["aggregate"]["none"]["R1"]["mean"] == pytest.approx(55.0)


def test_a_folder_of_runs_is_read_in_name_order(tmp_path):
    for name, seed in (("b", 2), ("c", 3), ("a", 1)):
        make_run(tmp_path, name, seed, mean={"R1": float(seed)})
    report = compare_runs([tmp_path])
    assert [r["seed"] for r in report["runs"]] == [1, 2, 3]


def test_what_changes_no_number_is_no_setting_but_versions_are_a_difference(tmp_path):
    make_run(
        tmp_path,
        "a",
        1,
        cfg={"data": {"root": "/x"}},
        mean={"R1": 1.0},
        manifest={"versions": {"torch": "2.1"}},
    )
    make_run(
        tmp_path,
        "b",
        2,
        cfg={"data": {"root": "/y"}},
        mean={"R1": 3.0},
        manifest={"versions": {"torch": "2.2"}},
    )
    report = compare_runs([tmp_path])
    assert len(report["groups"]["none"]) == 1  # one setting: mean over both runs
    assert report["differences"]["versions.torch"] == ["2.1", "2.2"]
    assert report["differences"]["data.root"] == ["/x", "/y"]
    assert report["comparable"]


def test_feature_settings_are_compared_only_where_recorded(tmp_path):
    make_run(tmp_path, "a", 1, mean={"R1": 1.0}, meta={"test_flip": True})
    make_run(tmp_path, "b", 2, mean={"R1": 2.0}, meta={})  # an older run: not recorded
    assert compare_runs([tmp_path])["comparable"]
    make_run(tmp_path, "c", 3, mean={"R1": 2.0}, meta={"test_flip": False})
    report = compare_runs([tmp_path])
    assert not report["comparable"]
    assert any("test_flip" in r for r in report["not_comparable"])


def test_the_rerankers_keys_set_only_the_reranked_tables(tmp_path):
    for name, k, seed in (("a", 20, 1), ("b", 30, 2)):
        res = {
            rr: {"mean": {"R1": 10.0 * seed + (rr == "cmfp")}, "provenance": {"reranker": rr}}
            for rr in ("none", "cmfp")
        }
        make_run(tmp_path, name, seed, cfg={"reranker": {"type": "cmfp", "k": k}}, results=res)
    groups = compare_runs([tmp_path])["groups"]
    assert len(groups["none"]) == 1  # the model's numbers: one setting
    assert [g["settings"] for g in groups["cmfp"]] == [{"reranker.k": 20}, {"reranker.k": 30}]


def test_compare_strict_exits_1_only_when_not_comparable(tmp_path, capsys):
    make_run(tmp_path / "ok", "a", 1, mean={"R1": 1.0})
    make_run(tmp_path / "ok", "b", 2, mean={"R1": 2.0})
    assert main(["compare", str(tmp_path / "ok"), "--strict"]) == 0
    make_run(tmp_path / "ok", "c", 3, mean={"R1": 2.0}, manifest={"dataset": {"sha1": "zzz"}})
    assert main(["compare", str(tmp_path / "ok"), "--strict"]) == 1
    assert main(["compare", str(tmp_path / "ok")]) == 0
    assert "NOT COMPARABLE" in capsys.readouterr().out


def test_a_broken_config_yaml_is_noted_not_fatal(tmp_path):
    # summarize_run notes an unreadable config.yaml ("config.yaml cannot be read") and goes
    # on; _resolved_config turns the YAML error into a ConfigError first, so one damaged
    # run stops the comparison of every run in the folder
    bad = make_run(tmp_path, "a", 1, mean={"R1": 1.0})
    make_run(tmp_path, "b", 2, mean={"R1": 2.0})
    (bad / "config.yaml").write_text("train: {lr: [\n")
    report = compare_runs([tmp_path])
    assert len(report["runs"]) == 2
    assert any("config.yaml cannot be read" in n for n in report["runs"][0]["notes"])


def test_a_manifest_that_is_not_an_object_is_noted_not_a_traceback(tmp_path):
    bad = make_run(tmp_path, "a", 1, mean={"R1": 1.0})
    make_run(tmp_path, "b", 2, mean={"R1": 2.0})
    (bad / "manifest.json").write_text("[1]")
    report = compare_runs([tmp_path])  # was AttributeError: 'list' object has no attribute 'get'
    assert len(report["runs"]) == 2
    assert any("manifest.json is not an object" in n for n in report["runs"][0]["notes"])


@pytest.mark.parametrize(
    ("edit", "note"),
    [
        (lambda d: (d / "config.yaml").write_text("- 1\n- 2\n"), "config.yaml is not an object"),
        (lambda d: _edit(d / "manifest.json", dataset=[1]), "manifest.json's dataset"),
        (lambda d: _edit(d / "manifest.json", batch={"stages": 3}), None),
        (lambda d: _edit(d / "manifest.json", source={"commit": None}), None),
        (lambda d: _edit_result(d, std=[1]), "the 'none' result's std"),
        (lambda d: _edit_result(d, provenance="sysu"), "the 'none' result's provenance"),
        (lambda d: _edit_result(d, std={"R1": None}), None),
    ],
    ids=[
        "config-list",
        "dataset-list",
        "stages-int",
        "commit-null",
        "std-list",
        "prov-str",
        "std-null",
    ],  # fmt: skip
)
def test_files_that_parse_but_hold_the_wrong_kind_of_value_are_noted(tmp_path, edit, note):
    """A run whose files parse but hold a list, a number or null where an object or a
    number belongs: the comparison goes on, the other run's figures intact, a note where
    something was left out (a null std, which results.json writes for a NaN, reads NaN)."""
    bad = make_run(tmp_path, "a", 1, mean={"R1": 1.0})
    make_run(tmp_path, "b", 2, mean={"R1": 2.0})
    edit(bad)
    report = compare_runs([tmp_path])
    rows = {Path(r["run"]).name: r for r in report["runs"]}
    assert rows["b"]["results"]["none"]["R1"] == 2.0
    assert rows["b"]["results"]["none"]["R1_std"] == 0.25
    if note is not None:
        assert any(note in n for n in rows["a"]["notes"]), rows["a"]["notes"]
    format_comparison(report)  # the printed table too


def _edit(path, **fields):
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def _edit_result(run, **fields):
    data = json.loads((run / "results.json").read_text())
    data["none"].update(fields)
    (run / "results.json").write_text(json.dumps(data))


def test_validation_runs_of_a_dataset_under_another_protocol_get_a_best_setting(tmp_path):
    # the evaluation labels a validation result of the synthetic (demo) dataset, which is
    # laid out as SYSU-MM01, "synthetic validation ids (SYSU-MM01 protocol)"
    # (protocols._dataset_label); _best_on_validation wants the label to *end* with
    # "validation ids", so a data.validation sweep of the demo never names its best setting
    prov = {"dataset": "synthetic validation ids (SYSU-MM01 protocol)"}
    for name, lr, r in (("a", 0.1, 30.0), ("b", 0.2, 40.0)):
        make_run(tmp_path, name, cfg={"train": {"lr": lr}}, mean={"mAP": r}, prov=prov)
    report = compare_runs([tmp_path])
    assert report["comparable"]
    assert report["best_on_validation"] == {"settings": {"train.lr": 0.2}, "mAP": 40.0, "runs": 1}


def test_validation_runs_differing_in_the_reranker_alone_are_not_said_to_be_on_test_ids(
    tmp_path,
):
    """Runs on the validation ids whose re-ranker's k differs: the re-ranked table has two
    settings, the 'none' table one (no best setting to name); the text does not call them
    evaluated on the test ids."""
    for name, k, seed in (("a", 20, 1), ("b", 30, 2)):
        res = {
            rr: {
                "mean": {"R1": 10.0 * seed, "mAP": 5.0 * seed},
                "provenance": {"reranker": rr, "dataset": "SYSU-MM01 validation ids"},
            }
            for rr in ("none", "cmfp")
        }
        make_run(tmp_path, name, seed, cfg={"reranker": {"type": "cmfp", "k": k}}, results=res)
    report = compare_runs([tmp_path])
    assert report["comparable"] and report["on_validation"]
    assert len(report["groups"]["cmfp"]) == 2 and len(report["groups"]["none"]) == 1
    assert "evaluated on the test ids" not in format_comparison(report)


def _regdb(root, name, split, seed=1, lr=0.1, r1=50.0, sha=None):
    return make_run(
        root,
        name,
        seed,
        cfg={"data": {"type": "regdb", "split": split}, "train": {"lr": lr}},
        manifest={"dataset": {"dataset": "regdb", "split": split, "sha1": sha or f"s{split}"}},
        mean={"R1": r1},
        prov={"dataset": "RegDB"},
    )


def test_regdb_splits_are_the_protocols_trials_averaged_as_one_setting(tmp_path):
    for split, r1 in ((1, 40.0), (2, 50.0), (3, 66.0)):
        _regdb(tmp_path, f"s{split}", split, r1=r1)
    report = compare_runs([tmp_path])
    assert report["comparable"], report["not_comparable"]
    (group,) = report["groups"]["none"]
    for key, value in naive_stats([40.0, 50.0, 66.0]).items():
        assert group["aggregate"]["none"]["R1"][key] == pytest.approx(value)
    # the runs of one split on another preparation of it are not comparable
    _regdb(tmp_path, "s3b", 3, seed=2, sha="other")
    _regdb(tmp_path, "s1b", 1, seed=2)
    _regdb(tmp_path, "s2b", 2, seed=2)
    report = compare_runs([tmp_path])
    assert not report["comparable"]
    assert any("split 3" in r for r in report["not_comparable"])


def test_regdb_settings_over_other_splits_are_not_trials(tmp_path):
    # lr 0.1 over splits 1 and 2, lr 0.2 over splits 1 and 3: not the same trials
    for name, split, lr in (("a", 1, 0.1), ("b", 2, 0.1), ("c", 1, 0.2), ("d", 3, 0.2)):
        _regdb(tmp_path, name, split, lr=lr)
    report = compare_runs([tmp_path])
    assert not report["comparable"]
    assert any("dataset.sha1 differs" in r for r in report["not_comparable"])


def test_regdb_runs_with_a_split_unknown_are_not_trials(tmp_path):
    _regdb(tmp_path, "a", 1)
    d = _regdb(tmp_path, "b", 2)
    man = json.loads((d / "manifest.json").read_text())
    del man["dataset"]["split"]  # an older manifest
    (d / "manifest.json").write_text(json.dumps(man))
    report = compare_runs([tmp_path])
    assert not report["comparable"]


def test_a_stages_batch_per_gpu_is_a_setting_of_its_own(tmp_path):
    for name, first, seed in (("a", 64, 1), ("b", 128, 2)):
        stages = [
            {"stage": "s1", "per_gpu": first, "per_batchnorm": first, "global": first},
            {"stage": "s2", "per_gpu": 32, "per_batchnorm": 32, "global": 32},
        ]
        make_run(tmp_path, name, seed, mean={"R1": 1.0}, manifest={"batch": {"stages": stages}})
    report = compare_runs([tmp_path])
    assert report["differences"]["batch.s1.per_gpu"] == [64, 128]
    assert "batch.s2.per_gpu" not in report["differences"]
    assert len(report["groups"]["none"]) == 2


def test_a_stages_own_value_is_shown_unless_it_copies_the_top_level_one(tmp_path):
    # run a: the stage copies the top-level value; run b: the stage has its own
    for name, top, stage, seed in (("a", 1, 1, 1), ("b", 2, 3, 2)):
        make_run(
            tmp_path, name, seed, cfg={"knob": top, "stages": [{"knob": stage}]}, mean={"R1": 1.0}
        )
    groups = compare_runs([tmp_path])["groups"]["none"]
    assert [g["settings"] for g in groups] == [
        {"knob": 1, "stages.0.knob": 1},
        {"knob": 2, "stages.0.knob": 3},
    ]


def test_a_run_given_twice_is_said(tmp_path, caplog):
    a = make_run(tmp_path / "runs", "a", mean={"R1": 50.0})
    (tmp_path / "alias").symlink_to(a)
    with caplog.at_level("WARNING", logger="uvireid.engine.compare"):
        report = compare_runs([a, tmp_path / "alias"])
    assert len(report["runs"]) == 1
    assert "given twice" in caplog.text


def test_format_has_a_summary_row_only_for_settings_of_several_runs(tmp_path):
    for name, lr, seed, r1 in (("a", 0.1, 1, 50.0), ("b", 0.1, 2, 54.0), ("c", 0.2, 1, 30.0)):
        res = {rr: {"mean": {"R1": r1}, "provenance": {"reranker": rr}} for rr in ("none", "aim")}
        make_run(tmp_path, name, seed, cfg={"train": {"lr": lr}}, results=res)
    text = format_comparison(compare_runs([tmp_path]))
    assert text.index("re-ranker: none") < text.index("re-ranker: aim")
    rows = [line for line in text.splitlines() if line.startswith("| mean ± std")]
    assert (
        rows
        == [
            "| mean ± std [min, max] over 2 runs, train.lr=0.1 | | | "
            "52.00 ± 2.00 [50.00, 54.00] | - | - | - | - |"
        ]
        * 2
    )
    assert "each setting is summarised over its own runs" in text


def test_a_run_without_any_result_is_named(tmp_path):
    make_run(tmp_path, "a", 1, mean={"R1": 1.0})
    make_run(tmp_path, "empty", 2)  # killed before its first evaluation
    report = compare_runs([tmp_path])
    assert report["not_comparable"] == ["no evaluation result in empty"]


def test_an_empty_results_json_beside_evaluations_shows_the_last_one(tmp_path):
    records = [{"epoch": 0, "eval": {"none": {"mean": {"R1": 10.0}}}}]
    make_run(tmp_path, "a", 1, results={}, metrics=records)
    (row,) = compare_runs([tmp_path])["runs"]
    assert row["results"]["none"]["R1"] == 10.0
    assert row["source"] == "metrics.jsonl, epoch 0"
    make_run(tmp_path, "b", 1, results={}, metrics=[{"epoch": 0, "loss": 1.0}])
    report = compare_runs([tmp_path / "b"])
    assert "finished without an evaluation" in report["runs"][0]["notes"][0]
