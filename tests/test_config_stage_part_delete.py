"""``_delete_: true`` in a stage's clusterer or associator means "replace the top-level
part, do not refine it", in each of the four ways to write it: in a stage list written
whole, as ``stages.1.clusterer={...}``, as ``stages.1={clusterer: {...}}`` (a mapping
merges into a list item) and in a derived recipe's ``stages: {1: {clusterer: {...}}}``
(a mapping of indices refines a list's items): DBSCAN's own min_samples 4, not the
top-level part's 7."""

from __future__ import annotations

import textwrap

import pytest

from uvireid.config import load_recipe

HEAD = """
data: {type: synthetic}
backbone: {type: two_stream_resnet, arch: resnet18, pretrained: false}
clusterer: {type: dbscan, eps: 0.45, min_samples: 7}
"""
PART = "{_delete_: true, type: dbscan, eps: 0.3}"
WHOLE = (
    HEAD
    + f"""
stages:
  - {{name: a, epochs: 1, losses: [{{type: cluster_contrast}}]}}
  - {{name: b, epochs: 1, losses: [{{type: cluster_contrast}}], clusterer: {PART}}}
"""
)
PLAIN = (
    HEAD
    + """
stages:
  - {name: a, epochs: 1, losses: [{type: cluster_contrast}]}
  - {name: b, epochs: 1, losses: [{type: cluster_contrast}]}
"""
)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "whole.yaml").write_text(textwrap.dedent(WHOLE))
    (tmp_path / "plain.yaml").write_text(textwrap.dedent(PLAIN))
    (tmp_path / "derived.yaml").write_text(
        f"_base_: plain.yaml\nstages:\n  1: {{clusterer: {PART}}}\n"
    )
    (tmp_path / "derived_of_whole.yaml").write_text(
        "_base_: whole.yaml\nstages:\n  1: {epochs: 2}\n"
    )
    return tmp_path


def _min_samples(cfg):
    return cfg["stages"][1]["clusterer"]["min_samples"]


def test_the_forms_that_keep_delete(files):
    assert _min_samples(load_recipe(files / "whole.yaml")) == 4
    assert _min_samples(load_recipe(files / "derived_of_whole.yaml")) == 4
    assert _min_samples(load_recipe(files / "plain.yaml", [f"stages.1.clusterer={PART}"])) == 4


def test_a_list_item_override_keeps_delete(files):
    cfg = load_recipe(files / "plain.yaml", [f"stages.1={{clusterer: {PART}}}"])
    assert _min_samples(cfg) == 4


def test_a_derived_recipes_index_mapping_keeps_delete(files):
    assert _min_samples(load_recipe(files / "derived.yaml")) == 4
