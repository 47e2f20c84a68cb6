"""A tiny training recipe on a fixture SYSU-MM01 tree (32x16 images, ResNet-18)."""

from __future__ import annotations

import pytest
import yaml
from train_fixtures import tiny_recipe


@pytest.fixture()
def recipe_file(tmp_path):
    path = tmp_path / "tiny_train.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    return path


@pytest.fixture()
def registered():
    """``registered(REGISTRY, name, obj)`` registers a plugin part for one test only."""
    names = []

    def reg(registry, name, obj):
        registry.register(name, obj)
        names.append((registry, name))

    yield reg
    for registry, name in names:
        registry.unregister(name)
