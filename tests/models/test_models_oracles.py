"""Mutation audit OF: the part module (uvireid/models/parts.py), the
non-local blocks (uvireid/models/non_local.py) and the timm backbone's checks
(uvireid/models/timm_backbone.py). Each test kills a mutant the suite let survive; each
compares with an explicit computation or a documented behaviour. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import logging
import threading
from types import SimpleNamespace

import pytest
import torch

from uvireid.errors import ConfigError
from uvireid.models.non_local import NonLocal, StageWithNonLocal, check_non_local
from uvireid.models.parts import PartQuery, part_queries, stripes
from uvireid.models.timm_backbone import (
    TimmBackbone,
    _fixed_input_size,
    _timm_build_error,
    _timm_file_keys,
    _UnexpectedKeys,
    check_timm_args,
)


def test_stripes_refuse_a_map_with_fewer_pixels_than_parts():
    """floor(hw / P) = 0 pixels per stripe is an error naming the map and P (a 1 x 2 map
    cut into 3 parts gave empty stripes, zero queries and zero parts without a word)."""
    with pytest.raises(ValueError, match="1x2 feature map has fewer pixels than 3 parts"):
        stripes(torch.rand(2, 4, 1, 2), 3)
    st = stripes(torch.rand(2, 4, 1, 2), 2)  # one pixel each: allowed
    assert st.shape == (2, 2, 1, 4)


def test_stripes_of_an_odd_map_are_row_major_and_drop_the_last_pixels():
    """A 3 x 3 map in P = 2 stripes of floor(9 / 2) = 4 pixels: pixels 0..3 and 4..7 in
    row-major order (x = j // w, y = j % w), pixel 8 (the bottom right) dropped (Sec. 6.1)."""
    fmap = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(0))
    st = stripes(fmap, 2)
    assert st.shape == (2, 2, 4, 5)
    for b in range(2):
        for p in range(2):
            for k in range(4):
                j = p * 4 + k
                assert torch.equal(st[b, p, k], fmap[b, :, j // 3, j % 3])


def test_part_queries_stay_the_weighted_mean_when_every_sigmoid_underflows():
    """Eq. 9's denominator sum_j sigmoid(<pi, F_j>) is 0 in float32 once the logits are
    below about -104: the query must stay finite, not 0 / 0 = NaN that would reach the
    attention, the BN and the memories; it is the weighted mean of the stripe's pixels
    (the limit of the ratio), here of equal pixels: that pixel."""
    fmap = torch.ones(1, 2, 3, 4)  # (B, P, m, C) stripes
    tokens = torch.full((2, 4), -100.0)  # logits -400: sigmoid is exactly 0
    assert float(torch.sigmoid(torch.tensor(-400.0))) == 0.0  # the premise
    q = part_queries(fmap, tokens)
    torch.testing.assert_close(q, torch.ones(1, 2, 4))
    # unequal pixels: the float64 ratio (whose sigmoids of -400..-120 are still normal)
    st = torch.tensor([[[[1.0, 3.0], [2.0, 1.0], [4.0, 2.0]]]])  # (1, 1, 3, 2)
    tok = torch.tensor([[-40.0, -40.0]])  # logits -160, -120, -240
    a = torch.sigmoid(torch.einsum("bpmc,pc->bpm", st.double(), tok.double()))
    assert float(torch.sigmoid(torch.tensor(-120.0))) == 0.0 and bool((a > 0).all())
    want = (a[..., None] * st.double()).sum(2) / a.sum(2, keepdim=True)
    torch.testing.assert_close(part_queries(st, tok).double(), want, rtol=1e-6, atol=1e-6)


def test_part_queries_of_logits_that_overflow_to_minus_inf_are_finite():
    """Logits of -inf (an overflow of <pi, F_j>) all over a stripe: a finite query (the
    plain mean of its pixels, the limit of Eq. 9 as the logits fall together) and finite
    gradients, not softmax's 0 / 0."""
    st = torch.full((1, 1, 4, 2), 1e20, requires_grad=True)  # logits -4e40: -inf in float32
    tok = torch.full((1, 2), -1e20)
    assert torch.isneginf(torch.einsum("bpmc,pc->bpm", st.detach(), tok)).all()
    q = part_queries(st, tok)
    torch.testing.assert_close(q.detach(), torch.full((1, 1, 2), 1e20))
    q.sum().backward()
    assert torch.isfinite(st.grad).all()


def test_part_module_parameter_count_is_the_references_18k_for_resnet50():
    """salcr_reference.md Sec. 6.1 / 11.20: the part branch's own parameters are P x C
    tokens and the part BN's weight and bias (2 P C): 6,144 + 12,288 = 18,432 for
    ResNet-50 (C = 2048, P = 3); the paper's "+0.35 M" adds the official code's unused
    162 x 2048 positional embedding (331,776). Of them only the tokens and the BN weight
    train (the BN bias is frozen)."""
    mod = PartQuery(2048, 3)
    assert sum(p.numel() for p in mod.parameters()) == 3 * 2048 + 2 * 3 * 2048 == 18_432
    assert 18_432 + 162 * 2048 == 350_208  # the paper's 0.35 M, spec Sec. 6.1
    trainable = sum(p.numel() for p in mod.parameters() if p.requires_grad)
    assert trainable == 3 * 2048 + 3 * 2048


def test_non_local_on_a_bottleneck_stage_takes_the_stage_output_channels():
    """ResNet-50's blocks are bottlenecks: the stage's output has bn3's channels (4 x the
    width of bn2). A non-local block sized by bn2 cannot take the stage's output."""
    from torchvision.models.resnet import Bottleneck

    torch.manual_seed(0)
    down = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1), torch.nn.BatchNorm2d(16))
    stage = torch.nn.Sequential(Bottleneck(8, 4, downsample=down), Bottleneck(16, 4))
    assert stage[-1].bn2.num_features == 4 and stage[-1].bn3.num_features == 16
    block = StageWithNonLocal(stage, 1).eval()
    nl = block.non_local[0]
    assert nl.theta.in_channels == 16 and nl.W[0].out_channels == 16
    x = torch.randn(2, 8, 4, 3)
    with torch.no_grad():
        assert torch.equal(block(x), stage.eval()(x))  # a new block is the identity


