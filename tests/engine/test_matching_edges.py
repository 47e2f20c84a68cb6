"""`uvireid match` (engine/matching.py, cli/match_cmd.py), mutation audit MF: outputs
through links, pipes and /dev/stdout, duplicates by link, the ranking's edges. No
training: a features file, or a run folder whose model is a stand-in (``fake_run``)."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

import uvireid
from uvireid.cli import main
from uvireid.engine import matching
from uvireid.engine.matching import image_files, top_matches
from uvireid.errors import ConfigError
from uvireid.features import load_features


def naive_top(dist, top):
    """Each row's first ``top`` columns by (distance, column): a Python sort per row."""
    return np.array([sorted(range(len(r)), key=lambda j: (r[j], j))[:top] for r in dist])


def _rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def _features_file(path, feats, modality, pids=None):
    n = len(feats)
    pids = np.arange(n) if pids is None else pids
    paths = [f"/img/{'ir' if m else 'rgb'}/{i:03d}.jpg" for i, m in enumerate(modality)]
    uvireid.save_features(
        path, np.asarray(feats, np.float32), pids, np.zeros(n, int), modality, paths=paths
    )
    return paths


class FakeModel:
    """The model of a run folder, as match uses it: an image's feature is its mean colour
    and a modality flag, unit length (deterministic, no training)."""

    weights_sha1 = "f" * 40
    info = {"epoch": 3, "stage": None}
    source = "fake.pt"
    height, width, head, flip, resize = 8, 4, "bn_feat", False, "bilinear"
    device, amp = "cpu", False

    def __init__(self):
        self.calls = []

    def embed(self, paths, modality, batch=256):
        self.calls.append(modality)
        feats, ok, bad = [], [], []
        for p in paths:
            try:
                with Image.open(p) as im:
                    rgb = np.asarray(im.convert("RGB"), np.float32).mean(axis=(0, 1))
            except OSError:
                bad.append(p)
                continue
            v = np.array([*rgb, 40.0 if modality == "infrared" else 0.0], np.float32) + 1
            feats.append(v / np.linalg.norm(v))
            ok.append(p)
        return np.array(feats, np.float32).reshape(-1, 4), ok, bad


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    from uvireid.engine import inference

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: fake\n")
    model = FakeModel()
    monkeypatch.setattr(inference, "load_model", lambda *a, **kw: model)
    rng = np.random.default_rng(0)
    for folder, n in (("ir", 2), ("vis", 5)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            Image.new("RGB", (4, 8), colour).save(tmp_path / folder / f"{i}.png")
    return run, model


# ---------------------------------------------------------------------------------------


def test_default_block_is_at_least_one_query_for_a_huge_gallery(monkeypatch):  # m14
    # a gallery of more rows than _BLOCK_ENTRIES: one query a block, not zero
    monkeypatch.setattr(matching, "_BLOCK_ENTRIES", 4)
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(3, 5)), rng.normal(size=(10, 5))
    index, dist = top_matches(q, g, 4)
    ref = -(q @ g.T)
    want = naive_top(ref, 4)
    np.testing.assert_array_equal(index, want)
    np.testing.assert_allclose(dist, np.take_along_axis(ref, want, axis=1))


@pytest.mark.parametrize("shape", [(4, 6), (4, 8), (5, 7)])
def test_a_rerankers_matrix_of_another_gallery_width_is_refused(shape):  # m15
    q, g = np.eye(4, 5), np.eye(7, 5)

    class Wrong:
        def rerank(self, query, gallery):
            return np.zeros(shape)

    with pytest.raises(ConfigError, match=rf"returned a \({shape[0]}, {shape[1]}\) matrix"):
        top_matches(q, g, 3, reranker=Wrong())


def test_rows_a_little_off_unit_length_are_normalised_too(tmp_path, capsys):  # c01
    # norms 0.95..1.05: the raw dot product favours the longer gallery row, cosine not
    q = np.array([[1.0, 0.0]])
    g = np.array([[0.99, 0.141], [1.05 * 0.98, 1.05 * 0.199]])  # cosines 0.99 > 0.98
    assert (q @ g.T).argmax() == 1 and (
        q @ (g / np.linalg.norm(g, axis=1)[:, None]).T
    ).argmax() == 0
    feats = np.concatenate([g, q])
    _features_file(tmp_path / "f.npz", feats, np.array([0, 0, 1]))
    assert main(["match", str(tmp_path / "f.npz"), "--top", "2"]) == 0
    out, err = capsys.readouterr()
    rows = _rows(out)
    assert [r["gallery"] for r in rows] == ["/img/rgb/000.jpg", "/img/rgb/001.jpg"]
    cos = (g / np.linalg.norm(g, axis=1)[:, None]) @ q[0]
    np.testing.assert_allclose([float(r["distance"]) for r in rows], -cos, rtol=1e-5)
    assert "are L2-normalised" in err


