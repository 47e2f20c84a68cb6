"""Mutation audit OG: the folder dataset's layout rules, the dataset fingerprint and
``uvireid data check`` (uvireid/data/{folder,base,check,fixtures}.py), each against a
hand-built expectation."""

from __future__ import annotations

import hashlib
import logging
import os
import random

import pytest

from uvireid.data import FolderDataset
from uvireid.data.base import VIDataset, listing, summarize
from uvireid.data.check import Row, check_dataset, format_report, table_lines
from uvireid.data.fixtures import make_folder_tree, make_llcm_tree, make_regdb_tree, write_image
from uvireid.errors import DatasetError
from uvireid.types import INFRARED, VISIBLE, ImageRecord


def _rel(ds, r):
    return os.path.relpath(r.path, ds.root).replace(os.sep, "/")


# -- folder dataset layout ------------------------------------------------------------


def test_folder_skips_hidden_and_non_image_entries_and_reads_any_case_ending(tmp_path):
    rng = random.Random(0)
    root = make_folder_tree(tmp_path / "d", {"cam1": 1}, {"cam1": 1})
    write_image(root / "visible" / ".cache" / "x.png", rng)  # hidden camera folder
    write_image(root / "visible" / "cam1" / ".x.png", rng)  # hidden file
    write_image(root / "visible" / "cam1" / ".trash" / "y.png", rng)  # hidden sub-folder
    (root / "visible" / "cam1" / "notes.txt").write_text("n")
    (root / "visible" / "readme.md").write_text("n")  # a non-image next to the cameras
    write_image(root / "infrared" / "cam1" / "UP.PNG", rng)
    ds = FolderDataset(root)
    assert ds.camera_names == {1: "cam1"}
    assert sorted(_rel(ds, r) for r in ds.train) == [
        "infrared/cam1/0000.png",
        "infrared/cam1/UP.PNG",
        "visible/cam1/0000.png",
    ]
    # sorted by path, every record of the one camera, modality from the top folder
    assert [r.path for r in ds.train] == sorted(r.path for r in ds.train)
    assert [(r.modality, r.cam) for r in ds.train] == [(INFRARED, 1)] * 2 + [(VISIBLE, 1)]


def test_folder_cameras_in_natural_order_numbered_from_one(tmp_path):
    root = make_folder_tree(tmp_path / "d", {"c10": 1, "c9": 1, "b": 1}, {"c9": 1, "a2": 1})
    ds = FolderDataset(root)
    # natural order: a2 < b < c9 < c10 (plain sorting would put c10 before c9)
    assert ds.camera_names == {1: "a2", 2: "b", 3: "c9", 4: "c10"}
    got = sorted({(r.modality, r.cam) for r in ds.train})
    assert got == [(VISIBLE, 2), (VISIBLE, 3), (VISIBLE, 4), (INFRARED, 1), (INFRARED, 3)]


def test_folder_reads_a_linked_subfolder_once(tmp_path):
    rng = random.Random(0)
    root = make_folder_tree(tmp_path / "d", {"cam1": 1}, {"cam1": 1})
    write_image(tmp_path / "disk2" / "e.png", rng)
    os.symlink(tmp_path / "disk2", root / "visible" / "cam1" / "day2")
    ds = FolderDataset(root)
    assert sorted(_rel(ds, r) for r in ds.train if r.modality == VISIBLE) == [
        "visible/cam1/0000.png",
        "visible/cam1/day2/e.png",
    ]


def test_folder_with_ids_reads_integer_identity_folders_at_any_depth(tmp_path):
    rng = random.Random(0)
    write_image(tmp_path / "visible" / "a" / "0012" / "day1" / "x.png", rng)
    write_image(tmp_path / "infrared" / "a" / "12" / "y.png", rng)
    ds = FolderDataset(tmp_path, with_ids=True)
    assert sorted((r.modality, r.pid) for r in ds.train) == [(VISIBLE, 12), (INFRARED, 12)]
    assert ds.stats()["train"]["ids"] == 1


def test_folder_with_ids_refuses_a_non_ascii_digit_folder(tmp_path):
    rng = random.Random(0)
    write_image(tmp_path / "visible" / "a" / "\u0663" / "x.png", rng)  # Arabic-Indic 3
    write_image(tmp_path / "infrared" / "a" / "3" / "y.png", rng)
    with pytest.raises(DatasetError, match="is not an integer"):
        FolderDataset(tmp_path, with_ids=True)


