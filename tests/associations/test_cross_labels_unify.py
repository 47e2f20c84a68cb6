"""CrossLabels.unify against a naive union-find over the matched cluster pairs."""

from __future__ import annotations

import numpy as np
import pytest

from uvireid.types import CrossLabels


def _naive_unify(lab_v, lab_r, nv, kv, kr, matches):
    parent = list(range(kv + kr))

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for v, r in matches:
        a, b = find(v), find(kv + r)
        if a != b:
            parent[max(a, b)] = min(a, b)

    def node_of(i):
        own = lab_v[i] if i < nv else lab_r[i]
        return None if own < 0 else (own if i < nv else kv + own)

    used = {find(node_of(i)) for i in range(len(lab_v)) if node_of(i) is not None}
    roots = {}
    for node in range(kv + kr):  # numbered by first node, visible clusters first, among
        if find(node) in used:  # the groups that hold an instance
            roots.setdefault(find(node), len(roots))
    return [-1 if node_of(i) is None else roots[find(node_of(i))] for i in range(len(lab_v))]


@pytest.mark.parametrize("seed", range(20))
def test_unify_equals_union_find(seed):
    rng = np.random.default_rng(seed)
    kv, kr = int(rng.integers(1, 7)), int(rng.integers(1, 7))
    nv, nr = 15, 12
    own_v = rng.integers(-1, kv, nv)
    own_r = rng.integers(-1, kr, nr)
    m = int(rng.integers(0, kv * kr + 1))
    pairs = np.unique(np.stack([rng.integers(0, kv, m), rng.integers(0, kr, m)], 1), axis=0)
    lab_v = np.concatenate([own_v, rng.integers(-1, kv, nr)])  # cross labels: ignored
    lab_r = np.concatenate([rng.integers(-1, kr, nv), own_r])
    cl = CrossLabels(
        lab_v, lab_r, pairs.reshape(-1, 2), num_visible=nv, num_clusters_v=kv, num_clusters_r=kr
    )
    u = cl.unify()
    expected = _naive_unify(lab_v, lab_r, nv, kv, kr, pairs.reshape(-1, 2).tolist())
    assert u.labels_in_v.tolist() == expected and u.labels_in_r.tolist() == expected
    assert u.unified and u.num_clusters_v == u.num_clusters_r == u.info["unified_labels"]
    # every label holds an instance: no empty memory row (cluster ids nobody carries, as
    # gaps in a clusterer's numbering, used to count as labels)
    assert u.num_clusters_v == len(set(expected) - {-1})


def test_unify_of_a_real_associator_merges_many_to_many_groups():
    from uvireid.registry import ASSOCIATORS

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    fv = np.repeat(centres, [5, 5, 5, 5], axis=0) + 0.01 * rng.normal(size=(20, 8))
    fr = np.repeat(centres[[0, 0, 1, 2, 3]], 3, axis=0) + 0.01 * rng.normal(size=(15, 8))
    lv, lr = np.repeat(np.arange(4), 5), np.repeat(np.arange(5), 3)
    u = ASSOCIATORS.build({"type": "mbccm"}).associate(fv, lv, fr, lr).unify()
    # the two infrared clusters of centre 0 join visible cluster 0: 4 labels in all
    assert u.num_clusters_v == 4
    assert set(u.labels_in_v[20:23]) == set(u.labels_in_v[23:26]) == {u.labels_in_v[0]}


@pytest.mark.parametrize("declared", [(0, 0), (1, 1)])
@pytest.mark.parametrize("seed", range(5))
def test_unify_and_match_mask_do_not_trust_understated_space_sizes(seed, declared):
    """Audit H (session 16): num_clusters_v/_r left at their default 0 gave a raw scipy
    ValueError in unify() and an IndexError in match_mask(); understated, unify() took
    visible clusters for infrared nodes and merged them silently. The sizes now cover
    every label and match, so the result is that of the true sizes."""
    rng = np.random.default_rng(100 + seed)
    kv, kr, nv, nr = 5, 4, 15, 12
    own_v = np.concatenate([[kv - 1], rng.integers(-1, kv, nv - 1)])  # the top ids occur
    own_r = np.concatenate([[kr - 1], rng.integers(-1, kr, nr - 1)])
    pairs = np.unique(np.stack([rng.integers(0, kv, 6), rng.integers(0, kr, 6)], 1), axis=0)
    lab_v = np.concatenate([own_v, rng.integers(-1, kv, nr)])
    lab_r = np.concatenate([rng.integers(-1, kr, nv), own_r])
    cl = CrossLabels(
        lab_v, lab_r, pairs, num_visible=nv, num_clusters_v=declared[0], num_clusters_r=declared[1]
    )
    assert cl.space_sizes() == (kv, kr)
    expected = _naive_unify(lab_v, lab_r, nv, kv, kr, pairs.tolist())
    assert cl.unify().labels_in_v.tolist() == expected
    mask = cl.match_mask()
    assert mask.shape == (kv, kr)
    assert sorted(zip(*np.nonzero(mask))) == sorted(map(tuple, pairs.tolist()))
