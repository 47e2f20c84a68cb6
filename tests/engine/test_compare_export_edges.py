"""compare, extract (export), load_model (inference) and eval --runs: their edges
(audit KB), each number against a computation of its own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from train_fixtures import eval_seed_runs, write_eval_recipe

import uvireid
from uvireid.cli import main
from uvireid.config import load_recipe
from uvireid.engine.compare import compare_runs
from uvireid.engine.runner import run_recipe
from uvireid.features import load_features, save_features


def _texture(root, seed=0):
    """Random, non-symmetric pixels in every image of the tree (the fixture's images are
    of one colour, so flip or precision would leave their features alike)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for path in sorted(Path(root).rglob("*")):
        if path.suffix.lower() in (".jpg", ".png", ".bmp"):
            Image.fromarray(rng.integers(0, 256, (45, 23, 3), np.uint8)).save(path)


@pytest.mark.skipif(
    not __import__("uvireid.engine.trainer", fromlist=["x"]).cpu_bf16_native(),
    reason="needs a CPU with native bf16",
)
def test_extract_of_an_amp_run_that_ran_in_float32_gives_its_float32_features(
    recipe_file, tmp_path, monkeypatch
):
    """train.amp=true on a device without native bf16 ran and evaluated in float32
    (manifest precision float32, the checkpoint's 'precision'). load_model honours that;
    `uvireid extract` on a machine with native bf16 extracted in bf16 and recorded
    precision bf16: its features were not the run's (inference and extract disagreed)."""
    import uvireid.engine.trainer as trainer
    from uvireid.engine.export import export_features

    _texture(yaml.safe_load(recipe_file.read_text())["data"]["root"])
    with monkeypatch.context() as mp:
        mp.setattr(trainer, "cpu_bf16_native", lambda: False)
        folder = run_recipe(load_recipe(recipe_file, ["train.amp=true"]), progress=False).path
    own = load_features(folder / "features.npz")
    assert own.meta.get("precision") in (None, "float32")
    # the library's inference of the same checkpoint: the run's own features
    model = uvireid.load_model(folder)
    rows = np.flatnonzero(own.modality == 0)
    np.testing.assert_allclose(
        model.features([own.paths[i] for i in rows], "visible"), own.feats[rows], atol=1e-6
    )
    cfg = load_recipe(folder / "config.yaml")
    out = export_features(cfg, tmp_path / "x.npz", checkpoint=folder / "checkpoints" / "latest.pt")
    got = load_features(out)
    assert got.meta["precision"] == "float32"
    np.testing.assert_allclose(got.feats, own.feats, atol=1e-5)


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_regdb_trials_still_compare_the_test_set_of_each_split(tmp_path):
    """RegDB runs over its splits are the protocol's trials: their test sets differ by
    design, between splits. Two runs of one split on two different preparations (another
    file-list hash, other test sizes) are still another test set; compare dropped every
    dataset check once the runs looked like the protocol's trials, and called them
    comparable."""
    from uvireid.data.fixtures import make_regdb_tree

    root = make_regdb_tree(tmp_path / "RegDB", ids=8, images_per=2, splits=(1, 2))
    path = write_eval_recipe(
        tmp_path,
        data={"type": "regdb", "root": str(root), "split": 1},
        evaluation={"protocol": "regdb-v2i", "trials": 1},
    )
    runs = [
        run_recipe(load_recipe(path, [f"data.split={s}", f"seed={seed}"]), progress=False).path
        for s in (1, 2)
        for seed in (0, 1)
    ]
    assert compare_runs(runs)["comparable"]  # the protocol's trials, as documented

    def other_copy(m):
        m["dataset"]["sha1"] = "f" * 40
        m["dataset"]["test_images"] = m["dataset"].get("test_images", 0) + 7

    _edit_json(runs[1] / "manifest.json", other_copy)  # split 1, seed 1: another copy
    report = compare_runs(runs)
    assert not report["comparable"]
    assert any("sha1" in why for why in report["not_comparable"])


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Three evaluation-only runs of one recipe (seeds 0, 1, 2)."""
    return eval_seed_runs(tmp_path_factory.mktemp("kb_seeds"), range(3))


def test_a_run_named_twice_is_counted_once(seeds):
    """A run named twice (itself and the folder holding it) is one run: the mean over
    the runs equals the mean of the three results.json (read here), n is 3 (it was 4,
    the repeated run weighed twice)."""
    maps = [json.loads((r / "results.json").read_text())["none"]["mean"]["mAP"] for r in seeds]
    report = compare_runs([seeds[0].parent, seeds[0]])
    agg = report["aggregate"]["none"]["mAP"]
    assert agg["n"] == 3 and len(report["runs"]) == 3
    assert agg["mean"] == pytest.approx(np.mean(maps), rel=1e-12)


def _naive_regdb(q, g, qp, gp):
    """CMC (standard), mAP and mINP in %, by a loop over queries: Euclidean distance,
    nothing removed (RegDB)."""
    cmc, aps, inps = np.zeros(len(gp)), [], []
    for i in range(len(q)):
        d = ((g - q[i]) ** 2).sum(1)
        order = sorted(range(len(gp)), key=lambda j: d[j])
        hits = [gp[j] == qp[i] for j in order]
        first = hits.index(True)
        cmc[first:] += 1
        found, prec = 0, []
        for rank, h in enumerate(hits, start=1):
            if h:
                found += 1
                prec.append(found / rank)
        aps.append(np.mean(prec))
        last = max(k for k, h in enumerate(hits, start=1) if h)
        inps.append(found / last)
    cmc = 100 * cmc / len(q)
    return {"R1": cmc[0], "R10": cmc[9], "mAP": 100 * np.mean(aps), "mINP": 100 * np.mean(inps)}


def test_eval_regdb_numbers_equal_a_naive_loop(tmp_path):
    from feature_fixtures import regdb_like

    feats, pids, mods = regdb_like(seed=4, ids=15, per=3, shift=0.5, noise=1.1)
    path = save_features(tmp_path / "r.npz", feats, pids, mods + 1, mods, dataset="regdb", split=1)
    for protocol, qm in (("regdb-v2i", 0), ("regdb-i2v", 1)):
        out = tmp_path / f"{protocol}.json"
        assert main(["eval", str(path), "--protocol", protocol, "--json", str(out)]) == 0
        got = json.loads(out.read_text())["mean"]
        q, g = mods == qm, mods != qm
        want = _naive_regdb(feats[q], feats[g], pids[q], pids[g])
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-4), (protocol, key)  # float32 CMC


def test_eval_runs_mean_is_the_mean_of_each_files_own_evaluation(tmp_path, capsys):
    """--runs: the JSON mean and population std over runs equal those of each file
    evaluated on its own by the command (read back from its JSON)."""
    from feature_fixtures import sysu_like

    files, alone = [], []
    for seed in range(3):
        feats, pids, cams, mod = sysu_like(seed=seed)
        path = save_features(tmp_path / f"s{seed}.npz", feats, pids, cams, mod)
        files.append(str(path))
        one = tmp_path / f"one{seed}.json"
        assert main(["eval", str(path), "--protocol", "sysu-all", "--trials", "3",
                     "--json", str(one)]) == 0  # fmt: skip
        alone.append(json.loads(one.read_text())["mean"])
    out = tmp_path / "runs.json"
    argv = ["eval", *files, "--protocol", "sysu-all", "--trials", "3", "--runs", "--json"]
    assert main([*argv, str(out)]) == 0
    got = json.loads(out.read_text())
    for key in ("R1", "R10", "mAP", "mINP"):
        vals = np.array([a[key] for a in alone])
        assert got["mean"][key] == pytest.approx(vals.mean(), abs=1e-9)
        assert got["std"][key] == pytest.approx(vals.std(ddof=0), abs=1e-9)
    capsys.readouterr()


@pytest.mark.parametrize(
    "key,values",
    [("test_size", ([32, 16], [48, 24])), ("test_resize", ("bilinear", "lanczos"))],
)
def test_eval_runs_refuses_files_extracted_at_another_size_or_filter(tmp_path, capsys, key, values):
    """compare calls runs extracted at another test_size or test_resize not comparable;
    `eval --runs` averaged them as seeds of one method (two `uvireid extract` files of one
    run, one of them with train.height=48)."""
    from feature_fixtures import sysu_like

    feats, pids, cams, mod = sysu_like(seed=1)
    files = [
        str(save_features(tmp_path / f"{i}.npz", feats, pids, cams, mod, **{key: v}))
        for i, v in enumerate(values)
    ]
    assert main(["eval", *files, "--protocol", "sysu-all", "--trials", "1", "--runs"]) == 2
    assert key in capsys.readouterr().err


def test_eval_runs_refuses_a_file_extracted_with_a_changed_recipe(tmp_path, capsys):
    """`uvireid extract RUN train.height=48` records the change ('changes'); such a file
    is no seed of the run's method, beside another run's own features."""
    from feature_fixtures import sysu_like

    feats, pids, cams, mod = sysu_like(seed=1)
    own = save_features(tmp_path / "own.npz", feats, pids, cams, mod)
    changed = save_features(
        tmp_path / "changed.npz", feats, pids, cams, mod, changes={"train.height": "32 -> 48"}
    )
    args = ["eval", str(own), str(changed), "--protocol", "sysu-all", "--trials", "1"]
    assert main([*args, "--runs"]) == 2
    assert "meta 'changes'" in capsys.readouterr().err
    same = save_features(  # another run extracted with the same change
        tmp_path / "same.npz", feats + 0.01, pids, cams, mod, changes={"train.height": "32 -> 48"}
    )
    assert main(["eval", str(changed), str(same), *args[3:], "--runs"]) == 0


def test_embed_in_chunks_keeps_order_and_modality_of_each_file(recipe_file, tmp_path):
    """embed with unreadable files among readable ones, in chunks of 2, a modality per
    file: each kept row is the file's own features (embedded alone, with its modality),
    in the order given; the unreadable files are listed, not embedded."""
    _texture(yaml.safe_load(recipe_file.read_text())["data"]["root"])
    folder = run_recipe(load_recipe(recipe_file), progress=False).path
    model = uvireid.load_model(folder)
    import torch

    with torch.no_grad():  # the tiny run's two stems are near copies: make them differ
        for p in model.backbone.stream(1).parameters():
            p.add_(0.05 * torch.randn_like(p))
    own = load_features(folder / "features.npz")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    bad = str(tmp_path / "bad.jpg")
    good = [str(p) for p in own.paths[:5]]
    paths = [good[0], bad, good[1], good[2], bad, good[3], good[4]]
    mods = ["visible", "infrared", "infrared", "visible", "visible", "infrared", "visible"]
    feats, kept, skipped = model.embed(paths, mods, chunk=2)
    assert kept == good and skipped == [bad, bad]
    want = [m for p, m in zip(paths, mods) if p != bad]
    for row, (path, mod) in enumerate(zip(good, want)):
        alone = model.features([path], mod)
        np.testing.assert_allclose(feats[row], alone[0], atol=1e-6)
    # the two modalities give other features (the check above can fail)
    assert want[1] == "infrared"
    other = model.features([good[1]], "visible")
    assert np.abs(other[0] - feats[1]).max() > 1e-4
    assert model.features([], "visible").shape == (0, feats.shape[1])


def _copy_with(run, dest, config=None, results=None):
    shutil.copytree(run, dest)
    if config:
        cfg = yaml.safe_load((dest / "config.yaml").read_text())
        config(cfg)
        (dest / "config.yaml").write_text(yaml.safe_dump(cfg))
    if results:
        _edit_json(dest / "results.json", results)
    return dest


def test_a_sweep_with_32_and_32_0_groups_them_as_one_setting(seeds, tmp_path):
    """train.height 32 (two seeds), 32.0 (YAML's float) and 48: two settings, not three
    (1 and 1.0 are one value as != has it)."""
    a, b, c = seeds
    f32 = _copy_with(c, tmp_path / "f32", config=lambda cfg: cfg["train"].update(height=32.0))
    h48 = _copy_with(c, tmp_path / "h48", config=lambda cfg: cfg["train"].update(height=48))
    groups = compare_runs([a, b, f32, h48])["groups"]["none"]
    assert [len(g["runs"]) for g in groups] == [3, 1]
    assert groups[0]["runs"] == [str(a), str(b), str(f32)]


def test_an_older_run_without_features_meta_is_still_comparable(seeds, tmp_path):
    """The extraction fields (test_flip, test_size, test_resize) are compared where
    recorded: a run of an older version without them is no other protocol."""

    def strip(res):
        for table in res.values():
            table["provenance"].pop("features_meta", None)

    older = _copy_with(seeds[1], tmp_path / "older", results=strip)
    report = compare_runs([seeds[0], older])
    assert report["comparable"], report["not_comparable"]


def test_eval_runs_compares_meta_only_where_both_files_record_it(tmp_path, capsys):
    """--runs: a file that records its feature head beside one that does not (an older
    export) is no other method."""
    from feature_fixtures import sysu_like

    feats, pids, cams, mod = sysu_like(seed=2)
    a = save_features(tmp_path / "a.npz", feats, pids, cams, mod, feature_head="bn_feat")
    b = save_features(tmp_path / "b.npz", feats[::-1], pids[::-1], cams[::-1], mod[::-1])
    argv = ["eval", str(a), str(b), "--protocol", "sysu-all", "--trials", "1", "--runs"]
    assert main(argv) == 0
    capsys.readouterr()


def test_eval_runs_header_does_not_carry_the_first_files_epoch(tmp_path, capsys):
    """--runs: each row says its run's epoch; the protocol's line above them is the
    runs' common one, without the first file's epoch (the same file alone says it)."""
    from feature_fixtures import sysu_like

    files = []
    for seed, epoch in ((0, 3), (1, 7)):
        feats, pids, cams, mod = sysu_like(seed=seed)
        meta = {"epoch": epoch, "final": True, "produced_by": "uvireid run demo"}
        files.append(str(save_features(tmp_path / f"{seed}.npz", feats, pids, cams, mod, **meta)))
    assert main(["eval", files[0], "--protocol", "sysu-all", "--trials", "1"]) == 0
    assert "epoch 3" in capsys.readouterr().out  # the check below can fail
    assert main(["eval", *files, "--protocol", "sysu-all", "--trials", "1", "--runs"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "runs, each the mean over its trials" in header and "epoch 3" not in header