def test_non_local_counts_refuse_booleans_and_a_fifth_entry():
    """Four integer counts: ``true`` (YAML for 1 by mistake) and a fifth count (that
    zip would drop silently) are refused; a tuple of four is taken as a list."""
    blocks = [2, 2, 2, 2]
    with pytest.raises(ConfigError, match=r"non_local\[1\] \(layer2\).*got True"):
        check_non_local([0, True, 0, 0], blocks, "resnet18")
    with pytest.raises(ConfigError, match="four counts"):
        check_non_local([0, 0, 0, 0, 1], blocks, "resnet18")
    assert check_non_local((0, 1, 2, 0), blocks, "resnet18") == [0, 1, 2, 0]
    assert check_non_local(None, blocks, "resnet18") == [0, 0, 0, 0]


def test_non_local_equals_the_formula_on_an_odd_map_with_inter_channels_two():
    """z = x + BN(W y), y_i = 1/N sum_j (theta_i . phi_j) g_j, N = h w, on a 3 x 5 map,
    written with einsum over the explicit (N, N) pairwise matrix."""
    torch.manual_seed(4)
    block = NonLocal(5, 2).double().eval()
    with torch.no_grad():
        block.W[1].weight.uniform_(0.5, 1.5)
        block.W[1].bias.normal_()
    x = torch.randn(2, 5, 3, 5, dtype=torch.float64)
    th, ph, g = (m(x).flatten(2) for m in (block.theta, block.phi, block.g))
    f = torch.einsum("bci,bcj->bij", th, ph) / 15  # (B, N, N)
    y = torch.einsum("bij,bcj->bci", f, g).reshape(2, 2, 3, 5)
    torch.testing.assert_close(block(x), x + block.W(y), rtol=1e-10, atol=1e-12)


def _emit(level=logging.WARNING, msg="Unexpected keys (a.w, b.bias) found while loading x."):
    logging.getLogger(_UnexpectedKeys.LOGGER).log(level, msg)


def test_unexpected_keys_are_read_from_timms_message_of_this_thread_only():
    """The keys timm's loader names ('Unexpected keys (k1, k2) found while loading ...')
    are collected; a message without that tail, and the same message logged by another
    thread meanwhile (another model's build), are not."""
    with _UnexpectedKeys() as seen:
        _emit()
        _emit(msg="Unexpected keys (c.w) were not found in the checkpoint")
        other = threading.Thread(
            target=_emit, kwargs={"msg": "Unexpected keys (z) found while loading y."}
        )
        other.start()
        other.join()
    assert seen.keys == ["a.w", "b.bias"]
    _emit()  # after the block: the handler is gone
    assert seen.keys == ["a.w", "b.bias"]


