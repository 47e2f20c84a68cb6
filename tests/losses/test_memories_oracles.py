"""The GPCR instance-neighbour loss, its memories and the part memories,
against naive float64 loops of SALCR Eq. 16-27 (``shared/notes/salcr_reference.md`` Sec. 7)
and Eq. 7 (the momentum update)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from loss_oracles import gpcr_loop

from uvireid.losses import (
    EpochContext,
    InstanceNeighbourLoss,
    PartContrastLoss,
    StepOutputs,
    StepTargets,
)
from uvireid.losses.instance import members, positive_nll
from uvireid.losses.memory import ClusterMemory

TAU = 0.05
MAPS = "var"


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(
        torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1
    )


def _context(lv, lr, p=2, d=4, seed=0):
    lv, lr = np.asarray(lv), np.asarray(lr)
    kv, kr = int(lv.max()) + 1, int(lr.max()) + 1
    return EpochContext(
        feats_v=_unit(len(lv), d, seed=seed + 1),
        feats_r=_unit(len(lr), d, seed=seed + 2),
        vis_in_v=lv,
        vis_in_r=np.where(lv >= 0, lv % kr, -1),
        ir_in_r=lr,
        ir_in_v=np.where(lr >= 0, lr % kv, -1),
        init_v=lv,
        init_r=lr,
        num_v=kv,
        num_r=kr,
        parts_v=_unit(len(lv), p, d, seed=seed + 3),
        parts_r=_unit(len(lr), p, d, seed=seed + 4),
    )


def _step(idx_v, idx_r, s=3, p=2, d=4, seed=5):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(s, d, generator=g, dtype=torch.float64) for _ in range(3)]
    parts = {
        (q, m): torch.randn(s, p, d, generator=g, dtype=torch.float64) for q in MAPS for m in MAPS
    }
    t = StepTargets(
        vis_in_v=torch.zeros(s, dtype=torch.long),
        vis_in_r=torch.zeros(s, dtype=torch.long),
        ir_in_r=torch.zeros(s, dtype=torch.long),
        ir_in_v=torch.zeros(s, dtype=torch.long),
        idx_v=torch.tensor(idx_v),
        idx_r=torch.tensor(idx_r),
        paired=True,
    )
    return StepOutputs(*feats, parts), t


# ---- naive oracles (loops, float64) ----------------------------------------------------


def _scores(z, memory):
    zn = z / math.sqrt(sum(float(v) ** 2 for v in z))
    return [
        sum(float(zn[j]) * float(memory[i, j]) for j in range(len(z))) / TAU
        for i in range(len(memory))
    ]


def _topk(z, memory, k):
    s = _scores(z, memory)
    return set(sorted(range(len(s)), key=lambda i: -s[i])[:k])


def _nll(z, memory, positives):
    s = _scores(z, memory)
    m = max(s)
    tot = sum(math.exp(v - m) for v in s)
    return -math.log(sum(math.exp(s[i] - m) for i in positives) / tot)


def _mean(rows):
    rows = [r for r in rows if r is not None]
    return sum(rows) / len(rows) if rows else 0.0


def _momentum_loop(memory, feats, rows, mu):
    """Eq. 7 one sample after the other, on float64 lists; rows of -1 are skipped."""
    mem = [[float(v) for v in r] for r in memory.reshape(len(memory), -1)]
    shape = memory.shape
    for x, y in zip(feats, rows):
        y = int(y)
        if y < 0:
            continue
        x = x.reshape(-1, shape[-1]) if len(shape) == 3 else x.reshape(1, -1)
        new = []
        for blk in range(x.shape[0]):
            xb = [float(v) for v in x[blk]]
            n = math.sqrt(sum(v * v for v in xb))
            old = mem[y][blk * shape[-1] : (blk + 1) * shape[-1]]
            r = [mu * o + (1 - mu) * v / n for o, v in zip(old, xb)]
            rn = math.sqrt(sum(v * v for v in r))
            new += [v / rn for v in r]
        mem[y] = new
    return torch.tensor(mem, dtype=torch.float64).reshape(shape)


# ---- tests ---------------------------------------------------------------------------------


def test_members_of_no_set_is_empty():
    """The union over no sets is empty: every candidate is a non-member."""
    cand = torch.tensor([[0, 3, 1], [2, 4, 5]])
    got = members(cand)
    assert got.dtype == torch.bool and got.shape == cand.shape and not got.any()
    got = members(cand, torch.tensor([[3, 9], [7, 8]]))
    assert got.tolist() == [[False, True, False], [False, False, False]]


def test_positive_nll_equals_the_loop_with_groups_and_empty_rows_and_gradchecks():
    """Eq. 18 over (G, B, N) logits: per group the mean over rows with a positive, then the
    mean over the groups (a group without any positive row counts 0); gradcheck in float64."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    cand = torch.tensor([[0, 2, 5], [1, 2, 3], [4, 0, 1]])
    member = torch.tensor(
        [[[True, False, True], [False, False, False], [False, True, False]],
         [[False, False, False], [False, False, False], [False, False, False]]]
    )  # fmt: skip
    want = 0.0
    for grp in range(2):
        rows = []
        for b in range(3):
            pos = [int(cand[b, j]) for j in range(3) if member[grp, b, j]]
            if pos:
                row = [float(v) for v in logits[grp, b].detach()]
                tot = sum(math.exp(v) for v in row)
                rows.append(-math.log(sum(math.exp(row[i]) for i in pos) / tot))
        want += _mean(rows) / 2
    got = positive_nll(logits, cand, member)
    assert abs(float(got.detach()) - want) < 1e-12
    assert torch.autograd.gradcheck(lambda x: positive_nll(x, cand, member), (logits,))


