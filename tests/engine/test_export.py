"""``uvireid extract``: a trained run's checkpoint -> a features file for eval/rerank."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from train_fixtures import tiny_recipe

from uvireid.cli import main
from uvireid.config import load_recipe
from uvireid.data.fixtures import make_regdb_tree
from uvireid.engine.export import backbone_weights, export_features
from uvireid.engine.runner import run_recipe
from uvireid.errors import CheckpointError, ConfigError, DatasetError
from uvireid.features import load_features


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One trained tiny run (its DCL stage: an epoch of two steps), shared by the tests."""
    tmp = tmp_path_factory.mktemp("export")
    rec = tiny_recipe(tmp)
    rec["stages"] = rec["stages"][:1]
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(rec))
    return run_recipe(load_recipe(path), progress=False).path


def test_extract_reproduces_the_runs_own_test_features(run_dir, tmp_path, capsys):
    """The run's last evaluation wrote features.npz with the weights of its last epoch;
    extracting again with that checkpoint gives the same features, and the file records
    which checkpoint made it."""
    out = tmp_path / "f.npz"
    assert main(["extract", str(run_dir), "-o", str(out)]) == 0
    assert "next: uvireid eval" in capsys.readouterr().out
    got, want = load_features(out), load_features(run_dir / "features.npz")
    assert np.array_equal(got.pids, want.pids) and np.array_equal(got.cams, want.cams)
    assert np.array_equal(got.modality, want.modality)
    assert np.allclose(got.feats, want.feats, atol=1e-6)
    assert got.meta["checkpoint_epoch"] == 1
    assert got.meta["epoch"] == want.meta["epoch"] == 0  # the same epoch, named alike
    assert got.meta["checkpoint"].endswith("latest.pt")
    assert got.meta["produced_by"] == f"uvireid extract {run_dir}"
    # labelled as the run's own file is (audit G: "epoch 0 (None, not the final epoch)")
    for key in ("stage", "final", "total_epochs"):
        assert got.meta[key] == want.meta[key], key
    assert want.meta["final"] is True and "changes" not in got.meta
    assert main(["eval", str(out), "--protocol", "sysu-all", "--trials", "2"]) == 0
    assert "epoch 0 (dcl, final)" in capsys.readouterr().out
    # overrides may follow the options
    moved = tmp_path / "moved.npz"
    root = load_features(out).meta["root"]
    assert main(["extract", str(run_dir), "-o", str(moved), f"data.root={root}"]) == 0
    assert np.allclose(load_features(moved).feats, got.feats)
    with pytest.raises(SystemExit):
        main(["extract", str(run_dir), "-o", str(moved), "--frobnicate"])
    # an existing file is kept unless --force
    with pytest.raises(ConfigError, match="--force"):
        _extract(run_dir, out)
    assert main(["extract", str(run_dir), "-o", str(out), "--force"]) == 0


def _extract(run_dir, out, *extra):
    """The command as the CLI runs it, its errors raised (``main`` prints them)."""
    from uvireid.cli import build_parser
    from uvireid.cli.extract_cmd import run

    return run(build_parser().parse_args(["extract", str(run_dir), *extra, "-o", str(out)]))


