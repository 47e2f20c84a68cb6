"""Mutation audit OA: the embedded synthetic dataset (uvireid/data/synthetic.py).

Each test checks a documented property against an independent computation (the layout
read back from disk, PIL's quantisation tables, a fresh rendering) and kills a mutant the
module's own tests let through.
Datasets are written at the smallest size the API allows (3 ids, 32x16 images).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uvireid.data import synthetic as syn
from uvireid.errors import DatasetError
from uvireid.types import INFRARED, VISIBLE

SMALL = {"ids": 3, "seed": 0, "height": 32, "width": 16}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """3 identities at 32x16, written once for the module."""
    return syn.generate(tmp_path_factory.mktemp("oa") / "small", **SMALL)


def _ids(path: Path) -> list[int]:
    return [int(t) for t in path.read_text().strip().split(",")]


# --------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------
def test_ids_range_is_3_to_9999_and_numpy_integers_are_accepted():
    assert syn.check_params(9999, 0, 0.0) == (9999, 0, 0.0)
    assert syn.check_params(np.int64(3), 0, 1) == (3, 0, 1.0)
    assert type(syn.check_params(np.int64(3), 0, 1)[0]) is int
    for bad in (10000, 2, 0, -5):
        with pytest.raises(DatasetError, match=r"ids must be a whole number in 3\.\.9999"):
            syn.check_params(bad, 0, 0.0)


def test_images_narrower_than_16_pixels_are_refused(tmp_path):
    with pytest.raises(DatasetError, match=r"32x8 images are too small; use >= 32x16"):
        syn.generate(tmp_path / "x", ids=3, height=32, width=8)
    with pytest.raises(DatasetError, match=r"31x16 images are too small"):
        syn.generate(tmp_path / "x", ids=3, height=31, width=16)
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------
# identities, splits, cameras
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("ids", [3, 7, 12, 491])
def test_splits_partition_the_ids_in_sysu_proportions(ids):
    s = syn.split_ids(ids, seed=4)
    train, val, test = set(s["train"]), set(s["val"]), set(s["test"])
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(range(1, ids + 1)) and s["available"] == list(
        range(1, ids + 1)
    )
    assert len(test) == max(1, round(ids / 5)) and train
    assert len(val) == max(1, round(ids * 99 / 491))
    assert all(s[k] == sorted(s[k]) for k in s)


def test_the_split_follows_the_seed():
    splits = {tuple(syn.split_ids(40, seed=k)["test"]) for k in range(4)}
    assert len(splits) == 4
    assert syn.split_ids(40, seed=2) == syn.split_ids(40, seed=2)


def test_camera_counts_lie_in_images_per_cam_and_see_both_modalities():
    lo, hi = syn.IMAGES_PER_CAM
    seen = set()
    for pid in range(1, 121):
        counts = syn.camera_counts(pid, seed=0)
        assert set(counts) & set(syn.VISIBLE_CAMS) and set(counts) & set(syn.INFRARED_CAMS)
        assert all(lo <= n <= hi for n in counts.values())
        seen |= set(counts.values())
    assert seen == set(range(lo, hi + 1))  # both ends drawn: uniform in [lo, hi]


def test_camera_counts_and_conditions_follow_the_seed():
    assert [syn.camera_counts(p, 0) for p in range(1, 9)] != [
        syn.camera_counts(p, 1) for p in range(1, 9)
    ]
    assert syn.draw_conditions(0, 3, 1, 1) != syn.draw_conditions(1, 3, 1, 1)
    assert syn.draw_conditions(0, 3, 1, 1) == syn.draw_conditions(0, 3, 1, 1)


def test_permutation_cells_per_camera_and_person():
    pids = [1, 2, 3, 4, 5, 6, 7, 8]
    cells = syn.rand_perm_cells(pids, seed=0, trials=7)
    assert cells.shape == (6, 1)
    compared = 0
    for pid in pids:
        counts = syn.camera_counts(pid, 0)
        by_n: dict[int, list[np.ndarray]] = {}
        for cam in range(1, 7):
            entry = np.asarray(cells[cam - 1, 0][pid - 1, 0])
            n = counts.get(cam, 0)
            if not n:
                assert entry.size == 0
                continue
            assert entry.shape == (7, n)
            assert all(sorted(r.tolist()) == list(range(1, n + 1)) for r in entry)
            by_n.setdefault(n, []).append(entry)
        # each camera has its own permutations: two cameras with as many images differ
        for group in by_n.values():
            for a, b in zip(group, group[1:], strict=False):
                assert not np.array_equal(a, b)
                compared += 1
    assert compared > 0


# --------------------------------------------------------------------------------------
# the folder on disk
# --------------------------------------------------------------------------------------
def test_the_folder_holds_exactly_the_images_camera_counts_says(small):
    want = {}
    for pid in range(1, 4):
        for cam, n in syn.camera_counts(pid, 0).items():
            want[(cam, pid)] = n
    got = {}
    for cam in range(1, 7):
        for d in (small / f"cam{cam}").iterdir():
            names = sorted(p.name for p in d.iterdir())
            assert names == [f"{i:04d}.jpg" for i in range(1, len(names) + 1)]
            got[(cam, int(d.name))] = len(names)
            assert d.name == f"{int(d.name):04d}"
    assert got == want
    man = json.loads((small / syn.MANIFEST).read_text())
    per_cam = {f"cam{c}": sum(n for (cc, _), n in want.items() if cc == c) for c in range(1, 7)}
    assert man["counts"] == per_cam and man["n_images"] == sum(want.values())
    split = syn.split_ids(3, 0)
    assert man["n_train_ids"] == len(split["train"]) + len(split["val"])
    assert man["n_test_ids"] == len(split["test"])
    assert (man["height"], man["width"], man["ids"], man["seed"]) == (32, 16, 3, 0)


def test_id_files_are_single_unspaced_lines_including_available(small):
    split = syn.split_ids(3, 0)
    for name in ("train", "val", "test", "available"):
        text = (small / "exp" / f"{name}_id.txt").read_text()
        assert text == ",".join(map(str, split[name])) + "\n"
        assert _ids(small / "exp" / f"{name}_id.txt") == split[name]


def test_images_have_the_requested_size_and_jpeg_quality_90(small):
    path = next((small / "cam1").rglob("*.jpg"))
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (16, 32)
        pixels = np.asarray(im)
        tables = im.quantization
    assert pixels.dtype == np.uint8
    ref = Path(str(small) + "_ref.jpg")
    try:
        Image.fromarray(pixels).save(ref, quality=syn.JPEG_QUALITY)
        with Image.open(ref) as im2:
            assert im2.quantization == tables  # the manifest's jpeg_quality
    finally:
        ref.unlink(missing_ok=True)


def test_damage_counts_every_disagreement_with_the_manifest(tmp_path, small):
    man = syn.read_manifest(small)
    assert syn._damage(small, man) is None
    copy = tmp_path / "c"
    import shutil

    shutil.copytree(small, copy)
    extra = copy / "cam1" / "0001" / "0099.jpg"
    extra.parent.mkdir(exist_ok=True)
    extra.write_bytes(next(small.rglob("*.jpg")).read_bytes())
    assert "cam1" in syn._damage(copy, man)  # the counts no longer agree
    extra.unlink()
    if not any(extra.parent.iterdir()):
        extra.parent.rmdir()
    assert syn._damage(copy, man) is None
    (copy / "exp" / "test_id.txt").unlink()
    assert "test_id.txt missing" in syn._damage(copy, man)


def test_a_manifest_without_done_is_not_a_complete_dataset(tmp_path, small):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(small, copy)
    assert syn.read_manifest(copy) is not None
    (copy / syn.DONE).unlink()
    assert syn.read_manifest(copy) is None


def test_a_near_infrared_manifest_does_not_match_a_thermal_request():
    thermal = syn._params(3, 0, 32, 16, 0.0)
    nir = syn._params(3, 0, 32, 16, 0.5)
    assert "nir" not in thermal and nir["nir"] == 0.5
    assert not syn._matches(nir, thermal) and not syn._matches(thermal, nir)
    assert syn._matches(dict(thermal, nir=0.0), thermal)  # an explicit 0 is thermal
    assert syn._matches(thermal, thermal) and not syn._matches(None, thermal)


def test_a_symlinked_out_is_written_through_and_stays_a_link(tmp_path):
    target = tmp_path / "disk" / "syn"
    target.mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    got = syn.generate(link, **SMALL)
    assert link.is_symlink() and got == target.resolve()
    assert syn.read_manifest(target)["ids"] == 3


def test_replacing_leaves_no_partial_folder_beside_out(tmp_path):
    out = syn.generate(tmp_path / "ds", **SMALL)
    syn.generate(out, **dict(SMALL, seed=1))
    assert syn.read_manifest(out)["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


# --------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------
def test_scenes_of_a_seed_do_not_depend_on_what_the_process_rendered_before():
    """A worker process renders one seed after another: the scene cache must not hand
    seed 0's backgrounds to seed 1 (workers=1 and workers=2 then wrote other bytes)."""
    ident = syn.make_identity(2, seed=1)
    cond = syn.draw_conditions(1, 2, 1, 1)
    saved = dict(syn._SCENES)
    try:
        syn._SCENES.clear()
        fresh = syn.render(ident, cond, 32, 16, seed=1)
        syn._SCENES.clear()
        syn.render(ident, cond, 32, 16, seed=0)  # seed 0's scene of cam1 cached first
        after = syn.render(ident, cond, 32, 16, seed=1)
    finally:
        syn._SCENES.clear()
        syn._SCENES.update(saved)
    assert np.array_equal(fresh, after)


