"""A stage's parts fit together, or the recipe is refused before anything is built: a loss
that needs paired batches with a sampler that never pairs, cross-modal losses or a pairing
sampler without an associator. Audit AA (session 17): each of these ran, silently training
without the loss or its cross terms (part losses on the identity sampler: a total of 0)."""

from __future__ import annotations

import re

import pytest

from uvireid.config import load_recipe
from uvireid.engine.runner import preflight
from uvireid.errors import ConfigError
from uvireid.registry import RECIPES

TINY = ["backbone.pretrained=false", "data.ids=24", "train.threads=1"]


def _cfg(tmp_path, *overrides):
    return load_recipe("demo", [*TINY, f"output_dir={tmp_path}", *overrides])


@pytest.mark.parametrize(
    "overrides, loss",
    [
        (["stages.1.sampler.type=identity"], "losses.1 (part_contrast)"),
        (
            ["stages.1.sampler.type=identity", "stages.1.losses=[{type: part_contrast}]"],
            "losses.0 (part_contrast)",
        ),
        (
            [
                "stages.1.sampler.type=identity",
                "stages.1.losses=[{type: instance_neighbour, parts: false}]",
            ],
            "losses.0 (instance_neighbour)",
        ),
    ],
)
def test_losses_on_paired_batches_with_a_sampler_that_never_pairs_are_refused(
    tmp_path, overrides, loss
):
    match = rf"stage 'salcr': {re.escape(loss)} trains on paired .*'identity'"
    with pytest.raises(ConfigError, match=match):
        preflight(_cfg(tmp_path, *overrides))


@pytest.mark.parametrize(
    "loss",
    ["dual_cluster_contrast", "alternate_cross_contrast", "modality_agnostic", "cross_triplet"],
)
def test_cross_modal_losses_without_an_associator_are_refused(tmp_path, loss):
    cfg = _cfg(
        tmp_path,
        "stages.1.associator=null",
        "stages.1.sampler.type=identity",
        f"stages.1.losses=[{{type: {loss}}}]",
    )
    with pytest.raises(ConfigError, match=rf"losses.0 \({loss}\) needs cross-modal labels"):
        preflight(cfg)


@pytest.mark.parametrize("sampler", ["paired", "matched"])
def test_a_pairing_sampler_without_an_associator_is_refused(tmp_path, sampler):
    cfg = _cfg(
        tmp_path,
        "stages.1.associator=null",
        f"stages.1.sampler.type={sampler}",
        "stages.1.losses=[{type: cluster_contrast}]",
    )
    with pytest.raises(ConfigError, match=f"sampler '{sampler}' pairs .* has no associator"):
        preflight(cfg)


def test_every_shipped_recipe_and_an_intra_modal_stage_pass(tmp_path):
    for name in RECIPES.names():  # every shipped recipe
        preflight(load_recipe(name, [f"output_dir={tmp_path}", f"data.root={tmp_path}"]))
    preflight(
        _cfg(
            tmp_path,
            "stages.1.associator=null",
            "stages.1.sampler.type=identity",
            "stages.1.losses=[{type: cluster_contrast}]",
        )
    )


def test_a_stage_part_named_with_its_inherited_type_keeps_its_settings(tmp_path):
    """stages.1.associator.type=otla_dual turned the demo's CMFP(tr) off (k_tr 10 ->
    null), and stages.1.clusterer.type=dbscan reset eps and k1: naming the type a stage
    inherits replaced the part with the type's defaults. Another type still replaces it."""
    cfg = _cfg(tmp_path, "stages.1.associator.type=otla_dual", "stages.1.clusterer.type=dbscan")
    top = load_recipe("demo")
    st = cfg["stages"][1]
    assert st["associator"] == top["associator"] and st["associator"]["k_tr"] == 10
    assert st["clusterer"] == top["clusterer"]
    other = _cfg(tmp_path, "stages.1.associator.type=pgm")["stages"][1]["associator"]
    assert other["type"] == "pgm" and other["k_tr"] is None  # pgm's own default, not 10