def test_k_at_least_the_memory_size_makes_every_positive_set_the_whole_memory():
    """k >= N: N_k is the whole memory, so every positive set is too and each row scores
    -log 1 = 0 (the loss is 0 and finite, with parts)."""
    ctx = _context([0, 1, 0, -1, 1], [0, 1, 1, 0])  # 4 and 4 clustered images
    out, t = _step([0, 1, 2], [0, 1, 3])
    for k in (4, 30):
        loss = InstanceNeighbourLoss(k=k, num_parts=2)
        loss.reset(ctx)
        value = loss(out, t)
        assert torch.isfinite(value) and abs(float(value)) < 1e-12, (k, value)
    loss = InstanceNeighbourLoss(k=3, num_parts=2)
    loss.reset(ctx)
    assert float(loss(out, t)) > 0  # k < N: proper subsets, a positive loss


def test_official_quirks_with_parts_equal_the_loop_with_a_to_v_in_the_a_r_row():
    """official_quirks with parts: the CA row in the global intersection (§11 item 11) and
    the a->r part feature replaced by a->v (item 7) in the nine rows of the part term."""
    ctx = _context([0, 1, 2, 0, 1, 2, -1, 1], [0, 1, 0, 1, -1, 1, 0])
    out, t = _step([0, 2, 4], [1, 3, 5])
    quirks = InstanceNeighbourLoss(k=3, num_parts=2, official_quirks=True)
    quirks.reset(ctx)
    parts = dict(out.parts)
    parts["a", "r"] = parts["a", "v"]
    slipped = StepOutputs(out.feat_v, out.feat_a, out.feat_r, parts)
    mem = {n: getattr(quirks, n) for n in ("inst_v", "inst_r", "part_v", "part_r")}
    want = float(gpcr_loop(mem, slipped, 3, 2, TAU, with_ca=True))
    got = quirks(out, t)
    assert abs(float(got) - want) < 1e-9 * max(1.0, abs(want))
    paper = InstanceNeighbourLoss(k=3, num_parts=2)
    paper.reset(ctx)
    assert abs(
        float(paper(out, t)) - float(gpcr_loop(mem, out, 3, 2, TAU, with_ca=False))
    ) < 1e-9 * max(1.0, want)


def test_instance_update_after_a_second_reset_uses_that_epochs_rows():
    """The image -> memory-row map follows each reset (its host copy is refreshed): in the
    second epoch other images are outliers, so the batch's images sit in other rows."""
    ctx1 = _context([0, -1, 1, 0, 1, -1], [0, 1, -1, 1, 0])
    ctx2 = _context([-1, 0, 1, -1, 0, 1], [-1, 0, 1, 0, 1])
    out, t = _step([0, 2, 5], [1, 3, 4])
    loss = InstanceNeighbourLoss(k=3, num_parts=2)
    loss.reset(ctx1)
    loss.update(out, t)  # caches epoch 1's row map
    loss.reset(ctx2)
    before = {n: getattr(loss, n).clone() for n in ("inst_v", "inst_r", "part_v", "part_r")}
    loss.update(out, t)
    rows_v = [{1: 0, 2: 1, 4: 2, 5: 3}.get(i, -1) for i in (0, 2, 5)]  # clustered: 1, 2, 4, 5
    rows_r = [{1: 0, 2: 1, 3: 2, 4: 3}.get(i, -1) for i in (1, 3, 4)]
    assert rows_v == [-1, 1, 3] and rows_r == [0, 2, 3]
    want = {
        "inst_v": _momentum_loop(before["inst_v"], out.feat_v, rows_v, 0.1),
        "inst_r": _momentum_loop(before["inst_r"], out.feat_r, rows_r, 0.1),
        "part_v": _momentum_loop(before["part_v"], out.parts["v", "v"], rows_v, 0.1),
        "part_r": _momentum_loop(before["part_r"], out.parts["r", "r"], rows_r, 0.1),
    }
    for name, w in want.items():
        assert torch.allclose(getattr(loss, name), w, atol=1e-12), name


