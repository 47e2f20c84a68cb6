"""Config.yaml (config.dump) is read back by the loader as the
same values, and lists the sections in the schema's order."""

from __future__ import annotations

import pytest

from uvireid.config import SCHEMA, dump, load_recipe


@pytest.mark.parametrize("name", ["1e5", "010", "1:30", "true", "null", "0x10"])
def test_a_name_that_looks_like_another_type_survives_config_yaml(tmp_path, name):
    cfg = load_recipe("demo", [f"name='{name}'"])
    assert cfg["name"] == name
    (tmp_path / "config.yaml").write_text(dump(cfg))
    assert load_recipe(tmp_path)["name"] == name


def test_sections_in_schema_order():
    text = dump(load_recipe("salcr"))
    tops = [line.split(":")[0] for line in text.splitlines() if line and line[0] not in " -"]
    assert tops == [k for k in SCHEMA if k in tops]
    assert tops[0] == "name"


def test_an_empty_base_file_is_an_empty_recipe(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    (tmp_path / "r.yaml").write_text("_base_: [empty.yaml, salcr.yaml]\n")
    assert load_recipe(tmp_path / "r.yaml")["stages"] == load_recipe("salcr")["stages"]


def test_a_merge_key_list_is_read(tmp_path):
    (tmp_path / "r.yaml").write_text("_base_: salcr.yaml\ntrain:\n  <<: [{lr: 1.0e-4}, {pad: 3}]\n")
    cfg = load_recipe(tmp_path / "r.yaml")
    assert (cfg["train"]["lr"], cfg["train"]["pad"]) == (1.0e-4, 3)


def test_two_merge_key_lines_are_not_a_duplicate_key(tmp_path):
    """The duplicate-key check skips YAML's << merge keys (a mapping may repeat them)."""
    (tmp_path / "r.yaml").write_text(
        "_base_: salcr.yaml\ntrain:\n  <<: {lr: 1.0e-4}\n  <<: {pad: 3}\n"
    )
    cfg = load_recipe(tmp_path / "r.yaml")
    assert (cfg["train"]["lr"], cfg["train"]["pad"]) == (1.0e-4, 3)
