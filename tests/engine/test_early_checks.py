"""Problems a run can see before it trains are reported before it trains: an unreadable
test image, a resume whose checkpoint is gone, a folder another process is using."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from train_fixtures import run_killed_at

from uvireid.config import load_recipe
from uvireid.engine.run_folder import RunFolder
from uvireid.engine.runner import run_recipe
from uvireid.engine.trainer import Trainer
from uvireid.errors import DatasetError, RunFolderError
from uvireid.registry import DATASETS


def test_an_unreadable_test_image_stops_the_run_before_the_first_epoch(recipe_file, monkeypatch):
    cfg = load_recipe(recipe_file)
    victim = DATASETS.build(cfg["data"]).test[5].path
    with open(victim, "wb") as fh:
        fh.write(b"not a jpeg")
    epochs = []
    real = Trainer.train_epoch
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, e: epochs.append(e) or real(self, e))
    with pytest.raises(DatasetError, match=r"1 test image\(s\) are unreadable"):
        run_recipe(cfg, progress=False)
    assert epochs == []
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    assert folder.read_metrics() == []
    assert not (folder.checkpoints / "latest.pt").exists()


def test_unreadable_training_images_are_counted_where_the_run_says_what_it_trained_on(
    recipe_file, caplog
):
    """Audit F (session 16): skipped training images were still counted in the log's
    "training images" line, and the manifest did not name them."""
    import json
    import logging

    from uvireid.types import VISIBLE

    cfg = load_recipe(recipe_file)
    train = DATASETS.build(cfg["data"]).train
    victim = next(r for r in train if r.modality == VISIBLE).path
    with open(victim, "wb") as fh:
        fh.write(b"not a jpeg")
    n_vis = sum(r.modality == VISIBLE for r in train)
    with caplog.at_level(logging.INFO):
        folder = run_recipe(cfg, progress=False)
    line = next(r.getMessage() for r in caplog.records if "training images:" in r.getMessage())
    assert line.startswith(f"training images: {n_vis - 1} visible, ")
    assert "1 visible and 0 infrared unreadable, left out" in line
    manifest = json.loads((folder.path / "manifest.json").read_text())
    bad = manifest["unreadable_training_images"]
    assert bad["count"] == 1 and bad["visible"] == 1 and bad["first"] == [victim]


def test_resume_without_the_checkpoint_of_trained_epochs_is_refused(recipe_file):
    cfg = load_recipe(recipe_file)
    folder = run_killed_at(cfg)
    (folder.checkpoints / "latest.pt").unlink()
    with pytest.raises(RunFolderError, match=r"1 epoch\(s\) were trained .* is missing"):
        run_recipe(cfg, resume=True, progress=False)
    assert [m["epoch"] for m in folder.read_metrics()] == [0]


def test_a_folder_in_use_is_refused_with_the_holders_pid(recipe_file):
    cfg = load_recipe(recipe_file)
    folder = RunFolder.create(cfg["output_dir"], cfg["name"])
    (folder.path / "config.yaml").write_text((recipe_file).read_text())
    built = []
    real_build = DATASETS.build
    with folder.locked(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(DATASETS, "build", lambda spec: built.append(spec) or real_build(spec))
        assert (folder.path / ".lock").read_text().strip() == str(os.getpid())
        assert folder.holder() is None  # held by this process, not another (report's probe)
        with pytest.raises(RunFolderError, match=f"in use by another process \\(pid {os.getpid()}"):
            run_recipe(cfg, resume=folder.path, progress=False, allow_changes=True)
    assert built == []  # refused before the dataset is built (audit Q: it was built first)
    with folder.locked():  # released: taken again
        pass


def test_a_file_system_without_locks_warns_instead_of_refusing_every_run(
    tmp_path, monkeypatch, caplog
):
    """Audit Q (session 16): on Lustre mounted noflock, flock fails with ENOLCK, which was
    read as "in use by another process (pid unknown)": every run refused."""
    import errno
    import fcntl
    import logging

    def no_locks(fh, flags):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    folder = RunFolder.create(tmp_path, "x")
    with caplog.at_level(logging.WARNING), folder.locked():
        pass
    assert "cannot be locked on this file system (No locks available)" in caplog.text


def test_run_folders_created_in_the_same_second_get_their_own_names(tmp_path, monkeypatch):
    """Audit Q: the name was checked, then created; a run that took it in between made
    the other fail with "File exists" instead of taking the next name."""
    import time

    monkeypatch.setattr(time, "strftime", lambda fmt: "20261127-120000")
    (tmp_path / "x-20261127-120000").mkdir()
    (tmp_path / "x-20261127-120000-2").mkdir()
    # as if another process took each name between this one's check and its mkdir
    monkeypatch.setattr(type(tmp_path), "exists", lambda self: False)
    got = RunFolder.create(tmp_path, "x")
    assert got.path.name == "x-20261127-120000-3"


def _own_crops(tmp_path, sysu_root):
    """Unlabelled crops in the folder dataset's layout, from the fixture's images."""
    import shutil
    from pathlib import Path

    root = tmp_path / "own"
    for modality, cams in (("visible", ("cam1", "cam2")), ("infrared", ("cam3", "cam6"))):
        for cam in cams:
            dst = root / modality / cam
            dst.mkdir(parents=True)
            for i, img in enumerate(sorted(Path(sysu_root, cam).rglob("*.jpg"))):
                shutil.copy(img, dst / f"{i:05d}.jpg")
    return root


def test_own_unlabelled_crops_train_without_evaluation(recipe_file, tmp_path):
    import yaml

    base = yaml.safe_load(recipe_file.read_text())
    root = _own_crops(tmp_path, base["data"]["root"])
    cfg = load_recipe(
        recipe_file,
        [f"data={{type: folder, root: {root}}}", "evaluation.protocol=auto", "evaluation.every=1"],
    )
    folder = run_recipe(cfg, progress=False)
    records = folder.read_metrics()
    assert [m["epoch"] for m in records] == [0, 1]
    assert all("eval" not in m for m in records)
    assert (folder.checkpoints / "latest.pt").exists()
    # results.json marks the finished run, with no result in it (audit AY: its report
    # said the run was killed)
    assert json.loads((folder.path / "results.json").read_text()) == {}
    assert not (folder.path / "features.npz").exists()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        from uvireid.viz.report import build_report

        notes = " ".join(build_report(folder.path).notes)
        assert "killed" not in notes and "did not finish" not in notes
        assert "finished without an evaluation" in notes
    # an explicit protocol the dataset cannot give is still an error; none is accepted
    from uvireid.errors import ConfigError

    with pytest.raises(ConfigError, match="does not fit dataset 'folder'; it has no test protocol"):
        run_recipe(
            load_recipe(
                recipe_file,
                [f"data.root={root}", "data.type=folder", "evaluation.protocol=sysu-all"],
            ),
            progress=False,
        )
    cfg = load_recipe(recipe_file, ["evaluation.protocol=none"])
    assert run_recipe(cfg, progress=False).read_metrics()[-1]["epoch"] == 1


@pytest.mark.parametrize("native", [False, True])
def test_amp_on_the_cpu_is_bf16_where_native_else_says_it_does_nothing(
    recipe_file, caplog, monkeypatch, native
):
    import logging

    import torch

    from uvireid.engine import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "cpu_bf16_native", lambda: native)
    cfg = load_recipe(recipe_file, ["train.amp=true"])
    with caplog.at_level(logging.WARNING):
        Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    assert ("train.amp=true has no effect on cpu" in caplog.text) is not native
    with trainer_mod._autocast("cpu", True):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == (torch.bfloat16 if native else torch.float32)


def test_amp_run_on_a_bf16_cpu_trains_its_convolutions_in_bf16(recipe_file, monkeypatch):
    import torch

    from uvireid.engine import trainer as trainer_mod

    if not trainer_mod.cpu_bf16_native():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 / AMX)")
    seen = []
    real = torch.nn.Conv2d.forward

    def spy(self, x):
        out = real(self, x)
        if torch.is_grad_enabled():
            seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", spy)
    in_losses = []  # (autocast on?, the loss's dtype) for each step's loss terms
    real_terms = Trainer._loss_terms

    def loss_terms(self, stage, losses):
        fn = real_terms(self, stage, losses)

        def wrapped(outputs, targets):
            total, terms = fn(outputs, targets)
            in_losses.append((torch.is_autocast_enabled("cpu"), total.dtype))
            return total, terms

        return wrapped

    monkeypatch.setattr(Trainer, "_loss_terms", loss_terms)
    cfg = load_recipe(recipe_file, ["train.amp=true", "evaluation.protocol=none"])
    metrics = run_recipe(cfg, progress=False).read_metrics()
    assert seen and set(seen) == {torch.bfloat16}
    # the backbone in bf16, the losses (their memory products) in float32
    assert in_losses and set(in_losses) == {(False, torch.float32)}
    totals = [m["loss"]["total"] for m in metrics if "loss" in m]
    assert totals and np.isfinite(totals).all()


def test_deterministic_asks_torch_for_deterministic_kernels(recipe_file, monkeypatch):
    import torch

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        cfg = load_recipe(recipe_file, ["train.deterministic=true"])
        Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        folder = run_recipe(cfg, progress=False)  # every op of a run has a path in this mode
        assert [m["epoch"] for m in folder.read_metrics()] == [0, 1]
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2:]


def test_loader_workers_are_capped_at_the_usable_cpus():
    from uvireid.engine.extract import usable_workers

    cpus = len(os.sched_getaffinity(0))
    assert usable_workers(cpus + 5) == cpus
    assert usable_workers(0) == 0 and usable_workers(1) == min(1, cpus)


def test_a_stage_can_start_with_a_new_optimiser(recipe_file):
    """``reset_optimizer``: Adam's moments and step counts start again at the stage (SALCR's
    second run and PGM's stage-2 script build a new Adam)."""
    from uvireid.engine.checkpoint import load_checkpoint

    steps = {}
    for reset in (False, True):
        cfg = load_recipe(recipe_file, [f"stages.1.reset_optimizer={str(reset).lower()}"])
        folder = run_recipe(cfg, progress=False)
        state = load_checkpoint(folder.checkpoints / "latest.pt")["optimizer"]["state"]
        steps[reset] = float(state[0]["step"])  # the first backbone parameter's Adam step
        metrics = folder.read_metrics()
        assert metrics[1].get("optimizer_reset", False) is reset
        assert "optimizer_reset" not in metrics[0]
    iters = 2  # the fixture's iterations per epoch: two epochs of 2 steps
    assert steps == {False: 2 * iters, True: iters}


