"""Every registered part, built with its defaults and run on a tiny seeded input.

Parametrized over the registries themselves (as timm's model tests are), so a new part,
and a plugin's part, is tested the day it is registered.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import uvireid  # noqa: F401  (registers built-in parts and plugins)
from uvireid.config import load_recipe
from uvireid.registry import REGISTRIES
from uvireid.types import CrossLabels


def _parts(plural: str) -> list[str]:
    return REGISTRIES[plural].names()


def _clustered(
    seed: int, n_per: int = 10, ids: int = 4, d: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, d))
    labels = np.repeat(np.arange(ids), n_per)
    x = centres[labels] + 0.1 * rng.normal(size=(len(labels), d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


@pytest.mark.parametrize("name", _parts("rerankers"))
def test_reranker_runs_with_defaults_on_tiny_input(name):
    part = REGISTRIES["rerankers"].build({"type": name})
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 4)).astype(np.float32)
    g = rng.normal(size=(7, 4)).astype(np.float32)
    dist = np.asarray(part.rerank(q, g))
    assert dist.shape == (5, 7)
    assert np.isfinite(dist).all()
    # a gallery copy of a query must rank first for that query
    g2 = np.concatenate([g, q[:1]], axis=0)
    dist2 = np.asarray(part.rerank(q, g2))
    assert dist2[0].argmin() == 7
    if hasattr(part, "propagate"):
        q2, g3 = part.propagate(torch.from_numpy(q), torch.from_numpy(g))
        assert tuple(q2.shape) == (5, 4) and tuple(g3.shape) == (7, 4)


@pytest.mark.parametrize("name", _parts("clusterers"))
def test_clusterer_runs_with_defaults_on_tiny_input(name):
    part = REGISTRIES["clusterers"].build({"type": name})
    x, gt = _clustered(1)
    labels = np.asarray(part.fit_predict(x))
    assert labels.shape == gt.shape
    assert labels.dtype == np.int64
    assert labels.min() >= -1
    # well separated clusters: no cluster mixes two ground-truth identities
    for c in set(labels.tolist()) - {-1}:
        assert len(set(gt[labels == c].tolist())) == 1


@pytest.mark.parametrize("name", _parts("associators"))
def test_associator_runs_with_defaults_on_tiny_input(name):
    part = REGISTRIES["associators"].build({"type": name})
    fv, lv = _clustered(2, ids=3)
    fr, lr = _clustered(3, ids=4)
    out = part.associate(fv, lv, fr, lr)
    assert isinstance(out, CrossLabels)
    n = len(lv) + len(lr)
    assert out.labels_in_v.shape == (n,) and out.labels_in_r.shape == (n,)
    assert out.labels_in_v.max() < 3 and out.labels_in_r.max() < 4


@pytest.mark.parametrize("name", _parts("losses"))
def test_loss_builds_with_defaults_as_a_module(name):
    part = REGISTRIES["losses"].build({"type": name})
    assert isinstance(part, torch.nn.Module)
    assert callable(getattr(part, "forward", None))


@pytest.mark.parametrize("name", _parts("samplers"))
def test_sampler_draws_batches_of_its_rows_on_tiny_labels(name):
    """On four clusters per modality, cross-linked cluster to cluster: a batch has the
    sampler's rows(), valid indices, the same batch from the same seed, and a pairing
    sampler's rows share their label in one of the two label spaces."""
    from uvireid.losses.contract import EpochLabels

    part = REGISTRIES["samplers"].build({"type": name})
    vis, ir = np.arange(20) % 4, np.arange(16) % 4
    lab = EpochLabels(
        vis_in_v=vis,
        vis_in_r=vis,
        ir_in_r=ir,
        ir_in_v=ir,
        init_v=vis,
        init_r=ir,
        num_v=4,
        num_r=4,
        matches=np.array([[c, c] for c in range(4)]),
    )
    cams = (np.arange(20) % 2, 2 + np.arange(16) % 2)
    sampler = part.for_epoch(lab, cams)
    batch = sampler.sample(np.random.default_rng(0))
    idx_v, idx_r = np.asarray(batch.idx_v), np.asarray(batch.idx_r)
    assert (len(idx_v), len(idx_r)) == tuple(part.rows())
    assert idx_v.min() >= 0 and idx_v.max() < 20 and idx_r.min() >= 0 and idx_r.max() < 16
    again = part.for_epoch(lab, cams).sample(np.random.default_rng(0))
    np.testing.assert_array_equal(again.idx_v, idx_v)
    np.testing.assert_array_equal(again.idx_r, idx_r)
    if part.pairs:
        assert len(idx_v) == len(idx_r)
        same_v = lab.vis_in_v[idx_v] == lab.ir_in_v[idx_r]
        same_r = lab.vis_in_r[idx_v] == lab.ir_in_r[idx_r]
        assert (same_v | same_r).all()


@pytest.mark.parametrize("name", _parts("backbones"))
def test_backbone_runs_with_defaults_on_tiny_input(name):
    reg = REGISTRIES["backbones"]
    assert reg.defaults(name).get("pretrained", False) is False, "tests never download"
    torch.manual_seed(0)
    model = reg.build({"type": name}).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        feat = model.extract(x, torch.tensor([0, 1]))
    assert feat.ndim == 2 and feat.shape[0] == 2
    assert torch.allclose(feat.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("name", _parts("datasets"))
def test_dataset_builds_on_a_fixture_tree(name, tmp_path):
    from uvireid.data.fixtures import example_kwargs

    reg = REGISTRIES["datasets"]
    kwargs = example_kwargs(name, tmp_path)
    if kwargs is None:
        if reg.required(name):
            pytest.skip(f"third-party dataset {name!r} has no fixture builder")
        kwargs = {}
    ds = reg.build({"type": name, **kwargs})
    assert len(ds.train) > 0
    assert {r.modality for r in ds.train} == {0, 1}
    assert all(r.pid >= 0 for r in ds.test)
    assert set(ds.protocols) >= ({"sysu-all"} if name in ("sysu", "synthetic") else set())
    fp = ds.fingerprint()
    assert fp and fp == reg.build({"type": name, **kwargs}).fingerprint()


@pytest.mark.parametrize("name", _parts("recipes"))
def test_recipe_validates(name):
    cfg = load_recipe(name)
    assert cfg["name"]
    doc = inspect.getdoc(REGISTRIES["recipes"].get(name))
    assert doc and not doc.startswith("recipe "), f"recipe {name} needs a description"
