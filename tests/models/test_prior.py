"""The offline ``synthetic-visible`` prior: built, cached, deterministic, loadable."""

from __future__ import annotations

import functools

import pytest
import torch

from uvireid.errors import ConfigError
from uvireid.models import prior as prior_mod
from uvireid.models.backbone import TwoStreamResNet, build_resnet
from uvireid.models.prior import batch_hard_triplet, synthetic_visible_prior, warmup_cosine

TINY = dict(ids=6, iters=3, batch_ids=2, images=2, height=32, width=16)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("prior_cache")
    return cache, synthetic_visible_prior("resnet18", cache_dir=cache, **TINY)


def test_prior_is_a_torchvision_state_dict_trained_away_from_random_init(built):
    _, path = built
    sd = torch.load(path, weights_only=True)
    torch.manual_seed(7)  # the prior's own seed: its starting point
    start = build_resnet("resnet18", False).state_dict()
    assert set(sd) == set(start)  # every key, no classifier
    assert not torch.equal(sd["layer4.1.conv2.weight"], start["layer4.1.conv2.weight"])
    assert "-seed7-" in path.name and "gen" in path.name and path.suffix == ".pth"


def test_prior_is_cached_and_deterministic(built, tmp_path):
    cache, path = built
    mtime = path.stat().st_mtime_ns
    assert synthetic_visible_prior("resnet18", cache_dir=cache, **TINY) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not trained again
    again = synthetic_visible_prior("resnet18", cache_dir=tmp_path, **TINY)
    a, b = torch.load(path, weights_only=True), torch.load(again, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_backbone_pretrained_synthetic_visible_loads_the_prior(built, monkeypatch):
    cache, path = built
    monkeypatch.setattr(
        prior_mod,
        "synthetic_visible_prior",
        functools.partial(synthetic_visible_prior, cache_dir=cache, **TINY),
    )
    model = TwoStreamResNet("resnet18", pretrained="synthetic-visible", share_from="stem")
    sd = torch.load(path, weights_only=True)
    assert torch.equal(model.shared[0][0].weight, sd["conv1.weight"])
    assert torch.equal(model.shared[-1][-1].conv2.weight, sd["layer4.1.conv2.weight"])


def test_prior_parameters_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="need iters >= 1"):
        synthetic_visible_prior("resnet18", cache_dir=tmp_path, iters=0)
    with pytest.raises(ConfigError, match="raise ids"):
        synthetic_visible_prior("resnet18", cache_dir=tmp_path, ids=3, batch_ids=5, iters=1)


def test_the_prior_does_not_depend_on_the_callers_thread_count(built, tmp_path):
    """CPU arithmetic depends on the thread count (a 1-thread and a 2-thread build of the
    demo's prior end 20 apart): the prior is built with PRIOR_THREADS whatever the process
    has, and the process gets its own count back."""
    _, path = built
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        other = synthetic_visible_prior("resnet18", cache_dir=tmp_path, **TINY)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    a, b = torch.load(path, weights_only=True), torch.load(other, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert f"-v{prior_mod.PRIOR_VERSION}-" in path.name


def test_batch_hard_triplet_equals_the_loop_of_hermans_et_al():
    """For each anchor: the farthest positive and the nearest negative, hinge at margin."""
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(8, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0])
    terms = []
    for i in range(8):
        d = [float((feat[i] - feat[j]).norm()) for j in range(8)]
        pos = max(d[j] for j in range(8) if labels[j] == labels[i])
        neg = min(d[j] for j in range(8) if labels[j] != labels[i])
        terms.append(max(0.0, pos - neg + 0.3))
    expect = sum(terms) / 8
    assert abs(float(batch_hard_triplet(feat, labels, 0.3)) - expect) < 1e-6
    assert expect > 0  # the hinge is active for some anchors: the test can tell


def test_warmup_cosine_factors():
    f = warmup_cosine(100)  # warm-up over 10 steps
    assert [f(i) for i in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert f(10) == 1.0 and abs(f(55) - 0.5) < 1e-12 and f(100) == 0.0