def test_mbccm_trains_on_batches_of_its_matched_cluster_pairs(recipe_file, monkeypatch):
    """The matched sampler's pair labels are the step's targets (not the images' primary
    partner labels), on a two-stage run with the mbccm associator."""
    seen = []
    real = Trainer._targets

    def spy(self, lab, iv, ir, paired, labels=None):
        out = real(self, lab, iv, ir, paired, labels)
        if labels is not None:
            pairs = set(zip(out.vis_in_v.tolist(), out.vis_in_r.tolist()))
            seen.append((pairs, {tuple(p) for p in lab.matches.tolist()}))
        return out

    monkeypatch.setattr(Trainer, "_targets", spy)
    cfg = load_recipe(
        recipe_file,
        [
            "stages.1.associator={type: mbccm}",
            "stages.1.sampler={type: matched, ids: 2, images: 2}",
            "stages.1.losses=[{type: cluster_contrast}, {type: modality_agnostic}]",
        ],
    )
    folder = run_recipe(cfg, progress=False)
    assert [m["epoch"] for m in folder.read_metrics()] == [0, 1]
    assert seen and all(pairs <= allowed for pairs, allowed in seen)


def test_camera_aware_batches_reach_the_dcl_step(recipe_file, monkeypatch):
    """stages.N.sampler.camera_aware: in every group of a label's images, the images
    after the anchor come from other cameras wherever the anchor's cluster has some."""
    seen = []
    real = Trainer._targets

    def spy(self, lab, iv, ir, paired, labels=None):
        if not paired:
            seen.append((iv.copy(), lab.vis_in_v.copy(), self.cams_v))
        return real(self, lab, iv, ir, paired, labels)

    monkeypatch.setattr(Trainer, "_targets", spy)
    cfg = load_recipe(
        recipe_file,
        ["stages.0.sampler={type: identity, ids: 2, images: 3, camera_aware: true}"],
    )
    run_recipe(cfg, progress=False)
    checked = 0
    for iv, labels, cams in seen:
        for group in iv.reshape(-1, 3):
            anchor, rest = group[0], group[1:]
            assert (labels[group] == labels[anchor]).all()
            pool = np.flatnonzero(labels == labels[anchor])
            if (cams[pool] != cams[anchor]).any():
                assert (cams[rest] != cams[anchor]).all()
                checked += 1
    assert checked > 0


