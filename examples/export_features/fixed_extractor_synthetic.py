"""A fixed feature extractor on the synthetic dataset -> a features file (no model, no training).

    uvireid data synth --out data/synthetic --ids 500 --seed 0
    python examples/export_features/fixed_extractor_synthetic.py data/synthetic synth.npz hog
    uvireid rerank synth.npz --reranker all --protocol sysu-all --k 8 --trials 10

Extractors: ``hog`` (default; 9-bin gradient-orientation histograms of 8 x 8 cells of the
64 x 32 grayscale image: shape cues, which the synthetic data share across modalities) or
``pixels`` (the 32 x 16 grayscale image, standardised). Both are L2-normalised. The point is
a same-features comparison of the re-rankers, not good accuracy.
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from uvireid.data.sysu import SYSUMM01
from uvireid.features import save_features


def raw_pixels(path: str, size: tuple[int, int] = (16, 32)) -> np.ndarray:
    img = Image.open(path).convert("L").resize(size, Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32).reshape(-1)
    x = (x - x.mean()) / (x.std() + 1e-6)
    return x / np.linalg.norm(x)


def gradient_histograms(path: str, size: tuple[int, int] = (32, 64), cell: int = 8) -> np.ndarray:
    """HOG-like: 9 unsigned orientation bins per 8x8 cell of the grayscale image."""
    img = Image.open(path).convert("L").resize(size, Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    gy, gx = np.gradient(x)
    mag = np.hypot(gx, gy)
    ang = (np.arctan2(gy, gx) % np.pi) / np.pi * 9
    b = np.minimum(ang.astype(int), 8)
    h, w = x.shape
    hist = np.zeros((h // cell, w // cell, 9), dtype=np.float32)
    for i in range(h // cell):
        for j in range(w // cell):
            sl = (slice(i * cell, (i + 1) * cell), slice(j * cell, (j + 1) * cell))
            hist[i, j] = np.bincount(b[sl].ravel(), mag[sl].ravel(), minlength=9)
    v = np.sqrt(hist.reshape(-1))  # Hellinger-style
    return v / (np.linalg.norm(v) + 1e-12)


EXTRACTORS = {"pixels": raw_pixels, "hog": gradient_histograms}


def main(root: str, out: str, extractor: str = "hog") -> None:
    records = SYSUMM01(root).test
    fn = EXTRACTORS[extractor]
    feats = np.stack([fn(r.path) for r in records])
    save_features(
        out,
        feats,
        [r.pid for r in records],
        [r.cam for r in records],
        [r.modality for r in records],
        paths=[r.path for r in records],
        dataset="synthetic",
        split="test",
        feature_head=f"fixed extractor: {extractor}",
    )
    print(f"wrote {out}: {len(records)} images x {feats.shape[1]}-d")


if __name__ == "__main__":
    main(*sys.argv[1:4])
