"""Samplers are a registry (SAMPLERS): a sampler registered by a plugin is named in a
stage like a built-in one, checked when the recipe is read, and draws the training
batches; the manifest's batch sizes come from it."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from uvireid.config import load_recipe
from uvireid.data.samplers import Batches, IdentityBatch, IdentitySampler
from uvireid.engine.trainer import Trainer
from uvireid.errors import ConfigError
from uvireid.registry import SAMPLERS

pytestmark = pytest.mark.filterwarnings(
    "ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning"
)


class _LowestLabels:
    """Per epoch: each modality's ``ids`` lowest labels, the first ``images`` images of
    each (by index), every batch the same."""

    def __init__(self, labels_v, labels_r, ids, images):
        self.batch = IdentityBatch(
            self._side(np.asarray(labels_v), ids, images),
            self._side(np.asarray(labels_r), ids, images),
        )

    @staticmethod
    def _side(labels, ids, images):
        chosen = sorted(set(labels[labels >= 0].tolist()))[:ids]
        return np.concatenate([np.flatnonzero(labels == y)[:images] for y in chosen])

    def sample(self, rng):
        rng.random()  # the trainer's generator is the sampler's only state
        return self.batch


class LowestLabelsBatches(Batches):
    """A plugin's sampler: each modality's lowest labels (for tests)."""

    def __init__(self, ids: int = 2, images: int = 2, spread: int = 1):
        super().__init__(ids, images)
        self.spread = spread

    def rows(self):
        return self.ids * self.images, 3 * self.ids * self.images

    def for_epoch(self, labels, cams):
        LowestLabelsBatches.last = (labels, cams)
        return _LowestLabels(labels.vis_in_v, labels.ir_in_r, self.ids, self.images)


class PairingBatches(LowestLabelsBatches):
    """A plugin's sampler that pairs (for tests)."""

    pairs = True


class PairsWithoutFallback:
    """A pairing sampler that cannot draw an epoch without cross links."""

    pairs = True

    def __init__(self, ids: int = 2):
        self.ids = ids

    def rows(self):
        return 2, 2

    def for_epoch(self, labels, cams):
        return None


class NoCams:
    """A sampler without the contract's for_epoch(labels, cams)."""

    def __init__(self, ids: int = 2):
        self.ids = ids

    def rows(self):
        return 1, 1

    def for_epoch(self, labels):
        return None


@pytest.fixture
def plugin_samplers():
    SAMPLERS.register("lowest_labels", LowestLabelsBatches)
    SAMPLERS.register("pairing_test", PairingBatches)
    SAMPLERS.register("no_cams", NoCams)
    SAMPLERS.register("no_fallback", PairsWithoutFallback)
    yield
    for name in ("lowest_labels", "pairing_test", "no_cams", "no_fallback"):
        SAMPLERS.unregister(name)


def _trainer(cfg):
    from uvireid.registry import DATASETS

    return Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)


def test_a_registered_sampler_draws_the_training_batches(recipe_file, plugin_samplers, monkeypatch):
    cfg = load_recipe(
        recipe_file,
        ["stages.0.sampler={type: lowest_labels, ids: 2, images: 2}", "stages.0.iters_per_epoch=3"],
    )
    assert cfg["stages"][0]["sampler"] == {
        "type": "lowest_labels",
        "ids": 2,
        "images": 2,
        "spread": 1,
    }
    batches = []

    def fake_step(self, stage, losses, lab, batch, paired):
        batches.append((batch.idx_v.copy(), batch.idx_r.copy(), paired))
        return ("total",), torch.zeros(1)

    monkeypatch.setattr(Trainer, "step", fake_step)
    tr = _trainer(cfg)
    tr.load_data()
    tr.train_epoch(0)
    labels, cams = LowestLabelsBatches.last
    np.testing.assert_array_equal(cams[0], [r.cam for r in tr.vis])
    np.testing.assert_array_equal(cams[1], [r.cam for r in tr.ir])
    want = []
    for lab in (labels.vis_in_v, labels.ir_in_r):  # by hand: two lowest labels, 2 images
        ys = sorted({int(y) for y in lab if y >= 0})[:2]
        want.append([i for y in ys for i in [j for j in range(len(lab)) if lab[j] == y][:2]])
    assert len(batches) == 3
    for idx_v, idx_r, paired in batches:
        assert idx_v.tolist() == want[0] and idx_r.tolist() == want[1] and not paired

    from uvireid.engine.runner import _stage_batches

    # the sampler's rows: 4 visible (and their colour view) + 12 infrared
    assert _stage_batches(cfg, 2)[0]["per_gpu"] == 2 * 4 + 12
    assert _stage_batches(cfg, 2)[0]["global"] == 2 * (2 * 4 + 12)