#: two DCL epochs, evaluated, then a stage that starts from best.pt
START_FROM_BEST = [
    "stages.0.epochs=2",
    "stages.1.start_from=best",
    "evaluation.keep_best=true",
    "evaluation.every=1",
]


def _epoch_zero_is_best(monkeypatch):
    """Make epoch 0 the best evaluated epoch whatever the scores (so best.pt != latest)."""

    def improves(self, epoch, tables):
        if epoch != 0:
            return False
        self.best = {"epoch": 0, "mAP": 1.0, "selected_on": "test set"}
        return True

    monkeypatch.setattr(Trainer, "_improves_best", improves)


def test_a_stage_can_start_from_the_best_checkpoint(recipe_file, monkeypatch):
    """stages.N.start_from: best (PGM's stage 2 reloads stage 1's best model): the stage's
    first epoch starts from best.pt's weights, not from the previous epoch's; a resume
    into that epoch loads them again."""
    import torch

    from uvireid.engine.checkpoint import load_checkpoint

    _epoch_zero_is_best(monkeypatch)
    seen = {}
    real = Trainer._load_best

    def spy(self, stage):
        seen["before"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        out = real(self, stage)
        seen["after"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return out

    monkeypatch.setattr(Trainer, "_load_best", spy)
    overrides = START_FROM_BEST
    cfg = load_recipe(recipe_file, overrides)
    folder = run_recipe(cfg, progress=False)
    best = load_checkpoint(folder.checkpoints / "best.pt")
    assert best["epoch"] == 1  # saved after epoch 0
    assert all(torch.equal(seen["after"][k], v) for k, v in best["model"].items())
    assert not all(torch.equal(seen["before"][k], v) for k, v in best["model"].items())
    metrics = folder.read_metrics()
    assert [m.get("started_from", {}).get("epoch") for m in metrics] == [None, None, 0]
    # killed in the stage's first epoch, the resume starts it from best.pt again
    cfg2 = load_recipe(recipe_file, [*overrides, f"output_dir={folder.path.parent / 'again'}"])
    seen.clear()
    killed = run_killed_at(cfg2, epoch=2)
    assert "after" not in seen
    run_recipe(cfg2, resume=True, progress=False)
    assert [m.get("started_from", {}).get("epoch") for m in killed.read_metrics()] == [
        None,
        None,
        0,
    ]


def test_start_from_best_without_a_kept_best_is_an_error(recipe_file, monkeypatch):
    from uvireid.errors import TrainingError

    monkeypatch.setattr(Trainer, "_improves_best", lambda self, epoch, tables: False)
    cfg = load_recipe(
        recipe_file,
        ["stages.1.start_from=best", "evaluation.keep_best=true", "evaluation.every=1"],
    )
    with pytest.raises(TrainingError, match="no evaluated epoch before it kept one"):
        run_recipe(cfg, progress=False)


def test_a_resume_relinks_a_best_checkpoint_the_kill_left_behind(recipe_file, monkeypatch):
    """Killed after latest.pt (the best epoch) was written but before it was linked as
    best.pt: the resume links it again, so start_from: best loads the best epoch's model,
    not the stale best.pt."""
    import torch

    from uvireid.engine.checkpoint import load_checkpoint

    def improves(self, epoch, tables):  # epochs 0 and 1 improve: best = epoch 1
        if epoch > 1:
            return False
        self.best = {"epoch": epoch, "mAP": float(epoch), "selected_on": "test set"}
        return True

    monkeypatch.setattr(Trainer, "_improves_best", improves)
    overrides = START_FROM_BEST
    cfg = load_recipe(recipe_file, overrides)
    folder = run_killed_at(cfg, epoch=2)
    ckpt = folder.checkpoints
    good = load_checkpoint(ckpt / "latest.pt")
    stale = load_checkpoint(ckpt / "latest.pt")
    stale["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in stale["model"].items()}
    (ckpt / "best.pt").unlink()
    torch.save(stale, ckpt / "best.pt")  # as if the link had not happened
    seen = {}
    real = Trainer._load_best

    def spy(self, stage):
        out = real(self, stage)
        seen["after"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return out

    monkeypatch.setattr(Trainer, "_load_best", spy)
    run_recipe(cfg, resume=True, progress=False)
    assert all(torch.equal(seen["after"][k], v) for k, v in good["model"].items())


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["evaluation.every=0"], "evaluation.every is 0: set it to 1..1"),
        (["evaluation.every=2"], "needs an evaluation before epoch 1"),
        (["stages.0.epochs=0"], "starts at epoch 0"),
        (["evaluation.keep_best=false"], "only evaluation.keep_best: true writes"),
    ],
)
def test_start_from_best_that_could_never_load_is_refused_with_the_recipe(
    recipe_file, overrides, words
):
    from uvireid.errors import ConfigError

    base = ["stages.1.start_from=best", "evaluation.keep_best=true"]
    with pytest.raises(ConfigError, match=words):
        load_recipe(recipe_file, [*base, *overrides])


def test_pgm_settings_reach_the_training_loop(recipe_file, monkeypatch):
    """train.cluster_flip: the training features are extracted flip-averaged and not
    normalised again; sampler.visible_ids: fewer visible labels per batch;
    stages.N.jitter_views: the stage's jittered views."""
    import uvireid.engine.trainer as T
    from uvireid.data.transforms import Augmenter

    calls, sizes, views = [], [], set()
    real_extract = T.extract_images

    def spy_extract(*args, **kw):
        calls.append((kw.get("flip", False), kw.get("renormalize", True)))
        return real_extract(*args, **kw)

    real_targets = Trainer._targets

    def spy_targets(self, lab, iv, ir, paired, labels=None):
        sizes.append((paired, len(iv), len(ir)))
        return real_targets(self, lab, iv, ir, paired, labels)

    real_call = Augmenter.__call__

    def spy_call(self, images, kind, device):
        views.add((kind, self.jitter_views))
        return real_call(self, images, kind, device)

    monkeypatch.setattr(T, "extract_images", spy_extract)
    monkeypatch.setattr(Trainer, "_targets", spy_targets)
    monkeypatch.setattr(Augmenter, "__call__", spy_call)
    cfg = load_recipe(
        recipe_file,
        [
            "train.cluster_flip=true",
            "stages.0.sampler={type: identity, ids: 2, visible_ids: 1, images: 2}",
            "stages.1.jitter_views=[visible_ca]",
        ],
    )
    run_recipe(cfg, progress=False)
    assert calls.count((True, False)) == 4  # both modalities, both epochs
    assert (False, 1 * 2, 2 * 2) in sizes  # stage 0: 1 visible label, 2 infrared labels
    assert ("infrared", ("visible_ca", "infrared")) in views  # stage 0: train's default
    assert ("infrared", ("visible_ca",)) in views  # stage 1: its own


@pytest.mark.parametrize("with_parts", [False, True])
def test_cluster_flip_features_are_the_mean_of_the_normalised_halves(with_parts):
    """PGM's extract_features(flip=True): (L2n(f(x)) + L2n(f(flip x))) / 2, not normalised
    again; the test features (renormalize) are that mean normalised."""
    import torch
    import torch.nn.functional as F

    from uvireid.engine.trainer import extract_images
    from uvireid.models.backbone import TwoStreamResNet
    from uvireid.models.parts import PartQuery

    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18").eval()
    parts = PartQuery(512, 2) if with_parts else None
    imgs = torch.randint(0, 256, (5, 3, 32, 16), dtype=torch.uint8)
    got, _ = extract_images(
        m, imgs, np.zeros(5), "cpu", flip=True, renormalize=False, part_module=parts
    )
    from uvireid.data.transforms import normalize

    x = normalize(imgs.float() / 255)
    with torch.no_grad():
        a = F.normalize(m(x, 0).bn_feat, dim=1)
        b = F.normalize(m(x.flip(3), 0).bn_feat, dim=1)
    torch.testing.assert_close(got, (a + b) / 2, atol=1e-6, rtol=0)
    assert float(got.norm(dim=1).max()) < 1 - 1e-4
    unit, _ = extract_images(m, imgs, np.zeros(5), "cpu", flip=True, part_module=parts)
    torch.testing.assert_close(unit, F.normalize((a + b) / 2, dim=1), atol=1e-6, rtol=0)


def _refused_with(recipe_file, registry, name, cls, override, match):
    """Run the tiny recipe with ``cls`` registered as ``name`` (``override`` selects it):
    it must stop with a TrainingError matching ``match``, before training."""
    from uvireid.errors import TrainingError

    registry.register(name)(cls)
    try:
        cfg = load_recipe(recipe_file, [override])
        with pytest.raises(TrainingError, match=match):
            run_recipe(cfg, progress=False)
    finally:
        registry.unregister(name)


def _labels_v(mangle):
    return lambda cl: {"labels_in_v": mangle(np.asarray(cl.labels_in_v))}


@pytest.mark.parametrize(
    "change, words",
    [
        (_labels_v(lambda a: a[:-1]), r"returned labels_in_v of shape \(\d+,\)"),
        (
            _labels_v(lambda a: a.astype(np.float64)),
            r"returned labels_in_v of shape .* dtype float64",
        ),
        (
            _labels_v(lambda a: np.where(a >= 0, a + 1000, a)),
            r"returned labels_in_v from -1 to 10\d\d, outside",
        ),
        (_labels_v(lambda a: a - 2), r"returned labels_in_v from -3 to \d+, outside -1\.\.\d+"),
        (  # labels 1..K with the count grown to match: a memory row no cluster fills
            lambda cl: {
                "labels_in_v": np.where(cl.labels_in_v >= 0, cl.labels_in_v + 1, -1),
                "num_clusters_v": cl.num_clusters_v + 1,
            },
            r"reports num_clusters_v = \d+, but the clusterer found \d+ clusters",
        ),
        (
            lambda cl: {"matches": np.array([[cl.num_clusters_v, 0]])},
            r"returned 1 matches outside the clusters \(first: \[\d+, 0\]",
        ),
    ],
)
def test_an_associator_returning_bad_labels_stops_before_training(recipe_file, change, words):
    """A plugin associator whose labels are misaligned, outside the clusterer's label
    space (also when it grew its own count to fit) or whose matches name no cluster: a
    TrainingError naming it, not an IndexError inside a loss."""
    import dataclasses

    from uvireid.registry import ASSOCIATORS

    class Mangled(ASSOCIATORS.get("otla_dual")):
        def associate(self, fv, lv, fr, lr):
            cl = super().associate(fv, lv, fr, lr)
            return dataclasses.replace(cl, **change(cl))

    override = "stages.1.associator={type: mangled_test}"
    match = f"associator 'mangled_test' {words}"
    _refused_with(recipe_file, ASSOCIATORS, "mangled_test", Mangled, override, match)


@pytest.mark.parametrize(
    "mangle, words",
    [
        (lambda a: a[:-1], r"returned labels of shape \(\d+,\) and dtype int\d+ for \d+ features"),
        (lambda a: a.astype(np.float32), "returned labels of shape .* dtype float32"),
        (lambda a: np.where(a < 0, -2, a), "returned label -2; labels are 0..K-1"),
    ],
)
def test_a_clusterer_returning_bad_labels_stops_before_training(recipe_file, mangle, words):
    from uvireid.registry import CLUSTERERS

    class Mangled(CLUSTERERS.get("dbscan")):
        def fit_predict(self, x):
            out = np.asarray(super().fit_predict(x)).copy()
            out[0] = -1  # at least one outlier, for the noise-code case
            return mangle(out)

    override = "clusterer.type=mangled_test"
    match = f"clusterer 'mangled_test' {words}"
    _refused_with(recipe_file, CLUSTERERS, "mangled_test", Mangled, override, match)


def test_a_run_gives_the_process_its_thread_count_back(recipe_file):
    import torch

    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    try:
        torch.set_num_threads(want)
        cfg = load_recipe(recipe_file, ["train.threads=3", "evaluation.protocol=none"])
        seen = []
        trainer = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
        real = trainer.load_data

        def spy():
            seen.append(torch.get_num_threads())
            return real()

        trainer.load_data = spy
        trainer.fit()
        assert seen and set(seen) == {3} and torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)


