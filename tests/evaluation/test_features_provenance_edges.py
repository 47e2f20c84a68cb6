"""The features file format and the protocols' provenance and refusals at their edges
(mutation audit FE, session 23): each test kills a mutant the suite let survive (named in
its docstring), or shows a fixed bug: non-finite meta read from a plain numpy file, the
modality's fix, validation ids of a model that trained on them, a dataset variant named
as the release, 'None' in a label, a fractional RegDB split, split files averaged across
image sizes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from eval_fixtures import regdb_arrays, sysu_arrays

from uvireid.errors import FeatureFileError, ProtocolError
from uvireid.evaluation.protocols import epoch_label, run_protocol
from uvireid.features import Features, features_from_arrays, load_features, save_features


def _savez(path, arrays: dict, meta: dict | None = None):
    """A features file as another codebase writes it: plain numpy.savez, meta as JSON."""
    extra = {} if meta is None else {"meta": np.array(json.dumps(meta))}
    np.savez(path, **arrays, **extra)
    return path


# -- features.py: the file format ----------------------------------------------------------------
def test_complex_features_are_refused():
    """Mutant F02 (every non-float dtype cast to float32): complex features lost their
    imaginary part silently."""
    a = regdb_arrays(0)
    feats = a["feats"].astype(np.complex64)
    with pytest.raises(FeatureFileError, match=r"'feats' has dtype complex64"):
        features_from_arrays(feats, a["pids"], a["cams"], a["modality"])


def test_a_file_with_no_image_is_refused(tmp_path):
    """Mutant F04 (the 0-row check dropped): an empty file was accepted as a test set."""
    empty = {
        "feats": np.zeros((0, 8), np.float32),
        "pids": np.zeros(0, int),
        "cams": np.zeros(0, int),
        "modality": np.zeros(0, int),
    }
    with pytest.raises(FeatureFileError, match=r"holds no image \(feats has 0 rows\)"):
        load_features(_savez(tmp_path / "e.npz", empty))


def test_bool_labels_are_read_as_0_and_1(tmp_path):
    """Mutant F06 (bool labels refused): numpy.savez of an ``is_infrared`` mask as modality
    is the natural export; it reads as 0 visible / 1 infrared."""
    a = regdb_arrays(0)
    a["modality"] = a["modality"].astype(bool)
    f = load_features(_savez(tmp_path / "b.npz", a))
    assert f.modality.dtype == np.int64
    np.testing.assert_array_equal(f.modality, np.repeat([0, 1], 12))


def test_a_scalar_label_array_is_refused_with_its_fix():
    """Mutant F08 (``ndim > 1`` for ``ndim != 1``): a 0-d pids array ended in a raw
    TypeError (len() of an unsized object) instead of the file's error."""
    a = regdb_arrays(0)
    with pytest.raises(FeatureFileError, match=r"'pids' has shape \(\); expected a 1-D"):
        features_from_arrays(a["feats"], np.array(3), a["cams"], a["modality"])


def test_infinite_float_labels_are_refused():
    """Mutant F30 (the finiteness check of float labels dropped): inf == round(inf), so an
    inf pid became int64's minimum silently."""
    a = regdb_arrays(0)
    pids = a["pids"].astype(float)
    pids[3] = np.inf
    with pytest.raises(FeatureFileError, match=r"'pids' has dtype float64 with non-integer"):
        features_from_arrays(a["feats"], pids, a["cams"], a["modality"])


def test_meta_stored_as_bytes_is_decoded(tmp_path):
    """Mutant F18 (bytes meta read with str()): a JSON meta saved as bytes (np.bytes_, as
    h5py or an encoded string gives) read as "b'{...}'" and was refused."""
    a = regdb_arrays(0)
    meta = {"dataset": "regdb", "split": 2, "train_split": 2}
    np.savez(tmp_path / "m.npz", **a, meta=np.array(json.dumps(meta).encode()))
    assert load_features(tmp_path / "m.npz").meta == meta


