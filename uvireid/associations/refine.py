"""CMFP(tr): cross-modality feature propagation of the training features before association.

SALCR (IJCV 2025) Sec. 3.5, Eq. 28-29 and Alg. 1 line 4; the official code's
``cross_association.agg_feature`` (``shared/notes/salcr_reference.md`` Sec. 5.1 step 1 and
Sec. 8.1). The training-time version is the test-time propagation with the visible
training features as "query" and the infrared ones as "gallery"::

    F' = normalize(G [F_v; F_r]),  G = [[K(S_vv, k_tr), K(S_vr, k_tr)],
                                        [K(S_rv, k_tr), K(S_rr, k_tr)]]

on L2-normalised features with the outliers removed, k_tr = 30 (SYSU-MM01) or 8 (RegDB).
There is one implementation: :func:`uvireid.rerank.cmfp.propagate`; this module only
selects the clustered instances, normalises, and puts the result back in place.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from uvireid.errors import ConfigError

__all__ = ["cmfp_tr", "check_k_tr"]

logger = logging.getLogger(__name__)


def check_k_tr(k_tr: int | None, who: str) -> int | None:
    """``k_tr`` as an int (or None = no refinement); raises :class:`ConfigError` if < 1."""
    if k_tr is None:
        return None
    from uvireid.rerank.inputs import is_real

    finite = not isinstance(k_tr, (float, np.floating)) or math.isfinite(k_tr)  # 10**400 too
    if not is_real(k_tr) or not finite or int(k_tr) != k_tr or int(k_tr) < 1:
        raise ConfigError(
            f"{who}: k_tr must be a positive integer (SALCR: 30 on SYSU-MM01, 8 on RegDB) "
            f"or null to skip CMFP(tr), got {k_tr!r}"
        )
    return int(k_tr)


def cmfp_tr(
    feats_v: torch.Tensor,
    feats_r: torch.Tensor,
    k_tr: int,
    *,
    keep_v: np.ndarray | None = None,
    keep_r: np.ndarray | None = None,
    mode: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Propagated features of both modalities (SALCR Eq. 28-29, training-time CMFP).

    Args:
        feats_v: (Nv, d) visible features; feats_r: (Nr, d) infrared features (tensors on
            one device, same dtype).
        k_tr: neighbours per affinity block (clamped to each block's width).
        keep_v, keep_r: indices of the instances that take part (the clustered ones; SALCR
            removes outliers first). Default: all.
        mode: ``"auto"``, ``"dense"`` or ``"sparse"`` affinity blocks (see
            :func:`uvireid.rerank.cmfp.affinity_blocks`).

    Returns:
        ``(feats_v', feats_r')`` of the input shapes: the kept rows propagated and
        L2-normalised, the other rows L2-normalised only. When one side keeps no row the
        features are returned normalised but not propagated (logged).
    """
    from uvireid.rerank.cmfp import propagate

    fv = F.normalize(feats_v, dim=1)
    fr = F.normalize(feats_r, dim=1)
    kv = np.arange(len(fv)) if keep_v is None else np.asarray(keep_v)
    kr = np.arange(len(fr)) if keep_r is None else np.asarray(keep_r)
    if len(kv) == 0 or len(kr) == 0:
        logger.warning(
            "cmfp_tr: a modality has no clustered instance (%d visible, %d infrared); "
            "features are not propagated",
            len(kv),
            len(kr),
        )
        return fv, fr
    iv = torch.from_numpy(kv).to(fv.device)
    ir = torch.from_numpy(kr).to(fr.device)
    pv, pr = propagate(fv[iv], fr[ir], int(k_tr), mode=mode)
    out_v, out_r = fv.clone(), fr.clone()
    out_v[iv] = pv.to(out_v.dtype)
    out_r[ir] = pr.to(out_r.dtype)
    return out_v, out_r
