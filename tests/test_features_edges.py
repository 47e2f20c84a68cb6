"""The features file format's edges (mutation audit ME): corrupted and foreign archive
members, unreadable files, byte paths, in-memory meta, dtypes and round trips."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
from feature_fixtures import small_arrays

from uvireid.errors import FeatureFileError
from uvireid.features import (
    features_from_arrays,
    identical_rows,
    load_features,
    save_features,
)


def arrays(n: int = 6, d: int = 4):
    return small_arrays(n, d, seed=1)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_integer_features_are_read_as_float32_with_their_values(tmp_path):
    """Features' docstring: integer features are read as float32 (quantised exports)."""
    a = arrays()
    ints = np.arange(24, dtype=np.int16).reshape(6, 4) - 12
    np.savez(tmp_path / "f.npz", **{**a, "feats": ints})
    f = load_features(tmp_path / "f.npz")
    assert f.feats.dtype == np.float32
    assert f.feats.tolist() == [[float(v) for v in row] for row in ints.tolist()]


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int16])
def test_labels_of_any_integer_dtype_are_read_as_int64(tmp_path, dtype):
    """Features' docstring: pids, cams, modality are (N,) int64."""
    a = arrays()
    np.savez(
        tmp_path / "f.npz",
        feats=a["feats"],
        pids=a["pids"].astype(dtype),
        cams=a["cams"].astype(dtype),
        modality=a["modality"].astype(dtype),
    )
    f = load_features(tmp_path / "f.npz")
    for name in ("pids", "cams", "modality"):
        got = getattr(f, name)
        assert got.dtype == np.int64, name
        assert got.tolist() == [int(v) for v in a[name]]


def test_meta_that_is_a_json_list_or_number_is_refused_as_not_an_object(tmp_path):
    for bad, kind in ((json.dumps(3), "int"), (json.dumps("sysu"), "str")):
        np.savez(tmp_path / "f.npz", **arrays(), meta=np.array(bad))
        with pytest.raises(FeatureFileError, match=rf"'meta' is a JSON {kind}; expected a JSON"):
            load_features(tmp_path / "f.npz")


def test_meta_in_a_one_element_array_is_read(tmp_path):
    """decode_meta's docstring: a 0-d or 1-element str array holding JSON."""
    meta = {"dataset": "sysu", "split": "test", "n": 3}
    np.savez(tmp_path / "f.npz", **arrays(), meta=np.array([json.dumps(meta)]))
    assert load_features(tmp_path / "f.npz").meta == meta


def test_a_truncated_archive_is_a_feature_file_error(tmp_path):
    """A copy cut short (its zip directory lost): named, with the fix."""
    good = save_features(tmp_path / "g.npz", **arrays(), dataset="sysu")
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        (tmp_path / "t.npz").write_bytes(data[:cut])
        with pytest.raises(FeatureFileError, match=r"t\.npz is not a readable \.npz archive"):
            load_features(tmp_path / "t.npz")


def test_utf8_bytes_paths_round_trip_as_text(tmp_path):
    """_path_text: bytes paths are decoded, not stored as "b'...'"."""
    names = ["cam1/0001/0001.jpg", "cam3/0001/\u00e9t\u00e9.jpg", "x", "y", "z", "w"]
    f = load_features(
        save_features(tmp_path / "f.npz", **arrays(), paths=[n.encode() for n in names])
    )
    assert f.paths.tolist() == names


def test_unicode_paths_meta_and_dtypes_round_trip_exactly(tmp_path):
    names = ["\u6570\u636e/0001.jpg", "caf\u00e9/2.png", "a b/3.jpg", "\U0001f600.jpg", "5", "6"]
    meta = {"dataset": "sysu", "note": "\u00e9\u6570", "nested": {"a": [1, 2.5, None]}}
    a = arrays()
    for dt in (np.float32, np.float64):
        out = save_features(
            tmp_path / "f.npz", **{**a, "feats": a["feats"].astype(dt)}, paths=names, **meta
        )
        f = load_features(out)
        assert f.feats.dtype == dt and np.array_equal(f.feats, a["feats"].astype(dt))
        assert f.paths.tolist() == names
        assert {k: v for k, v in f.meta.items() if k != "produced_by"} == meta


