"""The training engine: a 2-stage end-to-end run, metrics, warnings, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from train_fixtures import link_counts_loop, random_cross_labels, tiny_recipe

from uvireid.config import load_recipe
from uvireid.engine.checkpoint import load_checkpoint
from uvireid.engine.runner import run_recipe
from uvireid.engine.trainer import Trainer, stages_of
from uvireid.errors import ConfigError, TrainingError


@pytest.mark.slow
def test_two_stage_run_fills_the_run_folder(recipe_file):
    cfg = load_recipe(recipe_file)
    folder = run_recipe(cfg, progress=False)
    files = {p.name for p in folder.path.iterdir()}
    assert {
        "config.yaml",
        "manifest.json",
        "metrics.jsonl",
        "log.txt",
        "results.json",
        "features.npz",
        "checkpoints",
    } <= files
    lines = folder.read_metrics()
    assert [line["stage"] for line in lines] == ["dcl", "salcr"]
    first, second = lines
    assert set(first["loss"]) == {"cluster_contrast", "total"}
    assert set(second["loss"]) == {
        "dual_cluster_contrast",
        "part_contrast",
        "instance_neighbour",
        "total",
    }
    assert second["loss"]["part_contrast"] > 0 and second["loss"]["instance_neighbour"] > 0
    assert first["clusters"]["visible"] > 0 and first["clusters"]["infrared"] > 0
    assert {"visible", "infrared"} <= set(first["label_quality"])
    assert "links" not in first["label_quality"]  # DCL: no cross-modal labels
    assert 0 <= second["label_quality"]["links"]["link_precision"] <= 1
    assert {"extract", "cluster", "train"} <= set(first["seconds"])
    assert "associate" in second["seconds"] and "association" in second
    # peak host memory: ru_maxrss as the kernel reports it (independent: /proc's VmHWM)
    with open("/proc/self/status") as fh:
        hwm_kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    assert 0 < second["memory"]["host_peak_rss_gib"] <= hwm_kib / 2**20 + 1e-9
    assert first["memory"]["host_peak_rss_gib"] <= second["memory"]["host_peak_rss_gib"]
    assert second["eval"]["none"]["mean"]["mAP"] > 0  # evaluated at the end
    # each row says what produced it (audit G: bare means before)
    assert second["eval"]["none"]["provenance"]["protocol"] == "sysu-all"
    assert set(second["eval"]["none"]["std"]) == set(second["eval"]["none"]["mean"])
    assert second["lr"] == pytest.approx(cfg["train"]["lr"] * 0.1)  # step at epoch 1
    manifest = json.loads((folder.path / "manifest.json").read_text())
    assert [s["stage"] for s in manifest["batch"]["stages"]] == ["dcl", "salcr"]
    assert manifest["batch"]["stages"][0]["per_gpu"] == 12
    # 2 ids x 2 images: the visible stream's layers see both visible views, the infrared one
    assert manifest["batch"]["stages"][0]["per_batchnorm_specific"] == {
        "visible": 8,
        "infrared": 4,
    }
    ckpt = load_checkpoint(folder.checkpoints / "latest.pt")
    assert ckpt["epoch"] == 2 and ckpt["stage"] == "salcr"
    assert set(ckpt["losses"]) == {"dcl", "salcr"}
    results = json.loads((folder.path / "results.json").read_text())
    assert "none" in results


def test_recipe_with_top_level_losses_is_one_stage(tmp_path):
    rec = tiny_recipe(tmp_path, losses=[{"type": "cluster_contrast", "weight": 2.0}])
    del rec["stages"]
    path = tmp_path / "one.yaml"
    import yaml

    path.write_text(yaml.safe_dump(rec))
    cfg = load_recipe(path, ["train.epochs=3"])
    (stage,) = stages_of(cfg)
    assert stage.name == "train" and stage.epochs == 3 and stage.sampler["type"] == "identity"
    assert stage.losses[0]["weight"] == 2.0


def test_stage_keys_are_checked(recipe_file):
    with pytest.raises(ConfigError, match="did you mean 'stages.0.epochs'"):
        load_recipe(recipe_file, ["stages.0.epoch=3"])
    with pytest.raises(
        ConfigError, match="sampler 'paird' is not registered; did you mean 'paired'"
    ):
        load_recipe(recipe_file, ["stages.1.sampler.type=paird"])
    with pytest.raises(ConfigError, match="did you mean 'stages.0.losses.0.temperature'"):
        load_recipe(recipe_file, ["stages.0.losses.0.temprature=0.1"])
    with pytest.raises(ConfigError, match="stages add up to 2 epochs"):
        load_recipe(recipe_file, ["train.epochs=5"])
    cfg = load_recipe(recipe_file)
    assert cfg["train"]["epochs"] == 2
    assert cfg["stages"][0]["clusterer"]["type"] == "dbscan"  # inherited, resolved
    assert cfg["stages"][0]["associator"] is None


def test_missing_dataset_root_is_a_dataset_error(recipe_file, tmp_path):
    from uvireid.errors import DatasetError

    cfg = load_recipe(recipe_file, [f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(DatasetError, match="does not exist"):
        run_recipe(cfg, progress=False)


def _trainer(cfg):
    from uvireid.registry import DATASETS

    return Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)


def test_no_cross_link_falls_back_to_intra_modality_batches(recipe_file, monkeypatch, caplog):
    from uvireid.types import CrossLabels

    cfg = load_recipe(recipe_file)
    tr = _trainer(cfg)
    tr.load_data()

    def empty(self, fv, lv, fr, lr):
        n = len(lv) + len(lr)
        return CrossLabels(
            np.r_[lv, np.full(len(lr), -1)],
            np.r_[np.full(len(lv), -1), lr],
            np.zeros((0, 2), np.int64),
            num_visible=len(lv),
            num_clusters_v=int(lv.max()) + 1,
            num_clusters_r=int(lr.max()) + 1,
        )
        del n

    from uvireid.associations.otla import OTLADual

    monkeypatch.setattr(OTLADual, "associate", empty)
    tr.epoch = 1
    record = tr.train_epoch(1)
    assert record["paired"] is False
    assert any("no cross-modal link" in w for w in record["warnings"])
    assert "skipping the cross-modal terms" in caplog.text
    assert np.isfinite(record["loss"]["total"])
    # has_cross follows the association, not a constant (mutation audit CE, T3): the epoch
    # says it skipped the cross terms, and scores each modality's labels alone
    assert tr.labels.has_cross is False
    assert "no cross-modal link in epoch 1: cross terms skipped" in record["warnings"]
    assert set(record["label_quality"]) == {"visible", "infrared"}


def test_clustering_and_association_run_on_the_training_device(recipe_file, monkeypatch, device):
    """The epoch's pseudo-labels are computed where the model trains: the clusterer and
    the associator get tensors on the training device (numpy would pin them to the host
    CPU, 20 s an epoch at SYSU size on a GPU machine instead of 0.3 s)."""
    from uvireid.associations.otla import OTLADual
    from uvireid.clustering.dbscan import DBSCANClusterer
    from uvireid.registry import DATASETS

    seen = []
    fit, assoc = DBSCANClusterer.fit_predict, OTLADual.associate

    def fit_spy(self, features):
        seen.append(("cluster", type(features), getattr(features, "device", None)))
        return fit(self, features)

    def assoc_spy(self, fv, lv, fr, lr):
        seen.append(("associate", type(fv), getattr(fv, "device", None)))
        return assoc(self, fv, lv, fr, lr)

    monkeypatch.setattr(DBSCANClusterer, "fit_predict", fit_spy)
    monkeypatch.setattr(OTLADual, "associate", assoc_spy)
    cfg = load_recipe(recipe_file)
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), device, None, progress=False)
    tr.load_data()
    tr.epoch = 1
    record = tr.train_epoch(1)  # the second stage: cluster both modalities, then associate
    assert [s[0] for s in seen] == ["cluster", "cluster", "associate"]
    assert all(t is torch.Tensor and d.type == device for _, t, d in seen), seen
    assert np.isfinite(record["loss"]["total"])


def test_channels_last_training_follows_the_nchw_run(recipe_file):
    """``train.channels_last`` (on by default on CUDA, forced here on the CPU): the weights
    stay NHWC through the optimiser steps and the epoch trains as the NCHW run does."""
    records, firsts = [], []
    for cl in ("false", "true"):
        cfg = load_recipe(recipe_file, [f"train.channels_last={cl}"])
        torch.manual_seed(0)
        tr = _trainer(cfg)
        tr.load_data()
        records.append(tr.train_epoch(0))
        firsts.append(next(p for p in tr.model.parameters() if p.dim() == 4))
    assert not firsts[0].is_contiguous(memory_format=torch.channels_last)
    assert firsts[1].is_contiguous(memory_format=torch.channels_last)
    a, b = (r["loss"]["total"] for r in records)
    assert np.isfinite(a) and abs(a - b) <= 1e-3 * abs(a), (a, b)
    assert records[0]["clusters"] == records[1]["clusters"]


@pytest.mark.parametrize(
    "device, flag, where",
    [
        ("cpu", "true", "cpu"),  # ignored on the CPU
        pytest.param(
            "cuda",
            "null",
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ),
        pytest.param(
            "cuda",
            "false",
            "cpu",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ),
    ],
)
def test_training_images_are_placed_as_asked(recipe_file, device, flag, where):
    from uvireid.registry import DATASETS

    cfg = load_recipe(recipe_file, [f"train.images_on_device={flag}"])
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), device, None, progress=False)
    tr.load_data()
    assert tr.images_v.device.type == where and tr.images_r.device.type == where
    assert tr.images_v.dtype == torch.uint8
    assert np.isfinite(tr.train_epoch(0)["loss"]["total"])


def test_no_cluster_at_all_is_a_training_error(recipe_file):
    cfg = load_recipe(recipe_file, ["clusterer.eps=0.0001", "clusterer.min_samples=50"])
    tr = _trainer(cfg)
    tr.load_data()
    with pytest.raises(TrainingError, match="no cluster in either modality"):
        tr.train_epoch(0)


def test_collapse_of_a_cluster_count_is_warned(recipe_file, caplog):
    cfg = load_recipe(recipe_file)
    tr = _trainer(cfg)
    tr.counts = {"visible": 1000, "infrared": 1}
    tr.load_data()
    record = tr.train_epoch(0)
    assert any("visible cluster count collapsed" in w for w in record["warnings"])
    assert "collapsed" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",
        pytest.param(
            "inductor",
            marks=pytest.mark.skipif(
                not os.environ.get("UVIREID_TEST_INDUCTOR"),
                reason="inductor's first C++ build takes a minute on two cores: set "
                "UVIREID_TEST_INDUCTOR=1 to run it",
            ),
        ),
    ],
)
def test_compiled_losses_train_as_the_eager_ones(recipe_file, monkeypatch, backend):
    """``train.compile_losses``: the SALCR stage's loss terms (DAGL's cluster contrast,
    whose InfoNCE the DCL stage's is, FGSAL's and GPCR's) through ``torch.compile`` give
    the eager run's loss values and gradients. With lr = 0 both runs see the same weights
    at every step (Adam would otherwise turn rounding-level differences of near-zero
    gradients into whole steps), so the epoch's mean losses and the last step's gradients
    compare. The suite compiles with ``aot_eager``: dynamo's tracing of the loss code with
    every size symbolic (the memories included) and AOT autograd's functionalised forward
    and backward with the memories' in-place updates, which is what the loss code can
    break. Inductor's C++ kernels (torch's own) took 60 s of a clean CI run on two cores,
    the whole suite's margin; ``UVIREID_TEST_INDUCTOR=1`` runs them too."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=backend, **kw))
    records, grads = [], []
    for flag in ("false", "true"):
        cfg = load_recipe(recipe_file, [f"train.compile_losses={flag}", "train.lr=0"])
        torch.manual_seed(0)
        tr = _trainer(cfg)
        tr.load_data()
        records.append([tr.train_epoch(1)])
        grads.append({k: p.grad for k, p in tr.model.named_parameters() if p.grad is not None})
        compiled = [getattr(fn, "compiled", False) for fn in tr._loss_fns.values()]
        assert compiled == [flag == "true"], tr._loss_fns
    for eager, comp in zip(*records):
        assert eager["clusters"] == comp["clusters"]
        assert eager["loss"].keys() == comp["loss"].keys()
        for k, v in eager["loss"].items():
            assert np.isfinite(v) and abs(v - comp["loss"][k]) <= 1e-5 * max(abs(v), 1.0), k
    assert {"dual_cluster_contrast", "part_contrast", "instance_neighbour"} <= set(
        records[1][0]["loss"]
    )
    assert grads[0].keys() == grads[1].keys() and any("parts" in k for k in grads[0])
    # float32 sums over the batch and the map differ in order between the kernels: the
    # first convolutions' gradients (sums over every pixel) agree to ~1e-6 of their largest
    # entry, measured up to 1.3e-6 (2026-11-26), so 1e-5 of it is the bound
    for k, g in grads[0].items():
        assert torch.allclose(g, grads[1][k], rtol=1e-4, atol=1e-5 * g.abs().max()), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_losses_train_as_the_eager_ones(recipe_file):
    """``train.cuda_graphs`` on CUDA: the DCL and SALCR stages' losses replayed as graphs
    (captured again each epoch) give the eager run's losses, as the compiled ones above
    (lr = 0, deterministic kernels: both runs see the same features)."""
    from uvireid.engine.graphs import GraphedLosses
    from uvireid.registry import DATASETS

    records = []
    for flag in ("false", "true"):
        over = [f"train.cuda_graphs={flag}", "train.lr=0", "train.deterministic=true"]
        cfg = load_recipe(recipe_file, over)
        torch.manual_seed(0)
        tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cuda", None, progress=False)
        tr.load_data()
        records.append([tr.train_epoch(0), tr.train_epoch(1)])
        fns = list(tr._loss_fns.values())
        if flag == "true":
            assert all(isinstance(fn, GraphedLosses) for fn in fns), fns
            assert all(fn.failed is None and fn.captures >= 1 for fn in fns), fns
    for eager, graphed in zip(*records):
        assert eager["clusters"] == graphed["clusters"]
        assert eager["loss"].keys() == graphed["loss"].keys()
        for k, v in eager["loss"].items():
            assert np.isfinite(v) and abs(v - graphed["loss"][k]) <= 1e-5 * max(abs(v), 1.0), k


