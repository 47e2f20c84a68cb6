"""Ranking lists: a query and its top-k gallery images, before and after a re-ranker
(SALCR Fig. 12).

Queries and gallery are trial 0 of the protocol (:func:`uvireid.viz.distances.query_gallery`);
gallery entries the protocol's metric removes are not listed. A correct match (same
identity) gets a green border, a wrong one red; the query is framed in blue. Without a
re-ranker the gallery is ranked by ``-(q @ g.T)`` as the protocols do; with one, by its
``rerank`` distance on the whole query and gallery sets (CMFP is transductive).

Images come from the features file's ``paths`` (relative paths are resolved against
``image_root``). A file without paths, or an image that cannot be read, is drawn as a grey
tile that names the identity, so the list still shows what was right and wrong.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from uvireid.errors import ProtocolError
from uvireid.features import Features
from uvireid.viz import new_figure, save
from uvireid.viz.distances import kept_pairs, query_gallery, reranker_label, trial_label

__all__ = ["DPI", "choose_queries", "plot_matches", "plot_ranking", "ranking_figsize", "top_k"]

logger = logging.getLogger(__name__)

DPI = 100
#: inches per image cell (width, height), caption included; person crops are about 1:2
CELL = (0.9, 2.0)
#: inches left of the grid for the row labels, and above it for the title
LABEL_WIDTH, TITLE_HEIGHT = 1.1, 0.5
#: pixels every image is resized to (width, height)
THUMB = (64, 128)
COLORS = {"correct": "#1a9850", "wrong": "#d73027", "query": "#2166ac"}


def _row_label(name: str, width: int = 16) -> str:
    """A row's re-ranker name, wrapped to fit the height of a thumbnail row (rotated):
    ``kreciprocal(k1=20,k2=6,lambda=0.3)`` ran into the row above (audit BV)."""
    import textwrap

    if len(name) <= width:
        return name
    head, sep, rest = name.partition("(")
    # a long head (a plugin's name) is cut too: wrap breaks words longer than the width
    lines = textwrap.wrap(head, width) if sep else []
    body = f"({rest}" if sep else name
    lines += textwrap.wrap(body.replace(",", ", "), width) or [body]
    return "\n".join(lines)


def ranking_figsize(n_rows: int, k: int) -> tuple[float, float]:
    """(width, height) in inches of a figure of ``n_rows`` lists of ``k`` gallery images."""
    return LABEL_WIDTH + (k + 1) * CELL[0], TITLE_HEIGHT + n_rows * CELL[1]


def choose_queries(
    features: Features,
    q: np.ndarray,
    g: np.ndarray,
    n: int,
    protocol: str | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(min(n, V),) positions into ``q`` of queries with a kept match in the gallery
    (V of them), chosen with ``numpy.random.default_rng(seed)``, ascending."""
    same = features.pids[q][:, None] == features.pids[g][None, :]
    valid = np.flatnonzero((same & kept_pairs(features, q, g, protocol)).any(axis=1))
    if len(valid) == 0:
        raise ProtocolError(
            f"{features.source or 'features'}: no query has a matching identity in the "
            f"gallery; ranking lists need identities seen in both modalities"
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(valid, size=min(n, len(valid)), replace=False))


def top_k(
    features: Features,
    q: np.ndarray,
    g: np.ndarray,
    rows: np.ndarray,
    k: int,
    reranker: Any = None,
    protocol: str | None = None,
) -> np.ndarray:
    """(len(rows), k) indices into ``features`` of the k nearest kept gallery images of the
    queries ``q[rows]`` (-1 where fewer than k are kept)."""
    from uvireid.evaluation.metrics import to_numpy

    if reranker is None:
        dist = -(features.feats[q[rows]] @ features.feats[g].T)
    else:
        full = np.asarray(to_numpy(reranker.rerank(features.feats[q], features.feats[g])))
        dist = full[rows]
    dist = np.where(kept_pairs(features, q[rows], g, protocol), dist, np.inf).astype(np.float64)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    out = g[order]
    out[np.take_along_axis(dist, order, axis=1) == np.inf] = -1
    if out.shape[1] < k:
        out = np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1)
    return out