def test_select_keeps_the_paths_of_the_rows_selected():
    a = arrays()
    f = features_from_arrays(**a, paths=list("abcdef"))
    sub = f.select(np.array([4, 1]))
    assert sub.paths.tolist() == ["e", "b"] and sub.pids.tolist() == [a["pids"][4], a["pids"][1]]
    sub = f.select(a["modality"] == 1)
    assert sub.paths.tolist() == ["b", "d", "f"]


def test_in_memory_features_keep_their_meta():
    f = features_from_arrays(**arrays(), dataset="regdb", train_split=3)
    assert f.meta == {"dataset": "regdb", "train_split": 3}


def test_identical_rows_needs_two_rows():
    """Docstring: None for fewer than two rows (one row is not a collapse)."""
    assert identical_rows(np.ones((1, 5))) is None
    assert identical_rows(np.ones((2, 5))) == (0.0, 1.0)


def test_a_corrupted_member_is_a_feature_file_error(tmp_path):
    """One flipped bit in the features (a bad copy): zipfile's CRC check fires while the
    array is read, outside the guarded np.load, and a raw zipfile.BadZipFile came out."""
    good = save_features(
        tmp_path / "g.npz", np.ones((4, 3), np.float32), [0, 1, 2, 3], [1, 1, 3, 3], [0, 0, 1, 1]
    )
    raw = bytearray(good.read_bytes())
    head = raw.find(b"\x93NUMPY", raw.find(b"feats.npy"))
    data = head + 10 + int.from_bytes(raw[head + 8 : head + 10], "little")
    raw[data + 3] ^= 0x01  # a bit of feats[0, 0]
    (tmp_path / "c.npz").write_bytes(bytes(raw))
    with pytest.raises(FeatureFileError, match=r"c\.npz"):
        load_features(tmp_path / "c.npz")


def test_a_compressed_archive_with_a_corrupted_member_is_a_feature_file_error(tmp_path):
    """The same for numpy.savez_compressed files (another codebase's export)."""
    np.savez_compressed(tmp_path / "z.npz", **arrays())
    raw = bytearray((tmp_path / "z.npz").read_bytes())
    at = raw.find(b"feats.npy") + 60
    raw[at] ^= 0xFF
    raw[at + 1] ^= 0xFF
    (tmp_path / "c.npz").write_bytes(bytes(raw))
    with pytest.raises(FeatureFileError, match=r"c\.npz"):
        load_features(tmp_path / "c.npz")


def test_a_member_that_is_not_an_npy_array_is_a_feature_file_error(tmp_path):
    """A zip whose feats.npy is text (a CSV renamed, np.savetxt into the archive): numpy
    hands back the raw bytes, and _validated failed with AttributeError ('bytes' object
    has no attribute 'ndim')."""
    a = arrays()
    with zipfile.ZipFile(tmp_path / "f.npz", "w") as z:
        z.writestr("feats.npy", "\n".join(",".join(map(str, r)) for r in a["feats"].tolist()))
        for name in ("pids", "cams", "modality"):
            z.writestr(f"{name}.npy", _npy(a[name]))
    with pytest.raises(FeatureFileError, match=r"feats"):
        load_features(tmp_path / "f.npz")


@pytest.mark.skipif(os.name != "posix", reason="POSIX byte paths")
def test_non_utf8_byte_paths_are_kept_apart_and_round_trip(tmp_path):
    """Two image names in Latin-1 (legal POSIX paths) were both decoded with
    errors='replace' to 'a\\ufffd.jpg' and refused as 'a path given twice'; os.PathLike
    paths to the same files are stored losslessly (os.fsdecode), so bytes should be too."""
    raw = [b"a\xe9.jpg", b"a\xe8.jpg", b"c", b"d", b"e", b"f"]
    out = save_features(tmp_path / "f.npz", **arrays(), paths=raw)
    got = load_features(out).paths.tolist()
    assert [os.fsencode(p) for p in got] == raw


