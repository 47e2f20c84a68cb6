"""cluster_nce over parts and on an empty memory, DAGL without the
CA view per branch, and the batch-hard triplet's masks, against naive loops (explicit
softmax / log-sum-exp, float64; mutation audit NL)."""

from __future__ import annotations

import math

import numpy as np
import torch
from loss_oracles import unit_rows

from uvireid.losses import (
    DualClusterContrastLoss,
    EpochContext,
    StepOutputs,
    StepTargets,
    TripletLoss,
    cluster_nce,
)
from uvireid.losses.triplet import batch_hard_triplet_masked

TAU = 0.05


def _nll_row(x, memory, y, tau):
    """-log softmax(<x^, M_k> / tau)[y] with an explicit log-sum-exp, by loops."""
    n = math.sqrt(sum(float(v) ** 2 for v in x))
    s = [
        sum(float(x[j]) / n * float(memory[k, j]) for j in range(len(x))) / tau
        for k in range(memory.shape[0])
    ]
    top = max(s)
    return -(s[y] - top - math.log(sum(math.exp(v - top) for v in s)))


def _nce_loop(xs, memory, ys, tau):
    rows = [_nll_row(xs[i], memory, y, tau) for i, y in enumerate(ys) if y >= 0]
    return sum(rows) / len(rows)


