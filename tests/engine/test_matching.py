"""``uvireid match`` and the ranking under it: each query's nearest gallery images against a
per-row sort of naive dot products, a trained run's model on folders of images (with an
unreadable one), a features file, and the errors."""

from __future__ import annotations

import csv
import io
import logging
import os
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
    assert "embedded 14 images" in err and "(epoch 1 (salcr), 32x16)" in err
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
    # the last trained epoch's index, as the run's own features file numbers it
    own = load_features(run_dir / "features.npz")
    assert saved.meta["epoch"] == own.meta["epoch"] == 1 and saved.meta["checkpoint_epoch"] == 2
    assert saved.meta["stage"] == own.meta["stage"] and len(saved.pids) == 14
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
        (["match", feats, "-o", feats], "is the features file being read"),
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


def test_top_matches_refuses_non_finite_gallery_features_too():
    g = np.eye(4, dtype=np.float32)
    bad = g.copy()
    bad[2, 0] = np.inf
    with pytest.raises(ConfigError, match="gallery features hold NaN or inf"):
        top_matches(g, bad)


def test_top_matches_rank_float64_features_in_float64():
    q = np.array([[1.0, 0.0]])
    g = np.array([[1 - 2e-12, 0.0], [1 - 1e-12, 0.0]])  # equal in float32
    index, dist = top_matches(q, g, 2)
    assert index.tolist() == [[1, 0]]
    assert dist.dtype == np.float64


def test_image_files_expand_home_and_give_absolute_paths_once(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "pics").mkdir(parents=True)
    Image.new("RGB", (4, 8)).save(home / "pics" / "a.png")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    want = [str(home / "pics" / "a.png")]
    assert image_files(["~/pics"]) == want
    assert image_files(["pics/a.png"]) == want
    assert image_files(["pics", "./pics/a.png", "~/pics/a.png"]) == want  # one image, once


def test_embed_and_features_keep_per_file_modalities_across_chunks(run_dir, tmp_path):
    model = uvireid.load_model(run_dir)
    _, vis, ir = _test_images(run_dir)
    paths = [vis[0], ir[0], vis[1], ir[1], vis[2], ir[2]]
    mods = ["visible", "infrared"] * 3
    one = np.concatenate([model.features([p], m) for p, m in zip(paths, mods)])
    # the two streams give the two modalities other features: the check can fail
    assert np.abs(model.features([vis[0]], "infrared") - one[:1]).max() > 1e-4
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    feats, kept, skipped = model.embed(
        [paths[0], str(tmp_path / "broken.jpg"), *paths[1:]],
        [mods[0], "infrared", *mods[1:]],
        chunk=4,
    )
    assert kept == paths and skipped == [str(tmp_path / "broken.jpg")]
    np.testing.assert_allclose(feats, one, rtol=0, atol=1e-5)
    model.chunk = 4  # chunks (v, i, v, i) and (v, i): cut at 3 too, (v, i, v) and (i, v, i)
    np.testing.assert_allclose(model.features(paths, mods), one, rtol=0, atol=1e-5)
    model.chunk = 3
    np.testing.assert_allclose(model.features(paths, mods), one, rtol=0, atol=1e-5)
    # nothing readable: no rows, but the model's width
    none, kept, _ = model.embed([str(tmp_path / "broken.jpg")], "visible")
    assert none.shape == (0, one.shape[1]) and none.dtype == np.float32 and kept == []


def test_files_are_decoded_a_chunk_at_a_time(run_dir, monkeypatch):
    model = uvireid.load_model(run_dir)
    _, vis, _ = _test_images(run_dir)
    sizes = []
    real = model._read

    def spy(paths):
        sizes.append(len(paths))
        return real(paths)

    monkeypatch.setattr(model, "_read", spy)
    model.embed(vis[:7], "visible", chunk=3)
    assert sizes == [3, 3, 1]
    sizes.clear()
    model.chunk = 2
    model.features(vis[:5], "visible")
    assert sizes == [2, 2, 1]


