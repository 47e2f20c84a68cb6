"""The embedded synthetic dataset: layout, determinism, caching, and its modality gap."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from uvireid.data import synthetic as syn
from uvireid.errors import DatasetError
from uvireid.registry import DATASETS
from uvireid.types import INFRARED, VISIBLE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, float]:
    """12 identities generated once for the module, with the time it took."""
    out = tmp_path_factory.mktemp("syn") / "tiny"
    t0 = time.perf_counter()
    syn.generate(out, ids=12, seed=0)
    return out, time.perf_counter() - t0


def _id_line(path: Path) -> list[int]:
    text = path.read_text()
    assert text.count("\n") == 1 and text.endswith("\n"), "one line"
    line = text.strip()
    return [int(t) for t in line.split(",")] if line else []


def test_tiny_generation_is_fast(tiny):
    _, seconds = tiny
    assert seconds < 10


def test_generate_writes_the_sysu_mm01_raw_layout(tiny):
    root, _ = tiny
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        "DONE", "cam1", "cam2", "cam3", "cam4", "cam5", "cam6", "exp", "manifest.json"
    ]  # fmt: skip
    exp = root / "exp"
    for name in ("train_id.txt", "val_id.txt", "test_id.txt", "available_id.txt"):
        text = (exp / name).read_text().strip()
        assert not any(t.startswith("0") for t in text.split(",") if t), "no zero padding"
    train, val, test = (_id_line(exp / f"{s}_id.txt") for s in ("train", "val", "test"))
    assert _id_line(exp / "available_id.txt") == list(range(1, 13))
    assert sorted(train + val + test) == list(range(1, 13))
    assert len(test) == round(12 / 5)
    present = {}
    for cam in range(1, 7):
        for d in (root / f"cam{cam}").iterdir():
            assert len(d.name) == 4 and d.name.isdigit()
            names = sorted(p.name for p in d.iterdir())
            assert names == [f"{i:04d}.jpg" for i in range(1, len(names) + 1)]  # 1-based
            present.setdefault(int(d.name), set()).add(cam)
    assert sorted(present) == list(range(1, 13))
    for cams in present.values():  # every person is seen in both modalities ...
        assert cams & {1, 2, 4, 5} and cams & {3, 6}
    assert any(len(c) < 6 for c in present.values())  # ... but not by every camera
    # mangye16 parses camera and pid by position from the end of the path
    p = str(next((root / "cam3").rglob("*.jpg")))
    assert p[-15] == "3" and p[-13:-9].isdigit()


def test_manifest_is_written_with_counts(tiny):
    root, _ = tiny
    man = json.loads((root / "manifest.json").read_text())
    assert man["version"] == syn.GENERATOR_VERSION and man["seed"] == 0 and man["ids"] == 12
    n = sum(1 for _ in root.rglob("*.jpg"))
    assert man["n_images"] == n == sum(man["counts"].values())
    assert syn.read_manifest(root) == man


def test_images_are_128x64_and_infrared_ones_are_grey(tiny):
    from PIL import Image

    root, _ = tiny
    vis = np.asarray(Image.open(next((root / "cam1").rglob("*.jpg"))))
    ir = np.asarray(Image.open(next((root / "cam6").rglob("*.jpg")))).astype(int)
    assert vis.shape == ir.shape == (128, 64, 3)
    assert np.abs(ir[..., 0] - ir[..., 1]).max() <= 3  # grey up to JPEG chroma rounding
    assert np.abs(vis[..., 0].astype(int) - vis[..., 2]).max() > 30


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, tiny):
    root, _ = tiny
    again = syn.generate(tmp_path / "again", ids=12, seed=0)
    other = syn.generate(tmp_path / "other", ids=12, seed=1)
    files = sorted(p.relative_to(root) for p in root.rglob("*.jpg"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.jpg"))
    for rel in files[:: max(1, len(files) // 15)]:
        assert (root / rel).read_bytes() == (again / rel).read_bytes()
    for name in ("train_id.txt", "test_id.txt"):
        assert (root / "exp" / name).read_bytes() == (again / "exp" / name).read_bytes()
    common = [r for r in files if (other / r).exists()]
    assert common and all((root / r).read_bytes() != (other / r).read_bytes() for r in common[:5])


def test_render_is_deterministic_for_a_seed():
    ident = syn.make_identity(3, seed=5)
    cond = syn.draw_conditions(5, 3, 1, 2)
    a = syn.render(ident, cond, seed=5)
    assert np.array_equal(a, syn.render(syn.make_identity(3, seed=5), cond, seed=5))
    assert not np.array_equal(a, syn.render(syn.make_identity(3, seed=6), cond, seed=5))


def test_infrared_images_do_not_depend_on_clothing_colour():
    ident = syn.make_identity(7, seed=0)
    recoloured = dataclasses.replace(ident, colors=syn.make_identity(8, seed=0).colors)
    assert recoloured.colors != ident.colors
    for cam, idx in ((3, 1), (6, 2)):
        cond = syn.draw_conditions(0, 7, cam, idx)
        ir_a = syn.render(ident, cond)
        assert np.array_equal(ir_a, syn.render(recoloured, cond))
        # the same shot rendered in visible light does change with the colours
        vis_a = syn.render(ident, cond, modality=VISIBLE)
        assert not np.array_equal(vis_a, syn.render(recoloured, cond, modality=VISIBLE))


def test_infrared_depends_on_emissivity_and_shape():
    ident = syn.make_identity(7, seed=0)
    cond = syn.draw_conditions(0, 7, 3, 1)
    ir = syn.render(ident, cond)
    warmer = dataclasses.replace(ident, thermal=dataclasses.replace(ident.thermal, upper=0.3))
    assert not np.array_equal(ir, syn.render(warmer, cond))
    other = dataclasses.replace(ident, shape=syn.make_identity(9, seed=0).shape)
    assert not np.array_equal(ir, syn.render(other, cond))


@pytest.mark.parametrize("view", [syn.FRONT, syn.BACK, syn.SIDE])
def test_every_view_renders_a_person(view):
    ident = syn.make_identity(4, seed=0)
    cond = dataclasses.replace(syn.draw_conditions(0, 4, 1, 1), view=view, occlusion=0)
    empty = dataclasses.replace(cond, scale=1e-3, dx=1000.0)  # person moved out of frame
    for mod in (VISIBLE, INFRARED):
        img = syn.render(ident, cond, modality=mod)
        assert img.shape == (128, 64, 3) and img.dtype == np.uint8
        diff = np.abs(img.astype(int) - syn.render(ident, empty, modality=mod)).sum(-1)
        assert (diff > 30).mean() > 0.1  # the person covers a good part of the crop


def test_half_written_folder_is_regenerated(tmp_path):
    out = syn.generate(tmp_path / "ds", ids=4, seed=0)
    (out / syn.DONE).unlink()
    (out / "cam1" / "junk.txt").write_text("left over")
    syn.generate(out, ids=4, seed=0)
    assert (out / syn.DONE).exists() and not (out / "cam1" / "junk.txt").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_complete_folder_is_reused_and_other_parameters_replace_it(tmp_path):
    out = syn.generate(tmp_path / "ds", ids=4, seed=0)
    stamp = (out / syn.DONE).stat().st_mtime_ns
    syn.generate(out, ids=4, seed=0)
    assert (out / syn.DONE).stat().st_mtime_ns == stamp
    syn.generate(out, ids=5, seed=0)
    assert syn.read_manifest(out)["ids"] == 5


def test_replacing_never_deletes_files_the_generator_did_not_write(tmp_path):
    """Audit F (session 16): `uvireid data synth` into its own folder with other settings
    deleted the folder, the user's notes and runs in it included, and printed only
    "written"."""
    out = syn.generate(tmp_path / "ds", ids=4, seed=0)
    (out / "my_notes.txt").write_text("keep me")
    (out / "runs").mkdir()
    with pytest.raises(
        DatasetError, match=r"also files uvireid did not write \(my_notes.txt, runs\)"
    ):
        syn.generate(out, ids=5, seed=0, replace=True)
    assert (out / "my_notes.txt").read_text() == "keep me" and (out / "runs").is_dir()
    assert syn.read_manifest(out)["ids"] == 4


def test_refuses_to_overwrite_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match="not a uvireid synthetic dataset"):
        syn.generate(tmp_path / "mine", ids=4)
    assert (tmp_path / "mine" / "thesis.tex").exists()


def test_bad_parameters_are_refused(tmp_path):
    for kw, message in [
        ({"ids": 2}, "ids must be a whole number in 3..9999"),
        ({"ids": "12"}, "ids must be a whole number in 3..9999 .*, got '12'"),
        ({"ids": 12.5}, "got 12.5"),
        ({"nir": "0.5"}, "nir must be a number in 0..1, got '0.5'"),
        ({"nir": -0.1}, "nir must be a number in 0..1"),
        ({"seed": 1.5}, "seed must be an integer"),
    ]:
        with pytest.raises(DatasetError, match=message):
            syn.generate(tmp_path / "x", **kw)
        with pytest.raises(DatasetError, match=message):
            syn.SyntheticSYSU(root=str(tmp_path / "y"), **kw)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_ensure_synthetic_caches_under_uvireid_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UVIREID_CACHE", str(tmp_path / "cache"))
    root = syn.ensure_synthetic(ids=4, seed=2)
    assert root.parent == tmp_path / "cache" and "ids4-seed2" in root.name
    stamp = (root / syn.DONE).stat().st_mtime_ns
    assert syn.ensure_synthetic(ids=4, seed=2) == root
    assert (root / syn.DONE).stat().st_mtime_ns == stamp
    assert syn.ensure_synthetic(tmp_path / "elsewhere", ids=4, seed=2).parent == (
        tmp_path / "elsewhere"
    )


def test_default_split_is_400_train_and_100_test_ids_like_sysu():
    split = syn.split_ids(syn.DEFAULT_IDS)
    assert len(split["train"]) + len(split["val"]) == 400 and len(split["test"]) == 100
    assert 0 < len(split["val"]) < len(split["train"])
    assert split == syn.split_ids(syn.DEFAULT_IDS)


def test_people_do_not_depend_on_the_dataset_size():
    assert syn.make_identity(5, seed=0) == syn.make_identity(5, seed=0)
    assert syn.camera_counts(5, seed=0) == syn.camera_counts(5, seed=0)


def test_registered_dataset_reads_like_sysu_mm01(tiny):
    root, _ = tiny
    ds = DATASETS.build({"type": "synthetic", "root": str(root), "ids": 12})
    test_ids = _id_line(root / "exp" / "test_id.txt")
    assert sorted({r.pid for r in ds.test}) == test_ids
    assert not {r.pid for r in ds.train} & set(test_ids)
    assert {(r.cam in (3, 6), r.modality == INFRARED) for r in ds.train + ds.test} == {
        (True, True),
        (False, False),
    }
    assert "sysu-all" in ds.protocols
    assert ds.meta()["generator"]["ids"] == 12
    assert (
        ds.fingerprint()
        == DATASETS.build({"type": "synthetic", "root": str(root), "ids": 12}).fingerprint()
    )
    assert os.path.samefile(ds.root, root)


def test_opening_a_root_without_ids_keeps_the_dataset_that_is_there(tiny):
    root, _ = tiny
    before = (root / "manifest.json").read_text()
    ds = DATASETS.build({"type": "synthetic", "root": str(root)})
    assert ds.meta()["generator"]["ids"] == 12 != syn.DEFAULT_IDS
    assert (root / "manifest.json").read_text() == before  # not regenerated


def _torso_means(nir: float, people: range) -> tuple[np.ndarray, np.ndarray]:
    """Mean infrared intensity and mean visible luma of the same torso box, per person,
    in one indoor shot each (the infrared camera 3 looks into camera 2's room)."""
    ir, vis = [], []
    for pid in people:
        ident = syn.make_identity(pid, seed=0)
        cond = syn.draw_conditions(0, pid, 3, 1)
        a = syn.render(ident, cond, nir=nir)[40:60, 24:40, 0].astype(float)
        v = syn.render(ident, cond, modality=VISIBLE)[40:60, 24:40].astype(float)
        ir.append(a.mean())
        vis.append((0.299 * v[..., 0] + 0.587 * v[..., 1] + 0.114 * v[..., 2]).mean())
    return np.array(ir), np.array(vis)


def test_near_infrared_share_makes_infrared_follow_visible_brightness():
    """nir=0 (the default) is the thermal look: the infrared torso's brightness says
    nothing of the visible one; nir=0.7 makes it follow it (correlation over 40 people)."""
    people = range(40)
    thermal, vis = _torso_means(0.0, people)
    nir, _ = _torso_means(0.7, people)
    r_thermal = np.corrcoef(thermal, vis)[0, 1]
    r_nir = np.corrcoef(nir, vis)[0, 1]
    assert abs(r_thermal) < 0.35 and r_nir > 0.6, (r_thermal, r_nir)
    ident, cond = syn.make_identity(7, seed=0), syn.draw_conditions(0, 7, 3, 1)
    assert np.array_equal(syn.render(ident, cond), syn.render(ident, cond, nir=0.0))
    # near-infrared images read the colours, and a recoloured person changes them
    recoloured = dataclasses.replace(ident, colors=syn.make_identity(8, seed=0).colors)
    assert not np.array_equal(
        syn.render(ident, cond, nir=0.5), syn.render(recoloured, cond, nir=0.5)
    )


def test_near_infrared_datasets_live_apart_and_record_their_share(tmp_path, monkeypatch):
    monkeypatch.setenv("UVIREID_CACHE", str(tmp_path / "cache"))
    thermal = syn.ensure_synthetic(ids=4, seed=2)
    nir = syn.ensure_synthetic(ids=4, seed=2, nir=0.5)
    assert nir != thermal and nir.name.endswith("-nir0.5")
    assert "nir" not in syn.read_manifest(thermal) and syn.read_manifest(nir)["nir"] == 0.5
    ds = DATASETS.build({"type": "synthetic", "root": str(nir)})
    assert ds.fingerprint()["generator"]["nir"] == 0.5
    with pytest.raises(DatasetError, match="nir must be a number in 0..1, got 1.5"):
        syn.generate(tmp_path / "y", ids=4, nir=1.5)


def test_a_script_without_a_main_guard_still_gets_its_dataset(tmp_path):
    """Rendering processes are spawned, and spawning imports the calling script: without
    `if __name__ == "__main__":` its body ran again in every worker and the pool broke.
    The workers now leave at once and the parent renders alone, with a warning."""
    import subprocess
    import sys

    script = tmp_path / "noguard.py"
    script.write_text(
        "import sys\n"
        "from uvireid.data.synthetic import generate\n"
        "print('body', flush=True)\n"
        "generate(sys.argv[1], ids=6, seed=0, workers=2)\n"
        "print('done', flush=True)\n"
    )
    out = tmp_path / "syn"
    run = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[-1] == "done"
    assert "rendering in this process instead" in run.stderr
    assert "Traceback" not in run.stderr
    same = syn.generate(tmp_path / "again", ids=6, seed=0, workers=1)
    files = sorted(p.relative_to(out) for p in out.rglob("*.jpg"))
    assert files == sorted(p.relative_to(same) for p in same.rglob("*.jpg"))


def test_a_recipe_root_holding_another_synthetic_dataset_is_not_replaced(tmp_path):
    out = syn.generate(tmp_path / "mine", ids=4, seed=0)
    stamp = (out / syn.DONE).stat().st_mtime_ns
    with pytest.raises(DatasetError, match=r"holds another synthetic dataset \(ids=4.*data\.ids=4"):
        DATASETS.build({"type": "synthetic", "root": str(out), "ids": 5})
    assert (out / syn.DONE).stat().st_mtime_ns == stamp and syn.read_manifest(out)["ids"] == 4
    assert DATASETS.build({"type": "synthetic", "root": str(out), "ids": 4}).meta()


@pytest.mark.parametrize("seed", [-1, 2**32, True])
def test_seeds_outside_what_numpy_accepts_are_refused(tmp_path, seed):
    with pytest.raises(DatasetError, match=r"seed must be an integer in 0\.\.2\*\*32-1"):
        syn.generate(tmp_path / "x", ids=4, seed=seed)
    assert not (tmp_path / "x").exists()


def test_a_single_identity_test_split_is_warned(tmp_path, caplog):
    """Below ten identities the test split holds one person: R1 is 100 % whatever the
    features, which the generator now says."""
    import logging

    with caplog.at_level(logging.WARNING):
        out = syn.generate(tmp_path / "ds", ids=4, seed=0)
    assert "test split holds one identity" in caplog.text
    assert (out / "exp" / "test_id.txt").read_text().strip().count(",") == 0


def test_a_killed_generations_partial_folder_is_removed_by_the_next(tmp_path):
    """Audit L (session 16): a kill while rendering left .<out>.tmp-<pid>-<ns> beside
    --out for good, one more for every kill."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    host = syn._host()
    partial = tmp_path / f".ds.tmp-{host}-{dead}-123"
    (partial / "cam1").mkdir(parents=True)
    alive = tmp_path / f".ds.tmp-{host}-{os.getpid()}-456"  # another process rendering now
    alive.mkdir()
    # another node of a cluster sharing the cache: its pid means nothing here (audit Q:
    # deleting it broke the dataset that node was writing)
    other_node = tmp_path / f".ds.tmp-othernode-{dead}-789"
    other_node.mkdir()
    syn.generate(tmp_path / "ds", ids=4, seed=0)
    assert not partial.exists() and alive.exists() and other_node.exists()


def test_two_rendering_processes_write_the_images_one_writes(tmp_path):
    """Jobs of a few people each (so a stop cancels the rest at once) render the same
    dataset as one process does, byte for byte."""
    two = syn.generate(tmp_path / "two", ids=12, seed=3, workers=2)
    one = syn.generate(tmp_path / "one", ids=12, seed=3, workers=1)
    files = sorted(p.relative_to(one) for p in one.rglob("*.jpg"))
    assert files == sorted(p.relative_to(two) for p in two.rglob("*.jpg")) and files
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


@pytest.mark.slow
def test_sigterm_to_the_generator_alone_stops_it_within_seconds(tmp_path):
    """Audit AV: `kill PID` (docker stop, a scheduler) reached the parent only, which
    then waited for each worker's whole share (107 s at 500 ids) before stopping."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvireid",
            "data",
            "synth",
            "--out",
            str(tmp_path / "s"),
            "--ids",
            "300",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not any((tmp_path).glob(".s*/cam1/*")) and time.time() < deadline:
        time.sleep(0.2)  # rendering has started
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 20, err[-1500:]
    assert proc.returncode == 143, err[-1500:]
    assert err.count("Traceback") == 0, err[-1500:]
    # the jobs under way finished before the folder was removed (audit BK: workers left
    # running re-created it, 462 images behind)
    assert sorted(p.name for p in tmp_path.glob(".s.tmp-*")) == []


def test_the_fix_hint_of_a_thermal_folder_is_an_override_that_works(tmp_path):
    """A thermal folder's manifest leaves nir out: the refusal printed 'data.nir=None',
    an override that is itself refused (audit EB)."""
    import re

    import yaml

    root = syn.generate(tmp_path / "synth", ids=3, seed=0)  # nir 0, `data synth`'s default
    with pytest.raises(DatasetError) as err:
        syn.generate(root, ids=4, seed=0, nir=0.5, replace=False)
    msg = str(err.value)
    assert "None" not in msg, msg
    fix = dict(re.findall(r"data\.(\w+)=(\S+)", msg.split("Fix:")[1]))
    assert fix == {"ids": "3", "nir": "0.0"}, fix
    kw = {k: yaml.safe_load(v) for k, v in fix.items()}
    assert syn.generate(root, seed=0, replace=False, **kw) == root


def test_a_near_infrared_folder_is_not_reused_for_a_thermal_request(tmp_path):
    root = syn.generate(tmp_path / "synth", ids=3, seed=0, nir=0.5)
    with pytest.raises(DatasetError, match=r"data\.nir=0\.5"):
        syn.generate(root, ids=3, seed=0, nir=0.0, replace=False)


def test_the_official_permutations_cover_every_folder_with_permutations_of_its_images(tiny):
    """``exp/rand_perm_cam.mat`` as the dataset authors' file: per camera and person, rows
    that are permutations of the 1-based indices of the images in that folder, counted on
    disk, and nothing for a person a camera did not see."""
    import scipy.io

    root, _ = tiny
    cells = scipy.io.loadmat(root / "exp" / "rand_perm_cam.mat")["rand_perm_cam"]
    assert cells.shape == (6, 1)
    for cam in range(1, 7):
        per_pid = cells[cam - 1, 0].reshape(-1)
        for pid in range(1, 13):
            folder = root / f"cam{cam}" / f"{pid:04d}"
            n = len(list(folder.glob("*.jpg"))) if folder.is_dir() else 0
            entry = np.asarray(per_pid[pid - 1]) if pid <= len(per_pid) else np.zeros(0)
            if n == 0:
                assert entry.size == 0, (cam, pid)
                continue
            assert entry.shape == (syn.RAND_PERM_TRIALS, n), (cam, pid)
            for row in entry:
                assert sorted(row.tolist()) == list(range(1, n + 1))
            assert len({tuple(r) for r in entry}) > 1 or n == 1  # the trials differ


@pytest.mark.parametrize("mode, cams", [("all", (1, 2, 4, 5)), ("indoor", (1, 2))])
@pytest.mark.parametrize("shot, n_shot", [("single", 1), ("multi", 10)])
def test_the_official_sampler_runs_on_the_synthetic_dataset(tiny, mode, cams, shot, n_shot):
    """The gallery of trial t is the images the file names in row t, read here straight
    from the .mat: cameras in order, identities ascending, the first 1 or 10 entries."""
    import scipy.io

    from uvireid.evaluation import sysu_gallery_indices
    from uvireid.features import Features

    root, _ = tiny
    ds = DATASETS.build({"type": "synthetic", "root": str(root), "ids": 12})
    recs = ds.test
    feats = Features(
        feats=np.random.default_rng(0).normal(size=(len(recs), 4)).astype(np.float32),
        pids=np.array([r.pid for r in recs]),
        cams=np.array([r.cam for r in recs]),
        modality=np.array([r.modality for r in recs]),
        paths=np.array([str(Path(r.path).relative_to(root)) for r in recs]),
    )
    perm_file = root / "exp" / "rand_perm_cam.mat"
    cells = scipy.io.loadmat(perm_file)["rand_perm_cam"]
    test_ids = _id_line(root / "exp" / "test_id.txt")
    for trial in (0, 3, 9):
        want = []
        for cam in cams:
            for pid in test_ids:
                entry = np.asarray(cells[cam - 1, 0].reshape(-1)[pid - 1])
                if entry.size:
                    want += [f"cam{cam}/{pid:04d}/{i:04d}.jpg" for i in entry[trial, :n_shot]]
        got = sysu_gallery_indices(feats, mode, trial, shot, "official", perm_file)
        assert [Path(p).as_posix() for p in feats.paths[got]] == want


def test_a_folder_written_before_the_permutations_gets_them_on_reuse(tmp_path):
    """A complete folder without ``exp/rand_perm_cam.mat`` (written by an earlier version)
    is reused, and gets the file: the same permutations as a new folder's, no new render."""
    from uvireid.evaluation import load_rand_perm

    out = tmp_path / "s"
    syn.generate(out, ids=6, seed=2)
    perm = out / "exp" / "rand_perm_cam.mat"
    first = load_rand_perm(perm)
    perm.unlink()
    stamp = (out / "cam1").stat().st_mtime_ns, (out / "manifest.json").read_text()
    syn.generate(out, ids=6, seed=2)
    assert ((out / "cam1").stat().st_mtime_ns, (out / "manifest.json").read_text()) == stamp
    again = load_rand_perm(perm)
    assert again.keys() == first.keys()
    assert all(np.array_equal(again[k], first[k]) for k in first)
    # the first people of a larger dataset have the same permutations
    larger = syn.rand_perm_cells(list(range(1, 10)), seed=2)
    for (cam, pid), arr in first.items():
        assert np.array_equal(np.asarray(larger[cam - 1, 0][pid - 1, 0]), arr)
