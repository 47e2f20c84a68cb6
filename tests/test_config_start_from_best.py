"""``evaluation`` given as a non-mapping (``evaluation=sysu-all``, a slip for
``evaluation.protocol=sysu-all``) is the ConfigError "'evaluation' must be a mapping" on
every recipe, those with a ``start_from: best`` stage (pgm, pgm_regdb), whose check reads
the evaluation section before it is validated, included."""

from __future__ import annotations

import pytest

from uvireid.config import load_recipe
from uvireid.errors import ConfigError


@pytest.mark.parametrize("recipe", ["pgm", "pgm_regdb"])
@pytest.mark.parametrize("value", ["sysu-all", "[1]", "3"])
def test_a_non_mapping_evaluation_is_a_config_error(recipe, value):
    with pytest.raises(ConfigError, match="'evaluation' must be a mapping"):
        load_recipe(recipe, [f"evaluation={value}"])


def test_the_same_override_without_start_from_is_already_a_config_error():
    with pytest.raises(ConfigError, match="'evaluation' must be a mapping"):
        load_recipe("salcr", ["evaluation=sysu-all"])
