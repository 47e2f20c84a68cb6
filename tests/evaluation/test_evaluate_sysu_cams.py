"""The public ``evaluate(..., rule="sysu")`` refuses SYSU camera numbers outside 1..6
as ``eval_sysu`` does: with 0-based cameras the rule that a camera-3 query ignores
camera 2 would land on other cameras, silently."""

from __future__ import annotations

import numpy as np
import pytest

from uvireid.errors import ProtocolError
from uvireid.evaluation import eval_sysu, evaluate


def _case():
    # one query of camera 3 (0-based: 2); its only true match sits in camera 2 (0-based: 1)
    dist = np.array([[0.1, 0.5, 0.9]])
    q_pids, g_pids = np.array([7]), np.array([7, 7, 8])
    q_cams, g_cams = np.array([3]), np.array([2, 1, 4])
    return dist, q_pids, g_pids, q_cams, g_cams


def test_one_based_agree():
    """Control (passes): evaluate(rule='sysu') equals eval_sysu on 1-based cameras; the
    cam-2 match is removed, the cam-1 match ranks first among the kept (by hand: AP 1)."""
    dist, qp, gp, qc, gc = _case()
    cmc, m_ap, m_inp = eval_sysu(dist, qp, gp, qc, gc)
    cmc2, m_ap2, m_inp2, n = evaluate(dist, qp, gp, qc, gc, rule="sysu")
    assert n == 1 and m_ap == m_ap2 == 1.0 and np.array_equal(cmc, cmc2)


def test_zero_based_cameras_refused_like_eval_sysu():
    dist, qp, gp, qc, gc = _case()
    with pytest.raises(ProtocolError, match="camera"):
        eval_sysu(dist, qp, gp, qc - 1, gc - 1)
    with pytest.raises(ProtocolError, match="camera"):
        evaluate(dist, qp, gp, qc - 1, gc - 1, rule="sysu")
