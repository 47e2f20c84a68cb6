"""The protocols' refusals and provenance labels a second mutation audit (NA) found
untested: each test kills a mutant the suite let survive (named in its docstring)."""

from __future__ import annotations

import numpy as np
import pytest
from eval_fixtures import regdb_arrays, sysu_arrays

from uvireid.errors import ProtocolError
from uvireid.evaluation.protocols import run_protocol
from uvireid.features import features_from_arrays


def test_pids_that_merge_two_identity_folders_are_refused():
    """Mutant P15 (only the 'one path identity, several pids' side of the one-to-one check):
    a parse that maps two identity folders onto one pid (here 2 -> 1: the last digit of
    ``pid // 2``, say) merges two people, whose images then count as positives of each
    other. The pids of folders 0001 and 0002 are one value, so the check must name pid 1
    with both folders; a consistent renumbering (pid * 10 + 3) stays accepted."""
    a = sysu_arrays(6)
    run_protocol(features_from_arrays(**{**a, "pids": a["pids"] * 10 + 3}), "sysu-all", trials=1)
    merged = np.where(a["pids"] == 2, 1, a["pids"])
    f = features_from_arrays(**{**a, "pids": merged})
    with pytest.raises(ProtocolError, match=r"pid 1 goes with identity folders \[1, 2\]"):
        run_protocol(f, "sysu-all", trials=1)


def test_a_boolean_regdb_split_is_refused_not_read_as_split_1():
    """Mutant P24 (``_int_or_none`` without its bool branch): ``split: true`` in a RegDB
    file's meta was read as split 1 (``isinstance(True, int)``) and checked against
    ``train_split: 1``, so the file was evaluated as split 1. The documented rule (audit FE):
    a boolean is no split number and is refused with the key."""
    meta = {"dataset": "regdb", "split": True, "train_split": 1}
    f = features_from_arrays(**regdb_arrays(), **meta)
    with pytest.raises(ProtocolError, match=r"its meta's split is True, not a RegDB split"):
        run_protocol(f, "regdb-v2i")
    # the same file with a real split number is evaluated as that split
    ok = features_from_arrays(**regdb_arrays(), **{**meta, "split": 1})
    assert run_protocol(ok, "regdb-v2i").provenance["splits"] == [1]


def test_validation_ids_whose_train_validation_says_nothing_are_refused(caplog):
    """Mutant P25 (``elif left_out is False``): ``train_validation`` present but neither
    true nor false (``"unknown"``, ``2``) says nothing about whether the model left the
    validation ids out; ``_check_meta`` refuses it (its comment: "false, 0, 'false', or a
    value that says nothing"), whereas an absent key is only warned."""
    a = sysu_arrays(6)
    for value in ("unknown", 2):
        meta = {"dataset": "sysu", "validation": True, "train_validation": value}
        f = features_from_arrays(**a, **meta)
        with pytest.raises(ProtocolError, match=r"holds the validation ids .*train_validation"):
            run_protocol(f, "sysu-all", trials=1)
    r = run_protocol(
        features_from_arrays(**a, dataset="sysu", validation=True), "sysu-all", trials=1
    )
    assert r.provenance["dataset"] == "SYSU-MM01 validation ids"
    assert "not whether the model left them out" in caplog.text


def test_a_string_1_validation_flag_is_read_as_true():
    """Mutant P29 (``_flag`` reading only "true" as a true string): meta written by another
    codebase as ``validation: "1", train_validation: "0"`` (its json of strings) holds
    validation ids of a model that trained on them: refused, as ``true``/``false`` are;
    with ``train_validation: "1"`` it is evaluated and labelled as validation ids."""
    a = sysu_arrays(6)
    bad = features_from_arrays(**a, dataset="sysu", validation="1", train_validation="0")
    with pytest.raises(ProtocolError, match=r"holds the validation ids"):
        run_protocol(bad, "sysu-all", trials=1)
    good = features_from_arrays(**a, dataset="sysu", validation="1", train_validation="1")
    r = run_protocol(good, "sysu-all", trials=1)
    assert r.provenance["dataset"] == "SYSU-MM01 validation ids"
    assert "the validation ids (exp/val_id.txt), not the test set" in r.summary()


def test_a_synthetic_validation_file_without_validation_ids_names_val_id_txt():
    """Mutant P31 (``_validation_ids`` knowing SYSU-MM01 only): the synthetic dataset is laid
    out as SYSU-MM01 and holds out exp/val_id.txt (data.validation on 'synthetic'), so an
    older validation file of it that does not list ``validation_ids`` names that file; a
    RegDB one, whose held-out ids are every fifth training id, says the meta does not say."""
    a = sysu_arrays(6)
    meta = {"dataset": "synthetic", "validation": True, "train_validation": True}
    r = run_protocol(features_from_arrays(**a, **meta), "sysu-all", trials=1)
    assert "the validation ids (exp/val_id.txt), not the test set" in r.summary()
    rd = {"dataset": "regdb", "validation": True, "train_validation": True, "split": 1}
    r = run_protocol(features_from_arrays(**regdb_arrays(), **rd, train_split=1), "regdb-v2i")
    assert "held-out training ids; the meta does not say which" in r.summary()