def test_folder_with_only_infrared_images_is_refused(tmp_path):
    root = make_folder_tree(tmp_path / "d", {"cam1": 0}, {"cam2": 1})
    with pytest.raises(DatasetError, match=r"has no visible images"):
        FolderDataset(root)


def test_a_dangling_camera_link_is_an_error_naming_it(tmp_path):
    """A camera folder linked to a disk that is not mounted: a DatasetError naming the link
    and its target (left out, its images vanished without a word and camera c became 2)."""
    root = make_folder_tree(tmp_path / "d", {"a": 1, "c": 1}, {"a": 1})
    os.symlink(tmp_path / "unmounted", root / "visible" / "b")
    with pytest.raises(DatasetError, match="visible/b is a link to .*unmounted.*mount it"):
        FolderDataset(root)
    (root / "visible" / "b").unlink()
    assert FolderDataset(root).camera_names == {1: "a", 2: "c"}


def test_a_dangling_linked_subfolder_below_a_camera_is_warned_about(tmp_path, caplog):
    """A link below a camera to a missing folder: a warning naming it (it was dropped
    without one)."""
    root = make_folder_tree(tmp_path / "d", {"a": 1}, {"a": 1})
    os.symlink(tmp_path / "unmounted", root / "visible" / "a" / "day2")
    with caplog.at_level(logging.WARNING):
        FolderDataset(root)
    assert any("day2" in rec.getMessage() for rec in caplog.records)


# -- fingerprint ----------------------------------------------------------------------


def _sha1_of(lines):
    return hashlib.sha1("\n".join(sorted(lines)).encode()).hexdigest()


def test_folder_fingerprint_against_a_hand_hash_and_independent_of_mount_and_order(tmp_path):
    a = make_folder_tree(tmp_path / "a", {"cam1": 2}, {"ir": 1})
    ds = FolderDataset(a)
    want = _sha1_of(
        [
            "train\tvisible/cam1/0000.png",
            "train\tvisible/cam1/0001.png",
            "train\tinfrared/ir/0000.png",
        ]
    )
    fp = ds.fingerprint()
    assert fp == {
        "dataset": "folder",
        "split": None,
        "train_ids": 0,
        "train_images": 3,
        "test_ids": 0,
        "test_images": 0,
        "sha1": want,
    }
    # the same files written in another order, elsewhere, and read through a link
    rng = random.Random(5)
    b = tmp_path / "b"
    for rel in ("infrared/ir/0000.png", "visible/cam1/0001.png", "visible/cam1/0000.png"):
        write_image(b / rel, rng)
    os.symlink(b, tmp_path / "link")
    assert FolderDataset(b).fingerprint()["sha1"] == want
    assert FolderDataset(tmp_path / "link").fingerprint()["sha1"] == want


def test_fingerprint_changes_when_a_file_is_added_or_renamed(tmp_path):
    root = make_folder_tree(tmp_path / "a", {"cam1": 2}, {"ir": 1})
    before = FolderDataset(root).fingerprint()["sha1"]
    os.rename(root / "visible" / "cam1" / "0001.png", root / "visible" / "cam1" / "0009.png")
    renamed = FolderDataset(root).fingerprint()
    assert renamed["sha1"] not in (before,) and renamed["train_images"] == 3
    write_image(root / "infrared" / "ir" / "0001.png", random.Random(1))
    added = FolderDataset(root).fingerprint()
    assert added["sha1"] not in (before, renamed["sha1"]) and added["train_images"] == 4


class _Toy(VIDataset):
    name = "toy"

    def __init__(self, root, train, test):
        super().__init__(root)
        self.train, self.test = train, test


def _rec(root, rel, pid, cam=1, mod=VISIBLE):
    return ImageRecord(path=os.path.join(str(root), rel), pid=pid, cam=cam, modality=mod)


