"""Averaging RegDB split files keeps each file's provenance notes and refuses mixed
feature heads (audit AX, session 18)."""

import numpy as np
import pytest

from uvireid.errors import ProtocolError
from uvireid.evaluation.protocols import run_protocol
from uvireid.features import save_features


def _split_file(tmp_path, split, **meta):
    rng = np.random.default_rng(split)
    pids = np.repeat(np.arange(6), 2)
    feats = rng.normal(size=(24, 8)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    path = tmp_path / f"s{split}.npz"
    base = dict(
        dataset="regdb",
        split=split,
        train_split=split,
        feature_head="bn_feat",
        epoch=79,
        stage="salcr",
        final=True,
        produced_by="uvireid run salcr_regdb",
    )
    base.update(meta)
    save_features(
        path,
        feats,
        np.concatenate([pids, pids]),
        np.repeat([1, 2], 12),
        np.repeat([0, 1], 12),
        **base,
    )
    return path


def test_single_split_header_names_non_final_epoch(tmp_path):  # passes today (reference)
    res = run_protocol(_split_file(tmp_path, 2, epoch=3, final=False), "regdb-v2i")
    assert "not the final epoch" in res.summary()


def test_averaged_splits_header_keeps_non_final_epoch(tmp_path):  # fails today
    files = [_split_file(tmp_path, 1), _split_file(tmp_path, 2, epoch=3, final=False)]
    res = run_protocol(files, "regdb-v2i")
    assert "not the final epoch" in res.summary()


def test_averaged_splits_header_keeps_test_set_selection(tmp_path):  # fails today
    files = [_split_file(tmp_path, 1), _split_file(tmp_path, 2, selected_on="test set")]
    res = run_protocol(files, "regdb-v2i")
    assert "chosen on the test set" in res.summary()


def test_averaged_splits_header_keeps_unofficial_dataset(tmp_path):  # fails today
    bad = {"ok": False, "problems": ["test all cameras visible: found 20 ids, official 206"]}
    files = [
        _split_file(tmp_path, 1, dataset_check=bad),
        _split_file(tmp_path, 2, dataset_check=bad),
    ]
    res = run_protocol(files, "regdb-v2i")
    assert "differs from the official release" in res.summary()


def test_averaging_mixed_feature_heads_is_refused(tmp_path):  # fails today
    files = [_split_file(tmp_path, 1), _split_file(tmp_path, 2, feature_head="pool")]
    with pytest.raises(ProtocolError, match="feature"):
        run_protocol(files, "regdb-v2i")


def test_averaging_flipped_and_single_pass_features_is_refused(tmp_path):
    files = [_split_file(tmp_path, 1, test_flip=True), _split_file(tmp_path, 2, test_flip=False)]
    with pytest.raises(ProtocolError, match="test_flip"):
        run_protocol(files, "regdb-v2i")
    same = [_split_file(tmp_path, 1, test_flip=False), _split_file(tmp_path, 2, test_flip=False)]
    run_protocol(same, "regdb-v2i")
