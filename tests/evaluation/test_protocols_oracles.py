"""End-to-end checks of the test protocols: a features file written by a plain
numpy script, evaluated by ``uvireid eval`` / ``uvireid rerank``, against a naive
re-statement of each protocol from notes/eval_datasets.md (``protocol_oracles``): the official
``rand_perm_cam.mat`` permutations read with scipy, mangye16's seeded folder loop, DEEN's
LLCM branches, RegDB's split averaging, a per-query metric loop and the mean / population
std over trials."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from protocol_oracles import (
    key_of,
    mangye16_gallery,
    naive_metrics,
    official_names,
    summarise,
)

from uvireid.cli import main

KEYS = ("R1", "R5", "R10", "R20", "mAP", "mINP")
GALLERY_CAMS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}


def _write(path, feats, pids, cams, modality, paths=None, **meta):
    """The '10-line numpy script' of another codebase."""
    arrays = {
        "feats": np.asarray(feats, np.float32),
        "pids": np.asarray(pids),
        "cams": np.asarray(cams),
        "modality": np.asarray(modality),
        "meta": np.array(json.dumps(meta)),
    }
    if paths is not None:
        arrays["paths"] = np.asarray(paths)
    np.savez(path, **arrays)
    return str(path)


def _signal_feats(rng, pids, dim=12, noise=1.6):
    ids = sorted(set(pids))
    centres = {p: rng.standard_normal(dim) for p in ids}
    f = np.stack([centres[p] + noise * rng.standard_normal(dim) for p in pids])
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return f.astype(np.float32)


def _sysu_subset(perm_file, n_ids=22, ir_per_cam=2, seed=3):
    """A SYSU-MM01 test subset named as in the release: every visible image of ``n_ids``
    official test ids (counts from the .mat), a few infrared ones, rows shuffled."""
    import scipy.io

    root = Path(perm_file).parent
    test_ids = sorted(int(x) for x in scipy.io.loadmat(root / "test_id.mat")["id"].reshape(-1))
    ids = test_ids[:: max(1, len(test_ids) // n_ids)][:n_ids]
    cells = scipy.io.loadmat(str(perm_file))["rand_perm_cam"]
    paths, pids, cams = [], [], []
    for pid in ids:
        for cam in range(1, 7):
            per_pid = cells[cam - 1, 0]
            if pid > per_pid.shape[0] or np.asarray(per_pid[pid - 1, 0]).size == 0:
                continue
            n = np.asarray(per_pid[pid - 1, 0]).shape[1]
            take = range(1, n + 1) if cam not in (3, 6) else range(1, min(n, ir_per_cam) + 1)
            for idx in take:
                paths.append(f"/data/SYSU-MM01/cam{cam}/{pid:04d}/{idx:04d}.jpg")
                pids.append(pid)
                cams.append(cam)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    paths = [paths[i] for i in order]
    pids = np.asarray(pids)[order]
    cams = np.asarray(cams)[order]
    return {
        "feats": _signal_feats(rng, pids.tolist()),
        "pids": pids,
        "cams": cams,
        "modality": np.isin(cams, (3, 6)).astype(np.int64),
        "paths": np.asarray(paths),
    }


def _eval_cli(tmp_path, files, protocol, *extra):
    out = tmp_path / "out.json"
    assert main(["eval", *files, "--protocol", protocol, *extra, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def _assert_same(doc, rows, n_query, n_gallery, n_valid):
    table, mean, std, cmc = summarise([r[:3] for r in rows])
    assert len(doc["per_trial"]) == len(rows)
    for got, want, r in zip(doc["per_trial"], table, rows, strict=True):
        for k in KEYS:
            assert got[k] == pytest.approx(want[k], abs=1e-4), k
        assert got["num_valid"] == r[3]
    for k in KEYS:
        assert doc["mean"][k] == pytest.approx(mean[k], abs=1e-4), k
        assert doc["std"][k] == pytest.approx(std[k], abs=1e-4), k
    assert np.allclose(doc["cmc"], cmc, atol=1e-4)
    prov = doc["provenance"]
    assert prov["num_query"] == n_query
    assert prov["num_gallery"] == n_gallery
    assert prov["num_valid"] == n_valid


@pytest.fixture(scope="module")
def official_perm(sysu_official):
    """The official rand_perm_cam.mat (skips where the shared copy is absent)."""
    return sysu_official[0]


@pytest.mark.parametrize(
    ("mode", "shot"), [("all", "single"), ("indoor", "single"), ("all", "multi")]
)
def test_sysu_official_sampler_end_to_end_equals_the_naive_protocol(
    tmp_path, official_perm, mode, shot
):
    n_trials = 10 if shot == "single" else 3  # 10: the whole file (trials 0..9)
    a = _sysu_subset(official_perm)
    f = _write(tmp_path / "sysu.npz", **a, dataset="sysu", split="test")
    doc = _eval_cli(
        tmp_path,
        [f],
        f"sysu-{mode}",
        "--sampler",
        "official",
        "--perm-file",
        str(official_perm),
        "--shot",
        shot,
        "--trials",
        str(n_trials),
    )
    q = np.flatnonzero(np.isin(a["cams"], (3, 6)))
    by_key = {key_of(p): i for i, p in enumerate(a["paths"])}
    rows, sizes = [], []
    pids_in = sorted(set(a["pids"].tolist()))
    for t in range(n_trials):
        names = official_names(
            official_perm, GALLERY_CAMS[mode], pids_in, t, 1 if shot == "single" else 10
        )
        g = np.asarray([by_key[n] for n in names])
        sizes.append(len(g))
        rows.append(
            naive_metrics(
                a["feats"][q], a["feats"][g], a["pids"][q], a["pids"][g],
                a["cams"][q], a["cams"][g], "sysu",
            )
        )  # fmt: skip
    valid = [r[3] for r in rows]
    _assert_same(doc, rows, len(q), sizes[0] if len(set(sizes)) == 1 else sizes,
                 valid[0] if len(set(valid)) == 1 else valid)  # fmt: skip
    if mode == "indoor":
        assert rows[0][3] < len(q)  # invalid queries exist: the denominator is N_valid


def test_sysu_official_sampler_ties_rank_as_matlabs_stable_sort(tmp_path, official_perm):
    """With ``--stable`` and every feature the same, the official kit's MATLAB ``sort``
    keeps the gallery order of get_testing_set.m (camera outer, ids ascending, permutation
    order): the rank-1 image is the first gallery entry that survives the cam-2 removal."""
    a = _sysu_subset(official_perm, n_ids=22)
    # every feature the same unit vector e_0: every product is exactly 1 in any summation
    # order (a constant 1/sqrt(d) vector's products differ in the last bit between a
    # BLAS kernel's main and edge tiles on some CPUs: ties broken by rounding, not order)
    a["feats"] = np.zeros_like(a["feats"])
    a["feats"][:, 0] = 1.0
    f = _write(tmp_path / "sysu.npz", **a, dataset="sysu", split="test")
    doc = _eval_cli(
        tmp_path, [f], "sysu-all", "--sampler", "official", "--perm-file", str(official_perm),
        "--shot", "multi", "--trials", "2", "--stable",
    )  # fmt: skip
    q = np.flatnonzero(np.isin(a["cams"], (3, 6)))
    by_key = {key_of(p): i for i, p in enumerate(a["paths"])}
    rows = []
    for t in range(2):
        names = official_names(official_perm, (1, 2, 4, 5), sorted(set(a["pids"].tolist())), t, 10)
        g = np.asarray([by_key[n] for n in names])
        dist = np.zeros((len(q), len(g)))
        rows.append(
            naive_metrics(None, None, a["pids"][q], a["pids"][g], a["cams"][q], a["cams"][g],
                          "sysu", dist=dist)
        )  # fmt: skip
    table, mean, _, _ = summarise([r[:3] for r in rows])
    for got, want in zip(doc["per_trial"], table, strict=True):
        for k in KEYS:
            assert got[k] == pytest.approx(want[k], abs=1e-4), k


@pytest.mark.parametrize(("mode", "shot"), [("all", "single"), ("indoor", "multi")])
def test_sysu_seeded_sampler_end_to_end_equals_mangye16s_loop(tmp_path, mode, shot):
    """mangye16's ``process_gallery_sysu``: random.seed(trial), ids as sorted %04d strings,
    cameras in the listed order, one choice per existing folder over sorted full paths;
    paths here differ in their root (sorted as full strings)."""
    rng = np.random.default_rng(11)
    paths, pids, cams = [], [], []
    for pid in sorted(rng.choice(np.arange(1, 530), 24, replace=False).tolist()):
        for cam in range(1, 7):
            if cam not in (3, 6) and rng.random() < 0.3:
                continue
            for idx in rng.permutation(np.arange(1, int(rng.integers(1, 15)) + 1)).tolist():
                root = "/a" if idx % 2 else "/b/c"
                paths.append(f"{root}/cam{cam}/{pid:04d}/{idx:04d}.jpg")
                pids.append(pid)
                cams.append(cam)
    pids, cams = np.asarray(pids), np.asarray(cams)
    feats = _signal_feats(rng, pids.tolist())
    mod = np.isin(cams, (3, 6)).astype(np.int64)
    f = _write(tmp_path / "s.npz", feats, pids, cams, mod, paths, dataset="sysu", split="test")
    doc = _eval_cli(tmp_path, [f], f"sysu-{mode}", "--shot", shot, "--trials", "4")
    q = np.flatnonzero(mod == 1)
    rows, sizes = [], []
    for t in range(4):
        g = mangye16_gallery(paths, pids, cams, GALLERY_CAMS[mode], t, multi=shot == "multi")
        sizes.append(len(g))
        rows.append(naive_metrics(feats[q], feats[g], pids[q], pids[g], cams[q], cams[g], "sysu"))
    valid = [r[3] for r in rows]
    _assert_same(doc, rows, len(q), sizes[0] if len(set(sizes)) == 1 else sizes,
                 valid[0] if len(set(valid)) == 1 else valid)  # fmt: skip


def _llcm_arrays(seed=5, n_ids=22):
    rng = np.random.default_rng(seed)
    paths, pids, cams, mods = [], [], [], []
    for pid in sorted(rng.choice(np.arange(1, 1065), n_ids, replace=False).tolist()):
        for mod, folder, cam_list in ((0, "test_vis", range(1, 10)),
                                      (1, "test_nir", (1, 2, 4, 5, 6, 7, 8, 9))):  # fmt: skip
            for cam in cam_list:
                if rng.random() < 0.6:
                    continue
                for idx in range(int(rng.integers(1, 5))):
                    paths.append(
                        f"/LLCM/{folder}/cam{cam}/{pid:04d}/{pid:04d}_c{cam:02d}_{idx}.jpg"
                    )
                    pids.append(pid)
                    cams.append(cam)
                    mods.append(mod)
    pids, cams, mods = np.asarray(pids), np.asarray(cams), np.asarray(mods)
    order = rng.permutation(len(pids))
    return {
        "feats": _signal_feats(rng, pids[order].tolist()),
        "pids": pids[order],
        "cams": cams[order],
        "modality": mods[order],
        "paths": np.asarray(paths)[order],
    }


@pytest.mark.parametrize("protocol", ["llcm-i2v", "llcm-v2i", "llcm-v2i-deen"])
def test_llcm_end_to_end_equals_deens_branches(tmp_path, protocol):
    """DEEN test.py: "IR to VIS" = every NIR query against one sampled VIS image per (id,
    camera) (cameras 1..9); "VIS to IR" transposes the matrix, so its sampled NIR images
    are the queries (llcm-v2i-deen); llcm-v2i samples the NIR gallery for all VIS queries.
    Removal: same id and same camera only."""
    a = _llcm_arrays()
    f = _write(tmp_path / "l.npz", **a, dataset="llcm", split="test")
    doc = _eval_cli(tmp_path, [f], protocol, "--trials", "3")
    vis, nir = np.flatnonzero(a["modality"] == 0), np.flatnonzero(a["modality"] == 1)
    rows, nq, ng = [], [], []
    for t in range(3):
        if protocol == "llcm-i2v":
            q = nir
            g = mangye16_gallery(a["paths"], a["pids"], a["cams"] + 100 * a["modality"],
                                 tuple(range(1, 10)), t)  # fmt: skip
        elif protocol == "llcm-v2i":
            q = vis
            g = mangye16_gallery(a["paths"], a["pids"], a["cams"] + 100 * (1 - a["modality"]),
                                 (1, 2, 4, 5, 6, 7, 8, 9), t)  # fmt: skip
        else:
            q = mangye16_gallery(a["paths"], a["pids"], a["cams"] + 100 * (1 - a["modality"]),
                                 (1, 2, 4, 5, 6, 7, 8, 9), t)  # fmt: skip
            g = vis
        nq.append(len(q))
        ng.append(len(g))
        rows.append(
            naive_metrics(a["feats"][q], a["feats"][g], a["pids"][q], a["pids"][g],
                          a["cams"][q], a["cams"][g], "llcm")
        )  # fmt: skip
    valid = [r[3] for r in rows]

    def one(v):
        return v[0] if len(set(v)) == 1 else v

    _assert_same(doc, rows, one(nq), one(ng), one(valid))


@pytest.mark.parametrize("protocol", ["regdb-v2i", "regdb-i2v"])
def test_regdb_split_files_end_to_end_equal_the_naive_mean(tmp_path, protocol):
    """Two split files: all visible vs all thermal of each (no removal, standard CMC), the
    mean and population std over the files; every id has several images per modality."""
    rows, files = [], []
    for split in (1, 2):
        rng = np.random.default_rng(split)
        pids = np.tile(np.repeat(np.arange(25) + 100 * split, 3), 2)
        mods = np.repeat([0, 1], 75)
        feats = _signal_feats(rng, pids.tolist(), noise=2.5)
        perm = rng.permutation(len(pids))
        pids, mods, feats = pids[perm], mods[perm], feats[perm]
        cams = np.where(mods == 0, 1, 2)
        files.append(
            _write(tmp_path / f"r{split}.npz", feats, pids, cams, mods, dataset="regdb",
                   split=split, train_split=split)
        )  # fmt: skip
        qm = 0 if protocol == "regdb-v2i" else 1
        q, g = np.flatnonzero(mods == qm), np.flatnonzero(mods != qm)
        rows.append(naive_metrics(feats[q], feats[g], pids[q], pids[g], cams[q], cams[g], "regdb"))
    doc = _eval_cli(tmp_path, files, protocol)
    _assert_same(doc, rows, 75, 75, 75)
    assert doc["provenance"]["splits"] == [1, 2]


def test_rerank_cli_baseline_and_reranked_equal_the_naive_protocol(tmp_path, official_perm):
    """``uvireid rerank``: the baseline is the naive protocol on -(q @ g.T), the re-ranked
    result the naive protocol on the re-ranker's own distances of the naive gallery."""
    from uvireid.registry import RERANKERS

    a = _sysu_subset(official_perm, n_ids=22)
    f = _write(tmp_path / "sysu.npz", **a, dataset="sysu", split="test")
    out = tmp_path / "rr.json"
    assert main(["rerank", f, "--reranker", "kreciprocal", "--set", "k1=6", "--set", "k2=2",
                 "--protocol", "sysu-indoor", "--sampler", "official", "--perm-file",
                 str(official_perm), "--trials", "3", "--json", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    rr = RERANKERS.build({"type": "kreciprocal", "k1": 6, "k2": 2})
    q = np.flatnonzero(np.isin(a["cams"], (3, 6)))
    by_key = {key_of(p): i for i, p in enumerate(a["paths"])}
    base, after = [], []
    for t in range(3):
        names = official_names(official_perm, (1, 2), sorted(set(a["pids"].tolist())), t, 1)
        g = np.asarray([by_key[n] for n in names])
        args = (a["pids"][q], a["pids"][g], a["cams"][q], a["cams"][g], "sysu")
        base.append(naive_metrics(a["feats"][q], a["feats"][g], *args))
        d = np.asarray(rr.rerank(a["feats"][q], a["feats"][g]), dtype=np.float64)
        after.append(naive_metrics(None, None, *args, dist=d))
    (reranked,) = doc["reranked"].values()
    for res, rows in ((doc["baseline"], base), (reranked, after)):
        _, mean, std, cmc = summarise([r[:3] for r in rows])
        for k in KEYS:
            assert res["mean"][k] == pytest.approx(mean[k], abs=1e-4), k
            assert res["std"][k] == pytest.approx(std[k], abs=1e-4), k
        assert np.allclose(res["cmc"], cmc, atol=1e-4)
    assert reranked["rerank_calls"] == 3


# ------------------------------------------------ documented behaviour at the edges


def test_official_sampler_refuses_a_file_without_any_visible_image_of_a_test_id(
    tmp_path,
    capsys,
    official_perm,
):
    """An identity whose infrared queries are in the file but none of whose visible images
    are (the permutation file has them) is refused: its queries would turn invalid and the
    figures change silently (the check is over every id of the file, not only the ids
    with visible candidates)."""
    a = _sysu_subset(official_perm, n_ids=22)
    pid = int(a["pids"][a["cams"] == 1][0])  # an id with a camera-1 permutation
    keep = ~((a["pids"] == pid) & ~np.isin(a["cams"], (3, 6)))
    assert (a["pids"][keep] == pid).any()  # its queries stay
    b = {k: v[keep] for k, v in a.items()}
    f = _write(tmp_path / "s.npz", **b, dataset="sysu", split="test")
    code = main(["eval", f, "--protocol", "sysu-all", "--sampler", "official", "--perm-file",
                 str(official_perm), "--trials", "1"])  # fmt: skip
    assert code != 0
    assert f"no visible image of identity {pid} in camera" in capsys.readouterr().err


def test_official_sampler_reads_windows_paths(tmp_path, official_perm):
    """Paths written on Windows (``C:\\data\\SYSU-MM01\\cam1\\0006\\0001.jpg``) name the
    same images as their POSIX spelling: the same official gallery and figures."""
    a = _sysu_subset(official_perm, n_ids=22)
    win = np.asarray(["C:" + str(p).replace("/", "\\") for p in a["paths"]])
    f = _write(tmp_path / "w.npz", **{**a, "paths": win}, dataset="sysu", split="test")
    args = ("--sampler", "official", "--perm-file", str(official_perm), "--trials", "2")
    doc = _eval_cli(tmp_path, [f], "sysu-indoor", *args)
    q = np.flatnonzero(np.isin(a["cams"], (3, 6)))
    by_key = {key_of(p): i for i, p in enumerate(a["paths"])}
    for t in range(2):
        names = official_names(official_perm, (1, 2), sorted(set(a["pids"].tolist())), t, 1)
        g = np.asarray([by_key[n] for n in names])
        cmc, m_ap, m_inp, _ = naive_metrics(
            a["feats"][q], a["feats"][g], a["pids"][q], a["pids"][g],
            a["cams"][q], a["cams"][g], "sysu",
        )  # fmt: skip
        got = doc["per_trial"][t]
        assert got["R1"] == pytest.approx(cmc[0], abs=1e-4)
        assert got["mAP"] == pytest.approx(m_ap, abs=1e-4)
        assert got["mINP"] == pytest.approx(m_inp, abs=1e-4)
    assert json.dumps(doc["provenance"]["num_gallery"]) == str(len(g))


def test_a_numpy_integer_trial_seeds_as_the_python_integer():
    """trial may be a numpy integer (``_check_trial`` accepts it): it seeds Python's
    generator as ``random.seed(int(trial))`` would (a numpy int64 is no valid seed type
    of Python 3.11's ``random``)."""
    import random

    from uvireid.evaluation.protocols import seeded_gallery
    from uvireid.features import features_from_arrays

    pids = np.repeat(np.arange(1, 6), 4)
    cams = np.tile([1, 1, 4, 4], 5)
    paths = [f"cam{c}/{p:04d}/{i:04d}.jpg" for i, (p, c) in enumerate(zip(pids, cams))]
    f = features_from_arrays(np.eye(20, 4, dtype=np.float32), pids, cams, np.zeros(20), paths)
    cand = np.arange(20)
    got = seeded_gallery(f, cand, (1, 4), np.int64(3))
    random.seed(3)
    want = []
    for p in range(1, 6):
        for c in (1, 4):
            rows = sorted((paths[r], r) for r in range(20) if pids[r] == p and cams[r] == c)
            want.append(random.choice(rows)[1])
    assert got.tolist() == want


def test_set_values_are_parsed_as_documented():
    """``--set KEY=VALUE``: integers, floats, true/false and none/null (any case) become
    Python values; anything else stays text."""
    from uvireid.cli.rerank_cmd import _parse_value

    assert _parse_value("4") == 4 and isinstance(_parse_value("4"), int)
    assert _parse_value("1e-3") == pytest.approx(1e-3)
    assert _parse_value("TRUE") is True and _parse_value("false") is False
    assert _parse_value("null") is None and _parse_value("None") is None
    assert _parse_value("cmfp") == "cmfp"


def test_rerank_time_per_trial_of_regdb_split_files_is_per_split(tmp_path):
    """RegDB's trials are its split files (no --trials): the time per trial is the total
    over the splits divided by their number, and the re-ranker ran once per split."""
    rng = np.random.default_rng(0)
    files = []
    for split in (1, 2, 3):
        pids = np.tile(np.arange(12) + 50 * split, 2)
        mods = np.repeat([0, 1], 12)
        feats = rng.normal(size=(24, 6)).astype(np.float32)
        files.append(
            _write(tmp_path / f"r{split}.npz", feats, pids, np.where(mods == 0, 1, 2), mods,
                   dataset="regdb", split=split, train_split=split)
        )  # fmt: skip
    out = tmp_path / "rr.json"
    assert main(["rerank", *files, "--reranker", "kreciprocal", "--set", "k1=4", "--set", "k2=2",
                 "--protocol", "regdb-v2i", "--json", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    (res,) = doc["reranked"].values()
    assert res["rerank_calls"] == 3
    row = doc["summary"][1]
    assert row["seconds_per_trial"] == pytest.approx(res["rerank_seconds_total"] / 3)