def test_an_official_sampler_without_its_file_is_refused_before_training(recipe_file, tmp_path):
    """The official gallery sampler needs SYSU-MM01's rand_perm_cam.mat: without it the
    protocol refused it only at the first evaluation, after the training before it."""
    from uvireid.engine.runner import preflight
    from uvireid.errors import ConfigError

    for extra, said in (
        (["evaluation.sampler=official"], r"perm_file is not set"),
        (
            ["evaluation.sampler=official", f"evaluation.perm_file={tmp_path / 'no.mat'}"],
            r"no\.mat is not a file",
        ),
        ([f"evaluation.perm_file={recipe_file}"], r"perm_file is set but .*'seeded'"),
    ):
        with pytest.raises(ConfigError, match=said):
            preflight(load_recipe(recipe_file, extra))
    preflight(load_recipe(recipe_file, ["evaluation.sampler=official", "evaluation.protocol=none"]))


def test_an_epoch_is_kept_when_its_evaluation_fails(recipe_file, monkeypatch):
    """The checkpoint of an epoch is written before its evaluation: an evaluation that
    fails (or a run killed in it) resumes after that epoch, and metrics.jsonl has the
    epoch's record with the evaluation's error."""
    from uvireid.errors import ProtocolError

    cfg = load_recipe(recipe_file, ["evaluation.every=1"])

    def broken(self, label):
        raise ProtocolError("the evaluation broke")

    monkeypatch.setattr(Trainer, "evaluate", broken)
    with pytest.raises(ProtocolError):
        run_recipe(cfg, progress=False)
    folder = RunFolder.latest(cfg["output_dir"], cfg["name"])
    from uvireid.engine.checkpoint import load_checkpoint

    assert load_checkpoint(folder.checkpoints / "latest.pt")["epoch"] == 1
    (rec,) = folder.read_metrics()
    assert rec["epoch"] == 0 and rec["eval_error"] == "ProtocolError: the evaluation broke"