def test_an_all_zero_row_is_kept_at_distance_zero(tmp_path, capsys):  # c02
    feats = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0], [1.0, 0.0]])
    _features_file(tmp_path / "z.npz", feats, np.array([0, 0, 0, 1]))
    assert main(["match", str(tmp_path / "z.npz"), "--top", "3"]) == 0
    rows = _rows(capsys.readouterr().out)
    # cosines with (1, 0): 0.6, 0 (no direction), 0
    assert [(r["gallery"], float(r["distance"])) for r in rows] == [
        ("/img/rgb/000.jpg", -0.6),
        ("/img/rgb/001.jpg", 0.0),
        ("/img/rgb/002.jpg", 0.0),
    ]


def test_the_whole_gallery_is_said_only_when_top_was_larger(tmp_path, capsys):  # c03
    rng = np.random.default_rng(0)
    _features_file(tmp_path / "f.npz", rng.normal(size=(5, 3)), np.array([0, 0, 0, 1, 1]))
    for top, said in (("3", False), ("4", True)):
        assert main(["match", str(tmp_path / "f.npz"), "--top", top]) == 0
        err = capsys.readouterr().err
        assert "3 a query" in err and ("(the whole gallery)" in err) is said


def test_o_naming_the_source_by_another_spelling_is_refused(tmp_path, monkeypatch):  # c05
    rng = np.random.default_rng(0)
    _features_file(tmp_path / "f.npz", rng.normal(size=(4, 3)), np.array([0, 0, 1, 1]))
    before = (tmp_path / "f.npz").read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main(["match", "f.npz", "-o", "./f.npz", "--force"]) == 2
    assert main(["match", str(tmp_path / "f.npz"), "-o", "f.npz", "--force"]) == 2
    assert (tmp_path / "f.npz").read_bytes() == before


def test_o_dev_stdout_into_a_file_needs_no_force():  # c07
    # /dev/stdout is a link to the process's stdout, here a file: written through, no --force
    script = (
        "import sys, numpy as np, uvireid; from uvireid.cli import main\n"
        "f = sys.argv[1]\n"
        "uvireid.save_features(f, np.eye(4, dtype=np.float32), np.arange(4), np.zeros(4, int),"
        " np.array([0, 0, 1, 1]))\n"
        "sys.exit(main(['match', f, '--top', '1', '-o', '/dev/stdout']))\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.txt")
        with open(out, "wb") as fh:
            rc = subprocess.run(
                [sys.executable, "-c", script, os.path.join(tmp, "f.npz")],
                stdout=fh,
                stderr=subprocess.PIPE,
            ).returncode
        with open(out) as fh:
            text = fh.read()
    assert rc == 0 and text.startswith("query,rank,gallery,distance")
    assert len(_rows(text)) == 2


def test_a_link_to_a_file_of_ones_own_is_overwritten_only_with_force(tmp_path, capsys):
    # c08 (the shipped figure test's refusal came from its -o file, which existed)
    rng = np.random.default_rng(0)
    _features_file(tmp_path / "f.npz", rng.normal(size=(4, 3)), np.array([0, 0, 1, 1]))
    target = tmp_path / "keep.csv"
    target.write_text("keep")
    (tmp_path / "link.csv").symlink_to(target)
    argv = ["match", str(tmp_path / "f.npz"), "-o", str(tmp_path / "link.csv")]
    assert main(argv) == 2
    assert "link.csv exists; pass --force" in capsys.readouterr().err
    assert target.read_text() == "keep"
    assert main([*argv, "--force"]) == 0
    assert (tmp_path / "link.csv").is_symlink() and len(_rows(target.read_text())) == 4