def _thumb(features: Features, row: int, image_root: Path | None) -> np.ndarray | None:
    """(THUMB[1], THUMB[0], 3) uint8 image of ``row``, or None when no file can be read."""
    if features.paths is None:
        return None
    return _thumb_file(_image_path(features, row, image_root))


def _image_path(features: Features, row: int, image_root: Path | None) -> Path:
    """The image of ``row`` as the ranking lists read it: a relative path under
    ``image_root`` (else the current folder)."""
    path = Path(str(features.paths[row]))
    return image_root / path if image_root is not None and not path.is_absolute() else path


def missing_images(
    features: Features, image_root: str | os.PathLike | None = None, sample: int = 50
) -> tuple[int, int, str | None]:
    """How many of ``sample`` image paths of ``features`` (evenly spaced) are no file, as
    the ranking lists read them (relative ones under ``image_root``, else the current
    folder): ``(missing, checked, first missing)``; ``(0, 0, None)`` without paths."""
    if features.paths is None or len(features.paths) == 0:
        return 0, 0, None
    root = Path(image_root) if image_root is not None else None
    rows = np.unique(np.linspace(0, len(features.paths) - 1, min(sample, len(features.paths))))
    paths = (_image_path(features, row, root) for row in rows.astype(np.int64).tolist())
    missing = [str(path) for path in paths if not path.is_file()]
    return len(missing), len(rows), (missing[0] if missing else None)


