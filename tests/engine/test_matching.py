"""``uvireid match`` and the ranking under it: each query's nearest gallery images against a
per-row sort of naive dot products, a trained run's model on folders of images (with an
unreadable one), a features file, and the errors."""

from __future__ import annotations

import csv
import io
import re
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image
from train_fixtures import tiny_recipe

import uvireid
from uvireid.cli import main
from uvireid.config import load_recipe
from uvireid.engine.matching import image_files, top_matches
from uvireid.engine.runner import run_recipe
from uvireid.errors import ConfigError, DatasetError
from uvireid.features import load_features
from uvireid.registry import RERANKERS


def naive_top(dist, top):
    """Each row's first ``top`` columns by (distance, column): a Python sort per row."""
    rows = []
    for row in dist:
        order = sorted(range(len(row)), key=lambda j: (row[j], j))[:top]
        rows.append(order)
    return np.array(rows)


def naive_dist(q, g):
    return np.array([[-sum(float(a) * float(b) for a, b in zip(x, y)) for y in g] for x in q])


@pytest.mark.parametrize("top,block", [(3, 2), (7, 50), (40, 3)])
def test_top_matches_are_a_stable_sort_of_the_dot_products_with_ties(top, block):
    rng = np.random.default_rng(0)
    # features on a coarse grid, and repeated gallery rows: many equal distances, inside
    # and at the boundary of the kept ranks
    g = np.round(rng.normal(size=(25, 4)), 0).astype(np.float32)
    g[10:15] = g[3]
    q = np.round(rng.normal(size=(9, 4)), 0).astype(np.float32)
    index, dist = top_matches(q, g, top, block=block)
    ref = naive_dist(q, g)
    want = naive_top(ref, min(top, len(g)))
    np.testing.assert_array_equal(index, want)
    np.testing.assert_allclose(dist, np.take_along_axis(ref, want, axis=1), rtol=0, atol=1e-5)
    assert index.shape == (9, min(top, 25))
    assert (ref == ref[:, [3]]).sum() > 5 * len(q)  # the ties are there


def test_top_matches_with_a_reranker_rank_its_distances():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(6, 8))
    g = rng.normal(size=(11, 8))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    cmfp = RERANKERS.build({"type": "cmfp", "k": 3})
    index, dist = top_matches(q, g, 4, reranker=cmfp)
    full = np.asarray(cmfp.rerank(q, g))
    want = naive_top(full, 4)
    np.testing.assert_array_equal(index, want)
    np.testing.assert_array_equal(dist, np.take_along_axis(full, want, axis=1))

    # CMFP propagates once and ranks a block of queries at a time: the same ranks as its
    # dense distance matrix, on its sparse path too, on a device wrapper, no rerank call
    from uvireid.rerank import OnDevice

    class NoMatrix(OnDevice):
        def rerank(self, query, gallery):
            raise AssertionError("the (Nq, Ng) matrix was asked for")

    sparse = NoMatrix(RERANKERS.build({"type": "cmfp", "k": 3, "mode": "sparse"}), "cpu")
    index, dist = top_matches(q, g, 4, reranker=sparse, block=4)
    np.testing.assert_array_equal(index, want)
    np.testing.assert_allclose(dist, np.take_along_axis(full, want, axis=1), rtol=0, atol=1e-6)

    class Fixed:  # a plugin's re-ranker: a distance matrix with ties
        def rerank(self, query, gallery):
            return np.tile(np.array([2.0, 1.0, 1.0, 0.5, 1.0] * 2 + [3.0]), (len(query), 1))

    index, _ = top_matches(q, g, 5, reranker=Fixed())
    np.testing.assert_array_equal(index[0], [3, 8, 1, 2, 4])

    class Wrong:
        def rerank(self, query, gallery):
            return np.zeros((len(gallery), len(query)))

    with pytest.raises(ConfigError, match=r"returned a \(11, 6\) matrix"):
        top_matches(q, g, 3, reranker=Wrong())

    class Undefined:
        def rerank(self, query, gallery):
            out = np.zeros((len(query), len(gallery)))
            out[2, 5] = np.nan
            return out

    with pytest.raises(ConfigError, match=r"NaN distances \(1 of 66\)"):
        top_matches(q, g, 3, reranker=Undefined())


def test_top_matches_bad_input():
    g = np.eye(4, dtype=np.float32)
    with pytest.raises(ConfigError, match="4-d and gallery features 3-d"):
        top_matches(g, g[:, :3])
    bad = g.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ConfigError, match="query features hold NaN"):
        top_matches(bad, g)
    with pytest.raises(ConfigError, match="gallery features: .*N >= 1"):
        top_matches(g, g[:0])
    for top in (0, True, 2.5):
        with pytest.raises(ConfigError, match="top: an integer >= 1"):
            top_matches(g, g, top)
    with pytest.raises(ConfigError, match="block: an integer >= 1"):
        top_matches(g, g, 2, block=0)


