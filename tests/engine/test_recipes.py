"""The built-in training recipes: SALCR against the spec's hyper-parameter table."""

from __future__ import annotations

import pytest

import uvireid.data.synthetic  # noqa: F401  (registers 'synthetic' for demo.yaml)
from uvireid.config import load_recipe
from uvireid.engine.trainer import stages_of

# shared/notes/salcr_reference.md Sec. 9.5 (code defaults / paper), transcribed:
# (item, SYSU-MM01, RegDB)
SPEC_9_5 = {
    "dbscan eps": (0.6, 0.3),
    "dbscan min_samples": (4, 4),
    "jaccard k1": (30, 30),
    "jaccard k2": (6, 6),
    "iterations per epoch": (300, 100),
    "tau": (0.05, 0.05),
    "mu": (0.1, 0.1),
    "lambda_ot": (5, 5),
    "sinkhorn max_iter / tol": ((500, 0.1), (500, 0.1)),  # Sec. 5.1 step 5
    "k_tr": (30, 8),
    "k_te": (30, 8),
    "P": (3, 3),
    "k (GPCR)": (30, 30),
    "lambda (GPCR weight)": (0.5, 0.5),
    "part loss weight": (1, 1),
    "epochs (DCL + SALCR)": ((40, 40), (40, 40)),
    "DCL batch": ((12, 12), (12, 12)),
    # the paper's 8 labels x (4 + 4); the code's default 8 x (8 + 8) conflicts (§9.2)
    "SALCR batch": ((8, 4), (8, 4)),
}


def _observed(cfg: dict) -> dict:
    dcl, salcr = stages_of(cfg)
    losses = {item["type"]: item for item in salcr.losses}
    cc = dcl.losses[0]
    return {
        "dbscan eps": salcr.clusterer["eps"],
        "dbscan min_samples": salcr.clusterer["min_samples"],
        "jaccard k1": salcr.clusterer["k1"],
        "jaccard k2": salcr.clusterer["k2"],
        "iterations per epoch": salcr.iters,
        "tau": {cc["temperature"], *(x["temperature"] for x in losses.values())}.pop(),
        "mu": {
            cc["momentum"],
            losses["dual_cluster_contrast"]["momentum"],
            losses["part_contrast"]["momentum"],
        }.pop(),
        "lambda_ot": salcr.associator["lambda_ot"],
        "sinkhorn max_iter / tol": (salcr.associator["max_iter"], salcr.associator["tol"]),
        "k_tr": salcr.associator["k_tr"],
        "k_te": cfg["reranker"]["k"],
        "P": {
            losses["part_contrast"]["num_parts"],
            losses["instance_neighbour"]["num_parts"],
        }.pop(),
        "k (GPCR)": losses["instance_neighbour"]["k"],
        "lambda (GPCR weight)": losses["instance_neighbour"]["weight"],
        "part loss weight": losses["part_contrast"]["weight"],
        "epochs (DCL + SALCR)": (dcl.epochs, salcr.epochs),
        "DCL batch": (dcl.sampler["ids"], dcl.sampler["images"]),
        "SALCR batch": (salcr.sampler["ids"], salcr.sampler["images"]),
    }


@pytest.mark.parametrize("recipe,column", [("salcr", 0), ("salcr_regdb", 1)])
def test_salcr_recipe_matches_the_spec_table(recipe, column):
    cfg = load_recipe(recipe)
    observed = _observed(cfg)
    for item, values in SPEC_9_5.items():
        assert observed[item] == values[column], item
    # the rest of Sec. 9.3-9.4 and 3.1-3.4
    tr = cfg["train"]
    assert (tr["lr"], tr["weight_decay"], tr["lr_steps"], tr["lr_gamma"]) == (
        3.5e-4,
        5e-4,
        [20, 60],
        0.1,
    )
    assert (tr["height"], tr["width"], cfg["seed"]) == (288, 144, 1)
    assert cfg["backbone"]["arch"] == "resnet50" and cfg["backbone"]["last_stride"] == 1
    dcl, salcr = stages_of(cfg)
    assert dcl.associator is None and dcl.sampler["type"] == "identity" and dcl.ltg_p == 0.5
    assert salcr.associator["type"] == "otla_dual" and salcr.sampler["type"] == "paired"
    assert salcr.ltg_p == 0.0
    # Sec. 9.1: the SALCR stage is a second run that builds a new Adam
    assert salcr.reset_optimizer and not dcl.reset_optimizer
    assert [x["type"] for x in dcl.losses] == ["cluster_contrast"]
    assert [x["type"] for x in salcr.losses] == [
        "dual_cluster_contrast",
        "part_contrast",
        "instance_neighbour",
    ]
    # Sec. 3.4: ColorJitter(0.5, 0.5, 0.5, 0.5) on the CA and infrared views; Sec. 5.2:
    # the cross-modality memories update in a random permutation; Sec. 3.1: no non-local
    assert (tr["jitter"], tr["hue"]) == (0.5, 0.5)
    assert salcr.losses[0]["shuffle_updates"] is True
    assert salcr.losses[1]["shuffle_updates"] is True  # Sec. 5.2/6.5: part memories too
    assert not any(cfg["backbone"].get("non_local") or [])


