from __future__ import annotations

import shutil

import pytest

from uvireid.cli import main
from uvireid.data import SYSUMM01
from uvireid.data.check import OFFICIAL_FIGURES, Figure, check_dataset, format_report


def _drop_identity(root, pid: int) -> None:
    for cam in range(1, 7):
        shutil.rmtree(root / f"cam{cam}" / f"{pid:04d}", ignore_errors=True)


def test_check_consistent_fixture_passes_without_official_figures(sysu_root, capsys):
    assert main(["data", "check", str(sysu_root), "--dataset", "sysu", "--official", "false"]) == 0
    out = capsys.readouterr().out
    assert "not compared" in out and "OK: the counts are internally consistent." in out
    assert "test   cam3    infrared    4       8" in out


def test_check_names_a_missing_identity_and_the_expected_count(sysu_root, capsys):
    _drop_identity(sysu_root, 6)
    rc = main(["data", "check", str(sysu_root), "--dataset", "sysu", "--official", "false"])
    assert rc == 1
    out = capsys.readouterr().out
    assert "CHECK FAILED: 1 problem(s)" in out
    assert (
        "test: 1 identity listed in exp/test_id.txt has no image in any camera: "
        "missing identity 6; expected 4 identities with images, found 3"
    ) in out


def test_check_reports_official_mismatches_loudly(sysu_root, capsys):
    assert main(["data", "check", str(sysu_root), "--dataset", "sysu"]) == 1
    out = capsys.readouterr().out
    assert "official figures from:" in out and "rand_perm_cam.mat" in out
    assert "train all cameras both modalities: found 8 ids, official 395 (-387)" in out
    assert "test cam3 infrared: found 8 images, official 1,883 (-1,875)" in out
    assert "MISMATCH" in out and "CHECK FAILED" in out


def test_check_passes_when_counts_equal_the_figures(sysu_root):
    figures = [
        Figure("sysu", "train", None, None, 8, 96, "fixture"),
        Figure("sysu", "test", "infrared", 3, 4, 8, "fixture"),
        Figure("sysu", "test", "visible", None, 4, 32, "fixture"),
    ]
    report = check_dataset(SYSUMM01(sysu_root), figures=figures)
    assert report.ok, report.problems
    cam3 = next(r for r in report.rows if (r.split, r.cam) == ("test", 3))
    assert (cam3.official_ids, cam3.official_images) == (4, 8)
    assert "OK: the counts match the official figures." in format_report(report)


def test_check_one_camera_short_of_an_identity_is_a_camera_mismatch(sysu_root):
    shutil.rmtree(sysu_root / "cam3" / "0006")
    figures = [Figure("sysu", "test", "infrared", 3, 4, 8, "fixture")]
    report = check_dataset(SYSUMM01(sysu_root), figures=figures)
    assert report.problems == [
        "test cam3 infrared: found 3 ids, official 4 (-1)",
        "test cam3 infrared: found 6 images, official 8 (-2)",
    ]


def test_check_flags_split_files_sharing_identities(sysu_root):
    (sysu_root / "exp" / "val_id.txt").write_text("5,11,12\n")
    report = check_dataset(SYSUMM01(sysu_root), official=False)
    assert any(
        "exp/train_id.txt + exp/val_id.txt (train) and exp/test_id.txt (test) share 1 "
        "identities: 12" in p
        for p in report.problems
    )


def test_check_flags_a_split_without_one_modality(sysu_root):
    shutil.rmtree(sysu_root / "cam3")
    shutil.rmtree(sysu_root / "cam6")
    report = check_dataset(SYSUMM01(sysu_root, verify=False), official=False)
    assert "train has no infrared images; expected both modalities in every split" in (
        report.problems
    )


def test_check_regdb_split_and_official_figures(regdb_root, capsys):
    rc = main(["data", "check", str(regdb_root), "--dataset", "regdb", "--split", "2"])
    assert rc == 1
    out = capsys.readouterr().out
    assert out.startswith("RegDB split 2 at ")
    assert "train all cameras visible: found 8 images, official 2,060 (-2,052)" in out
    assert main(["data", "check", str(regdb_root), "--dataset", "regdb", "--official", "no"]) == 0


