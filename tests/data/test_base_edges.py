"""Mutation audit MC: the dataset helpers of uvireid.data.base (split and index files, paths,
errors naming the fix) and VIDataset's bookkeeping (hold_out, release, counts,
fingerprint), each against a hand-built expectation."""

from __future__ import annotations

import hashlib
import os

import pytest

from uvireid.data.base import (
    IdList,
    VIDataset,
    as_root,
    every_fifth,
    join_relpath,
    listed_twice,
    listing,
    read_id_file,
    read_index_file,
    require_file,
    require_listed_files,
    require_root,
    summarize,
)
from uvireid.errors import DatasetError
from uvireid.types import INFRARED, VISIBLE, ImageRecord


def _write(path, data: bytes | str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return str(path)


def test_listing_shows_at_most_limit_items_and_counts_the_rest():
    assert listing([1, 2, 3], 3) == "1, 2, 3"
    assert listing([1, 2, 3, 4], 3) == "1, 2, 3 and 1 more"
    assert listing(list(range(9))) == "0, 1, 2, 3, 4 and 4 more"
    assert listing([]) == ""


def test_as_root_expands_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert as_root("~/sysu", "SYSU-MM01") == os.path.join(str(tmp_path), "sysu")


@pytest.mark.parametrize("root", ["", "  "])
def test_as_root_refuses_an_empty_root(root, monkeypatch, tmp_path):
    """An empty root is a mistake (an unset variable in ``data.root=$DATA``), not the
    current folder, which '.' names."""
    with pytest.raises(DatasetError, match=r"SYSU-MM01 root is empty.*'\.' for the current"):
        as_root(root, "SYSU-MM01")
    monkeypatch.chdir(tmp_path)
    assert as_root(".", "SYSU-MM01") == str(tmp_path)


def test_require_root_refuses_a_file(tmp_path):
    f = _write(tmp_path / "a.txt", "x")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        require_root(f, "RegDB", "layout")
    with pytest.raises(DatasetError, match="does not exist"):
        require_root(str(tmp_path / "nowhere"), "RegDB", "layout")
    require_root(str(tmp_path), "RegDB", "layout")


def test_require_file_points_at_the_parent_when_the_root_is_one_level_too_low(tmp_path):
    _write(tmp_path / "exp" / "train_id.txt", "1,2")
    low = tmp_path / "cam1"
    low.mkdir()
    with pytest.raises(DatasetError, match=f"set data.root={tmp_path}$|set data.root={tmp_path} "):
        require_file(str(low), "exp/train_id.txt", "SYSU-MM01", "layout")


def test_require_file_names_each_copy_when_two_sub_folders_hold_it(tmp_path):
    for sub in ("a", "b"):
        _write(tmp_path / sub / "exp" / "train_id.txt", "1")
    with pytest.raises(DatasetError, match="It is in 2 folders next to it"):
        require_file(str(tmp_path), "exp/train_id.txt", "SYSU-MM01", "layout")


def test_require_file_does_not_call_a_dataset_another_copy_of_itself(tmp_path):
    """A SYSU-MM01 root lacking exp/test_id.txt holds SYSU's own index file: the error is
    the plain missing-file one, not "if it is SYSU-MM01, set data.type=sysu"."""
    _write(tmp_path / "exp" / "train_id.txt", "1")
    with pytest.raises(DatasetError) as err:
        require_file(str(tmp_path), "exp/test_id.txt", "SYSU-MM01", "layout")
    assert "data.type" not in str(err.value)
    assert "Copy the split files from the release" in str(err.value)
    with pytest.raises(DatasetError, match="if it is SYSU-MM01, set data.type=sysu"):
        require_file(str(tmp_path), "idx/train_vis.txt", "LLCM", "layout")


def test_read_id_file_drops_the_byte_order_mark_and_duplicates(tmp_path):
    f = _write(tmp_path / "ids.txt", b"\xef\xbb\xbf6,10,6\n17 10")
    assert read_id_file(f) == [6, 10, 17]


def test_read_id_file_refuses_an_empty_file_and_non_ascii_digits(tmp_path):
    with pytest.raises(DatasetError, match="is empty"):
        read_id_file(_write(tmp_path / "empty.txt", " \n,\n"))
    # int() takes full-width digits; the release writes ASCII ones
    assert int("\uff11\uff12") == 12
    with pytest.raises(DatasetError, match="non-integer entries"):
        read_id_file(_write(tmp_path / "wide.txt", "6,\uff11\uff12"))


def test_join_relpath_reads_windows_separators_and_ignores_a_leading_slash():
    root = os.path.abspath("/data/regdb")
    want = os.path.join(root, "Visible", "1", "a.bmp")
    assert join_relpath(root, "Visible\\1\\a.bmp") == want
    assert join_relpath(root, "/Visible/1/a.bmp") == want
    assert join_relpath(root, "./Visible/1/a.bmp") == want


def test_read_index_file_takes_the_last_field_as_label_and_skips_blank_lines(tmp_path):
    root = str(tmp_path)
    f = _write(tmp_path / "idx" / "l.txt", "my dir/a b.bmp 3\n\n   \nVisible/1/c.bmp -1\n")
    assert read_index_file(f, root) == [
        (os.path.join(root, "my dir", "a b.bmp"), 3),
        (os.path.join(root, "Visible", "1", "c.bmp"), -1),
    ]


def test_read_index_file_names_the_bad_line_by_its_number(tmp_path):
    f = _write(tmp_path / "idx" / "l.txt", "a.bmp 1\n\nb.bmp x\n")
    with pytest.raises(DatasetError, match=r"line 3 reads 'b.bmp x'"):
        read_index_file(f, str(tmp_path))


def test_listed_twice_finds_a_path_listed_twice():
    assert listed_twice(["a", "b", "a", "c", "b", "b"]) == ["a", "b"]
    assert listed_twice(["a", "b"]) == []


def test_a_listed_folder_is_not_an_image(tmp_path):
    (tmp_path / "img.bmp").mkdir()
    ok = _write(tmp_path / "ok.bmp", "x")
    with pytest.raises(DatasetError, match=r"1 image\(s\) listed in l.txt do not exist"):
        require_listed_files([ok, str(tmp_path / "img.bmp")], "l.txt")


def _rec(pid, cam, mod, name=None, root="/r"):
    return ImageRecord(os.path.join(root, name or f"{pid}_{cam}_{mod}.jpg"), pid, cam, mod)


def test_summarize_counts_pid_zero_and_sorts_cameras():
    recs = [
        _rec(0, 3, INFRARED),
        _rec(0, 1, VISIBLE),
        _rec(-1, 1, VISIBLE, "u.jpg"),
        _rec(2, 3, VISIBLE),
        _rec(2, 1, INFRARED),
    ]
    got = summarize(recs)
    assert (got["ids"], got["images"]) == (2, 5)
    assert got["visible"] == {"ids": 2, "images": 3}
    assert got["infrared"] == {"ids": 2, "images": 2}
    assert [(c["cam"], c["modality"]) for c in got["cameras"]] == [
        (1, "visible"),
        (1, "infrared"),
        (3, "visible"),
        (3, "infrared"),
    ]
    assert got["cameras"][0] == {"cam": 1, "modality": "visible", "ids": 1, "images": 2}


def test_every_fifth_takes_the_fifth_the_tenth_and_so_on():
    ids = [12, 3, 5, 1, 7, 9, 2, 11, 4, 10, 6, 8, 3]
    naive = [i for n, i in enumerate(sorted(set(ids)), start=1) if n % 5 == 0]
    assert every_fifth(ids) == naive == [5, 10]
    assert every_fifth(range(4)) == []


class _Toy(VIDataset):
    name = "toy"
    title = "Toy"

    def __init__(self, root, train, test, declared=None):
        super().__init__(root)
        self.train, self.test = list(train), list(test)
        self.declared_ids = declared or {}


def test_hold_out_uses_the_declared_training_ids_and_release_undoes_it(tmp_path):
    root = str(tmp_path)
    train = [_rec(p, 1, m, root=root) for p in (1, 2, 3) for m in (VISIBLE, INFRARED)]
    test = [_rec(9, 1, VISIBLE, root=root)]
    declared = {
        "train": IdList((1, 2, 3, 4), "train.txt"),
        "test": IdList((9,), "test.txt"),
    }
    ds = _Toy(root, train, test, declared)
    ds.hold_out([2], "val.txt", "train.txt less val")
    assert {r.pid for r in ds.train} == {1, 3} and {r.pid for r in ds.test} == {2}
    # id 4 is declared but has no image: it stays declared (and is reported missing)
    assert ds.declared_ids["train"].ids == (1, 3, 4)
    assert ds.missing_ids() == {"train": [4]}
    meta = ds.meta()
    assert meta["validation"] is True and meta["validation_ids"] == "val.txt"
    rel = ds.release()
    assert rel.validation is False and rel.test == test and rel.train == train
    assert "validation" not in rel.meta() and "validation" not in rel.fingerprint()
    assert ds.validation  # the validation split itself is unchanged


def test_missing_ids_looks_in_the_split_the_ids_are_declared_for(tmp_path):
    root = str(tmp_path)
    ds = _Toy(
        root,
        [_rec(1, 1, VISIBLE, root=root), _rec(5, 1, VISIBLE, root=root)],
        [_rec(2, 1, VISIBLE, root=root)],
        {"train": IdList((1, 2), "a"), "test": IdList((2, 5), "b")},
    )
    assert ds.missing_ids() == {"train": [2], "test": [5]}


def test_fingerprint_hashes_the_sorted_split_and_relative_path_lines(tmp_path):
    root = str(tmp_path)
    a, b, c = (_rec(1, 1, VISIBLE, n, root=root) for n in ("b/x.jpg", "a/y.jpg", "c/z.jpg"))
    ds = _Toy(root, [a, b], [c])
    lines = ["test\tc/z.jpg", "train\ta/y.jpg", "train\tb/x.jpg"]
    want = hashlib.sha1("\n".join(lines).encode()).hexdigest()
    fp = ds.fingerprint()
    assert fp["sha1"] == want and fp["train_images"] == 2 and fp["test_ids"] == 1
    assert _Toy(root, [b, a], [c]).fingerprint()["sha1"] == want  # order-free
    assert _Toy(root, [a], [b, c]).fingerprint()["sha1"] != want  # the split counts
    elsewhere = _Toy(
        "/mnt/copy",
        [_rec(1, 1, VISIBLE, n, "/mnt/copy") for n in ("b/x.jpg", "a/y.jpg")],
        [_rec(1, 1, VISIBLE, "c/z.jpg", "/mnt/copy")],
    )
    assert elsewhere.fingerprint()["sha1"] == want  # the mount point does not count


def test_fingerprint_of_a_file_name_that_is_not_utf8(tmp_path):
    root = str(tmp_path)
    name = os.fsdecode(b"\xc4\xe3.jpg")  # GBK bytes: a lone surrogate in the str
    ds = _Toy(root, [_rec(1, 1, VISIBLE, name, root=root)], [])
    want = hashlib.sha1(b"train\t\xc4\xe3.jpg").hexdigest()
    assert ds.fingerprint()["sha1"] == want


def test_check_args_refuses_a_validation_that_is_not_a_boolean(tmp_path):
    with pytest.raises(DatasetError, match="validation must be true or false, got 'yes'"):
        _Toy.check_args(str(tmp_path), validation="yes")
    _Toy.check_args(str(tmp_path), validation=True)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_as_root_keeps_a_symbolic_link_as_given(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    os.symlink(real, link)
    got = as_root(str(link), "Toy")
    assert got == os.path.abspath(str(link))
    assert got != os.path.realpath(str(link))


def test_check_args_refuses_an_empty_root_as_the_constructor_does():
    with pytest.raises(DatasetError, match="root is empty"):
        _Toy.check_args("")
    with pytest.raises(DatasetError, match="root is empty"):
        _Toy.check_args("   ")


def test_check_args_refuses_an_integer_validation(tmp_path):
    # 1 and 0 are ints, not the booleans data.validation takes
    for value in (1, 0):
        with pytest.raises(DatasetError, match="validation must be true or false"):
            _Toy.check_args(str(tmp_path), validation=value)


def test_an_index_line_with_a_label_only_is_refused(tmp_path):
    f = _write(tmp_path / "idx" / "list.txt", "Visible/1/a.bmp 0\n7\n")
    with pytest.raises(DatasetError, match="line 2 reads '7'"):
        read_index_file(f, str(tmp_path))


def test_listed_twice_is_sorted():
    paths = ["/d/z.jpg", "/d/a.jpg", "/d/z.jpg", "/d/m.jpg", "/d/a.jpg", "/d/m.jpg"]
    assert listed_twice(paths) == ["/d/a.jpg", "/d/m.jpg", "/d/z.jpg"]


def test_require_file_names_the_sub_folders_in_sorted_order(tmp_path):
    rel = "exp/train_id.txt"
    for sub in ("zeta", "alpha", "mid"):
        _write(tmp_path / "root" / sub / rel, "1")
    with pytest.raises(DatasetError) as err:
        require_file(str(tmp_path / "root"), rel, "SYSU-MM01", "layout")
    names = [os.path.join(str(tmp_path / "root"), s) for s in ("alpha", "mid", "zeta")]
    assert f"It is in 3 folders next to it ({', '.join(names)})" in str(err.value)


def test_meta_counts_images_per_modality_not_ids(tmp_path):
    root = str(tmp_path)
    train = [_rec(p, 1, VISIBLE, f"v{p}_{i}.jpg", root) for p in (1, 2) for i in range(3)]
    train += [_rec(1, 3, INFRARED, f"i{i}.jpg", root) for i in range(4)]
    test = [_rec(9, 2, VISIBLE, "t.jpg", root), _rec(-1, 6, INFRARED, "u.jpg", root)]
    meta = _Toy(root, train, test).meta()
    # naive counts
    assert meta["train_visible"] == sum(r.modality == VISIBLE for r in train) == 6
    assert meta["train_infrared"] == sum(r.modality == INFRARED for r in train) == 4
    assert meta["train_ids"] == 2 and meta["train_images"] == 10
    assert (meta["test_ids"], meta["test_images"], meta["test_infrared"]) == (1, 2, 1)
    assert meta["split"] is None and "validation" not in meta


def test_fingerprint_of_a_fixed_split_records_no_split_number(tmp_path):
    root = str(tmp_path)
    ds = _Toy(root, [_rec(1, 1, VISIBLE, "a.jpg", root)], [_rec(2, 1, VISIBLE, "b.jpg", root)])
    fp = ds.fingerprint()
    assert fp["split"] is None and fp["dataset"] == "toy"
    want = hashlib.sha1(b"test\tb.jpg\ntrain\ta.jpg").hexdigest()
    assert fp["sha1"] == want


def test_a_validation_split_says_so_in_its_fingerprint_and_hashes_its_own_arrangement(tmp_path):
    root = str(tmp_path)
    train = [_rec(p, 1, VISIBLE, f"{p}.jpg", root) for p in (1, 2, 3)]
    ds = _Toy(root, train, [_rec(9, 1, VISIBLE, "9.jpg", root)])
    ds.hold_out([2], "val.txt", "train less val")
    fp = ds.fingerprint()
    assert fp["validation"] is True
    lines = sorted(["train\t1.jpg", "train\t3.jpg", "test\t2.jpg"])
    assert fp["sha1"] == hashlib.sha1("\n".join(lines).encode()).hexdigest()
    assert (fp["train_ids"], fp["test_ids"]) == (2, 1)
    assert ds.declared_ids["test"].source == "val.txt (validation)"


def test_hold_out_without_declared_ids_declares_the_records_ids(tmp_path):
    root = str(tmp_path)
    train = [
        _rec(p, c, m, f"{p}{c}{m}.jpg", root)
        for p in (3, 1, 5, 7)
        for c, m in ((1, VISIBLE), (3, INFRARED))
    ]
    ds = _Toy(root, train, [])
    ds.hold_out({5, 8}, "every fifth", "rest")
    assert ds.declared_ids["train"] == IdList((1, 3, 7), "rest")
    assert ds.declared_ids["test"].ids == (5, 8)
    assert ds.missing_ids() == {"test": [8]}
    assert [r.pid for r in ds.test] == [5, 5]
    assert summarize(ds.test)["cameras"] == [
        {"cam": 1, "modality": "visible", "ids": 1, "images": 1},
        {"cam": 3, "modality": "infrared", "ids": 1, "images": 1},
    ]


def test_meta_names_the_validation_ids_only_when_their_source_is_known(tmp_path):
    root = str(tmp_path)
    ds = _Toy(root, [_rec(1, 1, VISIBLE, "a.jpg", root)], [])
    ds.validation = True  # a subclass that marks itself without hold_out's source
    meta = ds.meta()
    assert meta["validation"] is True and "validation_ids" not in meta
