"""The trainer's newer code at its edges (audit NF, a second mutation test of
uvireid/engine/trainer.py): the cross-modal quality and link precision over the readable
images, the best epoch's choice named for a validation run, what a diverged run says it
kept, the pairing sampler's fallback warnings, the part-map check at its boundary and
without touching the BN statistics, the kernel settings at each fit(), the optimiser's
defaults, a unified label space, frozen loss parameters, amp off on a bf16 CPU and the
best-checkpoint relink. Each against a naive computation or a documented behaviour."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from train_fixtures import link_counts_loop, random_cross_labels, singletons_loop

from uvireid.engine.trainer import Trainer
from uvireid.errors import ConfigError, TrainingError
from uvireid.losses.contract import EpochLabels
from uvireid.types import CrossLabels


def test_cross_quality_and_link_precision_leave_out_the_unreadable_images():
    """Audit JA's fix scores the readable images only (the unreadable ones were never
    clustered); the cross-modal fields and the link precision too: sklearn's ARI over
    the readable images and a loop over their (visible, infrared) pairs."""
    from sklearn.metrics import adjusted_rand_score as ari

    nv, nr = 30, 20
    ok_v, ok_r = np.ones(nv, bool), np.ones(nr, bool)
    ok_v[[0, 7, 8]] = False
    ok_r[[3, 11]] = False
    gv, gr, lab, fake = random_cross_labels(5, nv, nr, ids=4, ok_v=ok_v, ok_r=ok_r)
    vis_in_v, vis_in_r, ir_in_r, ir_in_v = lab.vis_in_v, lab.vis_in_r, lab.ir_in_r, lab.ir_in_v
    q = Trainer._quality(fake, lab)
    kv, kr = np.flatnonzero(ok_v), np.flatnonzero(ok_r)
    assert q["visible"]["ari"] == pytest.approx(ari(gv[kv], singletons_loop(vis_in_v[kv])))
    assert q["infrared"]["ari"] == pytest.approx(ari(gr[kr], singletons_loop(ir_in_r[kr])))
    assert q["infrared"]["outlier_fraction"] == pytest.approx(np.mean(ir_in_r[kr] < 0))
    gt = np.r_[gv[kv], gr[kr]]
    want_v = ari(gt, singletons_loop(np.r_[vis_in_v[kv], ir_in_v[kr]]))
    assert q["cross_v"]["ari"] == pytest.approx(want_v)
    assert q["cross_r"]["ari"] == pytest.approx(
        ari(gt, singletons_loop(np.r_[vis_in_r[kv], ir_in_r[kr]]))
    )
    same, total = link_counts_loop(gv, gr, lab, kv, kr)
    assert min(total.values()) > 0
    assert q["cross_r"]["link_precision"] == pytest.approx(same["v2r"] / total["v2r"])
    assert q["cross_v"]["link_precision"] == pytest.approx(same["r2v"] / total["r2v"])


def _evaluating_trainer(validation: bool):
    """A trainer reduced to what _finish_epoch reads: keep_best on, no run folder, an
    evaluation that returns a fixed mAP."""
    tr = Trainer.__new__(Trainer)
    tr.cfg = {"evaluation": {"every": 1, "keep_best": True}}
    tr.protocol, tr.folder, tr.best, tr.pending = "sysu-all", None, None, None
    tr.epoch, tr.total_epochs = 1, 3
    tr.dataset = SimpleNamespace(validation=validation)
    tables = {"none": {"mean": {"mAP": 42.0}, "std": {}, "provenance": {}}}
    tr.evaluate = lambda tag: {"tables": tables, "seconds": {}}
    return tr


@pytest.mark.parametrize(
    "validation, on, advice",
    [
        (False, "test set", "report the final epoch"),
        (True, "validation ids", "train the chosen setting without data.validation"),
    ],
)
def test_the_best_epoch_is_named_by_the_ids_it_was_chosen_on(validation, on, advice, caplog):
    """Review FF: a data.validation run's best epoch is recorded and logged as chosen on
    the validation ids, with the advice of a validation run (not 'report the final
    epoch', which is the test-set run's)."""
    tr = _evaluating_trainer(validation)
    record = {"epoch": 0, "seconds": {}}
    with caplog.at_level(logging.INFO, logger="uvireid.engine.trainer"):
        tr._finish_epoch(record, None)
    assert record["best"] == {"epoch": 0, "mAP": 42.0, "selected_on": on}
    (line,) = [r.getMessage() for r in caplog.records if "checkpoints/best.pt" in r.getMessage()]
    assert f"(chosen on the {on}; {advice}" in line
    other = "report the final epoch" if validation else "without data.validation"
    assert other not in line


def test_a_stage_started_from_best_in_a_validation_run_names_the_validation_ids(monkeypatch):
    """started_from (said in every later result) names the ids the best epoch was chosen
    on: the validation ids in a data.validation run, the test set otherwise. The trainer
    is reduced to what the epoch reads before it extracts the features."""
    from uvireid.engine.trainer import Stage

    class Stop(Exception):
        pass

    def stop(self, with_parts):
        raise Stop

    monkeypatch.setattr(Trainer, "_extract_train", stop)
    monkeypatch.setattr(
        Trainer, "_load_best", lambda self, s: {"checkpoint": "best.pt", "epoch": 0}
    )
    for validation, on in ((True, "validation ids"), (False, "test set")):
        tr = Trainer.__new__(Trainer)
        a = Stage("dcl", 1, 1, 0.0, {}, {}, None, [], first_epoch=0)
        b = Stage("salcr", 1, 1, 0.0, {}, {}, None, [], first_epoch=1, start_from="best")
        tr.stages, tr.losses, tr.started_from = [a, b], {"dcl": [], "salcr": []}, []
        tr.optimizer = SimpleNamespace(param_groups=[{"lr": 0.1}])
        tr.model = SimpleNamespace(parts=None)
        tr.images_v = tr.images_r = torch.zeros(1)  # load_data has nothing to do
        tr.dataset = SimpleNamespace(validation=validation)
        with pytest.raises(Stop):
            tr.train_epoch(1)  # the salcr stage's first epoch
        assert tr.started_from == [
            {"stage": "salcr", "checkpoint": "best.pt", "epoch": 0, "selected_on": on}
        ]


def _diverged(tr):
    tr.epoch = 3
    pending = [
        (("total", "a"), torch.tensor([0.5, 0.5])),
        (("total", "a"), torch.tensor([float("nan")] * 2)),
    ]
    with pytest.raises(TrainingError) as err:
        tr._read_losses(pending, {}, 20)
    return str(err.value)


def test_a_diverged_run_says_what_it_kept(tmp_path):
    """Audit FC: the error of a non-finite loss says whether a checkpoint is kept and
    where: none without a run folder, none before the first epoch's, else latest.pt."""
    tr = Trainer.__new__(Trainer)
    tr.folder = None
    msg = _diverged(tr)
    assert "epoch 3, step 21: the loss is nan" in msg
    assert "nothing is saved (no run folder" in msg and "last good checkpoint is kept" not in msg
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    tr.folder = SimpleNamespace(checkpoints=ckpts)
    msg = _diverged(tr)
    assert "no checkpoint was written (no epoch finished)" in msg
    assert "last good checkpoint is kept" not in msg
    (ckpts / "latest.pt").write_bytes(b"x")
    msg = _diverged(tr)
    assert f"the last good checkpoint is kept ({ckpts / 'latest.pt'}: --resume" in msg


