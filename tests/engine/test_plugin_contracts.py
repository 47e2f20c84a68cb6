"""Plugin parts in a real run, where the trainer's contracts meet a part written outside
uvireid (audit BO, session 19): each test registers a part in-process and runs the engine
tests' tiny recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from train_fixtures import run_killed_at, tiny_recipe

import uvireid
from uvireid.config import validate
from uvireid.engine.runner import preflight, run_recipe
from uvireid.registry import ASSOCIATORS, BACKBONES, DATASETS, LOSSES


def _one_stage(tmp_path, loss: dict, epochs: int = 1) -> dict:
    cfg = tiny_recipe(tmp_path, name="tiny")
    cfg["stages"] = [dict(cfg["stages"][0], epochs=epochs, losses=[loss])]
    return cfg


class _MemLossBase(nn.Module):
    """A plugin loss with a memory per modality whose size is the epoch's cluster count
    (the contract: reset(EpochContext) re-initialises it, update(outputs, targets))."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mem_v", torch.zeros(0, 0))
        self.register_buffer("mem_r", torch.zeros(0, 0))

    def reset(self, context):
        def cent(f, lab, k):
            f, lab = torch.as_tensor(f).float(), torch.as_tensor(lab)
            return F.normalize(torch.stack([f[lab == i].mean(0) for i in range(k)]), dim=1)

        self.mem_v = cent(context.feats_v, context.init_v, context.num_v)
        self.mem_r = cent(context.feats_r, context.init_r, context.num_r)

    def forward(self, outputs, targets):
        zv, zr = F.normalize(outputs.feat_v, dim=1), F.normalize(outputs.feat_r, dim=1)
        return F.cross_entropy(zv @ self.mem_v.T / 0.05, targets.vis_in_v, ignore_index=-1) + (
            F.cross_entropy(zr @ self.mem_r.T / 0.05, targets.ir_in_r, ignore_index=-1)
        )


class _MemLoss(_MemLossBase):
    @torch.no_grad()
    def update(self, outputs, targets):
        pass


def test_plugin_loss_with_an_epoch_sized_memory_resumes(tmp_path, registered):
    """A plugin memory sized by reset (the epoch's cluster count) resumes: the resumed
    run's fresh losses take the checkpoint's buffer shapes (it failed with 'size
    mismatch ... Load it with the recipe that wrote it', the same recipe)."""
    registered(LOSSES, "zz_bo_mem", _MemLoss)
    cfg = validate(_one_stage(tmp_path, {"type": "zz_bo_mem"}, epochs=2))
    part = run_killed_at(cfg, epoch=1)
    resumed = run_recipe(cfg, resume=True, progress=False)
    assert resumed.path == part.path
    assert [m["epoch"] for m in resumed.read_metrics()] == [0, 1]


class _LearnLoss(nn.Module):
    """A plugin loss with a learnable head (a classifier / projection)."""

    made: list = []

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(512, 4)  # ResNet-18 features
        self.w0 = self.head.weight.detach().clone()
        _LearnLoss.made.append(self)

    def forward(self, outputs, targets):
        y = targets.vis_in_v.clamp(max=3)
        return F.cross_entropy(self.head(outputs.feat_v), y, ignore_index=-1)


def test_plugin_loss_parameters_are_refused_not_left_untrained(tmp_path, registered):
    """A loss's own parameters took gradients and never moved (the optimiser holds the
    model's): refused before training, in --dry-run too, naming the loss."""
    registered(LOSSES, "zz_bo_learn", _LearnLoss)
    _LearnLoss.made.clear()
    cfg = validate(_one_stage(tmp_path, {"type": "zz_bo_learn"}))
    with pytest.raises(uvireid.UvireidError, match=r"losses.0 \(zz_bo_learn\).*trainable"):
        preflight(cfg)
    with pytest.raises(uvireid.UvireidError, match=r"losses.0 \(zz_bo_learn\).*trainable"):
        run_recipe(cfg, progress=False)


class _TupleAssociator:
    """Returns (labels_in_v, labels_in_r) instead of a CrossLabels."""

    def associate(self, feats_v, labels_v, feats_r, labels_r):
        lv, lr = np.asarray(labels_v), np.asarray(labels_r)
        return np.concatenate([lv, -np.ones_like(lr)]), np.concatenate([-np.ones_like(lv), lr])