def test_figure_suffix_in_capitals_is_a_png(tmp_path, monkeypatch, capsys):  # c09
    from uvireid.viz import ranking

    drawn = []
    monkeypatch.setattr(ranking, "plot_matches", lambda *a, **kw: drawn.append(a[4]))
    rng = np.random.default_rng(0)
    _features_file(tmp_path / "f.npz", rng.normal(size=(4, 3)), np.array([0, 0, 1, 1]))
    argv = ["match", str(tmp_path / "f.npz"), "-o", str(tmp_path / "m.csv")]
    assert main([*argv, "--figure", str(tmp_path / "M.PNG")]) == 0
    assert [str(p) for p in drawn] == [str(tmp_path / "M.PNG")]


def test_the_queries_are_embedded_before_the_gallery(fake_run, tmp_path, capsys):  # c11
    run, model = fake_run
    (tmp_path / "badir").mkdir()
    (tmp_path / "badir" / "x.png").write_bytes(b"not an image")
    argv = ["match", str(run), "--infrared", str(tmp_path / "badir")]
    assert main([*argv, "--visible", str(tmp_path / "vis")]) == 2
    assert "none of the 1 infrared image(s) can be read" in capsys.readouterr().err
    assert model.calls == ["infrared"]  # the gallery was never embedded
    model.calls.clear()
    argv = ["match", str(run), "--direction", "v2i", "--infrared", str(tmp_path / "ir")]
    assert main([*argv, "--visible", str(tmp_path / "vis"), "--top", "1"]) == 0
    assert model.calls == ["visible", "infrared"]


def test_a_query_that_is_a_link_to_a_gallery_image_is_refused(fake_run, tmp_path, capsys):
    # c15: the shipped test links a gallery name to a query file; here the query is the link
    run, model = fake_run
    (tmp_path / "probe.png").symlink_to(tmp_path / "vis" / "3.png")
    argv = ["match", str(run), "--infrared", str(tmp_path / "probe.png")]
    assert main([*argv, "--visible", str(tmp_path / "vis")]) == 2
    assert "1 image(s) are given as both visible and infrared" in capsys.readouterr().err
    assert model.calls == []