def test_fingerprint_counts_ids_without_unlabelled_and_separates_lines(tmp_path):
    a, b = _rec(tmp_path, "x/a.png", 3), _rec(tmp_path, "x/b.png", -1)
    fp = _Toy(tmp_path, [a, b], []).fingerprint()
    assert (fp["train_ids"], fp["train_images"], fp["test_images"]) == (1, 2, 0)
    assert fp["sha1"] == _sha1_of(["train\tx/a.png", "train\tx/b.png"])
    # validation runs are marked, and their own hash (the test lines differ)
    ds = _Toy(tmp_path, [a, _rec(tmp_path, "x/c.png", 4)], [])
    ds.hold_out([4], "held.txt", "train.txt")
    fpv = ds.fingerprint()
    assert fpv["validation"] is True
    assert fpv["sha1"] == _sha1_of(["train\tx/a.png", "test\tx/c.png"])
    assert (fpv["train_ids"], fpv["test_ids"]) == (1, 1)


# -- data check -----------------------------------------------------------------------


def test_check_of_a_folder_dataset_with_an_undecodable_image(tmp_path):
    root = make_folder_tree(tmp_path / "d", {"cam1": 1}, {"ir": 1})
    bad = root / "visible" / "cam1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    ds = FolderDataset(root)
    plain = check_dataset(ds)
    assert plain.ok and plain.sources == []
    text = format_report(plain)
    assert "no official figures known" in text
    assert "are internally consistent (no official figures to compare with)" in text
    decoded = check_dataset(ds, decode=True)
    assert not decoded.ok
    assert decoded.problems == [
        f"1 image(s) cannot be decoded: {bad}; export them again or remove them "
        "(training skips them, evaluation stops on them)"  # the user's own: no release
    ]


def test_check_reports_identities_in_one_modality_only_but_not_unlabelled_images(tmp_path):
    rng = random.Random(0)
    for mod, pid in [("visible", 1), ("infrared", 1), ("visible", 2)]:
        write_image(tmp_path / mod / "a" / str(pid) / "x.png", rng)
    rep = check_dataset(FolderDataset(tmp_path, with_ids=True))
    assert rep.problems == [
        "train: 1 identity has images in one modality only: 2; expected every identity in "
        "both (a camera folder deleted or not extracted?)"
    ]
    # unlabelled (pid -1) images have no identity to be one-sided about
    assert check_dataset(FolderDataset(tmp_path)).ok


def test_check_reports_a_split_where_no_identity_has_both_modalities(tmp_path):
    """Visible identities 1-2 and infrared 3-4 (two numberings mixed): every identity is
    one-sided, so no query has a true match; one split-level problem says so."""
    rng = random.Random(0)
    for mod, pid in [("visible", 1), ("visible", 2), ("infrared", 3), ("infrared", 4)]:
        write_image(tmp_path / mod / "a" / str(pid) / "x.png", rng)
    rep = check_dataset(FolderDataset(tmp_path, with_ids=True))
    assert rep.problems == [
        "train: no identity has images in both modalities (4 identities, each in one only); "
        "expected the visible and infrared images of a person to share an identity number "
        "(two numberings mixed?): no query would have a true match"
    ]
    # one shared identity: the others are named one by one, as before
    write_image(tmp_path / "infrared" / "a" / "1" / "y.png", rng)
    rep = check_dataset(FolderDataset(tmp_path, with_ids=True))
    assert rep.problems == [
        "train: 3 identities have images in one modality only: 2, 3, 4; expected every "
        "identity in both (a camera folder deleted or not extracted?)"
    ]


def test_check_rows_are_cameras_then_modalities_then_total(tmp_path):
    root = make_folder_tree(tmp_path / "d", {"b": 1, "a": 2}, {"b": 3})
    rep = check_dataset(FolderDataset(root), official=False)
    got = [(r.split, r.cam, r.modality, r.ids, r.images) for r in rep.rows]
    assert got == [
        ("train", 1, "visible", 0, 2),
        ("train", 2, "visible", 0, 1),
        ("train", 2, "infrared", 0, 3),
        ("train", None, "visible", 0, 3),
        ("train", None, "infrared", 0, 3),
        ("train", None, None, 0, 6),
    ]  # and no row of the empty test split
    assert "official figures: not compared (internal consistency only)" in format_report(rep)
    assert format_report(rep).endswith("OK: the counts are internally consistent.")