def test_image_files_expand_folders_once_and_name_what_is_wrong(tmp_path):
    (tmp_path / "a" / "deep" / ".hidden").mkdir(parents=True)
    for name in ("a/x.png", "a/deep/y.jpg", "a/deep/.hidden/z.png", "a/.w.png", "b.bmp"):
        Image.new("RGB", (4, 8)).save(tmp_path / name)
    (tmp_path / "a" / "notes.txt").write_text("x")
    got = image_files([tmp_path / "a", tmp_path / "a" / "x.png", tmp_path / "b.bmp"])
    assert got == [
        str(tmp_path / "a/deep/y.jpg"),
        str(tmp_path / "a/x.png"),
        str(tmp_path / "b.bmp"),
    ]
    with pytest.raises(DatasetError, match="notes.txt is not an image file"):
        image_files([tmp_path / "a" / "notes.txt"], "--visible")
    with pytest.raises(DatasetError, match="--infrared: .*nothere does not exist"):
        image_files([tmp_path / "nothere"], "--infrared")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no image file"):
        image_files([tmp_path / "empty"])
    with pytest.raises(DatasetError, match="no image given"):
        image_files([])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("match")
    recipe = tmp / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp)))
    return run_recipe(load_recipe(recipe), progress=False).path


def _rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def _test_images(run_dir):
    own = load_features(run_dir / "features.npz")
    vis = [p for p, m in zip(own.paths, own.modality) if m == 0]
    ir = [p for p, m in zip(own.paths, own.modality) if m == 1]
    return own, vis, ir


def test_embed_skips_unreadable_files_and_reads_in_chunks(run_dir, tmp_path):
    model = uvireid.load_model(run_dir)
    _, vis, _ = _test_images(run_dir)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths = [vis[0], str(tmp_path / "broken.jpg"), *vis[1:7]]
    feats, kept, skipped = model.embed(paths, "visible", chunk=3)
    assert skipped == [str(tmp_path / "broken.jpg")]
    assert kept == [vis[0], *vis[1:7]]
    whole = model.features(kept, "visible")
    np.testing.assert_allclose(feats, whole, rtol=0, atol=1e-6)
    # features() of more files than a chunk: the same rows, a chunk decoded at a time
    model.chunk = 2
    np.testing.assert_allclose(model.features(kept, "visible"), whole, rtol=0, atol=1e-6)
    none, kept, skipped = model.embed([str(tmp_path / "broken.jpg")], "infrared")
    assert none.shape[0] == 0 and kept == [] and len(skipped) == 1
    with pytest.raises(ConfigError, match="chunk: at least 1"):
        model.embed(kept, "visible", chunk=0)