def test_check_every_regdb_split_reports_each_and_fails_on_a_broken_one(regdb_root, capsys):
    """``--split all``: one report per split found in idx/, a closing line, exit 0 when
    every split passes; a split whose list names a missing image is reported as
    unreadable (exit 2) while the other splits are still checked; a mismatch with the
    official figures alone exits 1."""
    argv = ["data", "check", str(regdb_root), "--dataset", "regdb", "--split", "all"]
    assert main([*argv, "--official", "false"]) == 0
    out = capsys.readouterr().out
    assert "RegDB split 1 at " in out and "RegDB split 2 at " in out
    assert out.rstrip().endswith("every split checked (1, 2): all consistent")
    assert main(argv) == 1  # the fixture's counts are not the release's
    assert "2 of 2 splits (1, 2) failed: split 1: mismatch; split 2: mismatch" in (
        capsys.readouterr().out
    )
    lst = regdb_root / "idx" / "test_thermal_2.txt"
    lines = lst.read_text().splitlines()
    lst.write_text("\n".join(["Thermal/999/gone.bmp 999", *lines[1:]]) + "\n")
    assert main([*argv, "--official", "false"]) == 2
    out = capsys.readouterr().out
    assert "RegDB split 1 at " in out and "split 2: error: " in out
    assert "1 of 2 splits (1, 2) failed: split 2: unreadable" in out


def test_check_split_all_needs_a_dataset_with_splits(sysu_root, tmp_path, capsys):
    argv = ["data", "check", str(sysu_root), "--dataset", "sysu", "--split", "all"]
    assert main(argv) == 2
    assert "--split all applies to datasets with several splits (regdb)" in (
        capsys.readouterr().err
    )
    (tmp_path / "RegDB" / "Visible").mkdir(parents=True)
    (tmp_path / "RegDB" / "Thermal").mkdir()
    (tmp_path / "RegDB" / "idx").mkdir()
    assert (
        main(["data", "check", str(tmp_path / "RegDB"), "--dataset", "regdb", "--split", "all"])
        == 2
    )
    assert "no split lists under" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "check", str(sysu_root), "--dataset", "regdb", "--split", "some"])
    assert "'some' is not a split" in capsys.readouterr().err


def test_check_llcm_fixture_is_consistent(llcm_root, capsys):
    assert main(["data", "check", str(llcm_root), "--dataset", "llcm", "--official", "0"]) == 0
    assert main(["data", "check", str(llcm_root), "--dataset", "llcm"]) == 1
    assert "found 4 ids, official 713 (-709)" in capsys.readouterr().out


def test_check_split_on_a_fixed_split_dataset_is_an_error(sysu_root, capsys):
    assert main(["data", "check", str(sysu_root), "--dataset", "sysu", "--split", "2"]) == 2
    assert "--split applies to datasets with several splits (regdb)" in capsys.readouterr().err


def test_check_missing_root_exits_2_with_the_layout(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "none"), "--dataset", "llcm"]) == 2
    err = capsys.readouterr().err
    assert "DatasetError: LLCM root" in err and "test_vis/cam1 .. cam9" in err


@pytest.mark.parametrize("dataset", ["sysu", "regdb", "llcm"])
def test_official_figures_add_up(dataset):
    figs = {(f.split, f.cam, f.modality): f for f in OFFICIAL_FIGURES if f.dataset == dataset}
    for split in ("train", "test"):
        total = figs[(split, None, None)]
        per_mod = [figs.get((split, None, m)) for m in ("visible", "infrared")]
        if all(f is not None and f.images is not None for f in per_mod):
            assert total.images in (None, sum(f.images for f in per_mod))
        for mod in ("visible", "infrared"):
            cams = [f for (s, c, m), f in figs.items() if s == split and c and m == mod]
            if cams:
                assert sum(f.images for f in cams) == figs[(split, None, mod)].images
                assert max(f.ids for f in cams) <= figs[(split, None, mod)].ids


