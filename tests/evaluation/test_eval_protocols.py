"""Protocols: samplers against direct re-statements, official files, averaging, refusals."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from eval_fixtures import make_sysu_features
from eval_oracles import naive_eval_llcm, naive_eval_regdb, naive_eval_sysu

from uvireid.errors import FeatureFileError, ProtocolError
from uvireid.evaluation import (
    llcm_indices,
    run_protocol,
    sysu_gallery_indices,
    sysu_query_indices,
)
from uvireid.features import Features, save_features
from uvireid.registry import RERANKERS

GALLERY_CAMS = {"all": [1, 2, 4, 5], "indoor": [1, 2]}


def mangye16_gallery_paths(f: Features, mode: str, trial: int) -> list[str]:
    """The mangye16 seeded sampler restated with the global ``random`` module (notes §1.1)."""
    random.seed(trial)
    chosen = []
    for pid in sorted({int(p) for p in f.pids}, key=lambda p: f"{p:04d}"):
        for cam in GALLERY_CAMS[mode]:
            files = sorted(
                str(path)
                for path, p, c, m in zip(f.paths, f.pids, f.cams, f.modality, strict=True)
                if p == pid and c == cam and m == 0
            )
            if files:  # an absent (id, camera) folder draws nothing
                chosen.append(random.choice(files))
    return chosen


@pytest.mark.parametrize("mode", ["all", "indoor"])
def test_seeded_sampler_equals_mangye16_restatement(mode):
    f = make_sysu_features(seed=1, n_ids=15)
    for trial in range(10):
        got = sysu_gallery_indices(f, mode, trial, "single", "seeded")
        assert f.paths[got].tolist() == mangye16_gallery_paths(f, mode, trial)


def test_seeded_sampler_without_paths_orders_groups_by_row():
    f = make_sysu_features(seed=2, with_paths=False)
    got = sysu_gallery_indices(f, "all", 3, "single", "seeded")
    rng = random.Random(3)
    expected = []
    for pid in sorted(set(f.pids.tolist())):
        for cam in GALLERY_CAMS["all"]:
            rows = [i for i in range(len(f)) if f.pids[i] == pid and f.cams[i] == cam]
            if rows:
                expected.append(rng.choice(rows))
    assert got.tolist() == expected
    result = run_protocol(f, "sysu-all", trials=1)
    assert "row order in the file (no paths)" in result.provenance["sampler_detail"]


def test_seeded_multi_shot_is_a_seeded_sample_of_min_10_in_path_order():
    f = make_sysu_features(seed=3)
    got = sysu_gallery_indices(f, "indoor", 5, "multi", "seeded")
    rng = random.Random(5)
    expected = []
    for pid in sorted(set(f.pids.tolist())):
        for cam in GALLERY_CAMS["indoor"]:
            files = sorted(
                str(f.paths[i]) for i in range(len(f)) if f.pids[i] == pid and f.cams[i] == cam
            )
            if files:
                picked = rng.sample(files, min(10, len(files)))
                expected.extend(sorted(picked))
    assert f.paths[got].tolist() == expected


def test_query_is_every_infrared_image_of_cams_3_and_6():
    f = make_sysu_features(seed=4)
    q = sysu_query_indices(f)
    assert sorted(q.tolist()) == [i for i in range(len(f)) if f.cams[i] in (3, 6)]


def test_official_sampler_names_follow_rand_perm_cam(sysu_official, sysu_official_features):
    perm_file, perms, _ = sysu_official
    f = sysu_official_features
    for mode, shot, n_shot in [("all", "single", 1), ("indoor", "multi", 10)]:
        for trial in range(10):
            got = sysu_gallery_indices(f, mode, trial, shot, "official", perm_file)
            names = ["/".join(str(p).split("/")[-3:]) for p in f.paths[got]]
            expected = []  # get_testing_set.m: cameras outer, identities ascending inner
            for cam in GALLERY_CAMS[mode]:
                for pid in sorted(set(f.pids.tolist())):
                    if (cam, pid) in perms:
                        expected += [
                            f"cam{cam}/{pid:04d}/{idx:04d}.jpg"
                            for idx in perms[(cam, pid)][trial][:n_shot]
                        ]
            assert names == expected


@pytest.mark.parametrize(
    "protocol, n_gallery, n_valid", [("sysu-all", 301, 3803), ("sysu-indoor", 112, 2208)]
)
@pytest.mark.parametrize("sampler", ["seeded", "official"])
def test_official_test_tree_sizes(
    sysu_official, sysu_official_features, protocol, n_gallery, n_valid, sampler
):
    perm_file = sysu_official[0] if sampler == "official" else None
    r = run_protocol(
        sysu_official_features, protocol, trials=2, sampler=sampler, perm_file=perm_file
    )
    p = r.provenance
    assert (p["num_query"], p["num_gallery"], p["num_valid"]) == (3803, n_gallery, n_valid)
    assert p["sampler"] == sampler and p["trials"] == 2


def test_trial_mean_is_the_mean_of_per_trial_reference_values():
    f = make_sysu_features(seed=5, n_ids=30)
    result = run_protocol(f, "sysu-all", trials=4)
    q = sysu_query_indices(f)
    per_trial = []
    for t in range(4):
        g = sysu_gallery_indices(f, "all", t)
        dist = -(f.feats[q] @ f.feats[g].T)
        cmc, m_ap, m_inp = naive_eval_sysu(dist, f.pids[q], f.pids[g], f.cams[q], f.cams[g])
        per_trial.append([cmc[0], cmc[4], cmc[9], cmc[19], m_ap, m_inp])
    expected = 100 * np.mean(per_trial, axis=0)
    got = [result.mean[k] for k in ("R1", "R5", "R10", "R20", "mAP", "mINP")]
    np.testing.assert_allclose(got, expected, atol=1e-4)  # percent: 1e-6 of a fraction
    row0 = [result.per_trial[0][k] for k in ("R1", "R5", "R10", "R20", "mAP", "mINP")]
    np.testing.assert_allclose(row0, 100 * np.asarray(per_trial[0]), atol=1e-4)
    assert result.std["mAP"] == pytest.approx(100 * np.std([r[4] for r in per_trial]), abs=1e-4)


def test_result_table_and_dict():
    f = make_sysu_features(seed=6)
    f.meta.pop("feature_head")  # the flag labels a file that does not say
    r = run_protocol(f, "sysu-indoor", trials=3, shot="multi", feature_head="bn-neck")
    text = r.table()
    lines = text.splitlines()
    assert lines[0].startswith("sysu-indoor | SYSU-MM01 | indoor-search | multi-shot")
    assert "feature head: bn-neck" in lines[0] and "reranker: none" in lines[0]
    assert lines[1].split() == ["trial", "R1", "R5", "R10", "R20", "mAP", "mINP"]
    assert len(lines) == 2 + 3 + 1 and lines[-1].startswith("mean±std") and "±" in lines[-1]
    d = json.loads(json.dumps(r.to_dict()))
    assert d["provenance"]["direction"] == "infrared->visible"
    assert (
        d["provenance"]["shot"] == "multi" and d["provenance"]["features_meta"]["split"] == "test"
    )
    assert len(d["per_trial"]) == 3 and len(d["cmc"]) == 20
    assert d["mean"]["R1"] == pytest.approx(np.mean([t["R1"] for t in d["per_trial"]]))


class TorchNegCosine:
    name = "negcos-torch"

    def rerank(self, query, gallery):
        return -(torch.as_tensor(query) @ torch.as_tensor(gallery).T)


def test_reranker_distance_is_used_and_recorded():
    f = make_sysu_features(seed=7)
    plain = run_protocol(f, "sysu-all", trials=2)
    rr = run_protocol(f, "sysu-all", trials=2, reranker=TorchNegCosine())
    assert rr.provenance["reranker"] == "negcos-torch" and plain.provenance["reranker"] == "none"
    assert rr.mean == pytest.approx(plain.mean)

    class Wrong:
        def rerank(self, query, gallery):
            return np.zeros((len(gallery), len(query)))

    with pytest.raises(ProtocolError, match=r"returned a \(\d+, \d+\) matrix.*expected"):
        run_protocol(f, "sysu-all", trials=1, reranker=Wrong())


# -- RegDB ----------------------------------------------------------------------------------
def regdb_split(split: int, train_split: int | None = None, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed + split)
    ids = np.arange(20) + 100 * split
    pids = np.r_[np.repeat(ids, 3), np.repeat(ids, 3)]
    modality = np.r_[np.zeros(60, int), np.ones(60, int)]
    centres = rng.standard_normal((20, 8))
    feats = centres[np.tile(np.repeat(np.arange(20), 3), 2)] + rng.standard_normal((120, 8))
    meta = {"dataset": "regdb", "split": split}
    if train_split is not None:
        meta["train_split"] = train_split
    return Features(feats.astype(np.float32), pids, modality + 1, modality, None, meta)


@pytest.mark.parametrize("protocol", ["regdb-v2i", "regdb-i2v"])
def test_regdb_directions_and_split_averaging(protocol):
    splits = [regdb_split(s, s) for s in (1, 2, 3)]
    r = run_protocol(splits, protocol)
    assert r.provenance["splits"] == [1, 2, 3] and r.provenance["trials"] == 3
    assert r.provenance["sampler"] == "none"
    per = []
    for f in splits:
        v, t = np.flatnonzero(f.modality == 0), np.flatnonzero(f.modality == 1)
        q, g = (v, t) if protocol == "regdb-v2i" else (t, v)
        cmc, m_ap, m_inp = naive_eval_regdb(-(f.feats[q] @ f.feats[g].T), f.pids[q], f.pids[g])
        per.append(100 * np.array([cmc[0], cmc[19], m_ap, m_inp]))
    got = [r.mean[k] for k in ("R1", "R20", "mAP", "mINP")]
    np.testing.assert_allclose(got, np.mean(per, axis=0), atol=1e-4)
    assert [t["trial"] for t in r.per_trial] == [1, 2, 3]


def test_regdb_refuses_a_model_trained_on_another_split():
    with pytest.raises(
        ProtocolError, match=r"trained on RegDB split 2 but these are the test images of split 5"
    ):
        run_protocol(regdb_split(5, train_split=2), "regdb-v2i")
    with pytest.raises(ProtocolError, match="trained on RegDB split 1"):
        run_protocol([regdb_split(3, 3), regdb_split(4, 1)], "regdb-i2v")


def test_a_regdb_split_file_under_another_protocol_is_named_as_regdb():
    """A RegDB file (meta split: 3, no dataset) under a SYSU-MM01 protocol: the numbered split
    is named as RegDB's, not taken for a train/test split name."""
    f = regdb_split(3)
    f = Features(f.feats, f.pids, f.cams, f.modality, None, {"split": 3})  # no dataset named
    for protocol in ("sysu-all", "sysu-indoor"):  # (LLCM's camera check refuses it first)
        with pytest.raises(ProtocolError, match=r"names split 3 .*RegDB's .*regdb-v2i"):
            run_protocol(f, protocol)