def test_table_lines_official_columns_and_alignment():
    rows = [Row("test", 3, "infrared", 7, 1234, official_ids=9, official_images=1234)]
    lines = table_lines(rows, official=True)
    assert lines[0].split() == [
        "split",
        "camera",
        "modality",
        "ids",
        "official",
        "images",
        "official",
    ]
    assert lines[1].split() == ["test", "cam3", "infrared", "7", "9", "1,234", "1,234", "MISMATCH"]
    # numbers right-aligned under their headers: the ends line up
    head, row = lines
    for word, value in (("ids", "7"), ("images", "1,234")):
        end = head.index(word) + len(word)
        assert row[end - len(value) : end] == value
    assert Row("t", None, None, 1, 2).mismatches() == []  # no official figure: no mismatch
    assert Row("t", None, None, 5, 2, official_ids=7).mismatches() == [
        "found 5 ids, official 7 (-2)"
    ]


def test_summarize_against_a_naive_count():
    recs = [
        ImageRecord(path=f"/p{i}", pid=pid, cam=cam, modality=mod)
        for i, (pid, cam, mod) in enumerate(
            [
                (1, 2, VISIBLE),
                (1, 1, INFRARED),
                (2, 1, INFRARED),
                (-1, 1, INFRARED),
                (2, 2, VISIBLE),
            ]
        )
    ]
    s = summarize(recs)
    assert (s["ids"], s["images"]) == (2, 5)
    assert s["visible"] == {"ids": 2, "images": 2}
    assert s["infrared"] == {"ids": 2, "images": 3}
    assert s["cameras"] == [
        {"cam": 1, "modality": "infrared", "ids": 2, "images": 3},
        {"cam": 2, "modality": "visible", "ids": 2, "images": 2},
    ]
    assert listing([1, 2, 3], 3) == "1, 2, 3" and listing([1, 2, 3], 2) == "1, 2 and 1 more"


# -- fixtures match the layouts the loaders read --------------------------------------


def test_regdb_fixture_lists_label_by_sorted_position_and_trials_differ(tmp_path):
    root = make_regdb_tree(tmp_path / "R", ids=6, images_per=1, splits=(1, 2))
    lists = {}
    for t in (1, 2):
        pids = []
        for split in ("train", "test"):
            vis = (root / "idx" / f"{split}_visible_{t}.txt").read_text().split("\n")[:-1]
            th = (root / "idx" / f"{split}_thermal_{t}.txt").read_text().split("\n")[:-1]
            got = [(line.split()[0].split("/")[1], int(line.split()[1])) for line in vis]
            # labels 0..K-1 in sorted pid order; the thermal list has the same labels
            assert [lab for _, lab in got] == list(range(len(got)))
            assert [int(p) for p, _ in got] == sorted(int(p) for p, _ in got)
            assert [int(line.split()[1]) for line in th] == list(range(len(th)))
            assert all(line.startswith("Visible/") for line in vis)
            assert all(line.startswith("Thermal/") for line in th)
            for line in vis + th:
                assert (root / line.split()[0]).is_file()
            pids.append({int(p) for p, _ in got})
        assert pids[0].isdisjoint(pids[1]) and pids[0] | pids[1] == set(range(1, 7))
        lists[t] = pids[0]
    assert lists[1] != lists[2]  # each trial draws its own half (seed + t)


def test_llcm_fixture_has_an_empty_nir_cam3_and_pid_labels(tmp_path):
    root = make_llcm_tree(tmp_path / "L", train_ids=2, test_ids=1, nir_cams=(1, 2))
    assert (root / "test_nir" / "cam3").is_dir() and not any((root / "test_nir" / "cam3").iterdir())
    assert sorted(p.name for p in (root / "test_nir").iterdir()) == ["cam1", "cam2", "cam3"]
    lines = (root / "idx" / "train_nir.txt").read_text().split()
    assert sorted(set(lines[1::2])) == ["1", "2"]
    assert (root / "idx" / "test_id.txt").read_text() == "3\n"


def test_an_official_figure_of_an_empty_split_is_a_row_of_zeros_and_a_mismatch(tmp_path):
    from uvireid.data.check import Figure

    root = make_folder_tree(tmp_path / "d", {"cam1": 1}, {"cam1": 1})
    fig = Figure("folder", "test", "infrared", 3, 4, None, "my notes")
    rep = check_dataset(FolderDataset(root), figures=[fig])
    test_rows = [
        (r.cam, r.modality, r.ids, r.images, r.official_ids) for r in rep.rows if r.split == "test"
    ]
    # the empty test split still gets its official cell (zeros), then the totals
    assert test_rows == [
        (3, "infrared", 0, 0, 4),
        (None, "visible", 0, 0, None),
        (None, "infrared", 0, 0, None),
        (None, None, 0, 0, None),
    ]
    assert rep.problems == ["test cam3 infrared: found 0 ids, official 4 (-4)"]
    assert rep.sources == ["my notes"]


