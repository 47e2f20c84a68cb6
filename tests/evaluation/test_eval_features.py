"""Features files: round trip, atomic write, and every bad file named at the boundary."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from feature_fixtures import small_arrays

from uvireid.errors import FeatureFileError
from uvireid.features import Features, load_features, save_features


def arrays(n: int = 6, d: int = 4):
    return small_arrays(n, d)


def test_round_trip_with_torch_tensors_paths_and_meta(tmp_path):
    a = arrays()
    out = save_features(
        tmp_path / "f.npz",
        torch.from_numpy(a["feats"]),
        torch.from_numpy(a["pids"]),
        a["cams"].tolist(),
        torch.from_numpy(a["modality"]),
        paths=[f"cam1/0001/{i:04d}.jpg" for i in range(6)],
        dataset="sysu",
        split="test",
        feature_head="global",
    )
    f = load_features(out)
    assert isinstance(f, Features) and f.source == out and len(f) == 6 and f.dim == 4
    np.testing.assert_array_equal(f.feats, a["feats"])
    assert f.feats.dtype == np.float32 and f.pids.dtype == np.int64
    np.testing.assert_array_equal(f.pids, a["pids"])
    np.testing.assert_array_equal(f.cams, a["cams"])
    np.testing.assert_array_equal(f.modality, a["modality"])
    assert f.paths.tolist()[2] == "cam1/0001/0002.jpg"
    assert f.meta["dataset"] == "sysu" and f.meta["feature_head"] == "global"
    assert f.meta["produced_by"].startswith("uvireid ")
    assert [p.name for p in tmp_path.iterdir()] == ["f.npz"]  # no temporary file left


def test_plain_numpy_savez_files_are_accepted(tmp_path):
    np.savez(tmp_path / "other.npz", **arrays())  # exported by another codebase, no meta
    f = load_features(tmp_path / "other.npz")
    assert f.meta == {} and f.paths is None


def test_select_and_modality_helpers(tmp_path):
    a = arrays()
    f = load_features(save_features(tmp_path / "f.npz", **a, paths=list("abcdef")))
    ir = f.of_modality(1)
    assert ir.paths.tolist() == ["b", "d", "f"] and set(ir.modality.tolist()) == {1}
    sub = f.select(np.array([4, 0]))
    assert sub.pids.tolist() == [a["pids"][4], a["pids"][0]] and sub.meta == f.meta
    bank = f.to_bank()
    assert bank.paths == list("abcdef") and len(bank) == 6
    assert "6 images x 4-d (3 visible, 3 infrared)" in f.describe()


def test_missing_file(tmp_path):
    with pytest.raises(FeatureFileError, match=r"nope\.npz does not exist.*check the path"):
        load_features(tmp_path / "nope.npz")


def test_not_an_npz(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_text("hello")
    # a text file is not taken for a pickle (numpy's message would advise allow_pickle)
    with pytest.raises(FeatureFileError, match=r"bad\.npz is not an \.npz archive") as exc:
        load_features(p)
    assert "b'hello'" in str(exc.value) and "pickle" not in str(exc.value)
    p.write_bytes(b"PK\x03\x04 broken zip")  # a zip's start, then garbage
    with pytest.raises(FeatureFileError, match=r"bad\.npz is not a readable \.npz"):
        load_features(p)


def test_float16_features_are_read_as_float32(tmp_path):
    """float16 files (mixed-precision extraction) are evaluated in float32: numpy's
    float16 product would overflow past |f|^2 = 65504 and is ~100x slower."""
    a = arrays()
    a["feats"] = (a["feats"] * 300).astype(np.float16)
    np.savez(tmp_path / "h.npz", **a)
    f = load_features(tmp_path / "h.npz")
    assert f.feats.dtype == np.float32
    np.testing.assert_array_equal(f.feats, a["feats"].astype(np.float32))  # exact
    big = f.feats @ f.feats.T
    assert np.isfinite(big).all() and (np.abs(big) > 65504).any()  # float16 would overflow


def test_features_with_no_columns_are_refused(tmp_path):
    a = arrays()
    a["feats"] = np.zeros((6, 0), dtype=np.float32)
    np.savez(tmp_path / "z.npz", **a)
    with pytest.raises(FeatureFileError, match=r"6 rows of 0 features .*d >= 1"):
        load_features(tmp_path / "z.npz")


def test_bytes_paths_are_decoded(tmp_path):
    """Paths as bytes (h5py, or encoded names in numpy.savez) are stored and read as the
    text they hold, not as their repr ``"b'...'"``."""
    a = arrays()
    names = [f"cam{c}/0001/{i:04d}.jpg" for i, c in enumerate(a["cams"])]
    np.savez(tmp_path / "s.npz", paths=np.array([n.encode() for n in names]), **a)
    assert load_features(tmp_path / "s.npz").paths.tolist() == names
    save_features(tmp_path / "t.npz", *a.values(), paths=[n.encode() for n in names])
    assert load_features(tmp_path / "t.npz").paths.tolist() == names


@pytest.mark.parametrize("name", ["feats", "pids", "cams", "modality"])
def test_missing_array_is_named_with_the_expected_list(tmp_path, name):
    a = arrays()
    del a[name]
    np.savez(tmp_path / "f.npz", **a)
    with pytest.raises(
        FeatureFileError,
        match=rf"f\.npz has no array '{name}'; expected arrays feats, pids, cams, modality",
    ):
        load_features(tmp_path / "f.npz")


def test_a_missing_modality_is_given_by_the_sysu_cameras(tmp_path):
    """Another codebase's SYSU-MM01 test loop has pids and cams but no modality: the error
    gives the line that derives it, and that line agrees with the SYSU loader's own rule."""
    from uvireid.data.sysu import modality_of_camera

    a = arrays()
    a["cams"] = np.arange(len(a["pids"])) % 6 + 1
    del a["modality"]
    np.savez(tmp_path / "f.npz", **a)
    hint = "modality = np.isin(cams, [3, 6]).astype(int)"
    with pytest.raises(FeatureFileError, match=re.escape(hint)):
        load_features(tmp_path / "f.npz")
    modality = np.isin(a["cams"], [3, 6]).astype(int)  # the hint's line
    assert modality.tolist() == [modality_of_camera(int(c)) for c in a["cams"]]
    np.savez(tmp_path / "g.npz", modality=modality, **a)
    assert load_features(tmp_path / "g.npz").modality.tolist() == modality.tolist()


