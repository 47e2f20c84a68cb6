"""Non-local blocks (AGW "0,2,3,0") against the explicit N x N form of Wang et al."""

from __future__ import annotations

import re

import pytest
import torch

from uvireid.errors import ConfigError
from uvireid.models.backbone import TwoStreamResNet
from uvireid.models.non_local import NonLocal, StageWithNonLocal


def _explicit(block: NonLocal, x: torch.Tensor) -> torch.Tensor:
    """z = x + W(y), y_i = 1/N sum_j (theta_i . phi_j) g_j with the (N, N) matrix built
    position by position."""
    b, c, h, w = x.shape
    n = h * w
    theta = block.theta(x).flatten(2)
    phi = block.phi(x).flatten(2)
    g = block.g(x).flatten(2)
    y = torch.zeros_like(g)
    for k in range(b):
        f = torch.zeros(n, n, dtype=x.dtype)
        for i in range(n):
            for j in range(n):
                f[i, j] = theta[k, :, i] @ phi[k, :, j]
        y[k] = (f / n @ g[k].T).T
    return x + block.W(y.view(b, -1, h, w))


@pytest.mark.parametrize("inter", [1, 3])
def test_non_local_equals_the_explicit_pairwise_sum(inter):
    torch.manual_seed(0)
    block = NonLocal(6, inter).double().eval()
    with torch.no_grad():  # a trained-looking BN, so that W y is not zero
        block.W[1].weight.normal_()
        block.W[1].bias.normal_()
        block.W[1].running_mean.normal_()
        block.W[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    want = _explicit(block, x)
    got = block(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(got, x)


def test_a_new_non_local_block_is_the_identity_and_learns():
    torch.manual_seed(1)
    block = NonLocal(8)
    x = torch.randn(3, 8, 4, 2)
    out = block(x)
    assert torch.equal(out, x)  # W's BN starts at zero weight and bias (AGW)
    out.square().sum().backward()
    assert block.W[1].weight.grad.abs().sum() > 0


def test_two_stream_resnet_puts_the_blocks_after_the_last_blocks_of_each_stage():
    torch.manual_seed(2)
    m = TwoStreamResNet("resnet18", non_local=[0, 1, 2, 0])
    assert m.non_local == [0, 1, 2, 0]
    calls = []
    for name, mod in m.named_modules():
        if re.fullmatch(r"shared\.\d\.(stage|non_local)\.\d", name):
            mod.register_forward_hook(lambda mod, i, o, name=name: calls.append(name))
    with torch.no_grad():
        m.eval()(torch.randn(2, 3, 64, 32), 0)
    # layer2 = shared.1 (2 blocks, one non-local after the last), layer3 = shared.2 (2, 2)
    assert calls == [
        "shared.1.stage.0",
        "shared.1.stage.1",
        "shared.1.non_local.0",
        "shared.2.stage.0",
        "shared.2.non_local.0",
        "shared.2.stage.1",
        "shared.2.non_local.1",
    ]
    n_extra = sum(p.numel() for n, p in m.named_parameters() if "non_local" in n)
    # per block: theta, phi, g (C + 1 each), W conv (C + C), BN (2 C); C = 128, 256, 256
    assert n_extra == sum(3 * (c + 1) + 2 * c + 2 * c for c in (128, 256, 256))
    plain = TwoStreamResNet("resnet18")
    assert plain.non_local == [0, 0, 0, 0]
    assert not any("non_local" in n for n, _ in plain.named_parameters())


@pytest.mark.parametrize(
    "bad, words",
    [
        ([0, 3, 0, 0], "layer2 has 2 blocks"),
        ([0, 2, 3], "four counts"),
        ("0,2,3,0", "four counts"),
        ([0, -1, 0, 0], "0..2"),
        ([0, 1.5, 0, 0], "integer"),
    ],
)
def test_non_local_counts_are_checked_against_the_stages(bad, words):
    with pytest.raises(ConfigError, match=words):
        TwoStreamResNet("resnet18", non_local=bad)


def test_stage_with_non_local_keeps_the_stage_weights_under_stage():
    torch.manual_seed(3)
    m = TwoStreamResNet("resnet18", non_local=[0, 0, 1, 0])
    keys = m.state_dict().keys()
    assert "shared.2.stage.0.conv1.weight" in keys
    assert "shared.2.non_local.0.W.1.weight" in keys
    assert isinstance(m.shared[2], StageWithNonLocal)
