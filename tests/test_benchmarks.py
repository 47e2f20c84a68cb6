"""The benchmarks that issue figures come from still run (tiny sizes, CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    yield
    for name in (
        "training_overhead",
        "training_loop",
        "pseudo_labels",
        "association_bound",
        "ablation_synthetic",
        "loss_products",
        "rerank_speed",
        "eval_speed",
    ):
        sys.modules.pop(name, None)


def test_training_overhead_step_makes_no_device_wait(bench, capsys):
    """The SALCR step the benchmark times (the trainer's targets with their host copy, a
    host modality) makes no host-device wait, plain or with FGSAL + GPCR."""
    import training_overhead

    args = ["--arch", "resnet18", "--height", "64", "--width", "32", "--ids", "2",
            "--images", "2", "--memory", "40", "--clusters", "6", "--repeats", "1",
            "--count-ops"]  # fmt: skip
    assert training_overhead.main(args) == 0
    out = capsys.readouterr().out
    rows = [
        line
        for line in out.splitlines()
        if line.startswith("| plain") or line.startswith("| SALCR")
    ]
    assert len(rows) == 4  # the timing table and the counts table
    waits = [int(r.split("|")[2]) for r in rows[2:]]
    kernels = [int(r.split("|")[3].replace(",", "")) for r in rows[2:]]
    assert waits == [0, 0]
    assert 0 < kernels[0] < kernels[1]


def test_training_overhead_counts_the_flops_fgsal_and_gpcr_add(bench):
    """``--flops``: the per-dtype counts add up to torch's own FLOP counter, the backbone's
    convolutions are the same in both steps, and what SALCR adds holds at least GPCR's
    part products as its equations give them."""
    import training_overhead as to
    from torch.utils.flop_counter import FlopCounterMode

    s, p, n = 4, 3, 40
    step, model, _ = to.build_steps("resnet18", 64, 32, s, p, n, 6, "cpu", images=2)
    step(True)  # the lazily made parts of the first call out of the count
    plain, salcr = to.count_flops(step, False), to.count_flops(step, True)
    mode = FlopCounterMode(display=False)
    with mode:
        step(True)
    assert sum(salcr.values()) == mode.get_total_flops()
    conv = ("convolution", "convolution_backward")
    assert [plain[c, "float32"] for c in conv] == [salcr[c, "float32"] for c in conv]
    assert plain["convolution", "float32"] > 0
    d = model.out_dim
    # the (P, 9S, N) part logits against each modality's part memory, forward and the
    # gradient with respect to the queries (the memories take none): 2 x 2 x 2 P 9S N d
    gpcr_parts = 2 * 2 * 2 * p * 9 * s * n * d
    assert salcr["bmm", "float32"] - plain["bmm", "float32"] >= gpcr_parts
    rows = to.flop_table(step, amp=False)
    assert rows[2].startswith("| plain") and rows[3].startswith("| SALCR")
    assert any(r.startswith("- bmm (float32)") for r in rows)


def test_loss_products_rounds_like_tf32_and_orders_the_precisions(bench, capsys):
    """``loss_products.py``: TF32 rounding to nearest with ties to even (values worked by
    hand), and on tiny part logits each lower precision errs more than the one above."""
    import torch
    from loss_products import compare, main, round_tf32

    x = torch.tensor([1.0, 1 + 2**-10, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-12, -1.5 - 2**-11])
    want = [1.0, 1 + 2**-10, 1.0, 1 + 2**-9, 1.0, -1.5]
    assert round_tf32(x).tolist() == want
    r = torch.randn(1000)
    t = round_tf32(r)
    assert (t.view(torch.int32) & 0x1FFF == 0).all()  # 10 mantissa bits left
    assert ((t - r).abs() <= r.abs() * 2.0**-11).all()  # within half a TF32 ulp
    rows = {r["mode"]: r for r in compare(2, 36, 400, 64, "cpu", k=5, repeats=1)}
    errs = [rows[m]["logit_err"] for m in ("fp32", "tf32", "bf16-in", "bf16")]
    assert errs == sorted(errs) and errs[0] < 1e-4 < errs[-1]
    assert rows["fp32"]["topk_rows_changed"] == 0.0
    assert rows["tf32"]["seconds"] is None and rows["fp32"]["seconds"] > 0  # CPU: values only
    assert main(["--parts", "2", "--rows", "18", "--memory", "200", "--dim", "32",
                 "--repeats", "1"]) == 0  # fmt: skip
    assert "| bf16-in | - |" in capsys.readouterr().out


@pytest.mark.slow
def test_training_loop_quick_projects_both_stages(bench, tmp_path, capsys):
    import training_loop

    from uvireid.data.transforms import Augmenter
    from uvireid.engine.trainer import Trainer

    before = (Augmenter.__call__, Trainer.step, Trainer.train_epoch)
    out = tmp_path / "loop.json"
    args = ["--quick", "--iters", "2", "--epochs", "1", "--dcl-epochs", "1", "--out",
            str(tmp_path), "--json", str(out), "--phases"]  # fmt: skip
    assert training_loop.main(args) == 0
    # --phases wrapped the trainer's methods for the run only
    assert (Augmenter.__call__, Trainer.step, Trainer.train_epoch) == before
    text = capsys.readouterr().out
    rows = {
        line.split("|")[1].strip(): float(line.split("|")[2])
        for line in text.split("phases of epoch 1 (2 steps")[1].splitlines()[3:12]
    }
    assert list(rows) == [*training_loop.PhaseTimer.PHASES, "other", "whole step"]
    phases = sum(v for k, v in rows.items() if k not in ("other", "whole step"))
    # the table prints 2 decimals: its 8 summed rows carry up to 8 x 0.005 of rounding
    assert rows["other"] >= 0
    assert phases + rows["other"] == pytest.approx(rows["whole step"], abs=0.045)
    assert min(rows["augment"], rows["forward"], rows["backward"], rows["updates"]) > 0
    doc = json.loads(out.read_text())
    assert {r["stage"] for r in doc["rows"]} == {"dcl", "salcr"}
    assert set(doc["bare"]) == {"dcl", "salcr"} and all(v > 0 for v in doc["bare"].values())
    assert doc["pseudo_labels"]["n_v"] > 0 and doc["pseudo_labels"]["cluster"] > 0
    assert doc["evaluation"]["reranked"] > 0 and doc["hours"] > 0
    assert "projected salcr.yaml" in text


def test_association_trace_figures_against_a_loop(bench):
    """``association_bound.py trace``: nearest-centroid links, train rank-1 and assigned
    labels of one epoch, against loops over clusters and images."""
    import numpy as np
    import torch
    from association_bound import cross_signal

    from uvireid.losses.contract import EpochLabels

    rng = np.random.default_rng(0)
    gv, gr = rng.integers(0, 4, 30), rng.integers(0, 4, 20)
    centres = rng.normal(size=(4, 8))
    fv = torch.tensor(centres[gv] + 0.8 * rng.normal(size=(30, 8)))
    fr = torch.tensor(centres[gr] + 0.8 * rng.normal(size=(20, 8)))
    lv = np.where(rng.random(30) < 0.9, gv % 3, -1)  # clusters that merge people
    lr = np.where(rng.random(20) < 0.9, gr, -1)
    ir_in_v = np.where(lr >= 0, rng.integers(0, 3, 20), -1)
    lab = EpochLabels(
        vis_in_v=lv,
        vis_in_r=np.full(30, -1),
        ir_in_r=lr,
        ir_in_v=ir_in_v,
        init_v=lv,
        init_r=lr,
        num_v=3,
        num_r=4,
    )
    got = cross_signal(fv, fr, lab, gv, gr)

    def unit(x):
        return x / np.linalg.norm(x)

    a, b = fv.numpy(), fr.numpy()
    owner_v = {c: np.bincount(gv[lv == c]).argmax() for c in set(lv[lv >= 0].tolist())}
    owner_r = {c: np.bincount(gr[lr == c]).argmax() for c in set(lr[lr >= 0].tolist())}
    cent_v = {c: unit(np.mean([unit(x) for x in a[lv == c]], 0)) for c in owner_v}
    hits = []
    for c in owner_r:
        cr = unit(np.mean([unit(x) for x in b[lr == c]], 0))
        best = max(cent_v, key=lambda v: float(cent_v[v] @ cr))
        hits.append(owner_v[best] == owner_r[c])
    assert got["centroid_links"] == pytest.approx(np.mean(hits))
    r1 = [
        gv[max(range(30), key=lambda j: float(unit(a[j]) @ unit(b[i])))] == gr[i] for i in range(20)
    ]
    assert got["train_r1"] == pytest.approx(np.mean(r1))
    assigned = [owner_v.get(int(y)) == gr[i] for i, y in enumerate(ir_in_v) if y >= 0]
    assert got["assigned"] == pytest.approx(np.mean(assigned))


def test_ablation_seed_table_is_each_rows_mean_and_std_over_seeds(bench):
    """``ablation_synthetic.py --seeds``: per row, the mean and the (population) standard
    deviation of the seeds' mAP, against the statistics module."""
    import statistics

    from ablation_synthetic import main, seed_table

    maps = {"DCL": [30.0, 34.5, 31.0], "+GPCR": [40.0, 45.5, 47.0]}
    cmfp = {"DCL": [31.0, 35.0, 33.0], "+GPCR": [44.0, 41.0, 50.5]}
    results = [
        {"name": n, "seed": s, "eval": {"none": {"mAP": maps[n][i]}, "cmfp": {"mAP": cmfp[n][i]}}}
        for i, s in enumerate((1, 2, 3))
        for n in maps
    ]
    table = seed_table(results, ["DCL", "+GPCR"], 61.2).splitlines()
    for name in maps:
        (line,) = [x for x in table if x.startswith(f"| {name} |")]
        m, c = maps[name], cmfp[name]
        assert f"{statistics.mean(m):.1f} +- {statistics.pstdev(m):.1f}" in line
        assert f"{statistics.mean(c):.1f} +- {statistics.pstdev(c):.1f}" in line
        assert f"{100 * statistics.mean(m) / 61.2:.0f} %" in line and "| 1, 2, 3 |" in line
    with pytest.raises(SystemExit):  # a seed both ways is refused before any training
        main(["--seeds", "1,2", "seed=3"])
    with pytest.raises(SystemExit):
        main(["--seeds", "1,x"])
    with pytest.raises(SystemExit):  # a row name that does not exist trained nothing, rc 0
        main(["--only", "DCL + DAGL"])


