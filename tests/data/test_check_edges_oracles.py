"""uvireid.data.check (``uvireid data check``) on hand-built toy datasets, each
expectation written out by hand (rows, problems, report text)."""

from __future__ import annotations

import os
import random

from uvireid.data.base import IdList, VIDataset
from uvireid.data.check import (
    OFFICIAL_FIGURES,
    Figure,
    check_dataset,
    format_report,
    stats_table,
    table_lines,
)
from uvireid.data.fixtures import write_image
from uvireid.types import INFRARED, VISIBLE, ImageRecord


class _Toy(VIDataset):
    name = "toy"
    title = "Toy"

    def __init__(self, root, train, test, declared=None, split=None):
        super().__init__(root)
        self.train, self.test = train, test
        self.declared_ids = dict(declared or {})
        self.split = split


class _Three(_Toy):
    """A plugin dataset with a validation split between train and test."""

    def __init__(self, root, train, val, test, declared=None):
        super().__init__(root, train, test, declared)
        self.val = val

    def splits(self):
        return {"train": self.train, "val": self.val, "test": self.test}


def _rec(root, rel, pid, cam=1, mod=VISIBLE):
    return ImageRecord(path=os.path.join(str(root), rel), pid=pid, cam=cam, modality=mod)


def _pair(root, split, pid, cam_v=1, cam_r=3):
    return [
        _rec(root, f"{split}/v{pid}.png", pid, cam_v, VISIBLE),
        _rec(root, f"{split}/r{pid}.png", pid, cam_r, INFRARED),
    ]


def test_an_official_figure_of_zero_is_compared(tmp_path):
    """A user's figure of 0 images (e.g. 'no test images in cam2') is a figure, not 'not
    compared': finding 2 is a mismatch."""
    train = _pair(tmp_path, "tr", 1)
    fig = Figure("toy", "train", None, None, None, 0, "mine")
    rep = check_dataset(_Toy(tmp_path, train, []), figures=[fig])
    assert rep.problems == ["train all cameras both modalities: found 2 images, official 0 (+2)"]


def test_ids_mismatch_is_listed_before_images_mismatch(tmp_path):
    train = _pair(tmp_path, "tr", 1)
    fig = Figure("toy", "train", None, None, 3, 5, "mine")
    rep = check_dataset(_Toy(tmp_path, train, []), figures=[fig])
    assert rep.problems == [
        "train all cameras both modalities: found 1 ids, official 3 (-2)",
        "train all cameras both modalities: found 2 images, official 5 (-3)",
    ]


def test_camera_rows_are_sorted_by_camera_number_across_modalities(tmp_path):
    """cam3 (infrared) comes between cam2 and cam4 (visible), as SYSU-MM01 numbers them."""
    train = []
    for pid in (1, 2):
        for cam, mod in ((4, VISIBLE), (3, INFRARED), (1, VISIBLE), (6, INFRARED)):
            train.append(_rec(tmp_path, f"c{cam}/{pid}.png", pid, cam, mod))
    rep = check_dataset(_Toy(tmp_path, train, []), official=False)
    got = [(r.cam, r.modality) for r in rep.rows]
    assert got == [
        (1, "visible"),
        (3, "infrared"),
        (4, "visible"),
        (6, "infrared"),
        (None, "visible"),
        (None, "infrared"),
        (None, None),
    ]
    assert rep.ok


def test_identity_zero_in_one_modality_is_reported(tmp_path):
    """pid 0 is an identity (only -1 is unlabelled)."""
    train = _pair(tmp_path, "tr", 1) + [_rec(tmp_path, "tr/v0.png", 0, 1, VISIBLE)]
    rep = check_dataset(_Toy(tmp_path, train, []), official=False)
    assert rep.problems == [
        "train: 1 identity has images in one modality only: 0; expected every identity in "
        "both (a camera folder deleted or not extracted?)"
    ]


def test_a_split_of_one_modality_is_reported_once_not_as_one_sided_ids(tmp_path):
    """Only visible images: 'no infrared images', and neither 'no identity has both' nor
    'identities in one modality only' on top of it."""
    train = [_rec(tmp_path, f"tr/v{p}.png", p, 1, VISIBLE) for p in (1, 2, 3)]
    rep = check_dataset(_Toy(tmp_path, train, []), official=False)
    assert rep.problems == ["train has no infrared images; expected both modalities in every split"]


def test_overlaps_between_first_and_last_of_three_splits(tmp_path):
    """A plugin dataset with three splits: train and test (not neighbours) sharing an
    identity in their split files and an image are both reported."""
    train = _pair(tmp_path, "tr", 1) + _pair(tmp_path, "tr", 2)
    val = _pair(tmp_path, "va", 5)
    test = _pair(tmp_path, "te", 2)
    test[0] = train[2]  # the same file in train and test
    test[1] = _rec(tmp_path, "te/r2.png", 2, 3, INFRARED)
    declared = {
        "train": IdList((1, 2), "train.txt"),
        "val": IdList((5,), "val.txt"),
        "test": IdList((2,), "test.txt"),
    }
    rep = check_dataset(_Three(tmp_path, train, val, test, declared), official=False)
    assert rep.problems == [
        "train.txt (train) and test.txt (test) share 1 identities: 2; expected disjoint splits",
        f"1 image(s) are in both train and test: {train[2].path}; expected disjoint splits",
    ]