def _labels(has_cross=True, matches=None):
    y = np.repeat(np.arange(3), 4)
    return EpochLabels(
        vis_in_v=y,
        vis_in_r=y,
        ir_in_r=y,
        ir_in_v=y,
        init_v=y,
        init_r=y,
        num_v=3,
        num_r=3,
        has_cross=has_cross,
        matches=matches,
    )


def test_a_pairing_sampler_that_cannot_pair_this_epoch_says_why_and_draws_unpaired(caplog):
    """The matched sampler on an epoch with cross links but without the association's
    matches (its for_epoch refuses with a ConfigError): the epoch's warnings give the
    stage's name and the sampler's reason, then the fallback; the log has the reason too
    (the fallback's line points to it: review NJ); the batches are unpaired, drawn on
    each modality's own labels."""
    from uvireid.engine.trainer import Stage

    tr = Trainer.__new__(Trainer)
    tr.cams_v = tr.cams_r = np.ones(12, dtype=np.int64)
    sampler = {"type": "matched", "ids": 2, "images": 2}
    stage = Stage("mb", 1, 1, 0.0, sampler, {}, None, [])
    warnings: list[str] = []
    with caplog.at_level(logging.WARNING, logger="uvireid.engine.trainer"):
        drawn, paired = tr._sampler(stage, _labels(), warnings)
    assert paired is False
    assert len(warnings) == 2
    assert warnings[0].split(": ", 1)[1] in caplog.text  # the sampler's ConfigError
    assert warnings[0].startswith("stage 'mb': the matched sampler needs the association's")
    # the fallback's line names the refusal, not "no cross-modal link" (there are links)
    assert warnings[1].startswith("stage 'mb': the pairing sampler refused this epoch's links")
    batch = drawn.sample(np.random.default_rng(0))
    assert len(batch.idx_v) == len(batch.idx_r) == 4
    # with the matches it pairs, and says nothing
    warnings.clear()
    _, paired = tr._sampler(stage, _labels(matches=np.array([[0, 0], [1, 1]])), warnings)
    assert paired is True and warnings == []