def test_instance_state_dict_round_trip_resumes_the_same_updates():
    """A fresh module loading a saved state (memories and row maps of another size than its
    own) continues exactly as the saved one: same loss, same next update."""
    ctx = _context([0, 1, 2, 0, 1, 2, -1, 1], [0, 1, 0, 1, -1, 1, 0])
    out, t = _step([0, 2, 4], [1, 3, 5])
    a = InstanceNeighbourLoss(k=3, num_parts=2)
    a.reset(ctx)
    a.update(out, t)
    b = InstanceNeighbourLoss(k=3, num_parts=2)
    b.load_state_dict(a.state_dict())
    for name, value in a.state_dict().items():
        assert (
            torch.equal(b.state_dict()[name], value) and b.state_dict()[name].dtype == value.dtype
        )
    out2, _ = _step([0, 2, 4], [1, 3, 5], seed=9)
    assert torch.equal(a(out2, t), b(out2, t))
    a.update(out2, t)
    b.update(out2, t)
    for name, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[name], value), name


def test_loaded_memories_keep_the_modules_device():
    """``load_state_dict`` keeps a module's device (torch's contract, and ClusterMemory's:
    its ``_load_from_state_dict`` sizes the buffer on ``self.features.device``), for the
    part and instance memories too: a CUDA run loading a ``map_location="cpu"`` checkpoint
    (as ``engine/checkpoint.py`` loads) keeps CUDA memories. The meta device stands in for
    a GPU here."""
    ctx = _context([0, 1, 2, 0, 1, 2, -1, 1], [0, 1, 0, 1, -1, 1, 0])
    for mod in (
        ClusterMemory(4),
        PartContrastLoss(num_parts=2),
        InstanceNeighbourLoss(k=3, num_parts=2),
    ):
        if isinstance(mod, ClusterMemory):
            mod.reset(ctx.feats_v, ctx.init_v, ctx.num_v)
        else:
            mod.reset(ctx)
        state = mod.state_dict()
        mod.to("meta")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch: copying into meta tensors is a no-op
            mod.load_state_dict(state)
        devices = {name: buf.device.type for name, buf in mod.named_buffers()}
        assert set(devices.values()) == {"meta"}, (type(mod).__name__, devices)


def test_instance_loss_without_part_features_is_the_global_term():
    """A paired batch without part features (``StepOutputs.parts`` empty) scores only the
    global term, the value of ``parts=False`` and of the loop's global part."""
    ctx = _context([0, 1, 2, 0, 1, 2, -1, 1], [0, 1, 0, 1, -1, 1, 0])
    out, t = _step([0, 2, 4], [1, 3, 5])
    bare = StepOutputs(out.feat_v, out.feat_a, out.feat_r, {})
    loss = InstanceNeighbourLoss(k=3, num_parts=2)
    loss.reset(ctx)
    global_only = InstanceNeighbourLoss(k=3, num_parts=2, parts=False)
    global_only.reset(ctx)
    got = loss(bare, t)
    assert torch.equal(got, global_only(out, t))
    mem = {n: getattr(loss, n) for n in ("inst_v", "inst_r")}
    feats = {"v": out.feat_v, "a": out.feat_a, "r": out.feat_r}
    want = 0.0
    for s in ("v", "r"):
        inst = mem[f"inst_{s}"]
        glob = {q: [_topk(feats[q][n], inst, 3) for n in range(3)] for q in MAPS}
        inter = [glob["v"][n] & glob["r"][n] for n in range(3)]
        want += _mean(
            [
                _nll(feats[q][n], inst, inter[n]) if inter[n] else None
                for q in MAPS
                for n in range(3)
            ]
        )
    assert abs(float(got) - want) < 1e-9 * max(1.0, want)


