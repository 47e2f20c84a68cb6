"""The built-in recipes resolve to what README's recipe table and
the recipes' descriptions say (values copied from the docs, not computed by the code)."""

from __future__ import annotations

import pytest

from uvireid.config import load_recipe


def _stages(cfg):
    return [(s["name"], s["epochs"]) for s in cfg["stages"]]


def test_salcr():
    c = load_recipe("salcr")
    assert _stages(c) == [("dcl", 40), ("salcr", 40)]
    assert c["train"]["epochs"] == 80
    assert c["data"]["type"] == "sysu" and c["train"]["iters_per_epoch"] == 300
    assert c["clusterer"]["eps"] == 0.6
    assert c["reranker"]["type"] == "cmfp" and c["reranker"]["k"] == 30
    assert c["stages"][0]["associator"] is None
    assert c["stages"][1]["associator"]["type"] == "otla_dual"
    assert [(x["type"], x["weight"]) for x in c["stages"][1]["losses"]] == [
        ("dual_cluster_contrast", 1.0),
        ("part_contrast", 1.0),
        ("instance_neighbour", 0.5),
    ]
    assert (c["train"]["height"], c["train"]["width"]) == (288, 144)
    assert (c["evaluation"]["protocol"], c["evaluation"]["trials"]) == ("sysu-all", 10)


def test_salcr_regdb_changes_only_what_its_description_says():
    base, c = load_recipe("salcr"), load_recipe("salcr_regdb")
    assert c["data"]["type"] == "regdb" and c["train"]["iters_per_epoch"] == 100
    assert c["clusterer"]["eps"] == 0.3
    assert c["stages"][1]["associator"]["k_tr"] == 8 and c["reranker"]["k"] == 8
    assert (c["evaluation"]["protocol"], c["evaluation"]["trials"]) == ("regdb-v2i", 1)
    assert _stages(c) == _stages(base)
    assert c["train"]["lr"] == base["train"]["lr"] == 3.5e-4


def test_pgm():
    c = load_recipe("pgm")
    assert _stages(c) == [("dcl", 50), ("pgm", 70)]
    s2 = c["stages"][1]
    assert s2["lr"] == 3.5e-4 and s2["reset_optimizer"] and s2["start_from"] == "best"
    assert c["evaluation"]["keep_best"] is True
    assert (c["train"]["resize"], c["train"]["test_resize"]) == ("bicubic", "lanczos")
    assert c["train"]["cluster_flip"] is True
    assert s2["associator"]["type"] == "pgm"


def test_pgm_regdb_refines_both_stages_and_later_base_wins():
    """_base_: [pgm.yaml, datasets/regdb.yaml]: the later base's data and iterations win
    over pgm.yaml's (sysu, 200 iterations)."""
    c = load_recipe("pgm_regdb")
    assert _stages(c) == [("dcl", 30), ("pgm", 30)]
    assert [s["lr_steps"] for s in c["stages"]] == [[10, 20], [10, 20]]
    assert c["data"]["type"] == "regdb" and c["train"]["iters_per_epoch"] == 100
    assert c["clusterer"]["eps"] == 0.3
    assert c["train"]["epochs"] == 60
    # what pgm.yaml sets and pgm_regdb.yaml does not touch stays
    assert (c["train"]["resize"], c["train"]["test_resize"]) == ("bicubic", "lanczos")
    assert c["stages"][1]["start_from"] == "best"


def test_mbccm_and_its_regdb_variant():
    c = load_recipe("mbccm")
    assert _stages(c) == [("dcl", 40), ("mbccm", 40)]
    assert [s["ltg_p"] for s in c["stages"]] == [0.8, 0.8]
    assert c["train"]["resize"] == "lanczos"
    r = load_recipe("mbccm_regdb")
    assert r["clusterer"]["eps"] == 0.3 and r["train"]["iters_per_epoch"] == 100
    assert r["data"]["type"] == "regdb" and _stages(r) == _stages(c)


def test_salcr_1gpu_bf16_is_salcr_with_autocast():
    base, c = load_recipe("salcr"), load_recipe("salcr_1gpu_bf16")
    assert c["train"]["amp"] is True and base["train"]["amp"] is False
    for key in ("stages", "clusterer", "associator", "reranker", "backbone", "evaluation"):
        assert c[key] == base[key], key


def test_dcl():
    c = load_recipe("dcl")
    assert _stages(c) == [("dcl", 40)]
    assert [x["type"] for x in c["stages"][0]["losses"]] == ["cluster_contrast"]
    assert c["stages"][0]["associator"] is None and c["associator"] is None


@pytest.mark.parametrize(
    "name",
    [
        "dcl",
        "demo",
        "mbccm",
        "mbccm_regdb",
        "pgm",
        "pgm_regdb",
        "salcr",
        "salcr_1gpu_bf16",
        "salcr_regdb",
    ],
)
def test_every_recipe_names_itself_and_sums_its_epochs(name):
    c = load_recipe(name)
    assert c["name"] == name
    assert c["train"]["epochs"] == sum(s["epochs"] for s in c["stages"])