def test_an_output_dir_that_cannot_be_made_is_refused_before_anything_runs(recipe_file, tmp_path):
    from uvireid.engine.runner import preflight
    from uvireid.errors import ConfigError

    (tmp_path / "afile").write_text("x")
    for key in ("output_dir", "train.image_cache"):
        cfg = load_recipe(recipe_file, [f"{key}={tmp_path / 'afile' / 'runs'}"])
        with pytest.raises(ConfigError, match=rf"{key}: .* \(.*afile is a file, not a folder\)"):
            preflight(cfg)


def test_a_fixed_size_backbone_is_refused_before_training_at_another_size(recipe_file):
    """Audit S (session 17): a timm ViT (224 x 224 only) at the recipe's size ended in
    timm's raw AssertionError at the first image; the trainer now refuses it with the
    fix, and builds it with that fix."""
    from uvireid.errors import ConfigError

    bb = "backbone={type: timm, name: vit_tiny_patch16_224}"
    cfg = load_recipe(recipe_file, [bb])
    h, w = cfg["train"]["height"], cfg["train"]["width"]
    with pytest.raises(ConfigError, match=rf"set backbone.img_size: \[{h}, {w}\]"):
        Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    cfg = load_recipe(recipe_file, [bb, f"backbone.img_size=[{h}, {w}]"])
    # built for the size, it runs, to the next check: a ViT's tokens have no stripes
    with pytest.raises(ConfigError, match=r"part losses .* gives features of shape \(1, "):
        Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)