def test_mismatched_lengths_say_which(tmp_path):
    a = arrays()
    a["cams"] = a["cams"][:5]
    np.savez(tmp_path / "f.npz", **a)
    with pytest.raises(FeatureFileError, match=r"mismatched length.*cams has 5.*cams must have"):
        load_features(tmp_path / "f.npz")
    a = arrays()
    np.savez(tmp_path / "g.npz", **a, paths=np.array(["x"] * 4))
    with pytest.raises(FeatureFileError, match=r"g\.npz: arrays of mismatched length.*paths has 4"):
        load_features(tmp_path / "g.npz")


def test_non_finite_features(tmp_path):
    a = arrays()
    a["feats"][3, 1] = np.nan
    a["feats"][5, 0] = np.inf
    np.savez(tmp_path / "f.npz", **a)
    with pytest.raises(FeatureFileError, match=r"non-finite values .* 2 row\(s\).*rows \[3, 5\]"):
        load_features(tmp_path / "f.npz")


def test_modality_outside_0_1(tmp_path):
    a = arrays()
    a["modality"][0] = 2
    np.savez(tmp_path / "f.npz", **a)
    with pytest.raises(FeatureFileError, match=r"'modality' has values \[2\]; expected 0"):
        load_features(tmp_path / "f.npz")