class _TinyBackbone(torch.nn.Module):
    """A convolution and a BatchNorm: a (1, 8, H/4, W/4) map, running statistics that a
    forward in training mode would move."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)

    def forward(self, x, modality):
        return SimpleNamespace(feature_map=self.bn(self.conv(x + 1.0)))


def test_the_part_map_check_accepts_one_pixel_per_part_and_leaves_the_model_as_it_was():
    """check_part_map: num_parts equal to the map's pixels is accepted (a stripe of one
    pixel each), one more is refused; it returns the map's channels, and its probe
    changes no BatchNorm statistic and leaves the training mode as it was."""
    from uvireid.engine.trainer import check_part_map

    torch.manual_seed(0)
    bb = _TinyBackbone().train()
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    pixels = (32 // 4) * (16 // 4)  # stride 4, padding 1, kernel 3
    assert check_part_map(bb, 32, 16, pixels, "tiny") == 8
    with pytest.raises(ConfigError, match=f"8 x 4 = {pixels} pixel\\(s\\), fewer than the parts"):
        check_part_map(bb, 32, 16, pixels + 1, "tiny")
    assert bb.training
    after = bb.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert changed == []


@pytest.fixture
def kernel_flags():
    """torch's process-wide kernel settings, given back after the test."""
    from uvireid.engine.trainer import _kernel_state, _restore_kernel_state

    state = _kernel_state()
    yield
    _restore_kernel_state(state)


@pytest.mark.parametrize(
    "settings, benchmark",
    [({}, True), ({"cudnn_benchmark": False}, False), ({"deterministic": True}, False)],
)
def test_cudnn_autotuning_on_cuda_follows_its_setting_and_deterministic(
    kernel_flags, settings, benchmark
):
    """train.cudnn_benchmark (default true) on a CUDA trainer, off under
    train.deterministic (whose kernels it would undo). Only flags are set: no GPU is
    needed."""
    tr = Trainer.__new__(Trainer)
    tr.device, tr.tr = "cuda:0", dict(settings)
    torch.backends.cudnn.benchmark = not benchmark
    tr._apply_kernel_settings()
    assert torch.backends.cudnn.benchmark is benchmark