def test_train_step_moves_the_weights(recipe_file):
    cfg = load_recipe(recipe_file)
    tr = _trainer(cfg)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.load_data()
    tr.train_epoch(0)
    after = tr.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("shared" in k for k in changed) and any("specific" in k for k in changed)


@pytest.mark.parametrize(
    "associator,sampler,losses",
    [
        ("pgm", "identity", [{"type": "alternate_cross_contrast"}]),
        ("mbccm", "paired", [{"type": "cluster_contrast"}, {"type": "modality_agnostic"}]),
    ],
)
def test_peer_stages_train_end_to_end(tmp_path, associator, sampler, losses):
    """PGM's and MBCCM's second stage as recipes assemble them: 2 epochs, finite losses."""
    rec = tiny_recipe(tmp_path)
    rec["stages"][1] = {
        "name": associator,
        "epochs": 2,
        "lr": 1e-4,
        "lr_steps": [1],
        "sampler": {"type": sampler, "ids": 2, "images": 2},
        "associator": {"type": associator},
        "losses": losses,
    }
    import yaml

    path = tmp_path / "peer.yaml"
    path.write_text(yaml.safe_dump(rec))
    folder = run_recipe(load_recipe(path), progress=False)
    lines = folder.read_metrics()
    assert [line["stage"] for line in lines] == ["dcl", associator, associator]
    for line in lines[1:]:
        assert set(line["loss"]) == {x["type"] for x in losses} | {"total"}
        assert all(np.isfinite(v) for v in line["loss"].values())
    # the second stage restarts at its own lr and steps after its first epoch
    assert lines[1]["lr"] == pytest.approx(1e-4) and lines[2]["lr"] == pytest.approx(1e-5)


