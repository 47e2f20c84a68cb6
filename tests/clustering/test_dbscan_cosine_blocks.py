"""DBSCAN's cosine radius graph built in several row
blocks, against float64 cosine distances and scikit-learn's DBSCAN. (Mutation audit NE.)"""

from __future__ import annotations

import numpy as np
import torch
from cluster_oracles import clustered
from sklearn.cluster import DBSCAN

from uvireid.clustering.dbscan import DBSCANClusterer, cosine_radius_graph, dbscan_sparse


def test_cosine_graph_in_row_blocks_equals_float64_distances_and_sklearn_dbscan():
    x, _ = clustered(seed=31, n_ids=6, per_id=10, d=16, noise=1.2)
    n, eps = len(x), 0.35
    xd = x.astype(np.float64)
    xd /= np.linalg.norm(xd, axis=1, keepdims=True)
    ref = np.clip(1 - xd @ xd.T, 0, None)
    np.fill_diagonal(ref, 0)
    clear = np.abs(ref - eps) > 1e-5  # pairs not within float32 rounding of eps
    g = cosine_radius_graph(torch.from_numpy(x), eps, block_bytes=4 * n * 7)  # 7 rows a block
    stored = np.zeros((n, n), dtype=bool)
    coo = g.tocoo()
    stored[coo.row, coo.col] = True
    assert stored.diagonal().all() and (g.diagonal() == 0).all()
    np.testing.assert_array_equal(stored[clear], (ref <= eps)[clear])
    np.testing.assert_allclose(coo.data, ref[coo.row, coo.col], atol=1e-5)
    want = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(ref)
    np.testing.assert_array_equal(dbscan_sparse(g, eps, 4), want)
    part = DBSCANClusterer(eps=eps, metric="cosine")
    np.testing.assert_array_equal(part.fit_predict(x), want)
    assert part.num_clusters_ == want.max() + 1 > 1
