"""Cluster memory and the DCL / DAGL cluster-contrast losses against naive loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_oracles import centroid_loop, momentum_loop, nce_mean, unit_rows

from uvireid.losses import (
    ClusterContrastLoss,
    ClusterMemory,
    DualClusterContrastLoss,
    EpochContext,
    StepOutputs,
    StepTargets,
    cluster_nce,
)
from uvireid.registry import LOSSES

TAU = 0.05


def test_cluster_nce_value_and_gradient_equal_the_equation():
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mem = unit_rows(3, 4, seed=2)
    y = [0, 2, -1, 1, 2]
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    ours = cluster_nce(x1, mem, torch.tensor(y), TAU)
    ref = nce_mean(x2, mem, y, TAU)
    assert torch.allclose(ours, ref, rtol=1e-10)
    ours.backward()
    ref.backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-8, atol=1e-12)
    assert torch.equal(x1.grad[2], torch.zeros(4, dtype=torch.float64))


def test_cluster_nce_without_labels_is_zero_with_a_gradient_path():
    x = torch.randn(3, 4, requires_grad=True)
    out = cluster_nce(x, torch.randn(2, 4), torch.full((3,), -1), TAU)
    out.backward()
    assert out.item() == 0 and torch.equal(x.grad, torch.zeros(3, 4))


def test_memory_reset_is_the_normalised_centroid_and_update_the_momentum_loop():
    feats = unit_rows(10, 4, seed=3)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, -1, 1, 2])
    m = ClusterMemory(4, temperature=TAU, momentum=0.1)
    m.reset(feats, labels, 3)
    assert torch.allclose(m.features, centroid_loop(feats, labels, 3), atol=1e-12)
    batch = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([1, 1, -1, 0, 2, 1])
    expected = momentum_loop(m.features.clone(), batch, y.tolist(), 0.1)
    m.update(batch, y)
    assert torch.allclose(m.features.double(), expected, atol=1e-12)
    assert torch.allclose(m.features.norm(dim=1), torch.ones(3, dtype=m.features.dtype))


def test_memory_logits_do_not_backpropagate_into_the_memory():
    m = ClusterMemory(4)
    m.reset(unit_rows(6, 4).float(), np.array([0, 0, 1, 1, 2, 2]), 3)
    x = torch.randn(2, 4, requires_grad=True)
    m.logits(x).sum().backward()
    assert x.grad is not None and not m.features.requires_grad


def _context(nv=12, nr=9, kv=3, kr=3, d=4):
    fv, fr = unit_rows(nv, d, seed=5), unit_rows(nr, d, seed=6)
    lv = np.arange(nv) % kv
    lr = np.arange(nr) % kr
    return EpochContext(
        feats_v=fv,
        feats_r=fr,
        vis_in_v=lv,
        vis_in_r=(lv + 1) % kr,
        ir_in_r=lr,
        ir_in_v=(lr + 2) % kv,
        init_v=lv,
        init_r=lr,
        num_v=kv,
        num_r=kr,
    )


def _step(s=4, d=4, seed=7):
    g = torch.Generator().manual_seed(seed)
    out = StepOutputs(*(torch.randn(s, d, generator=g, dtype=torch.float64) for _ in range(3)))
    t = StepTargets(
        vis_in_v=torch.tensor([0, 1, 2, 0]),
        vis_in_r=torch.tensor([1, -1, 0, 2]),
        ir_in_r=torch.tensor([2, 2, 0, 1]),
        ir_in_v=torch.tensor([0, 1, -1, 2]),
        idx_v=torch.arange(s),
        idx_r=torch.arange(s),
        paired=True,
    )
    return out, t


def test_dcl_loss_is_three_intra_modality_terms():
    ctx = _context()
    loss = ClusterContrastLoss()
    loss.reset(ctx)
    out, t = _step()
    mv, mr = loss.memory_v.features, loss.memory_r.features
    ref = (
        nce_mean(out.feat_v, mv, t.vis_in_v.tolist(), TAU)
        + nce_mean(out.feat_a, mv, t.vis_in_v.tolist(), TAU)
        + nce_mean(out.feat_r, mr, t.ir_in_r.tolist(), TAU)
    )
    assert torch.allclose(loss(out, t), ref, rtol=1e-10)
    before_v = loss.memory_v.features.clone()
    loss.update(out, t)
    # one memory call per view (SALCR/MBCCM): autograd runs the later call's backward first,
    # so the CA rows update M^v before the original ones (salcr_reference.md Sec. 5.4)
    expected = momentum_loop(
        before_v, torch.cat([out.feat_a, out.feat_v]), t.vis_in_v.tolist() * 2, 0.1
    )
    assert torch.allclose(loss.memory_v.features.double(), expected, atol=1e-12)


def test_ca_joint_is_one_term_over_both_visible_views():
    """PGM/ADCA: L([f^v; f^a]; M^v), the mean over the rows of both views (nce_mean, a loop
    over rows), not the sum of a term per view."""
    ctx = _context()
    loss = ClusterContrastLoss(ca_joint=True)
    loss.reset(ctx)
    out, t = _step()
    mv, mr = loss.memory_v.features, loss.memory_r.features
    ref = nce_mean(
        torch.cat([out.feat_v, out.feat_a]), mv, t.vis_in_v.tolist() * 2, TAU
    ) + nce_mean(out.feat_r, mr, t.ir_in_r.tolist(), TAU)
    assert torch.allclose(loss(out, t), ref, rtol=1e-10)
    summed = ClusterContrastLoss()
    summed.reset(ctx)
    assert not torch.allclose(summed(out, t), ref)


def test_dagl_loss_uses_both_memories_with_dual_labels_and_skips_missing_links():
    ctx = _context()
    loss = DualClusterContrastLoss()
    loss.reset(ctx)
    out, t = _step()
    z = torch.cat([out.feat_v, out.feat_a, out.feat_r])
    tv = t.vis_in_v.tolist() * 2 + t.ir_in_v.tolist()
    tr = t.vis_in_r.tolist() * 2 + t.ir_in_r.tolist()
    ref = nce_mean(z, loss.memory_v.features, tv, TAU) + nce_mean(
        z, loss.memory_r.features, tr, TAU
    )
    z1 = [o.clone().requires_grad_(True) for o in (out.feat_v, out.feat_a, out.feat_r)]
    ours = loss(StepOutputs(*z1), t)
    assert torch.allclose(ours, ref, rtol=1e-10)
    ours.backward()
    z2 = [o.clone().requires_grad_(True) for o in (out.feat_v, out.feat_a, out.feat_r)]
    nce_mean(torch.cat(z2), loss.memory_v.features, tv, TAU).add(
        nce_mean(torch.cat(z2), loss.memory_r.features, tr, TAU)
    ).backward()
    for a, b in zip(z1, z2):
        assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-12)


def test_dagl_loss_without_cross_links_is_intra_modality_only():
    ctx = _context()
    out, t = _step()
    t.vis_in_r[:] = -1
    t.ir_in_v[:] = -1
    loss = DualClusterContrastLoss()
    loss.reset(ctx)
    ref = nce_mean(
        torch.cat([out.feat_v, out.feat_a]), loss.memory_v.features, t.vis_in_v.tolist() * 2, TAU
    ) + nce_mean(out.feat_r, loss.memory_r.features, t.ir_in_r.tolist(), TAU)
    assert torch.allclose(loss(out, t), ref, rtol=1e-10)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_registered_loss_runs_on_a_tiny_step(name):
    loss = LOSSES.build({"type": name}).double()
    ctx = _context()
    out, t = _step()
    if getattr(loss, "needs_parts", False):
        g = torch.Generator().manual_seed(0)
        p = loss.num_parts
        out.parts = {
            (q, m): torch.randn(4, p, 4, generator=g, dtype=torch.float64)
            for q in "var"
            for m in "var"
        }
        ctx.parts_v = unit_rows(12, p, 4)
        ctx.parts_r = unit_rows(9, p, 4)
    if getattr(loss, "needs_pool", False):
        g = torch.Generator().manual_seed(1)
        out.pool_v, out.pool_a, out.pool_r = (
            torch.randn(len(f), 4, generator=g, dtype=torch.float64)
            for f in (out.feat_v, out.feat_a, out.feat_r)
        )
    if hasattr(loss, "reset"):  # the trainer calls reset and update where they exist
        loss.reset(ctx)
    value = loss(out, t)
    assert value.ndim == 0 and torch.isfinite(value)
    if hasattr(loss, "update"):
        loss.update(out.detach(), t)


@pytest.mark.parametrize("method", ["rounds", "gram"])
@pytest.mark.parametrize("case", ["repeats", "all_outliers", "empty", "no_outliers"])
def test_momentum_update_equals_the_sequential_loop(case, method):
    """Grouped rounds, and the Gram path, = the reference's one-sample-at-a-time update,
    on a (K, d) memory and on a (P, K, d) part memory updated through its (K, P, d)
    transposed view."""
    from uvireid.losses.memory import momentum_update

    rng = np.random.default_rng(7)
    n = {"repeats": 23, "all_outliers": 5, "empty": 0, "no_outliers": 9}[case]
    y = rng.integers(-1, 4, n)
    if case == "all_outliers":
        y[:] = -1
    if case == "no_outliers":
        y = rng.integers(0, 4, n)
    x = torch.from_numpy(rng.normal(size=(n, 3, 5)))
    mem = unit_rows(6, 5, seed=8)
    flat = mem.clone()
    momentum_update(flat, x[:, 0], torch.as_tensor(y), 0.1, method=method)
    expected = momentum_loop(mem.clone(), x[:, 0], y.tolist(), 0.1)
    assert torch.allclose(flat, expected, atol=1e-12)
    parts = torch.stack([unit_rows(6, 5, seed=9 + p) for p in range(3)])  # (P, K, d)
    got = parts.clone()
    momentum_update(got.transpose(0, 1), x, torch.as_tensor(y), 0.1, method=method)
    for p in range(3):
        want = momentum_loop(parts[p].clone(), x[:, p], y.tolist(), 0.1)
        assert torch.allclose(got[p], want, atol=1e-12)
    if case in ("all_outliers", "empty"):
        assert torch.equal(got, parts) and torch.equal(flat, mem)


@pytest.mark.parametrize("method", ["rounds", "gram"])
def test_momentum_update_many_equals_one_sequential_loop_per_memory(method):
    """Several memories in one set of rounds = the reference's per-sample loop on each:
    memories of different sizes, (K, d) rows and (P, K, d) part memories through their
    transposed views, outliers, a memory none of whose rows is kept, labels that
    repeat more in one memory than in the others."""
    from uvireid.losses.memory import momentum_update, momentum_update_many

    rng = np.random.default_rng(11)
    sizes, counts = (5, 3, 7, 4), (19, 6, 11, 4)
    ys = [rng.integers(-1, k, n) for k, n in zip(sizes, counts)]
    ys[3][:] = -1  # nothing of the last memory is updated
    ys[0][:8] = 2  # one label with many rows: more rounds than the others need
    xs = [torch.from_numpy(rng.normal(size=(n, 3, 4))) for n in counts]
    flat = [unit_rows(k, 4, seed=20 + i) for i, k in enumerate(sizes)]
    got = [m.clone() for m in flat]
    items = [(m, x[:, 0], torch.as_tensor(y)) for m, x, y in zip(got, xs, ys)]
    momentum_update_many(items, 0.2, method)
    for m0, m, x, y in zip(flat, got, xs, ys):
        assert torch.allclose(m, momentum_loop(m0.clone(), x[:, 0], y.tolist(), 0.2), atol=1e-12)
    assert torch.equal(got[3], flat[3])
    parts = [
        torch.stack([unit_rows(k, 4, seed=40 + 3 * i + p) for p in range(3)])
        for i, k in enumerate(sizes)
    ]  # (P, K, d)
    got = [m.clone() for m in parts]
    momentum_update_many([(m.transpose(0, 1), x, y) for m, x, y in zip(got, xs, ys)], 0.1, method)
    for m0, m, x, y in zip(parts, got, xs, ys):
        for p in range(3):
            want = momentum_loop(m0[p].clone(), x[:, p], y.tolist(), 0.1)
            assert torch.allclose(m[p], want, atol=1e-12)
    # one memory given alone takes the same path as momentum_update
    one, alone = flat[0].clone(), flat[0].clone()
    momentum_update_many([(one, xs[0][:, 0], ys[0])], 0.1, method)
    momentum_update(alone, xs[0][:, 0], ys[0], 0.1, method=method)
    assert torch.equal(one, alone)
    with pytest.raises(ValueError, match="row shape"):
        momentum_update_many([(flat[0], xs[0][:, 0], ys[0]), (parts[1], xs[1], ys[1])], 0.1)
    with pytest.raises(ValueError, match="appears twice"):
        momentum_update_many([(flat[0], xs[0][:, 0], ys[0]), (flat[0], xs[0][:, 0], ys[0])], 0.1)
    with pytest.raises(ValueError, match="19 feature rows but 6 labels"):
        momentum_update_many([(flat[0], xs[0][:, 0], ys[1])], 0.1)


def test_gram_updates_follow_the_loop_through_zero_rows_and_long_sequences():
    """The Gram path against the sample-by-sample loop where its algebra could go wrong:
    a prototype that is zero (an empty cluster's centroid) and feature rows that are
    zero (normalised to zero: the row, then the prototype, stays zero through the same
    1e-12 clamp), one label with 60 rows, and a sequence given by ``order``."""
    from uvireid.losses.memory import momentum_update

    rng = np.random.default_rng(5)
    n = 90
    y = rng.integers(-1, 5, n)
    y[:60] = 3  # 60 rounds for label 3
    x = torch.from_numpy(rng.normal(size=(n, 6)))
    x[[2, 7]] = 0.0  # zero rows of label 3
    y[[70, 71]] = 4
    x[[70, 71]] = 0.0  # label 4: only zero rows, onto a zero prototype
    y[y == 4] = -1
    y[[70, 71]] = 4
    mem = unit_rows(5, 6, seed=3)
    mem[4] = 0.0
    order = rng.permutation(n)
    for seq in (None, order):
        got = mem.clone()
        momentum_update(got, x, torch.as_tensor(y), 0.3, seq, method="gram")
        rows = np.arange(n) if seq is None else seq
        want = _loop_with_clamp(mem.clone(), x[rows], y[rows].tolist(), 0.3)
        assert torch.allclose(got, want, atol=1e-12)
        assert torch.equal(got[4], torch.zeros(6, dtype=got.dtype))


def _opposing_rows(mu, rows, angle):
    """2-D unit rows, each (pi + angle) away from the prototype the loop has reached."""
    m, out = np.array([1.0, 0.0]), []
    for _ in range(rows):
        th = np.arctan2(m[1], m[0]) + np.pi + angle
        x = np.array([np.cos(th), np.sin(th)])
        out.append(x)
        v = mu * m + (1 - mu) * x
        m = v / np.linalg.norm(v)
    return torch.tensor(np.array(out))


@pytest.mark.parametrize(
    "mu, rows, angle, dtype",
    [
        (0.5, 10, 0.05, torch.float32),
        (0.4, 54, 0.05, torch.float32),
        (0.7, 54, 0.05, torch.float32),
        (0.9, 250, 0.0, torch.float64),
        (0.5, 1, 0.0, torch.float64),
    ],
)
def test_gram_updates_fall_back_to_the_rounds_where_the_recursion_cancels(mu, rows, angle, dtype):
    """Audit BL: above momentum 1/3, rows opposing their prototype make the Gram
    recursion's coefficients grow (by up to mu / |2 mu - 1| a row) and its final
    combination cancel: 0.66 off at mu = 0.5, inf at 0.7, -M instead of M at 0.9. Such a
    call runs the rounds, so "gram" gives the rounds' answer (the float64 rounds: the
    loop's; in float32 the sequence is too ill-conditioned for any float32 result to
    follow the float64 loop); no numpy warning leaks."""
    import warnings

    from uvireid.losses.memory import momentum_update

    x = _opposing_rows(mu, rows, angle).to(dtype)
    mem = torch.tensor([[1.0, 0.0]], dtype=dtype)
    labels = torch.zeros(rows, dtype=torch.long)
    got = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("rounds", "gram"):
            got[method] = mem.clone()
            momentum_update(got[method], x, labels, mu, method=method)
    assert torch.allclose(got["gram"], got["rounds"], atol=1e-6), got
    if dtype == torch.float64:
        want = _loop_with_clamp(mem, x, labels.tolist(), mu)
        assert torch.allclose(got["rounds"], want, atol=1e-9), (got, want)


def test_gram_keeps_a_zero_prototype_zero_at_momentum_one():
    """Momentum 1 (allowed) freezes a memory: a zero prototype with 30 rows stays zero, as
    the rounds leave it (the recursion's scale 1/1e-12 a row overflowed into NaN)."""
    from uvireid.losses.memory import momentum_update

    x = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = torch.zeros(1, 4, dtype=torch.float64)
    momentum_update(got, x, torch.zeros(30, dtype=torch.long), 1.0, method="gram")
    assert torch.equal(got, torch.zeros(1, 4, dtype=torch.float64))


def _loop_with_clamp(memory, feats, labels, mu):
    """Eq. 7 one sample at a time, with torch's normalisation (a zero row stays zero)."""
    mem = memory.clone()
    for x, y in zip(feats, labels):
        if y >= 0:
            row = mu * mem[y] + (1 - mu) * x / max(float(x.norm()), 1e-12)
            mem[y] = row / max(float(row.norm()), 1e-12)
    return mem


def test_gram_updates_in_float32_at_a_salcr_steps_size_and_auto_on_the_cpu():
    """float32 part memories (P = 3, d = 2048) with 38 rows on one label, the size of a
    SALCR step's part updates: the Gram path (float64 arithmetic inside) stays within
    float32 rounding of the float64 loop, as the float32 rounds do; "auto" on the CPU is
    the rounds, bit for bit."""
    from uvireid.losses.memory import momentum_update

    g = torch.Generator().manual_seed(1)
    labels = torch.arange(8).repeat_interleave(38)
    x = torch.randn(len(labels), 3, 2048, generator=g)
    parts = torch.nn.functional.normalize(torch.randn(3, 8, 2048, generator=g), dim=-1)
    results = {}
    for method in ("rounds", "gram", "auto"):
        got = parts.clone()
        momentum_update(got.transpose(0, 1), x, labels, 0.1, method=method)
        results[method] = got
    want = torch.stack(
        [
            _loop_with_clamp(parts[p].double(), x[:, p].double(), labels.tolist(), 0.1)
            for p in range(3)
        ]
    )
    for method in ("rounds", "gram"):
        assert (results[method].double() - want).abs().max() < 2e-6, method
    assert torch.equal(results["auto"], results["rounds"])
    with pytest.raises(ValueError, match="method must be one of"):
        momentum_update(parts.clone()[0], x[:, 0], labels, 0.1, method="fast")


def test_cluster_memories_updated_together_equal_their_own_updates():
    """``ClusterMemory.update_together``: memories of one momentum in one call, another
    momentum in its own; each ends as its own ``update`` would leave it."""
    from uvireid.losses.memory import ClusterMemory

    rng = np.random.default_rng(5)
    mems = [ClusterMemory(4, momentum=mu) for mu in (0.1, 0.1, 0.3)]
    for i, m in enumerate(mems):
        m.features = unit_rows(5 + i, 4, seed=60 + i).float()
    items = [
        (
            m,
            torch.from_numpy(rng.normal(size=(9, 4))).float(),
            torch.from_numpy(rng.integers(-1, 5, 9)),
        )
        for m in mems
    ]
    alone = [ClusterMemory(4, momentum=m.momentum) for m in mems]
    for a, m in zip(alone, mems):
        a.features = m.features.clone()
    start = [m.features.clone() for m in mems]
    ClusterMemory.update_together(*items)
    for a, s, (m, x, y) in zip(alone, start, items):
        a.update(x, y)
        assert torch.allclose(m.features, a.features, atol=1e-6)
        assert not torch.allclose(m.features, s)  # something was updated


def test_a_tensor_shared_by_memories_is_gathered_once(monkeypatch):
    """Under DDP ``update_together`` gathers each distinct feature and label tensor once
    (DAGL's and GPCR's memories share their batch rows); the updates are unchanged."""
    from uvireid.losses import memory as memory_mod
    from uvireid.losses.memory import ClusterMemory

    calls = {"feats": 0, "labels": 0}
    real_f, real_l = memory_mod.all_gather_cat, memory_mod.gather_labels

    def count_f(x):
        calls["feats"] += 1
        return real_f(x)

    def count_l(y, device):
        calls["labels"] += 1
        return real_l(y, device)

    monkeypatch.setattr(memory_mod, "all_gather_cat", count_f)
    monkeypatch.setattr(memory_mod, "gather_labels", count_l)
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.normal(size=(9, 4))).float()
    own, cross = torch.from_numpy(rng.integers(-1, 5, 9)), torch.from_numpy(rng.integers(0, 6, 9))
    mems = [ClusterMemory(4, momentum=0.1) for _ in range(3)]
    for i, m in enumerate(mems):
        m.features = unit_rows(6, 4, seed=70 + i).float()
    alone = [ClusterMemory(4, momentum=0.1) for _ in mems]
    for a, m in zip(alone, mems):
        a.features = m.features.clone()
    ClusterMemory.update_together((mems[0], x, own), (mems[1], x, cross), (mems[2], x, own))
    assert calls == {"feats": 1, "labels": 2}
    for a, m, y in zip(alone, mems, (own, cross, own)):
        a.update(x, y)
        assert torch.allclose(m.features, a.features, atol=1e-6)