def test_instance_memories_do_not_move_on_an_unpaired_batch():
    """GPCR takes paired batches only: on an unpaired batch it scores 0 and its memories
    (global and part) take no update."""
    ctx = _context([0, 1, 2, 0, 1, 2, -1, 1], [0, 1, 0, 1, -1, 1, 0])
    out, t = _step([0, 2, 4], [1, 3, 5])
    t.paired = False
    loss = InstanceNeighbourLoss(k=3, num_parts=2)
    loss.reset(ctx)
    before = {n: b.clone() for n, b in loss.named_buffers()}
    assert float(loss(out, t)) == 0
    loss.update(out, t)
    for name, value in loss.named_buffers():
        assert torch.equal(value, before[name]), name


def test_hard_update_takes_the_first_of_tied_hardest_rows():
    """Cluster-Contrast's hard update: per label only the row least similar to its
    prototype, the first such row in batch order on a tie (two copies of one image)."""
    from uvireid.losses.memory import hardest_labels

    mem = _unit(2, 3, seed=7)
    far = -mem[0] + 0.1 * mem[1]
    near = mem[0] + 0.05 * mem[1]
    x = torch.stack([near, far, far.clone(), mem[1], near.clone()])  # rows 1 and 2 tie
    y = torch.tensor([0, 0, 0, 1, 0])
    sims = [float(torch.nn.functional.normalize(x[i], dim=0) @ mem[int(y[i])]) for i in range(5)]
    low0 = min(sims[i] for i in (0, 1, 2, 4))
    assert [i for i in (0, 1, 2, 4) if sims[i] == low0][0] == 1  # the loop's first hardest
    assert hardest_labels(mem, x, y).tolist() == [-1, 0, -1, 1, -1]
    m = ClusterMemory(3, hard=True)
    m.features = mem.clone()
    m.update(x, y)
    want = _momentum_loop(mem, x, [-1, 0, -1, 1, -1], 0.1)
    assert torch.allclose(m.features, want, atol=1e-12)


def _nce_loop(xs, memory, labels):
    """Mean over rows with a label >= 0 of -log softmax(<x^, M_k> / tau)_y (Eq. 1-2)."""
    rows = []
    for x, y in zip(xs, labels):
        if y < 0:
            continue
        s = _scores(x, memory)
        m = max(s)
        rows.append(-(s[y] - m - math.log(sum(math.exp(v - m) for v in s))))
    return sum(rows) / len(rows)


def test_part_contrast_rows_meet_their_query_images_labels_in_each_memory():
    """Eq. 12-15 with labels that differ from image to image (no symmetric pattern): every
    row (query, map, n) is scored with the labels of query image n in each memory."""
    ctx = _context([0, 1, 2, 0, 1, 2, -1, 1], [0, 1, 0, 1, -1, 1, 0])
    out, _ = _step([0, 2, 4], [1, 3, 5])
    t = StepTargets(
        vis_in_v=torch.tensor([2, 0, 0]),
        vis_in_r=torch.tensor([1, -1, 0]),
        ir_in_r=torch.tensor([0, 1, 1]),
        ir_in_v=torch.tensor([-1, 1, 2]),
        idx_v=torch.tensor([0, 2, 4]),
        idx_r=torch.tensor([1, 3, 5]),
        paired=True,
    )
    loss = PartContrastLoss(num_parts=2)
    loss.reset(ctx)
    vis = [("v", "v"), ("a", "a"), ("v", "r"), ("a", "r"), ("v", "a"), ("a", "v")]
    ir = [("r", "r"), ("r", "v"), ("r", "a")]
    want = 0.0
    for p in range(2):
        xv = [out.parts[k][n, p] for k in vis for n in range(3)]
        xr = [out.parts[k][n, p] for k in ir for n in range(3)]
        want += _nce_loop(xv, loss.hat_v[p], t.vis_in_v.tolist() * 6) / 2
        want += _nce_loop(xv, loss.hat_r[p], t.vis_in_r.tolist() * 6) / 2
        want += _nce_loop(xr, loss.chk_v[p], t.ir_in_v.tolist() * 3) / 2
        want += _nce_loop(xr, loss.chk_r[p], t.ir_in_r.tolist() * 3) / 2
    assert abs(float(loss(out, t)) - want) < 1e-9 * max(1.0, want)


