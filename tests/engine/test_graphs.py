"""``train.cuda_graphs`` and ``train.tf32`` (uvireid.engine.graphs).

The capture itself needs a GPU (the CUDA test below, skipped elsewhere); on the CPU a
stand-in capture function checks the bookkeeping: what is captured, when it is captured
again, and what happens when a capture fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uvireid.config import load_recipe
from uvireid.engine.graphs import GraphedLosses, tf32_products
from uvireid.errors import ConfigError
from uvireid.losses import (
    DualClusterContrastLoss,
    EpochContext,
    InstanceNeighbourLoss,
    PartContrastLoss,
    StepOutputs,
    StepTargets,
)

MAPS = ("v", "a", "r")


def _salcr_setup(device: str, s: int = 8, d: int = 16, p: int = 3, n: int = 40, k: int = 6):
    """DAGL + FGSAL + GPCR with filled memories, one paired batch of ``s`` rows and a
    loss function in the trainer's form ``(outputs, targets) -> (total, terms)``."""
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g), dim=-1).to(device)

    ctx = EpochContext(
        feats_v=unit(n, d),
        feats_r=unit(n, d),
        vis_in_v=rng.integers(0, k, n),
        vis_in_r=rng.integers(0, k, n),
        ir_in_r=rng.integers(0, k, n),
        ir_in_v=rng.integers(0, k, n),
        init_v=rng.integers(0, k, n),
        init_r=rng.integers(0, k, n),
        num_v=k,
        num_r=k,
        parts_v=unit(n, p, d),
        parts_r=unit(n, p, d),
    )
    losses = [
        ("dual_cluster_contrast", DualClusterContrastLoss()),
        ("part_contrast", PartContrastLoss(num_parts=p)),
        ("instance_neighbour", InstanceNeighbourLoss(k=5, num_parts=p)),
    ]
    for _, loss in losses:
        loss.to(device).reset(ctx)

    def terms_of(outputs, targets):
        terms = {name: loss(outputs, targets) for name, loss in losses}
        return terms["dual_cluster_contrast"] + terms["part_contrast"] + 0.5 * terms[
            "instance_neighbour"
        ], terms

    cols = [rng.integers(0, k, s) for _ in range(4)] + [rng.integers(0, n, s) for _ in range(2)]
    targets = StepTargets(*(torch.as_tensor(c, device=device) for c in cols), paired=True)
    leaves = [unit(s, d).requires_grad_() for _ in MAPS]
    leaves += [unit(s, p, d).requires_grad_() for _ in range(9)]
    return losses, terms_of, targets, leaves


def _outputs(leaves):
    parts = dict(zip([(q, m) for q in MAPS for m in MAPS], leaves[3:]))
    return StepOutputs(leaves[0] * 1.0, leaves[1] * 1.0, leaves[2] * 1.0, parts)


def _run(fn, leaves, targets):
    for t in leaves:
        t.grad = None
    total, terms = fn(_outputs(leaves), targets)
    total.backward()
    return (
        total.detach().clone(),
        {k: v.detach().clone() for k, v in terms.items()},
        [t.grad.clone() for t in leaves],
    )


def test_graphed_losses_capture_once_per_shape_and_again_after_invalidate():
    """A stand-in capture (the function itself, counted) on the CPU: the first call of a
    shape captures, later ones replay; another batch shape is another capture;
    :meth:`invalidate` (the trainer's, after the memories' reset) captures again; without
    grad the eager function runs. Values and gradients are the eager ones."""
    captured = []

    def make_graphed(fn, sample, **kwargs):
        assert kwargs == {"allow_unused_input": True}
        captured.append([tuple(t.shape) for t in sample])
        return fn

    _, terms_of, targets, leaves = _salcr_setup("cpu")
    graphed = GraphedLosses(terms_of, make_graphed, device_types=("cpu",))
    eager = _run(terms_of, leaves, targets)
    for _ in range(3):
        got = _run(graphed, leaves, targets)
        assert torch.equal(got[0], eager[0]) and got[1].keys() == eager[1].keys()
        assert all(torch.equal(a, b) for a, b in zip(got[2], eager[2]))
    assert len(captured) == 1 and graphed.captures == 1
    # the sample holds the step's 12 feature tensors and its 6 target tensors
    assert len(captured[0]) == 12 + 6 and captured[0][0] == (8, 16)
    _, _, targets4, leaves4 = _salcr_setup("cpu", s=4)
    _run(graphed, leaves4, targets4)
    assert graphed.captures == 2
    graphed.invalidate()
    _run(graphed, leaves, targets)
    assert graphed.captures == 3
    with torch.no_grad():
        graphed(_outputs(leaves), targets)
    assert graphed.captures == 3


def _triplet_setup(device: str):
    """DAGL + FGSAL + GPCR + a triplet term on pre-BN features: ``(fn, run)``, the loss
    function in the trainer's form and ``run(f) -> (triplet term, the pre-BN features'
    gradients)`` of one step through ``f`` (``fn`` or a graphed ``fn``)."""
    from uvireid.losses import TripletLoss

    _, terms_of, targets, leaves = _salcr_setup(device)
    g = torch.Generator().manual_seed(1)
    pools = [torch.randn(8, 16, generator=g).to(device).requires_grad_() for _ in MAPS]
    triplet = TripletLoss()

    def with_triplet(outputs, targets):
        total, terms = terms_of(outputs, targets)
        terms["triplet"] = triplet(outputs, targets)
        return total + terms["triplet"], terms

    def run(fn):
        for t in leaves + pools:
            t.grad = None
        outputs = _outputs(leaves)
        outputs.pool_v, outputs.pool_a, outputs.pool_r = (p * 1.0 for p in pools)
        total, terms = fn(outputs, targets)
        total.backward()
        return terms["triplet"].detach().clone(), [p.grad.clone() for p in pools]

    return with_triplet, run