def _thumb_file(path: Path) -> np.ndarray | None:
    """(THUMB[1], THUMB[0], 3) uint8 image of the file, or None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize(THUMB))
    except (OSError, ValueError, Image.DecompressionBombError):  # unreadable or too large
        logger.debug("cannot read %s for the ranking list", path)
        return None


def _rgb(color: str) -> np.ndarray:
    return np.asarray([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


class _Mosaic:
    """All tiles in one RGB array (one ``imshow`` instead of one axes per image).

    Tile (r, c) is a THUMB image inside a BORDER-pixel frame; above it a CAPTION-pixel band
    for its caption; columns are GAP apart (plus QUERY_GAP after the query column) and rows
    GAP apart (plus GROUP_GAP between queries).
    """

    BORDER, GAP, CAPTION, QUERY_GAP, GROUP_GAP = 4, 8, 30, 12, 14

    def __init__(self, n_rows: int, n_cols: int, group: int):
        tw, th = THUMB
        self.cell_w = tw + 2 * self.BORDER + self.GAP
        self.cell_h = th + 2 * self.BORDER + self.GAP + self.CAPTION
        self.group = group
        n_groups = -(-n_rows // group)
        width = n_cols * self.cell_w + self.QUERY_GAP
        height = n_rows * self.cell_h + (n_groups - 1) * self.GROUP_GAP
        self.pixels = np.full((height, width, 3), 255, dtype=np.uint8)

    def origin(self, r: int, c: int) -> tuple[int, int]:
        """(x, y) pixel of the top-left corner of tile (r, c)'s frame."""
        x = c * self.cell_w + (self.QUERY_GAP if c > 0 else 0)
        y = r * self.cell_h + (r // self.group) * self.GROUP_GAP + self.CAPTION
        return x, y

    def put(self, r: int, c: int, image: np.ndarray | None, color: str) -> tuple[float, float]:
        """Frame ``image`` (grey when None) in ``color``; returns the tile's centre (x, y)."""
        x, y = self.origin(r, c)
        b, (tw, th) = self.BORDER, THUMB
        self.pixels[y : y + th + 2 * b, x : x + tw + 2 * b] = _rgb(color)
        inner = np.full((th, tw, 3), 200, dtype=np.uint8) if image is None else image
        self.pixels[y + b : y + b + th, x + b : x + b + tw] = inner
        return x + b + tw / 2, y + b + th / 2


def plot_ranking(
    features: Features,
    path: str | os.PathLike,
    *,
    queries: int | np.ndarray = 6,
    k: int = 10,
    reranker: Any = None,
    protocol: str | None = None,
    gallery: Mapping[str, Any] | None = None,
    image_root: str | os.PathLike | None = None,
    seed: int = 0,
    dpi: int = DPI,
) -> Path:
    """Draw ranking lists into a PNG of :func:`ranking_figsize` inches.

    Args:
        features: the test set.
        path: PNG to write.
        queries: how many queries (chosen by :func:`choose_queries`), or positions into the
            protocol's query set.
        k: gallery images per list.
        reranker: optional; each query then gets two lists: without and with it.
        protocol: chooses query, gallery and removed pairs (None: infrared vs visible).
        gallery: how the gallery is drawn (shot, sampler, perm_file; see
            :func:`~uvireid.viz.distances.query_gallery`).
        image_root: folder that relative image paths are relative to.
        seed: query choice seed.
        dpi: resolution.

    Returns:
        The PNG written; rows are query 1 without, query 1 with the re-ranker, query 2, ...
    """
    q, g = query_gallery(features, protocol, gallery)
    if isinstance(queries, (int, np.integer)):
        chosen = choose_queries(features, q, g, int(queries), protocol, seed)
    else:
        chosen = np.asarray(queries, dtype=np.int64)
    k = max(1, min(int(k), len(g)))
    variants = [("no re-ranking", None)]
    if reranker is not None:
        variants.append((reranker_label(reranker), reranker))
    lists = [top_k(features, q, g, chosen, k, part, protocol) for _, part in variants]
    root = Path(image_root) if image_root is not None else None

    n_rows = len(chosen) * len(variants)
    mosaic = _Mosaic(n_rows, k + 1, len(variants))
    texts: list[tuple[float, float, str, str, dict]] = []  # (x, y, text, color, kwargs)
    caption_dy = THUMB[1] / 2 + _Mosaic.BORDER + 3
    hits = [0] * len(variants)
    for i, pos in enumerate(chosen.tolist()):
        qrow = int(q[pos])
        qpid = int(features.pids[qrow])
        query_img = _thumb(features, qrow, root)
        for v, (name, _part) in enumerate(variants):
            r = i * len(variants) + v
            cx, cy = mosaic.put(r, 0, query_img, COLORS["query"])
            caption = f"query id {qpid}, cam {int(features.cams[qrow])}"
            texts.append((cx, cy - caption_dy, caption, COLORS["query"], {"va": "bottom"}))
            if query_img is None:
                texts.append((cx, cy, f"id {qpid}\n(no image)", "black", {"va": "center"}))
            x0, _ = mosaic.origin(r, 0)
            texts.append(
                (
                    x0 - 6,
                    cy,
                    _row_label(name),
                    "black",
                    {"va": "center", "ha": "right", "rotation": 90},
                )
            )
            for j, grow in enumerate(lists[v][i].tolist()):
                if grow < 0:
                    continue
                gpid = int(features.pids[grow])
                correct = gpid == qpid
                hits[v] += int(correct and j == 0)
                color = COLORS["correct" if correct else "wrong"]
                image = _thumb(features, grow, root)
                cx, cy = mosaic.put(r, j + 1, image, color)
                mark = "\u2713" if correct else "\u2717"
                texts.append(
                    (cx, cy - caption_dy, f"{j + 1}: id {gpid} {mark}", color, {"va": "bottom"})
                )
                if image is None:
                    texts.append((cx, cy, f"id {gpid}\n(no image)", "black", {"va": "center"}))

    fig, height = _draw(mosaic, texts, n_rows, k)
    summary = ", ".join(
        f"{name}: rank-1 correct {hits[v]}/{len(chosen)}" for v, (name, _) in enumerate(variants)
    )
    where = trial_label(protocol, gallery) if protocol else "infrared queries vs visible gallery"
    note = "" if features.paths is not None else "  [no image paths in the features file]"
    fig.suptitle(
        f"Top-{k} ranking lists ({where}); green = same identity, red = other\n{summary}{note}",
        fontsize=9,
        y=1.0 - 0.05 / height,
        va="top",
    )
    return save(fig, path, dpi)


def _draw(
    mosaic: _Mosaic, texts: list, n_rows: int, k: int, title_lines: int = 2
) -> tuple[Any, float]:
    """A figure of :func:`ranking_figsize` showing ``mosaic`` and its ``texts``, with room
    above for ``title_lines`` lines of title (two fit :data:`TITLE_HEIGHT`); returns it
    and its height in inches."""
    width, height = ranking_figsize(n_rows, k)
    top = TITLE_HEIGHT + 0.16 * max(0, title_lines - 2)
    height += top - TITLE_HEIGHT
    fig = new_figure(width, height)
    fig.set_layout_engine("none")
    ax = fig.add_axes((LABEL_WIDTH / width, 0.0, 1.0 - LABEL_WIDTH / width, 1.0 - top / height))
    ax.imshow(mosaic.pixels, aspect="auto", interpolation="antialiased")
    ax.set_axis_off()
    for x, y, text, color, kwargs in texts:
        ax.text(
            x,
            y,
            text,
            color=color,
            fontsize=7,
            ha=kwargs.pop("ha", "center"),
            clip_on=False,
            **kwargs,
        )
    return fig, height


def plot_matches(
    query_paths: list[str] | None,
    gallery_paths: list[str] | None,
    index: np.ndarray,
    distance: np.ndarray,
    path: str | os.PathLike,
    *,
    query_pids: np.ndarray | None = None,
    gallery_pids: np.ndarray | None = None,
    title: str = "",
    dpi: int = DPI,
) -> Path:
    """Draw queries and their ranked gallery images (``uvireid match --figure``).

    Args:
        query_paths: (Nq,) image files of the queries drawn, one row each (None: no
            files, grey tiles).
        gallery_paths: the gallery's image files; ``index`` points into them (or None).
        index, distance: (Nq, k) from :func:`uvireid.engine.matching.top_matches`.
        path: PNG to write.
        query_pids, gallery_pids: identities where known (-1 unknown): a match of the
            query's identity is framed green, another red; unknown ones grey.
        title: the figure's first title line.

    Returns:
        The PNG written. A file that cannot be read is a grey tile.
    """
    n_rows, k = index.shape
    mosaic = _Mosaic(max(1, n_rows), k + 1, 1)
    texts: list[tuple[float, float, str, str, dict]] = []
    caption_dy = THUMB[1] / 2 + _Mosaic.BORDER + 3
    known = query_pids is not None and gallery_pids is not None
    hits = checked = 0
    for r in range(n_rows):
        image = _thumb_file(Path(query_paths[r])) if query_paths is not None else None
        cx, cy = mosaic.put(r, 0, image, COLORS["query"])
        qpid = int(query_pids[r]) if known else -1
        checked += int(qpid >= 0)
        name = Path(query_paths[r]).name if query_paths is not None else f"{r + 1}"
        name = name if len(name) <= 14 else name[:6] + ".." + name[-6:]
        caption = f"query id {qpid}" if qpid >= 0 else f"query {name}"
        texts.append((cx, cy - caption_dy, caption, COLORS["query"], {"va": "bottom"}))
        if image is None:
            texts.append((cx, cy, "(no image)", "black", {"va": "center"}))
        for j in range(k):
            g = int(index[r, j])
            gpid = int(gallery_pids[g]) if known else -1
            color = "#969696"
            if qpid >= 0 and gpid >= 0:
                color = COLORS["correct" if gpid == qpid else "wrong"]
                hits += int(j == 0 and gpid == qpid)
            image = _thumb_file(Path(gallery_paths[g])) if gallery_paths is not None else None
            cx, cy = mosaic.put(r, j + 1, image, color)
            texts.append(
                (cx, cy - caption_dy, f"{j + 1}: {distance[r, j]:.3g}", color, {"va": "bottom"})
            )
            if image is None:
                texts.append((cx, cy, "(no image)", "black", {"va": "center"}))
    ids = (
        f"; rank-1 same id {hits}/{checked} of the queries with a known id (green = same "
        f"id, red = other)"
        if checked
        else ""
    )
    note = "; no image files (the features file has no paths)" if query_paths is None else ""
    lines = [title or "Top matches", f"{n_rows} queries, caption: rank: distance{ids}{note}"]
    width = ranking_figsize(max(1, n_rows), k)[0]
    # wrapped to the figure's width (9-point text: about 0.075 inch a character): a
    # narrow figure (--top 1) cut its title off on both sides
    import textwrap

    chars = max(20, int(width / 0.075))
    wrapped = [w for line in lines for w in textwrap.wrap(line, chars)]
    fig, height = _draw(mosaic, texts, max(1, n_rows), k, title_lines=len(wrapped))
    fig.suptitle("\n".join(wrapped), fontsize=9, y=1.0 - 0.05 / height, va="top")
    return save(fig, path, dpi)