def test_regdb_refuses_a_split_given_twice_and_sampling_options():
    with pytest.raises(ProtocolError, match="split 3 is given twice"):
        run_protocol([regdb_split(3, 3), regdb_split(3, 3)], "regdb-v2i")
    # the same split once without its split meta: the same features, refused too
    f = regdb_split(3, 3)
    bare = Features(f.feats, f.pids, f.cams, f.modality, f.paths, {})
    with pytest.raises(ProtocolError, match="holds the same features as .*one split given twice"):
        run_protocol([f, bare], "regdb-v2i")
    with pytest.raises(ProtocolError, match="RegDB has no gallery sampling"):
        run_protocol(regdb_split(1, 1), "regdb-v2i", shot="multi")


# -- LLCM -----------------------------------------------------------------------------------
def llcm_features(seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    pids, cams, mods, paths = [], [], [], []
    for pid in rng.choice(np.arange(1, 500), 25, replace=False).tolist():
        for mod in (0, 1):
            for cam in range(1, 10):
                if (mod == 1 and cam == 3) or rng.random() < 0.5:
                    continue
                for i in range(int(rng.integers(1, 5))):
                    pids.append(pid)
                    cams.append(cam)
                    mods.append(mod)
                    paths.append(f"test_{'nir' if mod else 'vis'}/cam{cam}/{pid:04d}/{i}.jpg")
    n = len(pids)
    centre = {p: rng.standard_normal(8) for p in set(pids)}
    feats = np.array([centre[p] for p in pids]) + 1.2 * rng.standard_normal((n, 8))
    return Features(
        feats.astype(np.float32),
        np.array(pids),
        np.array(cams),
        np.array(mods),
        np.array(paths),
        {"dataset": "LLCM", "split": "test"},
    )


@pytest.mark.parametrize("protocol, q_mod", [("llcm-v2i", 0), ("llcm-i2v", 1)])
def test_llcm_all_queries_of_one_modality_against_a_sampled_gallery(protocol, q_mod):
    f = llcm_features()
    direction = "visible->infrared" if q_mod == 0 else "infrared->visible"
    r = run_protocol(f, protocol, trials=3)
    assert r.provenance["direction"] == direction
    per = []
    for t in range(3):
        q, g = llcm_indices(f, direction, t)
        assert set(f.modality[q]) == {q_mod} and set(f.modality[g]) == {1 - q_mod}
        assert len(q) == int((f.modality == q_mod).sum())
        rng = random.Random(t)  # DEEN's sampler, restated
        expected = []
        for pid in sorted(set(f.pids.tolist())):
            for cam in range(1, 10):
                files = sorted(
                    str(f.paths[i])
                    for i in range(len(f))
                    if f.pids[i] == pid and f.cams[i] == cam and f.modality[i] == 1 - q_mod
                )
                if files:
                    expected.append(rng.choice(files))
        assert f.paths[g].tolist() == expected
        cmc, m_ap, m_inp = naive_eval_llcm(
            -(f.feats[q] @ f.feats[g].T), f.pids[q], f.pids[g], f.cams[q], f.cams[g]
        )
        per.append(100 * np.array([cmc[0], m_ap, m_inp]))
    np.testing.assert_allclose(
        [r.mean["R1"], r.mean["mAP"], r.mean["mINP"]], np.mean(per, axis=0), atol=1e-4
    )


def test_llcm_v2i_deen_is_deens_transposed_vis_to_ir_branch():
    """DEEN test.py, test_mode = [2, 1]: query = every VIS image, gallery = one sampled NIR
    image per (id, cam) with random.seed(trial); then eval_llcm(-(gall @ query.T),
    gall_label, query_label, gall_cam, query_cam): the sampled NIR images rank the VIS."""
    f = llcm_features(seed=3)
    r = run_protocol(f, "llcm-v2i-deen", trials=3)
    assert r.provenance["sampled_side"] == "query"
    assert "transposed" in r.provenance["sampler_detail"]
    vis = [i for i in range(len(f)) if f.modality[i] == 0]
    per = []
    for t in range(3):
        rng = random.Random(t)  # process_gallery_llcm(mode=2, trial=t), restated
        nir = []
        for pid in sorted(set(f.pids.tolist())):
            for cam in (1, 2, 4, 5, 6, 7, 8, 9):
                files = sorted(
                    str(f.paths[i])
                    for i in range(len(f))
                    if f.pids[i] == pid and f.cams[i] == cam and f.modality[i] == 1
                )
                if files:
                    nir.append(rng.choice(files))
        row = {str(p): i for i, p in enumerate(f.paths)}
        g_nir = np.array([row[p] for p in nir])
        dist = -(f.feats[g_nir] @ f.feats[vis].T)
        cmc, m_ap, m_inp = naive_eval_llcm(
            dist, f.pids[g_nir], f.pids[vis], f.cams[g_nir], f.cams[vis]
        )
        per.append(100 * np.array([cmc[0], m_ap, m_inp]))
        q, g = llcm_indices(f, "infrared->visible", t, sampled="query")
        assert f.paths[q].tolist() == nir and sorted(g.tolist()) == vis
    np.testing.assert_allclose(
        [r.mean["R1"], r.mean["mAP"], r.mean["mINP"]], np.mean(per, axis=0), atol=1e-4
    )
    plain = run_protocol(f, "llcm-v2i", trials=3)  # the direction its name says: not the same
    assert plain.provenance["num_query"] != r.provenance["num_query"]


def test_seeded_multi_shot_provenance_says_it_is_uvireids_own():
    f = make_sysu_features(seed=8)
    detail = run_protocol(f, "sysu-all", trials=1, shot="multi").provenance["sampler_detail"]
    assert "no reference has one" in detail and "mangye16" not in detail
    single = run_protocol(f, "sysu-all", trials=1).provenance["sampler_detail"]
    assert single.startswith("mangye16")


# -- refusals -------------------------------------------------------------------------------
def test_unknown_protocol_lists_valid_ones_closest_first():
    f = make_sysu_features()
    with pytest.raises(
        ProtocolError, match=r"unknown protocol 'sysu-al'; did you mean 'sysu-all'\? .*: sysu-all, "
    ):
        run_protocol(f, "sysu-al")


def test_sysu_refusals(tmp_path, sysu_small):
    f = sysu_small
    no_ir = f.select(f.modality == 0)
    with pytest.raises(ProtocolError, match="no infrared image of cameras 3 or 6"):
        run_protocol(no_ir, "sysu-all")
    no_paths = replace(f, paths=None)
    with pytest.raises(ProtocolError, match="has no 'paths'; the official SYSU-MM01 sampler"):
        run_protocol(no_paths, "sysu-all", sampler="official", perm_file=tmp_path / "x.mat")
    with pytest.raises(ProtocolError, match="rand_perm_cam.mat has 10 trials; 11 asked"):
        run_protocol(f, "sysu-all", trials=11, sampler="official", perm_file=tmp_path / "x.mat")
    with pytest.raises(ProtocolError, match="needs perm_file"):
        run_protocol(f, "sysu-all", sampler="official")
    with pytest.raises(ProtocolError, match="perm_file is given but sampler is 'seeded'"):
        run_protocol(f, "sysu-all", perm_file=tmp_path / "x.mat")
    with pytest.raises(ProtocolError, match=r"x\.mat does not exist"):
        run_protocol(f, "sysu-all", sampler="official", perm_file=tmp_path / "x.mat")
    with pytest.raises(ProtocolError, match="unknown shot 'triple'"):
        run_protocol(f, "sysu-all", shot="triple")
    with pytest.raises(ProtocolError, match="unknown sampler 'seed'; did you mean 'seeded'"):
        run_protocol(f, "sysu-all", sampler="seed")
    with pytest.raises(ProtocolError, match="trials must be a positive integer"):
        run_protocol(f, "sysu-all", trials=0)
    with pytest.raises(ProtocolError, match="only averaged for RegDB"):
        run_protocol([f, f], "sysu-all")
    with pytest.raises(ProtocolError, match="holds features of dataset 'regdb'"):
        run_protocol(replace(f, meta={"dataset": "regdb"}), "sysu-all")
    for meta in ({"dataset": "synthetic"}, {"dataset": "sysu", "split": None}):
        assert run_protocol(replace(f, meta=meta), "sysu-all", trials=1).per_trial
    with pytest.raises(ProtocolError, match="holds the 'train' split"):
        run_protocol(replace(f, meta={"dataset": "SYSU-MM01", "split": "train"}), "sysu-all")
    bad_mod = replace(f, modality=np.zeros(len(f), dtype=np.int64))
    with pytest.raises(ProtocolError, match="modality that contradicts their camera"):
        run_protocol(bad_mod, "sysu-all")
    with pytest.raises(ProtocolError, match="exists for SYSU-MM01 only"):
        run_protocol(llcm_features(), "llcm-v2i", sampler="official", perm_file="x.mat")


def test_official_sampler_refuses_missing_images(sysu_official, sysu_official_features):
    perm_file = sysu_official[0]
    f = sysu_official_features
    drop = np.array(["/cam1/0006/0001.jpg" in str(p) for p in f.paths])
    trial = next(t for t in range(10) if 1 in sysu_official[1][(1, 6)][t, :10])
    with pytest.raises(ProtocolError, match=r"not in the file's paths.*cam1/0006/0001"):
        sysu_gallery_indices(f.select(~drop), "all", trial, "multi", "official", perm_file)
    whole_group = (f.pids == 6) & (f.cams == 1)
    with pytest.raises(ProtocolError, match="no visible image of identity 6 in camera 1"):
        sysu_gallery_indices(f.select(~whole_group), "all", 0, "single", "official", perm_file)


def test_run_protocol_reads_a_features_file(tmp_path, sysu_small):
    f = sysu_small
    path = save_features(tmp_path / "s.npz", f.feats, f.pids, f.cams, f.modality, f.paths, **f.meta)
    r = run_protocol(path, "sysu-all", trials=2)
    assert r.provenance["features_file"] == str(path)
    assert r.provenance["feature_head"] == "global"
    assert r.mean == pytest.approx(run_protocol(f, "sysu-all", trials=2).mean)


def test_a_feature_head_flag_that_contradicts_the_file_is_refused():
    f = make_sysu_features(seed=6)
    assert f.meta["feature_head"] == "global"
    with pytest.raises(ProtocolError, match="'pool' contradicts the features file's meta"):
        run_protocol(f, "sysu-all", trials=1, feature_head="pool")
    same = run_protocol(f, "sysu-all", trials=1, feature_head="global")
    assert same.provenance["feature_head"] == "global"
    assert run_protocol(f, "sysu-all", trials=1).provenance["feature_head"] == "global"


def test_table_columns_stay_apart_with_wide_values():
    r = run_protocol(make_sysu_features(seed=6), "sysu-all", trials=2)
    r.mean["R1"], r.std["R1"] = 100.0, 13.34
    r.per_trial[0]["R1"] = 100.0
    last = r.table().splitlines()[-1].split()
    assert last[:4] == ["mean±std", "100.00", "±", "13.34"]
    assert len(last) == 1 + 3 * 6  # every metric: mean, ±, std


def test_protocols_refuse_cameras_their_dataset_does_not_have():
    f = make_sysu_features(seed=6)  # six SYSU cameras
    f.meta.clear()  # as a file from another codebase: nothing says which dataset
    with pytest.raises(ProtocolError, match=r"holds 6 cameras .* RegDB has one visible"):
        run_protocol(f, "regdb-v2i")
    from uvireid.evaluation.metrics import eval_sysu

    rng = np.random.default_rng(0)
    dist = rng.random((4, 6))
    pids_q, pids_g = np.array([1, 2, 3, 4]), np.array([1, 2, 3, 4, 5, 6])
    cams_g = np.array([1, 2, 4, 5, 1, 2])
    eval_sysu(dist, pids_q, pids_g, np.array([3, 6, 3, 6]), cams_g)  # release numbering
    with pytest.raises(ProtocolError, match=r"q_camids holds camera numbers \[0\]"):
        eval_sysu(dist, pids_q, pids_g, np.array([2, 5, 2, 0]), cams_g - 1)


def test_a_mapping_of_arrays_is_evaluated_as_the_same_features(caplog):
    import logging

    f = make_sysu_features(seed=6)
    arrays = {"feats": f.feats, "pids": f.pids, "cams": f.cams, "modality": f.modality}
    arrays["paths"] = f.paths  # the seeded gallery follows the paths, as in the file
    a = run_protocol(arrays, "sysu-all", trials=2)
    b = run_protocol(f, "sysu-all", trials=2)
    assert a.mean == b.mean
    with pytest.raises(ProtocolError, match="missing: modality"):
        run_protocol({k: v for k, v in arrays.items() if k != "modality"}, "sysu-all")
    with pytest.raises(FeatureFileError, match="pids"):
        run_protocol({**arrays, "pids": arrays["pids"][:-1]}, "sysu-all")
    same = {**arrays, "feats": np.ones_like(f.feats)}
    with caplog.at_level(logging.WARNING):
        run_protocol(same, "sysu-all", trials=1)
    assert "every feature is the same" in caplog.text


def test_an_np_load_of_a_features_file_is_a_mapping_like_any_other(tmp_path):
    """``np.load(file)`` of a file with ``meta`` (every file uvireid writes: a 0-d JSON
    string) is read as the file is, meta included."""
    f = make_sysu_features(seed=6)
    path = save_features(
        tmp_path / "f.npz", f.feats, f.pids, f.cams, f.modality, f.paths, dataset="sysu"
    )
    with np.load(path) as npz:
        a = run_protocol(npz, "sysu-all", trials=2)
        c = run_protocol(dict(npz), "sysu-all", trials=2)
    b = run_protocol(path, "sysu-all", trials=2)
    assert a.mean == b.mean == c.mean
    assert a.provenance["features_meta"]["dataset"] == "sysu"
    with pytest.raises(ProtocolError, match=r"'meta' is a JSON list; expected a JSON object"):
        run_protocol({**dict(np.load(path)), "meta": np.array("[1, 2]")}, "sysu-all")


def test_a_protocol_the_file_does_not_list_or_whose_cameras_it_lacks_is_refused():
    f = make_sysu_features(seed=9)
    bare = Features(f.feats, f.pids, f.cams, f.modality, f.paths, {})  # SYSU cameras, no meta
    with pytest.raises(ProtocolError, match=r"no camera in both.*not an LLCM test set"):
        run_protocol(bare, "llcm-v2i", trials=1)
    listed = Features(
        f.feats, f.pids, f.cams, f.modality, f.paths, {"protocols": ["sysu-all", "sysu-indoor"]}
    )
    with pytest.raises(ProtocolError, match=r"lists the protocols sysu-all, sysu-indoor.*regdb"):
        run_protocol(listed, "regdb-v2i")
    assert run_protocol(listed, "sysu-indoor", trials=1).mean["mAP"] > 0
    run_protocol(llcm_features(), "llcm-v2i", trials=1)  # shared cameras: LLCM's structure


def test_a_dataset_laid_out_as_sysu_is_named_in_the_provenance():
    """Audit G (session 16): demo results read "sysu-all | SYSU-MM01 | ..." in results.json,
    every table and the report, although the data was the synthetic dataset."""
    from uvireid.evaluation.protocols import run_protocol

    f = make_sysu_features()
    synthetic = {"dataset": "synthetic", "title": "synthetic VI-ReID (SYSU-MM01 layout)"}
    for meta, label in [
        (synthetic, "synthetic VI-ReID (SYSU-MM01 layout) (SYSU-MM01 protocol)"),
        ({"dataset": "mine"}, "mine (SYSU-MM01 protocol)"),
        ({"dataset": "sysu", "title": "SYSU-MM01"}, "SYSU-MM01"),
        ({}, "SYSU-MM01"),
    ]:
        res = run_protocol(replace(f, meta=meta), "sysu-all", trials=1)
        assert res.provenance["dataset"] == label
        assert res.summary().startswith(f"sysu-all | {label} | all-search")


def test_features_built_in_memory_are_checked_as_a_file_is():
    """Audit I (session 16): a Features built directly, with list cameras, ended in a raw
    TypeError inside the protocol; now it is checked and converted like a file."""
    from uvireid.errors import FeatureFileError
    from uvireid.evaluation.protocols import run_protocol
    from uvireid.features import Features

    f = make_sysu_features()
    mem = Features(feats=f.feats, pids=f.pids.tolist(), cams=f.cams.astype(np.int32).tolist(),
                   modality=f.modality.tolist(), paths=None, meta={})  # fmt: skip
    assert (
        run_protocol(mem, "sysu-all", trials=1).mean
        == run_protocol(replace(f, paths=None, meta={}), "sysu-all", trials=1).mean
    )
    bad = replace(mem, modality=[2] * len(f))
    with pytest.raises(FeatureFileError, match="modality"):
        run_protocol(bad, "sysu-all", trials=1)


def test_bfloat16_distances_and_features_are_evaluated_and_saved(tmp_path):
    """Audit I: numpy has no bfloat16, so eval_sysu and save_features raised a raw
    TypeError on the bf16 tensors a bf16 model gives."""
    from uvireid.evaluation import eval_sysu
    from uvireid.features import load_features, save_features

    d = torch.randn(4, 6).bfloat16()
    q, g = np.arange(4) % 3, np.arange(6) % 3
    cams_q, cams_g = np.full(4, 3), np.ones(6, int)
    assert eval_sysu(d, q, g, cams_q, cams_g)[1] == eval_sysu(d.float(), q, g, cams_q, cams_g)[1]
    x = torch.randn(2, 3).bfloat16()
    p = save_features(tmp_path / "bf.npz", x, [0, 1], [1, 3], [0, 1])
    back = load_features(p).feats
    assert back.dtype == np.float32 and np.array_equal(back, x.float().numpy())


@pytest.mark.parametrize("trial", [-1, 1.5, True])
def test_the_seeded_sampler_refuses_a_trial_that_is_not_an_integer_from_0(trial):
    """Audit K (session 16): random.Random(-1) is random.Random(1), so trial -1 silently
    drew trial 1's gallery; 1.5 was taken as a seed."""
    from uvireid.evaluation import llcm_indices, sysu_gallery_indices

    f = make_sysu_features(seed=4)
    with pytest.raises(ProtocolError, match=r"trial must be an integer >= 0"):
        sysu_gallery_indices(f, "all", trial, "single", "seeded")
    with pytest.raises(ProtocolError, match=r"trial must be an integer >= 0"):
        llcm_indices(llcm_features(), "visible->infrared", trial)


def test_the_official_sampler_refuses_a_negative_trial(sysu_official, sysu_official_features):
    """Audit K: the permutation's row -1 is its last: trial -1 was trial 9's gallery."""
    from uvireid.evaluation import sysu_gallery_indices

    with pytest.raises(
        ProtocolError, match=r"trial must be an integer >= 0 \(0..trials-1\), got -1"
    ):
        sysu_gallery_indices(
            sysu_official_features, "all", -1, "single", "official", sysu_official[0]
        )


def test_max_rank_must_be_an_integer():
    from uvireid.evaluation import eval_regdb

    with pytest.raises(ProtocolError, match=r"max_rank must be an integer >= 1, got 20.0"):
        eval_regdb(np.zeros((2, 3)), [0, 1], [0, 1, 1], max_rank=20.0)


@pytest.mark.parametrize("split", ["train", "val"])
def test_regdb_refuses_a_file_of_another_named_split(split):
    """Audit AR: a RegDB file whose meta says split 'train' was evaluated (with a warning
    that the meta did not say the test split); the other datasets refused it."""
    f = regdb_split(1, 1)
    f.meta["split"] = split
    with pytest.raises(ProtocolError, match=f"holds the '{split}' split"):
        run_protocol(f, "regdb-v2i")
    f.meta["split"] = "test"
    run_protocol(f, "regdb-v2i")  # named "test": evaluated


def _sysu_with_paths():
    pids, cams, mods, paths = [], [], [], []
    for pid in range(1, 9):
        for c in range(1, 7):
            for n in range(1, 3):
                pids.append(pid)
                cams.append(c)
                mods.append(int(c in (3, 6)))
                paths.append(f"/data/SYSU-MM01/cam{c}/{pid:04d}/{n:04d}.jpg")
    feats = np.random.default_rng(0).normal(size=(len(pids), 8)).astype(np.float32)
    return np.asarray(pids), np.asarray(cams), np.asarray(mods), paths, feats


def test_sysu_labels_that_contradict_the_paths_are_refused():
    """Audit AR: pids shifted against the files (an off-by-N parse) gave R1 63 instead of
    98; cameras 1 and 2 swapped moved the cam-3 exclusion; neither was noticed."""
    pids, cams, mods, paths, feats = _sysu_with_paths()
    run_protocol(Features(feats, pids, cams, mods, paths, {}), "sysu-all", trials=1)
    # a consistent renumbering of the identities is a valid test set
    run_protocol(Features(feats, pids * 10 + 3, cams, mods, paths, {}), "sysu-all", trials=1)
    with pytest.raises(ProtocolError, match="pids do not follow the images' identity folders"):
        run_protocol(Features(feats, np.roll(pids, 2), cams, mods, paths, {}), "sysu-all")
    swapped = cams.copy()
    swapped[cams == 1], swapped[cams == 2] = 2, 1
    with pytest.raises(ProtocolError, match=r"camera that contradicts their path.*cam1/0001"):
        run_protocol(Features(feats, pids, swapped, mods, paths, {}), "sysu-all")
    # Windows separators are read too; paths of another layout are not checked
    win = [p.replace("/", "\\") for p in paths]
    with pytest.raises(ProtocolError, match="pids do not follow"):
        run_protocol(Features(feats, np.roll(pids, 2), cams, mods, win, {}), "sysu-all")
    flat = [f"img_{i}.jpg" for i in range(len(paths))]
    run_protocol(Features(feats, np.roll(pids, 2), cams, mods, flat, {}), "sysu-all", trials=1)


def test_a_file_holding_one_trials_gallery_is_warned(caplog):
    """Audit BC: the query set plus ONE trial's sampled gallery (what a peer's loop holds
    after process_gallery_sysu) gave ten identical 'trials', '± 0.00', without a word."""
    import logging

    pids, cams, mods, paths, feats = _sysu_with_paths()
    full = Features(feats, pids, cams, mods, paths, {})
    with caplog.at_level(logging.WARNING):
        res = run_protocol(full, "sysu-all", trials=3)
    assert "drew the same" not in caplog.text
    assert "identical_trials" not in res.provenance
    # keep the queries and one image per visible (identity, camera): one trial's gallery
    keep = [i for i, p in enumerate(paths) if mods[i] == 1 or p.endswith("0001.jpg")]
    one = Features(feats[keep], pids[keep], cams[keep], mods[keep], [paths[i] for i in keep], {})
    with caplog.at_level(logging.WARNING):
        res = run_protocol(one, "sysu-all", trials=3)
    assert "all 3 trials drew the same gallery" in caplog.text
    assert res.provenance["identical_trials"] is True
    assert "every trial drew the same images" in res.summary()
    assert max(res.std.values()) == 0.0


def test_multi_shot_taking_every_image_is_not_called_one_trials_gallery(caplog):
    """Audit BD: multi-shot takes every image of a group of 10 or fewer, so its trials
    can be identical on a complete test set; that is not a saved gallery."""
    import logging

    pids, cams, mods, paths, feats = _sysu_with_paths()
    with caplog.at_level(logging.WARNING):
        res = run_protocol(
            Features(feats, pids, cams, mods, paths, {}), "sysu-all", trials=3, shot="multi"
        )
    assert "drew the same" not in caplog.text and "identical_trials" not in res.provenance


def test_mean_cmc_curve_is_the_mean_of_the_per_trial_reference_curves():
    """The CMC curve users plot (``to_dict``/``to_json``) is the mean over trials; trial
    0's curve passed every test (mutation audit BX)."""
    f = make_sysu_features(seed=5, n_ids=30)
    result = run_protocol(f, "sysu-all", trials=4)
    q = sysu_query_indices(f)
    curves = []
    for t in range(4):
        g = sysu_gallery_indices(f, "all", t)
        dist = -(f.feats[q] @ f.feats[g].T)
        cmc, _, _ = naive_eval_sysu(dist, f.pids[q], f.pids[g], f.cams[q], f.cams[g])
        curves.append(np.asarray(cmc, dtype=np.float64))
    assert not all(np.array_equal(curves[0], c) for c in curves[1:])  # the trials differ
    assert len(result.cmc) == 20
    np.testing.assert_allclose(result.cmc, 100 * np.mean(curves, axis=0), atol=1e-4)
    # the curve and the R-k means describe the same thing
    for k, r in (("R1", 1), ("R5", 5), ("R10", 10), ("R20", 20)):
        assert abs(result.cmc[r - 1] - result.mean[k]) < 1e-4


def test_official_sampler_on_a_synthetic_rand_perm_cam(tmp_path):
    """The official sampler's tests skip where shared/ is not beside the checkout; this
    one writes its own rand_perm_cam.mat in the kit's layout (a 6 x 1 cell of per-identity
    cells of (10, n) 1-based image numbers), so the permutation row read and the
    camera-major order are checked everywhere (mutation audit BX)."""
    import scipy.io

    rng = np.random.default_rng(0)
    ids, n_img = [1, 2, 3], 12
    cells = np.empty((6, 1), dtype=object)
    perms = {}
    for cam in range(1, 7):
        per = np.empty((1, 3), dtype=object)
        for p in ids:
            n = n_img if cam in (1, 2, 4, 5) else 2
            perms[(cam, p)] = np.stack([rng.permutation(n) + 1 for _ in range(10)])
            per[0, p - 1] = perms[(cam, p)].astype(np.float64)
        cells[cam - 1, 0] = per
    mat = tmp_path / "rand_perm_cam.mat"
    scipy.io.savemat(mat, {"rand_perm_cam": cells})
    paths, pids, cams = [], [], []
    for cam in range(1, 7):
        for p in ids:
            for i in range(1, perms[(cam, p)].shape[1] + 1):
                paths.append(f"/d/SYSU-MM01/cam{cam}/{p:04d}/{i:04d}.jpg")
                pids.append(p)
                cams.append(cam)
    order = rng.permutation(len(paths))  # rows shuffled: selection must go by name
    paths = np.asarray(paths)[order]
    f = Features(
        feats=rng.normal(size=(len(paths), 4)).astype(np.float32),
        pids=np.asarray(pids)[order],
        cams=np.asarray(cams)[order],
        modality=np.isin(np.asarray(cams)[order], (3, 6)).astype(np.int64),
        paths=paths,
    )
    for mode, gcams in (("all", (1, 2, 4, 5)), ("indoor", (1, 2))):
        for shot, n_shot in (("single", 1), ("multi", 10)):
            for trial in (0, 7):
                got = sysu_gallery_indices(f, mode, trial, shot, "official", mat)
                # the kit's get_testing_set.m: cameras outer, ids ascending, row `trial`
                want = [
                    f"/d/SYSU-MM01/cam{c}/{p:04d}/{i:04d}.jpg"
                    for c in gcams
                    for p in ids
                    for i in perms[(c, p)][trial, :n_shot]
                ]
                assert f.paths[got].tolist() == want


@pytest.mark.parametrize(
    ("scale", "warned"),
    [(None, False), (0.95, False), (0.5, True), (3.0, True), ("rows", True)],
)
def test_features_that_are_not_unit_rows_are_warned_of(caplog, scale, warned):
    """The protocols rank by -q.g, the cosine only for unit rows: a median row norm
    outside [0.9, 1.1] (features saved before the extractor's l2norm) is warned of, with
    the median; PGM's a little shorter rows (0.95) and unit rows pass quietly; with a
    re-ranker (which normalises, or has its own distance) nothing is said."""
    import logging

    f = make_sysu_features(seed=4)
    feats = f.feats.astype(np.float64)
    if scale == "rows":  # each row its own length, 0.1 .. 10
        feats = feats * np.random.default_rng(0).uniform(0.1, 10, (len(feats), 1))
    elif scale is not None:
        feats = feats * scale
    g = replace(f, feats=feats.astype(np.float32))
    with caplog.at_level(logging.WARNING, logger="uvireid.evaluation.protocols"):
        run_protocol(g, "sysu-all", trials=1)
    assert ("are not L2-normalised" in caplog.text) is warned
    if warned:
        median = float(np.median(np.linalg.norm(feats, axis=1)))
        assert f"median row norm {median:.3g}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uvireid.evaluation.protocols"):
        run_protocol(g, "sysu-all", trials=1, reranker=RERANKERS.build({"type": "cmfp", "k": 3}))
    assert "are not L2-normalised" not in caplog.text


