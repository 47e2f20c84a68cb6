"""Bounds on the synthetic dataset: is its cross-modality problem real, and learnable?

    python benchmarks/synthetic_bounds.py [--quick] [--iters N] [--device cpu|cuda]

On the default synthetic dataset (``uvireid.data.synthetic.ensure_synthetic``) it scores,
with the SYSU-MM01 all-search protocol (infrared queries of the test ids, single-shot
visible gallery, 10 seeded trials, ``uvireid.evaluation.protocols.run_protocol``):

- chance (random features);
- colour-histogram and raw-pixel matching, IR->RGB, RGB->RGB and IR->IR (queries of one
  camera against a single-shot gallery of the other cameras of the same modality): colour
  must fail across modalities while it works within the visible one;
- a randomly initialised two-stream ResNet-18: near chance;
- a supervised upper bound: the two-stream ResNet-18 trained from scratch on the
  ground-truth identities of the train split (cross-entropy + batch-hard triplet +
  hetero-centre loss).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from uvireid.data.synthetic import ensure_synthetic, read_manifest
from uvireid.evaluation.metrics import evaluate
from uvireid.evaluation.protocols import run_protocol
from uvireid.features import Features
from uvireid.models.backbone import TwoStreamResNet
from uvireid.models.prior import batch_hard_triplet, warmup_cosine
from uvireid.types import INFRARED, VISIBLE


# -- data -------------------------------------------------------------------------------
def load_split(root: Path, split: str) -> dict[str, np.ndarray]:
    """Images of a split as arrays: images (N, H, W, 3) uint8, pids, cams, modality, paths."""
    ids_file = ["train_id.txt", "val_id.txt"] if split == "train" else ["test_id.txt"]
    pids: set[int] = set()
    for name in ids_file:
        text = (root / "exp" / name).read_text().replace(",", " ").split()
        pids |= {int(t) for t in text}
    recs = []
    for cam in range(1, 7):
        for pid in sorted(pids):
            d = root / f"cam{cam}" / f"{pid:04d}"
            if d.is_dir():
                recs += [(str(p), pid, cam) for p in sorted(d.glob("*.jpg"))]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _, _ in recs])
    cams = np.array([c for _, _, c in recs])
    return {
        "images": images,
        "pids": np.array([p for _, p, _ in recs]),
        "cams": cams,
        "modality": np.where(np.isin(cams, (3, 6)), INFRARED, VISIBLE),
        "paths": np.array([p for p, _, _ in recs]),
    }


def resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, height, width, 3) uint8, bilinear with antialiasing."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous().numpy()


def save_grid(data: dict, path: str, ids: int = 8, per: int = 4) -> None:
    """A PNG of ``per`` visible then ``per`` infrared images of the first ``ids`` people."""
    rows = []
    for pid in np.unique(data["pids"])[:ids]:
        row = []
        for mod in (VISIBLE, INFRARED):
            idx = np.flatnonzero((data["pids"] == pid) & (data["modality"] == mod))[:per]
            row += [data["images"][i] for i in idx]
            row += [np.zeros_like(data["images"][0])] * (per - len(idx))
        rows.append(np.concatenate(row, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


# -- evaluation -------------------------------------------------------------------------
def ir_to_rgb(feats: np.ndarray, test: dict, trials: int = 10) -> tuple[float, float]:
    """SYSU all-search, single-shot, seeded trials: (mAP, R1) in percent."""
    f = Features(
        feats=feats.astype(np.float32),
        pids=test["pids"].astype(np.int64),
        cams=test["cams"].astype(np.int64),
        modality=test["modality"].astype(np.int64),
        paths=test["paths"],
        meta={"split": "test"},
    )
    res = run_protocol(f, "sysu-all", trials=trials)
    return res.mean["mAP"], res.mean["R1"]


def within(
    feats: np.ndarray, test: dict, modality: int = VISIBLE, trials: int = 10
) -> tuple[float, float]:
    """Queries of camera c against one random image per (id, camera) of the other cameras
    of the same modality, for each camera c and trial: mean (mAP, R1) in percent."""
    maps, r1s = [], []
    sel = np.flatnonzero(test["modality"] == modality)
    for trial in range(trials):
        rnd = random.Random(trial)
        for c in np.unique(test["cams"][sel]):
            q = sel[test["cams"][sel] == c]
            groups: dict[tuple[int, int], list[int]] = {}
            for i in sel[test["cams"][sel] != c]:
                groups.setdefault((int(test["pids"][i]), int(test["cams"][i])), []).append(i)
            g = np.array([rnd.choice(groups[k]) for k in sorted(groups)])
            dist = -(feats[q] @ feats[g].T)
            cmc, m_ap, _, _ = evaluate(dist, test["pids"][q], test["pids"][g], rule="regdb")
            maps.append(m_ap * 100)
            r1s.append(cmc[0] * 100)
    return float(np.mean(maps)), float(np.mean(r1s))


def color_hist(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """(N, bins^3) Hellinger-mapped joint RGB histograms of the central region."""
    h, w = images.shape[1:3]
    crop = images[:, h // 8 : h - h // 8, w // 4 : w - w // 4].reshape(len(images), -1, 3)
    q = (crop.astype(np.int64) * bins) // 256
    code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = np.stack([np.bincount(c, minlength=bins**3) for c in code]).astype(np.float32)
    hist = np.sqrt(hist / hist.sum(1, keepdims=True))
    return hist / np.linalg.norm(hist, axis=1, keepdims=True)


def raw_pixels(images: np.ndarray) -> np.ndarray:
    """(N, 32*16*3) downsampled pixels, zero-mean and L2-normalised per image."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.adaptive_avg_pool2d(x, (32, 16)).flatten(1)
    x = x - x.mean(1, keepdim=True)
    return F.normalize(x, dim=1).numpy()