def test_produced_by_given_by_the_caller_is_kept(tmp_path):
    """Mutant F20 (the default written over the caller's): the docstring says produced_by
    *defaults* to 'uvireid <version>'."""
    a = regdb_arrays(0)
    out = save_features(tmp_path / "p.npz", **a, produced_by="my exporter 2.0")
    assert load_features(out).meta["produced_by"] == "my exporter 2.0"
    out = save_features(tmp_path / "q.npz", **a)
    assert load_features(out).meta["produced_by"].startswith("uvireid ")


def test_an_empty_file_is_named_as_empty(tmp_path):
    """Mutant F23 (the 0-byte check dropped): the message then spoke of a file starting
    with b'' instead of an unfinished write."""
    (tmp_path / "z.npz").write_bytes(b"")
    with pytest.raises(FeatureFileError, match=r"is empty \(0 bytes\)"):
        load_features(tmp_path / "z.npz")


def test_a_single_npy_array_is_refused_as_such(tmp_path):
    """Mutant F25 (the NpzFile check dropped): numpy.save of the feature matrix alone ended
    in an AttributeError ('numpy.ndarray' has no attribute 'files')."""
    path = tmp_path / "feats.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.eye(3, dtype=np.float32))
    with pytest.raises(FeatureFileError, match=r"holds a single array, not an .npz"):
        load_features(path)


def test_select_refuses_a_mask_of_another_length():
    """Mutant F29 (the mask check dropped): numpy raised a bare IndexError."""
    a = regdb_arrays(0)
    f = features_from_arrays(**a)
    with pytest.raises(FeatureFileError, match=r"bool mask of shape \(5,\); expected \(24,\)"):
        f.select(np.ones(5, bool))
    np.testing.assert_array_equal(f.select(f.modality == 1).pids, np.arange(12))


def test_non_finite_meta_in_a_plain_numpy_file_is_read_as_null_and_said(tmp_path, caplog):
    """A plain numpy.savez with json.dumps (which writes NaN by default) carried the NaN
    into the provenance (audit FE); refusing the file lost it whole, an older uvireid's
    too (audit FF): it is read as null, with a warning. Writing one is refused."""
    a = regdb_arrays(0)
    path = _savez(tmp_path / "n.npz", a, {"dataset": "regdb", "best_mAP": float("nan")})
    with caplog.at_level(logging.WARNING):
        meta = load_features(path).meta
    assert meta == {"dataset": "regdb", "best_mAP": None}
    assert "meta holds NaN (not JSON" in caplog.text
    with pytest.raises(FeatureFileError, match="not JSON-serialisable"):
        save_features(tmp_path / "w.npz", **a, best_mAP=float("inf"))


def test_text_modality_gets_a_modality_fix(tmp_path):
    """modality saved as text ('visible'/'infrared'): the fix given is "store the numbers
    they name as integers (e.g. 'cam3' -> 3)", which names no number for 'visible'. The fix
    should say 0 = visible, 1 = infrared."""
    a = regdb_arrays(0)
    a["modality"] = np.where(a["modality"] == 1, "infrared", "visible")
    with pytest.raises(FeatureFileError) as err:
        load_features(_savez(tmp_path / "t.npz", a))
    assert "fix: 0 = visible, 1 = infrared" in str(err.value)


# -- protocols.py: provenance and refusals ---------------------------------------------------------
def test_a_sysu_mm01_file_is_refused_under_a_regdb_protocol(tmp_path):
    """Mutant P01 (exact name instead of prefix): meta dataset 'SYSU-MM01' (normalised
    'sysumm01') went through regdb-v2i."""
    path = _savez(tmp_path / "s.npz", regdb_arrays(0), {"dataset": "SYSU-MM01"})
    with pytest.raises(ProtocolError, match=r"dataset 'SYSU-MM01'.*pick a sysu-\* protocol"):
        run_protocol(path, "regdb-v2i")


def test_protocols_listed_as_a_tuple_in_memory_are_checked():
    """Mutant P02 (list only): in-memory meta (features_from_arrays) may hold a tuple."""
    f = features_from_arrays(**regdb_arrays(0), protocols=("regdb-i2v",))
    with pytest.raises(ProtocolError, match=r"lists the protocols regdb-i2v.*not 'regdb-v2i'"):
        run_protocol(f, "regdb-v2i")
    assert run_protocol(f, "regdb-i2v").provenance["protocol"] == "regdb-i2v"