def test_match_a_runs_model_on_folders_of_images(run_dir, tmp_path, capsys, caplog):
    _, vis, ir = _test_images(run_dir)
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i, p in enumerate(vis[:10]):
        shutil.copy(p, gallery / f"g{i:02d}.jpg")
    (gallery / "broken.jpg").write_bytes(b"not an image")
    rc = main(
        [
            "match",
            str(run_dir),
            "--infrared",
            *ir[:4],
            "--visible",
            str(gallery),
            "--top",
            "3",
            "--save-features",
            str(tmp_path / "mine.npz"),
            "--device",
            "cpu",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0
    assert "1 of 11 visible image(s) cannot be read" in caplog.text
    assert "broken.jpg" in caplog.text
    assert len(caplog.records) == 1  # said once, not also by the decoder
    assert "embedded 14 images" in err
    rows = _rows(out)
    assert len(rows) == 4 * 3
    # against the model's features of the same files and a naive ranking of their products
    model = uvireid.load_model(run_dir)
    g_paths = [str(gallery / f"g{i:02d}.jpg") for i in range(10)]
    ref = naive_dist(model.features(ir[:4], "infrared"), model.features(g_paths, "visible"))
    want = naive_top(ref, 3)
    for qi, q in enumerate(ir[:4]):
        mine = [r for r in rows if r["query"] == q]
        assert [r["rank"] for r in mine] == ["1", "2", "3"]
        assert [r["gallery"] for r in mine] == [g_paths[j] for j in want[qi]]
        np.testing.assert_allclose(
            [float(r["distance"]) for r in mine], ref[qi, want[qi]], rtol=1e-5, atol=1e-6
        )
        assert {r["query_pid"] for r in mine} == {"-1"}
    # the saved features give the same matches without the model, and another re-ranker
    assert (
        main(["match", str(tmp_path / "mine.npz"), "--top", "3", "-o", str(tmp_path / "a.csv")])
        == 0
    )
    assert _rows((tmp_path / "a.csv").read_text()) == rows
    saved = load_features(tmp_path / "mine.npz")
    assert saved.meta["epoch"] == 2 and len(saved.pids) == 14
    capsys.readouterr()
    assert (
        main(["match", str(tmp_path / "mine.npz"), "--reranker", "cmfp", "--k", "2", "--top", "10"])
        == 0
    )
    out, err = capsys.readouterr()
    ir_rows = np.flatnonzero(saved.modality == 1)
    vis_rows = np.flatnonzero(saved.modality == 0)
    full = RERANKERS.build({"type": "cmfp", "k": 2}).rerank(
        saved.feats[ir_rows], saved.feats[vis_rows]
    )
    want = naive_top(np.asarray(full), 10)
    got = [[r["gallery"] for r in _rows(out) if r["query"] == saved.paths[q]] for q in ir_rows]
    assert got == [[saved.paths[vis_rows[j]] for j in row] for row in want]
    assert "re-ranker: cmfp(k=2)" in err


def test_match_a_features_file_either_way_with_its_ids(run_dir, capsys):
    own, vis, ir = _test_images(run_dir)
    assert main(["match", str(run_dir / "features.npz"), "--direction", "v2i", "--top", "2"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert {r["query"] for r in rows} == set(vis) and len(rows) == 2 * len(vis)
    pid = dict(zip(own.paths, own.pids.tolist()))
    assert all(int(r["query_pid"]) == pid[r["query"]] for r in rows)
    assert all(int(r["gallery_pid"]) == pid[r["gallery"]] and r["gallery"] in ir for r in rows)


def test_match_errors_name_the_fix(run_dir, tmp_path, capsys):
    _, vis, ir = _test_images(run_dir)
    feats = str(run_dir / "features.npz")
    cases = [
        (["match", feats, "--visible", vis[0]], "is a features file: .*--visible do"),
        (["match", feats, "--save-features", str(tmp_path / "x.npz")], "--save-features"),
        (["match", str(run_dir), "--infrared", ir[0]], "give the images to match with --visible"),
        (
            ["match", str(run_dir), "--infrared", vis[0], "--visible", vis[0]],
            "both visible and infrared",
        ),
        (["match", feats, "--reranker", "all"], "uvireid rerank FEATURES.npz --reranker all"),
        (["match", feats, "--k", "3"], "give --reranker too"),
        (["match", str(tmp_path), "--visible", vis[0]], "not a run folder"),
        (["match", feats, "-o", feats], "exists; pass --force"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert re.search(message, err), (argv, err)
    # a features file with one modality only
    own = load_features(feats)
    keep = own.modality == 0
    uvireid.save_features(
        tmp_path / "vis.npz", own.feats[keep], own.pids[keep], own.cams[keep], own.modality[keep]
    )
    assert main(["match", str(tmp_path / "vis.npz")]) == 2
    assert "no infrared image, the query of --direction i2v" in capsys.readouterr().err


def test_own_unlabelled_folders_train_then_match(tmp_path, capsys):
    """The workflow of a user with crops and no ids: the folder dataset trains a run (no
    evaluation), and match ranks the same folders with its model."""
    rec = tiny_recipe(tmp_path)
    sysu = tmp_path / "SYSU-MM01"
    for cam, mod in (("cam1", "visible"), ("cam2", "visible"), ("cam3", "infrared")):
        for f in sorted((sysu / cam).rglob("*.jpg")):
            (tmp_path / "own" / mod / cam).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, tmp_path / "own" / mod / cam / f"{f.parent.name}_{f.name}")
    rec["data"] = {"type": "folder", "root": str(tmp_path / "own")}
    rec["evaluation"] = {"protocol": "auto"}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(rec))
    run = run_recipe(load_recipe(tmp_path / "own.yaml"), progress=False).path
    assert not (run / "features.npz").exists()  # nothing to evaluate on
    own = tmp_path / "own"
    argv = [
        "match",
        str(run),
        "--infrared",
        str(own / "infrared"),
        "--visible",
        str(own / "visible"),
    ]
    assert main([*argv, "--top", "4", "--device", "cpu"]) == 0
    rows = _rows(capsys.readouterr().out)
    queries = sorted(str(p) for p in (own / "infrared").rglob("*.jpg"))
    assert sorted({r["query"] for r in rows}) == queries and len(rows) == 4 * len(queries)
    assert all(r["gallery"].startswith(str(own / "visible")) for r in rows)