@pytest.mark.parametrize(
    "shape, said",
    [
        ((6,), r"'feats' is 1-D, shape \(6,\): one value per image\? Expected the \(N, d\)"),
        ((6, 2, 2), r"'feats' has shape .*expected a 2-D \(N, d\).*reshape"),
    ],
)
def test_features_must_be_2d(tmp_path, shape, said):
    a = arrays()
    a["feats"] = np.zeros(shape, dtype=np.float32)
    np.savez(tmp_path / "f.npz", **a)
    with pytest.raises(FeatureFileError, match=said):
        load_features(tmp_path / "f.npz")


def test_transposed_features_are_named_as_such(tmp_path):
    a = arrays()
    n = len(a["pids"])
    a["feats"] = np.ones((3, n), dtype=np.float32)  # d = 3 rows of N columns
    np.savez(tmp_path / "f.npz", **a)
    with pytest.raises(FeatureFileError, match=r"transposed\? \(save feats\.T\)"):
        load_features(tmp_path / "f.npz")


def test_suggestions_ignore_letter_case():
    from uvireid._suggest import did_you_mean, ordered_by_closeness
    from uvireid.evaluation.protocols import PROTOCOLS

    assert did_you_mean("SYSU-ALL", PROTOCOLS) == "; did you mean 'sysu-all'?"
    assert ordered_by_closeness("SYSU-ALL", PROTOCOLS)[0] == "sysu-all"
    assert did_you_mean("CMFP", ["cmfp", "cmrr"]) == "; did you mean 'cmfp'?"


def test_non_integer_labels(tmp_path):
    a = arrays()
    a["pids"] = a["pids"] + 0.5
    np.savez(tmp_path / "f.npz", **a)
    with pytest.raises(FeatureFileError, match=r"'pids' has dtype float64 with non-integer"):
        load_features(tmp_path / "f.npz")
    # text labels get a fix that works for any text (astype would fail on 'p07')
    a = arrays()
    a["pids"] = np.array([f"p{p:02d}" for p in a["pids"]])
    np.savez(tmp_path / "t.npz", **a)
    with pytest.raises(FeatureFileError, match=r"'pids' holds text .*'p00'.*return_inverse"):
        load_features(tmp_path / "t.npz")
    a = arrays()
    a["cams"] = np.array([f"cam{c}" for c in a["cams"]])
    np.savez(tmp_path / "c.npz", **a)
    with pytest.raises(FeatureFileError, match=r"'cams' holds text .*'cam3' -> 3"):
        load_features(tmp_path / "c.npz")


def test_meta_that_is_not_json(tmp_path):
    np.savez(tmp_path / "f.npz", **arrays(), meta=np.array("{not json"))
    with pytest.raises(FeatureFileError, match=r"'meta' is not a JSON string"):
        load_features(tmp_path / "f.npz")
    np.savez(tmp_path / "g.npz", **arrays(), meta=np.array(json.dumps([1, 2])))
    with pytest.raises(FeatureFileError, match=r"'meta' is a JSON list; expected a JSON object"):
        load_features(tmp_path / "g.npz")


def test_object_arrays_are_refused_without_pickle(tmp_path):
    a = arrays()
    a["paths"] = np.array([object()] * 6, dtype=object)
    np.savez(tmp_path / "f.npz", **a)
    with pytest.raises(FeatureFileError, match=r"array 'paths' cannot be read without pickle"):
        load_features(tmp_path / "f.npz")


def test_save_refuses_bad_arrays_and_writes_nothing(tmp_path):
    a = arrays()
    a["modality"] = a["modality"] + 1
    with pytest.raises(FeatureFileError, match=r"refusing to write it.*'modality' has values"):
        save_features(tmp_path / "f.npz", **a)
    with pytest.raises(FeatureFileError, match=r"meta is not JSON-serialisable"):
        save_features(tmp_path / "f.npz", **arrays(), dataset=object())
    assert list(tmp_path.iterdir()) == []