def test_in_memory_meta_is_checked_as_a_saved_files(tmp_path):
    """features_from_arrays' docstring: checked as save_features checks a file (the same
    errors); save_features refuses a NaN or a non-JSON value in the meta, in memory they
    were accepted."""
    with pytest.raises(FeatureFileError, match="NaN and inf are not JSON"):
        save_features(tmp_path / "f.npz", **arrays(), best=float("nan"))
    with pytest.raises(FeatureFileError, match="not JSON-serialisable"):
        features_from_arrays(**arrays(), best=float("nan"))


def test_an_unreadable_file_is_a_feature_file_error(tmp_path, monkeypatch):
    """load_features' docstring: 'FeatureFileError: the file is missing or unreadable'.
    A file without read permission (another user's run folder) gave a raw
    PermissionError from the magic-number probe (shown with a patched open, as the test
    may run as root, who reads every file)."""
    import errno

    import uvireid.features as features_module

    out = save_features(tmp_path / "f.npz", **arrays())

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(out))

    monkeypatch.setattr(features_module, "open", denied, raising=False)
    monkeypatch.setattr(np, "load", denied)
    with pytest.raises(FeatureFileError, match=r"f\.npz"):
        load_features(out)


@pytest.mark.parametrize("code", [-1, 2])
def test_a_modality_code_outside_0_1_is_refused_whatever_its_sign(tmp_path, code):
    """Module docstring: modality codes other than 0/1 are an error (-1, 'unknown' in
    some codebases, is no modality of uvireid's)."""
    a = arrays()
    a["modality"][2] = code
    np.savez(tmp_path / "f.npz", **a)
    with pytest.raises(FeatureFileError, match=rf"'modality' has values \[{code}\]"):
        load_features(tmp_path / "f.npz")


@pytest.mark.parametrize(
    "labels",
    [np.array([1, 2, 2**64 - 1, 3, 4, 5], np.uint64), np.array([1.0, 2, 1e20, 2e20, 4, 5])],
)
def test_labels_beyond_int64_are_refused_not_wrapped_or_merged(tmp_path, labels):
    """uint64 2**64-1 became -1 (the 'unknown' id) and every float >= 2**63 became -2**63
    (two identities merged into one): both are refused, and the fix's numbering works."""
    a = arrays()
    a["pids"] = labels
    np.savez(tmp_path / "f.npz", **a)
    with pytest.raises(FeatureFileError, match=r"'pids' holds values beyond the 64-bit"):
        load_features(tmp_path / "f.npz")
    a["pids"] = np.unique(labels, return_inverse=True)[1]  # the message's fix
    np.savez(tmp_path / "g.npz", **a)
    assert len(np.unique(load_features(tmp_path / "g.npz").pids)) == len(np.unique(labels))


def test_long_double_features_object_int_labels_and_a_linked_target(tmp_path):
    """float128 features are read as float64 (torch has no long double); labels given as
    an object array of ints (a pandas nullable column) are numbers, not 'text'; saving to
    a link into a shared folder replaces the file it points at and keeps the link."""
    a = arrays()
    got = features_from_arrays(
        a["feats"].astype(np.longdouble), a["pids"].astype(object), a["cams"], a["modality"]
    )
    assert got.feats.dtype == np.float64 and np.array_equal(got.feats, a["feats"])
    assert got.pids.dtype == np.int64 and got.pids.tolist() == a["pids"].tolist()
    shared = tmp_path / "shared"
    shared.mkdir()
    (tmp_path / "link.npz").symlink_to(shared / "f.npz")
    save_features(tmp_path / "link.npz", **a)
    assert (tmp_path / "link.npz").is_symlink()
    assert np.array_equal(load_features(shared / "f.npz").feats, a["feats"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_is_named_as_one_not_as_missing(tmp_path):
    os.mkfifo(tmp_path / "p")
    with pytest.raises(FeatureFileError, match="is not a regular file .a pipe"):
        load_features(tmp_path / "p")