def test_hard_update_uses_the_least_similar_row_of_each_cluster():
    """Against a loop: per label, the row with the lowest cosine to M[y] (first on a tie)
    updates M[y] alone; the other rows and labels -1 do nothing."""
    from uvireid.losses.memory import ClusterMemory, hardest_labels

    rng = np.random.default_rng(8)
    mem = unit_rows(4, 5, seed=80).float()
    x = torch.from_numpy(rng.normal(size=(10, 5))).float()
    x[7] = x[2]  # an exact tie inside label 1: the first row wins
    y = torch.tensor([1, 0, 1, -1, 3, 0, 3, 1, -1, 3])
    expect = torch.full_like(y, -1)
    for lab in y[y >= 0].unique().tolist():
        rows = [i for i in range(10) if y[i] == lab]
        cos = [float(F.normalize(x[i], dim=0) @ mem[lab]) for i in rows]
        expect[rows[int(np.argmin(cos))]] = lab
    got = hardest_labels(mem, x, y)
    assert torch.equal(got, expect)
    m = ClusterMemory(5, momentum=0.2, hard=True)
    m.features = mem.clone()
    m.update(x, y)
    ref = momentum_loop(mem.double(), x.double(), expect.tolist(), 0.2)
    assert torch.allclose(m.features.double(), ref, atol=1e-6)
    assert torch.equal(m.features[2], mem[2])  # label 2 absent from the batch
    together = ClusterMemory(5, momentum=0.2, hard=True)
    together.features = mem.clone()
    ClusterMemory.update_together((together, x, y))
    assert torch.allclose(together.features, m.features, atol=1e-7)


