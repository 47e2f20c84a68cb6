"""Two-stream ResNet and timm backbones: shapes, routing, test-time features, weights."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from uvireid.errors import ConfigError
from uvireid.models import GeM, TwoStreamResNet
from uvireid.models.backbone import BackboneOutput, TimmBackbone
from uvireid.registry import BACKBONES

torch.set_num_threads(2)


def _model(**kw) -> TwoStreamResNet:
    torch.manual_seed(0)
    return TwoStreamResNet(**{"arch": "resnet18", **kw})


def test_registered_under_its_names():
    assert "two_stream_resnet" in BACKBONES and "timm" in BACKBONES
    assert BACKBONES.defaults("two_stream_resnet")["pretrained"] is False
    m = BACKBONES.build({"type": "two_stream_resnet", "arch": "resnet18"})
    assert isinstance(m, TwoStreamResNet)


@pytest.mark.parametrize(("last_stride", "hw"), [(1, (8, 4)), (2, (4, 2))])
def test_train_mode_output_shapes(last_stride, hw):
    m = _model(last_stride=last_stride).train()
    out = m(torch.randn(4, 3, 128, 64), torch.tensor([0, 1, 1, 0]))
    assert isinstance(out, BackboneOutput)
    assert out.global_feat.shape == out.bn_feat.shape == (4, 512)
    assert out.feature_map.shape == (4, 512, *hw)
    assert out.bn_feat.requires_grad


def test_resnet50_has_2048_channels_and_share_from_moves_the_split():
    m = TwoStreamResNet("resnet50", share_from="layer2").eval()
    assert m.out_dim == 2048
    assert len(m.specific) == 2 and len(m.specific[0]) == 2  # stem + layer1 per modality
    with torch.no_grad():
        out = m(torch.randn(2, 3, 64, 32), 1)
    assert out.feature_map.shape == (2, 2048, 4, 2)


def test_bn_neck_bias_is_frozen_and_gem_p_fixed_by_default():
    m = _model()
    assert not m.neck.bias.requires_grad and m.neck.weight.requires_grad
    # weights_init_kaiming of the reference: weight ~ N(1, 0.01), bias 0
    w = m.neck.weight.detach().double()
    assert abs(float(w.mean()) - 1.0) < 3 * 0.01 / w.numel() ** 0.5 * 3
    assert 0.008 < float(w.std()) < 0.012
    assert float(m.neck.bias.abs().max()) == 0.0
    assert not any(p is m.pool.p for p in m.parameters())
    m2 = _model(gem_learnable=True)
    assert any(p is m2.pool.p for p in m2.parameters())


def test_extract_is_the_normalised_mean_of_image_and_flip():
    """salcr_reference.md Sec. 2.1: u = L2n((L2n(u(x)) + L2n(u(flip x))) / 2)."""
    m = _model().eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        a = m(x, 1).bn_feat
        b = m(torch.flip(x, dims=[3]), 1).bn_feat
    manual = (a / a.norm(dim=1, keepdim=True) + b / b.norm(dim=1, keepdim=True)) / 2
    manual = manual / manual.norm(dim=1, keepdim=True)
    unnormalised_halves = F.normalize((a + b) / 2, dim=1)
    assert not torch.allclose(manual, unnormalised_halves, atol=1e-5)  # the test can tell
    feat = m.extract(x, 1)
    assert torch.allclose(feat, manual, atol=1e-5)
    assert torch.allclose(feat.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(m.extract(x, 1, flip=False), F.normalize(a, dim=1), atol=1e-5)
    assert not feat.requires_grad


def test_the_pool_head_is_the_feature_before_the_bn_neck():
    m = _model().eval()
    with torch.no_grad():  # a BN neck with non-trivial statistics, so the heads differ
        m.neck.running_mean.uniform_(-1, 1)
        m.neck.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        a = m(x, 0).global_feat
        b = m(torch.flip(x, dims=[3]), 0).global_feat
    manual = (a / a.norm(dim=1, keepdim=True) + b / b.norm(dim=1, keepdim=True)) / 2
    manual = manual / manual.norm(dim=1, keepdim=True)
    pool = m.extract(x, 0, head="pool")
    assert torch.allclose(pool, manual, atol=1e-5)
    assert (pool - m.extract(x, 0)).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="feature head 'fc' is not one of bn_feat, pool"):
        m.extract(x, 0, head="fc")


def test_each_modality_goes_through_its_own_stem():
    m = _model().eval()
    x = torch.randn(4, 3, 64, 32)
    mod = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        before = m(x, mod).bn_feat.clone()
        m.stream(0)[0][0].weight.mul_(-1.5)  # conv1 of the visible stem only
        after = m(x, mod).bn_feat
    vis, ir = mod == 0, mod == 1
    assert not torch.allclose(before[vis], after[vis])
    assert torch.equal(before[ir], after[ir])


def test_mixed_batch_equals_one_batch_per_modality_and_int_modality():
    m = _model().eval()
    x = torch.randn(5, 3, 64, 32)
    mod = torch.tensor([1, 0, 0, 1, 0])
    with torch.no_grad():
        mixed = m(x, mod).bn_feat
        vis = m(x[mod == 0], 0).bn_feat
        ir = m(x[mod == 1], torch.ones(2, dtype=torch.long)).bn_feat
    assert torch.allclose(mixed[mod == 0], vis, atol=1e-5)
    assert torch.allclose(mixed[mod == 1], ir, atol=1e-5)


def test_channels_last_model_gives_the_same_outputs_and_parts_in_nhwc():
    """``model.to(memory_format=torch.channels_last)`` (the trainer's CUDA default): the
    images are converted once, every output and gradient equals the NCHW model's, and the
    part module reads the NHWC feature map."""
    from uvireid.models.parts import PartQuery

    torch.manual_seed(1)
    x = torch.randn(4, 3, 64, 32)
    mod = torch.tensor([0, 1, 0, 1])
    ref, cl = _model(), _model().to(memory_format=torch.channels_last)
    first = next(p for p in cl.parameters() if p.dim() == 4)
    assert first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()
    parts = PartQuery(ref.out_dim, 2)
    outs = []
    for m in (ref, cl):
        out = m(x, mod)
        q = parts.pairs(out.feature_map[:2], out.feature_map[2:], out.feature_map[2:])
        loss = out.bn_feat.square().sum() + sum(v.square().sum() for v in q.values())
        loss.backward()
        grad = next(p for p in m.parameters() if p.dim() == 4).grad.clone()
        outs.append((out, q, grad))
    (a, qa, ga), (b, qb, gb) = outs
    assert not a.feature_map.is_contiguous(memory_format=torch.channels_last)
    assert b.feature_map.is_contiguous(memory_format=torch.channels_last)
    # NHWC and NCHW convolutions sum in other orders; through a ResNet-18 in training mode
    # (batch statistics of 4 images) one of 2048 outputs once moved by 1.5e-4 (4e-4 of it)
    torch.testing.assert_close(b.bn_feat, a.bn_feat, atol=5e-4, rtol=1e-3)
    torch.testing.assert_close(b.feature_map, a.feature_map, atol=5e-4, rtol=1e-3)
    for key in qa:
        torch.testing.assert_close(qb[key], qa[key], atol=1e-3, rtol=1e-3)
    # the stem's gradient went back through the whole network: compare as a whole
    rel = float((gb - ga).norm() / ga.norm())
    assert rel < 1e-3
    with torch.no_grad():
        torch.testing.assert_close(
            cl.eval().extract(x, mod), ref.eval().extract(x, mod), atol=1e-5, rtol=1e-4
        )


def test_streams_start_from_the_same_weights():
    m = _model()
    for a, b in zip(m.stream(0).parameters(), m.stream(1).parameters(), strict=True):
        assert torch.equal(a, b) and a is not b


def test_share_from_stem_is_one_stream():
    m = _model(share_from="stem").eval()
    x = torch.randn(2, 3, 64, 32)
    assert torch.equal(m.extract(x, 0), m.extract(x, 1))
    with pytest.raises(ConfigError, match="one shared stream"):
        m.stream(0)


def test_wrong_modality_length_is_an_error():
    with pytest.raises(ConfigError, match="modality has 3 entries for a batch of 2"):
        _model()(torch.randn(2, 3, 64, 32), torch.tensor([0, 1, 0]))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module.", ""])
def test_local_checkpoint_is_loaded_into_both_streams_and_the_trunk(tmp_path, prefix):
    """Saved under DDP (``module.``), ``torch.compile`` (``_orig_mod.``), both, or bare."""
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"{prefix}{k}": v for k, v in ref.state_dict().items()}}, path)
    m = _model(pretrained=str(path))
    for k in (0, 1):
        assert torch.equal(m.stream(k)[0][0].weight, ref.conv1.weight)
    assert torch.equal(m.shared[-1][-1].conv2.weight, ref.layer4[-1].conv2.weight)


def test_unusable_weights_and_names_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        _model(pretrained=str(tmp_path / "missing.pth"))
    torch.save({"head.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="none of the resnet18 weights"):
        _model(pretrained=str(tmp_path / "other.pth"))
    # a damaged file, a peer checkpoint that pickles its training arguments (refused by
    # weights_only loading), a bare tensor: each named, with what to do, not torch's text
    (tmp_path / "damaged.pth").write_bytes(b"\x80\x02garbage")
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "args.pth")
    for name in ("damaged", "args"):
        with pytest.raises(
            ConfigError, match=rf"{name}.pth could not be read .*\[KEY\].*'state_dict' or 'model'"
        ):
            _model(pretrained=str(tmp_path / f"{name}.pth"))
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ConfigError, match="holds a Tensor, not a state dict"):
        _model(pretrained=str(tmp_path / "tensor.pth"))
    with pytest.raises(ConfigError, match="resnet18, resnet34, resnet50"):
        TwoStreamResNet("resnet101")
    with pytest.raises(ConfigError, match="share_from 'layer5'"):
        _model(share_from="layer5")


def test_gem_matches_average_pooling_at_p1_and_approaches_max():
    x = torch.rand(2, 3, 4, 5)
    assert torch.allclose(GeM(1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(GeM(80.0)(x), x.amax(dim=(2, 3)), atol=0.05)
    assert torch.allclose(GeM(3.0)(x), (x.pow(3).mean(dim=(2, 3))).pow(1 / 3), atol=1e-6)


def test_timm_backbone_single_stream():
    m = TimmBackbone("resnet10t").eval()
    x = torch.randn(2, 3, 64, 32)
    out = m(x)
    assert out.feature_map.ndim == 4 and out.bn_feat.shape == (2, m.out_dim)
    assert torch.equal(m.extract(x, 0), m.extract(x, 1))
    with pytest.raises(ConfigError, match="timm has no model 'resnet5O'"):
        TimmBackbone("resnet5O")
    with pytest.raises(ConfigError, match="timm: gem_p must be a finite number > 0, got 0"):
        TimmBackbone("resnet10t", gem_p=0)
    with pytest.raises(ConfigError, match="timm: pretrained 'yes' is not a file; give true"):
        TimmBackbone("resnet10t", pretrained="yes")
    with pytest.raises(ConfigError, match="timm: pretrained must be true, false or a weights"):
        TimmBackbone("resnet10t", pretrained=3)


def test_half_fitting_checkpoint_is_an_error_listing_the_keys(tmp_path):
    import torchvision

    sd = torchvision.models.resnet18().state_dict()
    partial = {k: v for k, v in sd.items() if not k.startswith("layer4.1.")}
    partial["extra.weight"] = torch.zeros(3)
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ConfigError) as err:
        _model(pretrained=str(tmp_path / "partial.pth"))
    msg = str(err.value)
    assert "missing keys (layer4.1.conv1.weight" in msg
    assert "1 unexpected keys (extra.weight)" in msg
    r34 = torchvision.models.resnet34().state_dict()
    shaped = dict(sd)
    shaped["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    torch.save(shaped, tmp_path / "shaped.pth")
    with pytest.raises(ConfigError, match=r"keys of another shape \(conv1.weight \(32, 3, 7, 7\)"):
        _model(pretrained=str(tmp_path / "shaped.pth"))
    torch.save(r34, tmp_path / "r34.pth")
    with pytest.raises(ConfigError, match="missing keys|unexpected keys"):
        _model(pretrained=str(tmp_path / "r34.pth"))


def test_dry_run_reads_a_local_pretrained_file_as_the_run_would(tmp_path, capsys, monkeypatch):
    """Audit FC: --dry-run passed a half-fitting pretrained file (it checked that the file
    exists); the run refused it after building the dataset. Its stdout is the resolved
    recipe (``--dry-run > resolved.yaml``), the note that the file fits goes to stderr, and
    a path under ~ is read as the run reads it."""
    import torchvision
    import yaml

    from uvireid.cli import main
    from uvireid.config import load_recipe

    sd = torchvision.models.resnet18().state_dict()
    torch.save(sd, tmp_path / "good.pth")
    torch.save({k: v for k, v in sd.items() if not k.startswith("layer4.")}, tmp_path / "half.pth")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "r",
                "data": {"type": "synthetic", "root": str(tmp_path / "synth")},
                "backbone": {"type": "two_stream_resnet", "arch": "resnet18"},
            }
        )
    )
    for name, rc, said in (
        ("good.pth", 0, "good.pth fits the backbone"),
        ("half.pth", 2, "does not fit a torchvision resnet18: 25 missing keys (layer4.0"),
    ):
        pre = str(tmp_path / name)
        assert main(["run", str(recipe), f"backbone.pretrained={pre}", "--dry-run"]) == rc
        err = capsys.readouterr().err
        assert said in err, err
    monkeypatch.setenv("HOME", str(tmp_path))
    over = "backbone.pretrained=~/good.pth"
    assert main(["run", str(recipe), over, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out) == load_recipe(recipe, [over])
    assert "fits the backbone" not in out and "~/good.pth fits the backbone" in err
    assert main(["run", str(recipe), "backbone.pretrained=~/half.pth", "--dry-run"]) == 2
    assert "does not fit a torchvision resnet18" in capsys.readouterr().err
    assert not (tmp_path / "synth").exists()  # nothing built but the backbone


def test_modality_codes_outside_the_streams_are_refused():
    """Codes 1/2 (or -1, or fractions) would send an image through no stream, or the
    wrong one, and shrink or corrupt the batch silently."""
    m = _model().eval()
    x = torch.randn(3, 3, 64, 32)
    for bad in (torch.tensor([0, 2, 1]), torch.tensor([0, -1, 1]), -1, 2, [0.5, 1, 0]):
        with pytest.raises(ConfigError, match="modality codes must be integers in 0..1"):
            m(x, bad)
    ok = m(x, torch.tensor([0.0, 1.0, 1.0]))  # whole numbers as floats are the codes
    assert ok.bn_feat.shape[0] == 3


def test_imagenet_weights_that_cannot_be_fetched_are_a_config_error(monkeypatch, tmp_path):
    """Offline (many GPU nodes), ``pretrained: true`` ended in a raw URLError traceback;
    now a one-line error saying how to get the weights there. Nothing is downloaded."""
    import urllib.error

    import torchvision.models._api as api

    from uvireid.models.backbone import build_resnet

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", offline)  # where torchvision fetches
    with pytest.raises(ConfigError, match=r"could not fetch torchvision's ImageNet resnet18 .*"
                       r"URLError.*resnet18-.*\.pth elsewhere.*pretrained=PATH"):  # fmt: skip
        build_resnet("resnet18", True)


def test_torchvision_files_from_before_num_batches_tracked_load(tmp_path):
    """Audit S (session 17): torchvision's 2017 files (the peers' resnet50-19c8e357.pth)
    have no BatchNorm num_batches_tracked buffers; torch's strict load takes them, uvireid
    refused them as a "half-loaded backbone"."""
    import torchvision

    torch.manual_seed(1)
    sd = torchvision.models.resnet18().state_dict()
    legacy = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torchvision.models.resnet18().load_state_dict(legacy, strict=True)  # torch takes it
    torch.save(legacy, tmp_path / "legacy.pth")
    m = _model(pretrained=str(tmp_path / "legacy.pth"))
    assert torch.equal(m.specific[0][0][0].weight, sd["conv1.weight"])
    assert torch.equal(m.specific[1][0][1].running_var, sd["bn1.running_var"])
    assert torch.equal(m.shared[0][0].conv1.weight, sd["layer1.0.conv1.weight"])
    legacy.pop("layer1.0.bn1.running_mean")  # a real buffer missing is still an error
    torch.save(legacy, tmp_path / "short.pth")
    with pytest.raises(ConfigError, match=r"1 missing keys \(layer1.0.bn1.running_mean\)"):
        _model(pretrained=str(tmp_path / "short.pth"))


def test_a_uvireid_checkpoint_is_loaded_as_pretrained_weights_strictly(tmp_path):
    """Audit S: a run's checkpoint as backbone.pretrained (a stage or another dataset
    started from a trained run) was refused, with advice (['state_dict']) that failed."""
    from uvireid.engine.checkpoint import rng_state, save_checkpoint

    trained = _model(non_local=[0, 1, 1, 0])
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    model = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    model["parts.queries"] = torch.zeros(3, 4)  # the rest of a TrainModel is ignored
    path = save_checkpoint(tmp_path, {"epoch": 2, "model": model, "rng": rng_state()})
    got = _model(pretrained=str(path), non_local=[0, 1, 1, 0])
    for (k, v), (k2, v2) in zip(got.state_dict().items(), trained.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    with pytest.raises(ConfigError, match=r"backbone.pretrained: .*unexpected key.*non_local"):
        _model(pretrained=str(path))  # other backbone settings: every difference named
    bare = save_checkpoint(tmp_path / "bare", {"epoch": 2, "model": {}, "rng": rng_state()})
    with pytest.raises(ConfigError, match="a uvireid checkpoint without backbone weights"):
        _model(pretrained=str(bare))
    # a file that pickles anything else is not unpickled to find out: the usual message
    torch.save({"args": argparse.Namespace(lr=1), "state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match=r"could not be read as a file of tensors.*'model'"):
        _model(pretrained=str(tmp_path / "other.pth"))


def test_fixed_size_timm_models_are_built_for_the_reid_size_or_refused():
    """Audit S: a ViT (224 x 224 only) crashed in timm's assertion at 288 x 144; now
    ``img_size`` builds it for the recipe's size and any other size is a ConfigError
    naming that fix, which the trainer checks before the first image."""
    from uvireid.models.backbone import check_input_size

    vit = TimmBackbone("vit_tiny_patch16_224").eval()
    assert vit.fixed_input_size == (224, 224)
    with pytest.raises(ConfigError, match=r"set backbone.img_size: \[64, 32\]"):
        check_input_size(vit, 64, 32)
    with pytest.raises(ConfigError, match=r"takes 224 x 224 images only"):
        vit(torch.randn(1, 3, 64, 32))
    sized = TimmBackbone("vit_tiny_patch16_224", img_size=[64, 32]).eval()
    check_input_size(sized, 64, 32)
    out = sized(torch.randn(2, 3, 64, 32))
    assert out.bn_feat.shape == (2, sized.out_dim)
    with pytest.raises(ConfigError, match="'test_resnet' takes no img_size"):
        TimmBackbone("test_resnet", img_size=[64, 32])
    check_input_size(TimmBackbone("test_resnet"), 64, 32)  # convolutional: any size
    # a fixed-size patch embedding under another name (MLP-Mixer's stem): found too
    assert TimmBackbone("mixer_s16_224").fixed_input_size == (224, 224)
    with pytest.raises(ConfigError, match=r"img_size must be \[height, width\]"):
        TimmBackbone("vit_tiny_patch16_224", img_size=[64])


def test_channels_last_timm_maps_are_pooled_over_space():
    """Swin's forward_features is (B, h, w, C); read as (B, C, h, w) it was pooled over
    the wrong axes (a feature of the wrong size)."""
    m = TimmBackbone("swin_tiny_patch4_window7_224", img_size=[64, 32]).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        out = m(x)
        raw = m.model.forward_features(x)  # (B, h, w, C)
    assert out.feature_map.shape == (2, m.out_dim, raw.shape[1], raw.shape[2])
    assert torch.equal(out.feature_map, raw.permute(0, 3, 1, 2))
    assert out.bn_feat.shape == (2, m.out_dim)
    # pooled by timm's own head (an average): GeM's floor at 1e-6 would drop the negative
    # half of a LayerNorm'd map (audit AM)
    with torch.no_grad():
        assert torch.allclose(out.global_feat, m.model.forward_head(raw, pre_logits=True))
        assert torch.allclose(out.global_feat, raw.mean(dim=(1, 2)), atol=1e-6)


def test_timm_pooling_auto_keeps_gem_for_relu_maps_and_the_head_for_signed_ones():
    """GeM clamps its input at 1e-6: on ConvNeXt's signed map it left about a quarter of
    the pooled dimensions at the floor (audit AM). ``pooling: auto`` pools a signed map
    with timm's own head and keeps GeM where the map is non-negative."""
    x = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    relu = TimmBackbone("resnet18").eval()
    assert relu.pooling == "gem"
    with torch.no_grad():
        fmap = relu.model.forward_features(x)
        out = relu(x)
    assert (fmap >= 0).all()
    # GeM by its formula, p = 3: (mean over h, w of x^3)^(1/3)
    naive = fmap.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
    assert torch.allclose(out.global_feat, naive, rtol=1e-5, atol=1e-7)

    signed = TimmBackbone("convnext_atto").eval()
    assert signed.pooling == "head"
    forced = TimmBackbone("convnext_atto", pooling="gem").eval()
    forced.load_state_dict(signed.state_dict())
    with torch.no_grad():
        fmap = signed.model.forward_features(x)
        head, gem_out = signed(x), forced(x)
    assert (fmap < 0).float().mean() > 0.2
    # timm's head: the spatial mean, then the head's LayerNorm over channels
    mean = fmap.mean(dim=(2, 3))
    ln = signed.model.head.norm
    expect = F.layer_norm(mean, (mean.shape[1],), ln.weight, ln.bias, ln.eps)
    assert torch.allclose(head.global_feat, expect, atol=1e-5)
    assert (head.global_feat.abs() < 1e-5).float().mean() < 0.01
    assert (gem_out.global_feat < 1e-5).float().mean() > 0.1  # what auto avoids
    with pytest.raises(ConfigError, match="pooling must be one of auto, gem, head"):
        TimmBackbone("resnet18", pooling="avg")