def test_gpu_session_script_parses_and_has_every_step_its_header_names():
    """A device session runs ``STEPS="..." bash benchmarks/gpu_session.sh``: a step name
    that no ``run`` line defines would be skipped silently, on scarce GPU time."""
    import re
    import shutil
    import subprocess

    script = BENCH / "gpu_session.sh"
    text = script.read_text()
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    defined = set(re.findall(r"^run (\w+) \d+ ", text, flags=re.M))
    header = re.search(r'next device session \(after session \d+\): STEPS="([^"]+)"', text)
    assert header, "the header names the next device session's steps"
    named = [w for w in header.group(1).split() if w != "#"]  # the comment may wrap
    assert named and set(named) <= defined, set(named) - defined


def test_pseudo_labels_prints_the_header_of_the_table_it_measures(bench, monkeypatch, capsys):
    """Audit BN: the clustering table's rows were printed without the header naming its
    twelve columns (RESULTS.md quotes them by name). Run in this process (its imports
    cost 6 s in a new one), its measurement in the child it spawns as always."""
    import logging

    import pseudo_labels

    argv = ["pseudo_labels.py", "--part", "clustering", "--sizes", "500", "--no-reference"]
    monkeypatch.setattr(sys, "argv", argv)
    quiet = logging.getLogger("uvireid")
    level = quiet.level
    try:
        pseudo_labels.main()
    finally:
        quiet.setLevel(level)  # the script turns uvireid's logging off
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| N | kNN floor s |"), rows[:2]
    assert len(rows) == 3 and rows[2].startswith("| 500 |")
    assert len(rows[0].split("|")) == len(rows[2].split("|"))