def test_each_fit_trains_deterministic_and_gives_the_settings_back(kernel_flags, monkeypatch):
    """train.deterministic holds inside every fit() of a trainer, the second included
    (the first fit's end gave back the process's settings), and each fit() gives them
    back at its end."""
    from uvireid.engine.trainer import _kernel_state

    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    tr = Trainer.__new__(Trainer)
    tr.device, tr.tr = "cpu", {"threads": 0, "deterministic": True}
    tr._kernel_state = _kernel_state()
    seen = []
    monkeypatch.setattr(Trainer, "_fit", lambda self: seen.append(_kernel_state()))
    tr.fit()
    assert _kernel_state()[:3] == (False, False, False)
    tr.fit()
    assert _kernel_state()[:3] == (False, False, False)
    assert [s[0] for s in seen] == [True, True]  # deterministic algorithms
    assert [s[2] for s in seen] == [True, True]  # cudnn.deterministic


def test_the_optimizer_is_adam_by_default_and_an_unknown_one_is_refused():
    """make_optimizer (a library call: the recipe's check is not there): without
    train.optimizer it is Adam, as the docs say; another name is a ConfigError."""
    from uvireid.engine.trainer import make_optimizer

    p = torch.nn.Parameter(torch.ones(2))
    opt = make_optimizer([p], {"lr": 0.1, "weight_decay": 0.0})
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == 0.1
    with pytest.raises(ConfigError, match="must be adam, adamw or sgd, got 'rmsprop'"):
        make_optimizer([p], {"lr": 0.1, "weight_decay": 0.0, "optimizer": "rmsprop"})


def test_a_unified_space_is_at_least_the_clusterers_and_its_matches_are_not_bounded_by_it():
    """_check_cross_labels with unified=True: the space is as large as the associator
    says, never smaller than the clusterer's count; a unified producer that leaves
    num_clusters at 0 gets the size its labels and matches make (CrossLabels' documented
    default; it was refused as "outside -1..K-1", audit NF), and its matches are not
    checked against the per-modality cluster counts."""
    from uvireid.engine.trainer import _check_cross_labels

    nv, nr, kv, kr = 6, 4, 3, 2
    own = np.r_[np.arange(nv) % kr, np.arange(nr) % kr]  # within both spaces
    cl = CrossLabels(own, own, np.zeros((0, 2)), unified=True, num_visible=nv)
    out = _check_cross_labels(cl, nv, nr, kv, kr, "plugin")  # num_clusters left at 0
    assert out.labels_in_v.tolist() == own.tolist()
    merged = np.r_[np.arange(nv) % kv, kv + np.arange(nr) % kr]  # 5 unified labels
    matches = np.array([[4, 4], [0, 3]])  # unified ids: beyond kv and kr
    cl = CrossLabels(
        merged, merged, matches, unified=True, num_visible=nv, num_clusters_v=5, num_clusters_r=5
    )
    out = _check_cross_labels(cl, nv, nr, kv, kr, "plugin")
    assert out.matches.tolist() == matches.tolist()
    unsaid = CrossLabels(merged, merged, matches, unified=True, num_visible=nv)
    out = _check_cross_labels(unsaid, nv, nr, kv, kr, "plugin")  # 5 labels, none said
    assert (out.num_clusters_v, out.num_clusters_r) == (5, 5)
    assert out.labels_in_v.tolist() == merged.tolist()
    small = CrossLabels(own, own, np.zeros((0, 2)), unified=True, num_visible=nv)
    out = _check_cross_labels(small, nv, nr, kv, kr, "plugin")
    assert (out.num_clusters_v, out.num_clusters_r) == (kv, kr)  # never below the clusterer's
    below = CrossLabels(merged - 2, merged, matches, unified=True, num_visible=nv)
    with pytest.raises(TrainingError, match="labels_in_v down to -2"):
        _check_cross_labels(below, nv, nr, kv, kr, "plugin")
    said = CrossLabels(merged, merged, matches, unified=True, num_clusters_v=4, num_clusters_r=4)
    with pytest.raises(TrainingError, match="outside -1..3"):
        _check_cross_labels(said, nv, nr, kv, kr, "plugin")  # said 4, labels reach 4