def test_timm_pooling_probe_leaves_the_rng_and_the_batch_norm_statistics_alone(monkeypatch):
    """The probe runs one image through the model at build time; a seeded build must give
    the weights, running statistics, mode and next random number of a build without it
    (compared with the probe replaced: comparing pooling auto with gem ran it in both,
    audit CG)."""
    import uvireid.models.timm_backbone as tb

    torch.manual_seed(0)
    probed = TimmBackbone("resnet18")
    after_probe = torch.rand(1)
    monkeypatch.setattr(tb, "_resolve_pooling", lambda b, p: ("gem", b.model.num_features))
    torch.manual_seed(0)
    plain = TimmBackbone("resnet18")
    assert torch.equal(after_probe, torch.rand(1))
    assert probed.training and plain.training
    for k, v in plain.state_dict().items():
        assert torch.equal(probed.state_dict()[k], v), k


def test_timm_feature_size_is_what_the_head_gives():
    """MobileNetV3's head turns its 576-channel map into 1024 features: the neck was
    built for 576 and the first batch failed ("running_mean should contain 1024
    elements", session 20)."""
    m = TimmBackbone("mobilenetv3_small_100").eval()
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = m(x)
        fmap = m.model.forward_features(x)
        # the head by hand: average, 1x1 conv, activation
        pooled = m.model.act2(m.model.norm_head(m.model.conv_head(fmap.mean((2, 3), keepdim=True))))
    assert m.pooling == "head" and m.out_dim == 1024 == out.bn_feat.shape[1]
    assert torch.allclose(out.global_feat, pooled.flatten(1), atol=1e-5)
    assert fmap.shape[1] == 576


