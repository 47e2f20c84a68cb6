"""Where an epoch's time goes: the whole training loop against the bare training step.

    python benchmarks/training_loop.py --device cuda [--amp] [--ids 500] [--iters 100]
                                       [--cuda-graphs] [--tf32] [--phases]
    python benchmarks/training_loop.py --quick            # CPU, tiny, checks the script

Issue 5 item 9: run the SALCR recipe's parts (two-stream ResNet-50 at 288x144, the salcr
stage's losses and sampler) on the embedded synthetic dataset through the real engine
(``uvireid.engine``: extract -> cluster -> associate -> reset memories -> train),
``--dcl-epochs`` short DCL epochs (clusters from random weights) then ``--epochs``
SALCR-stage epochs, and in the same process time the bare step (the backbone's forward +
backward + Adam on random images, at each stage's batch size, no data loading, no losses
beyond DAGL). The projection takes each stage's last epoch: the first epoch at a batch
shape pays cuDNN's autotuning and the allocator's growth.
It prints, per stage, each phase's share of the epoch, the training phase's images/s
against the bare step's (goal >= 70 %), the share of extract + cluster + associate
(goal <= 25 %), and a projection of a full ``salcr.yaml`` run at SYSU-MM01 size (22,258 +
11,909 training images, 300 iterations x 40 DCL + 40 SALCR epochs). The DCL epoch runs
with ``salcr.yaml``'s DCL batch (12 labels x 12 images per modality), so the projection
takes each stage's own per-iteration time; the extraction is the measured per-image rate;
clustering and association are timed at SYSU size directly, on the device, with
``salcr.yaml``'s clusterer and associator on synthetic features of SYSU's counts (d = 2048;
:func:`pseudo_labels.gaussian_modalities`), not extrapolated from the small run. Random
weights throughout: this measures speed, not accuracy (``--quick``: ResNet-18 at 64x32, a
few iterations, the pseudo-labels at a twentieth of SYSU size). ``salcr.yaml`` evaluates every
epoch, so the projection adds one evaluation per epoch: the test set's extraction at the
measured rate and the protocol's ten trials with and without CMFP(te) at SYSU-MM01 test
size, timed on synthetic features of its counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pseudo_labels import gaussian_modalities  # noqa: E402  (benchmarks/, as below)
from training_overhead import build_steps  # noqa: E402  (benchmarks/, this script's folder)

from uvireid.config import load_recipe  # noqa: E402
from uvireid.engine.runner import run_recipe  # noqa: E402
from uvireid.registry import ASSOCIATORS, CLUSTERERS  # noqa: E402

SYSU_TRAIN = (22258, 11909)
SYSU_ITERS, SYSU_EPOCHS = 300, (40, 40)


def bare_step_rate(arch, height, width, s, device, amp, steps):
    """Images/s of forward + DAGL + backward + Adam on random images (3 s per step): the
    plain step of ``training_overhead.py``, with memories sized to the batch."""
    step, _, _ = build_steps(arch, height, width, s, 3, 4 * s, 2 * s, device, amp=amp, images=4)
    for _ in range(2 if steps > 1 else 1):  # warm-up (one for --quick's single step)
        step(False)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(False)  # synchronises on CUDA
    return 3 * s * steps / (time.perf_counter() - t0)


def sysu_pseudo_label_seconds(device, scale: float = 1.0) -> dict:
    """Seconds of ``salcr.yaml``'s clusterer (both modalities) and associator on synthetic
    features of SYSU-MM01's training counts (times ``scale``), d = 2048, on ``device``
    (best of two runs, after a warm-up)."""
    ref = load_recipe("salcr")
    ids = max(20, round(395 * scale))
    fv, _, fr, _ = gaussian_modalities(seed=0, ids=ids, per_v=56, per_r=30, d=2048)
    xv = torch.from_numpy(fv).float().to(device)
    xr = torch.from_numpy(fr).float().to(device)

    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    best = {"cluster": float("inf"), "associate": float("inf")}
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        lv = CLUSTERERS.build(ref["clusterer"]).fit_predict(xv)
        lr = CLUSTERERS.build(ref["clusterer"]).fit_predict(xr)
        sync()
        t1 = time.perf_counter()
        ASSOCIATORS.build(ref["associator"]).associate(xv, lv, xr, lr)
        sync()
        t2 = time.perf_counter()
        best["cluster"] = min(best["cluster"], t1 - t0)
        best["associate"] = min(best["associate"], t2 - t1)
    best.update(n_v=len(fv), n_r=len(fr), k_v=int(lv.max()) + 1, k_r=int(lr.max()) + 1)
    return best


SYSU_TEST = (3803, 6775)  # infrared queries, visible test images (all-search)


def sysu_evaluation_seconds(device, per_image_extract: float, scale: float = 1.0) -> dict:
    """Seconds of one evaluation of ``salcr.yaml`` at SYSU-MM01 test size: the test set's
    extraction (flip-averaged: twice the measured per-image rate) and the protocol's
    ten trials without and with the recipe's re-ranker (CMFP(te), on ``device`` as the
    trainer runs it), on synthetic features of the real counts (96 identities, d = 2048;
    infrared queries from cameras 3 and 6, visible images from 1, 2, 4, 5; ``scale``
    shrinks the counts, for ``--quick``)."""
    from uvireid.evaluation.protocols import run_protocol
    from uvireid.features import Features
    from uvireid.registry import RERANKERS
    from uvireid.rerank import OnDevice

    ref = load_recipe("salcr")
    ev = ref["evaluation"]
    rng = np.random.default_rng(0)
    nq, ng = (max(40, round(n * scale)) for n in SYSU_TEST)
    ids = max(10, round(96 * scale))
    pids = np.concatenate([rng.integers(0, ids, nq), rng.integers(0, ids, ng)])
    cams = np.concatenate([rng.choice([3, 6], nq), rng.choice([1, 2, 4, 5], ng)])
    centres = rng.normal(size=(ids, 2048))
    feats = centres[pids] + rng.normal(size=(nq + ng, 2048))
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    modality = np.concatenate([np.ones(nq, np.int64), np.zeros(ng, np.int64)])
    bank = Features(feats, pids.astype(np.int64), cams.astype(np.int64), modality)
    kwargs = dict(trials=ev["trials"], shot=ev["shot"], sampler=ev["sampler"])
    reranker = OnDevice(RERANKERS.build(ref["reranker"]), str(device))
    run_protocol(bank, ev["protocol"], reranker=reranker, trials=1)  # warm-up
    t0 = time.perf_counter()
    run_protocol(bank, ev["protocol"], **kwargs)
    t1 = time.perf_counter()
    run_protocol(bank, ev["protocol"], reranker=reranker, **kwargs)
    t2 = time.perf_counter()
    return {
        "images": nq + ng,
        "extract": 2 * per_image_extract * (nq + ng),
        "protocol": t1 - t0,
        "reranked": t2 - t1,
    }


class PhaseTimer:
    """Where a training step's time goes, phase by phase, in one chosen epoch (``--phases``):
    the trainer's own methods wrapped for the run (the augmentation, the targets, the
    model's forward, the losses, the backward pass, the optimiser step, the memory
    updates, and the whole step; "other" is the step's rest), each timed on the host
    (``perf_counter``) and, on CUDA, on the device's stream (events around it, read after
    the epoch: time between them in stream order, idle gaps included, so a phase the host
    is slow to queue reads long on both). The timing itself adds two event records per
    phase and step to the timed epoch."""

    PHASES = ("augment", "targets", "forward", "losses", "backward", "optimizer", "updates")

    def __init__(self, epoch: int, cuda: bool):
        self.epoch, self.cuda = epoch, cuda
        self.on = self.active = False
        self.marks: dict[str, list] = {p: [] for p in ("step", *self.PHASES)}
        self.steps = 0

    def start(self):
        """A phase's start mark: (host time, CUDA event or None), None when not timing."""
        if not self.on:
            return None
        ev = None
        if self.cuda:
            ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            ev[0].record()
        return time.perf_counter(), ev

    def stop(self, phase: str, mark) -> None:
        if mark is None:
            return
        host = time.perf_counter() - mark[0]
        if mark[1] is not None:
            mark[1][1].record()
        self.marks[phase].append((host, mark[1]))

    def timed(self, phase: str, fn):
        def run(*args, **kwargs):
            mark = self.start()
            try:
                return fn(*args, **kwargs)
            finally:
                self.stop(phase, mark)

        return run

    def hooked(self, phase: str, register_pre, register_post) -> None:
        """Time a phase through a pre- and a post-hook (a module's forward, an optimiser's
        step: wrapping those methods would hide them from their own machinery)."""
        pending = []
        register_pre(lambda *a, **k: pending.append(self.start()))
        register_post(lambda *a, **k: self.stop(phase, pending.pop()) if pending else None)

    def install(self) -> None:
        """Wrap the trainer's methods (for this process: a benchmark's run)."""
        from uvireid.data.transforms import Augmenter
        from uvireid.engine import trainer as tm

        timer = self
        self.undo = [
            (owner, name, getattr(owner, name))
            for owner, name in (
                (Augmenter, "__call__"),
                (tm.Trainer, "_targets"),
                (tm.Trainer, "step"),
                (tm.Trainer, "_loss_terms"),
                (tm.Trainer, "train_epoch"),
                (torch.Tensor, "backward"),
            )
        ]
        Augmenter.__call__ = self.timed("augment", Augmenter.__call__)
        tm.Trainer._targets = self.timed("targets", tm.Trainer._targets)
        step = self.timed("step", tm.Trainer.step)

        def stepped(*args, **kwargs):  # phases count inside the chosen epoch's steps only
            if not timer.active:
                return step(*args, **kwargs)
            timer.on, timer.steps = True, timer.steps + 1
            try:
                return step(*args, **kwargs)
            finally:
                timer.on = False

        tm.Trainer.step = stepped
        loss_terms = tm.Trainer._loss_terms
        tm.Trainer._loss_terms = lambda tr, st, losses: self.timed(
            "losses", loss_terms(tr, st, losses)
        )
        torch.Tensor.backward = self.timed("backward", torch.Tensor.backward)
        epoch_fn = tm.Trainer.train_epoch

        def train_epoch(tr, epoch):
            if not getattr(tr, "_phase_hooks", False):
                tr._phase_hooks = True
                opt, model = tr.optimizer, tr.ddp_model
                self.hooked("optimizer", opt.register_step_pre_hook, opt.register_step_post_hook)
                self.hooked("forward", model.register_forward_pre_hook, model.register_forward_hook)
                for st in tr.stages:
                    for loss in tr.losses_of(st):
                        if hasattr(loss, "update"):
                            loss.update = self.timed("updates", loss.update)
            timer.active = epoch == timer.epoch
            try:
                return epoch_fn(tr, epoch)
            finally:
                timer.active = False

        tm.Trainer.train_epoch = train_epoch

    def uninstall(self) -> None:
        """Put the wrapped methods back (the trainer's instances keep their wrappers)."""
        for owner, name, fn in reversed(getattr(self, "undo", [])):
            setattr(owner, name, fn)
        self.undo = []

    def table(self) -> list[str]:
        if self.cuda:
            torch.cuda.synchronize()
        n = max(self.steps, 1)

        def total(phase: str) -> tuple[float, float | None]:
            marks = self.marks[phase]
            host = sum(h for h, _ in marks) / n
            dev = (
                sum(e[0].elapsed_time(e[1]) / 1e3 for _, e in marks if e) / n if self.cuda else None
            )
            return host, dev

        whole = total("step")
        rows = [
            f"phases of epoch {self.epoch} ({self.steps} steps; ms per step; device = between "
            f"CUDA events on the stream)",
            "| phase | host ms | device ms | share of the step (host) |",
            "|---|---:|---:|---:|",
        ]
        rest_h, rest_d = whole[0], whole[1]
        for phase in self.PHASES:
            h, d = total(phase)
            rest_h -= h
            if d is not None:
                rest_d -= d
            ds = "-" if d is None else f"{1e3 * d:.2f}"
            rows.append(
                f"| {phase} | {1e3 * h:.2f} | {ds} | {100 * h / max(whole[0], 1e-12):.0f} % |"
            )
        ds = "-" if rest_d is None else f"{1e3 * rest_d:.2f}"
        rows.append(
            f"| other | {1e3 * rest_h:.2f} | {ds} | {100 * rest_h / max(whole[0], 1e-12):.0f} % |"
        )
        ds = "-" if whole[1] is None else f"{1e3 * whole[1]:.2f}"
        rows.append(f"| whole step | {1e3 * whole[0]:.2f} | {ds} | 100 % |")
        return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="ResNet-18, 64x32, a few iterations")
    ap.add_argument("--arch", default=None)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--ids", type=int, default=None, help="synthetic identities (a fifth test)")
    ap.add_argument("--iters", type=int, default=None, help="iterations per epoch")
    ap.add_argument("--epochs", type=int, default=2, help="SALCR-stage epochs")
    ap.add_argument("--dcl-epochs", type=int, default=2, help="DCL-stage epochs")
    ap.add_argument(
        "--amp", action="store_true", help="bf16 autocast (CUDA, or a CPU with native bf16)"
    )
    ap.add_argument(
        "--compile-losses", action="store_true", help="train.compile_losses (torch.compile)"
    )
    ap.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="train.cuda_graphs (the losses replayed as CUDA graphs)",
    )
    ap.add_argument(
        "--tf32", action="store_true", help="train.tf32 (float32 products in TF32 on CUDA)"
    )
    ap.add_argument(
        "--phases",
        action="store_true",
        help="time each phase of the last epoch's training steps (host, and device on CUDA)",
    )
    ap.add_argument("--out", default=None, help="run folder parent (default: a temp dir)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    quick = args.quick
    arch = args.arch or ("resnet18" if quick else "resnet50")
    height = args.height or (64 if quick else 288)
    width = args.width or (32 if quick else 144)
    ids = args.ids or (20 if quick else 500)
    iters = args.iters or (4 if quick else 100)
    device = torch.device(args.device)
    out = args.out or tempfile.mkdtemp(prefix="uvireid-loop-")
    overrides = [
        f"output_dir={out}",
        f"device={args.device}",
        f"data.ids={ids}",
        f"backbone.arch={arch}",
        "backbone.pretrained=false",
        "backbone.share_from=layer1",  # two streams, as salcr.yaml
        f"train.height={height}",
        f"train.width={width}",
        f"train.pad={max(2, height // 28)}",
        f"train.amp={'true' if args.amp else 'false'}",
        f"train.compile_losses={'true' if args.compile_losses else 'false'}",
        f"train.cuda_graphs={'true' if args.cuda_graphs else 'false'}",
        f"train.tf32={'true' if args.tf32 else 'false'}",
        f"stages.0.epochs={args.dcl_epochs}",
        f"stages.0.iters_per_epoch={iters}",
        # salcr.yaml's DCL batch: 12 labels x 12 images (--quick: 4 x 4, a check of the
        # script, whose rates are no figures)
        f"stages.0.sampler.ids={4 if quick else 12}",
        f"stages.0.sampler.images={4 if quick else 12}",
        f"stages.1.epochs={args.epochs}",
        f"stages.1.iters_per_epoch={iters}",
        "stages.1.losses.1.num_parts=3",
        "stages.1.losses.2.num_parts=3",
        "stages.1.losses.2.k=30",
        "evaluation.every=0",
        "evaluation.at_start=false",
    ]
    if device.type == "cpu":
        overrides.append("train.threads=1" if quick else f"train.threads={os.cpu_count()}")
    cfg = load_recipe("demo", overrides)
    salcr_batch = cfg["stages"][-1]["sampler"]
    reps = 1 if quick else 20  # --quick checks the script; its rates are not figures
    if cfg["train"]["threads"] > 0:  # as the run will set them (and leave them)
        torch.set_num_threads(int(cfg["train"]["threads"]))
    # the bare SALCR-batch step also before the run: a host-bound step moves with the
    # host's speed, which drifted by 17 % between two processes on one H100 machine
    bare_before = bare_step_rate(
        arch, height, width, salcr_batch["ids"] * salcr_batch["images"], device, args.amp, reps
    )
    timer = None
    if args.phases:
        timer = PhaseTimer(args.dcl_epochs + args.epochs - 1, device.type == "cuda")
        timer.install()
    t0 = time.perf_counter()
    try:
        folder = run_recipe(cfg, progress=False)
    finally:
        if timer is not None:
            timer.uninstall()
    wall = time.perf_counter() - t0
    lines = [m for m in folder.read_metrics() if m.get("epoch", -1) >= 0 and "seconds" in m]
    batch = {  # images per modality and step (the visible ones also pass as CA views)
        st["name"]: st["sampler"]["ids"] * st["sampler"]["images"] for st in cfg["stages"]
    }
    bare_of = {
        name: bare_step_rate(arch, height, width, n, device, args.amp, reps)
        for name, n in batch.items()
    }
    bare = bare_of["salcr"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  {name}, {os.cpu_count()} cores, "
        f"{arch} {height}x{width}, {'bf16' if args.amp else 'fp32'}"
        f"{', losses compiled' if args.compile_losses else ''}"
        f"{', losses as CUDA graphs' if args.cuda_graphs else ''}"
        f"{', TF32 products' if args.tf32 else ''}, {ids} synthetic ids, "
        f"{iters} iterations/epoch; run folder {folder.path}; wall {wall:.1f} s"
    )
    print(
        "bare training step: "
        + ", ".join(f"{bare_of[n]:.1f} images/s at batch 3 x {batch[n]} ({n})" for n in batch)
    )
    print(
        "| epoch | stage | extract | cluster | associate | train | e+c+a share | train img/s | vs bare |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for m in lines:
        sec = m["seconds"]
        phases = {p: sec.get(p, 0.0) for p in ("extract", "cluster", "associate", "train")}
        total = sum(phases.values())
        prep = (phases["extract"] + phases["cluster"] + phases["associate"]) / max(total, 1e-9)
        rate = m.get("images_per_s", 0.0)
        rows.append({"epoch": m["epoch"], "stage": m.get("stage"), **phases, "rate": rate})
        print(
            f"| {m['epoch']} | {m.get('stage')} | {phases['extract']:.1f} | "
            f"{phases['cluster']:.1f} | {phases['associate']:.1f} | {phases['train']:.1f} | "
            f"{100 * prep:.0f} % | {rate:.1f} | "
            f"{100 * rate / bare_of.get(m.get('stage'), bare):.0f} % |"
        )
    salcr = [r for r in rows if r["stage"] == "salcr"] or rows
    dcl = [r for r in rows if r["stage"] == "dcl"] or rows
    print(
        f"bare step at the SALCR batch before / after the run: {bare_before:.1f} / "
        f"{bare:.1f} images/s; the last SALCR epoch against each: "
        f"{100 * salcr[-1]['rate'] / bare_before:.0f} % / {100 * salcr[-1]['rate'] / bare:.0f} %"
    )
    if timer is not None:
        print("\n".join(timer.table()))
    n_train = sum(folder_counts(folder))
    per_img_extract = salcr[-1]["extract"] / max(n_train, 1)
    n_sysu = sum(SYSU_TRAIN)
    scale = 0.05 if quick else 1.0  # --quick: 20 ids, the least the synthetic features take
    part = "a twentieth of " if quick else ""
    pl = sysu_pseudo_label_seconds(device, scale)
    print(
        f"pseudo-labels at {part}SYSU size on {device.type} "
        f"({pl['n_v']} visible + {pl['n_r']} infrared synthetic features, d=2048; "
        f"{pl['k_v']} / {pl['k_r']} clusters): salcr.yaml's clusterer {pl['cluster']:.2f} s "
        f"(both modalities), associator {pl['associate']:.2f} s"
    )
    ev = sysu_evaluation_seconds(device, per_img_extract, scale)
    eval_s = ev["extract"] + ev["protocol"] + ev["reranked"]
    print(
        f"evaluation at {part}SYSU-MM01 test size ({ev['images']} "
        f"images; salcr.yaml evaluates "
        f"every epoch): extract {ev['extract']:.1f} s (flip-averaged, from the measured "
        f"rate), 10 trials {ev['protocol']:.2f} s, with CMFP(te) on {device.type} "
        f"{ev['reranked']:.2f} s"
    )
    extract_s = per_img_extract * n_sysu
    train_dcl = dcl[-1]["train"] / iters * SYSU_ITERS
    train_salcr = salcr[-1]["train"] / iters * SYSU_ITERS
    epoch_dcl = extract_s + pl["cluster"] + train_dcl + eval_s
    epoch_salcr = extract_s + pl["cluster"] + pl["associate"] + train_salcr + eval_s
    total_h = (epoch_dcl * SYSU_EPOCHS[0] + epoch_salcr * SYSU_EPOCHS[1]) / 3600
    print(
        f"projected salcr.yaml at SYSU-MM01 size ({n_sysu} training images, {SYSU_ITERS} "
        f"iterations x {SYSU_EPOCHS[0]} + {SYSU_EPOCHS[1]} epochs, evaluated every epoch): "
        f"DCL epoch {epoch_dcl:.0f} s (extract {extract_s:.0f}, cluster {pl['cluster']:.1f}, "
        f"train {train_dcl:.0f}, evaluate {eval_s:.1f}), SALCR epoch {epoch_salcr:.0f} s "
        f"(associate {pl['associate']:.1f}, train {train_salcr:.0f}) -> {total_h:.2f} h "
        f"(goal <= 1 h on one GPU)"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "device": name,
                    "bare": bare_of,
                    "bare_salcr_before": bare_before,
                    "rows": rows,
                    "pseudo_labels": pl,
                    "evaluation": ev,
                    "hours": total_h,
                },
                fh,
            )
    return 0


def folder_counts(folder) -> tuple[int, int]:
    """Visible and infrared training images of the run (from an associated epoch)."""
    for m in folder.read_metrics():
        a = m.get("association") or {}
        if "n_v" in a:
            return int(a["n_v"]), int(a["n_r"])
    return 0, 0


if __name__ == "__main__":
    raise SystemExit(main())