def test_centroids_refuse_a_label_equal_to_the_cluster_count():
    """Labels are 0..k-1: label k is refused with the ConfigError naming the range (not a raw
    index error), and label k-1 is the last centroid (the loop's normalised mean)."""
    import pytest

    from uvireid.errors import ConfigError
    from uvireid.losses.memory import centroids

    x = _unit(4, 3, seed=2)
    with pytest.raises(ConfigError, match="labels are 0..1"):
        centroids(x, np.array([0, 1, 2, -1]), 2)
    got = centroids(x, np.array([0, 1, 1, -1]), 2)
    mean = (x[1] + x[2]) / 2
    assert torch.allclose(got[1], mean / mean.norm(), atol=1e-15)
    assert torch.allclose(got[0], x[0], atol=1e-15)


def test_memories_of_two_dtypes_each_update_in_their_own_precision():
    """One feature tensor updating a float32 and a float64 memory (other momenta, so other
    calls): the float64 memory follows the float64 loop to rounding, not float32 features."""
    mem64 = _unit(2, 5, seed=8)
    x = _unit(4, 5, seed=9) + 1e-4 * _unit(4, 5, seed=10)
    y = torch.tensor([0, 1, 0, 1])
    a, b = ClusterMemory(5, momentum=0.1), ClusterMemory(5, momentum=0.2)
    a.features = mem64.float().clone()
    b.features = mem64.clone()
    ClusterMemory.update_together((a, x, y), (b, x, y))
    assert b.features.dtype == torch.float64
    assert torch.allclose(b.features, _momentum_loop(mem64, x, y.tolist(), 0.2), atol=1e-14, rtol=0)
    want32 = _momentum_loop(mem64.float().double(), x, y.tolist(), 0.1)
    assert torch.allclose(a.features.double(), want32, atol=1e-6)


def test_instance_memories_normalise_features_of_any_norm():
    """I^s = L2n(features of the clustered images) and I^s_p = L2n(each part) (Sec. 7.1), also
    for features whose norm is not 1 (flip-averaged features with ``renormalize=False``)."""
    ctx = _context([0, 1, 2, 0, 1, 2, -1, 1], [0, 1, 0, 1, -1, 1, 0])
    g = torch.Generator().manual_seed(4)
    ctx.feats_v = ctx.feats_v * (0.3 + torch.rand(8, 1, generator=g, dtype=torch.float64))
    ctx.parts_r = ctx.parts_r * (0.3 + torch.rand(7, 2, 1, generator=g, dtype=torch.float64))
    out, t = _step([0, 2, 4], [1, 3, 5])
    loss = InstanceNeighbourLoss(k=3, num_parts=2)
    loss.reset(ctx)
    keep_v, keep_r = [0, 1, 2, 3, 4, 5, 7], [0, 1, 2, 3, 5, 6]
    mem = {
        "inst_v": torch.stack([ctx.feats_v[i] / ctx.feats_v[i].norm() for i in keep_v]),
        "inst_r": torch.stack([ctx.feats_r[i] / ctx.feats_r[i].norm() for i in keep_r]),
        "part_v": torch.stack(
            [ctx.parts_v[i] / ctx.parts_v[i].norm(dim=-1, keepdim=True) for i in keep_v]
        ),
        "part_r": torch.stack(
            [ctx.parts_r[i] / ctx.parts_r[i].norm(dim=-1, keepdim=True) for i in keep_r]
        ),
    }
    for name, want in mem.items():
        assert torch.allclose(getattr(loss, name), want, atol=1e-15), name
    want = float(gpcr_loop(mem, out, 3, 2, TAU, with_ca=False))
    assert abs(float(loss(out, t)) - want) < 1e-9 * max(1.0, want)


def test_one_call_refuses_memories_of_two_dtypes():
    """momentum_update_many shares one set of rounds, so its memories must share the dtype
    (documented): a float32 and a float64 memory are refused, neither is touched."""
    import pytest

    from uvireid.losses.memory import momentum_update_many

    m32, m64 = _unit(2, 3, seed=1).float(), _unit(2, 3, seed=2)
    b32, b64 = m32.clone(), m64.clone()
    x, y = _unit(3, 3, seed=3), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="share dtype"):
        momentum_update_many([(m32, x, y), (m64, x, y)], 0.1)
    assert torch.equal(m32, b32) and torch.equal(m64, b64)