def test_dagl_updates_each_memory_in_a_seeded_random_order_of_the_batch():
    """shuffle_updates (default): each memory is updated one row after the other in a
    random permutation of [f^v; f^a; f^r] (a loop over the permuted rows); the order is
    a function of the batch's labels (the same again, as on another DDP rank or after a
    resume), and differs from batch order, which shuffle_updates=False keeps."""
    from uvireid.losses.memory import batch_permutation

    ctx = _context()
    out, t = _step()
    z = torch.cat([out.feat_v, out.feat_a, out.feat_r])
    tv = t.vis_in_v.tolist() * 2 + t.ir_in_v.tolist()
    tr = t.vis_in_r.tolist() * 2 + t.ir_in_r.tolist()
    results = []
    for shuffle in (True, False):
        loss = DualClusterContrastLoss(shuffle_updates=shuffle)
        loss.reset(ctx)
        mv, mr = loss.memory_v.features.clone(), loss.memory_r.features.clone()
        loss.update(out, t)
        for mem, before, lab in ((loss.memory_v, mv, tv), (loss.memory_r, mr, tr)):
            perm = batch_permutation(np.array(lab)) if shuffle else np.arange(len(lab))
            if shuffle:
                assert sorted(perm.tolist()) == list(range(len(lab)))
            expected = momentum_loop(before, z[perm], [lab[i] for i in perm], 0.1)
            assert torch.allclose(mem.features.double(), expected, atol=1e-12)
        results.append(loss.memory_v.features.clone())
    assert not torch.allclose(results[0], results[1])  # the order matters at momentum 0.1
    perm = batch_permutation(np.array(tv))
    assert np.array_equal(perm, batch_permutation(torch.tensor(tv)))  # host or tensor
    assert not np.array_equal(perm, np.arange(len(tv)))
    other = np.array(tv)
    other[0] = (other[0] + 1) % 3  # another batch (one label differs): another order
    assert not np.array_equal(perm, batch_permutation(other))
    # ClusterMemory(shuffle=True).update: the same order as the loss's update_together
    m = ClusterMemory(4, momentum=0.1, shuffle=True)
    m.features = mv.clone()
    m.update(z, torch.tensor(tv))
    assert torch.allclose(m.features, results[0], atol=1e-12)