def test_a_trainer_without_a_run_folder_writes_nothing(recipe_file, tmp_path, monkeypatch):
    """Audit U (session 17): with folder=None ("writes nothing") every evaluation wrote
    features.npz into the working directory, over a user's own file of that name."""
    cfg = load_recipe(recipe_file)
    trainer = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "features.npz").write_bytes(b"the user's own file")
    monkeypatch.chdir(work)
    trainer.load_data()
    out = trainer.evaluate("untrained")
    assert out["results"]["none"].mean["R1"] >= 0  # from the features it saved and read back
    assert sorted(os.listdir(work)) == ["features.npz"]
    assert (work / "features.npz").read_bytes() == b"the user's own file"


def test_a_run_of_an_earlier_version_resumes_without_the_settings_added_since(recipe_file):
    """A run's config.yaml lacks the settings added after it started (session 16's
    associator.official_solver, session 17's train.resize): their defaults keep the
    earlier behaviour, so they are not changes (every such run was refused); a real
    change still is."""
    import yaml

    from uvireid.engine.run_folder import check_resume
    from uvireid.errors import ConfigError

    cfg = load_recipe(recipe_file)
    folder = RunFolder.create(cfg["output_dir"], cfg["name"])
    folder.write_config(cfg)
    old = yaml.safe_load((folder.path / "config.yaml").read_text())
    del old["train"]["resize"], old["train"]["test_resize"]
    del old["stages"][1]["associator"]["official_solver"]
    (folder.path / "config.yaml").write_text(yaml.safe_dump(old))
    assert check_resume(folder, cfg) == {}
    changed = load_recipe(recipe_file, ["train.resize=bicubic"])
    with pytest.raises(ConfigError, match=r"train.resize: 'bilinear' -> 'bicubic'"):
        check_resume(folder, changed)