def test_a_reranker_is_taken_by_name_or_spec():
    """reranker="cmfp" / {"type": "cmfp", "k": 3} is the registry's re-ranker, as the CLI
    and the recipes name it; "none" is no re-ranking; a misspelt name is refused with a
    suggestion."""
    from uvireid.errors import RegistryError

    f = make_sysu_features(seed=6)
    built = run_protocol(
        f, "sysu-all", trials=2, reranker=RERANKERS.build({"type": "cmfp", "k": 3})
    )
    assert (
        run_protocol(f, "sysu-all", trials=2, reranker={"type": "cmfp", "k": 3}).mean == built.mean
    )
    default = run_protocol(f, "sysu-all", trials=2, reranker=RERANKERS.build({"type": "cmfp"}))
    assert run_protocol(f, "sysu-all", trials=2, reranker="cmfp").mean == default.mean
    plain = run_protocol(f, "sysu-all", trials=2)
    for none in ("none", "None", {"type": "none"}):
        assert run_protocol(f, "sysu-all", trials=2, reranker=none).mean == plain.mean
    assert built.mean != plain.mean
    with pytest.raises(RegistryError, match="did you mean 'cmfp'"):
        run_protocol(f, "sysu-all", trials=1, reranker="cmpf")


def test_unnormalised_split_files_are_warned_of_once(caplog):
    """RegDB's split files: one warning for all of them, naming how many are not unit
    rows and the range of their median norms (not one line per file)."""
    import logging

    splits = [regdb_split(s, s) for s in (1, 2, 3)]
    unit = replace(
        splits[0], feats=splits[0].feats / np.linalg.norm(splits[0].feats, axis=1, keepdims=True)
    )
    files = [unit, splits[1], splits[2]]
    medians = sorted(float(np.median(np.linalg.norm(f.feats, axis=1))) for f in files[1:])
    with caplog.at_level(logging.WARNING, logger="uvireid.evaluation.protocols"):
        run_protocol(files, "regdb-v2i")
    lines = [r.getMessage() for r in caplog.records if "not L2-normalised" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("2 of the 3 features files")
    assert f"median row norm {medians[0]:.3g} to {medians[1]:.3g}" in lines[0]
