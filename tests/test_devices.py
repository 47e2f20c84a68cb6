"""Every part runs on the input's device and gives the CPU's answer there.

On a machine without CUDA only the CPU cases run (numpy input against torch input); on a
GPU machine the same tests check the CUDA paths against the CPU result.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uvireid  # noqa: F401
from uvireid.clustering.knn import knn
from uvireid.registry import REGISTRIES


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _features(seed: int, n: int, d: int = 32, ids: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, d))
    x = centres[rng.integers(0, ids, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("name", REGISTRIES["rerankers"].names())
def test_reranker_on_device_equals_numpy_result(name, device):
    q, g = _features(0, 30), _features(1, 50)
    part = REGISTRIES["rerankers"].build({"type": name})
    ref = np.asarray(part.rerank(q, g))
    out = part.rerank(torch.from_numpy(q).to(device), torch.from_numpy(g).to(device))
    assert isinstance(out, torch.Tensor) and out.device.type == device
    np.testing.assert_allclose(_to_numpy(out), ref, atol=1e-4)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_knn_on_device_finds_the_numpy_neighbours(device, metric):
    x = _features(2, 200)
    vals_ref, idx_ref = knn(x, k=10, metric=metric, backend="torch")
    vals, idx = knn(torch.from_numpy(x).to(device), k=10, metric=metric, backend="torch")
    assert idx.device.type == device
    np.testing.assert_array_equal(_to_numpy(idx), idx_ref)
    np.testing.assert_allclose(_to_numpy(vals), vals_ref, atol=1e-5)


def test_approximate_ivf_knn_on_device_finds_the_exact_neighbours_when_all_cells_probed(device):
    # 400 points -> 12 cells of ~32, all probed: the approximate backend is exhaustive here
    x = _features(6, 400)
    vals_ref, idx_ref = knn(x, k=10, backend="torch")
    vals, idx = knn(torch.from_numpy(x).to(device), k=10, backend="ivf")
    assert idx.device.type == device
    np.testing.assert_array_equal(_to_numpy(idx), idx_ref)
    np.testing.assert_allclose(_to_numpy(vals), vals_ref, atol=1e-5)


@pytest.mark.parametrize("name", REGISTRIES["clusterers"].names())
def test_clusterer_on_device_gives_the_numpy_partition(name, device):
    x = _features(3, 120)
    part = REGISTRIES["clusterers"].build({"type": name})
    ref = np.asarray(part.fit_predict(x))
    out = np.asarray(part.fit_predict(torch.from_numpy(x).to(device)))
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("name", REGISTRIES["associators"].names())
def test_associator_on_device_gives_the_numpy_labels(name, device):
    fv, fr = _features(4, 60), _features(5, 50)
    lv = np.repeat(np.arange(6), 10)
    lr = np.repeat(np.arange(5), 10)
    part = REGISTRIES["associators"].build({"type": name})
    ref = part.associate(fv, lv, fr, lr)
    out = part.associate(torch.from_numpy(fv).to(device), lv, torch.from_numpy(fr).to(device), lr)
    np.testing.assert_array_equal(_to_numpy(out.labels_in_v), _to_numpy(ref.labels_in_v))
    np.testing.assert_array_equal(_to_numpy(out.labels_in_r), _to_numpy(ref.labels_in_r))


@pytest.mark.parametrize("name", REGISTRIES["backbones"].names())
def test_backbone_extract_on_device_matches_cpu(name, device):
    if name != "two_stream_resnet":
        pytest.skip("timm backbones need a model name; covered by the backbone tests")
    torch.manual_seed(0)
    model = REGISTRIES["backbones"].build({"type": name, "arch": "resnet18"}).eval()
    x = torch.randn(2, 3, 64, 32)
    mod = torch.tensor([0, 1])
    with torch.no_grad():
        ref = model.extract(x, mod)
        out = model.to(device).extract(x.to(device), mod.to(device))
    assert out.device.type == device
    torch.testing.assert_close(out.cpu(), ref, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("model", ["resnet18", "convnext_atto"])
def test_timm_backbone_on_device_matches_cpu_and_checks_its_size_there(model, device):
    """Both poolings (GeM for resnet18's map, timm's head for ConvNeXt's signed one) give
    the CPU's features on the device, and the blank image of the size check runs where
    the model is (the evaluation-only path checks a model already on the device)."""
    from uvireid.models.backbone import check_input_size

    torch.manual_seed(0)
    bb = REGISTRIES["backbones"].build({"type": "timm", "name": model}).eval()
    assert bb.pooling == ("gem" if model == "resnet18" else "head")
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        ref = bb.extract(x, 0)
        bb = bb.to(device)
        check_input_size(bb, 64, 32)
        out = bb.extract(x.to(device), 0)
    assert out.device.type == device and not bb.training
    torch.testing.assert_close(out.cpu(), ref, atol=2e-4, rtol=1e-3)


def test_memory_updates_on_device_give_the_cpu_rounds(device):
    """``momentum_update_many`` with ``method="auto"`` (on CUDA the Gram path from
    ``GRAM_MIN_ROUNDS`` rows a label on, one read-back) gives the CPU's rounds, for
    (K, d) memories and a (P, K, d) part memory through its view, in a given order."""
    from uvireid.losses.memory import GRAM_MIN_ROUNDS, momentum_update_many

    g = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(3)
    rows = 40
    labels = [rng.integers(-1, 5, rows), rng.integers(0, 3, rows)]
    labels[0][: GRAM_MIN_ROUNDS + 6] = 2  # a sequence long enough for the Gram path
    feats = [torch.randn(rows, 16, generator=g), torch.randn(rows, 3, 16, generator=g)]
    mems = [
        torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=-1),
        torch.nn.functional.normalize(torch.randn(3, 4, 16, generator=g), dim=-1),
    ]
    order = rng.permutation(rows)

    def update(on):
        got = [m.clone().to(on) for m in mems]
        views = [got[0], got[1].transpose(0, 1)]
        items = [
            (views[0], feats[0].to(on), labels[0], order),
            (views[1], feats[1].to(on), labels[1], None),
        ]
        momentum_update_many(items[:1], 0.1)
        momentum_update_many(items[1:], 0.1)
        return [m.cpu() for m in got]

    for want, got in zip(update("cpu"), update(device)):
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in REGISTRIES["losses"].names() if "triplet" in n])
def test_pre_bn_feature_losses_on_device_equal_the_cpu(name, device):
    """triplet / cross_triplet (session 21) on the device: the CPU's value and gradients,
    outliers (-1) included."""
    from uvireid.losses import StepOutputs, StepTargets

    g = torch.Generator().manual_seed(0)
    s = 12
    pools = [torch.randn(s, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    labels = [torch.randint(-1, 4, (s,), generator=g) for _ in range(4)]

    def run(dev):
        leaves = [p.to(dev).requires_grad_() for p in pools]
        outputs = StepOutputs(*[torch.zeros(s, 8, device=dev)] * 3, {}, *leaves)
        targets = StepTargets(
            *(y.to(dev) for y in labels), torch.arange(s, device=dev), torch.arange(s, device=dev)
        )
        value = REGISTRIES["losses"].build({"type": name})(outputs, targets)
        value.backward()
        assert value.device.type == torch.device(dev).type
        return float(value.detach().cpu()), [p.grad.cpu() for p in leaves]

    ref, ref_grads = run("cpu")
    got, grads = run(device)
    assert got == pytest.approx(ref, rel=1e-9) and ref > 0
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
