"""timm backbones' weight sources and feature maps (audit BU, session 19). Nothing is
downloaded: every model is built with pretrained=False, from a local file, or with
timm.create_model replaced by a stub that raises what huggingface_hub raises offline."""

import pytest
import torch

from uvireid.errors import ConfigError
from uvireid.models.backbone import TimmBackbone


def test_timm_pretrained_download_failure_is_a_config_error(monkeypatch):
    """Finding 1: pretrained=true without the weights in the HF cache (offline machine,
    proxy) must be a ConfigError naming the model and the way out, not huggingface_hub's
    raw LocalEntryNotFoundError traceback (TwoStreamResNet already does this for
    torchvision's download, backbone.py build_resnet)."""
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise LocalEntryNotFoundError(
                "An error happened while trying to locate the file on the Hub and we "
                "cannot find the requested files in the local cache."
            )
        return real(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError, match="resnet18"):
        TimmBackbone("resnet18", pretrained=True)


def test_timm_backbone_starts_from_a_uvireid_checkpoint(tmp_path, monkeypatch):
    """README's backbone.pretrained (a uvireid run's RUN/checkpoints/latest.pt, 'to start a
    stage or another dataset from a trained run') was refused for timm: "timm: pretrained
    must be true or false" (audit BU)."""
    from uvireid.engine.checkpoint import rng_state, save_checkpoint

    torch.manual_seed(0)
    trained = TimmBackbone("resnet18")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    model = {"backbone." + k: v for k, v in trained.state_dict().items()}
    # as a run writes it: with the RNG states (numpy's among them)
    path = save_checkpoint(tmp_path, {"epoch": 1, "model": model, "rng": rng_state()})
    fresh = TimmBackbone("resnet18", pretrained=str(path))
    for k, v in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k

    # a checkpoint of another format: the error's recipe gives a file this version reads
    # (its advice was to save the backbone's state_dict(), which neither backbone takes)
    ck = torch.load(path, weights_only=False)
    ck["format"] += 1
    torch.save(ck, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="of format") as err:
        TimmBackbone("resnet18", pretrained=str(tmp_path / "other.pt"))
    recipe = str(err.value).split("format: ", 1)[1]
    monkeypatch.chdir(tmp_path)
    exec(recipe, {"torch": torch, "path": "other.pt"})  # noqa: S102 - the message's own code
    fresh = TimmBackbone("resnet18", pretrained="converted.pt")
    for k, v in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_timm_backbone_takes_a_local_timm_weights_file(tmp_path):
    """Finding 2: the only offline route to pretrained timm weights is a local file
    (timm's own pretrained_cfg_overlay=dict(file=PATH) loads it and resamples a ViT's
    position embedding to img_size); backbone.pretrained: PATH refuses it."""
    import timm

    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    path = tmp_path / "vit_tiny.pth"
    torch.save(src.state_dict(), path)
    m = TimmBackbone("vit_tiny_patch16_224", pretrained=str(path), img_size=[64, 32])
    assert torch.equal(m.model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert m.model.pos_embed.shape[1] == 1 + 4 * 2


@pytest.mark.parametrize("name,size", [("vit_tiny_patch16_224", (70, 30))])
def test_vit_img_size_not_a_multiple_of_the_patch_is_not_silently_cropped(name, size):
    """Finding 3: at an img_size that is not a multiple of the patch size the patch
    embedding floors the grid and never sees the last rows/columns (here 14 of 30
    columns; DINOv2's patch 14 at the recipes' 288 x 144 drops 8 rows and 4 columns).
    Either refuse the size, or pad (timm: dynamic_img_size + dynamic_img_pad)."""
    h, w = size
    try:
        m = TimmBackbone(name, img_size=[h, w]).eval()
    except ConfigError:
        return  # refused with a message: fine
    torch.manual_seed(0)
    x = torch.randn(1, 3, h, w)
    y = x.clone()
    y[..., :, 16:] = 3.0  # the columns past the first full 16-pixel patch
    with torch.no_grad():
        assert not torch.allclose(m(x, 0).bn_feat, m(y, 0).bn_feat)


def test_timm_cnn_can_keep_the_papers_stride_16_map():
    """Finding 4: SALCR's part stripes come from a last-stride-1 map (18 x 9 at 288 x 144);
    a timm ResNet gives 9 x 5 and TimmBackbone has no way to ask timm for output_stride=16."""
    m = TimmBackbone("resnet18", output_stride=16).eval()
    with torch.no_grad():
        fmap = m(torch.zeros(1, 3, 288, 144), 0).feature_map
    assert tuple(fmap.shape[-2:]) == (18, 9)


def test_timm_local_dir_model_name_is_not_refused(tmp_path):
    """Finding 2: timm's own offline route, name 'local-dir:/folder' (config.json plus
    weights, as timm.models._hub.save_for_hf writes), is refused by the name check
    ("timm has no model 'local-dir:...'"); so is 'hf-hub:timm/...'."""
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    src = timm.create_model("resnet18", num_classes=0)
    save_for_hf(src, str(tmp_path))
    m = TimmBackbone(f"local-dir:{tmp_path}", pretrained=True)
    assert torch.equal(m.model.conv1.weight, src.conv1.weight)


def test_a_local_weights_file_of_another_model_is_refused(tmp_path):
    """timm loads a local file leniently: a file of another model (or a uvireid file of
    another backbone) would leave the weights random, with one log line."""
    import timm

    src = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(ConfigError, match="does not hold the weights of timm model 'resnet34'"):
        TimmBackbone("resnet34", pretrained=str(path))
    # torch's legacy (non-zip) format cannot be memory-mapped for the key check: read whole
    legacy = tmp_path / "r18_legacy.pth"
    torch.save(src.state_dict(), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ConfigError, match="does not hold the weights of timm model 'resnet34'"):
        TimmBackbone("resnet34", pretrained=str(legacy))
    m = TimmBackbone("resnet18", pretrained=str(legacy))
    assert torch.equal(m.model.conv1.weight, src.conv1.weight)
    with pytest.raises(ConfigError, match="is not a file"):
        TimmBackbone("resnet18", pretrained=str(tmp_path / "none.pth"))


def test_dry_run_refuses_part_losses_on_a_vit():
    """A ViT has no spatial map for the part losses: --dry-run (preflight) builds the timm
    model without weights and says so, as the run's start does (audits AA, BU)."""
    from uvireid.config import load_recipe
    from uvireid.engine.runner import preflight

    vit = "backbone={type: timm, name: vit_tiny_patch16_224, img_size: [64, 32]}"
    with pytest.raises(ConfigError, match="backbone 'timm' gives features of shape"):
        preflight(load_recipe("demo", [vit]))
    preflight(load_recipe("demo", [vit, "stages.1.losses=[{type: dual_cluster_contrast}]"]))


def test_local_dir_and_hf_hub_models_that_cannot_be_read_are_config_errors(tmp_path, monkeypatch):
    """Audit CA: timm reads a 'local-dir:' / 'hf-hub:' model's config.json even with
    pretrained: false; a missing folder, or the hub offline, was a raw traceback (also in
    --dry-run, which builds the model for the part check). The hub is offline here by
    setting (no connection tried: the retries took 20 s where the network is closed)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"none is not a folder with a config\.json"):
        TimmBackbone(f"local-dir:{tmp_path / 'none'}", pretrained=False)
    with pytest.raises(ConfigError, match="reads a 'hf-hub:' model's config.json from the Hugging"):
        TimmBackbone("hf-hub:timm/resnet18.a1_in1k", pretrained=False)


def test_timm_training_and_compiled_checkpoints_are_read_as_timm_reads_them(tmp_path):
    """Audit CA: the completeness check re-read the file by its own rules: timm's
    train.py checkpoint (args: argparse.Namespace) was a raw UnpicklingError, and a
    torch.compile'd state dict ('_orig_mod.' keys) or a DDP one in safetensors ('module.')
    was refused although timm had loaded every tensor."""
    import argparse

    import timm
    from safetensors.torch import save_file

    src = timm.create_model("resnet18", num_classes=0)
    state = src.state_dict()
    files = {
        "model_best.pth.tar": lambda p: torch.save(
            {"epoch": 3, "state_dict": state, "args": argparse.Namespace(lr=0.1)}, p
        ),
        "compiled.pth": lambda p: torch.save({"_orig_mod." + k: v for k, v in state.items()}, p),
        "ddp.safetensors": lambda p: save_file(
            {"module." + k: v.contiguous() for k, v in state.items()}, str(p)
        ),
    }
    for name, write in files.items():
        write(tmp_path / name)
        m = TimmBackbone("resnet18", pretrained=str(tmp_path / name))
        assert torch.equal(m.model.conv1.weight, src.conv1.weight), name
        assert torch.equal(m.model.layer4[1].bn2.running_var, src.layer4[1].bn2.running_var)


def test_a_failed_timm_build_gets_the_advice_of_what_was_set(tmp_path):
    """Audit CA: every failure with output_stride or a local file ended with advice on
    img_size for Swin, after an empty 'AssertionError: ' and a '{}'."""
    with pytest.raises(ConfigError) as err:
        TimmBackbone("resnet18", output_stride=4)
    msg = str(err.value)
    assert "output_stride=4" in msg and "take 8, 16 or 32" in msg
    assert "Swin" not in msg and "{}" not in msg and "AssertionError: no message" in msg
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a weights file")
    with pytest.raises(ConfigError) as err:
        TimmBackbone("resnet18", pretrained=str(bad))
    msg = str(err.value)
    assert f"backbone.pretrained: {bad} could not be loaded into 'resnet18'" in msg
    assert "img_size" not in msg and "Swin" not in msg


def _run_checkpoint(tmp_path, backbone):
    """A uvireid run checkpoint holding ``backbone``, as a run writes it."""
    import numpy as np

    from uvireid.engine.checkpoint import save_checkpoint

    state = {
        "epoch": 3,
        "model": {"backbone." + k: v for k, v in backbone.state_dict().items()},
        "np_rng": np.random.get_state(),
    }
    return save_checkpoint(tmp_path / "ck", state)


def test_runs_from_before_pooling_existed_keep_their_pooling(tmp_path):
    """Before session 20 every channels-first timm map was pooled with GeM into a feature
    of its channel count. Their config.yaml has no `pooling`: it reads as `legacy`, so a
    ConvNeXt run resumes with GeM (auto would pool with the head: features 3.4 off), and
    a MobileNetV3 checkpoint (a 576 neck; auto builds 1024) loads (audit CG)."""
    import yaml

    from uvireid.config import dump, load_recipe
    from uvireid.engine.run_folder import RunFolder, check_resume
    from uvireid.registry import BACKBONES

    bb = ["backbone={type: timm, name: convnext_atto, pretrained: false}"]
    old = yaml.safe_load(dump(load_recipe("demo", bb)))
    old["backbone"].pop("pooling")  # config.yaml as session 19 wrote it
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = load_recipe(tmp_path)  # `uvireid run RUN --resume` reads the run's own file
    assert cfg["backbone"]["pooling"] == "legacy"
    assert check_resume(RunFolder(tmp_path), cfg) == {}
    assert BACKBONES.build(cfg["backbone"]).pooling == "gem"
    # a recipe of the user's own, not a run's config.yaml: the default
    assert load_recipe("demo", bb)["backbone"]["pooling"] == "auto"

    legacy = TimmBackbone("mobilenetv3_small_100", pooling="legacy")
    assert legacy.pooling == "gem" and legacy.out_dim == 576
    ck = _run_checkpoint(tmp_path, legacy)
    spec = {"type": "timm", "name": "mobilenetv3_small_100", "pretrained": str(ck)}
    with pytest.raises(ConfigError, match="pooling: legacy"):
        BACKBONES.build(spec)  # auto: a 1024 neck; the message names the way
    BACKBONES.build({**spec, "pooling": "legacy"})
    swin = TimmBackbone("swin_tiny_patch4_window7_224", img_size=[64, 32], pooling="legacy")
    assert swin.pooling == "head"  # channels-last maps were pooled by the head already
    # tokens: the head, its feature the width of a token (the legacy rule took the token
    # count, 9, for the feature size: the neck failed on the first image)
    vit = TimmBackbone("vit_tiny_patch16_224", img_size=[64, 32], pooling="legacy").eval()
    assert vit.pooling == "head" and vit.out_dim == 192
    with torch.no_grad():
        assert vit(torch.zeros(1, 3, 64, 32)).bn_feat.shape == (1, 192)


def test_a_weights_file_without_num_batches_tracked_is_accepted(tmp_path):
    """torchvision-era files have no BN num_batches_tracked; timm loads them strictly
    (batch norm fills the counter in) and the completeness check refused them (CG)."""
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("resnet18", num_classes=0)
    sd = {k: v.contiguous() for k, v in src.state_dict().items() if "num_batches" not in k}
    for ext in ("safetensors", "pth"):
        path = tmp_path / f"r18.{ext}"
        save_file(sd, str(path)) if ext == "safetensors" else torch.save(sd, path)
        m = TimmBackbone("resnet18", pretrained=str(path))
        assert torch.equal(m.model.conv1.weight, src.conv1.weight)
    sd.pop("conv1.weight")  # a weight missing is still refused
    torch.save(sd, tmp_path / "less.pth")
    with pytest.raises(ConfigError, match="1 of its 120 tensors are missing"):
        TimmBackbone("resnet18", pretrained=str(tmp_path / "less.pth"))


def test_build_errors_are_advised_on_what_failed(tmp_path, monkeypatch):
    """An offline download with a valid output_stride was told to change the stride; a
    valid local-dir folder with a bad stride was blamed on the folder (audit CG)."""
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("resnet18", num_classes=0), str(tmp_path / "r18"))
    with pytest.raises(ConfigError) as err:
        TimmBackbone(f"local-dir:{tmp_path / 'r18'}", output_stride=4)
    assert "take 8, 16 or 32" in str(err.value) and "config.json" not in str(err.value)

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache")
        return real(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError) as err:
        TimmBackbone("resnet18", pretrained=True, output_stride=16)
    msg = str(err.value)
    assert "backbone.output_stride" not in msg and "without internet" in msg