def test_features_of_validation_ids_by_a_model_trained_on_them_are_refused(tmp_path):
    """Mutants P03/P04 (today's check): validation=true with train_validation=false is
    refused with the fix (data.validation=true); train_validation=true is evaluated and
    labelled as the validation ids."""
    a = sysu_arrays()
    meta = {"dataset": "sysu", "split": "test", "validation": True}
    bad = _savez(tmp_path / "bad.npz", a, {**meta, "train_validation": False})
    with pytest.raises(ProtocolError, match=r"the model trained on them.*data.validation=true"):
        run_protocol(bad, "sysu-all", trials=1)
    good = _savez(tmp_path / "good.npz", a, {**meta, "train_validation": True})
    res = run_protocol(good, "sysu-all", trials=1)
    assert res.provenance["dataset"] == "SYSU-MM01 validation ids"
    assert "the validation ids (exp/val_id.txt), not the test set" in res.summary()


def test_validation_label_of_a_dataset_laid_out_as_sysu(tmp_path):
    """Mutants P13/P16 (the 'validation ids' tag dropped for a non-SYSU dataset name): a
    synthetic set's validation numbers read as its test set's."""
    meta = {"dataset": "synthetic", "title": "Synthetic", "validation": True}
    meta["train_validation"] = True
    path = _savez(tmp_path / "v.npz", sysu_arrays(), meta)
    res = run_protocol(path, "sysu-all", trials=1)
    assert res.provenance["dataset"] == "Synthetic validation ids (SYSU-MM01 protocol)"


def test_validation_note_is_in_the_summary_line():
    """Mutant P19 (the note dropped)."""
    a = sysu_arrays()
    a.pop("paths")
    f = features_from_arrays(**a, dataset="sysu", validation=True, train_validation=True)
    line = run_protocol(f, "sysu-all", trials=1).summary()
    assert line.split(" | ")[1] == "SYSU-MM01 validation ids"
    assert "not the test set" in line


def test_split_test_is_accepted_in_any_letter_case(tmp_path):
    """Mutant P06 (case-sensitive 'test'): a file whose meta says split 'Test' was refused."""
    path = _savez(tmp_path / "t.npz", sysu_arrays(), {"dataset": "sysu", "split": "Test"})
    assert run_protocol(path, "sysu-all", trials=1).provenance["trials"] == 1
    path = _savez(tmp_path / "v.npz", sysu_arrays(), {"dataset": "sysu", "split": "train"})
    with pytest.raises(ProtocolError, match=r"holds the 'train' split"):
        run_protocol(path, "sysu-all", trials=1)


def test_regdb_test_split_key_is_checked_against_train_split(tmp_path):
    """Mutant P08 (test_split ignored): the meta's test_split (which extract_cmd also reads)
    takes precedence over split."""
    meta = {"dataset": "regdb", "split": 1, "test_split": 2, "train_split": 1}
    path = _savez(tmp_path / "r.npz", regdb_arrays(0), meta)
    with pytest.raises(ProtocolError, match=r"trained on RegDB split 1 but .* split 2"):
        run_protocol(path, "regdb-v2i")


def test_regdb_refuses_a_file_of_three_cameras(tmp_path):
    """Mutant P26 (more than 3 cameras): a RegDB split has exactly two cameras."""
    a = regdb_arrays(0)
    a["cams"] = np.concatenate([np.repeat(1, 12), np.repeat([2, 3], 6)])
    with pytest.raises(ProtocolError, match=r"holds 3 cameras \(\[1, 2, 3\]\)"):
        run_protocol(_savez(tmp_path / "c.npz", a), "regdb-v2i")


def test_regdb_warns_when_only_the_training_split_is_unknown(tmp_path, caplog):
    """Mutant P30 (warn only when both are missing): a file naming its test split but not
    the training split cannot be checked, and says so."""
    path = _savez(tmp_path / "w.npz", regdb_arrays(0), {"dataset": "regdb", "split": 4})
    with caplog.at_level(logging.WARNING):
        res = run_protocol(path, "regdb-v2i")
    assert "the training split (train_split)" in caplog.text
    assert res.provenance["splits"] == [4]