def test_a_loss_with_frozen_parameters_is_accepted_and_trainable_ones_refused():
    """check_loss_module refuses a loss's trainable parameters (the trainer never steps
    them); frozen ones (requires_grad False, e.g. fixed class weights) are accepted."""
    from torch import nn

    from uvireid.engine.trainer import check_loss_module

    class WithWeights(nn.Module):
        def __init__(self, trainable):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3), requires_grad=trainable)

    check_loss_module(WithWeights(False), "stage 's': losses.0 (w)")
    with pytest.raises(ConfigError, match="1 trainable parameter tensor\\(s\\) \\(3 values\\)"):
        check_loss_module(WithWeights(True), "stage 's': losses.0 (w)")


def test_amp_off_is_float32_on_a_cpu_with_native_bf16(monkeypatch):
    """train.amp=false trains in float32 whatever the CPU: precision_of says so, and the
    autocast context is a no-op, on a CPU with native bf16 too (amp=true: bf16)."""
    import uvireid.engine.trainer as T

    monkeypatch.setattr(T, "cpu_bf16_native", lambda: True)
    assert T.precision_of("cpu", False) == "float32"
    assert T.precision_of("cpu", True) == "bf16"
    x = torch.ones(2, 2)
    with T._autocast("cpu", False):
        assert (x @ x).dtype == torch.float32
    with T._autocast("cpu", True):
        assert (x @ x).dtype == torch.bfloat16


def test_a_best_checkpoint_already_linked_is_left_alone_and_an_older_one_relinked(tmp_path, caplog):
    """_relink_best on a resume from latest.pt of the best epoch: best.pt already that
    file: nothing done and nothing said; best.pt an older file (a kill between the two
    writes): linked again, and said."""
    import os

    from uvireid.engine.checkpoint import keep_as_best

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    latest, best = ckpts / "latest.pt", ckpts / "best.pt"
    latest.write_bytes(b"epoch 2")
    keep_as_best(ckpts)
    tr = Trainer.__new__(Trainer)
    tr.folder = SimpleNamespace(checkpoints=ckpts)
    tr.epoch, tr.best = 3, {"epoch": 2, "mAP": 1.0}
    ino = best.stat().st_ino
    with caplog.at_level(logging.WARNING, logger="uvireid.engine.trainer"):
        tr._relink_best(latest)
    assert best.stat().st_ino == ino and not caplog.records
    latest.unlink()
    latest.write_bytes(b"epoch 2, again")  # best.pt holds the older file
    with caplog.at_level(logging.WARNING, logger="uvireid.engine.trainer"):
        tr._relink_best(latest)
    assert os.path.samefile(latest, best)
    assert [r.getMessage() for r in caplog.records] == [
        "checkpoints/best.pt was older than the best epoch 2; linked again"
    ]