def test_a_size_a_timm_model_cannot_take_is_refused_before_training():
    """LeViT's attention biases are sized to its input: a 64 x 32 run failed at its first
    batch with a raw shape error; now check_input_size runs one blank image first."""
    from uvireid.models.backbone import check_input_size

    with pytest.raises(ConfigError, match=r"'levit_128s' cannot take 64 x 32 images.*img_size"):
        check_input_size(TimmBackbone("levit_128s"), 64, 32)
    sized = TimmBackbone("levit_128s", img_size=[64, 32])
    check_input_size(sized, 64, 32)
    # the blank image leaves the weights, the BN statistics and the mode alone
    m = TimmBackbone("resnet18")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    check_input_size(m, 64, 32)
    assert m.training
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_timm_models_uvireid_cannot_pool_are_named():
    with pytest.raises(ConfigError, match="gives its features as a list, not one tensor"):
        TimmBackbone("crossvit_tiny_240")
    with pytest.raises(ConfigError, match="has no spatial map.*GeM cannot pool it"):
        TimmBackbone("vit_tiny_patch16_224", pooling="gem")


def test_an_int_modality_sends_the_whole_batch_through_that_stream():
    """model(x, 1) (an int for the whole batch, as the docstring allows) must use the
    infrared stem, as the stages composed by hand do; each stem is made distinct first."""
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18").eval()
    with torch.no_grad():
        m.stream(1)[0][0].weight.mul_(-1.5)  # the streams differ from here on
        x = torch.randn(2, 3, 64, 32)
        for k in (0, 1):
            by_hand = m.shared(m.stream(k)(x))
            assert torch.allclose(m(x, k).feature_map, by_hand, atol=1e-5)
        assert not torch.allclose(m(x, 0).feature_map, m(x, 1).feature_map, atol=1e-3)


