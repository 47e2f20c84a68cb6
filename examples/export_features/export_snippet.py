"""Where to dump a features file in a PGM / MULT / SDCL-style test loop (not run here).

Those codebases (all descended from mangye16's cross-modal re-ID baseline) test like this:

    query_img, query_label, query_cam = process_query_sysu(data_path, mode=args.mode)
    gall_img, gall_label, gall_cam = process_gallery_sysu(data_path, mode=args.mode, trial=0)
    ... loaders ...
    query_feat_fc = extract_query_feat(query_loader)  # (Nq, 2048) numpy, flip-averaged
    gall_feat_fc = extract_gall_feat(gall_loader)     # (Ng, 2048)
    distmat = np.matmul(query_feat_fc, np.transpose(gall_feat_fc))  # a similarity (PGM)
    cmc, mAP, mINP = eval_sysu(-distmat, query_label, gall_label, query_cam, gall_cam)

(OTLA negates in the ``distmat`` line instead, MULT passes squared distances; see the
README's table before putting a re-ranked distance there.)

``process_gallery_sysu`` samples ONE image per (identity, camera) for a trial. To let
uvireid sample the 10 trials itself, extract the features of every test image once, with
:func:`all_sysu_test_images` below in place of the sampled gallery, and save them.
"""

from __future__ import annotations

import os

import numpy as np


def all_sysu_test_images(data_path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every SYSU-MM01 test image (cams 1-6 of exp/test_id.txt): paths, pids, cams."""
    with open(os.path.join(data_path, "exp", "test_id.txt")) as fh:
        ids = [int(t) for t in fh.read().replace(",", " ").split()]
    paths, pids, cams = [], [], []
    for pid in sorted(ids):
        for cam in range(1, 7):
            folder = os.path.join(data_path, f"cam{cam}", f"{pid:04d}")
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                paths.append(os.path.join(folder, name))
                pids.append(pid)
                cams.append(cam)
    return paths, np.asarray(pids), np.asarray(cams)


def export_sysu_features(extract, data_path: str, out: str = "sysu_test.npz") -> str:
    """Run the method's extractor on every test image and save a uvireid features file.

    Args:
        extract: ``extract(paths, modality) -> (N, d) numpy`` built from the method's own
            loader and ``extract_*_feat`` (modality 0 = visible stream, 1 = infrared).
    """
    paths, pids, cams = all_sysu_test_images(data_path)
    modality = np.isin(cams, (3, 6)).astype(np.int64)  # cams 3 and 6 are infrared
    feats = np.zeros((len(paths), 0), dtype=np.float32)
    for m in (0, 1):  # two passes: the two-stream models pick the stem by modality
        idx = np.flatnonzero(modality == m)
        part = extract([paths[i] for i in idx], m)
        if feats.shape[1] == 0:
            feats = np.zeros((len(paths), part.shape[1]), dtype=np.float32)
        feats[idx] = part
    try:
        from uvireid.features import save_features

        save_features(out, feats, pids, cams, modality, paths=paths, dataset="sysu", split="test")
    except ImportError:  # the same file without uvireid installed
        np.savez(out, feats=feats, pids=pids, cams=cams, modality=modality, paths=np.asarray(paths))
    return out


def rerank_inside_the_loop(
    query_feat, gall_feat, query_label, gall_label, query_cam, gall_cam, eval_sysu
):
    """The three-line change to their per-trial evaluation (CMFP, k=30 on SYSU-MM01)."""
    from uvireid.rerank import rerank

    distmat = rerank(query_feat, gall_feat, "cmfp", k=30)
    return eval_sysu(distmat, query_label, gall_label, query_cam, gall_cam)