def test_visible_views_update_in_the_order_of_the_reference_calls():
    """One call per view (SALCR/MBCCM): the CA rows first, the original rows last (autograd
    runs the later call's backward first); one call over both views (ca_joint, PGM): in
    that batch's order, the original rows first."""
    from uvireid.losses.memory import momentum_update

    ctx = _context()
    out, t = _step()
    y = t.vis_in_v.tolist() * 2
    for joint, views in ((False, [out.feat_a, out.feat_v]), (True, [out.feat_v, out.feat_a])):
        loss = ClusterContrastLoss(ca_joint=joint)
        loss.reset(ctx)
        before = loss.memory_v.features.clone()
        loss.update(out, t)
        want = momentum_loop(before, torch.cat(views), y, 0.1)
        assert torch.allclose(loss.memory_v.features.double(), want, atol=1e-12), joint
    # momentum_update's order: a permutation applied as the sequence of rows
    m = unit_rows(3, 4, seed=9)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lab = np.array([1, 1, 0, 1, 2])
    order = np.array([4, 1, 3, 0, 2])
    got = m.clone()
    momentum_update(got, x, lab, 0.1, order)
    assert torch.allclose(got, momentum_loop(m, x[order], lab[order].tolist(), 0.1), atol=1e-12)
    with pytest.raises(ValueError, match="permutation of 5 rows"):
        momentum_update(m.clone(), x, lab, 0.1, np.array([0, 0, 1, 2, 3]))