def test_a_gallery_file_without_paths_names_its_rows_by_file_and_row(
    fake_run, tmp_path, capsys
):  # c12
    run, _ = fake_run
    rng = np.random.default_rng(2)
    g = rng.normal(size=(5, 4))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    gal = tmp_path / "g.npz"
    mod = np.array([1, 0, 0, 1, 0])
    uvireid.save_features(
        gal, g.astype(np.float32), np.arange(5), np.zeros(5, int), mod,
        weights_sha1="f" * 40, test_size=[8, 4], test_flip=False, feature_head="bn_feat",
        test_resize="bilinear",
    )  # fmt: skip
    argv = ["match", str(run), "--infrared", str(tmp_path / "ir"), "--gallery", str(gal)]
    assert main([*argv, "--top", "3"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert {r["gallery"] for r in rows} <= {f"{gal}:row{i}" for i in (1, 2, 4)}
    for r in rows:  # each named row holds the gallery pid of that row of the file
        assert int(r["gallery_pid"]) == int(r["gallery"].rsplit(":row", 1)[1])


def test_a_gallery_of_an_older_file_without_its_size_is_warned(fake_run, tmp_path, caplog):
    # c14
    run, _ = fake_run
    gal = tmp_path / "g.npz"
    uvireid.save_features(
        gal, np.eye(3, 4, dtype=np.float32), np.arange(3), np.zeros(3, int), np.zeros(3, int),
        weights_sha1="f" * 40,
    )  # fmt: skip
    argv = ["match", str(run), "--infrared", str(tmp_path / "ir"), "--gallery", str(gal)]
    assert main([*argv, "-o", str(tmp_path / "m.csv")]) == 0
    assert "does not record the image size" in caplog.text and "8x4" in caplog.text


# ---------------------------------------------------------------------------------------

_MATCH_SCRIPT = (
    "import sys, numpy as np, uvireid; from uvireid.cli import main\n"
    "f = sys.argv[1]\n"
    "rng = np.random.default_rng(0)\n"
    "x = rng.normal(size=(12, 6)).astype(np.float32) * 3  # not unit length: a note first\n"
    "mod = np.array([0] * 8 + [1] * 4)\n"
    "uvireid.save_features(f, x, np.arange(12), np.zeros(12, int), mod,"
    " paths=[f'/data/img{i:02d}.jpg' for i in range(12)])\n"
    "sys.exit(main(['match', f, '--top', '8', *sys.argv[2:]]))\n"
)


@pytest.mark.parametrize("mode", ["ab", "wb"])
def test_o_dev_stdout_into_a_log_shared_with_stderr_keeps_both(tmp_path, mode):
    """`-o /dev/stdout >> job.log 2>&1` or `> job.log 2>&1` (a batch job's log, SLURM's
    default): /dev/stdout is reopened with truncation and written from offset 0, so the
    log's earlier lines (the note on stderr too) are lost, and with `>` the summary
    written to stderr afterwards, at the old offset, overwrites a part of the CSV."""
    log = tmp_path / "job.log"
    log.write_text("earlier line of the job\n")
    feats = str(tmp_path / "f.npz")
    with open(log, mode) as fh:
        rc = subprocess.run(
            [sys.executable, "-c", _MATCH_SCRIPT, feats, "-o", "/dev/stdout"],
            stdout=fh,
            stderr=fh,
        ).returncode
    assert rc == 0
    text = log.read_text()
    ref = subprocess.run(
        [sys.executable, "-c", _MATCH_SCRIPT, str(tmp_path / "g.npz")],
        capture_output=True,
        text=True,
    ).stdout
    if mode == "ab":
        assert text.startswith("earlier line of the job\n"), text[:200]
    lines = text.splitlines()
    assert any(line.startswith("note: the features of") for line in lines)
    assert lines[-1].startswith("ranked 8 visible images")
    for line in ref.splitlines():  # every CSV line whole, none cut by a stderr line
        assert line in lines, line


def test_save_features_through_a_link_writes_its_target(fake_run, tmp_path):
    """_outputs says a link is written through, not replaced, and -o does so; the features
    file of --save-features is written by os.replace, which cuts the link."""
    run, _ = fake_run
    (tmp_path / "shared").mkdir()
    target = tmp_path / "shared" / "f.npz"
    target.write_bytes(b"old")
    (tmp_path / "link.npz").symlink_to(target)
    argv = ["match", str(run), "--infrared", str(tmp_path / "ir"), "--visible"]
    argv += [str(tmp_path / "vis"), "-o", str(tmp_path / "m.csv"), "--force"]
    assert main([*argv, "--save-features", str(tmp_path / "link.npz")]) == 0
    assert (tmp_path / "link.npz").is_symlink()
    assert len(load_features(target).pids) == 7


def test_save_features_to_a_pipe_is_written_or_refused_first(fake_run, tmp_path):
    """--save-features /dev/fd/N (bash's >(...)) or a named pipe passes the output check,
    then fails after the embedding with a FileNotFoundError traceback (a temporary file
    beside /dev/fd/N), and a named pipe is replaced by a regular file."""
    run, model = fake_run
    r, w = os.pipe()
    got = []
    reader = threading.Thread(target=lambda: got.append(os.fdopen(r, "rb").read()))
    reader.start()
    argv = ["match", str(run), "--infrared", str(tmp_path / "ir"), "--visible"]
    argv += [str(tmp_path / "vis"), "-o", str(tmp_path / "m.csv")]
    try:
        try:
            rc = main([*argv, "--save-features", f"/dev/fd/{w}"])
        except Exception as exc:  # noqa: BLE001 - the bug: a traceback, not an rc
            rc = repr(exc)
    finally:
        os.close(w)
        reader.join()
    if rc == 2:  # refused before any work: fine too
        assert model.calls == []
        return
    assert rc == 0
    with np.load(io.BytesIO(got[0])) as z:
        assert len(z["pids"]) == 7


def test_one_image_by_two_names_in_one_modality_is_kept_once(tmp_path):
    """image_files keeps a path named twice once, and a folder's linked sub-folders once
    (by their real path), but a folder named beside a link to it (or a file beside a
    link to it) is listed twice: the gallery holds the image twice, and every query finds
    it at two ranks."""
    (tmp_path / "g").mkdir()
    Image.new("RGB", (4, 8)).save(tmp_path / "g" / "a.png")
    (tmp_path / "gl").symlink_to(tmp_path / "g")
    (tmp_path / "al.png").symlink_to(tmp_path / "g" / "a.png")
    assert len(image_files([tmp_path / "g", tmp_path / "gl"])) == 1
    assert len(image_files([tmp_path / "g", tmp_path / "al.png"])) == 1
