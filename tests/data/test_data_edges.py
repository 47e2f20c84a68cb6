"""Edges of the dataset readers and the synthetic dataset (audit KC): links in image
folders, a synthetic folder damaged or replaced, its split against the official SYSU-MM01
split files, a folder written at another size, split files with invisible characters."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uvireid.cli import main
from uvireid.data import SYSUMM01
from uvireid.data import synthetic as syn
from uvireid.data.base import read_id_file
from uvireid.data.check import check_dataset
from uvireid.data.fixtures import make_regdb_tree, make_sysu_tree
from uvireid.data.folder import FolderDataset
from uvireid.data.images import list_images, read_image
from uvireid.errors import DatasetError
from uvireid.registry import DATASETS
from uvireid.types import VISIBLE

REPO = Path(__file__).resolve().parents[2]
OFFICIAL = next(
    (
        d
        for d in (r / "shared" / "data" / "sysu_mm01_official" for r in (REPO, REPO.parent))
        if d.is_dir()
    ),
    REPO.parent / "shared" / "data" / "sysu_mm01_official",
)


def _jpgs(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.jpg"))


@pytest.fixture(scope="module")
def syn6(tmp_path_factory) -> Path:
    """A 6-identity synthetic dataset written once (copy it before damaging it)."""
    return syn.generate(tmp_path_factory.mktemp("kc") / "syn6", ids=6, seed=3, workers=1)


# ---------------------------------------------------------------------------------------
# symbolic links in an identity folder
# ---------------------------------------------------------------------------------------
def test_symlink_loop_in_an_identity_folder_is_a_named_error(tmp_path):
    root = make_sysu_tree(tmp_path / "sysu", ids=6)
    loop = root / "cam3" / "0001" / "loop.jpg"
    os.symlink(loop.name, loop)  # points at itself
    try:  # either read (and later named as unreadable) or refused by name: never a raw OSError
        ds = SYSUMM01(root)
    except DatasetError as exc:
        assert "loop.jpg" in str(exc)
    else:
        assert not check_dataset(ds, official=False, decode=True).ok


def test_dangling_symlink_image_is_reported_not_dropped(tmp_path):
    root = make_sysu_tree(tmp_path / "sysu", ids=6)
    os.symlink("/nonexistent/0003.jpg", root / "cam1" / "0001" / "0003.jpg")
    try:
        report = check_dataset(SYSUMM01(root), official=False, decode=True)
    except DatasetError as exc:
        assert "0003.jpg" in str(exc)
    else:
        assert not report.ok and any("0003.jpg" in p for p in report.problems)


def test_recursive_listing_keeps_broken_links_for_the_decoder(tmp_path):
    """The recursive branch (folder dataset) lists a dangling link, so --decode names it."""
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 8)).save(tmp_path / "a" / "x.png")
    os.symlink("missing.png", tmp_path / "a" / "y.png")
    assert [os.path.basename(p) for p in list_images(tmp_path, recursive=True)] == [
        "x.png",
        "y.png",
    ]


# ---------------------------------------------------------------------------------------
# a synthetic folder that is no longer what its manifest says
# ---------------------------------------------------------------------------------------
def _damaged_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    victim = min((dst / "cam1").iterdir())
    shutil.rmtree(victim)  # one person's cam1 folder lost (an interrupted copy, a clean-up)
    return dst


def test_check_of_a_damaged_synthetic_dataset_fails(syn6, tmp_path, capsys):
    root = _damaged_copy(syn6, tmp_path / "copy")
    manifest = syn.read_manifest(root)
    assert _jpgs(root) < manifest["n_images"]  # the damage is real
    rc = main(["data", "check", str(root), "--dataset", "synthetic"])
    assert rc != 0, capsys.readouterr().out


def test_damaged_synthetic_folder_is_not_reused_silently(syn6, tmp_path):
    root = _damaged_copy(syn6, tmp_path / "copy")
    try:
        out = syn.generate(root, ids=6, seed=3, workers=1)
    except DatasetError:
        return  # refused by name: fine
    assert _jpgs(out) == syn.read_manifest(out)["n_images"]


def test_a_replace_killed_while_deleting_leaves_no_complete_looking_folder(
    syn6, tmp_path, monkeypatch
):
    """Replacing deleted the old folder in place: a kill half way left its DONE and
    manifest with cameras gone, reused later as complete. Now the old folder is moved
    aside first: a kill while it is deleted leaves the new dataset, whole."""
    out = tmp_path / "out"
    shutil.copytree(syn6, out)
    real = shutil.rmtree

    def killed_half_way(path, *args, **kwargs):
        path = Path(path)
        if (path / syn.MANIFEST).is_file() and syn.read_manifest(path)["ids"] == 6:
            real(path / "cam1")  # the old dataset: one camera goes, then the process dies
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(syn.shutil, "rmtree", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        syn.generate(out, ids=5, seed=3, workers=1)  # other parameters: replaces the old one
    monkeypatch.setattr(syn.shutil, "rmtree", real)
    found = syn.read_manifest(out)
    assert found["ids"] == 5 and _jpgs(out) == found["n_images"]


# ---------------------------------------------------------------------------------------
# the synthetic split against the official SYSU-MM01 split files
# ---------------------------------------------------------------------------------------
def _official_sizes() -> tuple[int, int, int]:
    """(train, val, test) of the release: train_id.mat and test_id.mat, val = 491 - both."""
    scipy_io = pytest.importorskip("scipy.io")
    if not OFFICIAL.is_dir():
        pytest.skip("no shared/data/sysu_mm01_official")
    train = scipy_io.loadmat(OFFICIAL / "train_id.mat")["id"].ravel()
    test = scipy_io.loadmat(OFFICIAL / "test_id.mat")["id"].ravel()
    assert not set(train.tolist()) & set(test.tolist())
    return len(train), 491 - len(train) - len(test), len(test)


def test_synthetic_test_split_has_the_release_proportion_and_the_layout():
    _, _, n_test = _official_sizes()
    split = syn.split_ids(491, seed=0)
    assert abs(len(split["test"]) - n_test) <= 3  # 96 of 491
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 491
    assert not set(split["test"]) & (set(split["train"]) | set(split["val"]))
    assert split["available"] == sorted(split["train"] + split["val"] + split["test"])


def test_validation_split_has_sysu_proportions():
    _, n_val, _ = _official_sizes()  # 296, 99, 96
    split = syn.split_ids(491, seed=0)
    assert abs(len(split["val"]) - n_val) <= 5, {k: len(v) for k, v in split.items()}
    assert len(syn.split_ids(12, seed=0)["val"]) >= 2  # a one-identity validation split: R1 100%


def test_written_split_files_read_back_as_the_split(syn6):
    want = syn.split_ids(6, seed=3)
    for name in ("train", "val", "test", "available"):
        text = (syn6 / "exp" / f"{name}_id.txt").read_text()
        assert text == ",".join(map(str, want[name])) + "\n"  # one line, no padding
        assert read_id_file(str(syn6 / "exp" / f"{name}_id.txt")) == want[name]


def test_every_person_has_the_images_camera_counts_draws(syn6):
    """Independent of the manifest: the folders on disk against camera_counts, 1-based names."""
    for pid in range(1, 7):
        counts = syn.camera_counts(pid, seed=3)
        for cam in range(1, 7):
            d = syn6 / f"cam{cam}" / f"{pid:04d}"
            if cam in counts:
                assert sorted(p.name for p in d.iterdir()) == [
                    f"{i:04d}.jpg" for i in range(1, counts[cam] + 1)
                ]
            else:
                assert not d.exists()
        lo, hi = syn.IMAGES_PER_CAM
        assert all(lo <= n <= hi for n in counts.values())
        assert set(counts) & set(syn.VISIBLE_CAMS) and set(counts) & set(syn.INFRARED_CAMS)


def test_camera_counts_reach_both_ends_of_the_documented_range():
    seen = {n for pid in range(1, 200) for n in syn.camera_counts(pid, seed=0).values()}
    assert seen == set(range(syn.IMAGES_PER_CAM[0], syn.IMAGES_PER_CAM[1] + 1))


def test_a_manifest_that_disagrees_with_the_disk_is_never_published(tmp_path, monkeypatch):
    """The final count check: a worker that reports more images than it wrote is refused."""
    real = syn._render_people

    def overcounting(args):
        counts = real(args)
        counts[1] += 1
        return counts

    monkeypatch.setattr(syn, "_render_people", overcounting)
    with pytest.raises(DatasetError, match="holds"):
        syn.generate(tmp_path / "out", ids=4, seed=0, workers=1)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------
# where the synthetic dataset can be written and opened
# ---------------------------------------------------------------------------------------
def test_synth_into_a_symlinked_folder(tmp_path):
    (tmp_path / "big").mkdir()
    os.symlink(tmp_path / "big", tmp_path / "link")  # data on another disk, linked in
    out = syn.generate(tmp_path / "link", ids=4, seed=0, workers=1)
    assert syn.read_manifest(out) is not None
    assert _jpgs(tmp_path / "big") == syn.read_manifest(tmp_path / "big")["n_images"]


def test_check_opens_a_synthetic_folder_of_another_image_size(tmp_path, capsys):
    root = syn.generate(tmp_path / "small", ids=4, seed=0, height=64, width=32, workers=1)
    rc = main(["data", "check", str(root), "--dataset", "synthetic", "--official", "false"])
    err = capsys.readouterr().err
    assert rc == 0, err


# ---------------------------------------------------------------------------------------
# behaviour the mutation run left unpinned
# ---------------------------------------------------------------------------------------
def test_truncated_real_size_jpeg_is_named_by_check(syn6, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(syn6, root)
    victim = min((root / "cam6").rglob("*.jpg"))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # header and half the scan survive
    with pytest.raises(DatasetError, match=victim.name):
        read_image(victim)
    rc = main(["data", "check", str(root), "--dataset", "synthetic", "--official", "false"])
    out = capsys.readouterr().out
    assert rc == 1 and "1 image(s) cannot be decoded" in out and str(victim) in out


def test_id_files_with_bom_crlf_and_stray_whitespace_read_as_the_clean_ones(tmp_path):
    root = make_sysu_tree(tmp_path / "sysu", ids=12)
    clean = {s: read_id_file(str(root / "exp" / f"{s}.txt")) for s in ("train_id", "val_id")}
    dirty = "\ufeff " + " ,\t".join(map(str, clean["train_id"])) + ",\r\n\r\n"
    (root / "exp" / "train_id.txt").write_bytes(dirty.encode("utf-8"))
    (root / "exp" / "val_id.txt").write_bytes(
        "\r\n".join(map(str, clean["val_id"])).encode("utf-8")
    )
    ds = SYSUMM01(root)
    assert ds.declared_ids["train"].ids == tuple(sorted(clean["train_id"] + clean["val_id"]))
    assert check_dataset(ds, official=False).ok


def test_an_identity_listed_in_train_and_test_is_named(tmp_path):
    root = make_sysu_tree(tmp_path / "sysu", ids=12)  # test 3,6,9,12
    (root / "exp" / "val_id.txt").write_text("5,11,12\n")
    problems = check_dataset(SYSUMM01(root), official=False).problems
    assert any("share 1 identities: 12" in p for p in problems), problems


def test_check_counts_per_camera_against_a_naive_walk(tmp_path):
    root = make_sysu_tree(tmp_path / "sysu", ids=9, images_per=3, skip=[(1, 2), (3, 3), (6, 9)])
    report = check_dataset(SYSUMM01(root), official=False)
    test = set(read_id_file(str(root / "exp" / "test_id.txt")))
    for row in report.rows:
        if row.cam is None:
            continue
        folder = root / f"cam{row.cam}"
        pids = {
            int(d.name) for d in folder.iterdir() if (int(d.name) in test) == (row.split == "test")
        }
        assert row.ids == len(pids)
        assert row.images == sum(len(list((folder / f"{p:04d}").glob("*.jpg"))) for p in pids)


def test_folder_cameras_number_naturally_and_share_a_name_across_modalities(tmp_path):
    for mod, cams in (("visible", ("cam10", "cam2")), ("infrared", ("cam2", "cam9"))):
        for cam in cams:
            (tmp_path / mod / cam).mkdir(parents=True)
            Image.new("RGB", (4, 8)).save(tmp_path / mod / cam / "a.png")
    ds = FolderDataset(tmp_path)
    assert ds.camera_names == {1: "cam2", 2: "cam9", 3: "cam10"}
    cams = {(r.modality, os.path.basename(os.path.dirname(r.path))): r.cam for r in ds.train}
    assert len({c for (_, name), c in cams.items() if name == "cam2"}) == 1


def test_sixteen_bit_image_within_eight_bits_is_kept_and_a_wide_one_is_stretched(
    tmp_path,
):
    low = np.array([[0, 255], [17, 200]], dtype=np.uint16)
    Image.fromarray(low).save(tmp_path / "low.png")
    got = np.asarray(read_image(tmp_path / "low.png"))[..., 0]
    assert np.array_equal(got, low.astype(np.uint8))
    wide = np.array([[1000, 3000], [2000, 1000]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    got = np.asarray(read_image(tmp_path / "wide.png"))[..., 0].astype(int)
    naive = np.round((wide.astype(float) - 1000) * 255 / 2000).astype(int)
    assert np.array_equal(got, naive)
    edge = np.array([[0, 256]], dtype=np.uint16)  # one value above 255: stretched, not clipped
    Image.fromarray(edge).save(tmp_path / "edge.png")
    assert np.asarray(read_image(tmp_path / "edge.png"))[0, :, 0].tolist() == [0, 255]


def test_regdb_fixture_labels_are_zero_based_positions(tmp_path):
    root = make_regdb_tree(tmp_path / "regdb", ids=6, images_per=1)
    for kind in ("visible", "thermal"):
        lines = (root / "idx" / f"train_{kind}_1.txt").read_text().split()
        labels = [int(x) for x in lines[1::2]]
        assert sorted(set(labels)) == list(range(len(set(labels))))


def test_regdb_split_all_with_an_unreadable_split_exits_2(tmp_path, capsys):
    root = make_regdb_tree(tmp_path / "regdb", ids=8, splits=(1, 2))
    (root / "idx" / "test_thermal_2.txt").write_text("Thermal/99/nope.bmp 0\n")
    (root / "idx" / "test_visible_2.txt").unlink()
    assert main(["data", "check", str(root), "--dataset", "regdb", "--split", "all"]) == 2
    assert "split 2: unreadable" in capsys.readouterr().out


def test_registered_synthetic_reads_seed_and_size_from_its_manifest(syn6):
    ds = DATASETS.build({"type": "synthetic", "root": str(syn6)})
    assert ds.manifest["seed"] == 3 and ds.manifest["ids"] == 6
    assert len(ds.train) + len(ds.test) == ds.manifest["n_images"]


def test_every_person_is_drawn_in_both_modalities():
    """The documented guarantee of camera_counts, over many people (12 rarely hit a miss)."""
    for pid in range(1, 400):
        cams = set(syn.camera_counts(pid, seed=1))
        assert cams & set(syn.VISIBLE_CAMS) and cams & set(syn.INFRARED_CAMS), (pid, cams)


def test_shots_of_one_person_differ_between_cameras():
    """Shot k of a person is drawn per camera: the same pose in cam1 and cam3 would be a
    cross-modality cue real data do not have."""
    same = [
        syn.draw_conditions(0, pid, 1, idx).phase == syn.draw_conditions(0, pid, cam, idx).phase
        for pid in range(1, 6)
        for idx in range(1, 4)
        for cam in (2, 3, 4, 5, 6)
    ]
    assert not any(same)


@pytest.mark.parametrize(("height", "width"), [(128, 8), (16, 64)])
def test_too_narrow_or_too_short_images_are_refused(tmp_path, height, width):
    with pytest.raises(DatasetError, match="too small"):
        syn.generate(tmp_path / "out", ids=4, height=height, width=width)
    assert not (tmp_path / "out").exists()


def test_folder_dataset_reads_images_in_linked_sub_folders(tmp_path):
    from uvireid.data.fixtures import make_folder_tree

    root = make_folder_tree(tmp_path / "mine")
    other = make_folder_tree(tmp_path / "other")
    os.symlink(other / "visible" / "cam1", root / "visible" / "cam1" / "day2")
    naive = sum(
        1
        for _, _, files in os.walk(root / "visible" / "cam1", followlinks=True)
        for f in files
        if f.endswith(".png")
    )
    assert naive == 4
    ds = FolderDataset(root)
    assert (
        sum(1 for r in ds.train if ds.camera_names[r.cam] == "cam1" and r.modality == VISIBLE)
        == naive
    )


def test_one_sided_identities_are_named_even_when_only_one_has_both(tmp_path):
    root = make_sysu_tree(tmp_path / "sysu", ids=12)  # train 1,2,4,5,7,8,10,11
    keep = 1
    for pid in (2, 4, 5, 7, 8, 10, 11):  # every train id but one loses its infrared images
        for cam in (3, 6):
            shutil.rmtree(root / f"cam{cam}" / f"{pid:04d}")
    problems = check_dataset(SYSUMM01(root), official=False).problems
    assert any("train: 7 identities have images in one modality only" in p for p in problems)
    assert not any(f"only: {keep}," in p for p in problems)


def test_an_image_listed_twice_in_one_split_is_named(tmp_path):
    root = make_regdb_tree(tmp_path / "regdb", ids=8, images_per=2)
    lst = root / "idx" / "train_visible_1.txt"
    lines = lst.read_text().splitlines()
    lst.write_text("\n".join([*lines, lines[0]]) + "\n")  # one line pasted twice
    ds = DATASETS.build({"type": "regdb", "root": str(root), "split": 1})
    problems = check_dataset(ds, official=False).problems
    assert any("train: 1 image(s) are listed more than once" in p for p in problems), problems


def test_sysu_fixture_writes_infrared_cameras_single_channel(tmp_path):
    root = make_sysu_tree(tmp_path / "sysu", ids=3)
    for cam in range(1, 7):
        modes = {Image.open(p).mode for p in (root / f"cam{cam}").rglob("*.jpg")}
        assert modes == ({"L"} if cam in (3, 6) else {"RGB"}), (cam, modes)


def test_followed_links_list_each_real_folder_once_and_a_cycle_ends(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 8)).save(tmp_path / "a" / "x.png")
    os.symlink("..", tmp_path / "a" / "up")  # a cycle: a/up/a/up/...
    os.symlink(tmp_path / "a", tmp_path / "again")  # a second way into a/
    import signal

    def too_long(*_):
        raise RuntimeError("list_images did not end: the link cycle is walked forever")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(20)
    try:
        found = list_images(tmp_path, recursive=True, follow_links=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    real = {os.path.realpath(p) for p in found}
    assert real == {str((tmp_path / "a" / "x.png").resolve())}
    assert len(found) == 1


def test_fixture_images_get_brighter_towards_the_right(tmp_path):
    import random

    from uvireid.data.fixtures import write_image

    for k in range(5):
        write_image(tmp_path / f"{k}.png", random.Random(k), gray=k % 2 == 1)
        a = np.asarray(Image.open(tmp_path / f"{k}.png").convert("L"), dtype=float)
        assert a[:, -1].mean() > a[:, 0].mean() + 30  # 20 per column, 3 columns


def test_hidden_sub_folders_are_not_listed(tmp_path):
    for sub in ("cam1", "cam1/.thumbs", "cam1/.git/objects"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 8)).save(tmp_path / sub / "x.png")
    found = list_images(tmp_path, recursive=True)
    assert found == [str(tmp_path / "cam1" / "x.png")]


def test_an_official_camera_with_no_image_is_a_row_of_zeros_and_a_mismatch(tmp_path):
    test_ids = [3, 6, 9, 12]
    root = make_sysu_tree(tmp_path / "sysu", ids=12, skip=[(1, p) for p in test_ids])
    report = check_dataset(SYSUMM01(root), official=True)
    row = next(r for r in report.rows if (r.split, r.cam) == ("test", 1))
    assert (row.ids, row.images, row.official_ids, row.official_images) == (0, 0, 56, 1374)
    assert "test cam1 visible: found 0 ids, official 56 (-56)" in report.problems


def test_an_invisible_character_in_a_split_file_is_shown(tmp_path):
    """A zero-width space pasted into val_id.txt was listed as it is: the message read
    "non-integer entries (4)", naming nothing the user could see."""
    root = make_sysu_tree(tmp_path / "sysu", ids=6)
    (root / "exp" / "val_id.txt").write_text("1,2,\u200b4\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"non-integer entries \('\\u200b4'\)"):
        SYSUMM01(root)


def test_a_synthetic_folder_that_cannot_be_used_names_the_command_that_rewrites_it(syn6, tmp_path):
    """A damaged folder opened where it may not be replaced (a recipe's data.root, data
    check), or one of another generator version: the error gives the `data synth` line
    with the folder's own ids and seed (it said `data synth --out ROOT`, 500 ids)."""
    root = _damaged_copy(syn6, tmp_path / "copy")
    line = f"uvireid data synth --out {root} --ids 6 --seed 3"
    with pytest.raises(DatasetError, match=rf"cam1: \d+ of \d+ images.*{re.escape(line)}"):
        DATASETS.build({"type": "synthetic", "root": str(root)})
    old = tmp_path / "old"
    shutil.copytree(syn6, old)
    manifest = json.loads((old / syn.MANIFEST).read_text())
    (old / syn.MANIFEST).write_text(json.dumps({**manifest, "version": 2}))
    line = f"write it again with this version: uvireid data synth --out {old} --ids 6 --seed 3"
    with pytest.raises(DatasetError, match=re.escape(line)):
        DATASETS.build({"type": "synthetic", "root": str(old)})