def test_the_collapse_check_equals_its_definition_in_bounded_memory():
    """Audit Z2 (session 17): the check on every eval held the features in float64 with
    two temporaries (6x the file: +0.5 GB at SYSU-MM01's test size); now in row blocks,
    with the same answers as the whole-matrix definition."""
    import tracemalloc

    from uvireid.features import identical_rows

    def naive(f, rel=1e-5):
        f = np.asarray(f, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 2 or not np.isfinite(f).all():
            return None
        spread, scale = float(np.abs(f - f[0]).max()), float(np.abs(f).max())
        return (spread, scale) if spread <= rel * scale or scale == 0.0 else None

    rng = np.random.default_rng(0)
    wide = rng.normal(size=(1, 40_000)).repeat(9, 0)  # 8 rows per block: several blocks
    cases = [
        rng.normal(size=(50, 8)),
        wide,
        wide + 1e-9 * rng.normal(size=wide.shape),  # within rel: collapsed
        np.concatenate([wide, wide[:1] + 1.0]),  # the last block differs
        np.zeros((5, 3)),
        np.array([[1.0, np.nan], [1.0, np.nan]]),
        rng.normal(size=(1, 4)),
        np.ones((4, 3), dtype=np.float32),
    ]
    for f in cases:
        assert identical_rows(f) == naive(f)
    feats = rng.normal(size=(4096, 1024)).astype(np.float32)  # 16 MiB
    tracemalloc.start()
    assert identical_rows(feats) is None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB for a 16 MiB matrix"


def test_an_image_given_twice_is_refused(tmp_path):
    """Audit AR: a file holding some images twice (a concatenation bug) was evaluated: a
    multi-shot gallery held every image twice and the mean counted repeated queries."""
    feats = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    paths = ["cam1/0001/0001.jpg", "cam3/0001/0001.jpg"]
    with pytest.raises(
        FeatureFileError, match=r"2 row\(s\) repeat a path.*save each image.s full path"
    ):
        save_features(
            tmp_path / "d.npz", feats, [1] * 4, [1, 3, 1, 3], [0, 1, 0, 1], paths=paths * 2
        )
    # distinct paths, or no paths at all (other codebases' files): accepted
    save_features(
        tmp_path / "ok.npz", feats, [1] * 4, [1, 3, 1, 3], [0, 1, 0, 1], paths=[*paths, "a", "b"]
    )
    save_features(tmp_path / "np.npz", feats, [1] * 4, [1, 3, 1, 3], [0, 1, 0, 1])


def test_non_finite_meta_is_refused(tmp_path):
    """Audit AY: a NaN in the meta reached the .npz and every --json output as NaN."""
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(FeatureFileError, match="NaN and inf are not JSON"):
        save_features(
            tmp_path / "f.npz", x, [0, 0, 1, 1], [1, 3, 1, 3], [0, 1, 0, 1], best=float("nan")
        )
    assert not (tmp_path / "f.npz").exists()


def test_missing_paths_are_not_repeats(tmp_path):
    """Audit BD: a foreign file's absent paths (None, NaN) were refused as repeated images."""
    feats = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    for missing in ("None", "nan", ""):
        save_features(
            tmp_path / "m.npz", feats, [1] * 4, [1, 3, 1, 3], [0, 1, 0, 1], paths=[missing] * 4
        )


def test_the_collapse_check_is_relative_to_the_feature_scale():
    from uvireid.features import identical_rows

    rng = np.random.default_rng(0)
    tiny = 1e-7 * rng.normal(size=(50, 8))  # rows differ by their whole size: not collapsed
    assert identical_rows(tiny) is None
    big = 1e3 * rng.normal(size=(1, 8)).repeat(5, 0) + 1e-4 * rng.normal(size=(5, 8))
    spread = float(np.abs(big - big[0]).max())  # about 3e-4, i.e. 1e-7 of the scale
    scale = float(np.abs(big).max())
    assert spread <= 1e-5 * scale and spread > 1e-5
    assert identical_rows(big) == (spread, scale)