def test_associator_returning_a_tuple_is_a_clear_error(tmp_path, registered):
    """Was: AttributeError: 'tuple' object has no attribute 'num_clusters_v'."""
    registered(ASSOCIATORS, "zz_bo_tuple", _TupleAssociator)
    cfg = tiny_recipe(tmp_path, name="tiny")
    cfg["stages"][1]["associator"] = {"type": "zz_bo_tuple"}
    with pytest.raises(uvireid.UvireidError, match="zz_bo_tuple"):
        run_recipe(validate(cfg), progress=False)


@pytest.mark.parametrize("bad", ["float", "vector"])
def test_loss_returning_a_non_scalar_is_a_clear_error(tmp_path, registered, bad):
    """Was: a float gave AttributeError: 'float' object has no attribute 'detach'; a (2,)
    tensor 'grad can be implicitly created only for scalar outputs'."""

    class Bad(nn.Module):
        def forward(self, outputs, targets):
            v = outputs.feat_v.sum() * 0.0
            return float(v.detach()) if bad == "float" else torch.stack([v, v])

    registered(LOSSES, "zz_bo_bad", Bad)
    cfg = validate(_one_stage(tmp_path, {"type": "zz_bo_bad"}))
    with pytest.raises(uvireid.UvireidError, match="zz_bo_bad"):
        run_recipe(cfg, progress=False)


class _NoExtract(nn.Module):
    """A backbone without extract()/out_dim (what the trainer calls)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x, modality=0):
        return self.conv(x).mean((2, 3))


def test_backbone_without_the_trainers_methods_is_refused_by_dry_run(tmp_path, registered):
    """BACKBONES had no contract: --dry-run passed, the run failed after its first stage
    with AttributeError: '_NoExtract' object has no attribute 'extract'."""
    registered(BACKBONES, "zz_bo_noextract", _NoExtract)
    cfg = tiny_recipe(tmp_path, name="tiny")
    cfg["backbone"] = {"type": "zz_bo_noextract"}
    with pytest.raises(uvireid.UvireidError, match="zz_bo_noextract"):
        preflight(validate(cfg))


def test_duck_typed_dataset_results_are_not_labelled_sysu(tmp_path, registered):
    """A plugin dataset without meta() (optional) evaluated with sysu-all read as a
    SYSU-MM01 result in results.json, features.npz and every table."""
    cfg = tiny_recipe(tmp_path, name="tiny")
    sysu = DATASETS.build(cfg["data"])

    class Mine:
        """My own data, laid out as SYSU-MM01's cameras."""

        def __init__(self, root: str):
            self.train, self.test = sysu.train, sysu.test
            self.protocols = ["sysu-all"]

    registered(DATASETS, "zz_bo_mine", Mine)
    cfg["data"] = {"type": "zz_bo_mine", "root": cfg["data"]["root"]}
    cfg["stages"] = cfg["stages"][:1]
    folder = run_recipe(validate(cfg), progress=False)
    meta = uvireid.load_features(folder.path / "features.npz").meta
    assert meta.get("dataset") == "zz_bo_mine"
    import json

    res = json.loads((folder.path / "results.json").read_text())
    assert res["none"]["provenance"]["dataset"] != "SYSU-MM01"


def test_unknown_part_names_the_plugin_that_failed_to_load(monkeypatch):
    """The error said the part 'appears once that package is installed' while the
    package is installed and failed to import."""
    from uvireid.registry import CLUSTERERS, PLUGIN_ERRORS

    monkeypatch.setitem(
        PLUGIN_ERRORS, "zzplug", "ImportError: no module named foo (not registered: zz_km)"
    )
    with pytest.raises(uvireid.UvireidError, match="zzplug"):
        CLUSTERERS.build("zz_km")


class _MisnamedUpdate(_MemLossBase):
    """The memory update written as `updat` (a typo): never called, nothing said."""

    def updat(self, outputs, targets):
        pass


def test_loss_with_buffers_but_no_update_is_warned(tmp_path, registered, caplog):
    """A memory loss whose update is missing or misnamed trained against frozen
    epoch-start prototypes, silently."""
    import logging

    registered(LOSSES, "zz_bo_noupdate", _MisnamedUpdate)
    cfg = validate(_one_stage(tmp_path, {"type": "zz_bo_noupdate"}))
    with caplog.at_level(logging.WARNING):
        run_recipe(cfg, progress=False)
    assert any(
        "zz_bo_noupdate" in r.getMessage() and "update" in r.getMessage() for r in caplog.records
    )