def test_missing_identities_are_listed_up_to_twenty(tmp_path):
    train = _pair(tmp_path, "tr", 100)
    declared = {"train": IdList(tuple(range(1, 26)) + (100,), "train.txt")}
    rep = check_dataset(_Toy(tmp_path, train, [], declared), official=False)
    listed = ", ".join(str(i) for i in range(1, 21))
    assert rep.problems == [
        f"train: 25 identities listed in train.txt have no image in any camera: missing "
        f"identities {listed} and 5 more; expected 26 identities with images, found 1"
    ]


def test_undecodable_images_are_listed_up_to_five(tmp_path):
    train = []
    for pid in range(1, 5):
        for mod, cam in ((VISIBLE, 1), (INFRARED, 3)):
            rec = _rec(tmp_path, f"tr/{pid}_{cam}.jpg", pid, cam, mod)
            os.makedirs(os.path.dirname(rec.path), exist_ok=True)
            with open(rec.path, "wb") as f:
                f.write(b"not a jpeg")
            train.append(rec)
    rep = check_dataset(_Toy(tmp_path, train, []), official=False, decode=True)
    paths = [r.path for r in train]
    assert rep.problems == [
        f"8 image(s) cannot be decoded: {', '.join(paths[:5])} and 3 more; restore them from "
        f"the release archive (training skips them, evaluation stops on them)"
    ]
    # a readable image is not listed
    write_image(train[0].path, random.Random(0))
    rep = check_dataset(_Toy(tmp_path, train, []), official=False, decode=True)
    assert rep.problems[0].startswith("7 image(s) cannot be decoded: " + paths[1])


def test_report_of_a_dataset_without_official_figures(tmp_path):
    """official=True but no figure known: the header says so and the verdict does not
    claim to match them."""
    train = _pair(tmp_path, "tr", 1)
    rep = check_dataset(_Toy(tmp_path, train, [], split=0), official=True)
    text = format_report(rep)
    lines = text.splitlines()
    assert lines[0] == f"Toy split 0 at {tmp_path}"
    assert lines[1] == "no official figures known"
    assert lines[-1] == (
        "OK: the counts are internally consistent (no official figures to compare with)."
    )
    # with a figure: its source is listed and the verdict names the figures
    fig = Figure("toy", "train", None, None, 1, 2, "my notes")
    text = format_report(check_dataset(_Toy(tmp_path, train, []), figures=[fig]))
    assert text.splitlines()[1:3] == ["official figures from:", "  my notes"]
    assert text.endswith("OK: the counts match the official figures.")


def test_official_false_ignores_given_figures(tmp_path):
    train = _pair(tmp_path, "tr", 1)
    fig = Figure("toy", "train", None, None, 7, 7, "mine")
    rep = check_dataset(_Toy(tmp_path, train, []), official=False, figures=[fig])
    assert rep.ok and rep.sources == []
    assert all(r.official_ids is None and r.official_images is None for r in rep.rows)


def test_stats_table_has_only_the_cells_found(tmp_path):
    """stats_table: no official columns and no rows of zeros for official cells (even for
    a dataset named like a release)."""

    class Sysu(_Toy):
        name = "sysu"

    train = _pair(tmp_path, "tr", 1)
    lines = stats_table(Sysu(tmp_path, train, [])).splitlines()
    assert [ln.split() for ln in lines] == [
        ["split", "camera", "modality", "ids", "images"],
        ["train", "cam1", "visible", "1", "1"],
        ["train", "cam3", "infrared", "1", "1"],
        ["train", "all", "visible", "1", "1"],
        ["train", "all", "infrared", "1", "1"],
        ["train", "all", "both", "1", "2"],
    ]
    assert lines == table_lines(
        check_dataset(Sysu(tmp_path, train, []), official=False).rows, False
    )


def test_sysu_figures_agree_with_the_notes():
    """notes/eval_datasets.md: queries cam3 1883 + cam6 1920 (96 ids), single-shot gallery
    ids cam1 56, cam2 56, cam4 94, cam5 95; training 22,258 RGB / 11,909 IR, 395 ids."""
    fig = {(f.split, f.modality, f.cam): f for f in OFFICIAL_FIGURES if f.dataset == "sysu"}
    assert fig[("test", "infrared", 3)].images == 1883
    assert fig[("test", "infrared", 6)].images == 1920
    assert fig[("test", "infrared", None)].ids == 96
    assert fig[("test", "infrared", None)].images == 3803
    assert [fig[("test", "visible", c)].ids for c in (1, 2, 4, 5)] == [56, 56, 94, 95]
    assert fig[("train", None, None)].ids == 395
    assert fig[("train", "visible", None)].images == 22258
    assert fig[("train", "infrared", None)].images == 11909