def test_epoch_quality_reports_link_precision_of_the_cross_labels():
    """label_quality.links: the share of linked (visible, infrared) instance pairs that are
    one person, against a loop over every pair."""
    gv, gr, lab, fake = random_cross_labels(3, 40, 25, ids=5)
    quality = Trainer._quality(fake, lab)
    same, total = link_counts_loop(gv, gr, lab, range(40), range(25))
    assert min(total.values()) > 0
    # the visible space holds the infrared instances' links, the infrared space the visible
    assert quality["cross_r"]["link_precision"] == pytest.approx(same["v2r"] / total["v2r"])
    assert quality["cross_v"]["link_precision"] == pytest.approx(same["r2v"] / total["r2v"])
    both = (same["v2r"] + same["r2v"]) / (total["v2r"] + total["r2v"])
    assert quality["links"]["link_precision"] == pytest.approx(both)


@pytest.mark.slow
def test_keep_best_keeps_the_best_evaluated_epoch(recipe_file):
    """``evaluation.keep_best``: checkpoints/best.pt is the checkpoint of the evaluated
    epoch with the highest mAP (no re-ranker; the first of equal ones), the log and
    metrics.jsonl say which, it survives later epochs' latest.pt, and a resume keeps the
    record. Off: no best.pt."""
    over = ["evaluation.every=1", "evaluation.keep_best=true", "stages.1.epochs=2"]
    cfg = load_recipe(recipe_file, over)
    folder = run_recipe(cfg, progress=False)
    lines = [m for m in folder.read_metrics() if "eval" in m]
    maps = [m["eval"]["none"]["mean"]["mAP"] for m in lines]
    want = lines[int(np.argmax(maps))]["epoch"]  # argmax: the first of equal values
    best = load_checkpoint(folder.checkpoints / "best.pt")
    latest = load_checkpoint(folder.checkpoints / "latest.pt")
    assert best["epoch"] == want + 1 and latest["epoch"] == len(lines)
    assert best["best"] == {"epoch": want, "mAP": max(maps), "selected_on": "test set"}
    assert lines[-1]["best"]["epoch"] == want
    if want + 1 < latest["epoch"]:  # an earlier epoch: other weights than the last
        assert any(not torch.equal(best["model"][k], latest["model"][k]) for k in best["model"])
    tr = _trainer(cfg)
    tr.restore(folder.checkpoints / "latest.pt")
    assert tr.best == latest["best"] == best["best"]
    off = run_recipe(load_recipe(recipe_file, over[:1]), progress=False)
    assert not (off.checkpoints / "best.pt").exists()


