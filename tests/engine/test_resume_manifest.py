"""A resume's world-size check and manifest record, on hand-written manifests
(mutation audit CB)."""

from __future__ import annotations

import json

import pytest

from uvireid.engine.run_folder import RunFolder, check_world_size, resumed_manifest
from uvireid.errors import ConfigError


def _folder(tmp_path, manifest):
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return RunFolder(tmp_path)


def test_the_world_size_is_checked_against_the_last_process_that_trained(tmp_path):
    """Started on 1 process, resumed (allowed) on 2: the next resume continues on 2."""
    folder = _folder(tmp_path, {"world_size": 1, "resumes": [{"world_size": 2}]})
    assert check_world_size(folder, 2) == {}
    with pytest.raises(ConfigError, match=r"trained with 2 process"):
        check_world_size(folder, 1)
    assert check_world_size(folder, 1, allow_changes=True) == {"world_size": (2, 1)}


def test_a_resume_is_recorded_after_the_last_finished_epoch(tmp_path):
    """3 epochs done: the last finished epoch is 2 as metrics.jsonl numbers them."""
    folder = _folder(tmp_path, {"world_size": 1, "recipe": "r"})
    out = resumed_manifest(folder, {"world_size": 1, "command": "c"}, 3, {"a.b": (1, 2)})
    (entry,) = out["resumes"]
    assert entry["after_epoch"] == 2 and entry["epochs_done"] == 3
    assert entry["changes"] == {"a.b": [1, 2]} and out["recipe"] == "r"