def test_a_stage_started_from_a_validation_best_does_not_warn_test_set(tmp_path, caplog):
    """A data.validation run's best epoch is chosen on the validation ids (its records
    say selected_on 'validation ids', its best.pt log line too, review FF); the warning of
    a stage that starts from it (start_from: best) said 'chosen ON THE TEST SET'. A
    test-set run's, and an older record without selected_on in a test-set run, still
    say so."""
    from uvireid.engine.checkpoint import keep_as_best, save_checkpoint
    from uvireid.engine.trainer import Stage

    model = torch.nn.Linear(2, 2)
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    best = {"epoch": 1, "mAP": 12.5, "selected_on": "validation ids"}
    save_checkpoint(ckpts, {"model": model.state_dict(), "best": best})
    keep_as_best(ckpts)
    tr = Trainer.__new__(Trainer)
    tr.folder, tr.model = SimpleNamespace(checkpoints=ckpts), model
    tr.dataset = SimpleNamespace(validation=True)
    stage = Stage("pgm2", 1, 1, 0.0, {}, {}, None, [], first_epoch=2, start_from="best")
    with caplog.at_level(logging.WARNING, logger="uvireid.engine.trainer"):
        info = tr._load_best(stage)
    assert info == {"checkpoint": "best.pt", "epoch": 1, "mAP": 12.5}
    (msg,) = [
        r.getMessage()
        for r in caplog.records
        if "starts from checkpoints/best.pt" in r.getMessage()
    ]
    assert "validation ids" in msg and "TEST SET" not in msg.upper(), msg
    tr.dataset = SimpleNamespace(validation=False)
    for record in ({**best, "selected_on": "test set"}, {"epoch": 1, "mAP": 12.5}):
        save_checkpoint(ckpts, {"model": model.state_dict(), "best": record})
        keep_as_best(ckpts)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="uvireid.engine.trainer"):
            tr._load_best(stage)
        assert "chosen ON THE TEST SET" in caplog.text


class _LinearBackbone(torch.nn.Module):
    """The pooled feature a linear map of the pixels, the neck's output twice it."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 4 * 2, 5)

    def forward(self, x, modality):
        pool = self.fc(x.flatten(1))
        return SimpleNamespace(global_feat=pool, bn_feat=2 * pool, feature_map=None)


class _NoAugment:
    ltg_p, jitter_views = 0.0, ()

    def __call__(self, x, view, device):
        return x.float()


@pytest.mark.parametrize("sr", [3, 0])
def test_the_pooled_features_are_split_by_each_modalitys_own_batch_size(sr):
    """outputs.pool_v / pool_a / pool_r are the rows of the [v; a; r] batch: sv, sv and
    sr of them, where sr may differ from sv (PGM's identity sampler: 8 visible and 16
    infrared labels; a modality without a cluster contributes no image), checked
    against the backbone's pooled features computed apart."""
    import copy

    from uvireid.engine.trainer import Stage, TrainModel

    class Spy(torch.nn.Module):
        needs_pool = True

        def forward(self, outputs, targets):
            seen.append(outputs.detach())
            return outputs.feat_v.sum() * 0.0

    seen: list = []
    torch.manual_seed(0)
    tr = Trainer.__new__(Trainer)
    tr.model = tr.ddp_model = TrainModel(_LinearBackbone())
    ref = copy.deepcopy(tr.model.backbone)  # before the step moves the weights
    tr.images_v = torch.randint(0, 255, (6, 3, 4, 2), dtype=torch.uint8)
    tr.images_r = torch.randint(0, 255, (5, 3, 4, 2), dtype=torch.uint8)
    tr.augment, tr.device, tr.tr, tr._loss_fns = _NoAugment(), "cpu", {"amp": False}, {}
    tr.optimizer = torch.optim.SGD(tr.model.parameters(), lr=0.1)
    zeros_v, zeros_r = np.zeros(6, np.int64), np.zeros(5, np.int64)
    lab = EpochLabels(
        vis_in_v=zeros_v,
        vis_in_r=zeros_v - 1,
        ir_in_r=zeros_r,
        ir_in_v=zeros_r - 1,
        init_v=zeros_v,
        init_r=zeros_r,
        num_v=1,
        num_r=1,
        has_cross=False,
    )
    iv, ir = np.array([4, 1]), np.array([0, 3, 2])[:sr]
    stage = Stage("s", 1, 1, 0.0, {}, {}, None, [{"type": "spy"}])
    tr.step(stage, torch.nn.ModuleList([Spy()]), lab, SimpleNamespace(idx_v=iv, idx_r=ir), False)
    (out,) = seen
    with torch.no_grad():
        want_v = ref(tr.images_v[iv].float(), None).global_feat
        want_r = ref(tr.images_r[ir].float(), None).global_feat
    torch.testing.assert_close(out.pool_v, want_v)
    torch.testing.assert_close(
        out.pool_a, want_v
    )  # the augmenter here leaves both views as they are
    assert out.pool_r.shape == (sr, 5)
    torch.testing.assert_close(out.pool_r, want_r)


