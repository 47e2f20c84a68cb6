"""A recipe without stages trains one stage from its top-level ``losses``: their
``weight`` is checked and defaulted as a stage's is (a finite number >= 0; 1.0 in the
resolved config, as the trainer uses). Weight -2 would train by gradient ascent on its
term, .nan train NaN, 'abc' fail in the trainer after the data, model and first
clustering."""

from __future__ import annotations

import textwrap

import pytest

from uvireid.config import load_recipe
from uvireid.errors import ConfigError

RECIPE = """
data: {type: synthetic}
backbone: {type: two_stream_resnet, arch: resnet18, pretrained: false}
clusterer: {type: dbscan}
losses: [{type: cluster_contrast%s}]
"""


def _write(tmp_path, extra=""):
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(RECIPE % extra))
    return p


@pytest.mark.parametrize("weight", ["-2", ".nan", ".inf", "abc", "true"])
def test_a_bad_top_level_loss_weight_is_refused_like_a_stage_ones(tmp_path, weight):
    with pytest.raises(ConfigError, match=r"losses\.0\.weight.*finite number >= 0"):
        load_recipe(_write(tmp_path, f", weight: {weight}"))


def test_a_bad_top_level_loss_weight_override_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"losses\.0\.weight"):
        load_recipe(_write(tmp_path), ["losses.0.weight=-2"])


def test_the_resolved_top_level_loss_shows_its_default_weight(tmp_path):
    """DESIGN: config.yaml is 'resolved: every value used, defaults included'; the trainer
    uses weight 1.0 (trainer._loss_terms: item.get('weight', 1.0))."""
    cfg = load_recipe(_write(tmp_path))
    assert cfg["losses"][0]["weight"] == 1.0
