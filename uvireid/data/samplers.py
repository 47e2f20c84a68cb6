"""Identity samplers over pseudo-labels, seeded by a ``numpy.random.Generator``.

A sampler is built once per epoch from that epoch's labels and draws one batch per
call (``sample(rng)``), so the only state is the generator's, which checkpoints store.
Indices refer to the modality's own list of training images.

* :class:`IdentitySampler` (DCL stage; ``shared/notes/salcr_reference.md`` Sec. 9.2
  ``StageOneSampler``): per modality, independently, ``ids`` clusters and ``images``
  images of each (paper: 12 x 12 per modality). ``camera_aware``: each cluster's images
  are an anchor and images of the anchor's cluster from other cameras (Cluster-Contrast's
  ``RandomMultipleGallerySampler``, which ADCA and PGM load both modalities with;
  ``shared/notes/peers.md`` Sec. 0.4). Unlike that sampler, whose DataLoader walks a
  shuffled list of every cluster (each visited once per pass), each batch's clusters are
  drawn afresh, as SALCR's ``StageOneSampler`` does: the same visits per cluster on
  average, not exactly.
* :class:`PairedSampler` (SALCR stage, ``StageThreeSampler``): half of the labels from
  the visible label space, half from the infrared one; for a label y, ``images`` visible
  images and ``images`` infrared images with that label in that space, paired position
  by position: the potential-positive pairs FGSAL and GPCR use (paper: 8 labels x
  (4 visible + 4 infrared)).

* :class:`MatchedPairSampler` (MBCCM's assignment sampler): pairs of matched clusters,
  each row labelled with its pair.

Within a cluster, images are drawn without replacement when it has more than
``images`` of them, with replacement otherwise (as the reference samplers do); labels
are drawn without replacement unless fewer exist than a batch needs.

A stage names its sampler by ``sampler.type`` in :data:`uvireid.registry.SAMPLERS`.
What is registered is the recipe's side of a sampler (:class:`Batches` and its
subclasses: the settings, checked when the recipe is read); the trainer asks it each
epoch for that epoch's sampler (``for_epoch(labels, cams)``). A plugin registers its own
the same way (``@SAMPLERS.register("name")`` on a subclass of :class:`Batches`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from uvireid.errors import ConfigError
from uvireid.registry import SAMPLERS

if TYPE_CHECKING:
    from uvireid.losses.contract import EpochLabels

__all__ = [
    "Batches",
    "IdentityBatches",
    "IdentitySampler",
    "MatchedBatches",
    "MatchedPairSampler",
    "PairedBatches",
    "PairedSampler",
    "pools",
    "draw",
    "draw_camera_aware",
]


def _labels(labels: Any, name: str = "labels") -> np.ndarray:
    """Checked (N,) integer labels (whole-valued floats accepted), -1 = none."""
    from uvireid.associations.checks import as_labels

    arr = np.asarray(labels)
    return as_labels(arr, arr.shape[0] if arr.ndim else 0, f"sampler: {name}")


def pools(labels: np.ndarray) -> dict[int, np.ndarray]:
    """label -> sorted indices of the instances with that label (``-1`` left out)."""
    return _pools(_labels(labels))


def _pools(labels: np.ndarray) -> dict[int, np.ndarray]:
    """:func:`pools` of labels already checked by :func:`_labels`."""
    keep = np.flatnonzero(labels >= 0)
    order = keep[np.argsort(labels[keep], kind="stable")]
    uniq, start = np.unique(labels[order], return_index=True)
    return {int(u): a for u, a in zip(uniq, np.split(order, start[1:]))}


def draw(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` members of ``pool``: without replacement if it has more than ``n``."""
    return rng.choice(pool, n, replace=len(pool) <= n)


