"""`uvireid eval --runs` on LLCM files: LLCM's cameras shoot both modalities, so the
modality labels are not implied by the camera labels (as on SYSU-MM01); the same-test-set
check must compare them, and must not depend on the row order of the files."""

from __future__ import annotations

import numpy as np

from uvireid import cli
from uvireid.features import save_features


def _llcm(seed: int = 0):
    rng = np.random.default_rng(seed)
    pids, cams, mods = [], [], []
    for pid in rng.choice(np.arange(1, 500), 20, replace=False).tolist():
        for mod in (0, 1):
            for cam in range(1, 10):
                if rng.random() < 0.4:
                    continue
                for _ in range(int(rng.integers(1, 4))):
                    pids.append(pid)
                    cams.append(cam)
                    mods.append(mod)
    pids, cams, mods = np.array(pids), np.array(cams), np.array(mods)
    centre = {p: rng.standard_normal(8) for p in set(pids.tolist())}
    feats = np.array([centre[p] for p in pids]) + 1.0 * rng.standard_normal((len(pids), 8))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats.astype(np.float32), pids, cams, mods


def _save(path, feats, pids, cams, mods):
    return str(save_features(path, feats, pids, cams, mods, dataset="LLCM", split="test"))


def test_runs_with_the_same_llcm_images_in_another_row_order_are_accepted(tmp_path, capsys):
    feats, pids, cams, mods = _llcm(1)
    rng = np.random.default_rng(7)
    o1, o2 = rng.permutation(len(pids)), rng.permutation(len(pids))
    a = _save(tmp_path / "a.npz", feats[o1], pids[o1], cams[o1], mods[o1])
    noise = feats + 0.3 * rng.standard_normal(feats.shape).astype(np.float32)
    b = _save(tmp_path / "b.npz", noise[o2], pids[o2], cams[o2], mods[o2])
    rc = cli.main(["eval", a, b, "--protocol", "llcm-v2i", "--trials", "2", "--runs"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "mean±std over runs" in out


def test_runs_whose_llcm_modality_labels_differ_are_refused(tmp_path, capsys):
    feats, pids, cams, mods = _llcm(2)
    a = _save(tmp_path / "a.npz", feats, pids, cams, mods)
    # the same identities and cameras, but one (id, camera) group of images swapped to the
    # other modality: another test set (other queries, another gallery)
    key = (pids[0], cams[0])
    group = (pids == key[0]) & (cams == key[1])
    other = mods.copy()
    other[group] = 1 - other[group]
    assert not np.array_equal(other, mods)
    b = _save(tmp_path / "b.npz", feats, pids, cams, other)
    rc = cli.main(["eval", a, b, "--protocol", "llcm-v2i", "--trials", "2", "--runs"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "different test images" in err and "modality" in err
    assert "mean±std" not in out
