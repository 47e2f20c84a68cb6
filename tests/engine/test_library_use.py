"""uvireid used as a library, as in a notebook (audit BF, session 18): a Trainer seeded by
its recipe, a duck-typed dataset, a recipe dict not yet validated, train_epoch before fit,
the process-wide kernel settings given back, the index helpers' directions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import uvireid  # noqa: F401
from uvireid.config import validate
from uvireid.data.fixtures import make_sysu_tree
from uvireid.errors import UvireidError
from uvireid.features import features_from_arrays


def _tiny(folder, **top) -> dict:
    """The engine tests' tiny recipe, its first stage only, validated."""
    from train_fixtures import tiny_recipe

    rec = tiny_recipe(folder)
    rec["stages"] = rec["stages"][:1]
    rec["evaluation"]["at_start"] = False
    rec.update(top)
    return validate(rec)


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory):
    """A folder holding the tiny recipe's SYSU-MM01 tree."""
    folder = tmp_path_factory.mktemp("bf")
    make_sysu_tree(folder / "SYSU-MM01", ids=12, images_per=3)
    return folder


def test_two_trainers_of_one_recipe_start_from_the_same_weights(sysu_root):
    """The recipe's seed makes a Trainer reproducible (run_recipe seeds the global
    generators before it; a Trainer built in a notebook did not)."""
    from uvireid.engine.trainer import Trainer
    from uvireid.registry import DATASETS

    cfg = _tiny(sysu_root, evaluation={"protocol": "none"})
    ds = DATASETS.build(cfg["data"])
    torch.manual_seed(0)
    a = Trainer(cfg, ds, "cpu", progress=False).model.state_dict()
    b = Trainer(cfg, ds, "cpu", progress=False).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# 3 -------------------------------------------------------------------------------------
class _OwnDataset:
    """A user's dataset: train/test records and protocols, no meta()."""

    def __init__(self, inner):
        self.train = list(inner.train)
        self.test = list(inner.test)
        self.protocols = ["sysu-all"]


def test_a_dataset_without_meta_is_refused_before_training_or_evaluates(sysu_root):
    """It used to train, then stop at the first evaluation with
    AttributeError: '_OwnDataset' object has no attribute 'meta' (runner.py:158)."""
    from uvireid.engine.trainer import Trainer
    from uvireid.registry import DATASETS

    cfg = _tiny(sysu_root)
    ds = _OwnDataset(DATASETS.build(cfg["data"]))
    try:
        t = Trainer(cfg, ds, "cpu", progress=False)
    except UvireidError:
        return  # refused up front, with a message: fine
    t.evaluate("untrained")  # must not raise AttributeError


# 4 -------------------------------------------------------------------------------------
def test_train_epoch_called_directly_loads_the_images(sysu_root):
    """Trainer.train_epoch(0) before fit(): TypeError: object of type 'NoneType' has no
    len() (trainer.py:377)."""
    from uvireid.engine.trainer import Trainer
    from uvireid.registry import DATASETS

    cfg = _tiny(sysu_root, evaluation={"protocol": "none"})
    t = Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", progress=False)
    rec = t.train_epoch(0)
    assert rec["epoch"] == 0


# 5 -------------------------------------------------------------------------------------
def test_fit_gives_back_the_deterministic_mode(sysu_root):
    """train.deterministic=true leaves torch.use_deterministic_algorithms(True) (and
    cuDNN's flags) switched on for the rest of the notebook; fit() gives the thread
    count back, but not this."""
    from uvireid.engine.trainer import Trainer
    from uvireid.registry import DATASETS

    assert not torch.are_deterministic_algorithms_enabled()
    cfg = _tiny(sysu_root, evaluation={"protocol": "none"})
    cfg["train"]["deterministic"] = True
    cfg = validate(copy.deepcopy(cfg))
    try:
        Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", progress=False).fit()
        assert not torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


# 6 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", ["regdb_indices", "llcm_indices"])
def test_index_helpers_name_a_wrong_direction(fn):
    """'v2i' (the protocol names' spelling) gave a raw KeyError / ValueError."""
    from uvireid import evaluation

    n = 8
    feats = features_from_arrays(
        np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32),
        np.repeat(np.arange(4), 2),
        np.tile([1, 2], 4),
        np.tile([0, 1], 4),
    )
    with pytest.raises(UvireidError, match="visible->infrared"):
        getattr(evaluation, fn)(feats, "v2i")


# 7 -------------------------------------------------------------------------------------
def test_trainer_on_a_recipe_dict_not_yet_validated(sysu_root):
    """A hand-written recipe dict (not passed through validate) gave "stage 'a' has no
    clusterer; set clusterer ... at the top of the recipe" although it has one there,
    then a raw KeyError: 'iters_per_epoch' (trainer.py:140)."""
    from uvireid.engine.trainer import Trainer
    from uvireid.errors import ConfigError
    from uvireid.registry import DATASETS

    raw = {
        "device": "cpu",
        "seed": 1,
        "data": {"type": "sysu", "root": str(sysu_root / "SYSU-MM01")},
        "backbone": {"type": "two_stream_resnet", "arch": "resnet18"},
        "clusterer": {"type": "dbscan"},
        "train": {"height": 32, "width": 16},
        "evaluation": {"protocol": "none"},
        "stages": [
            {
                "name": "a",
                "epochs": 1,
                "sampler": {"type": "identity", "ids": 2, "images": 2},
                "losses": [{"type": "cluster_contrast"}],
            }
        ],
    }
    ds = DATASETS.build(raw["data"])
    try:
        t = Trainer(raw, ds, "cpu", progress=False)
    except ConfigError as exc:
        assert "validate" in str(exc) or "load_recipe" in str(exc), str(exc)
        return
    assert t.stages[0].clusterer["type"] == "dbscan"