def test_demo_recipe_trains_on_the_synthetic_dataset():
    cfg = load_recipe("demo")
    assert cfg["data"]["type"] == "synthetic"
    assert cfg["data"]["nir"] == 0.5  # SYSU-MM01's near-infrared look (RESULTS.md)
    # never a download: random init or the offline synthetic-visible prior
    assert cfg["backbone"]["pretrained"] in (False, "synthetic-visible")
    names = [s.name for s in stages_of(cfg)]
    assert names == ["dcl", "salcr"]
    assert cfg["evaluation"]["at_start"] is True


def test_dcl_recipe_is_the_salcr_dcl_stage_alone():
    dcl_cfg, salcr_cfg = load_recipe("dcl"), load_recipe("salcr")
    (only,) = stages_of(dcl_cfg)
    ref = stages_of(salcr_cfg)[0]
    assert (only.epochs, only.sampler, only.losses, only.ltg_p) == (
        ref.epochs,
        ref.sampler,
        ref.losses,
        ref.ltg_p,
    )
    assert only.associator is None and dcl_cfg["clusterer"] == salcr_cfg["clusterer"]


def _lr_at(cfg: dict, epoch: int) -> float:
    """The learning rate of an epoch, re-stated from the recipe's own numbers."""
    import torch

    from uvireid.engine.trainer import lr_factors

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg["train"]["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factors(stages_of(cfg), cfg["train"]))
    for _ in range(epoch):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


def test_pgm_recipe_matches_the_peers_spec():
    # shared/notes/peers.md Sec. 2.2: stage 1 DCL 50 epochs, stage 2 70 epochs; Adam
    # 3.5e-4, step 20 (x0.1) in each stage (stage 2 is a separate run); eps 0.6, k1 30,
    # k2 6; 200 iterations; cross weight 0.25, alternating by epoch parity, cross-write.
    cfg = load_recipe("pgm")
    dcl, pgm = stages_of(cfg)
    assert (dcl.epochs, pgm.epochs, pgm.iters) == (50, 70, 200)
    assert pgm.associator["type"] == "pgm" and dcl.associator is None
    (loss,) = pgm.losses
    assert loss["type"] == "alternate_cross_contrast"
    assert (loss["cross_weight"], loss["schedule"], loss["cross_update"]) == (
        0.25,
        "alternate",
        True,
    )
    assert (pgm.clusterer["eps"], pgm.clusterer["k1"], pgm.clusterer["k2"]) == (0.6, 30, 6)
    # Sec. 0.3-0.4 and 2.2: momentum 0.2 (code default, log args), one visible term over
    # both views, hard memories in stage 2, IR ChannelAdapGray 0.5, a new Adam for stage 2
    (intra,) = dcl.losses
    assert (intra["momentum"], loss["momentum"]) == (0.2, 0.2)
    assert intra["ca_joint"] and loss["ca_joint"]
    assert loss["hard"] and not intra.get("hard", False)
    assert cfg["train"]["gray_p"] == 0.5
    assert pgm.reset_optimizer and not dcl.reset_optimizer
    # Sec. 0.1: the AGW backbone, non-local blocks "0,2,3,0"; ColorJitter(.5,.5,.5,.5)
    assert cfg["backbone"]["non_local"] == [0, 2, 3, 0]
    assert dcl.sampler["camera_aware"] and pgm.sampler["camera_aware"]  # Sec. 0.4
    # Sec. 0.4: 16 x 16 infrared, 8 x 16 visible; Sec. 0.1: flip-averaged cluster features;
    # PGM's stage-2 script jitters only the CA view
    assert [(s.sampler["ids"], s.sampler["visible_ids"]) for s in (dcl, pgm)] == [(16, 8)] * 2
    assert cfg["train"]["cluster_flip"] is True
    from uvireid.engine.runner import _stage_batches

    # peers.md Sec. 0.4: "So 512 images per iteration" (256 IR + 128 x 2 RGB views)
    assert [b["per_gpu"] for b in _stage_batches(cfg, 1)] == [512, 512]
    assert dcl.jitter_views == ("visible_ca", "infrared") and pgm.jitter_views == ("visible_ca",)
    # Sec. 2: stage 2 reloads stage 1's best model (kept on the test set)
    assert pgm.start_from == "best" and dcl.start_from is None
    assert cfg["evaluation"]["keep_best"]
    assert (cfg["train"]["jitter"], cfg["train"]["hue"]) == (0.5, 0.5)
    expected = {
        0: 3.5e-4,
        19: 3.5e-4,
        20: 3.5e-5,
        45: 3.5e-6,
        50: 3.5e-4,
        69: 3.5e-4,
        70: 3.5e-5,
        90: 3.5e-6,
        119: 3.5e-7,
    }
    for epoch, lr in expected.items():
        assert _lr_at(cfg, epoch) == pytest.approx(lr, rel=1e-9), epoch


def test_mbccm_recipe_matches_the_peers_spec():
    # shared/notes/peers.md Sec. 3.2: 80 epochs, cross-modal from 40; 12 pairs x 12
    # images; alpha 0.9, beta 0.5; lr 3.5e-4, x0.1 for 20-49, x0.01 for 50-69, x0.001 after
    cfg = load_recipe("mbccm")
    dcl, mb = stages_of(cfg)
    assert (dcl.epochs, mb.first_epoch, mb.epochs) == (40, 40, 40)
    assert mb.associator["type"] == "mbccm" and mb.sampler == {
        "type": "matched",
        "ids": 12,
        "images": 12,
    }
    losses = {x["type"]: x for x in mb.losses}
    assert set(losses) == {"cluster_contrast", "modality_agnostic"}
    assert (losses["modality_agnostic"]["alpha"], losses["modality_agnostic"]["beta"]) == (
        0.9,
        0.5,
    )
    for epoch, lr in {0: 3.5e-4, 20: 3.5e-5, 49: 3.5e-5, 50: 3.5e-6, 70: 3.5e-7}.items():
        assert _lr_at(cfg, epoch) == pytest.approx(lr, rel=1e-9), epoch
    # audit BB (MBCCM's dataset.py and evaluator.py): LinearTransform(probability=0.8) on
    # the visible view every epoch (the official LTG loop), Image.ANTIALIAS resizing of
    # every image, and a test feature of one unflipped pass
    assert cfg["train"]["ltg_official"] is True
    assert (dcl.ltg_p, mb.ltg_p) == (0.8, 0.8)
    assert cfg["train"]["resize"] == "lanczos" and cfg["train"]["test_resize"] is None
    assert cfg["evaluation"]["flip"] is False


@pytest.mark.parametrize("name", ["pgm_regdb", "mbccm_regdb"])
def test_peer_regdb_recipes_have_the_peers_regdb_settings(name):
    """Audit BB: pgm/mbccm with datasets/regdb.yaml kept SYSU's eps 0.6 (and PGM's SYSU
    epochs); peers.md Sec. 2.2 / 3.2 and the peers' RegDB scripts: eps 0.3, 100 iterations,
    PGM 30 + 30 epochs with lr x0.1 at 10 and 20 in each stage."""
    cfg = load_recipe(name)
    base = load_recipe(name.removesuffix("_regdb"))
    assert cfg["data"]["type"] == "regdb" and cfg["evaluation"]["protocol"] == "regdb-v2i"
    stages, base_stages = stages_of(cfg), stages_of(base)
    for st, b in zip(stages, base_stages):
        assert st.clusterer["eps"] == 0.3
        assert st.iters == 100
        assert st.losses == b.losses and st.sampler == b.sampler  # the rest is the recipe's
    if name == "pgm_regdb":
        assert [st.epochs for st in stages] == [30, 30]
        for epoch, lr in {0: 3.5e-4, 10: 3.5e-5, 20: 3.5e-6, 30: 3.5e-4, 40: 3.5e-5}.items():
            assert _lr_at(cfg, epoch) == pytest.approx(lr, rel=1e-9), epoch
    else:
        assert [st.epochs for st in stages] == [st.epochs for st in base_stages]


def test_salcr_schedule_is_unchanged_by_stage_learning_rates():
    cfg = load_recipe("salcr")
    for epoch, lr in {0: 3.5e-4, 19: 3.5e-4, 20: 3.5e-5, 59: 3.5e-5, 60: 3.5e-6}.items():
        assert _lr_at(cfg, epoch) == pytest.approx(lr, rel=1e-9), epoch


def test_single_gpu_bf16_recipe_is_salcr_with_amp_and_the_same_batch():
    """salcr.yaml with bf16 autocast and the two GPU speed settings (CUDA graphs, TF32
    products), nothing else."""
    one, ref = load_recipe("salcr_1gpu_bf16"), load_recipe("salcr")
    fast = ("amp", "cuda_graphs", "tf32")
    assert all(one["train"][k] is True and ref["train"][k] is False for k in fast)
    assert {k: v for k, v in one["train"].items() if k not in fast} == {
        k: v for k, v in ref["train"].items() if k not in fast
    }
    assert [(s.sampler, s.iters, s.losses) for s in stages_of(one)] == [
        (s.sampler, s.iters, s.losses) for s in stages_of(ref)
    ]


@pytest.mark.parametrize("name", ["dcl", "pgm", "mbccm", "salcr_1gpu_bf16"])
def test_peer_recipes_resolve_from_the_cli(name, tmp_path, capsys):
    from uvireid.cli import main

    assert main(["run", name, f"data.root={tmp_path}", "--dry-run"]) == 0
    assert "stages:" in capsys.readouterr().out
    assert main(["run", name, "--dry-run"]) == 2  # the recipe's data/SYSU-MM01 is not here
    assert "data/SYSU-MM01 does not exist" in capsys.readouterr().err
