"""Two-stream ResNet and its test-time path against independent computations (mutation
audit NI): the shared trunk against a torchvision ResNet run layer by layer,
GeM by its formula, the BN neck written out in training and evaluation mode, the flip
average by hand through ``extract``, ``extract_features`` and ``ReidModel.features``, and
the weights ``pretrained`` loads. Nothing is downloaded (random initialisation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from uvireid.errors import ConfigError
from uvireid.models import TwoStreamResNet
from uvireid.models.backbone import TORCHVISION_WEIGHTS, build_resnet

torch.set_num_threads(2)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True)


def _tv(arch: str, seed: int = 1):
    """A randomly initialised torchvision ResNet with non-trivial BN statistics."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _tv_map(net, x: torch.Tensor, last_stride: int) -> torch.Tensor:
    """torchvision's layers run one by one, layer4's first block at ``last_stride``
    (its strided conv, conv1 of a basic block and conv2 of a bottleneck, and the
    shortcut), on a copy."""
    import copy

    net = copy.deepcopy(net)
    block = net.layer4[0]
    conv = block.conv2 if hasattr(block, "conv3") else block.conv1
    conv.stride = (last_stride, last_stride)
    block.downsample[0].stride = (last_stride, last_stride)
    y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        y = layer(y)
    return y