def test_unlabelled_images_in_one_modality_do_not_count_as_an_identity(tmp_path):
    train = [
        _rec(tmp_path, "v/1.png", 1, 1, VISIBLE),
        _rec(tmp_path, "i/1.png", 1, 2, INFRARED),
        _rec(tmp_path, "v/u.png", -1, 1, VISIBLE),  # unlabelled, visible only
    ]
    assert check_dataset(_Toy(tmp_path, train, []), official=False).problems == []
    train.append(_rec(tmp_path, "v/2.png", 2, 1, VISIBLE))
    assert check_dataset(_Toy(tmp_path, train, []), official=False).problems == [
        "train: 1 identity has images in one modality only: 2; expected every identity in "
        "both (a camera folder deleted or not extracted?)"
    ]


def test_a_datasets_own_consistency_problems_are_reported(tmp_path):
    class Picky(_Toy):
        def consistency_problems(self):
            return ["cam9 is not a camera of this release"]

    train = [_rec(tmp_path, "v/1.png", 1, 1, VISIBLE), _rec(tmp_path, "i/1.png", 1, 2, INFRARED)]
    rep = check_dataset(Picky(tmp_path, train, []), official=False)
    assert rep.problems == ["cam9 is not a camera of this release"] and not rep.ok
    assert "CHECK FAILED: 1 problem(s):\n  - cam9 is not a camera" in format_report(rep)


def test_sysu_fixture_writes_the_given_id_lists_even_when_empty(tmp_path):
    from uvireid.data.fixtures import make_sysu_tree

    root = make_sysu_tree(tmp_path / "S", ids=4, cams=(1, 3), images_per=1, test_ids=[], val_ids=[])
    exp = root / "exp"
    assert (exp / "test_id.txt").read_text() == "\n"  # given empty: not the default third
    assert (exp / "val_id.txt").read_text() == "\n"
    assert (exp / "train_id.txt").read_text() == "1,2,3,4\n"
    assert sorted(p.name for p in (root / "cam3").iterdir()) == ["0001", "0002", "0003", "0004"]
    root2 = make_sysu_tree(tmp_path / "T", ids=7, cams=(1,), images_per=1)
    # defaults: every third pid tests (3, 6); every fourth of the rest validates (5)
    assert (root2 / "exp" / "test_id.txt").read_text() == "3,6\n"
    assert (root2 / "exp" / "val_id.txt").read_text() == "5\n"
    assert (root2 / "exp" / "train_id.txt").read_text() == "1,2,4,7\n"


def test_one_folder_linked_as_two_cameras_is_an_error(tmp_path):
    """The same real folder under two camera names (a link to another camera's folder):
    refused, naming both, instead of its images read twice as two cameras."""
    root = make_folder_tree(tmp_path / "d", {"a": 1}, {"a": 1})
    os.symlink(root / "visible" / "a", root / "infrared" / "b")
    with pytest.raises(DatasetError, match=r"are one folder.*read twice"):
        FolderDataset(root)


def test_identity_folders_1_and_01_are_refused_not_merged(tmp_path):
    """with_ids=True: folders ``1`` and ``01`` of one camera are both pid 1: an error naming
    both (they were merged without a word)."""
    root = make_folder_tree(tmp_path / "d", {"a": 0}, {"a": 0})
    rng = random.Random(0)
    for mod in ("visible", "infrared"):
        write_image(root / mod / "a" / "1" / "0.png", rng)
    write_image(root / "visible" / "a" / "01" / "0.png", rng)
    with pytest.raises(DatasetError, match=r"identity folders 01 and 1 .* both pid 1"):
        FolderDataset(root, with_ids=True)
    (root / "visible" / "a" / "01" / "0.png").unlink()
    (root / "visible" / "a" / "01").rmdir()
    assert sorted(r.pid for r in FolderDataset(root, with_ids=True).train) == [1, 1]