def test_extract_errors_name_the_problem(run_dir, tmp_path):
    out = tmp_path / "f.npz"
    # weights of another architecture: the strict load names the keys
    with pytest.raises(CheckpointError, match="unexpected|missing|shape"):
        _extract(run_dir, out, "backbone.arch=resnet34")
    with pytest.raises(DatasetError):
        _extract(run_dir, out, f"data.root={tmp_path / 'nowhere'}")
    bare = tmp_path / "bare_run"
    bare.mkdir()
    shutil.copy(run_dir / "config.yaml", bare / "config.yaml")
    with pytest.raises(CheckpointError, match="no checkpoint yet"):
        _extract(bare, out)
    with pytest.raises(ConfigError, match="not a run folder"):
        _extract(tmp_path, out)
    (tmp_path / "other.pt").write_bytes(b"")
    with pytest.raises(CheckpointError):
        backbone_weights(tmp_path / "other.pt")
    import torch

    from uvireid.engine.checkpoint import save_checkpoint

    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "tv.pt")
    with pytest.raises(CheckpointError, match="not a uvireid training checkpoint"):
        backbone_weights(tmp_path / "tv.pt")
    odd = tmp_path / "odd"
    odd.mkdir()
    path = save_checkpoint(odd, {"epoch": 3, "model": {"parts.tokens": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match="no backbone weights"):
        backbone_weights(path)
    assert not out.exists()  # nothing half-written


def test_a_run_folder_records_its_training_split(run_dir, tmp_path, capsys):
    """A RegDB run's features carry its split as train_split: the RegDB protocol then
    evaluates them on that split and refuses another split's test images (its test
    identities were that run's training identities)."""
    root = make_regdb_tree(tmp_path / "RegDB", ids=8, images_per=2, splits=(1, 2))
    run = tmp_path / "regdb_run"
    shutil.copytree(run_dir, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"] = {"type": "regdb", "root": str(root), "split": 1}
    cfg["evaluation"]["protocol"] = "regdb-v2i"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    own, other = tmp_path / "own.npz", tmp_path / "other.npz"
    assert _extract(run, own) == 0
    assert "next: uvireid eval" in capsys.readouterr().out
    assert _extract(run, other, "data.split=2") == 0
    said = capsys.readouterr().out
    assert "next: uvireid eval" not in said  # an eval it would refuse (audit EB)
    assert "split 2's test images and the weights were trained on split 1" in said
    assert load_features(own).meta["train_split"] == 1
    meta = load_features(other).meta
    assert (meta["split"], meta["train_split"]) == (2, 1)
    assert main(["eval", str(own), "--protocol", "regdb-v2i"]) == 0
    assert main(["eval", str(other), "--protocol", "regdb-v2i"]) == 2  # ProtocolError


def test_extract_on_another_dataset(run_dir, tmp_path):
    """A SYSU-MM01 run's weights on an LLCM tree (the data section replaced whole): the
    file is LLCM's test set, and LLCM's protocol takes it."""
    from uvireid.data.fixtures import make_llcm_tree

    root = make_llcm_tree(tmp_path / "LLCM", images_per=2)
    out = tmp_path / "llcm.npz"
    assert _extract(run_dir, out, f"data={{type: llcm, root: {root}}}") == 0
    f = load_features(out)
    assert f.meta["dataset"] == "llcm" and f.meta["checkpoint_epoch"] == 1
    assert "train_split" not in f.meta  # another dataset: no split of the run's applies
    assert main(["eval", str(out), "--protocol", "llcm-v2i", "--trials", "2"]) == 0


def test_export_features_without_a_checkpoint_uses_the_recipes_backbone(run_dir, tmp_path):
    """A recipe with --checkpoint none: the backbone as the recipe builds it (random
    here), so features differ from the trained run's, and the file says no run trained
    them. Without --checkpoint a recipe is refused (it used to give an untrained model's
    features silently)."""
    recipe = tmp_path / "tiny.yaml"
    shutil.copy(run_dir / "config.yaml", recipe)
    with pytest.raises(ConfigError, match="is a recipe: pass --checkpoint PATH"):
        _extract(recipe, tmp_path / "silent.npz")
    assert not (tmp_path / "silent.npz").exists()
    assert _extract(recipe, tmp_path / "none.npz", "--checkpoint", "none") == 0
    assert load_features(tmp_path / "none.npz").meta["checkpoint"].startswith("none (backbone.")
    cfg = load_recipe(run_dir / "config.yaml")
    path = export_features(cfg, tmp_path / "init.npz", source="tiny")
    f = load_features(path)
    assert f.meta["checkpoint"] == "none (backbone.pretrained=False)"
    assert f.meta["produced_by"] == "uvireid extract tiny"
    assert not np.allclose(f.feats, load_features(run_dir / "features.npz").feats, atol=1e-3)
    assert np.allclose(np.linalg.norm(f.feats, axis=1), 1.0, atol=1e-5)


def test_a_checkpoint_given_by_path_keeps_its_training_split(run_dir, tmp_path):
    """``--checkpoint RUN/checkpoints/best.pt`` (as ``extract --help`` suggests) records
    the split the checkpoint says its weights trained on, as the run folder does: the
    RegDB protocol then refuses another split's test images (they were its training
    identities)."""
    from uvireid.engine.checkpoint import load_checkpoint, save_checkpoint

    root = make_regdb_tree(tmp_path / "RegDB", ids=8, images_per=2, splits=(1, 2))
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    state["dataset"] = {**(state.get("dataset") or {}), "dataset": "regdb", "split": 1}
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    save_checkpoint(ckpt_dir, state)
    ckpt = ckpt_dir / "latest.pt"
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["data"] = {"type": "regdb", "root": str(root), "split": 2}
    cfg["evaluation"]["protocol"] = "regdb-v2i"
    recipe = tmp_path / "regdb.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "other.npz"
    assert _extract(recipe, out, "--checkpoint", str(ckpt)) == 0
    meta = load_features(out).meta
    assert (meta["split"], meta["train_split"]) == (2, 1)
    assert main(["eval", str(out), "--protocol", "regdb-v2i"]) == 2  # ProtocolError


def test_extract_does_not_fetch_starting_weights_a_checkpoint_replaces(
    run_dir, tmp_path, monkeypatch
):
    """The backbone is built without its starting weights when a checkpoint replaces them
    all (they were downloaded, or the synthetic prior trained for minutes, for nothing)."""
    from uvireid.registry import BACKBONES

    built = []
    real = BACKBONES.build

    def spy(spec, **kw):
        built.append(dict(spec))
        return real({**spec, "pretrained": False}, **kw)  # the test never downloads

    monkeypatch.setattr(BACKBONES, "build", spy)
    cfg = load_recipe(run_dir / "config.yaml", ["backbone.pretrained=true"])
    path = export_features(
        cfg, tmp_path / "f.npz", checkpoint=run_dir / "checkpoints" / "latest.pt"
    )
    assert [b["pretrained"] for b in built] == [False]
    np.testing.assert_allclose(
        load_features(path).feats, load_features(run_dir / "features.npz").feats, atol=1e-5
    )


def test_extract_records_changes_that_make_other_features(run_dir, tmp_path, caplog):
    """Audit G (session 16): backbone.gem_p=1 or another image size gave a file that
    claimed to be the run's features; data.* overrides are what extract is for."""
    import logging

    out = tmp_path / "g.npz"
    with caplog.at_level(logging.WARNING):
        assert main(["extract", str(run_dir), "-o", str(out), "backbone.gem_p=1.0"]) == 0
    assert "backbone.gem_p: 3.0 -> 1.0" in caplog.text
    meta = load_features(out).meta
    assert meta["changes"] == {"backbone.gem_p": "3.0 -> 1.0"}
    from uvireid.evaluation.protocols import run_protocol

    assert "changed from the run: backbone.gem_p" in run_protocol(out, "sysu-all").summary()


def test_extract_warns_on_a_copy_that_is_not_the_release(run_dir, tmp_path, caplog):
    """Audit F (session 16): `uvireid run` warned about a partial copy of SYSU-MM01;
    `uvireid extract` (then `eval`) gave numbers on it without a word."""
    import logging

    out = tmp_path / "h.npz"
    with caplog.at_level(logging.WARNING):
        assert main(["extract", str(run_dir), "-o", str(out)]) == 0
    assert "is not the official release" in caplog.text  # the fixture has 12 ids
    assert load_features(out).meta["dataset_check"]["ok"] is False
    from uvireid.evaluation.protocols import run_protocol

    summary = run_protocol(out, "sysu-all").summary()
    assert "test set differs from the official release" in summary


def test_a_checkpoint_chosen_on_the_test_set_is_labelled_so(run_dir, tmp_path):
    """best.pt of a run that went on training: its features say they were chosen on the
    test set (audit G: nothing did)."""
    import torch

    from uvireid.evaluation.protocols import run_protocol

    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    state["best"] = {"epoch": 0, "mAP": 1.0, "selected_on": "test set"}
    best = tmp_path / "best.pt"
    torch.save(state, best)
    cfg = load_recipe(run_dir / "config.yaml", ["stages.0.epochs=3"])  # the run went on
    out = export_features(cfg, tmp_path / "b.npz", checkpoint=best)
    meta = load_features(out).meta
    assert meta["final"] is False and meta["selected_on"] == "test set"
    summary = run_protocol(out, "sysu-all").summary()
    assert "epoch 0 (dcl, not the final epoch, chosen on the test set)" in summary


def test_extracting_a_run_of_top_level_losses_is_labelled_final(tmp_path):
    """A recipe without stages trains one stage of its top-level losses; the extracted
    file of its last checkpoint is the final epoch's, as the run's own file says."""
    rec = tiny_recipe(tmp_path, losses=[{"type": "cluster_contrast"}])
    del rec["stages"]
    rec["train"].update(epochs=1, batch_ids=2, images_per_id=2)
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(rec))
    folder = run_recipe(load_recipe(path), progress=False).path
    out = tmp_path / "f.npz"
    assert main(["extract", str(folder), "-o", str(out)]) == 0
    own, got = load_features(folder / "features.npz").meta, load_features(out).meta
    assert own["final"] is True and got["final"] is True
    assert got["total_epochs"] == own["total_epochs"] == 1


def test_extract_from_a_dataset_without_a_test_split_says_so(run_dir, tmp_path):
    """Audit AR: the folder dataset has training images only; extract said the features
    file 'holds no image' and pointed at save_features."""
    from PIL import Image

    for mod, cam in (("visible", "cam1"), ("infrared", "cam2")):
        (tmp_path / "fold" / mod / cam).mkdir(parents=True)
        Image.new("RGB", (8, 16)).save(tmp_path / "fold" / mod / cam / "a.png")
    out = tmp_path / "f.npz"
    with pytest.raises(DatasetError, match="has no test images.*test split"):
        _extract(run_dir, out, f"data={{type: folder, root: {tmp_path / 'fold'}}}")
    assert not out.exists()


def test_the_runs_own_features_and_tables_say_the_copy_is_not_the_release(run_dir):
    """Audit AR: extract's features said "test set differs from the official release";
    the run's own features.npz, results and tables did not (only log.txt's first line)."""
    import json

    from uvireid.evaluation.protocols import run_protocol

    f = load_features(run_dir / "features.npz")
    assert f.meta["dataset_check"]["ok"] is False
    assert "test set differs from the official release" in run_protocol(f, "sysu-all").summary()
    results = json.loads((run_dir / "results.json").read_text())
    meta = next(iter(results.values()))["provenance"]["features_meta"]
    assert meta["dataset_check"]["ok"] is False


def test_extracting_a_fixed_size_run_at_another_size_names_the_runs_size(run_dir, tmp_path):
    """A ViT run (backbone.img_size) extracts at its own size only: another
    train.height/width got the advice to set backbone.img_size, which then failed on the
    run's position embeddings (audit BU). Refused before any image is read."""
    from uvireid.config import dump

    vit = tmp_path / "vit_run"
    (vit / "checkpoints").mkdir(parents=True)
    cfg = load_recipe(
        run_dir / "config.yaml",
        ["backbone={type: timm, name: vit_tiny_patch16_224, img_size: [64, 32]}"],
    )
    (vit / "config.yaml").write_text(dump(cfg))
    (vit / "checkpoints" / "latest.pt").write_bytes(b"")  # never read: refused first
    out = tmp_path / "f.npz"
    for over in (
        ["train.height=128", "train.width=64"],
        ["train.height=128", "train.width=64", "backbone.img_size=[128, 64]"],
    ):
        with pytest.raises(ConfigError, match=r"built for 64 x 32 images.*extract at the run"):
            _extract(vit, out, *over)
    # at the run's own size the check passes: the (empty) checkpoint is read next
    with pytest.raises(CheckpointError):
        _extract(vit, out)
    assert not out.exists()
