"""The synthetic-visible prior (uvireid/models/prior.py): its cache key, its data, its
training step (mutation audit MA)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from uvireid.errors import ConfigError
from uvireid.models import prior as prior_mod
from uvireid.models.prior import synthetic_visible_prior

TINY = {"ids": 6, "iters": 3, "batch_ids": 2, "images": 2, "height": 32, "width": 16}


class _Stop(Exception):
    """Raised by a spy to end a prior build once what the test needs was seen."""


def test_prior_cache_is_keyed_by_every_training_parameter(tmp_path):
    """The docstring: cached '... keyed by every parameter'. A build with another batch is
    a build (other weights), not the first build's file; another learning rate and batch
    size get their own names too, and the defaults keep the name caches already have."""
    first = synthetic_visible_prior("resnet18", cache_dir=tmp_path, **TINY)
    other = synthetic_visible_prior("resnet18", cache_dir=tmp_path, **{**TINY, "images": 3})
    assert other != first
    a, b = (torch.load(p, weights_only=True) for p in (first, other))
    assert not all(torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    shape = {k: TINY[k] for k in ("ids", "iters", "height", "width")}
    names = {
        prior_mod.prior_path("resnet18", seed=7, cache_dir=tmp_path, **shape, **kw)
        for kw in ({}, {"lr": 1e-2}, {"batch_ids": 3}, {"images": 3}, {"batch_ids": 16})
    }
    assert len(names) == 4  # batch_ids=16 is the default's name
    default = prior_mod.prior_path("resnet18", ids=300, seed=7, iters=400, height=64, width=32)
    assert default.name.endswith("-it400-64x32.pth")  # the caches users have keep their name


def test_prior_trains_on_the_visible_images_of_both_splits(tmp_path, monkeypatch):
    """The docstring: all identities of the population (train and test split alike), the
    visible images only, never an infrared one. The images it decodes are compared with
    the dataset's own list (the build is stopped at the decode)."""
    from uvireid.data import transforms
    from uvireid.data.synthetic import SyntheticSYSU, ensure_synthetic
    from uvireid.types import VISIBLE

    seen = []

    def spy(records, height, width, **kw):
        seen.extend(records)
        raise _Stop

    monkeypatch.setattr(transforms, "load_images", spy)
    with pytest.raises(_Stop):
        synthetic_visible_prior("resnet18", cache_dir=tmp_path, **TINY)
    ds = SyntheticSYSU(str(ensure_synthetic(tmp_path, ids=TINY["ids"], seed=7)))
    expect = {r.path for r in ds.train + ds.test if r.modality == VISIBLE}
    assert {r.path for r in seen} == expect
    assert all(r.modality == VISIBLE for r in seen)
    assert len({r.pid for r in seen}) == TINY["ids"]  # every identity, both splits


def test_prior_takes_batches_of_all_its_identities(tmp_path, monkeypatch):
    """n_cls == batch_ids is enough ('raise ids' only when there are fewer identities
    than a batch needs); the training is replaced by a stop once it is reached."""

    def stop(*args):
        raise _Stop

    monkeypatch.setattr(prior_mod, "_train_prior", stop)
    with pytest.raises(_Stop):
        synthetic_visible_prior("resnet18", cache_dir=tmp_path, **{**TINY, "batch_ids": 6})
    with pytest.raises(ConfigError, match="6 identities for batches of 7; raise ids"):
        synthetic_visible_prior("resnet18", cache_dir=tmp_path, **{**TINY, "batch_ids": 7})


def test_prior_leaves_the_callers_random_state_alone(tmp_path):
    """The build seeds torch's global generator for itself; the caller's next random
    number is the one it would draw without the build."""
    torch.manual_seed(123)
    expect = torch.rand(4)
    torch.manual_seed(123)
    synthetic_visible_prior("resnet18", cache_dir=tmp_path, **TINY)
    assert torch.equal(torch.rand(4), expect)


def test_prior_training_step_is_the_documented_one(tmp_path, monkeypatch):
    """What the docstring says each step does, seen through spies on the functions the
    loop calls: images scaled to [0, 1] then normalised, channel exchange on half of the
    batch, cross-entropy with label smoothing 0.1, a batch-hard triplet term every step,
    and the warm-up/cosine schedule stepped once per step."""
    from uvireid.data import transforms

    calls = {"norm": [], "exchange": [], "smooth": [], "triplet": 0, "factor": []}
    real_norm, real_ex = transforms.normalize, transforms.channel_exchange
    real_ce, real_tri, real_wc = (
        F.cross_entropy,
        prior_mod.batch_hard_triplet,
        prior_mod.warmup_cosine,
    )

    def norm(x, *a, **k):
        calls["norm"].append((float(x.min()), float(x.max()), x.shape[0]))
        return real_norm(x, *a, **k)

    def exchange(x, *a, **k):
        calls["exchange"].append(x.shape[0])
        return real_ex(x, *a, **k)

    def ce(*a, **k):
        calls["smooth"].append(k.get("label_smoothing", 0.0))
        return real_ce(*a, **k)

    def triplet(*a, **k):
        calls["triplet"] += 1
        return real_tri(*a, **k)

    def wc(iters):
        f = real_wc(iters)

        def factor(it):
            calls["factor"].append(it)
            return f(it)

        return factor

    monkeypatch.setattr(transforms, "normalize", norm)
    monkeypatch.setattr(transforms, "channel_exchange", exchange)
    monkeypatch.setattr(F, "cross_entropy", ce)
    monkeypatch.setattr(prior_mod, "batch_hard_triplet", triplet)
    monkeypatch.setattr(prior_mod, "warmup_cosine", wc)
    synthetic_visible_prior("resnet18", cache_dir=tmp_path, **TINY)
    batch = TINY["batch_ids"] * TINY["images"]
    iters = TINY["iters"]
    assert len(calls["norm"]) == iters
    assert all(lo >= 0.0 and hi <= 1.0 and n == batch for lo, hi, n in calls["norm"])
    assert calls["exchange"] == [batch - batch // 2] * iters
    assert calls["smooth"] == [0.1] * iters
    assert calls["triplet"] == iters
    assert sorted(set(calls["factor"])) == list(range(iters + 1))  # init + one per step