class _CameraAware(_MemLossBase):
    """Records what reset receives: the cameras a camera-aware memory needs."""

    seen: list = []

    def reset(self, context):
        super().reset(context)
        _CameraAware.seen.append((context.cams_v, context.cams_r, len(context.feats_v)))

    @torch.no_grad()
    def update(self, outputs, targets):
        pass


def test_reset_receives_each_training_images_camera(tmp_path, registered):
    """A camera-aware loss (camera proxies) needs each image's camera: EpochContext has
    them in the features' order, indexable by a step's targets.idx_v."""
    registered(LOSSES, "zz_bo_cams", _CameraAware)
    _CameraAware.seen.clear()
    cfg = validate(_one_stage(tmp_path, {"type": "zz_bo_cams"}))
    run_recipe(cfg, progress=False)
    cams_v, cams_r, n = _CameraAware.seen[0]
    sysu = DATASETS.build(cfg["data"])
    assert len(cams_v) == n and set(cams_v) == {r.cam for r in sysu.train if r.modality == 0}
    assert set(cams_r) == {r.cam for r in sysu.train if r.modality == 1}


class _Wrapped(nn.Module):
    """A backbone adapter that forwards what it lacks (extract, out_dim) to its inner model."""

    def __init__(self):
        super().__init__()
        self.inner = BACKBONES.build(
            {"type": "two_stream_resnet", "arch": "resnet18", "share_from": "stem"}
        )

    def forward(self, x, modality):
        return self.inner(x, modality)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


def test_a_wrapper_backbone_that_forwards_extract_passes_dry_run(tmp_path, registered):
    """The class check of --dry-run leaves a class with its own __getattr__ to the build's
    check (audit BT: a valid adapter was refused)."""
    registered(BACKBONES, "zz_bt_wrapped", _Wrapped)
    assert callable(BACKBONES.build({"type": "zz_bt_wrapped"}).extract)
    cfg = tiny_recipe(tmp_path, name="tiny")
    cfg["backbone"] = {"type": "zz_bt_wrapped"}
    preflight(validate(cfg))


def test_a_loss_with_constant_buffers_and_no_memory_is_not_warned(caplog):
    """Class weights (CrossEntropyLoss(weight=...)) are a buffer of a stateless loss: no
    reset or update is needed, and none is asked for (audit BT)."""
    import logging

    from uvireid.engine.trainer import check_loss_module

    class WeightedID(nn.Module):
        def __init__(self):
            super().__init__()
            self.ce = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0]))

        def forward(self, outputs, targets):
            return outputs.feat_v.sum() * 0

    with caplog.at_level(logging.WARNING):
        check_loss_module(WeightedID(), "stage 'x': losses.0 (weighted_id)")
    assert not caplog.records


def test_a_library_dataset_is_labelled_by_its_own_name():
    """dataset_meta takes the dataset object's name before the recipe's data.type (a
    library user's dataset passed with a SYSU recipe read as sysu: audit BT)."""
    from uvireid.engine.run_folder import dataset_meta

    class Mine:
        name, title = "mine", "My cameras"

    assert dataset_meta(Mine(), {"data": {"type": "sysu"}}) == {
        "dataset": "mine",
        "title": "My cameras",
    }


def test_a_plugin_reranker_without_a_name_is_named_by_its_spec(registered):
    """Tables and provenance named a re-ranker without ``name`` by its class, so two
    settings read the same (audit BO); now its registered name and settings."""
    from uvireid.evaluation.protocols import _reranker_name
    from uvireid.registry import RERANKERS
    from uvireid.rerank import OnDevice

    class Cos:
        def __init__(self, k: int = 1):
            self.k = k

        def rerank(self, query, gallery):
            return -(query @ gallery.T)

    registered(RERANKERS, "zz_bo_cos", Cos)
    three = RERANKERS.build({"type": "zz_bo_cos", "k": 3})
    assert _reranker_name(three) == "zz_bo_cos(k=3)"
    assert OnDevice(three, "cpu").name == "zz_bo_cos(k=3)"
    assert _reranker_name(RERANKERS.build({"type": "zz_bo_cos"})) == "zz_bo_cos"
    assert _reranker_name(Cos()) == "Cos"  # built outside the registry
    assert _reranker_name(RERANKERS.build({"type": "cmfp"})) == "cmfp(k=30)"
