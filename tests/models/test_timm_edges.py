"""The timm backbone (uvireid/models/timm_backbone.py): weights files of another model,
the dry run, image sizes, pooling and the test-time feature (mutation audit MA). Nothing
is downloaded (tests/models/conftest.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from uvireid.errors import ConfigError
from uvireid.models.backbone import TimmBackbone, check_input_size


def test_timm_weights_file_of_a_larger_model_is_refused(tmp_path):
    """timm resnet18's tensor names are a subset of resnet34's (same shapes in the blocks
    both have): resnet34's file loads into resnet18 with only timm's log warning about
    90 unexpected keys. A file of another model must be an error naming the keys (as
    build_resnet does for the two-stream backbone: 'unexpected keys (...)')."""
    import timm

    torch.manual_seed(0)
    r34 = timm.create_model("resnet34", num_classes=0)
    path = tmp_path / "r34.pth"
    torch.save(r34.state_dict(), path)
    own = set(timm.create_model("resnet18", num_classes=0).state_dict())
    extra = sorted(set(r34.state_dict()) - own)
    assert extra and own <= set(r34.state_dict())  # the premise: a strict superset
    with pytest.raises(ConfigError) as err:
        TimmBackbone("resnet18", pretrained=str(path))
    assert "layer1.2." in str(err.value)  # the keys resnet18 has no place for are named


def test_dry_run_refuses_a_missing_timm_pretrained_file(tmp_path, capsys):
    """`uvireid run R --dry-run` says what the run refuses before its first epoch; the
    run refuses `backbone: {type: timm, pretrained: /missing.pth}` at the backbone's
    build ('timm: pretrained ... is not a file'), the dry run exits 0 (the two-stream
    backbone's missing file is refused by the dry run)."""
    import yaml

    from uvireid.cli import main

    missing = tmp_path / "missing.pth"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "r",
                "data": {"type": "synthetic", "root": str(tmp_path / "synth")},
                "backbone": {"type": "timm", "name": "resnet18", "pretrained": str(missing)},
                "output_dir": str(tmp_path / "runs"),
            }
        )
    )
    with pytest.raises(ConfigError, match="is not a file"):  # what the run does
        TimmBackbone("resnet18", pretrained=str(missing))
    assert main(["run", str(recipe), "--dry-run"]) == 2
    assert "missing.pth" in capsys.readouterr().err


def test_timm_img_size_off_the_patch_grid_in_one_direction_is_refused():
    """A ViT at 64 x 30 (16-pixel patches): the width is not a multiple, the height is;
    the last 14 columns would never be read."""
    with pytest.raises(ConfigError, match=r"cuts 64 x 30 images into 16 x 16 patches.*64 x 16"):
        TimmBackbone("vit_tiny_patch16_224", img_size=[64, 30])
    with pytest.raises(ConfigError, match=r"cuts 70 x 32 images"):
        TimmBackbone("vit_tiny_patch16_224", img_size=[70, 32])


def test_timm_pretrained_tag_names_are_models():
    """timm's names with a weights tag ('resnet18.a1_in1k') are in list_models(pretrained=
    True) only; with pretrained=False they build the architecture, nothing is read."""
    import timm

    assert "resnet18.a1_in1k" not in timm.list_models()
    m = TimmBackbone("resnet18.a1_in1k").eval()
    assert m.out_dim == 512
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 32)).bn_feat.shape == (1, 512)


def test_timm_size_check_runs_in_the_models_dtype_and_keeps_its_mode():
    """run_input_size's blank image has the model's dtype (a float64 model is not refused
    for a dtype mismatch), and an eval model stays in eval mode (a train model in train)."""
    m = TimmBackbone("resnet18").double().eval()
    check_input_size(m, 64, 32)
    assert not m.training
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 64, 32, dtype=torch.float64)).bn_feat.dtype == torch.float64
    t = TimmBackbone("resnet18")
    check_input_size(t, 64, 32)
    assert t.training


