"""The preflight's plugin and backbone paths: a plugin part whose own check raises
ValueError, a factory backbone (checked, not built), timm's part-map build without the
recipe's weights, a home-relative pretrained path."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn
from train_fixtures import tiny_recipe

from uvireid.config import validate
from uvireid.engine.runner import preflight
from uvireid.errors import ConfigError
from uvireid.registry import LOSSES


def _one_stage(tmp_path, loss: dict) -> dict:
    cfg = tiny_recipe(tmp_path, name="tiny")
    cfg["stages"] = [dict(cfg["stages"][0], epochs=1, losses=[loss])]
    return cfg


class _RefusesValue(nn.Module):
    """A plugin loss whose fit-time check (_check_params, called by check_parts after
    the build) refuses a value with a plain ValueError; registry.build wraps only the
    constructor's errors."""

    def __init__(self, margin: float = 0.3):
        super().__init__()
        self.margin = margin

    def _check_params(self):
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")

    def forward(self, outputs, targets):  # pragma: no cover
        return outputs.sum() * 0


def test_a_plugin_loss_constructor_value_error_is_a_config_error_naming_the_part(
    tmp_path, registered
):
    """P04: a ValueError from a part's _check_params is turned into a ConfigError naming
    stage, loss index and type (check_parts wraps TypeError and ValueError)."""
    registered(LOSSES, "zz_qo_valerr", _RefusesValue)
    cfg = validate(_one_stage(tmp_path, {"type": "zz_qo_valerr", "margin": -1.0}))
    with pytest.raises(ConfigError) as info:
        preflight(cfg)
    msg = str(info.value)
    assert "stage 'dcl': losses.0 (zz_qo_valerr)" in msg
    assert "ValueError: margin must be >= 0, got -1.0" in msg


def _factory_backbone(**kwargs):  # pragma: no cover - never built by the preflight
    raise AssertionError("the preflight must not build a factory backbone")


def test_a_factory_backbone_is_left_to_its_build_by_the_preflight(tmp_path, registered):
    """P07: a backbone registered as a factory function (not a class) has no methods to
    read; _check_backbone_class leaves it to the build instead of refusing it for
    lacking forward()/extract()."""
    from uvireid.registry import BACKBONES

    registered(BACKBONES, "zz_qo_factory", _factory_backbone)
    cfg = tiny_recipe(tmp_path, name="tiny")
    cfg["backbone"] = {"type": "zz_qo_factory"}
    preflight(validate(cfg))  # no error, nothing built


class _Recorded(Exception):
    pass


def test_the_timm_part_map_check_builds_the_backbone_without_its_weights(tmp_path, monkeypatch):
    """P08: check_parts builds a timm backbone to see its spatial map with
    pretrained=False, whatever the recipe says, so --dry-run never downloads weights."""
    pytest.importorskip("timm")
    from uvireid.registry import BACKBONES

    seen = []

    def fake_build(spec, *a, **k):
        seen.append(dict(spec))
        raise _Recorded

    cfg = tiny_recipe(tmp_path, name="tiny")  # its second stage has part losses
    cfg["backbone"] = {"type": "timm", "name": "resnet18", "pretrained": True}
    cfg = validate(cfg)
    monkeypatch.setattr(BACKBONES, "build", fake_build)
    with pytest.raises(_Recorded):
        preflight(cfg)
    assert len(seen) == 1
    assert seen[0]["type"] == "timm" and seen[0]["pretrained"] is False
    assert cfg["backbone"]["pretrained"] is True  # the recipe itself is left as written


def test_start_weights_written_with_a_tilde_are_read_from_the_home_folder(tmp_path, monkeypatch):
    """P12: backbone.pretrained ~/... is the file in the home folder (the backbone loads it
    with expanduser too), so a checkpoint there that trained on the validation ids is
    refused for a validation run, not skipped as 'not a file'."""
    import uvireid.models.backbone as backbone
    from uvireid.engine.runner import _check_start_weights

    home = tmp_path / "home"
    home.mkdir()
    (home / "latest.pt").write_bytes(b"x")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)  # no ./~ folder here either
    seen = []

    def record(path):
        seen.append(Path(path))
        return {"dataset": "sysu", "split": None}

    monkeypatch.setattr(backbone, "uvireid_checkpoint_dataset", record)
    cfg = {"backbone": {"pretrained": "~/latest.pt"}, "data": {"type": "sysu", "validation": True}}
    with pytest.raises(ConfigError, match="trained on the validation ids"):
        _check_start_weights(cfg)
    assert seen == [home / "latest.pt"]


def test_an_output_dir_under_a_file_in_the_home_folder_is_refused(tmp_path, monkeypatch):
    """Q18: output_dir ~/runs/x is checked where the run writes it (the home folder), so
    a file ~/runs is refused, not passed because ./~ does not exist and . is a folder."""
    from uvireid.engine.runner import _check_writable

    home = tmp_path / "home"
    home.mkdir()
    (home / "runs").write_text("x")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    with pytest.raises(
        ConfigError, match=r"output_dir: ~/runs/x cannot be used \(.*runs is a file"
    ):
        _check_writable("~/runs/x", "output_dir")
    _check_writable("~/other/x", "output_dir")  # a folder it can make: passes
    assert not (home / "other").exists()  # and nothing is created


def test_the_preflight_refuses_start_weights_that_trained_on_the_validation_ids(
    tmp_path, monkeypatch
):
    """P23: preflight itself (--dry-run) runs the start-weights check, not only a direct
    call of _check_start_weights: a validation run from a checkpoint of a sysu run
    without data.validation is refused before anything is built."""
    import uvireid.models.backbone as backbone

    ckpt = tmp_path / "latest.pt"
    ckpt.write_bytes(b"x")
    monkeypatch.setattr(
        backbone, "uvireid_checkpoint_dataset", lambda path: {"dataset": "sysu", "split": None}
    )
    cfg = tiny_recipe(tmp_path, name="tiny")
    cfg["data"]["validation"] = True
    cfg["backbone"]["pretrained"] = str(ckpt)
    cfg = validate(cfg)
    with pytest.raises(
        ConfigError, match=r"backbone.pretrained .*latest.pt is the checkpoint .*validation ids"
    ):
        preflight(cfg)
    cfg["data"]["validation"] = False  # the same weights for a test-set run: fine
    preflight(cfg)


def test_an_official_perm_file_that_is_a_folder_is_refused(tmp_path):
    """Q13: evaluation.perm_file must be a file (rand_perm_cam.mat); a folder (e.g. the
    SYSU-MM01 exp/ folder itself) is refused by the preflight, not only at the first
    evaluation."""
    from uvireid.engine.runner import _check_sampler

    folder = tmp_path / "exp"
    folder.mkdir()
    ev = {"protocol": "sysu-all", "sampler": "official", "perm_file": str(folder)}
    with pytest.raises(ConfigError, match=r"perm_file .*exp is not a file"):
        _check_sampler(ev, "sysu")
    mat = folder / "rand_perm_cam.mat"
    mat.write_bytes(b"x")
    _check_sampler(dict(ev, perm_file=str(mat)), "sysu")  # a file: passes