def test_a_registered_sampler_is_checked_when_the_recipe_is_read(recipe_file, plugin_samplers):
    from uvireid.engine.runner import preflight

    with pytest.raises(ConfigError, match="sampler 'lowest_labels' has no keyword 'spraed'; "):
        load_recipe(recipe_file, ["stages.0.sampler={type: lowest_labels, spraed: 2}"])
    with pytest.raises(ConfigError, match="'stages.0.sampler.images' must be an integer >= 1"):
        load_recipe(recipe_file, ["stages.0.sampler={type: lowest_labels, images: 0}"])
    with pytest.raises(ConfigError, match=r"for_epoch\(labels\) cannot be called with 2"):
        load_recipe(recipe_file, ["stages.0.sampler={type: no_cams}"])
    with pytest.raises(ConfigError, match=r"has no unpaired\(labels, cams\)"):
        load_recipe(recipe_file, ["stages.0.sampler={type: no_fallback}"])
    with pytest.raises(ConfigError, match="did you mean 'lowest_labels'"):
        load_recipe(recipe_file, ["stages.0.sampler={type: lowest_label}"])
    # a pairing sampler in a stage without an associator (the tiny recipe's stage 0)
    cfg = load_recipe(recipe_file, ["stages.0.sampler={type: pairing_test}"])
    with pytest.raises(ConfigError, match="sampler 'pairing_test' pairs visible and infrared"):
        preflight(cfg)


def test_a_pairing_sampler_falls_back_to_each_modality_without_cross_links(
    recipe_file, plugin_samplers
):
    tr = _trainer(load_recipe(recipe_file))
    lab = SimpleNamespace(
        vis_in_v=np.arange(len(tr.vis)) % 4, ir_in_r=np.arange(len(tr.ir)) % 3, has_cross=False
    )
    stage = dataclasses.replace(
        tr.stages[0], sampler={"type": "pairing_test", "ids": 2, "images": 3}
    )
    warnings = []
    sampler, paired = tr._sampler(stage, lab, warnings)
    assert not paired and isinstance(sampler, IdentitySampler)
    assert (sampler.ids, sampler.images) == (2, 3)
    assert sorted(sampler.pools_v) == [0, 1, 2, 3] and sorted(sampler.pools_r) == [0, 1, 2]
    assert warnings and "no cross-modal link this epoch" in warnings[-1]
    lab.has_cross = True
    sampler, paired = tr._sampler(stage, lab, [])
    assert paired and isinstance(sampler, _LowestLabels)


def test_a_run_config_from_before_the_registry_reads_as_it_trained():
    """Before samplers were a registry every stage's sampler was written out with
    camera_aware: false and visible_ids: null, whatever its type (a run's config.yaml);
    such a file resumes. Set on a sampler without them, they are still refused."""
    old = "{type: paired, ids: 8, images: 4, camera_aware: false, visible_ids: null}"
    cfg = load_recipe("demo", [f"stages.1.sampler={old}"])
    assert cfg["stages"][1]["sampler"] == {"type": "paired", "ids": 8, "images": 4}
    with pytest.raises(ConfigError, match="sampler 'paired' has no keyword 'visible_ids'"):
        load_recipe("demo", ["stages.1.sampler.visible_ids=4"])
    # a sampler without a type is the identity sampler, as before
    cfg = load_recipe("demo", ["stages.0.sampler={ids: 3, images: 2}"])
    assert cfg["stages"][0]["sampler"]["type"] == "identity"
    assert cfg["stages"][0]["sampler"]["ids"] == 3


def test_a_plugin_sampler_that_passes_the_recipe_check_does_not_crash_in_training(recipe_file):
    """A sampler accepted by load_recipe (the registry's contract: rows(), for_epoch(labels,
    cams)) draws its epoch's batches, without a pairs attribute too; a pairing one without
    ids/images for Batches.unpaired is refused when the recipe is read (both crashed in
    training: audit DD)."""
    from types import SimpleNamespace

    import numpy as np

    from uvireid.registry import DATASETS

    class Ep:
        def sample(self, rng):
            return IdentityBatch(np.array([0, 1]), np.array([0, 1]))

    class Duck:
        def __init__(self, n: int = 2):
            self.n = n

        def rows(self):
            return self.n, self.n

        def for_epoch(self, labels, cams):
            return Ep()

    class PairingOwnKeywords(Duck, Batches):
        """Batches.unpaired, but Duck's constructor: no super().__init__(ids, images)."""

        pairs = True

    SAMPLERS.register("dd_duck", Duck)
    SAMPLERS.register("dd_pairing", PairingOwnKeywords)
    try:
        cfg = load_recipe(recipe_file, ["stages.0.sampler={type: dd_duck}"])
        tr = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
        lab = SimpleNamespace(
            vis_in_v=np.arange(len(tr.vis)) % 4, ir_in_r=np.arange(len(tr.ir)) % 3, has_cross=False
        )
        sampler, paired = tr._sampler(tr.stages[0], lab, [])
        assert isinstance(sampler, Ep) and not paired
        # a pairing one that keeps Batches.unpaired without ids/images: refused when read
        with pytest.raises(ConfigError, match=r"call super\(\).__init__\(ids, images\)"):
            load_recipe(recipe_file, ["stages.1.sampler={type: dd_pairing}"])
    finally:
        SAMPLERS.unregister("dd_duck")
        SAMPLERS.unregister("dd_pairing")
