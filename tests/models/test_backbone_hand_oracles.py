"""The two-stream ResNet against computations written out by hand
(torchvision's own modules run one by one, batch norm by its formula, GeM by its formula),
in TRAINING mode with a mixed batch (each stem's batch norm sees only its modality's
images, the shared trunk sees the whole batch in the caller's order), with three
modalities, with a single stream (share_from: stem), and the errors of the pretrained
path (a home-relative path, the key lists of the half-fitting message).

Tiny inputs: resnet18, 64 x 32 images, random initialisation; nothing is downloaded."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

from uvireid.errors import ConfigError
from uvireid.models import TwoStreamResNet


def _bn_train(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    """Training-mode BatchNorm2d by its formula (biased batch variance over N, H, W)."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    w = bn.weight.detach()[None, :, None, None]
    b = bn.bias.detach()[None, :, None, None]
    return (x - mean) / torch.sqrt(var + bn.eps) * w + b


def _stem_by_hand(stem: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """conv1 -> training-mode BN by formula -> ReLU -> 3x3/2 max pool (pad 1)."""
    conv, bn = stem[0], stem[1]
    y = torch.nn.functional.conv2d(x, conv.weight.detach(), None, conv.stride, conv.padding)
    y = _bn_train(y, bn).clamp(min=0)
    return torch.nn.functional.max_pool2d(y, 3, 2, 1)


def _gem3(fmap: torch.Tensor) -> torch.Tensor:
    f = fmap.double().clamp(min=1e-6)
    return (f**3).mean(dim=(2, 3)) ** (1 / 3)


def test_train_mode_mixed_batch_each_stem_normalises_with_its_own_images_only():
    """Training mode, modality [1, 0, 0, 1, 0, 1]: the visible stem's batch norm takes the
    statistics of the three visible images alone (the peers run each stem on its own
    modality's images), the infrared stem those of the three infrared ones; the rows are
    put back in the caller's order before the shared trunk; the neck normalises with the
    batch's statistics. Every step written out; the running statistics of each stem move
    with its own images only."""
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18").train()
    with torch.no_grad():  # distinct streams, non-trivial affine BN
        m.stream(1)[0][0].weight.mul_(-1.4)
        m.stream(0)[0][1].weight.uniform_(0.5, 1.5)
        m.stream(1)[0][1].bias.uniform_(-0.3, 0.3)
    ref = copy.deepcopy(m)
    x = torch.randn(6, 3, 64, 32, generator=torch.Generator().manual_seed(11))
    mod = torch.tensor([1, 0, 0, 1, 0, 1])
    rm0 = [m.stream(k)[0][1].running_mean.clone() for k in (0, 1)]
    out = m(x, mod)

    with torch.no_grad():
        y = torch.empty(6, 64, 16, 8)
        for k in (0, 1):
            idx = (mod == k).nonzero().flatten()
            y[idx] = _stem_by_hand(ref.stream(k)[0], x[idx])
        trunk = ref.shared.train()  # its own batch norms on the whole re-assembled batch
        fmap = trunk(y)
    torch.testing.assert_close(out.feature_map.detach(), fmap, atol=2e-4, rtol=2e-4)
    g = _gem3(fmap)
    torch.testing.assert_close(out.global_feat.detach().double(), g, atol=2e-4, rtol=2e-4)
    mean, var = g.mean(0), g.var(0, unbiased=False)
    w = m.neck.weight.detach().double()
    want = (g - mean) / torch.sqrt(var + m.neck.eps) * w
    torch.testing.assert_close(out.bn_feat.detach().double(), want, atol=2e-3, rtol=2e-3)

    # running statistics of each stem: 0.9 old + 0.1 mean of the conv1 output of ITS images
    for k in (0, 1):
        idx = (mod == k).nonzero().flatten()
        conv = ref.stream(k)[0][0]
        with torch.no_grad():
            c = torch.nn.functional.conv2d(x[idx], conv.weight, None, conv.stride, conv.padding)
        want_rm = 0.9 * rm0[k] + 0.1 * c.mean(dim=(0, 2, 3))
        torch.testing.assert_close(m.stream(k)[0][1].running_mean, want_rm, atol=1e-5, rtol=1e-4)


def test_three_modalities_each_code_takes_its_own_stream():
    """num_modalities=3: three stems; a mixed batch with code 2 gives each image its own
    stem's output (stem by hand in eval mode: conv, BN with running statistics, ReLU,
    max pool, then the shared trunk); code 3 is refused."""
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18", num_modalities=3).eval()
    assert len(m.specific) == 3
    with torch.no_grad():
        m.stream(1)[0][0].weight.mul_(-1.3)
        m.stream(2)[0][0].weight.mul_(0.6)
        m.stream(2)[0][1].running_mean.uniform_(-0.2, 0.2)
    x = torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(5))
    mod = torch.tensor([2, 0, 1, 2])
    with torch.no_grad():
        got = m(x, mod).feature_map
        for i, k in enumerate(mod.tolist()):
            conv, bn = m.stream(k)[0][0], m.stream(k)[0][1]
            y = torch.nn.functional.conv2d(x[i : i + 1], conv.weight, None, 2, 3)
            y = (y - bn.running_mean[None, :, None, None]) / torch.sqrt(
                bn.running_var[None, :, None, None] + bn.eps
            ) * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
            y = torch.nn.functional.max_pool2d(y.clamp(min=0), 3, 2, 1)
            torch.testing.assert_close(got[i : i + 1], m.shared(y), atol=1e-4, rtol=1e-4)
        by_int = m(x[:1], 2).feature_map
    torch.testing.assert_close(by_int, got[:1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match=r"integers in 0\.\.2"):
        m(x, torch.tensor([0, 3, 1, 2]))


def test_share_from_stem_is_one_torchvision_resnet_whatever_the_modality():
    """share_from='stem': the whole network is one stream; its map is torchvision's
    resnet18 (same weights, layer4 at stride 1) run module by module, for either code."""
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18", share_from="stem").eval()
    tv = torchvision.models.resnet18(weights=None).eval()
    stem, l1, l2, l3, l4 = m.shared
    tv.conv1, tv.bn1 = stem[0], stem[1]
    tv.layer1, tv.layer2, tv.layer3, tv.layer4 = l1, l2, l3, l4
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        for mod in (0, 1, torch.tensor([1, 0])):
            torch.testing.assert_close(m(x, mod).feature_map, want)
    assert want.shape == (2, 512, 4, 2)  # stride 16: the last stage kept at stride 1


def test_num_modalities_other_than_two_with_a_single_stream_is_refused():
    """share_from: stem has no per-modality stage: num_modalities=1 (like 3) is a setting
    without effect and is refused, naming it."""
    for n in (1, 3):
        with pytest.raises(ConfigError, match=f"num_modalities={n} has no effect"):
            TwoStreamResNet("resnet18", share_from="stem", num_modalities=n)


def test_a_home_relative_pretrained_path_is_expanded(tmp_path, monkeypatch):
    """pretrained='~/w.pth' is the file in $HOME (check_resnet_args expands it before
    asking whether it exists, as the loader does)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.manual_seed(3)
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    m = TwoStreamResNet("resnet18", pretrained="~/w.pth")
    for k in (0, 1):
        assert torch.equal(m.stream(k)[0][0].weight, ref.conv1.weight)
    assert torch.equal(m.shared[-1][1].bn2.running_var, ref.layer4[1].bn2.running_var)


def test_pretrained_that_is_a_folder_is_refused_as_missing(tmp_path):
    """A folder is not a checkpoint file: the 'does not exist' advice, before building."""
    with pytest.raises(ConfigError, match="does not exist"):
        TwoStreamResNet("resnet18", pretrained=str(tmp_path))


@pytest.mark.parametrize("drop", [8, 9])
def test_half_fitting_message_lists_eight_keys_then_an_ellipsis(tmp_path, drop):
    """The message names at most 8 keys of each kind and adds ', ...' only when there
    are more: 8 missing keys are all named without it; 9 give 8 names and ', ...'."""
    sd = torchvision.models.resnet18().state_dict()
    gone = [k for k in sd if not k.endswith("num_batches_tracked") and not k.startswith("fc.")]
    gone = sorted(gone)[:drop]
    torch.save({k: v for k, v in sd.items() if k not in gone}, tmp_path / "w.pth")
    with pytest.raises(ConfigError) as err:
        TwoStreamResNet("resnet18", pretrained=str(tmp_path / "w.pth"))
    msg = str(err.value)
    own_order = [k for k in sd if k in gone]  # listed in the model's own order
    listed = ", ".join(own_order[:8])
    tail = ", ..." if drop > 8 else ""
    assert f"{drop} missing keys ({listed}{tail})" in msg, msg


def test_last_stride_true_is_refused():
    """True == 1 in Python; last_stride: true in a YAML recipe is a mistake, refused."""
    with pytest.raises(ConfigError, match="last_stride must be 1 or 2"):
        TwoStreamResNet("resnet18", last_stride=True)


@pytest.mark.parametrize("codes", [[0, 1], [1], [0, 1, 0, 1]])
def test_a_modality_of_another_length_than_the_batch_is_refused(codes):
    """Fewer codes than images (not only more) is refused: a short list would leave
    images of the batch with no stream (uninitialised rows) or drop them."""
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18").eval()
    x = torch.randn(3, 3, 64, 32)
    with pytest.raises(ConfigError, match=f"modality has {len(codes)} entries for a batch of 3"):
        m(x, torch.tensor(codes))


@pytest.mark.parametrize("bad", [5, 1, 0, 2.0, None])
def test_pretrained_of_another_type_is_refused(bad):
    """pretrained is true, false, the prior's name or a path: a number (5 and 1/0, which
    are not booleans) or None meant a random initialisation silently."""
    with pytest.raises(ConfigError, match="pretrained must be true"):
        TwoStreamResNet("resnet18", pretrained=bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_non_local_channels_must_be_a_positive_integer(bad):
    """non_local_channels is checked even where no block uses it (the recipe's preflight
    refuses it before a run, not only once a non_local list asks for blocks)."""
    with pytest.raises(ConfigError, match="non_local_channels"):
        TwoStreamResNet("resnet18", non_local_channels=bad)


def _timm_resnet18():
    from uvireid.models.timm_backbone import TimmBackbone

    return TimmBackbone("resnet18")


@pytest.mark.parametrize(
    "build",
    [lambda: TwoStreamResNet("resnet18", share_from="stem"), _timm_resnet18],
    ids=["share_from_stem", "timm"],
)
def test_a_single_stream_checks_the_modality_codes_as_two_streams_do(build):
    """One stream for every image, but the caller's codes are the same contract: codes
    outside 0/1, text codes, or a list of another length than the batch are refused as a
    two-stream backbone refuses them; good codes give the same map either way."""
    torch.manual_seed(0)
    m = build().eval()
    two = TwoStreamResNet("resnet18").eval()
    x = torch.randn(3, 3, 64, 32)
    for model in (m, two):
        with pytest.raises(ConfigError, match=r"integers in 0\.\.1"):
            model(x, torch.tensor([0, 2, 1]))
        with pytest.raises(ConfigError, match=r"integers in 0\.\.1"):
            model(x, ["rgb", "ir", "rgb"])
        with pytest.raises(ConfigError, match=r"integers in 0\.\.1"):
            model(x, 2)
        with pytest.raises(ConfigError, match="modality has 2 entries for a batch of 3"):
            model(x, torch.tensor([0, 1]))
    with torch.no_grad():
        a = m(x, torch.tensor([0, 1, 1])).feature_map
        torch.testing.assert_close(m(x, 1).feature_map, a)
        torch.testing.assert_close(m(x, [1, 0, 1]).feature_map, a)


def test_a_boolean_infrared_mask_is_the_codes_zero_and_one():
    """``modality == 1`` as a boolean mask (True = infrared) routes as the codes 0 / 1."""
    torch.manual_seed(0)
    m = TwoStreamResNet("resnet18").eval()
    x = torch.randn(3, 3, 64, 32)
    mask = torch.tensor([False, True, True])
    with torch.no_grad():
        torch.testing.assert_close(
            m(x, mask).feature_map, m(x, torch.tensor([0, 1, 1])).feature_map
        )
        torch.testing.assert_close(m(x, mask.numpy()).feature_map, m(x, [0, 1, 1]).feature_map)