def test_unexpected_keys_handler_gives_the_logger_its_level_back():
    """A script that quieted timm's loader (level ERROR) still gets the warnings read
    during the build, and its level back after it."""
    log = logging.getLogger(_UnexpectedKeys.LOGGER)
    before = log.level
    try:
        log.setLevel(logging.ERROR)
        with _UnexpectedKeys() as seen:
            _emit()
        assert seen.keys == ["a.w", "b.bias"]
        assert log.level == logging.ERROR
    finally:
        log.setLevel(before)


def test_timm_pretrained_folder_is_not_a_weights_file(tmp_path):
    """A folder given as ``backbone.pretrained`` is refused by the dry-run check ('is not
    a file'), as a missing path is; the prior hint is given for synthetic-visible only."""
    with pytest.raises(ConfigError, match="is not a file; give true") as err:
        check_timm_args(pretrained=str(tmp_path))
    assert "prior of the two-stream ResNet" not in str(err.value)
    with pytest.raises(ConfigError, match="prior of the two-stream ResNet only"):
        check_timm_args(pretrained="synthetic-visible")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_part_module_refuses_a_num_parts_that_is_not_a_positive_integer(bad):
    """PartQuery(dim, num_parts) refuses what is not a whole number >= 1, naming it (0 built
    a module that failed at its first batch with ZeroDivisionError, -1 failed in
    torch.empty, and 1.5 or True became 1 part without a word)."""
    with pytest.raises(ConfigError, match="PartQuery: num_parts must be an integer >= 1"):
        PartQuery(4, bad)


def test_fixed_size_check_compares_the_width_too():
    """A model built for 64 x 32 refuses 64 x 48 input (same height, other width) with
    the setting to change; its own size passes."""
    fake = SimpleNamespace(fixed_input_size=(64, 32), name="vit_x")
    with pytest.raises(ConfigError, match=r"takes 64 x 32 images only.*\[64, 48\]"):
        TimmBackbone.check_input_size(fake, 64, 48)
    TimmBackbone.check_input_size(fake, 64, 32)
    TimmBackbone.check_input_size(SimpleNamespace(fixed_input_size=None, name="r"), 7, 5)


def test_fixed_input_size_is_none_for_a_dynamic_size_model():
    """timm's PatchEmbed with strict_img_size fixes the size, unless the model is built
    with dynamic_img_size (the embedding then takes any size) or pads (dynamic_img_pad)."""
    from timm.layers import PatchEmbed

    class Model(torch.nn.Module):
        def __init__(self, dynamic=False, pad=False):
            super().__init__()
            self.dynamic_img_size = dynamic
            self.patch_embed = PatchEmbed((32, 16), 8, 3, 4, dynamic_img_pad=pad)

    assert _fixed_input_size(Model()) == (32, 16)
    assert _fixed_input_size(Model(dynamic=True)) is None
    assert _fixed_input_size(Model(pad=True)) is None
    assert _fixed_input_size(torch.nn.Linear(2, 2)) is None


def test_timm_file_keys_take_the_ema_weights_first_as_timms_loader(tmp_path):
    """timm.models.load_state_dict (use_ema=True, as load_pretrained calls it) reads
    state_dict_ema, then model_ema, then state_dict, then model; a training checkpoint
    holding both the weights and their EMA is checked on the EMA's names."""
    w = torch.zeros(1)
    ck = {
        "state_dict": {"a.weight": w},
        "model": {"m.weight": w},
        "model_ema": {"module.e.weight": w},
        "state_dict_ema": {"module.b.weight": w},
    }
    path = tmp_path / "ck.pth"
    torch.save(ck, path)
    assert _timm_file_keys(str(path)) == {"b.weight"}
    del ck["state_dict_ema"]
    torch.save(ck, path)
    assert _timm_file_keys(str(path)) == {"e.weight"}
    del ck["model_ema"]
    torch.save(ck, path)
    assert _timm_file_keys(str(path)) == {"a.weight"}
    ck["state_dict_ema"] = None  # a training checkpoint without EMA: timm reads state_dict
    torch.save(ck, path)
    assert _timm_file_keys(str(path)) == {"a.weight"}


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_vit_global_feature_is_its_pooled_tokens_by_hand(monkeypatch, pool):
    """A one-block ViT (timm's vit_tiny at 32 x 16, depth 1): the global feature is, by
    hand, patch embedding -> [cls; patches] + position -> block -> norm, then the class
    token ("token") or the mean of the patch tokens through fc_norm ("avg"); the BN neck
    is applied to it. Not the mean of all tokens, not the raw class token."""
    import timm

    monkeypatch.setattr(
        timm, "create_model", functools.partial(timm.create_model, depth=1, global_pool=pool)
    )
    torch.manual_seed(0)
    m = TimmBackbone("vit_tiny_patch16_224", img_size=[32, 16]).eval()
    v = m.model
    assert m.pooling == "head" and m.out_dim == 192
    x = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        out = m(x)
        tok = v.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (2, 2, 192)
        tok = torch.cat([v.cls_token.expand(2, -1, -1), tok], 1) + v.pos_embed
        tok = v.norm(v.blocks[0](tok))
        want = tok[:, 0] if pool == "token" else v.fc_norm(tok[:, 1:].mean(1))
        n = m.neck
        bn = (want - n.running_mean) / torch.sqrt(n.running_var + n.eps) * n.weight + n.bias
    torch.testing.assert_close(out.global_feat, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.bn_feat, bn, rtol=1e-5, atol=1e-5)
    assert out.feature_map.shape == (2, 3, 192)