def _gem(fmap: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    """(mean_hw max(x, eps)^p)^(1/p), in float64, one channel at a time."""
    f = fmap.double()
    out = torch.empty(f.shape[:2], dtype=torch.float64)
    for b in range(f.shape[0]):
        for c in range(f.shape[1]):
            v = f[b, c].flatten().clamp(min=eps)
            out[b, c] = (v.pow(p).sum() / v.numel()) ** (1.0 / p)
    return out


@pytest.mark.parametrize(
    ("arch", "last_stride"), [("resnet18", 1), ("resnet18", 2), ("resnet50", 1)]
)
def test_trunk_pool_and_neck_are_torchvision_gem_and_batch_norm(tmp_path, arch, last_stride):
    """A torchvision ResNet's weights as ``pretrained``: both streams and the trunk run
    as torchvision's layers do (layer4 at ``last_stride``), global_feat is GeM(p=3) of
    the map and, in eval mode, bn_feat is (g - mean) / sqrt(var + eps) * w + b with the
    neck's running statistics."""
    net = _tv(arch)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    torch.manual_seed(0)
    m = TwoStreamResNet(arch, pretrained=str(tmp_path / "w.pth"), last_stride=last_stride)
    m.eval()
    with torch.no_grad():
        m.neck.running_mean.uniform_(-0.5, 0.5)
        m.neck.running_var.uniform_(0.5, 2.0)
        m.neck.bias.uniform_(-0.1, 0.1)
    h = 32 if arch == "resnet50" else 64  # maps of 2x1 (stride 1) or 1x1
    x = torch.randn(2, 3, h, h // 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = _tv_map(net, x, last_stride)
        out = m(x, torch.tensor([1, 0]))
    assert want.shape[2:] == ((h // 16, h // 32) if last_stride == 1 else (h // 32, h // 64))
    torch.testing.assert_close(out.feature_map, want, atol=1e-4, rtol=1e-4)
    g = _gem(want, 3.0)
    torch.testing.assert_close(out.global_feat.double(), g, atol=1e-4, rtol=1e-4)
    n = m.neck
    bn = (g - n.running_mean.double()) / torch.sqrt(n.running_var.double() + n.eps)
    bn = bn * n.weight.detach().double() + n.bias.double()
    torch.testing.assert_close(out.bn_feat.double(), bn, atol=1e-4, rtol=1e-4)
    assert m.out_dim == out.bn_feat.shape[1] == (2048 if arch == "resnet50" else 512)


def test_bn_neck_in_training_mode_uses_the_batch_and_updates_the_running_statistics():
    """Training mode: bn_feat = (g - mean_B) / sqrt(var_B + eps) * w + b (biased batch
    variance), running_mean <- 0.9 rm + 0.1 mean_B, running_var <- 0.9 rv + 0.1 var_B
    (unbiased); the bias gets no gradient, the weight does. Eval mode then uses the
    updated running statistics."""
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18").train()
    x = torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(2))
    rm0, rv0 = m.neck.running_mean.clone(), m.neck.running_var.clone()
    out = m(x, torch.tensor([0, 1, 1, 0]))
    g = out.global_feat.detach().double()
    mean, var_b = g.mean(0), g.var(0, unbiased=False)
    w, b = m.neck.weight.detach().double(), m.neck.bias.detach().double()
    want = (g - mean) / torch.sqrt(var_b + m.neck.eps) * w + b
    torch.testing.assert_close(out.bn_feat.detach().double(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(m.neck.running_mean.double(), 0.9 * rm0.double() + 0.1 * mean)
    torch.testing.assert_close(
        m.neck.running_var.double(), 0.9 * rv0.double() + 0.1 * g.var(0, unbiased=True)
    )
    out.bn_feat.square().sum().backward()
    assert m.neck.bias.grad is None and m.neck.weight.grad is not None
    m.eval()
    with torch.no_grad():
        ev = m(x[:1], 0)
    n = m.neck
    want = (ev.global_feat.double() - n.running_mean.double()) / torch.sqrt(
        n.running_var.double() + n.eps
    ) * n.weight.detach().double() + n.bias.double()
    torch.testing.assert_close(ev.bn_feat.double(), want, atol=1e-4, rtol=1e-4)


def test_each_stream_is_its_own_stem_then_the_shared_layers_by_hand():
    """share_from=layer2: stream k = its own stem and layer1; the trunk layer2..layer4;
    a mixed batch gives each image its stream's output (streams made distinct)."""
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18", share_from="layer2").eval()
    with torch.no_grad():
        m.stream(1)[1][0].conv1.weight.mul_(-1.3)  # infrared layer1 only
    x = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(3))
    mod = torch.tensor([1, 0, 1])
    with torch.no_grad():
        got = m(x, mod).feature_map
        for i, k in enumerate(mod.tolist()):
            s = m.stream(k)
            want = m.shared(s[1](s[0](x[i : i + 1])))
            torch.testing.assert_close(got[i : i + 1], want, atol=1e-5, rtol=1e-4)
    assert len(m.shared) == 3 and len(m.stream(0)) == 2


def test_extract_flip_average_by_hand_for_both_heads_and_mixed_modalities():
    """extract = L2n((L2n(h(x)) + L2n(h(x reversed in width))) / 2) for h the pooled
    feature or the BN neck's, each image through its own stream; flip=False: L2n(h(x))."""
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18").eval()
    with torch.no_grad():
        m.stream(0)[0][0].weight.mul_(-1.2)
        m.neck.running_mean.uniform_(-1, 1)
    x = torch.randn(3, 3, 32, 16, generator=torch.Generator().manual_seed(7))
    rev = x[..., list(range(x.shape[3] - 1, -1, -1))]
    mod = [0, 1, 0]
    halves = {"bn_feat": ([], []), "global_feat": ([], [])}
    with torch.no_grad():
        for i, k in enumerate(mod):
            a, b = m(x[i : i + 1], k), m(rev[i : i + 1], k)
            for field, (both, one) in halves.items():
                fa, fb = _unit(getattr(a, field)), _unit(getattr(b, field))
                both.append(_unit((fa + fb) / 2))
                one.append(fa)
    for head, field in (("bn_feat", "bn_feat"), ("pool", "global_feat")):
        both, one = halves[field]
        got = m.extract(x, torch.tensor(mod), head=head)
        torch.testing.assert_close(got, torch.cat(both), atol=1e-5, rtol=1e-4)
        got1 = m.extract(x, torch.tensor(mod), flip=False, head=head)
        torch.testing.assert_close(got1, torch.cat(one), atol=1e-5, rtol=1e-4)


def _records(tmp_path, n=4, h=32, w=16):
    from uvireid.types import ImageRecord

    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(path)
        recs.append(ImageRecord(str(path), 10 + i, i % 3, i % 2))
    return recs


def _by_hand(m, recs, head="bn_feat", flip=True):
    """The images read with PIL, scaled to [0, 1], ImageNet-normalised, one at a time
    through their modality's stream, flip-averaged as extract documents it."""
    field = {"bn_feat": "bn_feat", "pool": "global_feat"}[head]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    rows = []
    with torch.no_grad():
        for r in recs:
            img = torch.from_numpy(np.asarray(Image.open(r.path).convert("RGB")).copy())
            x = ((img.permute(2, 0, 1).double() / 255 - mean) / std).float()[None]
            a = _unit(getattr(m(x, r.modality), field))
            if flip:
                b = _unit(getattr(m(x.flip(3), r.modality), field))
                a = _unit((a + b) / 2)
            rows.append(a)
    return torch.cat(rows).numpy()


@pytest.mark.parametrize(("head", "flip"), [("bn_feat", True), ("pool", False)])
def test_extract_features_by_hand(tmp_path, head, flip):
    """extract_features: the records' images in order, their own modality, the head and
    the flip asked for; the bank keeps pids/cams/modality; the model's mode is restored."""
    from uvireid.engine.extract import extract_features

    recs = _records(tmp_path)
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18")
    with torch.no_grad():
        m.stream(1)[0][0].weight.mul_(-1.2)
        m.neck.running_var.uniform_(0.5, 2)
    m.train()
    bank = extract_features(m, recs, height=32, width=16, batch_size=3, head=head, flip=flip)
    assert m.training
    m.eval()
    np.testing.assert_allclose(bank.feats, _by_hand(m, recs, head, flip), atol=2e-5, rtol=0)
    assert bank.feats.dtype == np.float32
    assert bank.pids.tolist() == [10, 11, 12, 13] and bank.cams.tolist() == [0, 1, 2, 0]
    assert bank.modality.tolist() == [0, 1, 0, 1]


def test_extract_features_restores_the_mode_and_keeps_no_graph(tmp_path):
    """A model whose extract fails half way is back in training mode (as extract_images
    leaves it); a plugin's extract without its own no_grad builds no autograd graph."""
    from uvireid.engine.extract import extract_features

    recs = _records(tmp_path)

    class Plain(torch.nn.Module):
        def __init__(self, fail_at=None):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))
            self.calls, self.fail_at, self.grad_seen = 0, fail_at, []

        def extract(self, x, modality, flip=True):
            self.calls += 1
            self.grad_seen.append(torch.is_grad_enabled())
            if self.calls == self.fail_at:
                raise RuntimeError("out of memory")
            return torch.nn.functional.normalize(x.mean((2, 3)) * self.w, dim=1)

    failing = Plain(fail_at=2).train()
    with pytest.raises(RuntimeError, match="out of memory"):
        extract_features(failing, recs, height=32, width=16, batch_size=2)
    assert failing.training
    plain = Plain().train()
    bank = extract_features(plain, recs, height=32, width=16, batch_size=2)
    assert plain.grad_seen == [False, False] and plain.training
    assert bank.feats.shape == (4, 3)


def test_extract_features_of_no_records_has_the_models_width():
    """No records: (0, d) features with d the model's out_dim, as extract_images gives, so
    that a bank of them concatenates with and compares to a non-empty one."""
    from uvireid.engine.extract import extract_features
    from uvireid.engine.trainer import extract_images

    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18")
    bank = extract_features(m, [], height=32, width=16)
    direct, _ = extract_images(m, torch.zeros(0, 3, 32, 16, dtype=torch.uint8), np.zeros(0), "cpu")
    assert bank.feats.shape == (0, 512) == tuple(direct.shape)
    assert bank.feats.dtype == np.float32 and bank.pids.shape == (0,)


@pytest.mark.parametrize(
    "evaluation", [{}, {"feature_head": "pool", "flip": False}, {"feature_head": "pool"}]
)
def test_reid_model_features_by_hand(tmp_path, evaluation):
    """ReidModel.features of decoded images (N, H, W, 3) and of the same pixels as files:
    the run's head and flip (flip-averaged by default), each image's own modality."""
    from uvireid.engine.inference import ReidModel

    recs = _records(tmp_path, n=3)
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18")
    with torch.no_grad():
        m.stream(1)[0][0].weight.mul_(-1.2)
        m.neck.running_mean.uniform_(-1, 1)
    model = ReidModel(m, {"height": 32, "width": 16}, evaluation)
    assert not m.training
    pixels = np.stack([np.asarray(Image.open(r.path).convert("RGB")) for r in recs])
    codes = [r.modality for r in recs]
    want = _by_hand(
        m, recs, evaluation.get("feature_head", "bn_feat"), evaluation.get("flip", True)
    )
    np.testing.assert_allclose(model.features(pixels, codes), want, atol=2e-5, rtol=0)
    names = ["visible" if c == 0 else "infrared" for c in codes]
    np.testing.assert_allclose(
        model.features([r.path for r in recs], names), want, atol=2e-5, rtol=0
    )


def test_pretrained_true_loads_the_legacy_imagenet_weights_into_every_stream(monkeypatch):
    """pretrained=True asks torchvision for IMAGENET1K_V1 (the legacy weights the peers
    load; V2 is another training) and loads them into both stems and the trunk. The
    fetch is replaced by a random state dict: nothing is downloaded."""
    import torchvision.models._api as api

    for arch, name in TORCHVISION_WEIGHTS.items():
        enum = torchvision.models.get_weight(name)
        assert enum.name == "IMAGENET1K_V1" and type(enum).__name__.lower().startswith(arch)
    ref = _tv("resnet18", seed=3).state_dict()
    asked = []

    def fake(self, *a, **k):
        asked.append(self)
        return ref

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", fake)
    m = TwoStreamResNet("resnet18", pretrained=True)
    assert [w.name for w in asked] == ["IMAGENET1K_V1"]
    for k in (0, 1):
        assert torch.equal(m.stream(k)[0][0].weight, ref["conv1.weight"])
        assert torch.equal(m.stream(k)[0][1].running_var, ref["bn1.running_var"])
    assert torch.equal(m.shared[-1][0].downsample[1].weight, ref["layer4.0.downsample.1.weight"])
    asked.clear()
    build_resnet("resnet18", False)
    assert asked == []  # random initialisation fetches nothing


def test_a_checkpoint_with_a_classifier_loads_and_every_difference_is_counted(tmp_path):
    """A torchvision file with its fc (the ImageNet classifier) loads, fc dropped; a file
    missing two weights, with one extra, names exactly those; counts are exact."""
    sd = _tv("resnet18", seed=4).state_dict()
    assert "fc.weight" in sd
    torch.save(sd, tmp_path / "full.pth")
    net = build_resnet("resnet18", str(tmp_path / "full.pth"))
    assert isinstance(net.fc, torch.nn.Identity)
    assert torch.equal(net.layer3[1].bn2.running_mean, sd["layer3.1.bn2.running_mean"])
    # a re-ID model's classifier (751 identities) is not a weight of the backbone either
    reid = {**sd, "fc.weight": torch.zeros(751, 512), "fc.bias": torch.zeros(751)}
    torch.save(reid, tmp_path / "reid.pth")
    net = build_resnet("resnet18", str(tmp_path / "reid.pth"))
    assert torch.equal(net.conv1.weight, sd["conv1.weight"])
    bad = {k: v for k, v in sd.items() if k not in ("layer2.0.conv1.weight", "bn1.bias")}
    bad["layer5.weight"] = torch.zeros(1)
    bad["fc.extra"] = torch.zeros(1)  # a classifier's key is never counted
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ConfigError) as err:
        build_resnet("resnet18", str(tmp_path / "bad.pth"))
    msg = str(err.value)
    assert "2 missing keys (bn1.bias, layer2.0.conv1.weight)" in msg
    assert "1 unexpected keys (layer5.weight)" in msg
    assert "another shape" not in msg


def test_every_modality_name_is_its_code():
    """The names _MODALITIES documents: rgb is visible; ir, thermal, nir are infrared."""
    from uvireid.engine.inference import _modalities

    names = ["visible", "RGB", "infrared", "ir", "Thermal", "NIR"]
    assert _modalities(names, 6).tolist() == [0, 0, 1, 1, 1, 1]


def test_embed_in_chunks_keeps_each_files_own_modality(tmp_path):
    """embed(chunk=2) over 5 files with one modality each (one unreadable): every file
    gets the features of its own modality, as one call per file gives them."""
    from uvireid.engine.inference import ReidModel

    recs = _records(tmp_path, n=4)
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18")
    with torch.no_grad():
        m.stream(1)[0][0].weight.mul_(-1.2)
    model = ReidModel(m, {"height": 32, "width": 16}, {"flip": False})
    (tmp_path / "bad.png").write_bytes(b"no image")
    paths = [recs[0].path, str(tmp_path / "bad.png"), recs[1].path, recs[2].path, recs[3].path]
    codes = [1, 0, 0, 1, 0]
    feats, kept, skipped = model.embed(paths, codes, chunk=2)
    assert skipped == [str(tmp_path / "bad.png")] and kept == [paths[i] for i in (0, 2, 3, 4)]
    want = np.concatenate([model.features([paths[i]], codes[i]) for i in (0, 2, 3, 4)])
    np.testing.assert_allclose(feats, want, atol=2e-5, rtol=0)
    other = np.concatenate([model.features([paths[i]], 1 - codes[i]) for i in (0, 2, 3, 4)])
    assert np.abs(feats - other).max() > 1e-3  # the streams differ: the check can fail


def test_layout_converts_the_images_of_a_channels_last_model_only():
    """_layout: a model moved to channels_last gets its images in NHWC once (cuDNN would
    otherwise convert every layer's input); an NCHW model's images stay as they are."""
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18")
    x = torch.randn(1, 3, 32, 16)
    assert m._layout(x) is x
    m = m.to(memory_format=torch.channels_last)
    y = m._layout(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    torch.testing.assert_close(y, x)


def test_extract_in_training_mode_warns(caplog):
    """extract() in training mode (batch statistics, running statistics updated) says so;
    in eval mode it does not."""
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18")
    x = torch.randn(2, 3, 32, 16)
    with caplog.at_level("WARNING", logger="uvireid.models.backbone"):
        m.eval().extract(x, 0, flip=False)
        assert "train mode" not in caplog.text
        m.train().extract(x, 0, flip=False)
    assert "extract() called in train mode; call model.eval() first" in caplog.text