def test_refine_propagates_the_features_the_pseudo_labels_are_made_from(recipe_file, monkeypatch):
    """``refine: {type: cmfp}``: each modality is clustered on the CMFP-propagated
    features of the epoch (visible and infrared propagated together), not the raw ones;
    a distance-only re-ranker is refused before anything runs."""
    from uvireid.clustering.dbscan import DBSCANClusterer
    from uvireid.errors import ConfigError
    from uvireid.registry import DATASETS
    from uvireid.rerank.cmfp import CMFP

    seen, raw = [], []
    fit, extract = DBSCANClusterer.fit_predict, Trainer._extract_train

    def fit_spy(self, features):
        seen.append(features.detach().clone())
        return fit(self, features)

    def extract_spy(self, with_parts):
        out = extract(self, with_parts)
        raw.append((out[0].clone(), out[1].clone()))
        return out

    monkeypatch.setattr(DBSCANClusterer, "fit_predict", fit_spy)
    monkeypatch.setattr(Trainer, "_extract_train", extract_spy)
    cfg = load_recipe(recipe_file, ["refine={type: cmfp, k: 3}"])
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    tr.load_data()
    tr.epoch = 1
    record = tr.train_epoch(1)
    assert np.isfinite(record["loss"]["total"]) and "refine" in record["seconds"]
    fv, fr = raw[0]
    want_v, want_r = CMFP(k=3).propagate(fv, fr)  # every fixture image is readable
    torch.testing.assert_close(seen[0], want_v, rtol=0, atol=1e-6)
    torch.testing.assert_close(seen[1], want_r, rtol=0, atol=1e-6)
    assert (seen[0] - fv).abs().max() > 1e-3  # the refinement changed them
    with pytest.raises(ConfigError, match=r"refine: 'aim' re-ranks to distances only.*cmfp"):
        run_recipe(load_recipe(recipe_file, ["refine={type: aim}"]), progress=False)


