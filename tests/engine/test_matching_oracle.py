"""Mutation audit OC: ``top_matches`` and ``uvireid match`` against a naive ranking (a Python loop
over the distances, ties in gallery order)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from uvireid.cli import main
from uvireid.engine.matching import image_files, top_matches
from uvireid.errors import ConfigError, DatasetError
from uvireid.features import save_features


def naive(dist, top):
    """Per row: columns sorted by (distance, column), the first ``top``."""
    index, values = [], []
    for row in np.asarray(dist, dtype=np.float64):
        order = sorted(range(len(row)), key=lambda j: (row[j], j))[:top]
        index.append(order)
        values.append([row[j] for j in order])
    return np.array(index), np.array(values)


def tied_features(rng, nq=5, ng=48, d=8, distinct=4):
    """Rows of quarters (exact dot products in float32); the gallery made of a few
    distinct rows, so most distances tie exactly."""
    q = rng.integers(-3, 4, size=(nq, d)) / 4
    base = rng.integers(-3, 4, size=(distinct, d)) / 4
    g = base[rng.integers(0, distinct, size=ng)]
    return q.astype(np.float32), g.astype(np.float32)


@pytest.mark.parametrize("top", [3, 20, 47, 48, 60])
def test_top_matches_is_the_naive_ranking_with_ties_in_gallery_order(top):
    q, g = tied_features(np.random.default_rng(top))
    ref = -(q.astype(np.float64) @ g.astype(np.float64).T)
    want, _ = naive(ref, top)
    for block in (None, 1, 2):
        index, dist = top_matches(q, g, top, block=block)
        assert index.shape == (len(q), min(top, len(g)))
        np.testing.assert_array_equal(index, want)
        np.testing.assert_array_equal(dist, np.take_along_axis(ref, index, axis=1))


def test_a_rerankers_ties_and_boundary_are_ranked_as_the_naive_loop():
    rng = np.random.default_rng(0)
    dist = rng.integers(0, 4, size=(6, 40)).astype(np.float64)  # many ties at each boundary
    dist[0, ::-1] = np.arange(40)  # the smallest at the last columns

    class Fixed:
        def rerank(self, query, gallery):
            return dist

    q = np.eye(6, 3, dtype=np.float32)
    g = np.ones((40, 3), dtype=np.float32) / np.sqrt(3)
    for top in (1, 5, 17, 25):
        index, values = top_matches(q, g, top, reranker=Fixed())
        want, want_values = naive(dist, top)
        np.testing.assert_array_equal(index, want)
        np.testing.assert_array_equal(values, want_values)


def test_half_precision_features_are_ranked_in_float32():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(4, 64)).astype(np.float16)
    g = rng.normal(size=(30, 64)).astype(np.float16)
    ref = -(q.astype(np.float32) @ g.astype(np.float32).T)
    index, dist = top_matches(q, g, 30)
    assert dist.dtype == np.float32
    np.testing.assert_array_equal(index, naive(ref, 30)[0])
    np.testing.assert_allclose(dist, np.take_along_axis(ref, index, axis=1), rtol=1e-5)


@pytest.mark.parametrize(
    "q, g, kwargs",
    [
        (np.zeros((0, 4)), np.ones((3, 4)), {}),
        (np.ones((2, 4)), np.ones((3, 5)), {}),
        (np.ones((2, 4)), np.ones((3, 4)), {"block": 0}),
        (np.ones((2, 4)), np.ones((3, 4)), {"top": 0}),
    ],
)
def test_bad_input_is_a_config_error(q, g, kwargs):
    with pytest.raises(ConfigError):
        top_matches(q, g, **kwargs)


@pytest.mark.parametrize("bad", ["shape", "nan"])
def test_a_rerankers_bad_matrix_is_refused(bad):
    class Bad:
        def rerank(self, query, gallery):
            d = np.zeros((len(query), len(gallery) + (bad == "shape")))
            if bad == "nan":
                d[0, 0] = np.nan
            return d

    with pytest.raises(ConfigError):
        top_matches(np.ones((2, 3)), np.ones((4, 3)), 2, reranker=Bad())


def test_image_files_keeps_each_image_once_follows_links_and_refuses_others(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "other").mkdir()
    for name in ("a/1.jpg", "a/2.png", "other/3.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a" / "linked").symlink_to(tmp_path / "other")
    (tmp_path / "alias.jpg").symlink_to(tmp_path / "a" / "1.jpg")
    got = image_files([tmp_path / "a", tmp_path / "a" / "2.png", tmp_path / "alias.jpg"])
    assert [p.replace(str(tmp_path), "") for p in got] == [
        "/a/1.jpg",
        "/a/2.png",
        "/a/linked/3.jpg",
    ]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError):
        image_files([tmp_path / "notes.txt"])


def _csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("direction", ["i2v", "v2i"])
def test_match_csv_is_the_naive_ranking_of_the_files_rows(tmp_path, capsys, direction):
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(11, 6)).astype(np.float32) * 3  # not unit: normalised, said
    feats[4] = 0.0  # an all-zero row stays at distance 0
    modality = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0])
    pids = np.arange(100, 111)
    paths = [f"img{i}.png" for i in range(11)]
    save_features(tmp_path / "f.npz", feats, pids, np.zeros(11, int), modality, paths=paths)
    assert main(["match", str(tmp_path / "f.npz"), "--top", "4", "--direction", direction]) == 0
    out, err = capsys.readouterr()
    assert "not unit length" in err
    rows = _csv_rows(out)
    qc = 1 if direction == "i2v" else 0
    q, g = np.flatnonzero(modality == qc), np.flatnonzero(modality != qc)
    norms = np.linalg.norm(feats.astype(np.float64), axis=1)
    unit = feats / np.where(norms > 0, norms, 1)[:, None]
    want = []
    for qi in q:
        dist = [-(unit[qi] @ unit[gj]) for gj in g]
        order = sorted(range(len(g)), key=lambda j: (dist[j], j))[:4]
        for rank, j in enumerate(order, start=1):
            want.append(
                (paths[qi], str(rank), paths[g[j]], dist[j], str(pids[qi]), str(pids[g[j]]))
            )
    assert len(rows) == len(want) == 4 * len(q)
    for row, (qp, rank, gp, d, qid, gid) in zip(rows, want):
        assert (row["query"], row["rank"], row["gallery"]) == (qp, rank, gp)
        assert (row["query_pid"], row["gallery_pid"]) == (qid, gid)
        assert float(row["distance"]) == pytest.approx(d, abs=1e-5)


def test_match_normalises_rows_a_few_percent_off_unit_length(tmp_path, capsys):
    # rows of norm 1.02 and 0.97: their dot product is not -cosine unless normalised
    q = np.array([[1.0, 0.0]]) * 1.02
    g = np.array([[0.6, 0.8], [0.8, 0.6]]) * np.array([[1.0], [0.97]])
    feats = np.vstack([q, g]).astype(np.float32)
    save_features(tmp_path / "f.npz", feats, np.arange(3), np.zeros(3, int), np.array([1, 0, 0]))
    assert main(["match", str(tmp_path / "f.npz"), "--top", "2"]) == 0
    rows = _csv_rows(capsys.readouterr().out)
    assert [float(r["distance"]) for r in rows] == pytest.approx([-0.8, -0.6], abs=1e-5)