def test_separate_spaces_bound_labels_and_matches_by_their_own_cluster_counts():
    """_check_cross_labels with the spaces apart (every built-in associator), visible 3
    clusters and infrared 2: a label equal to its space's count is one past the end
    (labels 0..K-1); a match (visible, infrared) is bounded by kv on its first column and
    kr on its second, not the other way round."""
    from uvireid.engine.trainer import _check_cross_labels

    nv, nr, kv, kr = 6, 4, 3, 2
    in_v = np.r_[np.arange(nv) % kv, np.arange(nr) % kv]
    in_r = np.r_[np.arange(nv) % kr, np.arange(nr) % kr]
    ok = np.array([[2, 1], [0, 0]])  # the last visible cluster with the last infrared one
    out = _check_cross_labels(CrossLabels(in_v, in_r, ok), nv, nr, kv, kr, "plugin")
    assert out.matches.tolist() == ok.tolist()
    with pytest.raises(TrainingError, match="matches outside the clusters \\(first: \\[1, 2\\]"):
        _check_cross_labels(CrossLabels(in_v, in_r, np.array([[1, 2]])), nv, nr, kv, kr, "p")
    with pytest.raises(TrainingError, match="labels_in_r from 0 to 2, outside -1..1"):
        _check_cross_labels(
            CrossLabels(in_v, np.where(in_r == 1, 2, in_r), ok), nv, nr, kv, kr, "p"
        )
    with pytest.raises(TrainingError, match="labels_in_v from 0 to 3, outside -1..2"):
        _check_cross_labels(
            CrossLabels(np.where(in_v == 2, 3, in_v), in_r, ok), nv, nr, kv, kr, "p"
        )


def test_the_cpu_warns_of_tf32_alone_as_without_effect(recipe_file, caplog):
    """train.tf32 (a CUDA matmul setting) on a CPU run is named as without effect on its
    own too, not only together with train.cuda_graphs."""
    from uvireid.config import load_recipe
    from uvireid.registry import DATASETS

    cfg = load_recipe(recipe_file, ["train.tf32=true"])
    with caplog.at_level(logging.WARNING, logger="uvireid.engine.trainer"):
        Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    assert "train.tf32=true has no effect on cpu (CUDA only)" in caplog.text
    assert "cuda_graphs" not in caplog.text


def test_a_resume_on_a_gpu_is_not_warned_of_the_cpu_thread_count(monkeypatch, caplog):
    """The thread-count warning of a resume is about torch's CPU kernels: a run that
    trains on CUDA is not warned (its sums are the GPU's), one on the CPU is."""
    import uvireid.engine.trainer as T

    class Loaded(Exception):
        pass

    def stop(*args):
        raise Loaded

    state = {"seed": 1, "dataset": None, "cpu_threads": 7, "precision": "float32", "model": {}}
    monkeypatch.setattr(T, "load_checkpoint", lambda path: dict(state))
    monkeypatch.setattr(T, "load_state_strict", stop)  # the checks come first
    for device, warned in (("cuda:0", False), ("cpu", True)):
        tr = Trainer.__new__(Trainer)
        tr.cfg, tr.tr, tr.device = {"seed": 1}, {"threads": 3}, device
        tr.dataset, tr.precision, tr.source, tr.model = None, "float32", None, None
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="uvireid.engine.trainer"):
            with pytest.raises(Loaded):
                tr.restore("latest.pt")
        said = [r.getMessage() for r in caplog.records if "CPU thread" in r.getMessage()]
        assert len(said) == warned, (device, said)
        if warned:
            assert "trained on 7 CPU thread(s), this process has 3" in said[0]
