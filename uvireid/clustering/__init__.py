"""Clustering of one modality's features into pseudo-identities (DESIGN.md "Clusterer").

* :mod:`~uvireid.clustering.knn`: the exact kNN search shared by clustering and re-ranking.
* :mod:`~uvireid.clustering.jaccard`: Cluster-Contrast's k-reciprocal Jaccard distance,
  sparse (O(N k) memory) and equal to the dense reference.
* ``dbscan`` (:class:`~uvireid.clustering.dbscan.DBSCANClusterer`), ``hdbscan``
  (:class:`~uvireid.clustering.hdbscan_clusterer.HDBSCANClusterer`) and ``kmeans``
  (:class:`~uvireid.clustering.kmeans.KMeansClusterer`, no outliers), registered in
  ``CLUSTERERS``: ``fit_predict(features[N, d]) -> labels[N]`` (int64, -1 = outlier).
"""

from __future__ import annotations

from uvireid.clustering import dbscan as dbscan
from uvireid.clustering import hdbscan_clusterer as hdbscan_clusterer
from uvireid.clustering import jaccard as jaccard
from uvireid.clustering import kmeans as kmeans
from uvireid.clustering.dbscan import DBSCANClusterer
from uvireid.clustering.hdbscan_clusterer import HDBSCANClusterer
from uvireid.clustering.jaccard import jaccard_distance
from uvireid.clustering.kmeans import KMeansClusterer

__all__ = ["DBSCANClusterer", "HDBSCANClusterer", "KMeansClusterer", "jaccard_distance"]