def test_check_decodes_every_image_and_names_the_unreadable(sysu_root, capsys):
    from uvireid.data.check import unreadable_images

    ds = SYSUMM01(sysu_root)
    victims = sorted(r.path for r in ds.train)[:1] + sorted(r.path for r in ds.test)[:1]
    with open(victims[0], "wb") as fh:
        fh.write(b"")
    with open(victims[1], "r+b") as fh:  # truncated: the header survives, the data not
        fh.truncate(100)
    naive = []
    from PIL import Image

    for r in [*ds.train, *ds.test]:  # a full decode of each file, as a loader would
        try:
            Image.open(r.path).convert("RGB")
        except Exception:
            naive.append(r.path)
    assert sorted(unreadable_images(ds)) == sorted(naive) == sorted(victims)
    args = ["data", "check", str(sysu_root), "--dataset", "sysu", "--official", "false"]
    assert main(args) == 1
    assert "2 image(s) cannot be decoded" in capsys.readouterr().out
    assert main([*args, "--decode", "false"]) == 0  # counts alone: consistent


def test_check_flags_identities_seen_in_one_modality_only(sysu_root):
    for cam in (3, 6):  # every infrared image of training identity 4
        shutil.rmtree(sysu_root / f"cam{cam}" / "0004")
    report = check_dataset(SYSUMM01(sysu_root), official=False)
    assert not report.ok
    assert any("1 identity has images in one modality only: 4" in p for p in report.problems)


def test_check_without_official_figures_does_not_claim_to_match_them(tmp_path, capsys):
    from uvireid.data import synthetic

    root = synthetic.generate(tmp_path / "syn", ids=6, seed=0)
    assert main(["data", "check", str(root), "--dataset", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert "no official figures known" in out
    assert "no official figures to compare with" in out
    assert "match the official figures" not in out


def test_a_run_warns_about_a_dataset_that_is_not_the_release(sysu_root, caplog):
    import logging

    from uvireid.engine.run_folder import build_manifest

    with caplog.at_level(logging.WARNING):
        manifest = build_manifest({"name": "x"}, "cpu", SYSUMM01(sysu_root))
    assert manifest["dataset_check"]["ok"] is False
    assert "is not the official release" in caplog.text
    assert "results on it are not comparable with published ones" in caplog.text


def test_split_all_reads_the_root_as_a_single_split_does(tmp_path, monkeypatch, capsys):
    """`--split all` expands ~ and names a missing root as one split does (audit BT: it
    said 'copy the idx/ folder' for a mistyped root)."""
    from uvireid.data.fixtures import make_regdb_tree

    make_regdb_tree(tmp_path / "RegDB", splits=(1, 2))
    monkeypatch.setenv("HOME", str(tmp_path))
    argv = ["data", "check", "~/RegDB", "--dataset", "regdb", "--official", "false"]
    assert main([*argv, "--split", "1"]) == 0
    assert main([*argv, "--split", "all"]) == 0
    capsys.readouterr()
    assert (
        main(["data", "check", str(tmp_path / "nope"), "--dataset", "regdb", "--split", "all"]) == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_check_flags_an_image_listed_in_two_splits(sysu_root, monkeypatch):
    """An image in both train and test (a leak) is a problem of its own, named with the
    splits, even where the split files' identity lists are disjoint."""
    ds = SYSUMM01(sysu_root)
    orig = ds.splits()
    victim = sorted(orig["test"], key=lambda r: r.path)[0]
    leaked = {**orig, "train": [*orig["train"], victim]}
    monkeypatch.setattr(ds, "splits", lambda: leaked)
    shared = {r.path for r in leaked["train"]} & {r.path for r in leaked["test"]}
    assert shared == {victim.path}  # the independent count
    report = check_dataset(ds, official=False)
    assert any(
        p.startswith("1 image(s) are in both train and test") and victim.path in p
        for p in report.problems
    ), report.problems