def test_cluster_nce_over_parts_is_the_mean_over_parts_and_labelled_rows():
    """(B, P, d) part features against (P, K, d) memories: part p of row i is scored against
    memory p with row i's label; the mean over the labelled rows and all parts."""
    b, p, k, d = 4, 3, 5, 4
    x = torch.randn(b, p, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    mem = unit_rows(p, k, d, seed=2)
    y = [4, -1, 0, 2]
    got = cluster_nce(x, mem, torch.tensor(y), TAU)
    want = sum(_nce_loop(x[:, q], mem[q], y, TAU) for q in range(p)) / p
    assert abs(float(got) - want) < 1e-9 * abs(want)


def test_cluster_nce_against_an_empty_memory_is_zero_with_a_gradient_path():
    """No cluster this epoch (K = 0): the term is 0, and backward runs."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = cluster_nce(x, torch.zeros(0, 4, dtype=torch.float64), torch.full((3,), -1), TAU)
    out.backward()
    assert float(out.detach()) == 0.0 and torch.equal(
        x.grad, torch.zeros(3, 4, dtype=torch.float64)
    )


def _dagl_setup():
    nv, nr, kv, kr, d = 9, 8, 3, 2, 4
    fv, fr = unit_rows(nv, d, seed=5), unit_rows(nr, d, seed=6)
    lv, lr = np.arange(nv) % kv, np.arange(nr) % kr
    ctx = EpochContext(
        feats_v=fv,
        feats_r=fr,
        vis_in_v=lv,
        vis_in_r=lv % kr,
        ir_in_r=lr,
        ir_in_v=lr,
        init_v=lv,
        init_r=lr,
        num_v=kv,
        num_r=kr,
    )
    g = torch.Generator().manual_seed(7)
    out = StepOutputs(*(torch.randn(4, d, generator=g, dtype=torch.float64) for _ in range(3)))
    t = StepTargets(
        vis_in_v=torch.tensor([0, 1, 2, -1]),
        vis_in_r=torch.tensor([1, -1, 0, 1]),
        ir_in_r=torch.tensor([1, 0, 0, 1]),
        ir_in_v=torch.tensor([2, 0, -1, 1]),
        idx_v=torch.arange(4),
        idx_r=torch.arange(4),
        paired=False,
    )
    return ctx, out, t


def test_dagl_without_the_ca_view_drops_the_cross_rows_of_the_other_branch():
    """use_ca = False, Table 4's branches: "infrared" keeps the cross rows (the infrared
    images' visible labels) out of M^v, "visible" keeps the visible images' IR labels out
    of M^r; z = [f^v; f^r]."""
    ctx, out, t = _dagl_setup()
    none = [-1] * 4
    for branch in ("both", "visible", "infrared"):
        loss = DualClusterContrastLoss(use_ca=False, branch=branch)
        loss.reset(ctx)
        z = torch.cat([out.feat_v, out.feat_r])
        cross_v = t.ir_in_v.tolist() if branch != "infrared" else none
        cross_r = t.vis_in_r.tolist() if branch != "visible" else none
        want = _nce_loop(z, loss.memory_v.features, t.vis_in_v.tolist() + cross_v, TAU)
        want += _nce_loop(z, loss.memory_r.features, cross_r + t.ir_in_r.tolist(), TAU)
        got = float(loss(out, t))
        assert abs(got - want) < 1e-9 * want, branch


def _hard_loop(feat, labels, margin):
    """(mean over valid anchors, count): hardest positive among the other rows of the
    label, hardest negative among the labelled rows of another label."""
    vals = []
    for i, yi in enumerate(labels):
        if yi < 0:
            continue
        dist = [math.dist(feat[i], feat[j]) for j in range(len(labels))]
        pos = [dist[j] for j, yj in enumerate(labels) if j != i and yj == yi]
        neg = [dist[j] for j, yj in enumerate(labels) if yj >= 0 and yj != yi]
        if pos and neg:
            gap = max(pos) - min(neg)
            vals.append(math.log1p(math.exp(gap)) if margin is None else max(0.0, gap + margin))
    return (sum(vals) / len(vals) if vals else 0.0), len(vals)


def test_batch_hard_ignores_unlabelled_rows_as_negatives_and_anchors_without_a_negative():
    """An unlabelled row next to an anchor must not be its hardest negative, and anchors
    whose label is the only one present (no negative) are not counted."""
    feat = torch.tensor(
        [[0.0, 0.0], [3.0, 0.0], [0.1, 0.0], [0.0, 4.0], [0.0, 4.5], [9.0, 9.0]],
        dtype=torch.float64,
    )
    labels = [0, 0, -1, 1, 1, -1]
    for margin in (0.3, None):
        got, count = batch_hard_triplet_masked(feat, torch.tensor(labels), margin)
        want, n = _hard_loop(feat.tolist(), labels, margin)
        assert int(count) == n == 4 and abs(float(got) - want) < 1e-12
    # one label only: no anchor has a negative, even with unlabelled rows around
    got, count = batch_hard_triplet_masked(feat, torch.tensor([0, 0, -1, 0, -1, -1]), 0.3)
    assert int(count) == 0 and float(got) == 0.0


def test_triplet_halves_only_when_both_groups_have_anchors():
    g = torch.Generator().manual_seed(3)
    pv, pa, pr = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    yv, yr = [0, 0, 1, 1, -1], [0, 1, 1, 0, 1]
    t = StepTargets(
        torch.tensor(yv),
        torch.full((5,), -1),
        torch.tensor(yr),
        torch.full((5,), -1),
        torch.arange(5),
        torch.arange(5),
        paired=False,
    )
    out = StepOutputs(*[torch.zeros(5, 3)] * 3, {}, pv, pa, pr)
    vis, _ = _hard_loop(torch.cat([pv, pa]).tolist(), yv * 2, 0.3)
    ir, _ = _hard_loop(pr.tolist(), yr, 0.3)
    assert abs(float(TripletLoss()(out, t)) - (vis + ir) / 2) < 1e-12


def test_modality_agnostic_skips_a_consistency_pair_without_rows():
    """No infrared row has a visible-space label (no link this epoch): the pairs that need
    it are left out (not a mean over no rows, NaN) and the rest follow the definition."""
    from uvireid.losses import ModalityAgnosticLoss

    ctx, out, t = _dagl_setup()
    t.ir_in_v = torch.full((4,), -1)
    loss = ModalityAgnosticLoss(temperature=TAU, momentum=0.1, alpha=0.9, beta=0.5)
    loss.reset(ctx)
    mv, mr = loss.memory_v.features, loss.memory_r.features  # = M^va, M^ra at the start

    def probs(row):
        top = max(row)
        e = [math.exp(v - top) for v in row]
        return [max(v / sum(e), 1e-12) for v in e]

    def skl(a_rows, b_rows):
        vals = []
        for a, b in zip(a_rows, b_rows):
            p, q = probs(a), probs(b)
            kl_pq = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
            kl_qp = sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
            vals.append((kl_pq + kl_qp) / 2)
        return sum(vals) / len(vals)

    def mem_rows(x, m):
        return [[_score(x[i], m[k]) for k in range(m.shape[0])] for i in range(len(x))]

    def _score(x, mk):
        return float((x / x.norm()) @ mk) / TAU

    l_ma = 0.0
    l_cc = 0.0
    for x in (out.feat_v, out.feat_a):
        l_ma += _nce_loop(x, mv, t.vis_in_v.tolist(), TAU) + _nce_loop(
            x, mr, t.vis_in_r.tolist(), TAU
        )
        kr = [i for i, y in enumerate(t.vis_in_r.tolist()) if y >= 0]
        plain = [[float(x[i] @ mr[k]) / TAU for k in range(mr.shape[0])] for i in kr]
        l_cc += skl(mem_rows(x[kr], mr), plain)  # the (M^v, M^va) pair is 0 here
    l_ma += _nce_loop(out.feat_r, mr, t.ir_in_r.tolist(), TAU)  # no M^va term: no label
    got = float(loss(out, t).detach())
    want = 0.9 * l_ma + 0.5 * l_cc
    assert math.isfinite(got) and abs(got - want) < 1e-9 * want


def test_dcl_without_the_ca_view_ignores_ca_joint():
    """use_ca = False: L(f^v; M^v) + L(f^r; M^r), whatever ca_joint says (the CA rows take
    no part)."""
    from uvireid.losses import ClusterContrastLoss

    ctx, out, t = _dagl_setup()
    for joint in (False, True):
        loss = ClusterContrastLoss(use_ca=False, ca_joint=joint)
        loss.reset(ctx)
        want = _nce_loop(out.feat_v, loss.memory_v.features, t.vis_in_v.tolist(), TAU)
        want += _nce_loop(out.feat_r, loss.memory_r.features, t.ir_in_r.tolist(), TAU)
        assert abs(float(loss(out, t)) - want) < 1e-9 * want, joint
