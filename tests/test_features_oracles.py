"""Features files and atomic writes: label dtypes at the
int64 limits, float16 features, Latin-1 byte paths, placeholder paths, identical_rows at
its bounds, meta decoding, select's order, descriptors, umask, stale temporaries."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

import uvireid.fileio as F
from uvireid.errors import FeatureFileError
from uvireid.features import (
    features_from_arrays,
    identical_rows,
    load_features,
    save_features,
)


def _arrays(n: int = 6, d: int = 4) -> dict:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n, d)).astype(np.float32)
    cams = np.array([1, 3, 2, 6, 1, 3][:n])
    return {
        "feats": feats,
        "pids": np.arange(n) // 2,
        "cams": cams,
        "modality": np.isin(cams, [3, 6]).astype(np.int64),
    }


def _load(tmp_path, **arrays):
    np.savez(tmp_path / "f.npz", **arrays)
    return load_features(tmp_path / "f.npz")


# --- labels at the int64 limits -------------------------------------------------------


def test_float_labels_of_exactly_2_pow_63_are_refused(tmp_path):
    """2**63 itself is beyond int64 (its largest is 2**63 - 1): as a float it converts to
    -2**63, merging it with any other label >= 2**63."""
    a = _arrays()
    a["pids"] = np.array([0.0, 0, 1, 1, 2.0**63, 2.0**63])
    with pytest.raises(FeatureFileError, match="beyond the 64-bit integer range"):
        _load(tmp_path, **a)


def test_uint64_labels_at_int64_max_are_kept_exactly(tmp_path):
    """uint64 2**63 - 1 is the largest int64: kept, not refused as beyond the range."""
    a = _arrays()
    top = 2**63 - 1
    a["pids"] = np.array([top, top, 1, 1, 0, 0], np.uint64)
    f = _load(tmp_path, **a)
    assert f.pids.dtype == np.int64
    assert f.pids.tolist() == [top, top, 1, 1, 0, 0]


def test_object_labels_at_int64_max_are_kept_exactly(tmp_path):
    """Python ints up to 2**63 - 1 fit an int64 and are kept as they are."""
    a = _arrays()
    top = 2**63 - 1
    a["pids"] = np.array([top, top, 1, 1, 2, 2], dtype=object)
    f = features_from_arrays(**a)
    assert f.pids.dtype == np.int64
    assert f.pids.tolist() == [top, top, 1, 1, 2, 2]


def test_object_labels_mixing_ints_and_fractions_are_refused_not_truncated():
    """[.., 2, 2.5] is not a list of integers: 2.5 must not be read as 2."""
    a = _arrays()
    a["pids"] = np.array([0, 0, 1, 1, 2, 2.5], dtype=object)
    with pytest.raises(FeatureFileError):
        features_from_arrays(**a)


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ([0, 0, 1, 1, 2, 2.5], "non-integer values"),
        ([0, 0, 1, 1, 2, float("nan")], "non-integer values"),
        ([0, 0, 1, 1, 2, 1e20], "beyond the 64-bit integer range"),
    ],
)
def test_object_labels_holding_numbers_are_not_called_text(values, said):
    """An object column of numbers (pandas' nullable Float64/Int64 .to_numpy()) that are
    not all ints: the numeric check's FeatureFileError (a ValueError) is swallowed by the
    contextlib.suppress(ValueError, ...) around it, and the error then says the labels
    hold *text* (dtype object, e.g. [0]) with the fix for text labels."""
    a = _arrays()
    a["pids"] = np.array(values, dtype=object)
    with pytest.raises(FeatureFileError, match=said):
        features_from_arrays(**a)


def test_an_empty_unsigned_label_array_is_a_length_error(tmp_path):
    """An empty uint64 'pids' beside 6 rows of features is a length mismatch (the
    int64-range check must not take the max of nothing)."""
    a = _arrays()
    a["pids"] = np.zeros(0, np.uint64)
    with pytest.raises(FeatureFileError, match="mismatched length"):
        _load(tmp_path, **a)


# --- features dtypes ------------------------------------------------------------------


def test_float16_features_are_read_as_float32_with_their_values(tmp_path):
    a = _arrays()
    half = a["feats"].astype(np.float16)
    a["feats"] = half
    f = _load(tmp_path, **a)
    assert f.feats.dtype == np.float32
    np.testing.assert_array_equal(f.feats, half.astype(np.float32))


# --- paths ----------------------------------------------------------------------------


def test_latin1_byte_paths_are_decoded_as_the_os_does_and_kept_apart(tmp_path):
    """Two Latin-1 names (not UTF-8) differ in one byte: read as os.fsdecode reads them,
    not both as U+FFFD (which made them one repeated path)."""
    a = _arrays()
    raw = [b"cam1/caf\xe9_%d.jpg" % i for i in range(5)] + [b"cam1/caf\xe8_0.jpg"]
    a["paths"] = np.array(raw)  # dtype S
    f = _load(tmp_path, **a)
    assert f.paths.tolist() == [os.fsdecode(r) for r in raw]
    assert [os.fsencode(p) for p in f.paths.tolist()] == raw


def test_a_path_given_three_times_is_refused_with_the_repeat_count(tmp_path):
    a = _arrays()
    a["paths"] = np.array(["a.jpg", "a.jpg", "a.jpg", "b.jpg", "b.jpg", "c.jpg"])
    with pytest.raises(FeatureFileError, match=r"3 row\(s\) repeat .*\(2 path\(s\)"):
        _load(tmp_path, **a)


def test_empty_placeholder_paths_may_repeat(tmp_path):
    """'' (as 'None' and 'nan') is no path: rows without one are not duplicates."""
    a = _arrays()
    a["paths"] = np.array(["", "", "x/1.jpg", "", "x/2.jpg", ""])
    f = _load(tmp_path, **a)
    assert f.paths.tolist() == ["", "", "x/1.jpg", "", "x/2.jpg", ""]


# --- identical_rows -------------------------------------------------------------------


def test_identical_rows_counts_a_difference_of_exactly_rel_as_within():
    """'equals the first within rel of the largest magnitude': a spread equal to
    rel * scale (exact in binary: 0.25 * 1.0) is within."""
    f = np.array([[1.0, 0.0], [1.0, 0.25]])
    assert identical_rows(f, rel=0.25) == (0.25, 1.0)
    assert identical_rows(f, rel=0.125) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_identical_rows_of_non_finite_input_is_none(bad):
    f = np.array([[bad, 1.0], [bad, 1.0], [bad, 1.0]])
    assert identical_rows(f) is None


# --- meta -----------------------------------------------------------------------------


def test_utf8_meta_stored_as_bytes_keeps_its_unicode(tmp_path):
    a = _arrays()
    meta = {"dataset": "sysu", "note": "caf\u00e9 \u6d4b\u8bd5"}
    a["meta"] = np.array(json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    f = _load(tmp_path, **a)
    assert f.meta == meta


def test_a_file_without_meta_reads_as_an_empty_object(tmp_path):
    f = _load(tmp_path, **_arrays())
    assert f.meta == {}


# --- Features ---------------------------------------------------------------------------


def test_select_by_index_keeps_the_index_order_for_every_array():
    a = _arrays()
    f = features_from_arrays(**a, paths=[f"p{i}.jpg" for i in range(6)])
    idx = [4, 0, 3]
    s = f.select(np.array(idx))
    np.testing.assert_array_equal(s.feats, a["feats"][idx])
    assert s.pids.tolist() == a["pids"][idx].tolist()
    assert s.cams.tolist() == a["cams"][idx].tolist()
    assert s.paths.tolist() == ["p4.jpg", "p0.jpg", "p3.jpg"]


def test_describe_counts_each_modality():
    a = _arrays()  # cams 1 3 2 6 1 3: infrared 3 and 6
    text = features_from_arrays(**a).describe()
    assert "(3 visible, 3 infrared)" in text
    a["modality"] = np.array([0, 1, 1, 1, 1, 0])
    assert "(2 visible, 4 infrared)" in features_from_arrays(**a).describe()


def test_save_load_round_trip_under_a_unicode_folder(tmp_path):
    a = _arrays()
    paths = ["cam1/0001/\u674e.jpg", "cam3/0001/\u00e9.jpg"] + [f"c/{i}.jpg" for i in range(4)]
    target = tmp_path / "\u7279\u5f81 \u00e9" / "feats.npz"
    save_features(target, **a, paths=paths, dataset="sysu", note="\u00e9")
    f = load_features(target)
    assert f.source == target
    np.testing.assert_array_equal(f.feats, a["feats"])
    assert f.feats.dtype == np.float32
    assert f.paths.tolist() == paths
    assert f.meta["note"] == "\u00e9" and f.meta["dataset"] == "sysu"
    assert [p.name for p in target.parent.iterdir()] == ["feats.npz"]  # no temporary left


# --- fileio ---------------------------------------------------------------------------


def test_a_signal_raised_twice_while_held_is_delivered_once():
    calls = []
    old = signal.signal(signal.SIGUSR1, lambda s, _f: calls.append(s))
    try:
        with F.signals_deferred((signal.SIGUSR1,)):
            signal.raise_signal(signal.SIGUSR1)
            signal.raise_signal(signal.SIGUSR1)
            assert calls == []
        assert calls == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_write_output_to_dev_stderr_reaches_stderr(capfd):
    F.write_output("/dev/stderr", lambda fh: fh.write(b"to-err"))
    out, err = capfd.readouterr()
    assert err == "to-err" and out == ""


def test_a_chain_of_links_to_a_descriptor_is_followed(tmp_path):
    """/dev/fd/N reached through three links is still that descriptor: written after what
    it holds (its offset), not truncated by an open() of the path anew."""
    fd = os.open(tmp_path / "log.txt", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"earlier;")
        (tmp_path / "l1").symlink_to(f"/dev/fd/{fd}")
        (tmp_path / "l2").symlink_to(tmp_path / "l1")
        (tmp_path / "l3").symlink_to(tmp_path / "l2")
        F.write_output(tmp_path / "l3", lambda fh: fh.write(b"then"))
    finally:
        os.close(fd)
    assert (tmp_path / "log.txt").read_bytes() == b"earlier;then"
    assert (tmp_path / "l3").is_symlink()


def test_finite_json_maps_tuples_too():
    assert F.finite_json((1.5, float("nan"), {"x": (float("inf"),)})) == [1.5, None, {"x": [None]}]
    assert json.loads(F.dumps_json({"t": (float("-inf"), 2)})) == {"t": [None, 2]}


def test_umask_with_group_bits_gives_the_files_mode(tmp_path):
    """umask 027 (octal, as /proc shows it): the file is 0640, as open() would make it."""
    old = os.umask(0o027)
    try:
        F.atomic_write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o640


def test_stale_temporaries_are_only_hidden_ones_and_their_sizes_add_up(tmp_path):
    (tmp_path / ".a.npz.x1.tmp").write_bytes(b"1" * 100)
    (tmp_path / ".b.pt.x2.tmp").write_bytes(b"2" * 23)
    (tmp_path / "notes.tmp").write_bytes(b"keep")  # a user's file, not ours
    assert F.remove_stale_temporaries(tmp_path) == 123
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp"]


def test_the_temporary_is_hidden_while_written(tmp_path):
    seen = []
    F.atomic_write(tmp_path / "f.bin", lambda fh: seen.extend(os.listdir(tmp_path)))
    assert len(seen) == 1 and seen[0].startswith(".f.bin.") and seen[0].endswith(".tmp")
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_link_copies_where_hard_links_are_refused(tmp_path, monkeypatch):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")

    def refuse(*_a, **_k):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    F.atomic_link(src, tmp_path / "sub" / "dst.bin")
    assert (tmp_path / "sub" / "dst.bin").read_bytes() == b"abc"
    assert os.stat(src).st_nlink == 1
    assert os.listdir(tmp_path / "sub") == ["dst.bin"]


def test_a_save_interrupted_half_way_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    a = _arrays()
    target = tmp_path / "f.npz"
    save_features(target, **a, dataset="old")
    before = target.read_bytes()

    def cut(fh, **_arrays):
        fh.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", cut)
    b = _arrays()
    b["feats"] = b["feats"] * 2
    with pytest.raises(KeyboardInterrupt):
        save_features(target, **b, dataset="new")
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["f.npz"]
    f = load_features(target)
    assert f.meta["dataset"] == "old"
    np.testing.assert_array_equal(f.feats, a["feats"])


def test_a_plain_numpy_file_without_modality_gets_the_cameras_hint_only_with_cams(tmp_path):
    a = _arrays()
    del a["modality"]
    with pytest.raises(FeatureFileError, match=r"np\.isin\(cams, \[3, 6\]\)"):
        _load(tmp_path, **a)
    del a["cams"]
    with pytest.raises(FeatureFileError, match="no array 'cams', 'modality'") as info:
        _load(tmp_path, **a)
    assert "np.isin" not in str(info.value)


def test_non_contiguous_and_single_row_inputs_round_trip(tmp_path):
    """A strided numpy view, a transposed torch tensor and a Fortran-ordered array saved
    by plain numpy all give back the same values; one image of one feature is a file."""
    import torch

    a = _arrays(d=8)
    view = a["feats"][:, ::2]  # (6, 4), not contiguous
    assert not view.flags.c_contiguous
    save_features(tmp_path / "v.npz", view, a["pids"], a["cams"], a["modality"])
    np.testing.assert_array_equal(load_features(tmp_path / "v.npz").feats, view)
    t = torch.from_numpy(np.ascontiguousarray(view.T)).t()  # (6, 4) view of a (4, 6)
    save_features(tmp_path / "t.npz", t, a["pids"], a["cams"], a["modality"])
    np.testing.assert_array_equal(load_features(tmp_path / "t.npz").feats, view)
    b = dict(a, feats=np.asfortranarray(view.astype(np.float64)))
    f = _load(tmp_path, **b)
    assert f.feats.dtype == np.float64
    np.testing.assert_array_equal(f.feats, view.astype(np.float64))
    one = features_from_arrays(np.array([[0.5]]), [7], [3], [1], paths=["a.jpg"])
    save_features(
        tmp_path / "one.npz", one.feats, one.pids, one.cams, one.modality, paths=["a.jpg"]
    )
    g = load_features(tmp_path / "one.npz")
    assert (len(g), g.dim, g.paths.tolist(), g.pids.tolist()) == (1, 1, ["a.jpg"], [7])


def test_an_empty_paths_list_is_a_length_mismatch_not_a_float_dtype():
    """paths=[] for 3 images: np.asarray([]) is float64, so the error says 'paths' has
    dtype float64 (expected strings) instead of naming the missing paths (0 of 3)."""
    with pytest.raises(FeatureFileError, match="mismatched length"):
        features_from_arrays(np.eye(3, 2), [0, 1, 2], [1, 1, 3], [0, 0, 1], paths=[])


def test_identical_rows_of_zero_width_rows_is_none_not_a_crash():
    """identical_rows promises None for input that other checks refuse; (N, 0) features
    raised numpy's 'zero-size array to reduction' ValueError."""
    assert identical_rows(np.zeros((3, 0), np.float32)) is None


def test_linking_a_file_onto_its_own_other_name_leaves_no_temporary(tmp_path):
    """dst already the same file as src: rename() of one name of a file onto another of
    its names does nothing, so the temporary name must be removed explicitly."""
    src = tmp_path / "last.pt"
    src.write_bytes(b"weights")
    F.atomic_link(src, tmp_path / "best.pt")
    F.atomic_link(src, tmp_path / "best.pt")
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt"]
    assert os.stat(src).st_nlink == 2


def test_finite_json_leaves_arrays_that_are_not_scalars_alone():
    """Only 0-d numpy values are scalars: a one-element array stays an array (it is not
    silently flattened to its element)."""
    one = np.array([1.5])
    assert F.finite_json(one) is one
    assert F.finite_json(np.float32(1.5)) == 1.5
    assert F.finite_json(np.array(float("nan"))) is None


def test_a_255_byte_name_in_new_nested_folders_is_written(tmp_path):
    """The longest legal name (255 bytes: the temporary's name must be cut, not the
    target's) in folders that do not exist yet (made, as open() of a run folder's)."""
    target = tmp_path / "a" / "b" / ("\u00e9" * 100 + "x" * 55)
    assert len(os.fsencode(target.name)) == 255
    F.atomic_write_text(target, "ok")
    assert target.read_text() == "ok"
    assert os.listdir(target.parent) == [target.name]


def test_select_of_an_empty_list_is_no_rows():
    """``select([])``: numpy reads [] as a float array (an IndexError); no rows instead."""
    f = features_from_arrays(**_arrays())
    assert len(f.select([])) == 0 and f.select([]).feats.shape == (0, f.feats.shape[1])