@pytest.mark.parametrize("branch", ["visible", "infrared"])
def test_dagl_branch_keeps_the_cross_rows_of_one_memory_only(branch):
    """Paper Table 4: ``visible`` keeps the infrared rows (ir_in_v) in M^v and drops the
    visible rows from M^r; ``infrared`` the other way round."""
    ctx = _context()
    loss = DualClusterContrastLoss(branch=branch, shuffle_updates=False)
    loss.reset(ctx)
    out, t = _step()
    s = len(out.feat_v)
    z = torch.cat([out.feat_v, out.feat_a, out.feat_r])
    none = [-1] * s
    ir_in_v = t.ir_in_v.tolist() if branch == "visible" else none
    vis_in_r = t.vis_in_r.tolist() if branch == "infrared" else none
    tv = t.vis_in_v.tolist() * 2 + ir_in_v
    tr = vis_in_r * 2 + t.ir_in_r.tolist()
    mv, mr = loss.memory_v.features.clone(), loss.memory_r.features.clone()
    ref = nce_mean(z, mv, tv, TAU) + nce_mean(z, mr, tr, TAU)
    assert torch.allclose(loss(out, t), ref, rtol=1e-10)
    loss.update(out, t)  # batch order [f^v; f^a; f^r]
    assert torch.allclose(
        loss.memory_v.features.double(), momentum_loop(mv, z, tv, 0.1), atol=1e-12
    )
    assert torch.allclose(
        loss.memory_r.features.double(), momentum_loop(mr, z, tr, 0.1), atol=1e-12
    )


@pytest.mark.parametrize("method", ["rounds", "gram"])
def test_momentum_zero_replaces_each_prototype_by_its_last_row(method):
    """mu = 0 (allowed: momentum in [0, 1]) keeps no old prototype: labels with fewer rows
    than the most frequent one must not be touched in the rounds they have no row."""
    from uvireid.losses.memory import momentum_update

    mem = unit_rows(3, 4, seed=1)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = [0, 0, 0, 1, -1, 0]  # label 0: 4 rows, label 1: 1 row, label 2: none
    expected = momentum_loop(mem.clone(), x, y, 0.0)
    momentum_update(mem, x, torch.tensor(y), 0.0, method=method)
    assert torch.allclose(mem, expected, atol=1e-12)