def test_visible_images_are_rgb_in_order_and_infrared_ones_grey():
    """A person dressed all in pure red, lit without noise, blur or cast: red dominates
    the torso; the same shot in infrared repeats one channel."""
    ident = syn.make_identity(5, seed=0)
    red = (1.0, 0.0, 0.0)
    ident = dataclasses.replace(
        ident,
        colors=syn.Colors(red, red, red, red, red, red, red, red, red),
        shape=dataclasses.replace(ident.shape, backpack=False, handbag=0),
    )
    cond = dataclasses.replace(
        syn.draw_conditions(0, 5, 1, 1),
        view=syn.FRONT,
        occlusion=0,
        blur=0.0,
        noise=0.0,
        dx=0.0,
        dy=0.0,
        scale=1.0,
        cast=(1.0, 1.0, 1.0),
        brightness=1.0,
    )
    vis = syn.render(ident, cond, 64, 32, modality=VISIBLE).astype(int)
    torso = vis[22:30, 13:19]
    assert (torso[..., 0] > torso[..., 2] + 60).all() and (torso[..., 0] > torso[..., 1] + 60).all()
    ir = syn.render(ident, cond, 64, 32, modality=INFRARED)
    assert ir.shape == (64, 32, 3) and ir.dtype == np.uint8
    assert np.array_equal(ir[..., 0], ir[..., 1]) and np.array_equal(ir[..., 0], ir[..., 2])