def _choose(labels: list[int], n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(np.asarray(labels, dtype=np.int64), n, replace=len(labels) < n)


def draw_camera_aware(
    pool: np.ndarray, cams: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` members of ``pool`` as Cluster-Contrast's ``RandomMultipleGallerySampler``
    takes an identity's instances: a random anchor first, then ``n - 1`` of the pool's
    images from cameras other than the anchor's, or where there are none, of its other
    images; drawn without replacement when there are at least ``n`` candidates, with
    replacement otherwise (the reference's rule). A pool of one image gives that image
    ``n`` times (the reference would give a shorter batch).

    Args:
        pool: indices of the cluster's images; cams: camera of every image (indexed by
            the pool's entries).
    """
    anchor = int(rng.choice(pool))
    if n == 1:
        return np.array([anchor], dtype=np.int64)
    others = pool[cams[pool] != cams[anchor]]
    if len(others) == 0:
        others = pool[pool != anchor]
    if len(others) == 0:
        others = np.array([anchor], dtype=np.int64)
    rest = rng.choice(others, n - 1, replace=len(others) < n)
    return np.concatenate([[anchor], rest]).astype(np.int64)


def _check(ids: int, images: int, who: str, ids_key: str = "ids") -> None:
    """``ids`` and ``images`` are integers >= 1; the error's ``key`` names the keyword
    (the recipe reader points at that key's source)."""
    for name, value in ((ids_key, ids), ("images", images)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            err = ConfigError(f"{who}: {name} must be an integer >= 1, got {value!r}")
            err.key = name
            raise err


@dataclass
class IdentityBatch:
    """Indices into the visible and the infrared image lists, and their labels.

    ``labels``: the batch rows' labels ``(vis_in_v, vis_in_r, ir_in_r, ir_in_v)`` where the
    sampler decides them (:class:`MatchedPairSampler`: the labels of the drawn pair), else
    None (each image's epoch labels)."""

    idx_v: np.ndarray
    idx_r: np.ndarray
    labels: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


class IdentitySampler:
    """Per modality: ``ids`` clusters x ``images`` images, independently (not paired).

    Args:
        labels_v: (Nv,) visible labels (-1 = not sampled); labels_r: (Nr,) infrared.
        ids, images: clusters per modality and images per cluster.
        cams_v, cams_r: each image's camera; given, a cluster's images are drawn camera
            aware (:func:`draw_camera_aware`).
        ids_v: visible clusters per batch when they differ from ``ids`` (PGM: 8 visible,
            16 infrared); None: ``ids``.

    A modality without any labelled image contributes no image.
    """

    def __init__(
        self,
        labels_v: np.ndarray,
        labels_r: np.ndarray,
        ids: int,
        images: int,
        cams_v: np.ndarray | None = None,
        cams_r: np.ndarray | None = None,
        ids_v: int | None = None,
    ):
        _check(ids, images, "identity sampler")
        self.pools_v, self.pools_r = pools(labels_v), pools(labels_r)
        self.ids, self.images = int(ids), int(images)
        self.ids_v = self.ids if ids_v is None else int(ids_v)
        _check(self.ids_v, images, "identity sampler (visible ids)")
        if (cams_v is None) != (cams_r is None):
            raise ConfigError("identity sampler: give the cameras of both modalities or neither")
        self.cams = None
        if cams_v is not None:
            self.cams = (np.asarray(cams_v), np.asarray(cams_r))
            for lab, cam, side in (
                (labels_v, self.cams[0], "visible"),
                (labels_r, self.cams[1], "infrared"),
            ):
                if len(cam) != len(lab):
                    raise ConfigError(
                        f"identity sampler: {len(cam)} {side} cameras for {len(lab)} images"
                    )
        if not self.pools_v and not self.pools_r:
            raise ConfigError("identity sampler: no labelled image in either modality")

    def _side(
        self,
        pools_: dict[int, np.ndarray],
        cams: np.ndarray | None,
        rng: np.random.Generator,
        ids: int,
    ) -> np.ndarray:
        if not pools_:
            return np.zeros(0, dtype=np.int64)
        chosen = _choose(sorted(pools_), ids, rng)
        if cams is None:
            return np.concatenate([draw(pools_[int(y)], self.images, rng) for y in chosen])
        return np.concatenate(
            [draw_camera_aware(pools_[int(y)], cams, self.images, rng) for y in chosen]
        )

    def sample(self, rng: np.random.Generator) -> IdentityBatch:
        """One batch: ``ids_v * images`` visible and ``ids * images`` infrared indices."""
        cv, cr = self.cams if self.cams is not None else (None, None)
        return IdentityBatch(
            self._side(self.pools_v, cv, rng, self.ids_v),
            self._side(self.pools_r, cr, rng, self.ids),
        )


class PairedSampler:
    """Paired visible/infrared batches over the two label spaces (SALCR Sec. 3.3).

    Args:
        vis_in_v: (Nv,) visible images' labels in the visible space (ỹ^v);
        ir_in_v: (Nr,) infrared images' labels in the visible space (ŷ^v);
        ir_in_r: (Nr,) infrared images' labels in the infrared space (ỹ^r);
        vis_in_r: (Nv,) visible images' labels in the infrared space (ŷ^r).
        ids: labels per batch (half from each space; an odd ``ids`` draws the extra
            label from the infrared space), images: pairs per label.

    Only labels that hold at least one visible and one infrared image in their space are
    drawn. ``sample`` returns position-paired index arrays of equal length
    ``ids * images``.

    Raises:
        ConfigError: no label in either space has images of both modalities (the engine
            then falls back to :class:`IdentitySampler` and intra-modality terms).
    """

    def __init__(
        self,
        vis_in_v: np.ndarray,
        ir_in_v: np.ndarray,
        ir_in_r: np.ndarray,
        vis_in_r: np.ndarray,
        ids: int,
        images: int,
    ):
        _check(ids, images, "paired sampler")
        vis_in_v, ir_in_v = _labels(vis_in_v, "vis_in_v"), _labels(ir_in_v, "ir_in_v")
        ir_in_r, vis_in_r = _labels(ir_in_r, "ir_in_r"), _labels(vis_in_r, "vis_in_r")
        for a, b, what in ((vis_in_v, vis_in_r, "visible"), (ir_in_r, ir_in_v, "infrared")):
            if len(a) != len(b):
                raise ConfigError(
                    f"paired sampler: the {what} images' labels in the two spaces differ in "
                    f"length ({len(a)} and {len(b)}); each image has one label in each space"
                )
        self.ids, self.images = int(ids), int(images)
        pv_vis, pv_ir = _pools(vis_in_v), _pools(ir_in_v)
        pr_ir, pr_vis = _pools(ir_in_r), _pools(vis_in_r)
        self.space_v = [(pv_vis[y], pv_ir[y]) for y in sorted(set(pv_vis) & set(pv_ir))]
        self.space_r = [(pr_vis[y], pr_ir[y]) for y in sorted(set(pr_vis) & set(pr_ir))]
        if not self.space_v and not self.space_r:
            raise ConfigError(
                "paired sampler: no pseudo-label has both visible and infrared images; "
                "the association linked nothing"
            )

    def sample(self, rng: np.random.Generator) -> IdentityBatch:
        """One batch of ``ids * images`` (visible, infrared) index pairs."""
        n_v = self.ids // 2 if self.space_r else self.ids
        if not self.space_v:
            n_v = 0
        n_r = self.ids - n_v
        idx_v, idx_r = [], []
        for space, n in ((self.space_v, n_v), (self.space_r, n_r)):
            if n == 0:
                continue
            for j in _choose(list(range(len(space))), n, rng):
                vis, ir = space[int(j)]
                idx_v.append(draw(vis, self.images, rng))
                idx_r.append(draw(ir, self.images, rng))
        return IdentityBatch(np.concatenate(idx_v), np.concatenate(idx_r))


class MatchedPairSampler:
    """MBCCM's assignment sampler over a many-to-many cluster matching (Cheng et al., ACM
    MM 2023).

    (Specification: ``shared/notes/peers.md`` Sec. 3.2.)

    Half of a batch's pairs start from a visible cluster ``v`` and take a random infrared
    cluster among those matched to it, the other half start from an infrared cluster
    ``i`` and take a random matched visible one; each pair brings ``images`` visible
    images of its visible cluster and ``images`` infrared images of its infrared cluster.
    Every row of a pair is labelled with the pair: ``v`` in the visible space and ``i`` in
    the infrared space (MBCCM pushes both modalities' rows into the modality-agnostic
    memories with the pair's labels), so a cluster matched to several others is trained
    against each of them in turn, not only against its primary partner.

    Args:
        labels_v: (Nv,) visible images' clusters; labels_r: (Nr,) infrared images'.
        matches: (M, 2) (visible cluster, infrared cluster) pairs of the matching
            (:attr:`uvireid.types.CrossLabels.matches`).
        ids: pairs per batch (an odd ``ids`` starts the extra pair from a visible
            cluster); images: images per cluster of a pair.

    Raises:
        ConfigError: no matched pair has images on both sides.
    """

    def __init__(
        self, labels_v: np.ndarray, labels_r: np.ndarray, matches: np.ndarray, ids: int, images: int
    ):
        _check(ids, images, "matched sampler")
        self.ids, self.images = int(ids), int(images)
        self.pools_v, self.pools_r = pools(labels_v), pools(labels_r)
        pairs = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
        v_to_r: dict[int, list[int]] = {}
        r_to_v: dict[int, list[int]] = {}
        for v, i in pairs.tolist():
            if v in self.pools_v and i in self.pools_r:
                v_to_r.setdefault(v, []).append(i)
                r_to_v.setdefault(i, []).append(v)
        if not v_to_r:
            said = (
                "the association linked nothing"
                if not len(pairs)
                else f"none of its {len(pairs)} match(es) names two clusters that hold images "
                f"(e.g. {pairs[0].tolist()}; clusters with images: visible "
                f"{sorted(self.pools_v)[:5]}, infrared {sorted(self.pools_r)[:5]})"
            )
            raise ConfigError(
                f"matched sampler: no matched pair of clusters has images on both sides: {said}"
            )
        self.v_to_r = {v: np.unique(r) for v, r in sorted(v_to_r.items())}
        self.r_to_v = {i: np.unique(v) for i, v in sorted(r_to_v.items())}

    def sample(self, rng: np.random.Generator) -> IdentityBatch:
        """One batch of ``ids * images`` (visible, infrared) index pairs, with the pairs'
        labels."""
        n_v = (self.ids + 1) // 2
        picks = []
        for start, partners, n in (
            (self.v_to_r, "v", n_v),
            (self.r_to_v, "r", self.ids - n_v),
        ):
            if n == 0:
                continue
            keys = list(start)
            for j in _choose(keys, n, rng):
                other = int(rng.choice(start[int(j)]))
                picks.append((int(j), other) if partners == "v" else (other, int(j)))
        idx_v, idx_r, lab_v, lab_r = [], [], [], []
        for v, i in picks:
            idx_v.append(draw(self.pools_v[v], self.images, rng))
            idx_r.append(draw(self.pools_r[i], self.images, rng))
            lab_v.append(np.full(self.images, v, dtype=np.int64))
            lab_r.append(np.full(self.images, i, dtype=np.int64))
        lv, lr = np.concatenate(lab_v), np.concatenate(lab_r)
        # (vis_in_v, vis_in_r, ir_in_r, ir_in_v): every row carries its pair's two labels
        return IdentityBatch(np.concatenate(idx_v), np.concatenate(idx_r), (lv, lr, lr, lv))


# -- the registered parts: a stage's sampler settings, one epoch sampler per epoch --------
class Batches:
    """Base of the registered samplers (``sampler: {type: NAME, ...}`` in a stage).

    Built once from the recipe's keywords (checked when the recipe is read, so a bad
    value fails ``--dry-run``); each epoch the trainer calls :meth:`for_epoch` with that
    epoch's labels and gets an object whose ``sample(rng)`` draws one
    :class:`IdentityBatch` per step from the trainer's seeded generator (the only state:
    checkpoints store it).

    Attributes:
        pairs: class attribute, True when the batches pair visible and infrared rows
            position by position through the association's cross labels (the losses
            with ``needs_pairs`` train only on such batches, and a stage without an
            associator cannot have one). On an epoch whose association linked nothing
            the trainer draws :meth:`unpaired` batches instead and skips the cross terms.

    Args:
        ids: labels per batch; images: images per label (the meaning per sampler is in
            its docstring).
    """

    pairs: ClassVar[bool] = False

    def __init__(self, ids: int = 8, images: int = 4):
        _check(ids, images, f"{self._kind()} sampler")
        self.ids, self.images = int(ids), int(images)

    @classmethod
    def _kind(cls) -> str:
        spec = [n for n in SAMPLERS.names() if SAMPLERS.get(n) is cls]
        return spec[0] if spec else cls.__name__

    def rows(self) -> tuple[int, int]:
        """(visible, infrared) images of one step, before the visible images' colour
        view (the run manifest's per-GPU batch)."""
        return self.ids * self.images, self.ids * self.images

    def for_epoch(self, labels: EpochLabels, cams: tuple[np.ndarray, np.ndarray]) -> Any:
        """This epoch's sampler: an object with ``sample(rng) -> IdentityBatch``.

        Args:
            labels: the epoch's pseudo-labels (:class:`uvireid.losses.contract.EpochLabels`).
            cams: the visible and the infrared training images' cameras.

        Raises:
            ConfigError: the labels cannot make this sampler's batches (for a pairing
                sampler the trainer then falls back to :meth:`unpaired` and says so).
        """
        raise NotImplementedError(f"{type(self).__name__}.for_epoch")

    def unpaired(self, labels: EpochLabels, cams: tuple[np.ndarray, np.ndarray]) -> Any:
        """Batches of each modality on its own labels, for an epoch without cross links:
        ``ids x images`` per modality."""
        return IdentitySampler(labels.vis_in_v, labels.ir_in_r, self.ids, self.images)


@SAMPLERS.register("identity")
class IdentityBatches(Batches):
    """Each modality on its own clusters, independently: ids clusters x images images
    per modality (the DCL stage).

    Each epoch an :class:`IdentitySampler`.

    Args:
        camera_aware: each label's images are a random anchor and images of other
            cameras (Cluster-Contrast's RandomMultipleGallerySampler, as ADCA and PGM
            load their batches).
        visible_ids: visible labels per batch when they differ from the infrared ``ids``
            (PGM: 16 infrared, 8 visible); null: ``ids``.
    """

    def __init__(
        self,
        ids: int = 8,
        images: int = 4,
        camera_aware: bool = False,
        visible_ids: int | None = None,
    ):
        super().__init__(ids, images)
        if visible_ids is not None:
            _check(visible_ids, images, "identity sampler", "visible_ids")
        self.camera_aware = bool(camera_aware)
        self.visible_ids = None if visible_ids is None else int(visible_ids)

    def rows(self) -> tuple[int, int]:
        return (self.visible_ids or self.ids) * self.images, self.ids * self.images

    def for_epoch(self, labels: EpochLabels, cams: tuple[np.ndarray, np.ndarray]) -> Any:
        cams_v, cams_r = cams if self.camera_aware else (None, None)
        return IdentitySampler(
            labels.vis_in_v,
            labels.ir_in_r,
            self.ids,
            self.images,
            cams_v,
            cams_r,
            ids_v=self.visible_ids,
        )


@SAMPLERS.register("paired")
class PairedBatches(Batches):
    """Visible/infrared pairs over both label spaces: ids labels (half from each space)
    x images pairs (the SALCR stage).

    Each epoch a :class:`PairedSampler`."""

    pairs = True

    def for_epoch(self, labels: EpochLabels, cams: tuple[np.ndarray, np.ndarray]) -> Any:
        return PairedSampler(
            labels.vis_in_v, labels.ir_in_v, labels.ir_in_r, labels.vis_in_r, self.ids, self.images
        )


@SAMPLERS.register("matched")
class MatchedBatches(Batches):
    """Pairs of matched clusters, each row labelled with its pair: ids pairs x images
    images per side (MBCCM's many-to-many assignment sampler, Cheng et al., ACM MM 2023).

    Each epoch a :class:`MatchedPairSampler` over the association's matches."""

    pairs = True

    def for_epoch(self, labels: EpochLabels, cams: tuple[np.ndarray, np.ndarray]) -> Any:
        if labels.matches is None:
            raise ConfigError(
                "the matched sampler needs the association's cluster matches; this epoch has none"
            )
        return MatchedPairSampler(
            labels.init_v, labels.init_r, labels.matches, self.ids, self.images
        )
