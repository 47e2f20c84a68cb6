"""Edges of the models (audit HB, session 24: a mutation test of ``uvireid/models``;
these tests killed its surviving mutants): the flipped half's stream, GeM's p, clamp
and eps by the formula, nested and other-format checkpoints, the part attention written
out, the part BN's order of passes, eval mode kept, an empty batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from uvireid.errors import ConfigError
from uvireid.models import GeM, TwoStreamResNet
from uvireid.models.parts import PartQuery

torch.set_num_threads(2)


def _model(**kw) -> TwoStreamResNet:
    torch.manual_seed(0)
    return TwoStreamResNet(**{"arch": "resnet18", **kw})


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True)


def test_flipped_half_goes_through_the_same_modality_stream():
    """extract(x, m) = L2n((L2n(f(x, m)) + L2n(f(flip x, m))) / 2) with the streams made
    different (a fresh model's streams are identical, so a flip sent through the other
    modality's stem went unseen)."""
    m = _model().eval()
    with torch.no_grad():
        m.stream(1)[0][0].weight.mul_(-1.5)  # infrared conv1 only
    x = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(3))
    flipped = x[..., torch.arange(x.shape[3] - 1, -1, -1)]  # width reversed by hand
    for mod in (0, 1, torch.tensor([0, 1, 0])):
        with torch.no_grad():
            a = m(x, mod).bn_feat
            b = m(flipped, mod).bn_feat
        manual = _unit((_unit(a) + _unit(b)) / 2)
        torch.testing.assert_close(m.extract(x, mod), manual, atol=1e-5, rtol=1e-4)


def test_gem_p_of_the_backbone_is_the_one_it_pools_with():
    """gem_p=1 is the spatial mean of the (non-negative) last map, gem_p=4 the formula
    (mean x^4)^(1/4)."""
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(4))
    for p in (1.0, 4.0):
        m = _model(gem_p=p).eval()
        with torch.no_grad():
            out = m(x, 0)
        fmap = out.feature_map.double()
        want = fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1 / p)
        torch.testing.assert_close(out.global_feat.double(), want, rtol=1e-4, atol=1e-6)


def test_a_checkpoint_nested_under_model_is_read(tmp_path):
    """_load_checkpoint's docstring: a state dict nested under 'state_dict' or 'model'
    (the peers save {'model': ...})."""
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18()
    torch.save({"model": ref.state_dict(), "epoch": torch.tensor(3)}, tmp_path / "nested.pth")
    m = _model(pretrained=str(tmp_path / "nested.pth"))
    for k in (0, 1):
        assert torch.equal(m.stream(k)[0][0].weight, ref.conv1.weight)
    assert torch.equal(m.shared[0][0].conv1.weight, ref.layer1[0].conv1.weight)


def test_a_uvireid_checkpoint_of_another_format_is_refused(tmp_path):
    """uvireid_backbone_weights: a checkpoint of another format version is a ConfigError
    naming the format."""
    from uvireid.engine.checkpoint import FORMAT, rng_state

    trained = _model()
    model = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    path = tmp_path / "latest.pt"  # as a later uvireid would write it (save_checkpoint
    # writes this version's marker whatever the state holds)
    torch.save({"format": FORMAT + 1, "epoch": 1, "model": model, "rng": rng_state()}, path)
    assert torch.load(path, weights_only=False)["format"] == FORMAT + 1
    with pytest.raises(ConfigError, match=rf"uvireid checkpoint of format {FORMAT + 1}"):
        _model(pretrained=str(path))


