"""uvireid/models/prior.py (the synthetic-visible prior) by hand: the schedule at
small step counts, the order of the optimiser and scheduler steps, the batch-hard triplet
against a naive loop (training-size batches, no negatives, gradients), what a failed build
leaves (RNG, threads, no file), the parameter bounds and every part of the cache key."""

from __future__ import annotations

import pytest
import torch

from uvireid.errors import ConfigError
from uvireid.models import prior as prior_mod
from uvireid.models.prior import (
    batch_hard_triplet,
    prior_path,
    synthetic_visible_prior,
    warmup_cosine,
)

TINY = {"ids": 6, "iters": 3, "batch_ids": 2, "images": 2, "height": 32, "width": 16}


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache folder: the synthetic population (ids 6, seed 7) is generated once; each
    test asks for a prior of its own size, so none finds another's prior cached."""
    return tmp_path_factory.mktemp("prior_cache")


# ---------------------------------------------------------------- warm-up / cosine


@pytest.mark.parametrize(
    "iters, expect",
    [
        # warm = max(1, iters // 10) steps of linear warm-up (it + 1) / warm, then
        # 0.5 (1 + cos(pi (it - warm) / (iters - warm))), values written out by hand
        (1, {0: 1.0, 1: 1.0}),  # warm 1, then a cosine over max(1, 0) = 1 step
        (3, {0: 1.0, 1: 1.0, 2: 0.5, 3: 0.0}),  # the tests' TINY prior
        (19, {0: 1.0, 1: 1.0, 19: 0.0}),  # 19 // 10 = 1 (floor, not round)
        (25, {0: 0.5, 1: 1.0, 2: 1.0, 25: 0.0}),
    ],
)
def test_warmup_cosine_at_small_step_counts(iters, expect):
    f = warmup_cosine(iters)
    for it, v in expect.items():
        assert f(it) == pytest.approx(v, abs=1e-12), (iters, it)
    # the middle of the decay is 0.5 by the formula
    warm = max(1, iters // 10)
    if iters - warm >= 2 and (iters - warm) % 2 == 0:
        assert f(warm + (iters - warm) // 2) == pytest.approx(0.5, abs=1e-12)


def test_warmup_cosine_of_one_step_survives_the_schedulers_last_call():
    """LambdaLR asks for factor(iters) after the last step: iters=1 must not divide by 0."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(1))
    opt.step()
    sched.step()  # factor(1)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)


def test_each_prior_step_uses_this_steps_learning_rate_and_its_own_gradients(cache, monkeypatch):
    """AdamW steps with LR * factor(it) for it = 0, 1, 2 (the scheduler steps after the
    optimiser), the gradients are cleared before each backward pass and exist at each step."""
    events = []
    real = torch.optim.AdamW

    class Spy(real):
        def zero_grad(self, set_to_none=True):
            events.append(("zero",))
            return super().zero_grad(set_to_none=set_to_none)

        def step(self, closure=None):
            grads = [p.grad for g in self.param_groups for p in g["params"]]
            have = all(gr is not None for gr in grads) and any(
                bool(gr.abs().sum() > 0) for gr in grads
            )
            events.append(("step", self.param_groups[0]["lr"], have))
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    synthetic_visible_prior("resnet18", cache_dir=cache, **{**TINY, "height": 36})
    lr = prior_mod.LR
    expect_lr = [lr * 1.0, lr * 1.0, lr * 0.5]  # warm-up 1 step, cosine over 2
    assert [e[0] for e in events] == ["zero", "step"] * 3
    steps = [e for e in events if e[0] == "step"]
    assert [s[1] for s in steps] == pytest.approx(expect_lr, rel=1e-12)
    assert all(s[2] for s in steps)  # every parameter has a gradient at every step


# ---------------------------------------------------------------- batch-hard triplet


def _loop_triplet(feat, labels, margin):
    """Hermans et al. by a loop over anchors (float64); an anchor without a negative
    contributes 0 (no triplet)."""
    f = feat.double()
    n = f.shape[0]
    terms = []
    for i in range(n):
        d = [(f[i] - f[j]).pow(2).sum().sqrt() if j != i else f.new_zeros(()) for j in range(n)]
        pos = [d[j] for j in range(n) if labels[j] == labels[i]]
        neg = [d[j] for j in range(n) if labels[j] != labels[i]]
        if not neg:
            terms.append(f.new_zeros(()))
            continue
        terms.append(torch.clamp(torch.stack(pos).max() - torch.stack(neg).min() + margin, min=0))
    return torch.stack(terms).mean()


def test_default_margin_is_the_priors_0_3():
    """The prior trains with batch_hard_triplet(feat, y) (no margin given): its default
    margin is part of the cached weights (PRIOR_VERSION 2), 0.3 as in Hermans et al."""
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(10, 4, generator=g, dtype=torch.float64) * 0.3
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    expect = float(_loop_triplet(feat, labels, 0.3))
    assert expect > 0
    assert float(batch_hard_triplet(feat, labels)) == pytest.approx(expect, abs=1e-9)


def test_triplet_on_a_training_size_float32_batch_matches_the_loop():
    """16 identities x 4 images in float32 (cdist's matrix-product path beyond 25 rows),
    GeM-like positive features: the loss within float32 rounding of the float64 loop."""
    g = torch.Generator().manual_seed(0)
    feat = torch.rand(64, 32, generator=g) * 2
    labels = torch.arange(16).repeat_interleave(4)[torch.randperm(64, generator=g)]
    expect = float(_loop_triplet(feat, labels, 0.3))
    assert expect > 0
    assert float(batch_hard_triplet(feat, labels)) == pytest.approx(expect, abs=1e-4)


def test_triplet_of_a_batch_without_negatives_is_zero():
    feat = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert float(batch_hard_triplet(feat, torch.tensor([2, 2, 2]), 0.3)) == 0.0


def test_triplet_gradient_matches_the_loops():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(9, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    a = base.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    batch_hard_triplet(a, labels, 0.5).backward()
    _loop_triplet(b, labels, 0.5).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-9)
    assert a.grad.abs().sum() > 0


# ---------------------------------------------------------------- failures: state and disk


def test_a_failed_build_restores_rng_and_threads_and_writes_nothing(cache, monkeypatch):
    """A loss that turns NaN stops the build with a ConfigError naming the step; the
    caller's torch RNG and thread count are as before, and no prior file is left (the next
    call builds again rather than loading half a prior)."""
    kw = {**TINY, "height": 40}

    def nan_triplet(feat, labels, margin=0.3):
        return feat.sum() * float("nan")

    monkeypatch.setattr(prior_mod, "batch_hard_triplet", nan_triplet)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(99)
        expect = torch.rand(3)
        torch.manual_seed(99)
        with pytest.raises(ConfigError, match="loss became nan at step 0"):
            synthetic_visible_prior("resnet18", cache_dir=cache, **kw)
        assert torch.get_num_threads() == 1
        assert torch.equal(torch.rand(3), expect)
    finally:
        torch.set_num_threads(before)
    path = prior_path("resnet18", seed=7, cache_dir=cache, **kw)
    assert not path.exists()


def test_a_save_that_fails_leaves_no_prior_file(cache, monkeypatch):
    """The weights are written atomically: a save that fails half-way (disk, interrupt)
    leaves neither the prior's name nor a temporary file, so no later call returns a
    truncated prior as cached."""
    kw = {**TINY, "height": 44, "iters": 1}
    real_save = torch.save

    def half_save(obj, f, *a, **k):
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04 half a file")
        else:
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 half a file")
        raise RuntimeError("write interrupted")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(RuntimeError, match="write interrupted"):
        synthetic_visible_prior("resnet18", cache_dir=cache, **kw)
    monkeypatch.setattr(torch, "save", real_save)
    path = prior_path("resnet18", seed=7, cache_dir=cache, **kw)
    assert not path.exists()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_identities_with_fewer_images_than_a_batch_asks_are_drawn_with_replacement(cache):
    """images=28: every synthetic identity (ids 6, seed 7) has 12..27 visible images; the
    build draws with replacement instead of failing in numpy."""
    kw = {**TINY, "height": 48, "iters": 1, "images": 28}
    path = synthetic_visible_prior("resnet18", cache_dir=cache, **kw)
    assert path.is_file()


@pytest.mark.parametrize(
    "bad, what",
    [({"images": 1}, "images=1"), ({"batch_ids": 1}, "batch_ids=1"), ({"ids": 2}, "ids=2")],
)
def test_prior_bounds_are_refused_before_any_work(tmp_path, monkeypatch, bad, what):
    """iters >= 1, ids >= 3, batch_ids >= 2, images >= 2 (a batch-hard triplet needs two
    images of an identity and two identities): refused before data or training."""

    def stop(*a, **k):
        raise _Stop

    monkeypatch.setattr(prior_mod, "_train_prior", stop)
    import uvireid.data.synthetic as syn

    monkeypatch.setattr(syn, "ensure_synthetic", stop)
    with pytest.raises(
        ConfigError, match=f"{what}.*need iters >= 1, ids >= 3, batch_ids >= 2 and images >= 2"
    ):
        synthetic_visible_prior("resnet18", cache_dir=tmp_path, **{**TINY, **bad})


# ---------------------------------------------------------------- the cache key


def test_every_parameter_and_both_versions_are_in_the_cache_name(tmp_path):
    from uvireid.data.synthetic import GENERATOR_VERSION

    base = {"ids": 300, "seed": 7, "iters": 400, "height": 64, "width": 32}
    p0 = prior_path("resnet18", cache_dir=tmp_path, **base)
    assert p0.parent == tmp_path / "priors"
    assert p0.name == (
        f"synthetic-visible-v{prior_mod.PRIOR_VERSION}-gen{GENERATOR_VERSION}-resnet18-ids300"
        f"-seed7-it400-64x32.pth"
    )
    variants = [
        ("resnet50", {}),
        ("resnet18", {"ids": 301}),
        ("resnet18", {"seed": 8}),
        ("resnet18", {"iters": 401}),
        ("resnet18", {"height": 65}),
        ("resnet18", {"width": 33}),
        ("resnet18", {"batch_ids": 8}),
        ("resnet18", {"images": 8}),
        ("resnet18", {"lr": 2e-3}),
        ("resnet18", {"height": 32, "width": 64}),  # swapped sizes are another prior
    ]
    names = {p0.name} | {
        prior_path(arch, cache_dir=tmp_path, **{**base, **kw}).name for arch, kw in variants
    }
    assert len(names) == len(variants) + 1


def test_the_cache_name_follows_the_environment_when_no_folder_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("UVIREID_CACHE", str(tmp_path / "env"))
    p = prior_path("resnet18", ids=6, seed=7, iters=3, height=32, width=16)
    assert p.parent == tmp_path / "env" / "priors"


def test_a_folder_at_the_priors_name_is_not_taken_for_a_cached_prior(cache):
    """Only a file is a cached prior: a folder of that name (left by a tool, a bad copy)
    makes the build run, and it then fails to write there rather than handing the folder
    to the weights loader as a prior."""
    kw = {**TINY, "height": 52, "iters": 1}
    path = prior_path("resnet18", seed=7, cache_dir=cache, **kw)
    path.mkdir(parents=True)
    with pytest.raises(OSError):
        synthetic_visible_prior("resnet18", cache_dir=cache, **kw)