def test_load_images_quiet_with_and_without_a_cache(tmp_path, caplog):
    from uvireid.data.transforms import load_images
    from uvireid.types import ImageRecord

    Image.new("RGB", (4, 8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    recs = [ImageRecord(str(tmp_path / n), -1, -1, 0) for n in ("a.png", "b.png")]
    for quiet_cache, loud_cache in ((None, None), (tmp_path / "c1", tmp_path / "c2")):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _, ok = load_images(recs, 8, 4, cache_dir=quiet_cache, quiet=True)
        assert ok.tolist() == [True, False]
        assert "could not be read" not in caplog.text
        with caplog.at_level(logging.WARNING):
            load_images(recs, 8, 4, cache_dir=loud_cache)
        assert "could not be read" in caplog.text


def test_match_options_the_shipped_tests_leave_out(run_dir, tmp_path, capsys):
    own, vis, ir = _test_images(run_dir)
    feats = str(run_dir / "features.npz")
    # --checkpoint does not apply to a features file
    assert main(["match", feats, "--checkpoint", "best"]) == 2
    assert "--checkpoint do(es) not apply" in capsys.readouterr().err
    # -o and --save-features the same file
    same = str(tmp_path / "same.out")
    argv = ["match", str(run_dir), "--infrared", ir[0], "--visible", vis[0], "--device", "cpu"]
    assert main([*argv, "-o", same, "--save-features", same]) == 2
    assert "name the same file" in capsys.readouterr().err
    # --force overwrites
    out = tmp_path / "m.csv"
    out.write_text("old")
    assert main(["match", feats, "--top", "1", "-o", str(out), "--force"]) == 0
    assert out.read_text().startswith("query,rank,gallery,distance,query_pid,gallery_pid\n")
    # every infrared image unreadable: said so, before any CSV
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"no")
    capsys.readouterr()
    rc = main(["match", str(run_dir), "--infrared", str(tmp_path / "bad"), "--visible", vis[0]])
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == ""
    assert "none of the 1 infrared image(s) can be read" in cap.err
    # a features file without paths: rows named by their row number in the file
    uvireid.save_features(tmp_path / "np.npz", own.feats, own.pids, own.cams, own.modality)
    assert main(["match", str(tmp_path / "np.npz"), "--top", "1"]) == 0
    rows = _rows(capsys.readouterr().out)
    q = np.flatnonzero(own.modality == 1)
    assert [r["query"] for r in rows] == [f"row:{i}" for i in q]
    for r in rows:
        g = int(r["gallery"].removeprefix("row:"))
        assert own.modality[g] == 0 and int(r["gallery_pid"]) == own.pids[g]
        assert int(r["query_pid"]) == own.pids[int(r["query"].removeprefix("row:"))]


def test_o_and_save_features_are_one_file_by_another_spelling(run_dir, tmp_path, monkeypatch):
    _, vis, ir = _test_images(run_dir)
    monkeypatch.chdir(tmp_path)
    argv = ["match", str(run_dir), "--infrared", ir[0], "--visible", vis[0], "--device", "cpu"]
    rc = main([*argv, "-o", str(tmp_path / "same.out"), "--save-features", "same.out"])
    assert rc == 2


def test_o_may_not_be_the_features_file_being_read(run_dir, tmp_path):
    copy = tmp_path / "copy.npz"
    shutil.copy(run_dir / "features.npz", copy)
    assert main(["match", str(copy), "-o", str(copy), "--force"]) == 2
    load_features(copy)


def test_o_through_a_link_writes_its_target(run_dir, tmp_path):
    (tmp_path / "shared").mkdir()
    target = tmp_path / "shared" / "m.csv"
    target.write_text("old")
    (tmp_path / "link.csv").symlink_to(target)
    feats = str(run_dir / "features.npz")
    assert main(["match", feats, "--top", "1", "-o", str(tmp_path / "link.csv"), "--force"]) == 0
    assert (tmp_path / "link.csv").is_symlink()
    assert target.read_text().startswith("query,rank")


def test_o_to_a_dev_fd_pipe(run_dir):
    if not os.path.exists("/dev/fd"):
        pytest.skip("no /dev/fd")
    r, w = os.pipe()
    try:
        assert (
            main(["match", str(run_dir / "features.npz"), "--top", "1", "-o", f"/dev/fd/{w}"]) == 0
        )
    finally:
        os.close(w)
    with os.fdopen(r) as fh:
        assert fh.readline().startswith("query,rank")


def test_a_non_utf8_file_name_is_written_to_the_csv(run_dir, tmp_path):
    _, vis, ir = _test_images(run_dir)
    folder = os.fsencode(tmp_path) + b"/g"
    os.mkdir(folder)
    name = folder + b"/\xff\xfe.jpg"
    try:
        shutil.copy(vis[0], name)
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    out = tmp_path / "m.csv"
    argv = ["match", str(run_dir), "--infrared", ir[0], "--visible", os.fsdecode(folder)]
    assert main([*argv, "--device", "cpu", "-o", str(out)]) == 0
    with open(out, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert os.fsencode(rows[0]["gallery"]) == name


def test_a_linked_sub_folder_is_searched_once(tmp_path, caplog):
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (4, 8)).save(other / "a.png")
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    Image.new("RGB", (4, 8)).save(gallery / "b.png")
    (gallery / "linked").symlink_to(other)
    with caplog.at_level(logging.WARNING):
        got = image_files([gallery])
    assert got == [str(gallery / "b.png"), str(gallery / "linked" / "a.png")]
    # a link cycle ends, and a second link to a listed folder lists nothing twice
    (other / "back").symlink_to(gallery)
    (gallery / "again").symlink_to(other)
    again = image_files([gallery])
    assert len(again) == 2 and {os.path.realpath(p) for p in again} == {
        str(other / "a.png"),
        str(gallery / "b.png"),
    }


def test_one_file_as_both_modalities_through_a_link(run_dir, tmp_path, capsys):
    _, vis, ir = _test_images(run_dir)
    (tmp_path / "alias.jpg").symlink_to(ir[0])
    argv = ["match", str(run_dir), "--infrared", ir[0], "--visible", vis[0]]
    assert main([*argv, str(tmp_path / "alias.jpg"), "--device", "cpu"]) == 2
    assert "both visible and infrared" in capsys.readouterr().err


def test_unnormalised_features_are_ranked_by_cosine_and_said(run_dir, tmp_path, capsys, caplog):
    own = load_features(run_dir / "features.npz")
    scale = np.random.default_rng(0).uniform(0.1, 10, size=(len(own.pids), 1))
    uvireid.save_features(
        tmp_path / "u.npz",
        (own.feats * scale).astype(np.float32),
        own.pids,
        own.cams,
        own.modality,
        paths=own.paths,
    )
    assert main(["match", str(run_dir / "features.npz"), "--top", "3"]) == 0
    want = [(r["query"], r["gallery"]) for r in _rows(capsys.readouterr().out)]
    with caplog.at_level(logging.WARNING):
        assert main(["match", str(tmp_path / "u.npz"), "--top", "3"]) == 0
    cap = capsys.readouterr()
    got = [(r["query"], r["gallery"]) for r in _rows(cap.out)]
    # the help promises "-cosine without a re-ranker": not the raw dot product, which
    # favours long rows
    assert got == want and "are L2-normalised" in cap.err


def test_top_matches_with_cmfp_on_each_device_as_on_the_cpu(device):
    """CMFP wrapped for a device propagates there (OnDevice.propagate) and ranks as on the
    CPU, ties in gallery order."""
    from uvireid.rerank import OnDevice

    rng = np.random.default_rng(4)
    q = rng.normal(size=(40, 16)).astype(np.float32)
    g = rng.normal(size=(90, 16)).astype(np.float32)
    g[50] = g[7]  # two equal gallery rows
    cmfp = RERANKERS.build({"type": "cmfp", "k": 5})
    want_i, want_d = top_matches(q, g, 8, reranker=cmfp)
    wrapped = OnDevice(cmfp, device)
    qp, gp = wrapped.propagate(q, g)
    assert isinstance(qp, np.ndarray) and qp.shape == q.shape and gp.shape == g.shape
    got_i, got_d = top_matches(q, g, 8, reranker=wrapped, block=7)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_d, want_d, rtol=0, atol=1e-5)


