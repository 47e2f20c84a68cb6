"""AIM against SAAI's ``models/AIM.py`` re-stated with loops (rerank_oracles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rerank_oracles import saai_aim

from uvireid.rerank import AIM, affinity_inference


@pytest.mark.parametrize("k1,k2", [(4, 1), (8, 2), (20, 6), (3, 5), (1, 1)])
def test_aim_equals_reference(clustered, k1, k2):
    q, g = clustered(40, 25, 8, seed=k1)
    ref = saai_aim(torch.from_numpy(q), torch.from_numpy(g), k1, k2).numpy()
    out = affinity_inference(q, g, k1, k2)
    assert out.shape == (40, 25) and np.abs(out - ref).max() < 1e-5


def test_aim_keeps_ties_and_duplicates():
    gen = torch.Generator().manual_seed(1)
    q = torch.randint(-2, 3, (20, 5), generator=gen).double()
    g = torch.randint(-2, 3, (12, 5), generator=gen).double()
    g[2] = g[3] = g[9]
    q[0] = g[2]
    ref = saai_aim(q, g, 3, 2)
    out = affinity_inference(q, g, 3, 2)
    assert torch.allclose(out, ref, atol=1e-5)


def test_aim_clamps_k1_to_the_gallery(clustered):
    q, g = clustered(6, 4, 8, seed=3)
    ref = saai_aim(torch.from_numpy(q), torch.from_numpy(g), 4, 6).numpy()
    out = AIM(k1=30, k2=6).rerank(q, g)  # the reference's topk(30) raises on 4 columns
    assert np.abs(out - ref).max() < 1e-5
