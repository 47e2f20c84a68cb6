"""``uvireid rerank`` and ``uvireid eval``: behaviour a second mutation audit (NK) found
untested, and its three bugs (a scoped keyword's typo under ``--reranker all`` found only
after the baseline ran, a keyword given twice for one re-ranker, no hint for 'ALL')."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from feature_fixtures import sysu_like

from uvireid.cli import main
from uvireid.features import save_features


@pytest.fixture
def feats_file(tmp_path):
    feats, pids, cams, modality = sysu_like(1)
    return save_features(tmp_path / "f.npz", feats, pids, cams, modality)


class _Slow:
    """A plugin re-ranker that takes a known time per call (a plain cosine ranking)."""

    name = "zz_slow"

    def rerank(self, query, gallery):
        time.sleep(0.05)
        return -np.asarray(query) @ np.asarray(gallery).T


def test_rerank_time_is_the_sum_over_every_trial(feats_file, tmp_path, capsys):
    """rerank_seconds_total and the printed total add up every trial's time (not the
    last trial's), and the per-trial time is the total over the trials."""
    from uvireid.registry import RERANKERS

    out = tmp_path / "rr.json"
    with RERANKERS.registered("zz_slow", _Slow):
        rc = main(["rerank", str(feats_file), "--reranker", "zz_slow", "--protocol",
                   "sysu-all", "--trials", "3", "--json", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    got = json.loads(out.read_text())["reranked"]["zz_slow"]
    assert got["rerank_calls"] == 3
    assert got["rerank_seconds_total"] >= 3 * 0.05
    total = float(text.split("re-ranking time: ")[1].split(" s")[0])
    assert total >= 0.15 - 0.0005


def _count_protocol_runs(monkeypatch):
    from uvireid.evaluation import protocols

    calls = []
    real = protocols.run_protocol
    monkeypatch.setattr(
        protocols, "run_protocol", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    return calls


def test_rerank_all_a_scoped_keyword_typo_stops_before_any_evaluation(
    feats_file, monkeypatch, capsys
):
    """--reranker all --set cmfp.kk=3: a typo in NAME.KEY is found only when cmfp is
    built, after which the baseline and every other re-ranker are evaluated (minutes on
    SYSU-MM01) before the command exits 2; a plain KEY that no re-ranker has, and
    --k 0, are refused before any evaluation."""
    calls = _count_protocol_runs(monkeypatch)
    rc = main(["rerank", str(feats_file), "--reranker", "all", "--protocol", "sysu-all",
               "--trials", "1", "--set", "cmfp.kk=3"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "kk" in err
    assert calls == []


def test_rerank_one_reranker_a_keyword_given_twice_as_plain_and_scoped_is_refused(
    feats_file, capsys
):
    """--reranker cmfp --k 3 --set cmfp.k=5: both set cmfp's k; the command ran with k=5
    and said nothing, where --k 3 --set k=5 is refused ("which one would win is not the
    user's intent to guess")."""
    rc = main(["rerank", str(feats_file), "--reranker", "cmfp", "--k", "3", "--set",
               "cmfp.k=5", "--protocol", "sysu-all", "--trials", "1"])  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 2 and "given twice" in cap.err


class _Named:
    """A plugin re-ranker with a string keyword; records what it was given."""

    got: list = []

    def __init__(self, tag="", k=1):
        type(self).got.append((tag, k))

    def rerank(self, query, gallery):
        return -np.asarray(query) @ np.asarray(gallery).T


def test_set_splits_at_the_first_equals_sign_and_strips_the_key(feats_file, capsys):
    """--set tag=a=b gives tag the value 'a=b' (KEY=VALUE splits once), and
    --set ' k = 3' is k=3 (spaces around the key are dropped, as around the value)."""
    from uvireid.registry import RERANKERS

    _Named.got = []
    with RERANKERS.registered("zz_named", _Named):
        rc = main(["rerank", str(feats_file), "--reranker", "zz_named", "--set", "tag=a=b",
                   "--set", " k = 3", "--protocol", "sysu-all", "--trials", "1"])  # fmt: skip
    capsys.readouterr()
    assert rc == 0 and _Named.got == [("a=b", 3)]


def test_an_unknown_reranker_is_refused_before_any_evaluation(feats_file, monkeypatch, capsys):
    """--reranker cmfq: the registry's error at once (nothing evaluated, no table)."""
    calls = _count_protocol_runs(monkeypatch)
    rc = main(["rerank", str(feats_file), "--reranker", "cmfq", "--protocol", "sysu-all",
               "--trials", "1"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 2 and "did you mean 'cmfp'" in err
    assert calls == [] and out == ""


def _official_set(tmp_path):
    """A rand_perm_cam.mat in the kit's layout (6 x 1 cell of per-id cells of (10, n)
    1-based image numbers) and a SYSU test set with the matching image names."""
    import scipy.io

    rng = np.random.default_rng(3)
    ids, n = [1, 2, 3, 4, 5, 6], 5
    cells = np.empty((6, 1), dtype=object)
    for cam in range(1, 7):
        per = np.empty((1, len(ids)), dtype=object)
        for p in ids:
            per[0, p - 1] = np.stack([rng.permutation(n) + 1 for _ in range(10)]).astype(float)
        cells[cam - 1, 0] = per
    mat = tmp_path / "rand_perm_cam.mat"
    scipy.io.savemat(mat, {"rand_perm_cam": cells})
    rows = [(c, p, i) for c in range(1, 7) for p in ids for i in range(1, n + 1)]
    cams = np.array([c for c, _, _ in rows])
    pids = np.array([p for _, p, _ in rows])
    paths = np.array([f"/d/SYSU-MM01/cam{c}/{p:04d}/{i:04d}.jpg" for c, p, i in rows])
    feats = rng.normal(size=(6, 8))[pids - 1] + 1.2 * rng.normal(size=(len(rows), 8))
    modality = np.isin(cams, (3, 6)).astype(np.int64)
    path = save_features(tmp_path / "sysu.npz", feats.astype(np.float32), pids, cams,
                         modality, paths)  # fmt: skip
    return path, mat


def test_sampler_perm_file_and_feature_head_reach_the_protocol(tmp_path, capsys):
    """eval and rerank with --sampler official --perm-file and --feature-head: the numbers
    and provenance are run_protocol's with the same options (not the seeded sampler's)."""
    from uvireid.evaluation import run_protocol
    from uvireid.registry import RERANKERS

    path, mat = _official_set(tmp_path)
    opts = {"trials": 2, "sampler": "official", "perm_file": str(mat), "feature_head": "pool"}
    want = run_protocol(path, "sysu-all", **opts)
    seeded = run_protocol(path, "sysu-all", trials=2)
    assert want.mean["mAP"] != pytest.approx(seeded.mean["mAP"])  # the sampler matters
    flags = ["--protocol", "sysu-all", "--trials", "2", "--sampler", "official",
             "--perm-file", str(mat), "--feature-head", "pool"]  # fmt: skip
    out = tmp_path / "e.json"
    assert main(["eval", str(path), *flags, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["mean"] == pytest.approx(want.mean)
    assert doc["provenance"]["sampler"] == want.provenance["sampler"]
    assert doc["provenance"]["feature_head"] == "pool"
    out = tmp_path / "r.json"
    assert main(["rerank", str(path), "--reranker", "cmfp", "--k", "2", *flags,
                 "--json", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    rr = run_protocol(path, "sysu-all", reranker=RERANKERS.build({"type": "cmfp", "k": 2}), **opts)
    assert doc["baseline"]["mean"] == pytest.approx(want.mean)
    assert doc["reranked"]["cmfp(k=2)"]["mean"] == pytest.approx(rr.mean)
    for got in (doc["baseline"], doc["reranked"]["cmfp(k=2)"]):
        assert got["provenance"]["feature_head"] == "pool"
        assert got["provenance"]["sampler"] == want.provenance["sampler"]
    capsys.readouterr()


def test_rerank_all_provenance_line_does_not_say_none(feats_file, capsys, monkeypatch):
    """Under --reranker all the one provenance line heads every row: it must not say
    'reranker: none' (the baseline's) above the re-ranked rows."""
    import uvireid.rerank.inputs as inputs

    monkeypatch.setattr(inputs, "available_memory", lambda device: 1000)  # dense ones refused
    rc = main(["rerank", str(feats_file), "--reranker", "all", "--protocol", "sysu-all",
               "--trials", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 2  # the refused ones
    line = next(ln for ln in out.splitlines() if ln.startswith("sysu-all |"))
    assert "reranker: see below" in line and "reranker: none" not in out


@pytest.mark.parametrize("typo", ["ALL", "alll"])
def test_unknown_reranker_near_all_suggests_all(feats_file, capsys, typo):
    """--reranker ALL / alll: the error lists aim, kreciprocal, cmfp, cmrr and suggests
    none of them, but never 'all', which the help names as a choice."""
    rc = main(["rerank", str(feats_file), "--reranker", typo, "--protocol", "sysu-all"])
    err = capsys.readouterr().err
    assert rc == 2 and "'all'" in err


class _Nameless:
    """A plugin re-ranker with no ``name`` attribute (a cosine ranking scaled by alpha)."""

    def __init__(self, alpha=1.0):
        self.alpha = alpha

    def rerank(self, query, gallery):
        return -self.alpha * np.asarray(query) @ np.asarray(gallery).T


@pytest.mark.parametrize(("extra", "label"), [([], "zz_nameless"),
                                              (["--set", "alpha=2"], "zz_nameless(alpha=2)")])  # fmt: skip
def test_a_plugin_without_a_name_is_labelled_by_its_registry_name_and_keywords(
    feats_file, tmp_path, capsys, extra, label
):
    """The row and JSON key of a plugin that has no ``name``: the registry name, with the
    keywords it was built with; its scores are the baseline's (a scaled cosine)."""
    from uvireid.registry import RERANKERS

    out = tmp_path / "rr.json"
    with RERANKERS.registered("zz_nameless", _Nameless):
        rc = main(["rerank", str(feats_file), "--reranker", "zz_nameless", "--protocol",
                   "sysu-all", "--trials", "1", "--json", str(out), *extra])  # fmt: skip
    assert rc == 0
    got = json.loads(out.read_text())
    assert list(got["reranked"]) == [label]
    assert got["reranked"][label]["mean"]["mAP"] == pytest.approx(got["baseline"]["mean"]["mAP"])
    assert label in capsys.readouterr().out