def test_more_parts_than_the_feature_map_has_pixels_is_refused_at_the_start(recipe_file):
    """At 32 x 16 the ResNet-18 map is 2 x 1: three parts cannot be cut from it. The run
    stops before its first epoch (not when the SALCR stage begins, after DCL trained);
    part losses that disagree on num_parts are named with their stage."""
    cfg = load_recipe(
        recipe_file, ["stages.1.losses.1.num_parts=3", "stages.1.losses.2.num_parts=3"]
    )
    with pytest.raises(ConfigError, match=r"num_parts 3: .* 32 x 16 .* 2 x 1 = 2 pixel"):
        _trainer(cfg)
    cfg = load_recipe(recipe_file, ["stages.1.losses.1.num_parts=3"])
    with pytest.raises(
        ConfigError,
        match=r"num_parts must agree.*'salcr' losses.1 \(part_contrast\): 3, "
        r"stage 'salcr' losses.2 \(instance_neighbour\): 2",
    ):
        _trainer(cfg)
    from uvireid.engine.runner import preflight

    with pytest.raises(ConfigError, match=r"num_parts must agree.*: 3, .*: 2"):
        preflight(cfg)  # --dry-run says it too
    _trainer(load_recipe(recipe_file))  # 2 parts fit


def test_two_losses_of_one_type_are_logged_apart(recipe_file):
    """A stage with two losses of one type logs both terms (``type.N``), and the weighted
    terms add up to the total (the second used to overwrite the first)."""
    cfg = load_recipe(
        recipe_file,
        [
            "stages.0.losses=[{type: cluster_contrast}, "
            "{type: cluster_contrast, weight: 0.5, temperature: 0.1}]"
        ],
    )
    tr = _trainer(cfg)
    tr.load_data()
    record = tr.train_epoch(0)
    loss = record["loss"]
    assert set(loss) == {"total", "cluster_contrast.0", "cluster_contrast.1"}
    want = loss["cluster_contrast.0"] + 0.5 * loss["cluster_contrast.1"]
    assert loss["total"] == pytest.approx(want, rel=1e-5)
    assert loss["cluster_contrast.0"] != pytest.approx(loss["cluster_contrast.1"])