def test_timm_channels_last_map_pooled_with_gem_has_its_channel_count():
    """Swin's (B, h, w, C) map with pooling: gem: the feature is the C channels, GeM over
    the h x w positions (by the formula, p = 3)."""
    m = TimmBackbone("swin_tiny_patch4_window7_224", img_size=[64, 32], pooling="gem").eval()
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = m.model.forward_features(x)  # (B, h, w, C)
        out = m(x)
    assert m.pooling == "gem" and m.out_dim == raw.shape[-1] == 768
    naive = raw.clamp(min=1e-6).pow(3).mean(dim=(1, 2)).pow(1 / 3)
    assert torch.allclose(out.global_feat, naive, rtol=1e-5, atol=1e-6)
    assert out.bn_feat.shape == (2, 768)


def test_timm_safetensors_file_of_another_model_is_refused(tmp_path):
    """The completeness check reads a .safetensors file too (not only torch files)."""
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    with pytest.raises(ConfigError, match="does not hold the weights of timm model 'resnet34'"):
        TimmBackbone("resnet34", pretrained=str(path))


def test_timm_compiled_ddp_prefixes_in_either_order_are_read_as_timm_reads_them(tmp_path):
    """timm removes '_orig_mod.' and 'module.' wrapped in either order; the check too."""
    import timm

    src = timm.create_model("resnet18", num_classes=0)
    state = {"_orig_mod.module." + k: v for k, v in src.state_dict().items()}
    torch.save(state, tmp_path / "w.pth")
    m = TimmBackbone("resnet18", pretrained=str(tmp_path / "w.pth"))
    assert torch.equal(m.model.conv1.weight, src.conv1.weight)


def test_timm_build_error_names_the_settings_not_timms_overlay(tmp_path):
    """The message lists what the recipe set (pretrained=PATH), not the
    pretrained_cfg_overlay dict uvireid passes timm."""
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a weights file")
    with pytest.raises(ConfigError) as err:
        TimmBackbone("resnet18", pretrained=str(bad))
    msg = str(err.value)
    assert f"with pretrained={bad}" in msg and "pretrained_cfg_overlay" not in msg


def test_timm_extract_is_the_normalised_mean_of_image_and_flip():
    """The test-time feature of a timm backbone: the L2-normalised mean of the normalised
    features of the image and of its left-right flip (computed here from forward)."""
    torch.manual_seed(0)
    m = TimmBackbone("resnet18").eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        a = F.normalize(m(x).bn_feat, dim=1)
        b = F.normalize(m(x.flip(-1)).bn_feat, dim=1)
        g = F.normalize(m(x).global_feat, dim=1)
    expect = F.normalize(a + b, dim=1)
    got = m.extract(x, 0)
    assert got.shape == (3, 512)
    assert torch.allclose(got, expect, atol=1e-6)
    assert torch.allclose(got.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(m.extract(x, 1, flip=False, head="pool"), g, atol=1e-6)


def test_timm_missing_is_a_config_error(monkeypatch):
    """timm is a dependency, but a broken install must still give the one-line advice."""
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(ConfigError, match="needs the timm package: pip install timm"):
        TimmBackbone("resnet18")


def test_timm_download_failing_with_a_plain_oserror_is_a_config_error(monkeypatch):
    """A failed read may be any OSError (a full disk, a proxy's URLError, a refused
    connection), not only huggingface_hub's or the HTTP clients' errors: pretrained: true
    then gets the offline advice, not the raw error."""
    import urllib.error

    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise urllib.error.URLError("[Errno 101] Network is unreachable")
        return real(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(
        ConfigError, match=r"'resnet18' cannot be built \(URLError.*without internet"
    ):
        TimmBackbone("resnet18", pretrained=True)


def test_timm_pooling_probe_leaves_every_module_in_train_mode():
    """The build-time pooling probe runs the timm model in eval mode; afterwards every
    module of a new backbone is in train mode, as any new nn.Module (the wrapper's own
    flag alone does not say it: the timm model is a submodule)."""
    for name in ("resnet18", "convnext_atto"):
        m = TimmBackbone(name)
        assert all(mod.training for mod in m.modules()), name
