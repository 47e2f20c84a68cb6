"""Settings that validated and were recorded but changed nothing (audit BS, session 19):
each is now applied, or refused by name."""

import pytest
import torch

from uvireid.config import load_recipe
from uvireid.errors import ConfigError


# 1. backbone.gem_p is replaced by the checkpoint's when backbone.pretrained is a uvireid run
def test_gem_p_is_not_silently_replaced_by_a_uvireid_checkpoints(tmp_path):
    from uvireid.engine.checkpoint import rng_state, save_checkpoint
    from uvireid.registry import BACKBONES

    spec = {"type": "two_stream_resnet", "arch": "resnet18", "share_from": "stem"}
    trained = BACKBONES.build(spec)  # gem_p 3
    model = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    path = save_checkpoint(tmp_path, {"epoch": 1, "model": model, "rng": rng_state()})
    m = BACKBONES.build({**spec, "pretrained": str(path), "gem_p": 6.0})
    assert float(m.pool.p.detach()) == 6.0  # the recipe's, not the checkpoint's 3
    learnable = BACKBONES.build({**spec, "gem_learnable": True})
    with torch.no_grad():
        learnable.pool.p.fill_(4.5)  # a learnt exponent is a weight: it loads
    model = {f"backbone.{k}": v for k, v in learnable.state_dict().items()}
    path = save_checkpoint(tmp_path / "l", {"epoch": 1, "model": model, "rng": rng_state()})
    m = BACKBONES.build({**spec, "gem_learnable": True, "pretrained": str(path)})
    assert float(m.pool.p.detach()) == 4.5


# 2. a stage's lr does nothing when train.lr is 0 (LambdaLR scales train.lr)
def test_train_lr_zero_with_a_stage_lr_above_zero_is_refused():
    from uvireid.engine.trainer import lr_factors, stages_of

    with pytest.raises(ConfigError, match=r"train.lr is 0 while stages.1.lr=0.001"):
        load_recipe("demo", ["train.lr=0", "stages.1.lr=0.001"])
    # freezing one stage the other way round is what the message recommends
    cfg = load_recipe("demo", ["stages.0.lr=0"])
    factor = lr_factors(stages_of(cfg), cfg["train"])
    assert factor(0) == 0.0 and factor(cfg["stages"][0]["epochs"]) > 0


# 3. a train.lr_steps override that no stage follows is accepted without a word
@pytest.mark.parametrize(
    "recipe,overrides",
    [
        ("pgm", ["data={type: synthetic}", "train.lr_steps=[5,10]"]),
        ("demo", ["stages.0.lr_steps=[9]", "stages.1.lr_steps=[9]", "train.lr_steps=[0]"]),
    ],
)
def test_train_lr_steps_reaching_no_stage_is_refused(recipe, overrides):
    with pytest.raises(ConfigError, match="lr_steps"):
        load_recipe(recipe, overrides)


# 4. evaluation.trials on RegDB: recorded, never used (uvireid eval refuses --trials there)
def test_regdb_run_with_several_trials_says_it_evaluates_one(caplog):
    """evaluation.trials=10 on RegDB was recorded and never used (one trial a split):
    warned before the run, naming what RegDB's trials are."""
    import logging

    from uvireid.engine.runner import _check_sampler

    cfg = load_recipe("salcr_regdb", ["evaluation.trials=10"])
    with caplog.at_level(logging.WARNING):
        _check_sampler(cfg["evaluation"], cfg["data"]["type"])
    assert any("RegDB's ten trials are its ten splits" in r.getMessage() for r in caplog.records)
    caplog.clear()
    cfg = load_recipe("salcr_regdb")  # datasets/regdb.yaml sets trials: 1
    with caplog.at_level(logging.WARNING):
        _check_sampler(cfg["evaluation"], cfg["data"]["type"])
    assert not caplog.records


def test_a_learnt_gem_p_loaded_into_a_fixed_gem_is_warned(caplog):
    """A learnt p is saved under the same key as a fixed one: loading it into a GeM built
    with gem_learnable: false keeps the recipe's p, and says how to load the learnt one
    (audit BT)."""
    import logging

    from uvireid.engine.checkpoint import load_state_strict
    from uvireid.registry import BACKBONES

    spec = {"type": "two_stream_resnet", "arch": "resnet18", "share_from": "stem"}
    learnt = BACKBONES.build({**spec, "gem_learnable": True})
    with torch.no_grad():
        learnt.pool.p.fill_(4.5)
    fixed = BACKBONES.build(spec)
    with caplog.at_level(logging.WARNING):
        load_state_strict(fixed, learnt.state_dict(), source="ckpt")
    assert float(fixed.pool.p) == 3.0
    assert any("gem_learnable: true" in r.getMessage() for r in caplog.records)


def test_num_modalities_of_a_single_stream_model_is_refused():
    """share_from: stem shares every stage: num_modalities counted no stream and changed
    nothing (audit BS); refused, naming share_from. Two streams still take it."""
    from uvireid.registry import BACKBONES

    spec = {"type": "two_stream_resnet", "arch": "resnet18", "share_from": "stem"}
    with pytest.raises(ConfigError, match="num_modalities=3 has no effect with share_from: stem"):
        BACKBONES.build({**spec, "num_modalities": 3})
    m = BACKBONES.build({**spec, "share_from": "layer1", "num_modalities": 3})
    assert len(m.specific) == 3