# --------------------------------------------------------------------------------------
# argument and folder edges (each failed before audit OA's fixes)
# --------------------------------------------------------------------------------------
def test_a_numpy_integer_image_size_is_accepted_like_a_numpy_integer_ids(tmp_path):
    """Numpy integers are sizes as they are ids: the manifest records plain ints (a numpy
    height used to render every image, then fail writing the manifest)."""
    out = syn.generate(tmp_path / "np", ids=3, seed=0, height=np.int64(32), width=np.int64(16))
    assert syn.read_manifest(out)["height"] == 32


@pytest.mark.parametrize(
    "kw", [{"workers": 0}, {"height": "64"}, {"height": 32.5}], ids=["workers0", "str", "float"]
)
def test_bad_size_or_workers_is_a_dataset_error_naming_the_keyword(tmp_path, kw):
    """workers=0, height="64" or 32.5: a DatasetError naming the keyword (they raised
    ZeroDivisionError and TypeError), and nothing is left beside the folder."""
    key = next(iter(kw))
    with pytest.raises(DatasetError, match=key):
        syn.generate(tmp_path / "x", **{**SMALL, **kw})
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "x"])


def test_a_damaged_folder_holding_user_files_is_refused_as_damaged_and_kept(tmp_path, caplog):
    """A complete folder that lost an image and also holds a user's file is refused as
    damaged (not "with other settings": it has the same ones) before anything in it
    changes: the user's file and DONE stay."""
    out = syn.generate(tmp_path / "ds", **SMALL)
    (out / "notes.txt").write_text("mine")
    next((out / "cam1").rglob("*.jpg")).unlink()
    with caplog.at_level(logging.WARNING), pytest.raises(DatasetError) as err:
        syn.generate(out, **SMALL)
    assert (out / "notes.txt").read_text() == "mine"
    assert "other settings" not in str(err.value), str(err.value)
    assert (out / syn.DONE).is_file()  # a refused call changes nothing