def test_regdb_splits_are_recorded_in_the_order_given(tmp_path, caplog):
    """Mutant P34 (splits sorted, unknown ones dropped): the per-split rows and the
    provenance's splits must line up, an unknown split included."""
    files = [
        _savez(tmp_path / "a.npz", regdb_arrays(3), {"split": 3, "train_split": 3}),
        _savez(tmp_path / "b.npz", regdb_arrays(1), {"split": 1, "train_split": 1}),
        _savez(tmp_path / "c.npz", regdb_arrays(9)),
    ]
    res = run_protocol(files, "regdb-v2i")
    assert res.provenance["splits"] == [3, 1, None]
    assert [r["trial"] for r in res.per_trial] == [3, 1, None]
    assert "3 splits [3, 1, None]" in res.summary()


def test_notes_of_some_splits_name_those_splits(tmp_path):
    """Mutant P22 (a note of one split printed as common to all)."""
    common = {"dataset": "regdb", "stage": "s", "total_epochs": 5}
    files = [
        _savez(
            tmp_path / "a.npz",
            regdb_arrays(1),
            {**common, "split": 1, "train_split": 1, "epoch": 4, "final": True},
        ),
        _savez(
            tmp_path / "b.npz",
            regdb_arrays(2),
            {**common, "split": 2, "train_split": 2, "epoch": 2, "final": False},
        ),
    ]
    line = run_protocol(files, "regdb-v2i").summary()
    assert "split 1: epoch 4 (s, final)" in line
    assert "split 2: epoch 2 (s, not the final epoch)" in line


def test_epoch_label_of_epoch_zero_and_its_stage():
    """Mutants P21 (epoch 0 taken for no epoch) and P33 (the stage dropped)."""
    f = features_from_arrays(**regdb_arrays(0), split=1, train_split=1, epoch=0, stage="warm")
    assert "epoch 0 (warm, not the final epoch)" in run_protocol(f, "regdb-v2i").summary()
    label = epoch_label({"epoch": 7, "stage": "b", "final": False, "selected_on": "test set"})
    assert label == "epoch 7 (b, not the final epoch, chosen on the test set)"
    assert epoch_label({"epoch": 3, "final": True}) == "epoch 3 (final)"


# -- bugs in the provenance / refusals ------------------------------------------------------------
def test_validation_ids_of_a_model_that_says_train_validation_0_are_refused(tmp_path):
    """meta from another codebase's json.dumps may say train_validation 0 (or "false"):
    the check is ``is False``, so those files are evaluated and labelled 'SYSU-MM01
    validation ids' although the model trained on them."""
    meta = {"dataset": "sysu", "validation": True, "train_validation": 0}
    path = _savez(tmp_path / "v.npz", sysu_arrays(), meta)
    with pytest.raises(ProtocolError, match=r"the model trained on them"):
        run_protocol(path, "sysu-all", trials=1)


def test_validation_ids_with_unknown_training_are_warned(tmp_path, caplog):
    """validation=true without train_validation (a checkpoint that does not record its
    dataset, or another codebase's file): evaluated silently as 'SYSU-MM01 validation ids'
    although nothing says the model left those ids out. RegDB warns in the same case
    (train_split unknown); this should warn too (or refuse)."""
    path = _savez(tmp_path / "v.npz", sysu_arrays(), {"dataset": "sysu", "validation": True})
    with caplog.at_level(logging.WARNING):
        run_protocol(path, "sysu-all", trials=1)
    assert "not whether the model left them out of its training (train_validation)" in caplog.text


def test_a_variant_of_sysu_is_not_labelled_sysu_mm01(tmp_path):
    """A dataset whose meta name merely starts with 'sysu' (SYSU-MM01-C, the corruption
    benchmark, titled as such) is labelled plain 'SYSU-MM01': the prefix test in
    _dataset_label takes any 'sysu*' for the release."""
    meta = {"dataset": "SYSU-MM01-C", "title": "SYSU-MM01-C (corrupted)", "split": "test"}
    path = _savez(tmp_path / "c.npz", sysu_arrays(), meta)
    label = run_protocol(path, "sysu-all", trials=1).provenance["dataset"]
    assert "SYSU-MM01-C" in label