def test_match_figure_is_written_and_its_requirement_checked_first(
    run_dir, tmp_path, monkeypatch, capsys
):
    feats = str(run_dir / "features.npz")
    png = tmp_path / "m.png"
    argv = ["match", feats, "--top", "3", "--figure", str(png), "--figure-queries", "2"]
    assert main([*argv, "-o", str(tmp_path / "m.csv")]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote " + str(png) + ": the first 2 queries' matches" in capsys.readouterr().err
    assert main([*argv, "-o", str(png), "--force"]) == 2  # one file for two outputs
    assert "-o and --figure name the same file" in capsys.readouterr().err
    import uvireid.viz

    def missing():
        raise uvireid.UvireidError("plots need matplotlib, which is not installed")

    monkeypatch.setattr(uvireid.viz, "require_matplotlib", missing)
    out = tmp_path / "never.csv"
    assert main([*argv, "--force", "-o", str(out)]) == 2
    assert "plots need matplotlib" in capsys.readouterr().err and not out.exists()


def test_match_figure_draws_the_first_queries_with_their_gallery_and_ids(
    run_dir, tmp_path, monkeypatch, capsys
):
    from uvireid.viz import ranking

    seen = {}
    monkeypatch.setattr(ranking, "plot_matches", lambda *a, **kw: seen.update(args=a, kw=kw))
    src = run_dir / "features.npz"
    feats = load_features(src)
    q, g = np.flatnonzero(feats.modality == 1), np.flatnonzero(feats.modality == 0)
    out = tmp_path / "m.csv"
    argv = ["match", str(src), "--top", "3", "--figure", str(tmp_path / "m.png"),
            "--figure-queries", "100", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert f"the first {len(q)} queries' matches" in capsys.readouterr().err  # not 100
    qpaths, gpaths, index, dist, _ = seen["args"]
    assert qpaths == [str(p) for p in feats.paths[q]]
    assert gpaths == [str(p) for p in feats.paths[g]]
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    drawn = [(qpaths[i], r + 1, gpaths[index[i, r]]) for i in range(len(q)) for r in range(3)]
    assert drawn == [(row["query"], int(row["rank"]), row["gallery"]) for row in rows]
    np.testing.assert_array_equal(seen["kw"]["query_pids"], feats.pids[q])
    np.testing.assert_array_equal(seen["kw"]["gallery_pids"], feats.pids[g])
    assert "infrared queries, visible gallery, re-ranker none" in seen["kw"]["title"]


def test_match_figure_refuses_an_existing_file_and_the_source(run_dir, tmp_path, capsys):
    src = run_dir / "features.npz"
    png, out = tmp_path / "m.png", tmp_path / "m.csv"
    png.write_bytes(b"keep")
    assert main(["match", str(src), "--figure", str(png), "-o", str(out)]) == 2
    assert f"{png} exists; pass --force" in capsys.readouterr().err
    assert png.read_bytes() == b"keep" and not out.exists()
    before = src.read_bytes()
    assert main(["match", str(src), "--figure", str(src), "--force", "-o", str(out)]) == 2
    assert "is the features file being read" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_match_figure_outputs_a_png_only_through_pipes_and_links_with_force(
    run_dir, tmp_path, capsys
):
    src = str(run_dir / "features.npz")
    argv = [
        "match",
        src,
        "--top",
        "2",
        "--figure-queries",
        "2",
        "-o",
        str(tmp_path / "m.csv"),
        "--force",
    ]
    # another format's name holding PNG bytes: refused
    assert main([*argv, "--figure", str(tmp_path / "m.pdf")]) == 2
    assert "the figure is a PNG; name it m.png" in capsys.readouterr().err
    # into a pipe (/dev/fd/N): the PNG's bytes come through (savefig needed a seekable file)
    r, w = os.pipe()
    import threading

    got = []
    reader = threading.Thread(target=lambda: got.append(os.fdopen(r, "rb").read()))
    reader.start()
    try:
        assert main([*argv, "--figure", f"/dev/fd/{w}"]) == 0
    finally:
        os.close(w)
        reader.join()
    assert got[0][:8] == b"\x89PNG\r\n\x1a\n"
    # a link to an existing file of one's own: overwritten only with --force
    target = tmp_path / "keep.png"
    target.write_bytes(b"keep")
    (tmp_path / "link.png").symlink_to(target)
    no_force = [a for a in argv if a != "--force"]
    assert main([*no_force, "--figure", str(tmp_path / "link.png")]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and target.read_bytes() == b"keep"
    assert main([*argv, "--figure", str(tmp_path / "link.png")]) == 0
    assert (tmp_path / "link.png").is_symlink() and target.read_bytes()[:4] == b"\x89PNG"
    # a features file without paths: ids and distances only, and said
    own = load_features(src)
    uvireid.save_features(tmp_path / "np.npz", own.feats, own.pids, own.cams, own.modality)
    capsys.readouterr()
    nopaths = ["match", str(tmp_path / "np.npz"), "--top", "2", "-o", str(tmp_path / "n.csv")]
    assert main([*nopaths, "--figure", str(tmp_path / "n.png")]) == 0
    assert "no image paths: the figure shows ids and distances only" in capsys.readouterr().err
    assert main([*argv, "--figure", str(tmp_path / "x.png"), "--figure-queries", "101"]) == 2
    assert "at most 100 queries in one figure" in capsys.readouterr().err


def test_new_queries_against_a_gallery_embedded_before(run_dir, tmp_path, capsys):
    """`--gallery F.npz`: only the queries are embedded, and ranked against the file's
    gallery rows as if both had been embedded together; the run's own features.npz and
    extract's file are galleries of the same weights too (with their ids)."""
    _, vis, ir = _test_images(run_dir)
    gallery = tmp_path / "gallery.npz"
    argv = ["match", str(run_dir), "--visible", *vis[:10], "--infrared", ir[0]]
    assert main([*argv, "--save-features", str(gallery), "-o", str(tmp_path / "a.csv")]) == 0
    out = tmp_path / "m.csv"
    both = tmp_path / "both.npz"
    argv = ["match", str(run_dir), "--infrared", *ir[1:5], "--gallery", str(gallery)]
    assert main([*argv, "--top", "3", "-o", str(out), "--save-features", str(both)]) == 0
    err = capsys.readouterr().err
    assert "embedded 4 images" in err  # the queries only
    model = uvireid.load_model(run_dir)
    ref = naive_dist(model.features(ir[1:5], "infrared"), model.features(vis[:10], "visible"))
    want = naive_top(ref, 3)
    rows = _rows(out.read_text())
    assert len(rows) == 4 * 3
    for qi, q in enumerate(ir[1:5]):
        mine = [r for r in rows if r["query"] == q]
        assert [r["gallery"] for r in mine] == [vis[j] for j in want[qi]]
        np.testing.assert_allclose(
            [float(r["distance"]) for r in mine], ref[qi, want[qi]], rtol=1e-5, atol=1e-6
        )
    # what was ranked is saved: queries then the gallery, matched again without the model
    saved = load_features(both)
    assert list(saved.paths) == [*ir[1:5], *vis[:10]]
    assert saved.meta["gallery_from"] == str(gallery)
    assert saved.meta["weights_sha1"] == model.weights_sha1
    assert main(["match", str(both), "--top", "3"]) == 0
    assert _rows(capsys.readouterr().out) == rows
    # the run's own features file (written by the trainer's evaluation) and extract's: the
    # same weights, and their gallery ids are shown
    copy = tmp_path / "probe.png"  # a query that is not one of the gallery's files
    shutil.copy(ir[0], copy)
    own = load_features(run_dir / "features.npz")
    extracted = tmp_path / "extracted.npz"
    assert main(["extract", str(run_dir), "-o", str(extracted)]) == 0
    assert load_features(extracted).meta["weights_sha1"] == own.meta["weights_sha1"]
    pid = dict(zip(own.paths, own.pids.tolist()))
    for source in (run_dir / "features.npz", extracted):
        capsys.readouterr()
        argv = ["match", str(run_dir), "--infrared", str(copy), "--gallery", str(source)]
        assert main([*argv, "--top", "5"]) == 0
        got = _rows(capsys.readouterr().out)
        assert len(got) == 5 and all(int(r["gallery_pid"]) == pid[r["gallery"]] for r in got)
        assert all(r["gallery"] in vis for r in got)


def test_a_gallery_of_other_weights_or_settings_is_refused(run_dir, tmp_path, capsys):
    _, vis, ir = _test_images(run_dir)
    made = load_features(run_dir / "features.npz")

    def gallery(name, **meta):
        path = tmp_path / name
        uvireid.save_features(
            path, made.feats, made.pids, made.cams, made.modality, paths=made.paths, **meta
        )
        return str(path)

    sha = made.meta["weights_sha1"]
    assert made.meta["test_size"] == [32, 16] and made.meta["test_resize"] == "bilinear"
    run = str(run_dir)
    good = gallery("good.npz", weights_sha1=sha)
    cases = [
        (gallery("old.npz"), [], "does not say which weights made it.*uvireid extract RUN"),
        (gallery("other.npz", weights_sha1="0" * 40), [], "was made by other weights"),
        (gallery("head.npz", weights_sha1=sha, feature_head="pool"), [], "feature_head 'pool'"),
        (gallery("flip.npz", weights_sha1=sha, test_flip=False), [], "test_flip False"),
        (gallery("big.npz", weights_sha1=sha, test_size=[64, 32]), [], r"test_size \[64, 32\]"),
        (
            gallery("filter.npz", weights_sha1=sha, test_resize="lanczos"),
            [],
            "test_resize 'lanczos'",
        ),
        (
            gallery("pool.npz", weights_sha1=sha, changes={"backbone.pooling": "'gem' -> 'avg'"}),
            [],
            "changes to the run's backbone",
        ),
        # a change of the training alone (its lr, its precision: warned) is no other embedding
        (gallery("lr.npz", weights_sha1=sha, changes={"train.lr": "0.00035 -> 0.5"}), [], None),
        (good, ["--visible", vis[0]], "--visible and --gallery both give the gallery"),
        (good, ["--direction", "v2i", "--visible", vis[0]], None),  # the file's ir rows
    ]
    for path, extra, message in cases:
        query = [] if "--visible" in extra and "--direction" in extra else ["--infrared", ir[0]]
        rc = main(["match", run, *query, *extra, "--gallery", path])
        err = capsys.readouterr().err
        if message is None:
            assert rc == 0, err
            continue
        assert rc == 2, (path, err)
        assert re.search(message, err), (path, err)
    assert main(["match", run, "--gallery", good]) == 2
    assert "give the infrared query images with --infrared" in capsys.readouterr().err
    assert main(["match", good, "--gallery", good]) == 2  # a features file has its gallery
    assert "--gallery do(es) not apply" in capsys.readouterr().err
    assert main(["match", run, "--infrared", ir[0], "--gallery", good, "-o", good, "--force"]) == 2
    assert "is the features file being read" in capsys.readouterr().err
    # a query that is one of the gallery's images (by its path in the file) is refused
    assert main(["match", run, "--infrared", vis[0], "--gallery", good]) == 2
    err = capsys.readouterr().err
    assert "query image(s) are in --gallery" in err
    vis_only = tmp_path / "vis_only.npz"
    keep = made.modality == 0
    uvireid.save_features(
        vis_only, made.feats[keep], made.pids[keep], made.cams[keep], made.modality[keep]
    )
    assert (
        main(["match", run, "--direction", "v2i", "--visible", vis[0], "--gallery", str(vis_only)])
        == 2
    )
    assert "has no infrared image, the gallery" in capsys.readouterr().err


def test_a_gallery_extracted_at_another_size_is_refused(run_dir, tmp_path, capsys):
    """Audit FD: extract of the run's recipe with its checkpoint at another image size
    recorded no change, and match ranked its 64x16 gallery against 32x16 queries."""
    _, vis, ir = _test_images(run_dir)
    gallery = tmp_path / "g64.npz"
    ckpt = run_dir / "checkpoints" / "latest.pt"
    argv = ["extract", str(run_dir / "config.yaml"), "--checkpoint", str(ckpt)]
    assert main([*argv, "-o", str(gallery), "train.height=64"]) == 0
    assert load_features(gallery).meta["test_size"] == [64, 16]
    capsys.readouterr()
    out = tmp_path / "m.csv"
    argv = ["match", str(run_dir), "--infrared", ir[0], "--gallery", str(gallery)]
    assert main([*argv, "-o", str(out)]) == 2 and not out.exists()
    assert "test_size [64, 16] (the run evaluates with [32, 16])" in capsys.readouterr().err


def test_a_saved_gallery_keeps_its_ids_and_cameras_and_a_precision_is_warned_when_named(
    run_dir, tmp_path, caplog
):
    """Audit FD: --gallery --save-features keeps the gallery rows' pids and cams (the
    queries' are -1), row for row as the file's; the precision warning is for a gallery
    that names another precision, not one that names none."""
    own, vis, ir = _test_images(run_dir)
    copy = tmp_path / "probe.png"
    shutil.copy(ir[0], copy)
    saved = tmp_path / "s.npz"
    argv = ["match", str(run_dir), "--infrared", str(copy), "--gallery"]
    assert main([*argv, str(run_dir / "features.npz"), "--save-features", str(saved)]) == 0
    got = load_features(saved)
    rows = np.flatnonzero(own.modality == 0)
    g = got.modality == 0
    assert list(got.paths[g]) == list(own.paths[rows])
    np.testing.assert_array_equal(got.pids[g], own.pids[rows])
    np.testing.assert_array_equal(got.cams[g], own.cams[rows])
    assert (got.pids[~g] == -1).all() and (got.cams[~g] == -1).all()
    meta = {k: v for k, v in own.meta.items() if k != "precision"}
    for name, extra, warned in (("none.npz", {}, False), ("bf16.npz", {"precision": "bf16"}, True)):
        uvireid.save_features(
            tmp_path / name, own.feats, own.pids, own.cams, own.modality, paths=own.paths,
            **meta, **extra,
        )  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert main([*argv, str(tmp_path / name), "-o", str(tmp_path / f"{name}.csv")]) == 0
        assert ("was embedded in" in caplog.text) is warned, caplog.text