def test_dead_partials_of_an_out_whose_name_has_glob_characters_are_removed(tmp_path):
    """A dead generation's partial folder of ``set[1]`` is removed: the name is matched
    literally (an unescaped glob matched ``.set1.tmp-...`` only, and every killed
    generation's images stayed on disk)."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    partial = tmp_path / f".set[1].tmp-{syn._host()}-{dead}-1"
    (partial / "cam1").mkdir(parents=True)
    syn.generate(tmp_path / "set[1]", **SMALL)
    assert not partial.exists()


# --------------------------------------------------------------------------------------
# a complete folder that lost images
# --------------------------------------------------------------------------------------
def test_a_folder_that_lost_an_image_is_refused_without_replace_and_rewritten_with_it(tmp_path):
    out = syn.generate(tmp_path / "ds", **SMALL)
    lost = next((out / "cam3").rglob("*.jpg"))
    want = lost.read_bytes()
    lost.unlink()
    with pytest.raises(DatasetError, match=r"lost images since it was written \(cam3: "):
        syn.generate(out, **SMALL, replace=False)
    assert (out / syn.DONE).is_file() and not lost.exists()  # refused: left as it was
    syn.generate(out, **SMALL)  # replace=True (the cache, `data synth`): written again
    assert lost.read_bytes() == want and syn._damage(out, syn.read_manifest(out)) is None


def test_a_damaged_folder_is_not_complete_while_it_is_written_again(tmp_path, monkeypatch):
    """The rewrite of a damaged folder first takes its DONE away: killed while rendering,
    the folder is never reused (or read) as a complete dataset."""
    out = syn.generate(tmp_path / "ds", **SMALL)
    next((out / "cam1").rglob("*.jpg")).unlink()

    def killed(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(syn, "_render_people", killed)
    with pytest.raises(KeyboardInterrupt):
        syn.generate(out, **SMALL, workers=1)
    assert syn.read_manifest(out) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no partial left


# --------------------------------------------------------------------------------------
# warnings, cache names, reading a folder of another size
# --------------------------------------------------------------------------------------
def test_a_single_identity_validation_split_is_warned(tmp_path, caplog):
    assert len(syn.split_ids(3, 0)["val"]) == 1
    with caplog.at_level(logging.WARNING, logger="uvireid.data.synthetic"):
        syn.generate(tmp_path / "ds", **SMALL)
    assert "validation split holds one identity" in caplog.text


def test_a_thermal_cache_folder_is_named_as_documented(tmp_path):
    root = syn.ensure_synthetic(tmp_path, ids=3, seed=0)
    assert root == tmp_path / f"synthetic-v{syn.GENERATOR_VERSION}-ids3-seed0-128x64"
    assert syn.read_manifest(root)["height"] == 128


def test_the_registered_dataset_reads_a_folder_at_its_own_size(small):
    from uvireid.registry import DATASETS

    before = (small / syn.MANIFEST).read_text()
    ds = DATASETS.build({"type": "synthetic", "root": str(small)})
    assert ds.meta()["generator"]["height"] == 32 and ds.meta()["generator"]["width"] == 16
    assert (small / syn.MANIFEST).read_text() == before
    with Image.open(ds.train[0].path) as im:
        assert im.size == (16, 32)


# --------------------------------------------------------------------------------------
# publishing the folder
# --------------------------------------------------------------------------------------
def test_a_folder_with_more_images_than_rendered_is_never_published(tmp_path, monkeypatch):
    """Another process writing into the folder being rendered: any disagreement between
    the images on disk and those rendered stops the generation (not only missing ones)."""
    real = syn._render_people

    def also_a_stranger(args):
        counts = real(args)
        root = Path(args[0])
        src = next(root.rglob("*.jpg"))
        (src.parent / "9999.jpg").write_bytes(src.read_bytes())
        return counts

    monkeypatch.setattr(syn, "_render_people", also_a_stranger)
    with pytest.raises(DatasetError, match=r"holds \d+ of the \d+ images rendered"):
        syn.generate(tmp_path / "ds", **SMALL, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_another_process_completed_meanwhile_is_kept(tmp_path, small, monkeypatch):
    """Two processes write the same dataset: the second to finish keeps the first's folder
    (which may be in use) instead of swapping its own in."""
    import shutil

    out = tmp_path / "ds"
    real = syn._render_people
    seen = {}

    def the_other_process_finishes_first(args):
        if not out.exists():
            shutil.copytree(small, out)
            seen["ino"] = out.stat().st_ino
        return real(args)

    monkeypatch.setattr(syn, "_render_people", the_other_process_finishes_first)
    assert syn.generate(out, **SMALL, workers=1) == out
    assert out.stat().st_ino == seen["ino"]  # the other process's folder, not a new one
    assert syn.read_manifest(out) == syn.read_manifest(small)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_scene_x_is_the_crops_offset_as_a_fraction_of_the_free_width():
    """Conditions.scene_x places the crop in the camera's scene, 3 crops wide: 0 is its
    left end, 1 its right end (no clutter drawn for this clutter seed)."""
    seed = next(s for s in range(100) if np.random.default_rng(s).integers(0, 2) == 0)
    cv = syn._Canvas(32, 16)
    rgb, ir = syn._scene(0, 1, 32, 16)
    assert rgb.shape == (32, 48, 3) and ir.shape == (32, 48)
    for x, lo in ((0.0, 0), (0.5, 16), (1.0, 32)):
        cond = dataclasses.replace(syn.draw_conditions(0, 1, 1, 1), scene_x=x, clutter_seed=seed)
        assert np.array_equal(syn._background(0, cond, cv, False), rgb[:, lo : lo + 16])
        assert np.array_equal(syn._background(0, cond, cv, True), ir[:, lo : lo + 16])


def test_the_manifest_counts_the_ids_of_the_split_written(tmp_path, monkeypatch):
    """At 3 ids test and validation hold one id each; a split with two test ids and no
    validation id tells n_test_ids from the validation count."""
    split = {"train": [1], "val": [], "test": [2, 3], "available": [1, 2, 3]}
    monkeypatch.setattr(syn, "split_ids", lambda ids, seed=0: split)
    out = syn.generate(tmp_path / "ds", **SMALL)
    man = syn.read_manifest(out)
    assert (man["n_train_ids"], man["n_test_ids"]) == (1, 2)
    assert _ids(out / "exp" / "test_id.txt") == [2, 3]


def test_near_infrared_shares_that_differ_in_any_digit_get_their_own_cache_folders(
    tmp_path, monkeypatch
):
    """The cache folder names nir with every digit: 0.1234567 and 0.1234568 (one folder
    under '%g', each call replacing the other's dataset) are two folders, and 0.5 and 1
    keep the names they always had."""
    roots = []
    monkeypatch.setattr(syn, "generate", lambda root, **kw: roots.append(root) or root)
    for nir in (0.1234567, 0.1234568, 0.5, 1):
        syn.ensure_synthetic(tmp_path, ids=3, nir=nir)
    assert len(set(roots)) == 4
    assert roots[2].name.endswith("-nir0.5") and roots[3].name.endswith("-nir1")