def test_the_untrained_evaluation_logs_its_phases_as_evaluation(recipe_file):
    """Audit G (session 16): the epoch -1 record logged its test-set extraction as a plain
    "extract", which the time curves drew as a training phase."""
    folder = run_recipe(load_recipe(recipe_file, ["evaluation.at_start=true"]), progress=False)
    first = folder.read_metrics()[0]
    assert first["epoch"] == -1 and first["stage"] == "untrained"
    assert first["seconds"] and all(k.startswith("eval_") for k in first["seconds"])


def test_a_stage_started_from_the_best_checkpoint_says_so_in_every_result(recipe_file, tmp_path):
    """Audit G (session 16): PGM's stage 2 starts from best.pt, chosen on the test set;
    only the log said so, not results.json, features.npz, eval's line or extract's file."""
    import json

    from uvireid.cli import main
    from uvireid.evaluation.protocols import run_protocol

    over = ["evaluation.every=1", "evaluation.keep_best=true", "stages.1.start_from=best"]
    folder = run_recipe(load_recipe(recipe_file, over), progress=False)
    results = json.loads((folder.path / "results.json").read_text())
    (start,) = results["none"]["provenance"]["features_meta"]["started_from"]
    assert start["stage"] == "salcr" and start["epoch"] == 0
    assert start["selected_on"] == "test set"
    line = run_protocol(folder.path / "features.npz", "sysu-all").summary()
    assert "stage salcr started from epoch 0 chosen on the test set" in line
    out = tmp_path / "x.npz"
    assert main(["extract", str(folder.path), "-o", str(out)]) == 0
    assert "stage salcr started from epoch 0" in run_protocol(out, "sysu-all").summary()
    from uvireid.viz.report import build_report

    page = build_report(folder.path, queries=2, k=4, tsne_ids=4, dpi=30).html.read_text()
    assert "stage salcr started from epoch 0 chosen on the test set" in page


def test_the_part_losses_get_each_images_share_of_its_joint_part_and_global_norm(
    recipe_file, monkeypatch
):
    """For the official seeding of the part memories (audit M, session 16): per image and
    part, |part_p| / |[parts ‖ bn_feat]|, computed from the same extraction as the parts."""
    from uvireid.losses.part import PartContrastLoss

    seen = []
    real = PartContrastLoss.reset

    def spy(self, context):
        seen.append(context)
        return real(self, context)

    monkeypatch.setattr(PartContrastLoss, "reset", spy)
    over = ["stages.1.losses.1.official_quirks=true"]
    run_recipe(load_recipe(recipe_file, over), progress=False)
    (ctx,) = seen
    for parts, w in ((ctx.parts_v, ctx.part_weights_v), (ctx.parts_r, ctx.part_weights_r)):
        assert w.shape == parts.shape[:2]
        assert bool((w > 0).all()) and bool((w.square().sum(1) < 1).all())  # bn_feat's share


