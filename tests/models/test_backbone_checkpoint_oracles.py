"""The checkpoint and error paths of uvireid/models/backbone.py: the prior for every arch,
the prior's name never read as a file, a checkpoint of the right names but another
kernel, a uvireid checkpoint's dataset record of another type, an OSError of a random
initialisation, a learnable GeM p.

resnet18/34, random initialisation, nothing downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from uvireid.errors import ConfigError
from uvireid.models import backbone as bb
from uvireid.models import prior as prior_mod
from uvireid.models.backbone import TwoStreamResNet, build_resnet, uvireid_checkpoint_dataset


def _fake_prior(tmp_path, monkeypatch, arch):
    """A torchvision ``arch`` state dict (seeded) saved as the 'prior'; the prior builder
    replaced by a function that records the arch it is asked for and returns that file."""
    torch.manual_seed(11)
    sd = {
        k: v
        for k, v in getattr(torchvision.models, arch)().state_dict().items()
        if not k.startswith("fc.")
    }
    path = tmp_path / f"prior-{arch}.pth"
    torch.save(sd, path)
    asked = []

    def fake(a="resnet18", **kw):
        asked.append(a)
        return path

    monkeypatch.setattr(prior_mod, "synthetic_visible_prior", fake)
    return sd, asked


def test_the_prior_is_built_for_the_models_own_arch(tmp_path, monkeypatch):
    """pretrained: synthetic-visible with resnet34 loads a resnet34 prior (not only
    resnet18's), into both stems and the trunk."""
    sd, asked = _fake_prior(tmp_path, monkeypatch, "resnet34")
    model = TwoStreamResNet("resnet34", pretrained="synthetic-visible")
    assert asked == ["resnet34"]
    for m in (0, 1):
        assert torch.equal(model.stream(m)[0][0].weight, sd["conv1.weight"])
        assert torch.equal(model.stream(m)[0][1].running_var, sd["bn1.running_var"])
    assert torch.equal(model.shared[2][5].conv2.weight, sd["layer3.5.conv2.weight"])


def test_the_prior_name_is_never_read_as_a_checkpoint_file(tmp_path, monkeypatch):
    """A file called 'synthetic-visible' in the working folder is not the prior: the name
    is not looked up as a uvireid checkpoint (nor as any path)."""
    sd, _ = _fake_prior(tmp_path, monkeypatch, "resnet18")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic-visible").write_bytes(b"not a checkpoint")
    seen = []
    real = bb._uvireid_checkpoint

    def spy(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(bb, "_uvireid_checkpoint", spy)
    model = TwoStreamResNet("resnet18", pretrained="synthetic-visible", share_from="stem")
    assert seen == []
    assert torch.equal(model.shared[0][0].weight, sd["conv1.weight"])


def test_a_checkpoint_with_the_same_out_channels_but_another_kernel_is_named(tmp_path):
    """conv1 saved as 64 x 3 x 3 x 3 (same first dimension as torchvision's 64 x 3 x 7 x 7):
    refused with the ConfigError naming both shapes, not torch's size-mismatch error."""
    sd = {
        k: v
        for k, v in torchvision.models.resnet18().state_dict().items()
        if not k.startswith("fc.")
    }
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    sd["layer1.0.bn1.weight"] = torch.ones(64, 1)  # same numel and first dim, another rank
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    with pytest.raises(ConfigError) as err:
        build_resnet("resnet18", str(path))
    msg = str(err.value)
    assert "2 keys of another shape" in msg
    assert "conv1.weight (64, 3, 3, 3) vs (64, 3, 7, 7)" in msg
    assert "layer1.0.bn1.weight (64, 1) vs (64,)" in msg


def _uvireid_ckpt(path, dataset):
    """A minimal uvireid training checkpoint: format/epoch/model plus numpy's RNG state
    (which is what makes it need numpy's globals, as the trainer's checkpoints do)."""
    from uvireid.engine.checkpoint import FORMAT

    state = {
        "format": FORMAT,
        "epoch": 1,
        "model": {"backbone.pool.p": torch.tensor([3.0])},
        "rng": {
            "numpy": np.random.default_rng(0).bit_generator.state,
            "legacy": np.random.RandomState(0).get_state(),
        },
    }
    if dataset is not ...:
        state["dataset"] = dataset
    torch.save(state, path)


@pytest.mark.parametrize("record", ["sysu_mm01", ["sysu_mm01", 1], 3, None, ...])
def test_a_dataset_record_that_is_not_a_dict_reads_as_none(tmp_path, record):
    path = tmp_path / "ck.pt"
    _uvireid_ckpt(path, record)
    assert bb._uvireid_checkpoint(path) is not None  # it is read as a uvireid checkpoint
    assert uvireid_checkpoint_dataset(path) is None


def test_a_dataset_record_dict_is_returned(tmp_path):
    path = tmp_path / "ck.pt"
    rec = {"dataset": "sysu_mm01", "split": 1, "validation": False}
    _uvireid_ckpt(path, rec)
    assert uvireid_checkpoint_dataset(path) == rec


def test_an_oserror_of_a_random_initialisation_is_not_turned_into_download_advice(monkeypatch):
    """Only pretrained=True downloads: an OSError while building a random ResNet (here
    injected) comes out as itself, not as 'could not fetch torchvision's ImageNet weights'."""

    def broken(weights=None):
        raise OSError("injected")

    monkeypatch.setattr(torchvision.models, "resnet18", broken)
    with pytest.raises(OSError, match="injected") as err:
        build_resnet("resnet18", False)
    assert not isinstance(err.value, ConfigError)


def test_gem_learnable_makes_p_a_trained_parameter():
    model = TwoStreamResNet("resnet18", gem_learnable=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "pool.p" in names
    assert "pool.p" not in {n for n, _ in TwoStreamResNet("resnet18").named_parameters()}
    x = torch.rand(2, 3, 64, 32)
    model.train()
    model(x, torch.tensor([0, 1])).global_feat.sum().backward()
    assert model.pool.p.grad is not None and float(model.pool.p.grad.abs()) > 0


def test_a_uvireid_checkpoint_whose_scan_lists_numpy_dtype_classes_is_read(tmp_path):
    """The allowed globals include numpy.dtypes.* (the dtype classes of numpy >= 1.25): a
    checkpoint whose pickle names one directly (here a dtype class kept in an entry) is
    still a uvireid checkpoint, its backbone weights read, not a foreign file."""
    from uvireid.engine.checkpoint import FORMAT

    path = tmp_path / "ck.pt"
    w = torch.arange(3.0)
    torch.save(
        {
            "format": FORMAT,
            "epoch": 2,
            "model": {"backbone.neck.weight": w},
            "rng": {"numpy": np.random.RandomState(1).get_state()},
            "meta": {"dtype_class": np.dtypes.UInt32DType},
        },
        path,
    )
    needs = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    assert any(g.startswith("numpy.dtypes.") for g in needs)  # the case under test
    got = bb.uvireid_backbone_weights(path)
    assert got is not None and set(got) == {"neck.weight"} and torch.equal(got["neck.weight"], w)


def test_a_timm_head_feature_is_the_global_feature_the_neck_reads():
    """pooling: head (a ViT: timm's own pre-logits feature, the class token after the final
    norm): global_feat is that feature, written out from timm's modules, not GeM of the
    tokens; bn_feat is the BN neck of it."""
    from uvireid.models.backbone import TimmBackbone

    torch.manual_seed(0)
    m = TimmBackbone("vit_tiny_patch16_224", img_size=[64, 32]).eval()
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = m.model.forward_features(x)  # (B, 1 + N, C), already normed
        cls = tokens[:, 0]  # the class token: timm's 'token' pooling, fc_norm/head_drop identity
        out = m(x)
        neck = torch.nn.functional.batch_norm(
            cls,
            m.neck.running_mean,
            m.neck.running_var,
            m.neck.weight,
            m.neck.bias,
            False,
            0.0,
            m.neck.eps,
        )
    assert torch.allclose(out.global_feat, cls, atol=1e-6)
    assert torch.allclose(out.bn_feat, neck, atol=1e-5)