def test_match_speed_compares_equal_ranks(bench, capsys):
    """match_speed.py's two rankings agree (its last column): a gallery larger than
    ``--top`` and one smaller."""
    import match_speed

    try:
        assert match_speed.main(["--sizes", "30x200,5x7", "--dim", "8", "--top", "10"]) == 0
    finally:
        sys.modules.pop("match_speed", None)
    rows = [
        ln
        for ln in capsys.readouterr().out.splitlines()
        if ln.startswith("| 30 ") or ln.startswith("| 5 ")
    ]
    assert len(rows) == 2 and all(r.rstrip(" |").endswith("True") for r in rows)


def test_rerank_speed_references_agree_with_uvireid_at_small_sizes(bench, capsys):
    """rerank_speed.py --quick: each re-statement of a reference (CMFP's official path,
    Zhong's k-reciprocal, MULT's cross-modality re-ranking) gives uvireid's output, to
    float precision (CMRR: to its original's float16 arrays), and a time for both sides."""
    import rerank_speed

    try:
        assert rerank_speed.main(["--quick", "--threads", "1", "--repeat", "1",
                                  "--only", "cmfp,kreciprocal,cmrr"]) == 0  # fmt: skip
    finally:
        sys.modules.pop("rerank_speed", None)
    rows = {r["name"].split()[0]: r for r in rerank_speed.ROWS if "diff" in r and r["ref_s"]}
    assert rows["CMFP(te)"]["diff"] < 1e-5 and rows["k-reciprocal"]["diff"] < 1e-5
    assert rows["CMRR"]["diff"] < 0.05  # float16 V and Jaccard in the original
    assert all(r["ref_s"] > 0 and r["ours_s"] > 0 for r in rows.values())


def test_eval_speed_loop_equals_the_vectorised_evaluation(bench, capsys):
    """eval_speed.py --quick: the per-query loop and eval_sysu agree on every trial."""
    import eval_speed

    try:
        assert eval_speed.main(["--quick"]) == 0
    finally:
        sys.modules.pop("eval_speed", None)
    import re

    out = capsys.readouterr().out
    found = re.search(r"max \|diff\| \(cmc, mAP, mINP\) (\S+)", out)
    assert found and float(found.group(1)) < 1e-6, out