def test_an_epoch_keeps_no_reranker_buffer_of_its_clustered_count(recipe_file, monkeypatch):
    """Audit Z (session 17): CMFP(tr) borrowed (n, n) buffers whose n (the epoch's
    clustered images) never recurs; the workspace kept them (up to 512 MiB) all run."""
    from uvireid.registry import DATASETS
    from uvireid.rerank import workspace

    cfg = load_recipe(recipe_file, ["evaluation.protocol=none", "stages.1.associator.k_tr=3"])
    trainer = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    borrowed = []
    real = workspace.borrow

    def spy(shape, *a, **k):
        borrowed.append(tuple(shape))
        return real(shape, *a, **k)

    monkeypatch.setattr(workspace, "borrow", spy)
    workspace.release()
    trainer.fit()
    assert borrowed, "the recipe's association re-ranked (CMFP(tr)) with the workspace"
    assert workspace.kept_bytes() == 0


def test_training_and_test_images_are_resized_with_their_own_filters(recipe_file, monkeypatch):
    """PGM's recipe: bicubic training/clustering images, LANCZOS test images."""
    import uvireid.engine.trainer as trainer_mod
    from uvireid.registry import DATASETS

    cfg = load_recipe(recipe_file, ["train.resize=bicubic", "train.test_resize=lanczos"])
    trainer = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    calls = []
    real = trainer_mod.load_images

    def spy(records, h, w, **kw):
        calls.append((len(records), kw["resize"]))
        return real(records, h, w, **kw)

    monkeypatch.setattr(trainer_mod, "load_images", spy)
    trainer.load_data()
    n_test = len(trainer.dataset.test)
    assert calls == [
        (len(trainer.vis), "bicubic"),
        (len(trainer.ir), "bicubic"),
        (n_test, "lanczos"),
    ]
    cfg = load_recipe(recipe_file, ["train.resize=bicubic"])  # test_resize null: the same
    calls.clear()
    trainer_mod.load_test_images(trainer.dataset.test, cfg["train"])
    assert calls == [(n_test, "bicubic")]


def test_an_evaluation_only_run_resizes_its_test_images_as_the_trainer_does(recipe_file):
    """Audit AL (session 17): train.test_resize reached the trainer's evaluation and
    `uvireid extract`, but an evaluation-only recipe extracted bilinear images whatever it
    said: the same weights scored differently by the two paths."""
    from uvireid.engine.extract import extract_features
    from uvireid.engine.trainer import extract_test_bank
    from uvireid.models.backbone import TwoStreamResNet
    from uvireid.registry import DATASETS

    cfg = load_recipe(
        recipe_file, ["train.test_resize=lanczos", "train.height=50", "train.width=22"]
    )
    test = DATASETS.build(cfg["data"]).test[:12]
    from PIL import Image

    rng = np.random.default_rng(0)
    for rec in test:  # the fixture's flat images look the same under every filter
        Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(rec.path)
    torch.manual_seed(0)
    model = TwoStreamResNet("resnet18").eval()
    h, w = cfg["train"]["height"], cfg["train"]["width"]
    trainer_side = extract_test_bank(model, test, cfg["train"], "cpu").feats
    eval_side = extract_features(model, test, height=h, width=w, resize="lanczos").feats
    bilinear = extract_features(model, test, height=h, width=w).feats
    assert np.abs(trainer_side - eval_side).max() < 1e-5
    assert np.abs(bilinear - eval_side).max() > 1e-3  # the filter matters here


def test_association_info_keeps_numpy_scalars_and_short_lists():
    """Audit AY: an associator's numpy scalars and OTLA's per-direction tuples were
    dropped from metrics.jsonl without a word; arrays stay out."""
    import numpy as np

    from uvireid.engine.trainer import _plain_info

    assert _plain_info(np.int64(3)) == 3 and type(_plain_info(np.int64(3))) is int
    assert _plain_info(np.float32(0.5)) == 0.5 and type(_plain_info(np.float32(0.5))) is float
    assert _plain_info((12, np.int64(7))) == [12, 7]
    assert _plain_info(torch.tensor(2.0)) == 2.0
    assert _plain_info("sinkhorn") == "sinkhorn" and _plain_info(True) is True
    assert _plain_info(np.zeros(3)) is None and _plain_info([[1]]) is None
    assert _plain_info(list(range(17))) is None  # long lists are not a record's business