def to_input(batch: np.ndarray | torch.Tensor, device: str) -> torch.Tensor:
    x = torch.as_tensor(batch).to(device).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.25


@torch.no_grad()
def extract(model: TwoStreamResNet, data: dict, device: str, bs: int = 256) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(data["images"]), bs):
        x = to_input(data["images"][i : i + bs], device)
        m = torch.as_tensor(data["modality"][i : i + bs], device=device)
        out.append(model.extract(x, m).cpu())
    return torch.cat(out).numpy()


# -- supervised training ------------------------------------------------------------------
def cross_modal_triplet(
    feat: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor, margin: float = 0.3
):
    """Batch-hard triplet loss whose positives and negatives come from the other modality."""
    d = torch.cdist(feat, feat)
    same = labels[:, None] == labels[None, :]
    other = modality[:, None] != modality[None, :]
    hardest_pos = (d * (same & other)).max(1).values
    hardest_neg = (d + (same | ~other) * 1e6).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def hetero_center(feat: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor):
    """Distance between the visible and the infrared centre of each identity in the batch
    (hetero-centre loss, Zhu et al., Neurocomputing 2020), on L2-normalised features."""
    f = F.normalize(feat, dim=1)
    onehot = F.one_hot(labels).float()  # (B, C)
    vis = (modality == VISIBLE).float()[:, None]
    cnt_v, cnt_r = (onehot * vis).sum(0), (onehot * (1 - vis)).sum(0)
    both = (cnt_v > 0) & (cnt_r > 0)
    c_v = (onehot * vis).T @ f / cnt_v.clamp(min=1)[:, None]
    c_r = (onehot * (1 - vis)).T @ f / cnt_r.clamp(min=1)[:, None]
    return (c_v - c_r)[both].norm(dim=1).mean()


