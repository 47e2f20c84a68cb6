"""A refusal raised while an override merges into a list or a list item (``stages={5:
{epochs: 3}}``, ``train.lr_steps={0: 5}``, ``stages.1={_delete_: 3}``) names the
command-line override and its key, not "the recipe" and an empty key."""

from __future__ import annotations

import pytest

from uvireid.config import load_recipe
from uvireid.errors import ConfigError


@pytest.mark.parametrize(
    "recipe, override, key",
    [
        ("salcr", "stages={5: {epochs: 3}}", "stages.5"),
        ("salcr", "stages.1.losses={7: {weight: 2}}", "stages.1.losses.7"),
        ("demo", "train.lr_steps={0: 5}", "train.lr_steps"),  # demo: lr_steps: []
        ("salcr", "stages={0: {epochs: 3}, '0': {epochs: 4}}", "stages.0"),
    ],
)
def test_an_override_merge_error_names_the_override_and_its_key(recipe, override, key):
    with pytest.raises(ConfigError) as info:
        load_recipe(recipe, [override])
    msg = str(info.value)
    assert msg.startswith("command-line override"), msg
    assert key in msg, msg
    assert "the recipe" not in msg and ": ." not in msg and " =[" not in msg, msg


def test_a_bad_delete_in_a_list_item_override_names_the_override():
    with pytest.raises(ConfigError) as info:
        load_recipe("salcr", ["stages.1={_delete_: 3}"])
    msg = str(info.value)
    assert msg.startswith("command-line override"), msg
    assert "stages.1._delete_" in msg, msg