def test_gem_clamps_negative_activations_at_eps():
    """g_c = (mean_hw max(x, eps)^p)^(1/p) (pooling.py's formula): on a signed map the
    negatives count as eps, never as negative cubes (a NaN under the 1/p root)."""
    x = torch.tensor([[[[-2.0, 1.0], [0.5, -0.25]]]], dtype=torch.float64)
    eps, p = 1e-6, 3.0
    want = ((eps**p + 1.0**p + 0.5**p + eps**p) / 4) ** (1 / p)
    got = GeM(p)(x)
    assert got.shape == (1, 1)
    assert math.isclose(float(got), want, rel_tol=1e-6)
    # a non-integer p on a map with zeros: the floor keeps the gradient finite
    z = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    z[0, 0, 1, 1] = 2.0
    z.requires_grad_(True)
    GeM(2.5)(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_gem_default_eps_is_one_in_a_million():
    """GeM's documented default eps = 1e-6: a map of 1e-4 everywhere pools to 1e-4 (an eps
    of 1e-3 would give 1e-3)."""
    x = torch.full((1, 2, 3, 3), 1e-4, dtype=torch.float64)
    torch.testing.assert_close(GeM(3.0)(x), torch.full((1, 2), 1e-4, dtype=torch.float64))
    x[0, 0, 0, 0] = 1e-7  # below the floor: counts as 1e-6
    want = ((8 * 1e-4**3 + 1e-6**3) / 9) ** (1 / 3)
    assert math.isclose(float(GeM(3.0)(x)[0, 0]), want, rel_tol=1e-6)


def test_self_parts_leave_an_eval_module_in_eval_mode():
    """self_parts switches to eval for the running statistics and back to the mode it
    found: a module in eval mode stays there (its BN must not start updating statistics
    at the next forward)."""
    torch.manual_seed(0)
    mod = PartQuery(4, 2).eval()
    fmap = torch.randn(3, 4, 3, 2).relu()
    mod.self_parts(fmap)
    assert not mod.training and not mod.neck.training
    before = mod.neck.running_mean.clone()
    mod.pairs(fmap, fmap, fmap)  # eval: the running statistics do not move
    assert torch.equal(mod.neck.running_mean, before)
    mod.train()
    mod.self_parts(fmap)
    assert mod.training and mod.neck.training


def test_part_attention_scale_and_axis_by_the_formula():
    """Eq. 10-11 written out for one image, one part: a_j = softmax_j(<q, G_j>/sqrt(C)),
    part = sum_j a_j G_j, with C = 16 (scale 4, where a missing or squared scale, or a
    softmax over the parts, would differ)."""
    from uvireid.models.parts import query_attention

    g = torch.Generator().manual_seed(5)
    c, m = 16, 5
    q = torch.randn(1, 2, c, generator=g, dtype=torch.float64)
    st = torch.randn(1, 2, m, c, generator=g, dtype=torch.float64)
    got = query_attention(q, st)
    for p in range(2):
        s = [float((q[0, p] * st[0, p, j]).sum()) / 4.0 for j in range(m)]
        e = [math.exp(v - max(s)) for v in s]
        a = [v / sum(e) for v in e]
        want = sum(a[j] * st[0, p, j] for j in range(m))
        torch.testing.assert_close(got[0, p], want, rtol=1e-10, atol=1e-12)
    assert F.normalize(got, dim=-1).shape == (1, 2, c)


def test_an_empty_batch_with_a_tensor_modality_gives_an_empty_output():
    """An empty batch (a filtered subset with no image) runs with an int modality but
    raised a raw IndexError (``outs[0]`` of no stream's output) with a (0,) tensor of
    modalities; both must give (0, C)."""
    m = _model().eval()
    x = torch.zeros(0, 3, 64, 32)
    with torch.no_grad():
        by_int = m(x, 0)
        by_tensor = m(x, torch.zeros(0, dtype=torch.long))
    assert by_int.bn_feat.shape == by_tensor.bn_feat.shape == (0, 512)
    assert by_tensor.feature_map.shape == by_int.feature_map.shape


def test_part_bn_running_mean_follows_the_official_order_of_passes():
    """pairs() in train mode runs the part BN three times (self; infrared partner;
    channel-augmented partner, salcr_reference.md Sec. 6.3), each moving the running mean
    by momentum 0.1: rm <- 0.9 rm + 0.1 mean(group rows), in that order (the order sets
    the weights 0.081 / 0.09 / 0.1 of the three groups in the statistics self_parts
    uses)."""
    torch.manual_seed(0)
    s, c, p = 3, 4, 2
    mod = PartQuery(c, p).double().train()
    maps = {k: torch.randn(s, c, 3, 2, dtype=torch.float64).relu() for k in "var"}
    out = mod.eval().pairs(maps["v"], maps["a"], maps["r"])  # eval: raw parts by the BN
    w, b = mod.neck.weight.detach(), mod.neck.bias.detach()
    rm0, rv0, eps = mod.neck.running_mean.clone(), mod.neck.running_var.clone(), mod.neck.eps
    raw = {k: ((v.reshape(s, p * c) - b) / w * torch.sqrt(rv0 + eps) + rm0) for k, v in out.items()}
    mod.train()
    mod.pairs(maps["v"], maps["a"], maps["r"])
    want = rm0.clone()
    official = (
        (("v", "v"), ("a", "a"), ("r", "r")),
        (("v", "r"), ("a", "r"), ("r", "v")),
        (("v", "a"), ("a", "v"), ("r", "a")),
    )
    for group in official:
        rows = torch.cat([raw[pair] for pair in group])
        want = 0.9 * want + 0.1 * rows.mean(0)
    torch.testing.assert_close(mod.neck.running_mean, want, rtol=1e-9, atol=1e-10)
