"""Protocol auto is the dataset's first protocol; a RegDB run's features name the
split the model was trained on (mutation audit CE); validation runs say so, and start
only from weights that left their validation ids out."""

from __future__ import annotations

import pytest
from train_fixtures import write_eval_recipe

from uvireid.config import load_recipe
from uvireid.data.fixtures import make_regdb_tree
from uvireid.engine.runner import protocol_for, run_recipe
from uvireid.features import load_features


class _Data:
    def __init__(self, protocols):
        self.protocols = protocols


@pytest.mark.parametrize(
    "protocols", [["sysu-all", "sysu-indoor"], ["regdb-v2i", "regdb-i2v"], ["llcm-v2i", "llcm-i2v"]]
)
def test_protocol_auto_is_the_datasets_first_protocol(protocols):
    """config.EvalSettings: 'auto picks the dataset's first protocol' (SYSU-MM01's
    all-search, not indoor-search)."""
    cfg = {"evaluation": {"protocol": "auto"}, "data": {"type": "x"}}
    assert protocol_for(_Data(protocols), cfg) == protocols[0]
    cfg["evaluation"]["protocol"] = protocols[-1]
    assert protocol_for(_Data(protocols), cfg) == protocols[-1]


def test_a_regdb_runs_features_name_the_split_it_was_trained_on(tmp_path):
    """evaluate() records train_split = the recipe's data.split in features.npz, so that
    `uvireid eval` can refuse the features of another split's test images."""
    root = make_regdb_tree(tmp_path / "RegDB", ids=8, images_per=2, splits=(2,))
    data = {"type": "regdb", "root": str(root), "split": 2}
    path = write_eval_recipe(tmp_path, data, evaluation={"protocol": "regdb-v2i"})
    folder = run_recipe(load_recipe(path), progress=False)
    meta = load_features(folder.path / "features.npz").meta
    assert int(meta["train_split"]) == 2


def test_an_evaluation_only_run_decodes_the_test_images_with_train_test_resize(
    tmp_path, monkeypatch
):
    """train.test_resize (else train.resize) is the test images' filter in an
    evaluation-only run too, as in the trainer's evaluation (eval_resize): PGM's recipes
    test with another filter than the default bilinear."""
    import uvireid.engine.runner as runner
    from uvireid.data.fixtures import make_sysu_tree

    seen = []
    real = runner.extract_features

    def spy(*args, **kwargs):
        seen.append(kwargs.get("resize", "bilinear"))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "extract_features", spy)
    root = make_sysu_tree(tmp_path / "SYSU-MM01", ids=12, images_per=2)
    data = {"type": "sysu", "root": str(root)}
    for train, want in (
        ({"test_resize": "lanczos"}, "lanczos"),
        ({"resize": "bicubic"}, "bicubic"),
        ({}, "bilinear"),
    ):
        path = write_eval_recipe(tmp_path, data, train=train)
        run_recipe(load_recipe(path), progress=False)
        assert seen[-1] == want


def test_validation_results_say_so_and_a_model_trained_on_those_ids_is_refused(
    recipe_file, tmp_path, capsys, caplog
):
    """data.validation: a run's results name the validation ids; features of them by a
    model of the release's arrangement (val ids trained on) are written by extract, with a
    warning, and refused by every evaluation."""
    import json

    from uvireid.cli import main

    root = tmp_path / "v"
    path = write_eval_recipe(root)
    folder = run_recipe(load_recipe(path, ["data.validation=true"]), progress=False)
    res = json.loads((folder.path / "results.json").read_text())["none"]
    assert res["provenance"]["dataset"] == "SYSU-MM01 validation ids"
    meta = load_features(folder.path / "features.npz").meta
    assert meta["validation"] is True and meta["train_validation"] is True
    assert set(load_features(folder.path / "features.npz").pids.tolist()) == {5, 11}
    assert main(["eval", str(folder.path / "features.npz"), "--protocol", "sysu-all"]) == 0
    out = capsys.readouterr().out
    assert "validation ids" in out
    # a trained run of the release's arrangement (the val ids among its training ids)
    trained = run_recipe(load_recipe(recipe_file), progress=False).path
    out_file = tmp_path / "val.npz"
    argv = ["extract", str(trained), "data.validation=true", "-o", str(out_file)]
    assert main(argv) == 0
    assert "trained on the validation ids" in caplog.text
    assert load_features(out_file).meta["train_validation"] is False
    assert main(["eval", str(out_file), "--protocol", "sysu-all"]) == 2
    err = capsys.readouterr().err
    assert "the model trained on them" in err and "data.validation=true" in err


def test_a_best_epoch_of_a_validation_run_is_chosen_on_the_validation_ids():
    from types import SimpleNamespace

    from uvireid.engine.trainer import Trainer

    held_out = Trainer._held_out.fget
    assert held_out(SimpleNamespace(dataset=SimpleNamespace(validation=True))) == "validation ids"
    assert held_out(SimpleNamespace(dataset=SimpleNamespace(validation=False))) == "test set"
    assert held_out(SimpleNamespace(dataset=object())) == "test set"  # a plugin dataset