def test_a_split_file_without_dataset_is_not_named_none(tmp_path, caplog):
    """Averaging a file of a named dataset with one whose meta names none labels the result
    'None + mydata (RegDB protocol)': str(None) of the second file's title."""
    files = [
        _savez(
            tmp_path / "a.npz",
            regdb_arrays(1),
            {"dataset": "mydata", "split": 1, "train_split": 1},
        ),
        _savez(tmp_path / "b.npz", regdb_arrays(2)),
    ]
    label = run_protocol(files, "regdb-v2i").provenance["dataset"]
    assert label == "mydata (RegDB protocol)"


def test_a_fractional_regdb_split_is_not_truncated(tmp_path):
    """meta split 3.7 is read as split 3 (int() truncates) and checked against
    train_split 3: the file is evaluated as split 3. A split is an integer 1..10; 3.7 should
    be refused (or at least not become 3)."""
    meta = {"dataset": "regdb", "split": 3.7, "train_split": 3}
    path = _savez(tmp_path / "f.npz", regdb_arrays(0), meta)
    with pytest.raises(ProtocolError, match=r"its meta's split is 3.7, not a RegDB split"):
        run_protocol(path, "regdb-v2i")


def test_in_memory_and_file_features_give_the_same_result(tmp_path):
    """numpy, torch, list and file inputs of the same arrays: the same metrics and the same
    provenance apart from the file name."""
    import torch

    a = sysu_arrays()
    meta = {"dataset": "sysu", "split": "test", "feature_head": "global"}
    path = save_features(tmp_path / "f.npz", **a, **meta)
    plain = _savez(tmp_path / "p.npz", a, meta)
    ins = [
        path,
        plain,
        features_from_arrays(**a, **meta),
        features_from_arrays(
            torch.from_numpy(a["feats"]),
            torch.from_numpy(a["pids"]).int(),
            a["cams"].tolist(),
            torch.from_numpy(a["modality"]).bool(),
            paths=a["paths"].tolist(),
            **meta,
        ),
        Features(a["feats"], a["pids"].tolist(), a["cams"], a["modality"], a["paths"], meta),
    ]
    results = [run_protocol(x, "sysu-all", trials=3) for x in ins]
    for r in results[1:]:
        assert r.mean == results[0].mean
        assert r.provenance["dataset"] == "SYSU-MM01"
        assert r.provenance["feature_head"] == "global"
        assert r.provenance["sampler_detail"] == results[0].provenance["sampler_detail"]


def test_regdb_splits_extracted_at_other_sizes_are_not_averaged_silently(tmp_path, caplog):
    """Averaging split files refuses mixed feature_head and test_flip, but files embedded at
    another test_size / test_resize (which `compare` treats as not comparable, audit FD) are
    averaged without a word."""
    files = []
    for s, size in ((1, [288, 144]), (2, [384, 192])):
        meta = {"dataset": "regdb", "split": s, "train_split": s, "test_size": size}
        files.append(_savez(tmp_path / f"{s}.npz", regdb_arrays(s), meta))
    with pytest.raises(ProtocolError, match=r"different features \(test_size \[288, 144\]"):
        run_protocol(files, "regdb-v2i")


def test_split_files_naming_the_dataset_by_either_spelling_are_averaged(tmp_path):
    """Audit FF: 'regdb' and 'RegDB' (another codebase's spelling) are one dataset, and a
    file that names none is not another one."""
    files = [
        _savez(tmp_path / "a.npz", regdb_arrays(1), {"dataset": "regdb", "split": 1}),
        _savez(tmp_path / "b.npz", regdb_arrays(2), {"dataset": "RegDB", "split": 2}),
        _savez(tmp_path / "c.npz", regdb_arrays(3), {"split": 3}),
    ]
    assert run_protocol(files, "regdb-v2i").provenance["dataset"] == "RegDB"
    other = _savez(tmp_path / "d.npz", regdb_arrays(4), {"dataset": "mydata", "split": 4})
    with pytest.raises(ProtocolError, match="the files are of different datasets"):
        run_protocol([*files, other], "regdb-v2i")
