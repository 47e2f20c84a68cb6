"""Each query's nearest gallery images: the ranking behind ``uvireid match``.

:func:`top_matches` ranks a gallery for every query by the distances the evaluation
protocols rank with (``-(q . g)`` of L2-normalised features, or a re-ranker's), and
keeps the first ``top`` of each row, nearest first, ties in gallery order (a stable
sort's order). Without a re-ranker it works a block of queries at a time, so memory is
``O(block x gallery)`` and a large gallery never needs a query x gallery matrix.
:func:`image_files` expands the folders and files a user names into image paths.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from uvireid.errors import ConfigError, DatasetError, non_finite_rows

__all__ = ["image_files", "top_matches"]

#: distances of one block of queries (16 MiB in float32)
_BLOCK_ENTRIES = 1 << 22


def image_files(items: Iterable[str | os.PathLike], what: str = "images") -> list[str]:
    """Absolute paths of the image files named by ``items``: a folder stands for every
    image below it (any depth, linked sub-folders included, sorted by path; hidden files
    skipped), a file for itself. A path named twice (or a file inside a folder also
    named, or one file by two names through a link) is kept once, by its first name.

    Raises:
        DatasetError: a path that does not exist, a file that is not an image, or no
            image at all (naming ``what``).
    """
    from uvireid.data.images import IMAGE_EXTENSIONS, is_image_file, list_images

    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        path = os.path.abspath(os.path.expanduser(os.fspath(item)))
        if os.path.isdir(path):
            found = list_images(path, recursive=True, follow_links=True)
            if not found:
                raise DatasetError(
                    f"{what}: the folder {path} holds no image file (looked at every depth "
                    f"for {' '.join(IMAGE_EXTENSIONS)})"
                )
        elif os.path.isfile(path):
            if not is_image_file(os.path.basename(path)):
                raise DatasetError(
                    f"{what}: {path} is not an image file (accepted endings: "
                    f"{' '.join(IMAGE_EXTENSIONS)})"
                )
            found = [path]
        else:
            raise DatasetError(f"{what}: {path} does not exist; give image files or folders")
        for f in found:
            real = os.path.realpath(f)  # a link to an image already listed (audit MF)
            if real not in seen:
                seen.add(real)
                out.append(f)
    if not out:
        raise DatasetError(f"{what}: no image given")
    return out


def _first(dist: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``top`` smallest entries, in the order of a stable sort of the row."""
    n, m = dist.shape
    if top >= m:
        order = np.argsort(dist, axis=1, kind="stable")
        return order, np.take_along_axis(dist, order, axis=1)
    # a selection finds each row's top smallest entries, in no order (torch's top-k: 14x
    # numpy's argpartition here); where the top-th smallest value is not repeated beyond
    # them, they are the answer, sorted by (value, column). Where it is (ties at the
    # boundary), the selection picks among the equal entries in no set order: those rows
    # take every entry up to that value and keep the first columns
    import torch

    dist = np.ascontiguousarray(dist)
    vals, part = torch.topk(torch.from_numpy(dist), top, dim=1, largest=False, sorted=False)
    part = part.numpy()
    kth = vals.max(dim=1).values.numpy()
    tied = np.flatnonzero((dist <= kth[:, None]).sum(axis=1) > top)
    for i in tied:
        cand = np.flatnonzero(dist[i] <= kth[i])
        part[i] = cand[np.lexsort((cand, dist[i, cand]))[:top]]
    vals = np.take_along_axis(dist, part, axis=1)
    index = np.take_along_axis(part, np.lexsort((part, vals), axis=1), axis=1)
    return index, np.take_along_axis(dist, index, axis=1)


def _propagates(reranker: Any) -> bool:
    """A re-ranker whose ``rerank`` is the squared Euclidean distance of its
    ``propagate``'s output (CMFP; :attr:`uvireid.rerank.cmfp.CMFP.propagated_distance`)."""
    return getattr(reranker, "propagated_distance", None) == "squared_euclidean" and callable(
        getattr(reranker, "propagate", None)
    )


def top_matches(
    query: Any,
    gallery: Any,
    top: int = 10,
    reranker: Any = None,
    block: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` nearest gallery rows of each query.

    Args:
        query: (Nq, d) features; gallery: (Ng, d), L2-normalised as the protocols take
            them (numpy arrays or tensors).
        top: matches kept per query (at most Ng).
        reranker: a re-ranker (``RERANKERS.build(...)``): its ``rerank(query, gallery)``
            distances instead of ``-(q . g)``.
        block: queries ranked at a time, without a re-ranker or with one that
            propagates features (CMFP) (default: as many as make about 4M distances).

    Returns:
        ``(index, distance)``, both (Nq, min(top, Ng)): gallery row numbers nearest first
        (equal distances in gallery order), and their distances.

    Raises:
        ConfigError: features of another width, non-finite values, an empty set, a top or
            block below 1, a re-ranker's matrix of the wrong shape.
    """
    from uvireid.evaluation.metrics import to_numpy

    q, g = to_numpy(query), to_numpy(gallery)
    for name, x in (("query", q), ("gallery", g)):
        if x.ndim != 2 or len(x) == 0:
            raise ConfigError(f"{name} features: (N, d) with N >= 1 rows, got {x.shape}")
        bad = non_finite_rows(x)
        if bad is not None:
            raise ConfigError(
                f"{name} features hold NaN or inf in {bad[0]} row(s) (first: row {bad[1][0]}; "
                f"a diverged model gives NaN); "
                f"check the model or the features file"
            )
    if q.shape[1] != g.shape[1]:
        raise ConfigError(
            f"query features are {q.shape[1]}-d and gallery features {g.shape[1]}-d; both "
            f"must come from the same model"
        )
    if block is None:
        block = max(1, _BLOCK_ENTRIES // len(g))
    for name, v in (("top", top), ("block", block)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"{name}: an integer >= 1, got {v!r}")
    top = min(int(top), len(g))
    if reranker is not None and _propagates(reranker):
        # CMFP: its distance is the squared Euclidean distance of the propagated features,
        # ranked a block at a time as without a re-ranker (no (Nq, Ng) matrix, so its
        # sparse or approximate paths rank galleries of millions)
        import torch

        from uvireid.rerank.distances import squared_euclidean

        qp, gp = (torch.from_numpy(to_numpy(x).copy()) for x in reranker.propagate(q, g))
        return _blocked(qp, gp, top, block, lambda a, b: squared_euclidean(a, b).numpy())
    if reranker is not None:
        dist = to_numpy(reranker.rerank(q, g))
        if dist.shape != (len(q), len(g)):
            raise ConfigError(
                f"the re-ranker returned a {dist.shape} matrix for {len(q)} queries and "
                f"{len(g)} gallery images; expected ({len(q)}, {len(g)}) distances"
            )
        if np.isnan(dist).any():
            raise ConfigError(
                f"the re-ranker returned NaN distances ({int(np.isnan(dist).sum())} of "
                f"{dist.size}), which rank nowhere; check its input (all-zero features) or "
                f"use another re-ranker"
            )
        return _first(dist, top)
    dtype = np.result_type(q.dtype, g.dtype, np.float32)
    q, g = q.astype(dtype, copy=False), g.astype(dtype, copy=False)
    return _blocked(q, g, top, block, lambda a, b: -(a @ b.T))


def _blocked(q: Any, g: Any, top: int, block: int, distance: Any) -> tuple[np.ndarray, ...]:
    """:func:`_first` of ``distance(q[rows], g)`` for ``block`` rows at a time."""
    parts = [_first(distance(q[s : s + block], g), top) for s in range(0, len(q), block)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
