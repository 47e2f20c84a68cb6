"""Tiny inputs for the viz tests: a features file with real images, a run folder."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import yaml

from uvireid.data.fixtures import make_sysu_tree
from uvireid.features import Features, load_features, save_features

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; asserts the file is a PNG."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path} has no IHDR chunk first"
    return struct.unpack(">II", head[16:24])


def expected_px(figsize: tuple[float, float], dpi: int) -> tuple[int, int]:
    return round(figsize[0] * dpi), round(figsize[1] * dpi)


def make_features(folder: Path, *, with_paths: bool = True, seed: int = 0) -> Path:
    """A SYSU-layout test set of 6 identities x 6 cameras x 2 images (72 rows, 16-d):
    each identity a random centre, infrared shifted by a shared offset, plus noise."""
    root = make_sysu_tree(folder / "SYSU-MM01", ids=18, images_per=2, seed=seed)
    test_ids = [int(x) for x in (root / "exp" / "test_id.txt").read_text().strip().split(",")]
    rows = []
    for cam in range(1, 7):
        for pid in test_ids:
            for img in sorted((root / f"cam{cam}" / f"{pid:04d}").glob("*.jpg")):
                rows.append((str(img), pid, cam, int(cam in (3, 6))))
    rng = np.random.default_rng(seed)
    centres = {pid: rng.normal(size=16) for pid in test_ids}
    shift = rng.normal(size=16) * 0.8
    feats = np.stack(
        [centres[p] + m * shift + rng.normal(scale=0.6, size=16) for _, p, _, m in rows]
    )
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return save_features(
        folder / "features.npz",
        feats.astype(np.float32),
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        paths=[r[0] for r in rows] if with_paths else None,
        dataset="synthetic",
        split="test",
        feature_head="global",
    )


def training_records(epochs: int = 5) -> list[dict]:
    """Records as the training engine writes them: an untrained evaluation (epoch -1), then
    per epoch ``loss``, ``clusters`` (+ outliers), lower-case ``label_quality`` (+ counts),
    ``seconds``; a flat ``eval`` every second epoch; stage "dcl", then "salcr"."""
    out = [
        {
            "epoch": -1,
            "stage": "untrained",
            "eval": {"none": {"R1": 3.0, "mAP": 9.0}, "cmfp": {"R1": 4.0, "mAP": 10.0}},
            "seconds": {"eval_extract": 2.0, "eval_evaluate": 0.1, "eval_rerank": 0.2},
        }
    ]
    for e in range(epochs):
        rec = {
            "epoch": e,
            "stage": "dcl" if e < 2 else "salcr",
            "loss": {"cluster_contrast": 3.0 / (e + 1), "part": 1.0 - 0.1 * e},
            "clusters": {
                "visible": 40 + 3 * e,
                "infrared": 35 + 2 * e,
                "outliers_visible": 90 - e,
                "outliers_infrared": 30 - e,
            },
            "label_quality": {
                space: {
                    "ari": 0.3 + 0.1 * e,
                    "fmi": 0.4 + 0.1 * e,
                    "ami": 0.5 + d,
                    "v_measure": 0.55 + d,
                    "num_clusters": 40,
                    "outlier_fraction": 0.1,
                }
                for space, d in (("visible", 0.05), ("infrared", 0.0))
            },
            "seconds": {"extract": 3.0, "cluster": 1.0, "associate": 0.5, "train": 20.0},
        }
        rec["loss"]["total"] = sum(rec["loss"].values())
        if e % 2 == 1:
            rec["eval"] = {
                "none": {"R1": 20.0 + 5 * e, "mAP": 18.0 + 4 * e, "mINP": 5.0},
                "cmfp": {"R1": 25.0 + 5 * e, "mAP": 24.0 + 4 * e, "mINP": 6.0},
            }
            rec["seconds"].update(eval_extract=2.0, eval_evaluate=0.1, eval_rerank=0.3)
        out.append(rec)
    return out


def make_run_dir(folder: Path, features: Path) -> Path:
    """A finished training run's folder (written by hand: no model is run)."""
    from uvireid.evaluation.protocols import run_protocol
    from uvireid.rerank.cmfp import CMFP

    run = folder / "runs" / "tiny-20250101-000000"
    run.mkdir(parents=True)
    cfg = {
        "name": "tiny",
        "description": "a tiny run for the viz tests",
        "reranker": {"type": "cmfp", "k": 3},
        "evaluation": {"protocol": "sysu-all", "trials": 2},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    manifest = {
        "recipe": "tiny",
        "command": "uvireid run tiny.yaml",
        "started": "2025-01-01T00:00:00+0000",
        "versions": {"python": "3.11", "uvireid": "0.1.0"},
        "device": {"device": "cpu", "platform": "Linux"},
        "world_size": 1,
        "batch": {"per_gpu": 64, "per_batchnorm": 64, "global": 64},
        "seed": 1,
        "dataset": {"name": "synthetic", "test_images": 72},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    feats = load_features(features)
    (run / "features.npz").write_bytes(features.read_bytes())
    results = {
        "none": run_protocol(feats, "sysu-all", trials=2).to_dict(),
        "cmfp": run_protocol(feats, "sysu-all", trials=2, reranker=CMFP(k=3)).to_dict(),
    }
    (run / "results.json").write_text(json.dumps(results))
    records = training_records()
    records[-1]["eval"] = results
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "log.txt").write_text("INFO uvireid: epoch 4 done\n")
    return run


def toy_features(feats, pids, cams, modality, paths=None) -> Features:
    """A Features object built in memory (no file), source ``toy``."""
    return Features(
        np.asarray(feats, dtype=np.float32),
        np.asarray(pids),
        np.asarray(cams),
        np.asarray(modality),
        paths,
        {},
        "toy",
    )