def test_start_from_best_builds_on_the_ranks_that_hold_no_run_folder(recipe_file, monkeypatch):
    """Audit AG (session 17): under torchrun the ranks other than 0 get no run folder, by
    design (rank 0 reads best.pt and broadcasts it); they refused start_from: best for
    want of one, so PGM's recipe could not run on several GPUs. A single process without
    a folder is still refused."""
    import uvireid.engine.trainer as trainer_mod
    from uvireid.errors import ConfigError

    overrides = ["stages.1.start_from=best", "evaluation.every=1", "evaluation.keep_best=true"]
    cfg = load_recipe(recipe_file, overrides)
    data = DATASETS.build(cfg["data"])
    with pytest.raises(ConfigError, match="start_from: best"):
        Trainer(cfg, data, "cpu", None, progress=False)
    monkeypatch.setattr(trainer_mod.D, "is_main", lambda: False)  # as rank 1 sees itself
    monkeypatch.setattr(trainer_mod.D, "rank", lambda: 1)
    Trainer(cfg, data, "cpu", None, progress=False)


def test_split_files_that_share_identities_are_refused_before_any_folder(recipe_file):
    """Audit AR: train_id.txt holding test identities was one warning among the count
    differences, and the run trained on the test images it was then scored on."""
    from pathlib import Path

    cfg = load_recipe(recipe_file)
    root = Path(cfg["data"]["root"])
    exp = root / "exp"
    test = (exp / "test_id.txt").read_text().strip().split(",")[:2]
    train = exp / "train_id.txt"
    train.write_text(",".join(test) + "," + train.read_text().strip() + "\n")
    with pytest.raises(DatasetError, match=r"share 2 identities.*expected disjoint splits"):
        run_recipe(cfg, progress=False)
    assert not list(Path(cfg["output_dir"]).glob("*/config.yaml"))  # no run folder made
    from uvireid.engine.export import export_features

    with pytest.raises(DatasetError, match="disjoint"):
        export_features(cfg, Path(cfg["output_dir"]) / "f.npz")
