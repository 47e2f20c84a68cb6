"""Edges found by review NJ of session 28's fixes: DBSCAN's lonely points (symmetric and
asymmetric graphs against dense scikit-learn), the sampler preflight's protocol auto
with plugin datasets, a unified space's derived size and its bound, non-finite and
integer wide pixels and LLCM's folders beside the camera folders (links, loops, files).
(The unpaired fallback's log line is tested beside the fallback's other checks, in
tests/engine/test_trainer_branches_edges.py.)"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image
from sklearn.cluster import DBSCAN

from uvireid.clustering.dbscan import dbscan_sparse
from uvireid.data import LLCM
from uvireid.data.fixtures import make_llcm_tree
from uvireid.data.images import read_image
from uvireid.engine.runner import _check_sampler
from uvireid.engine.trainer import _check_cross_labels
from uvireid.errors import ConfigError, TrainingError
from uvireid.registry import DATASETS
from uvireid.types import CrossLabels

# ---------------------------------------------------------------- dbscan_sparse


def _random_graph(rng, n, symmetric):
    """A Jaccard-like graph: some points have a zero V row (nothing stored in their row,
    nor, when symmetric, in their column); every other row stores its own 0."""
    mask = rng.random((n, n)) < rng.uniform(0.05, 0.5)
    vals = rng.choice([0.0, 0.2, 0.5, 0.7], size=(n, n))
    if symmetric:
        mask = np.triu(mask, 1)
        mask = mask | mask.T
        vals = np.triu(vals) + np.triu(vals, 1).T
    empty = rng.random(n) < 0.3
    mask[empty, :] = False
    if symmetric:
        mask[:, empty] = False
    np.fill_diagonal(mask, ~empty)
    np.fill_diagonal(vals, 0.0)
    r, c = np.nonzero(mask)
    graph = sp.csr_matrix((vals[r, c].astype(np.float32), (r, c)), shape=(n, n))
    dense = np.ones((n, n))  # an absent pair (the diagonal too) is farther than eps
    dense[r, c] = vals[r, c]
    return graph, dense


def test_symmetric_graphs_match_dense_dbscan_for_every_min_samples():
    """The lonely-point pass changes nothing the dense reference disagrees with: labels,
    noise and cluster numbering equal scikit-learn's DBSCAN on the dense matrix (absent =
    1) for min_samples 1..3, on 150 random symmetric graphs with isolated points."""
    rng = np.random.default_rng(1)
    for _ in range(150):
        graph, dense = _random_graph(rng, int(rng.integers(1, 12)), symmetric=True)
        for ms in (1, 2, 3):
            want = DBSCAN(eps=0.5, min_samples=ms, metric="precomputed").fit_predict(dense)
            np.testing.assert_array_equal(dbscan_sparse(graph, 0.5, ms), want)


def test_an_asymmetric_graphs_lonely_row_is_a_border_point_as_in_the_reference():
    """Row 0 stores nothing, but row 2 (a core point) lists 0 within eps. The dense
    reference makes 0 a border point of 2's cluster; dbscan_sparse first lets
    scikit-learn make 0 its own cluster (an absent diagonal reads as 0), then turns it
    into noise: 0 ends as noise, not in 2's cluster. (Low: the built-in graphs are
    symmetric; the docstring scopes the claim to symmetric graphs.)"""
    r, c = [1, 2, 2], [1, 0, 2]
    graph = sp.csr_matrix((np.zeros(3, dtype=np.float32), (r, c)), shape=(3, 3))
    dense = np.ones((3, 3))
    dense[r, c] = 0.0
    want = DBSCAN(eps=0.5, min_samples=1, metric="precomputed").fit_predict(dense)
    assert want.tolist() == [1, 0, 1]
    assert dbscan_sparse(graph, 0.5, 1).tolist() == want.tolist()


# ---------------------------------------------------------------- the sampler preflight


def _perm(tmp_path):
    perm = tmp_path / "rand_perm_cam.mat"
    perm.write_bytes(b"")
    return str(perm)


def test_auto_with_datasets_that_list_no_protocols_or_are_factories_passes(tmp_path):
    """protocol auto is resolved through the class's PROTOCOLS: a factory function, a
    class listing none, or an unknown type keep 'auto' (the run trains without
    evaluating or resolves it later) and the official sampler is not refused; a class
    listing a non-SYSU protocol first is."""
    ev = {"protocol": "auto", "sampler": "official", "perm_file": _perm(tmp_path)}

    class Listed:
        PROTOCOLS = ("regdb-i2v", "sysu-all")

    class Unlisted:
        pass

    with DATASETS.registered("nj_factory", lambda root=".": None):
        with DATASETS.registered("nj_unlisted", Unlisted):
            with DATASETS.registered("nj_listed", Listed):
                for kind in ("nj_factory", "nj_unlisted", "folder", "not_registered", None):
                    _check_sampler(dict(ev), kind)
                with pytest.raises(
                    ConfigError,
                    match=r"protocol regdb-i2v \(evaluation.protocol auto on nj_listed\) uses sampler",
                ):
                    _check_sampler(dict(ev), "nj_listed")


# ---------------------------------------------------------------- a unified label space


def test_a_derived_unified_space_is_bounded_by_the_instances():
    """num_clusters_* left at 0 on a unified space: its size is derived from the labels,
    with no ceiling. A label of 10**9 (a raw id or hash where a cluster index belongs)
    was refused as 'outside -1..K-1' before the change; now it is accepted and the
    memories get 10**9 + 1 rows. A merged space of 8 instances cannot hold more than 8
    labels: the check should refuse it."""
    lab = np.array([0, 1, 0, 1, 0, 1, 0, 10**9])
    cl = CrossLabels(lab, lab, np.zeros((0, 2)), unified=True, num_visible=4)
    with pytest.raises(TrainingError):
        _check_cross_labels(cl, 4, 4, 2, 2, "plugin")


def test_a_derived_unified_space_takes_its_labels_size_never_below_the_clusterers():
    lab = np.array([0, 3, 0, 1, 2, 1, 0, 3])
    cl = CrossLabels(lab, lab, np.zeros((0, 2)), unified=True, num_visible=4)
    out = _check_cross_labels(cl, 4, 4, 2, 6, "plugin")
    assert (out.num_clusters_v, out.num_clusters_r) == (4, 6)  # max(labels + 1, k)


# ---------------------------------------------------------------- read_image


def test_integer_and_all_nan_wide_images(tmp_path):
    """An 'I' image (no non-finite value possible) is read as before: values in 0..255
    kept, a wider range stretched; an all-NaN float image reads as black, no error."""
    Image.fromarray(np.array([[3, 7, 200]], dtype=np.int32), mode="I").save(tmp_path / "a.tif")
    assert np.asarray(read_image(tmp_path / "a.tif"))[0, :, 0].tolist() == [3, 7, 200]
    vals = np.array([[100, 300, 1100]], dtype=np.int32)
    Image.fromarray(vals, mode="I").save(tmp_path / "b.tif")
    want = np.round((vals[0] - 100) * 255.0 / 1000).astype(int).tolist()
    assert np.asarray(read_image(tmp_path / "b.tif"))[0, :, 0].tolist() == want
    Image.fromarray(np.full((2, 3), np.nan, np.float32), mode="F").save(tmp_path / "n.tif")
    assert not np.asarray(read_image(tmp_path / "n.tif")).any()


# ---------------------------------------------------------------- LLCM test folders


def test_a_symlink_loop_beside_the_camera_folders_is_ignored(tmp_path):
    """test_vis/ holding a symlink loop (or any entry whose stat fails other than by a
    missing target) named nothing like cam<N>: before the change only cam<N> entries
    were stat'ed and the loader ignored it; now is_dir() runs on every entry and the
    loader dies with a bare OSError (ELOOP)."""
    root = make_llcm_tree(tmp_path / "LLCM", train_ids=1, test_ids=2)
    os.symlink("notes", root / "test_vis" / "notes")
    assert len(LLCM(root).test) > 0


def test_a_broken_link_and_a_file_named_like_a_camera_are_ignored(tmp_path):
    root = make_llcm_tree(tmp_path / "LLCM", train_ids=1, test_ids=2)
    want = sorted(r.path for r in LLCM(root).test)
    os.symlink(tmp_path / "nowhere", root / "test_vis" / "cam01")
    (root / "test_nir" / "cam02").write_text("not a folder")
    assert sorted(r.path for r in LLCM(root).test) == want