def test_validation_features_of_a_model_that_left_the_ids_out_are_evaluated(tmp_path):
    """Audit FD: extract of a run trained with data.validation=true (its checkpoint says
    so) records train_validation true and `uvireid eval` takes the file; the backbone as
    the recipe builds it (never trained) is not refused either: only a model known to
    have trained on the validation ids is."""
    import yaml
    from train_fixtures import tiny_recipe

    from uvireid.cli import main

    rec = tiny_recipe(tmp_path)
    rec["stages"] = rec["stages"][:1]
    rec["data"]["validation"] = True
    path = tmp_path / "val.yaml"
    path.write_text(yaml.safe_dump(rec))
    run = run_recipe(load_recipe(path), progress=False).path
    out = tmp_path / "v.npz"
    assert main(["extract", str(run), "-o", str(out)]) == 0
    meta = load_features(out).meta
    assert meta["validation"] is True and meta["train_validation"] is True
    assert main(["eval", str(out), "--protocol", "sysu-all"]) == 0
    untrained = tmp_path / "u.npz"
    assert main(["extract", str(path), "--checkpoint", "none", "-o", str(untrained)]) == 0
    assert "train_validation" not in load_features(untrained).meta
    assert main(["eval", str(untrained), "--protocol", "sysu-all"]) == 0


def test_a_regdb_validation_run_is_evaluated_on_every_fifth_training_id(tmp_path, capsys):
    """data.validation on RegDB (no released validation split): the run evaluates the
    held-out fifth of the trial's training ids with the RegDB protocol, and its results
    and features say so (session 24)."""
    import json

    from uvireid.cli import main

    root = make_regdb_tree(tmp_path / "RegDB", ids=20, images_per=2, splits=(1,))
    data = {"type": "regdb", "root": str(root), "split": 1, "validation": True}
    path = write_eval_recipe(tmp_path, data, evaluation={"protocol": "regdb-v2i"})
    folder = run_recipe(load_recipe(path), progress=False)
    res = json.loads((folder.path / "results.json").read_text())["none"]
    assert res["provenance"]["dataset"] == "RegDB validation ids"
    feats = load_features(folder.path / "features.npz")
    assert sorted(set(feats.pids.tolist())) == [4, 9]  # labels 0..9: the 5th and 10th
    assert feats.meta["validation"] is True and feats.meta["train_validation"] is True
    assert feats.meta["validation_ids"] == "every fifth id of idx/train_*_1.txt"
    assert main(["eval", str(folder.path / "features.npz"), "--protocol", "regdb-v2i"]) == 0
    assert "validation ids (every fifth id of idx/train_*_1.txt)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "record, refused, on_test_set",
    [
        ({"dataset": "regdb", "split": 1}, "trained on the validation ids", None),
        (
            {"dataset": "regdb", "split": 2, "validation": True},
            "trained on split 2's training ids",
            "trained on split 2's training ids",
        ),
        ({"dataset": "regdb", "split": 2}, "split 2's", "split 2's"),
        ({"dataset": "regdb", "split": 1, "validation": True}, None, None),
        ({"dataset": "sysu", "split": None}, None, None),  # another dataset: never saw them
    ],
)
def test_a_run_starts_only_from_weights_that_never_saw_its_test_ids(
    tmp_path, monkeypatch, record, refused, on_test_set
):
    """A RegDB trial's test and validation ids are training people of another trial: a
    run of split 1 may start from a checkpoint of split 1 only, and a validation run
    from one that left the validation ids out (audits FF, HA)."""
    import uvireid.models.backbone as backbone
    from uvireid.engine.runner import _check_start_weights
    from uvireid.errors import ConfigError

    ckpt = tmp_path / "latest.pt"
    ckpt.write_bytes(b"x")
    monkeypatch.setattr(backbone, "uvireid_checkpoint_dataset", lambda path: dict(record))
    cfg = {"data": {"type": "regdb", "split": 1, "validation": True}}
    cfg["backbone"] = {"pretrained": str(ckpt)}
    if refused is None:
        _check_start_weights(cfg)
    else:
        with pytest.raises(ConfigError, match=refused):
            _check_start_weights(cfg)
    cfg["data"]["validation"] = False  # a run on the test set
    if on_test_set is None:
        _check_start_weights(cfg)
    else:
        with pytest.raises(ConfigError, match=on_test_set):
            _check_start_weights(cfg)


def test_a_run_on_the_synthetic_dataset_evaluates_with_the_official_sampler(tmp_path):
    """evaluation.sampler=official with the synthetic dataset's own rand_perm_cam.mat: the
    run's single-shot all-search gallery holds one image per test identity and visible
    camera that saw it, counted here from the folders on disk."""
    import json

    from uvireid.data import synthetic as syn

    root = syn.generate(tmp_path / "syn", ids=12, seed=0)
    perm = root / "exp" / "rand_perm_cam.mat"
    path = write_eval_recipe(
        tmp_path,
        {"type": "synthetic", "root": str(root)},
        evaluation={"sampler": "official", "perm_file": str(perm), "trials": 2},
    )
    folder = run_recipe(load_recipe(path), progress=False)
    prov = json.loads((folder.path / "results.json").read_text())["none"]["provenance"]
    test_ids = [int(t) for t in (root / "exp" / "test_id.txt").read_text().split(",")]
    seen = [(c, p) for c in (1, 2, 4, 5) for p in test_ids if (root / f"cam{c}/{p:04d}").is_dir()]
    assert (prov["sampler"], prov["trials"], prov["num_gallery"]) == ("official", 2, len(seen))
    assert str(perm) in prov["sampler_detail"]
