"""What the cross-modal association costs SALCR on the synthetic dataset.

    python benchmarks/association_bound.py oracle [OVERRIDE ...]
    python benchmarks/association_bound.py sweep CHECKPOINT [OVERRIDE ...]
    python benchmarks/association_bound.py cross-prior [OVERRIDE ...]
    python benchmarks/association_bound.py trace [OVERRIDE ...]

``oracle`` trains the demo recipe (with the given ``key=value`` overrides, e.g.
``seed=1 evaluation.every=1``) with ground-truth cross-modal links: each epoch the
clusterer's own clusters are kept, and every clustered image is given, in the other
modality's label space, the cluster that holds most of its identity's images there
(what a perfect associator would link). Everything else is the recipe's: the clusters,
the losses, the schedule. Its mAP against the demo's shows how much of the gap to the
supervised bound is the association's.

``sweep`` restores a demo checkpoint (e.g. the last one of ``uvireid run demo
stages.1.epochs=0``, taken at the start of the SALCR stage), extracts the training
features once and reports the pseudo-label quality (ARI against the identities) of
several associators and settings on them: a cheap way to compare associators without
training. Besides ARI it prints the links' precision (the share of linked
visible-infrared instance pairs that are one person): ARI over all instances is
dominated by the pairs within a modality, the precision is the links alone.

``cross-prior`` trains the demo from a start that already carries some cross-modal
signal, as ImageNet weights do on real data: the ``synthetic-visible`` prior's recipe
with the **infrared** images of its 300 people added (their identities shared across the
modalities; still no person of the demo's dataset). The prior is cached under
``<cache>/cross-prior/``, apart from the demo's. It shows whether the SALCR stage lifts a
start like that further than the visible-only one.

``trace`` trains the demo (with the overrides; ``backbone.pretrained=cross-prior`` starts
from that prior) and prints, each epoch, how much cross-modal signal the training
features carry: ``centroid links``, the share of infrared clusters whose nearest visible
cluster centroid (cosine) belongs to the same person (majority identities; chance is
about 1 / the number of clusters); the training set's IR->RGB rank-1 over single images;
and, in the SALCR stage, ``assigned``, the share of clustered infrared images whose
associated visible label is a cluster of their own identity.

All need the synthetic dataset's ground truth (``UVIREID_CACHE`` as for the demo).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import Counter

import numpy as np

from uvireid.config import load_recipe
from uvireid.engine import trainer as trainer_mod
from uvireid.engine.runner import run_recipe
from uvireid.registry import DATASETS

SWEEP = [
    {"type": "otla_dual", "lambda_ot": 5.0, "k_tr": 10},  # the demo's
    {"type": "otla_dual", "lambda_ot": 5.0, "k_tr": None},
    {"type": "otla_dual", "lambda_ot": 5.0, "k_tr": 30},
    {"type": "otla_dual", "lambda_ot": 2.0, "k_tr": 10},
    {"type": "otla_dual", "lambda_ot": 10.0, "k_tr": 10},
    {"type": "otla_dual", "lambda_ot": 25.0, "k_tr": 10},
    {"type": "otla_dual", "lambda_ot": 5.0, "k_tr": 10, "normalize_centroids": True},
    {"type": "pgm", "k_tr": 10},
    {"type": "pgm", "k_tr": None},
    {"type": "mbccm", "k_tr": 10},
]


def majority_cluster(labels: np.ndarray, pids: np.ndarray) -> dict[int, int]:
    """Identity -> the cluster (label >= 0) holding most of its images."""
    per_pid: dict[int, Counter] = {}
    for lab, pid in zip(labels.tolist(), pids.tolist()):
        if lab >= 0:
            per_pid.setdefault(pid, Counter())[lab] += 1
    return {pid: c.most_common(1)[0][0] for pid, c in per_pid.items()}


def oracle_links(trainer, lab):
    """``lab`` with its cross-modal labels replaced by the ground-truth links."""
    gv = np.array([r.pid for r in trainer.vis])
    gr = np.array([r.pid for r in trainer.ir])
    lv, lr = lab.init_v, lab.init_r
    to_v, to_r = majority_cluster(lv, gv), majority_cluster(lr, gr)
    lab.vis_in_v, lab.ir_in_r = lv.copy(), lr.copy()
    lab.ir_in_v = np.array([to_v.get(p, -1) if y >= 0 else -1 for y, p in zip(lr, gr)])
    lab.vis_in_r = np.array([to_r.get(p, -1) if y >= 0 else -1 for y, p in zip(lv, gv)])
    lab.has_cross = True
    return lab


def train_demo(overrides: list[str], hook=None):
    """Train the demo recipe with ``overrides``; ``hook(trainer, stage, fv, fr, labels)``,
    when given, sees (and may replace) each epoch's pseudo-labels. Returns the run folder."""
    original = trainer_mod.Trainer.pseudo_labels

    def hooked(self, stage, fv, fr, seconds):
        lab = original(self, stage, fv, fr, seconds)
        return lab if hook is None else hook(self, stage, fv, fr, lab)

    trainer_mod.Trainer.pseudo_labels = hooked
    try:
        folder = run_recipe(load_recipe("demo", overrides), progress=False)
    finally:
        trainer_mod.Trainer.pseudo_labels = original
    print(f"run folder: {folder.path}")
    return folder


