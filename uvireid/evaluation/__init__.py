"""Evaluation: reference-equal metrics, dataset protocols and pseudo-label quality.

* :mod:`~uvireid.evaluation.metrics`: ``eval_sysu``, ``eval_regdb``, ``eval_llcm`` (CMC, mAP,
  mINP equal to the community reference code).
* :mod:`~uvireid.evaluation.protocols`: ``run_protocol(features, "sysu-all", ...)`` and the
  query/gallery samplers of SYSU-MM01, RegDB and LLCM.
* :mod:`~uvireid.evaluation.quality`: ``label_quality`` (ARI, FMI, AMI, V-measure).
"""

from __future__ import annotations

from uvireid.evaluation.metrics import eval_llcm, eval_regdb, eval_sysu, evaluate
from uvireid.evaluation.protocols import (
    METRIC_KEYS,
    PROTOCOLS,
    ProtocolResult,
    ProtocolSpec,
    get_protocol,
    llcm_indices,
    load_rand_perm,
    official_gallery,
    regdb_indices,
    run_protocol,
    seeded_gallery,
    sysu_gallery_indices,
    sysu_query_indices,
)
from uvireid.evaluation.quality import label_quality

__all__ = [
    "METRIC_KEYS",
    "PROTOCOLS",
    "ProtocolResult",
    "ProtocolSpec",
    "eval_llcm",
    "eval_regdb",
    "eval_sysu",
    "evaluate",
    "get_protocol",
    "label_quality",
    "llcm_indices",
    "load_rand_perm",
    "official_gallery",
    "regdb_indices",
    "run_protocol",
    "seeded_gallery",
    "sysu_gallery_indices",
    "sysu_query_indices",
]