def test_the_pre_bn_features_go_through_the_capture():
    """A stage with a needs_pool loss (triplet): the captured function gets the three
    pooled features after the part features, and they reach the loss (values and
    gradients equal the eager ones; a capture without them gave the triplet None)."""
    captured = []

    def make_graphed(fn, sample, **kwargs):
        captured.append(len(sample))
        return fn

    with_triplet, run = _triplet_setup("cpu")
    eager = run(with_triplet)
    got = run(GraphedLosses(with_triplet, make_graphed, device_types=("cpu",)))
    assert captured == [12 + 3 + 6]
    assert torch.equal(got[0], eager[0]) and eager[0] > 0
    assert all(torch.equal(a, b) for a, b in zip(got[1], eager[1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_capture_passes_the_pre_bn_features():
    """On a GPU, a real capture of DAGL + FGSAL + GPCR + triplet: the triplet term and the
    pre-BN features' gradients equal the eager ones (to float rounding)."""
    with_triplet, run = _triplet_setup("cuda")
    eager = run(with_triplet)
    graphed = GraphedLosses(with_triplet)
    for _ in range(2):  # the capture, then a replay
        got = run(graphed)
        torch.testing.assert_close(got[0], eager[0], rtol=1e-5, atol=1e-6)
        for a, b in zip(got[1], eager[1]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert graphed.captures == 1 and graphed.failed is None


def test_a_failed_capture_is_reported_once_and_the_losses_run_eagerly(caplog):
    calls = []

    def refuses(fn, sample, **kwargs):
        calls.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    _, terms_of, targets, leaves = _salcr_setup("cpu")
    graphed = GraphedLosses(terms_of, refuses, device_types=("cpu",))
    eager = _run(terms_of, leaves, targets)
    for _ in range(2):
        got = _run(graphed, leaves, targets)
        assert torch.equal(got[0], eager[0])
    assert len(calls) == 1 and "not permitted" in graphed.failed
    assert caplog.text.count("could not be captured") == 1


def test_the_cpu_is_never_captured():
    def never(fn, sample, **kwargs):
        raise AssertionError("captured on the CPU")

    _, terms_of, targets, leaves = _salcr_setup("cpu")
    graphed = GraphedLosses(terms_of, never)
    _run(graphed, leaves, targets)
    # a capture that raised would only be logged as failed, and the losses run eagerly
    # (audit MC: the raise alone could not fail this test)
    assert graphed.captures == 0 and graphed.failed is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_losses_equal_the_eager_ones_and_follow_the_memory_updates():
    """The real capture on CUDA: DAGL + FGSAL + GPCR replayed as graphs give the eager
    losses and gradients, also after the memories moved in place (the momentum updates
    between steps), and capture again after a reset (new memory tensors)."""
    losses, terms_of, targets, leaves = _salcr_setup("cuda")
    graphed = GraphedLosses(terms_of)
    for _ in range(3):
        eager = _run(terms_of, leaves, targets)
        got = _run(graphed, leaves, targets)
        assert graphed.failed is None, graphed.failed
        torch.testing.assert_close(got[0], eager[0], rtol=1e-5, atol=1e-6)
        for a, b in zip(got[2], eager[2]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        detached = _outputs(leaves).detach()
        for _, loss in losses:  # the memories move in place, as between two steps
            loss.update(detached, targets)
    assert graphed.captures == 1
    graphed.invalidate()
    got = _run(graphed, leaves, targets)
    torch.testing.assert_close(got[0], _run(terms_of, leaves, targets)[0], rtol=1e-5, atol=1e-6)
    assert graphed.captures == 2


def test_tf32_products_are_scoped():
    before = torch.get_float32_matmul_precision()
    with tf32_products(True):
        assert torch.get_float32_matmul_precision() == "high"  # TF32 allowed on CUDA
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(ValueError), tf32_products(True):
        raise ValueError
    assert torch.get_float32_matmul_precision() == before
    with tf32_products(False):
        assert torch.get_float32_matmul_precision() == before


def test_cuda_graphs_and_compiled_losses_do_not_combine(recipe_file):
    with pytest.raises(ConfigError, match="train.cuda_graphs.*do not combine"):
        load_recipe(recipe_file, ["train.cuda_graphs=true", "train.compile_losses=true"])
    cfg = load_recipe(recipe_file, ["train.cuda_graphs=true", "train.tf32=true"])
    assert cfg["train"]["cuda_graphs"] and cfg["train"]["tf32"]


def test_the_cuda_options_on_a_cpu_run_are_named_as_without_effect(recipe_file, caplog):
    from uvireid.engine.trainer import Trainer
    from uvireid.registry import DATASETS

    cfg = load_recipe(recipe_file, ["train.cuda_graphs=true", "train.tf32=true"])
    tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    assert "train.cuda_graphs=true and train.tf32=true has no effect on cpu" in caplog.text
    fns = [tr._loss_terms(st, tr.losses_of(st)) for st in tr.stages]
    assert len(fns) == 2 and not any(isinstance(fn, GraphedLosses) for fn in fns)
    assert not tr.augment.cuda_graphs or not tr.augment._graphs
    caplog.clear()
    cfg = load_recipe(recipe_file)
    Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    assert "no effect" not in caplog.text