def test_timm_pooling_auto_uses_the_head_for_a_silu_map_with_small_negatives():
    """EfficientNet's map ends in a SiLU: its negative values are all above SiLU's minimum
    (-0.2785), yet GeM's clamp would still drop them; ``auto`` must see any negative value
    (the docstring names this model), not only large ones."""
    b = TimmBackbone("efficientnet_b0").eval()
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fmap = b.model.forward_features(x)
    assert (fmap < 0).float().mean() > 0.2  # a signed map ...
    assert float(fmap.min()) > -0.2786  # ... whose negatives are all small (SiLU)
    assert b.pooling == "head"


def test_part_losses_on_a_timm_model_whose_head_changes_the_size():
    """The part module was sized by the pooled feature (MobileNetV3: 1024) but reads the
    576-channel map: a raw einsum error at the part stage's first extraction, after
    --dry-run passed (audit CG). It is sized by the map."""
    from uvireid.config import load_recipe
    from uvireid.engine.trainer import Trainer
    from uvireid.registry import DATASETS

    cfg = load_recipe(
        "demo",
        ["backbone={type: timm, name: mobilenetv3_small_100}", "data.ids=12"],
    )
    trainer = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    bb = trainer.model.backbone.eval()
    assert bb.out_dim == 1024
    with torch.no_grad():
        fmap = bb(torch.zeros(2, 3, cfg["train"]["height"], cfg["train"]["width"])).feature_map
        parts = trainer.model.parts.self_parts(fmap)
    assert fmap.shape[1] == 576 and parts.shape[-1] == 576


def test_size_advice_leaves_out_the_img_size_already_set():
    """timm's EfficientFormer ignores img_size (224 x 224 only): the advice to set it, with
    it set, sent the user in a circle (audit CG)."""
    from uvireid.models.backbone import check_input_size

    with pytest.raises(ConfigError) as err:  # found when built: its probe at that size
        TimmBackbone("efficientformer_l1", img_size=[64, 32])
    msg = str(err.value)
    assert "set backbone.img_size" not in msg and "EfficientFormer for 224 x 224" in msg
    levit = TimmBackbone("levit_128s", img_size=[64, 32])
    levit._sizes_run.clear()
    with pytest.raises(ConfigError) as err:  # built for 64 x 32, asked for 96 x 48
        check_input_size(levit, 96, 48)
    assert "needs backbone.img_size: [96, 48]" in str(err.value)
    levit.img_size = (96, 48)  # as if built for the size it cannot take
    with pytest.raises(ConfigError) as err:
        check_input_size(levit, 96, 48)
    assert "needs backbone.img_size" not in str(err.value)