def augment(
    x: torch.Tensor,
    modality: torch.Tensor,
    gen: torch.Generator,
    channel_p: float = 0.5,
    gray_p: float = 0.15,
    pad: int = 8,
) -> torch.Tensor:
    """Pad-and-crop, flip, and (visible) channel augmentation, on [0, 1] (B, 3, H, W).

    A visible image becomes one of its channels (probability ``channel_p``) or its grey
    level (``gray_p``), repeated 3 times."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    x = torch.stack([xp[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w] for i in range(b)])
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    # channel exchange (Ye et al., ICCV 2021): a visible image as one of its channels
    r = torch.rand(b, generator=gen)
    ch = torch.randint(0, 3, (b,), generator=gen)
    for i in range(b):
        if modality[i] == VISIBLE and r[i] < channel_p:
            x[i] = x[i, ch[i]].expand(3, h, w)
        elif modality[i] == VISIBLE and r[i] < channel_p + gray_p:
            x[i] = x[i].mean(0, keepdim=True).expand(3, h, w)
    return x


def train_supervised(
    train: dict,
    iters: int,
    device: str,
    p: int = 8,
    k: int = 4,
    lr: float = 1e-3,
    last_stride: int = 2,
    seed: int = 0,
    log_every: int = 50,
    channel_p: float = 0.5,
    gray_p: float = 0.15,
    pad: int = 8,
    hc_weight: float = 0.0,
    xm_weight: float = 0.0,
    share_from: str = "layer1",
) -> TwoStreamResNet:
    """Two-stream ResNet-18 from scratch; batches of ``p`` ids x ``k`` images (half each
    modality); cross-entropy (label smoothing 0.1) + batch-hard triplet; AdamW, cosine."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    pids = train["pids"]
    uniq = np.unique(pids)
    label = {pid: i for i, pid in enumerate(uniq)}
    by_id = {
        (pid, mod): np.flatnonzero((pids == pid) & (train["modality"] == mod))
        for pid in uniq
        for mod in (VISIBLE, INFRARED)
    }
    images = torch.from_numpy(train["images"])
    model = TwoStreamResNet(
        "resnet18", pretrained=False, last_stride=last_stride, share_from=share_from
    ).to(device)
    classifier = nn.Linear(model.out_dim, len(uniq), bias=False).to(device)
    params = list(model.parameters()) + list(classifier.parameters())
    opt = torch.optim.AdamW([q for q in params if q.requires_grad], lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(iters))
    model.train()
    t0 = time.perf_counter()
    for it in range(iters):
        chosen = rng.choice(uniq, p, replace=False)
        idx, mods = [], []
        for pid in chosen:
            for mod, n in ((VISIBLE, k // 2), (INFRARED, k - k // 2)):
                pool = by_id[(pid, mod)]
                idx += list(rng.choice(pool, n, replace=len(pool) < n))
                mods += [mod] * n
        idx_t = torch.as_tensor(np.array(idx))
        mod_t = torch.as_tensor(mods)
        y = torch.as_tensor([label[v] for v in pids[idx]], device=device)
        x = images[idx_t].to(device).permute(0, 3, 1, 2).float() / 255.0
        x = (augment(x, mod_t, gen, channel_p, gray_p, pad) - 0.5) / 0.25
        out = model(x, mod_t.to(device))
        loss_ce = F.cross_entropy(classifier(out.bn_feat), y, label_smoothing=0.1)
        loss_tri = batch_hard_triplet(out.global_feat, y)
        loss = loss_ce + loss_tri
        if hc_weight:
            loss = loss + hc_weight * hetero_center(out.bn_feat, y, mod_t.to(device))
        if xm_weight:
            loss = loss + xm_weight * cross_modal_triplet(out.global_feat, y, mod_t.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (it % log_every == 0 or it == iters - 1):
            print(
                f"  iter {it:4d}/{iters}  ce {loss_ce.item():.3f}  tri {loss_tri.item():.3f}"
                f"  {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
    return model


# -- main -------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short training, 2 trials")
    ap.add_argument("--iters", type=int, default=None, help="training iterations (default 1600)")
    ap.add_argument("--ids", type=int, default=None, help="identities (default: generator's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--nir",
        type=float,
        default=0.0,
        help="near-infrared share of the infrared images (0: thermal, the default)",
    )
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--last-stride", type=int, default=2)
    ap.add_argument(
        "--size", default=None, help="resize the images first, e.g. 64x32 (the demo's size)"
    )
    ap.add_argument("--grid", default=None, help="save a PNG of test images here")
    ap.add_argument("--hc-weight", type=float, default=1.0, help="hetero-centre loss weight")
    ap.add_argument("--pad", type=int, default=8, help="pad-and-crop augmentation (pixels)")
    ap.add_argument("--xm-weight", type=float, default=0.0, help="cross-modal triplet weight")
    ap.add_argument(
        "--share-from",
        default="stem",
        help="first shared ResNet stage (stem: one stream, as in the demo recipe; "
        "layer1: two streams)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    iters = args.iters if args.iters is not None else (60 if args.quick else 1600)
    trials = 2 if args.quick else 10

    t0 = time.perf_counter()
    root = ensure_synthetic(args.cache_dir, ids=args.ids, seed=args.seed, nir=args.nir)
    t_gen = time.perf_counter() - t0
    man = read_manifest(root) or {}
    train, test = load_split(root, "train"), load_split(root, "test")
    if args.size:
        h, w = (int(v) for v in args.size.lower().split("x"))
        for data in (train, test):
            data["images"] = resize(data["images"], h, w)
    print(
        f"dataset {root}: {man.get('ids')} ids, {man.get('n_images')} images "
        f"(generated in {man.get('seconds')} s; this call {t_gen:.1f} s); train "
        f"{len(train['pids'])} images / {len(np.unique(train['pids']))} ids, test "
        f"{len(test['pids'])} images / {len(np.unique(test['pids']))} ids",
        flush=True,
    )
    if args.grid:
        save_grid(test, args.grid)
    rows: list[tuple[str, list[float], str]] = []

    def score(name: str, feats: np.ndarray, note: str = "") -> None:
        m1, r1 = ir_to_rgb(feats, test, trials)
        m2, r2 = within(feats, test, VISIBLE, trials)
        m3, r3 = within(feats, test, INFRARED, trials)
        rows.append((name, [m1, r1, m2, r2, m3, r3], note))
        print(
            f"{name:34s} IR->RGB mAP {m1:6.2f} R1 {r1:6.2f} | RGB->RGB mAP {m2:6.2f} "
            f"R1 {r2:6.2f} | IR->IR mAP {m3:6.2f} R1 {r3:6.2f}",
            flush=True,
        )

    rng = np.random.default_rng(0)
    score("chance (random features)", rng.standard_normal((len(test["pids"]), 64)))
    score("colour histogram (8x8x8 RGB)", color_hist(test["images"]))
    score("raw pixels (32x16 RGB)", raw_pixels(test["images"]))
    torch.manual_seed(0)
    rand_model = TwoStreamResNet(
        "resnet18", last_stride=args.last_stride, share_from=args.share_from
    ).to(args.device)
    arch = "ResNet-18, one stream" if args.share_from == "stem" else "two-stream ResNet-18"
    score(f"{arch}, random init", extract(rand_model, test, args.device))
    t1 = time.perf_counter()
    model = train_supervised(
        train,
        iters,
        args.device,
        last_stride=args.last_stride,
        hc_weight=args.hc_weight,
        pad=args.pad,
        xm_weight=args.xm_weight,
        share_from=args.share_from,
    )
    t_train = time.perf_counter() - t1
    note = f"{iters} iters x 32 images, {t_train / 60:.1f} min"
    score(f"{arch}, supervised", extract(model, test, args.device), note)

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python benchmarks/synthetic_bounds.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print()
    print(
        f"`{cmd.strip()}` — {now}; {cpu_model()}, {torch.get_num_threads()} threads "
        f"({os.cpu_count()} cores visible), device {args.device}, torch {torch.__version__}"
    )
    print(
        f"dataset: {man.get('ids')} ids ({len(np.unique(train['pids']))} train, "
        f"{len(np.unique(test['pids']))} test), {man.get('n_images')} images, "
        f"generated in {man.get('seconds')} s, generator v{man.get('version')}, seed {args.seed}"
    )
    print()
    print("| method | IR→RGB mAP | R1 | RGB→RGB mAP | R1 | IR→IR mAP | R1 | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, vals, note in rows:
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {note} |")
    print(f"\ntotal {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
