"""uvireid as a library: the parts of one unsupervised epoch, called by hand.

    python examples/library_use.py [DATA_DIR] [--ids 40]

1. write the synthetic dataset (SYSU-MM01 layout) and read it with the SYSU-MM01 loader;
2. extract the training images' features with a backbone from the registry;
3. cluster each modality (DBSCAN on the k-reciprocal Jaccard distance) and score the
   pseudo-labels against the true identities (ARI);
4. associate the clusters across modalities (OTLA dual) and score the links;
5. evaluate the test set with the SYSU-MM01 protocol, without and with CMFP.

The backbone is an untrained ResNet-18 (no download), so the numbers are low: this
shows the calls, not accuracy. The engine (``uvireid run``) runs the same parts in the
same order, then trains.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import uvireid  # noqa: F401  (registers the built-in parts and plugins)
from uvireid.associations.quality import link_precision
from uvireid.data.synthetic import generate
from uvireid.engine.extract import extract_features
from uvireid.evaluation.protocols import run_protocol
from uvireid.evaluation.quality import label_quality
from uvireid.features import load_features, save_features
from uvireid.registry import ASSOCIATORS, BACKBONES, CLUSTERERS, DATASETS, RERANKERS
from uvireid.types import INFRARED, VISIBLE


def main(data_dir: str, ids: int = 40, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    root = generate(data_dir, ids=ids, seed=seed)  # kept if already there
    data = DATASETS.build({"type": "sysu", "root": str(root)})
    backbone = BACKBONES.build({"type": "two_stream_resnet", "arch": "resnet18"})
    print(f"{data.title}: {len(data.train)} training, {len(data.test)} test images")

    def features(records):
        return extract_features(backbone, records, height=64, width=32).feats

    vis = [r for r in data.train if r.modality == VISIBLE]
    ir = [r for r in data.train if r.modality == INFRARED]
    fv, fr = features(vis), features(ir)

    clusterer = CLUSTERERS.build({"type": "dbscan", "eps": 0.6, "min_samples": 4})
    lv, lr = clusterer.fit_predict(fv), clusterer.fit_predict(fr)
    gt_v, gt_r = np.array([r.pid for r in vis]), np.array([r.pid for r in ir])
    out: dict = {"labels_v": lv, "labels_r": lr, "gt_v": gt_v, "gt_r": gt_r}
    for name, labels, gt in (("visible", lv, gt_v), ("infrared", lr, gt_r)):
        q = label_quality(labels, gt)
        out[f"ari_{name}"] = q["ari"]
        print(
            f"{name}: {q['num_clusters']} clusters, {q['num_outliers']} outliers, "
            f"ARI {q['ari']:.3f}"
        )

    cross = ASSOCIATORS.build({"type": "otla_dual"}).associate(fv, lv, fr, lr)
    links = link_precision(cross, np.concatenate([gt_v, gt_r]))
    out["link_precision"] = links["link_precision"]
    print(
        f"otla_dual: {len(cross.matches)} cluster pairs, cross-modal link precision "
        f"{links['link_precision']:.3f}"
    )

    bank = extract_features(backbone, data.test, height=64, width=32)
    path = save_features(
        f"{root}-test_features.npz",  # beside the dataset, not in it
        bank.feats,
        bank.pids,
        bank.cams,
        bank.modality,
        paths=bank.paths,
        dataset="synthetic",
        split="test",
        feature_head="bn_feat (untrained)",
    )
    feats = load_features(path)
    for name in ("none", "cmfp"):
        reranker = None if name == "none" else RERANKERS.build({"type": "cmfp", "k": 10})
        res = run_protocol(feats, "sysu-all", trials=10, reranker=reranker)
        out[f"mAP_{name}"] = res.mean["mAP"]
        print(f"sysu-all, {name:5s}: R1 {res.mean['R1']:.2f}  mAP {res.mean['mAP']:.2f}")
    out["features"] = path
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default="data/synthetic-library-example")
    ap.add_argument("--ids", type=int, default=40)
    args = ap.parse_args()
    main(args.data_dir, args.ids)
