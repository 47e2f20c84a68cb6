"""Config._legacy_timm_pooling applies to an old run's
config.yaml only (mutants of its two conditions survived the suite)."""

from __future__ import annotations

import textwrap

import pytest

from uvireid.config import load_recipe

TIMM_OLD = """
_base_: demo.yaml
backbone: {_delete_: true, type: timm, name: convnext_atto, pretrained: false%s}
"""


@pytest.mark.parametrize(
    "file, keys, pooling",
    [
        # a run's config.yaml from before `pooling` (every timm setting of its time listed)
        ("config.yaml", ", gem_p: 3.0, img_size: null, output_stride: null", "legacy"),
        # a user's own recipe listing the same keys: the default
        ("mine.yaml", ", gem_p: 3.0, img_size: null, output_stride: null", "auto"),
        # a config.yaml that does not list all of them is no resolved config of that time
        ("config.yaml", ", gem_p: 3.0", "auto"),
    ],
)
def test_legacy_timm_pooling_only_for_an_old_runs_config_yaml(tmp_path, file, keys, pooling):
    pytest.importorskip("timm")
    (tmp_path / file).write_text(textwrap.dedent(TIMM_OLD % keys))
    assert load_recipe(tmp_path / file)["backbone"]["pooling"] == pooling