def test_timm_img_size_of_three_entries_is_refused():
    """img_size is [height, width]: a third entry is refused before timm builds."""
    with pytest.raises(ConfigError, match=r"img_size must be \[height, width\], got \[64, 32, 3\]"):
        TimmBackbone("resnet18", img_size=[64, 32, 3])


@pytest.mark.parametrize("bad", [0, 1.5, True])
def test_timm_output_stride_is_checked_before_the_build(bad):
    """The dry run's check refuses an output_stride that is not an integer >= 1."""
    with pytest.raises(ConfigError, match="output_stride must be an integer >= 1"):
        check_timm_args(output_stride=bad)


def test_a_download_failing_with_an_http_clients_own_error_gets_the_download_advice():
    """huggingface_hub 1.x reads with httpx, whose errors are not OSErrors: an offline
    download of timm's weights (pretrained: true) is still advised on the download."""
    ConnectError = type("ConnectError", (Exception,), {"__module__": "httpx._exceptions"})
    err = _timm_build_error("resnet18", ConnectError("offline"), {}, None, True)
    assert isinstance(err, ConfigError)
    assert "the pretrained weights could not be read" in str(err)
    assert "ConnectError: offline" in str(err)
    other = type("Oops", (Exception,), {"__module__": "somewhere"})
    assert _timm_build_error("resnet18", other("x"), {}, None, True) is None


def test_only_a_type_error_naming_the_setting_is_blamed_on_it(monkeypatch):
    """timm's TypeError for a keyword the model does not take (ResNet and img_size) is a
    ConfigError naming backbone.img_size; a TypeError about something else is timm's own
    error, not blamed on the img_size that was set."""
    import timm

    with pytest.raises(ConfigError, match="takes no img_size; remove backbone.img_size"):
        TimmBackbone("resnet18", img_size=[64, 32])
    real = timm.create_model

    def create(*args, **kwargs):
        if "img_size" in kwargs:
            raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)
    with pytest.raises(TypeError, match="unsupported operand"):
        TimmBackbone("vit_tiny_patch16_224", img_size=[64, 32])


def test_prior_optimiser_is_adamw_with_weight_decay_and_a_frozen_neck_bias(tmp_path, monkeypatch):
    """The prior's optimiser (any change must bump PRIOR_VERSION, the cache key): AdamW at
    lr 1e-3, weight decay 5e-4, over the ResNet body, the BN neck's weight (its bias frozen,
    the re-ID neck of spec Sec. 3.2) and the classifier; stopped at the optimiser."""
    from uvireid.models import prior as prior_mod
    from uvireid.models.prior import synthetic_visible_prior

    seen = {}

    class Stop(Exception):
        pass

    def adamw(params, **kw):
        seen["numel"] = sum(p.numel() for p in params)
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    tiny = {"ids": 6, "iters": 3, "batch_ids": 2, "images": 2, "height": 32, "width": 16}
    with pytest.raises(Stop):
        synthetic_visible_prior("resnet18", cache_dir=tmp_path, **tiny)
    from torchvision.models import resnet18

    body = sum(p.numel() for n, p in resnet18().named_parameters() if not n.startswith("fc."))
    assert seen["numel"] == body + 512 + 512 * 6  # neck weight, classifier (6 ids, no bias)
    assert seen["lr"] == prior_mod.LR == 1e-3 and seen["weight_decay"] == 5e-4