def print_evals(folder, extra=lambda quality: "") -> None:
    """Each evaluated epoch's IR->RGB mAP (and re-ranked), with ``extra(label_quality)``."""
    for m in folder.read_metrics():
        ev = m.get("eval")
        if isinstance(ev, dict) and "none" in ev:
            from uvireid.viz.curves import eval_means

            ev = {k: eval_means(v) or {} for k, v in ev.items()}
            rr = {k: round(v["mAP"], 1) for k, v in ev.items() if k != "none"}
            text = extra(m.get("label_quality") or {})
            print(f"epoch {m['epoch']}: IR->RGB mAP {ev['none']['mAP']:.1f} {rr}{text}")


def run_oracle(overrides: list[str]) -> None:
    def with_oracle(trainer, stage, fv, fr, lab):
        return lab if stage.associator is None else oracle_links(trainer, lab)

    def cross_ari(q):
        cross = (q.get("cross_v") or {}).get("ari")
        return f"  cross_v ARI {cross:.3f}" if cross is not None else ""

    print_evals(train_demo(overrides, with_oracle), cross_ari)


def run_sweep(checkpoint: str, overrides: list[str]) -> None:
    cfg = load_recipe("demo", overrides)
    tr = trainer_mod.Trainer(cfg, DATASETS.build(cfg["data"]), "cpu", None, progress=False)
    tr.load_data()
    tr.restore(checkpoint)
    stage = tr.stage_at(tr.epoch)
    print(f"checkpoint {checkpoint}: next epoch {tr.epoch} (stage {stage.name})")
    fv, fr, _, _ = tr._extract_train(False)
    print(
        "| associator | visible ARI | infrared ARI | cross_v ARI | cross_r ARI | "
        "link precision | s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant in SWEEP:
        t0 = time.perf_counter()
        lab = tr.pseudo_labels(dataclasses.replace(stage, associator=variant), fv, fr, {})
        q = tr._quality(lab) or {}

        def ari(key, q=q):
            return f"{q[key]['ari']:.3f}" if key in q else "-"

        links = (q.get("links") or {}).get("link_precision")
        print(
            f"| {variant} | {ari('visible')} | {ari('infrared')} | {ari('cross_v')} | "
            f"{ari('cross_r')} | {'-' if links is None else f'{links:.3f}'} | "
            f"{time.perf_counter() - t0:.1f} |",
            flush=True,
        )


def cross_prior(cache: str) -> str:
    """The ``synthetic-visible`` recipe trained on the visible **and** infrared images of
    its population (both modalities under one identity label); its path."""
    import dataclasses as dc

    import uvireid.data.synthetic as synthetic
    from uvireid.models.prior import synthetic_visible_prior
    from uvireid.types import VISIBLE

    base = synthetic.SyntheticSYSU

    class BothModalities(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.train = [dc.replace(r, modality=VISIBLE) for r in self.train]
            self.test = [dc.replace(r, modality=VISIBLE) for r in self.test]

    synthetic.SyntheticSYSU = BothModalities
    try:
        return str(synthetic_visible_prior("resnet18", cache_dir=cache))
    finally:
        synthetic.SyntheticSYSU = base


def cross_prior_path() -> str:
    """The cross-modal prior in ``<cache>/cross-prior/``, trained on first use."""
    from uvireid.data.synthetic import cache_root

    return cross_prior(str(cache_root() / "cross-prior"))


def link_precision_text(q: dict) -> str:
    links = (q.get("links") or {}).get("link_precision")
    return f"  link precision {links:.3f}" if links is not None else ""


def run_cross_prior(overrides: list[str]) -> None:
    path = cross_prior_path()
    print(f"cross-modal prior: {path}")
    print_evals(train_demo([f"backbone.pretrained={path}", *overrides]), link_precision_text)


def _majority(labels: np.ndarray, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The clusters (labels >= 0) and the identity holding most of each one's images."""
    ks = np.unique(labels[labels >= 0])
    out = []
    for c in ks:
        ids, counts = np.unique(pids[labels == c], return_counts=True)
        out.append(ids[counts.argmax()])
    return ks, np.array(out, dtype=np.int64)


def cross_signal(fv, fr, lab, gv: np.ndarray, gr: np.ndarray) -> dict:
    """The ``trace`` figures of one epoch (see the module docstring)."""
    a = np.asarray(fv.float().cpu(), dtype=np.float64)
    b = np.asarray(fr.float().cpu(), dtype=np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    kv, pv = _majority(lab.init_v, gv)
    kr, pr = _majority(lab.init_r, gr)
    out = {"train_r1": float((gv[(b @ a.T).argmax(1)] == gr).mean())}
    if len(kv) and len(kr):
        cv = np.stack([a[lab.init_v == c].mean(0) for c in kv])
        cr = np.stack([b[lab.init_r == c].mean(0) for c in kr])
        cv /= np.linalg.norm(cv, axis=1, keepdims=True)
        cr /= np.linalg.norm(cr, axis=1, keepdims=True)
        out["centroid_links"] = float((pv[(cr @ cv.T).argmax(1)] == pr).mean())
    if lab.has_cross:
        owner = dict(zip(kv.tolist(), pv.tolist()))
        hit = [owner.get(int(y)) == int(p) for y, p in zip(lab.ir_in_v, gr) if y >= 0]
        out["assigned"] = float(np.mean(hit)) if hit else float("nan")
    return out


def run_trace(overrides: list[str]) -> None:
    if "backbone.pretrained=cross-prior" in overrides:
        path = cross_prior_path()
        overrides = [
            f"backbone.pretrained={path}" if o.endswith("=cross-prior") else o for o in overrides
        ]

    def traced(trainer, stage, fv, fr, lab):
        gv = np.array([r.pid for r in trainer.vis])
        gr = np.array([r.pid for r in trainer.ir])
        sig = cross_signal(fv, fr, lab, gv, gr)
        text = ", ".join(f"{k} {v:.3f}" for k, v in sig.items())
        print(f"epoch {trainer.epoch} ({stage.name}): {text}", flush=True)
        return lab

    print_evals(train_demo(overrides, traced))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    modes = ("oracle", "sweep", "cross-prior", "trace")
    if not args or args[0] not in modes or (args[0] == "sweep" and len(args) < 2):
        print(__doc__)
        return 2
    if args[0] == "oracle":
        run_oracle(args[1:])
    elif args[0] == "cross-prior":
        run_cross_prior(args[1:])
    elif args[0] == "trace":
        run_trace(args[1:])
    else:
        run_sweep(args[1], args[2:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
