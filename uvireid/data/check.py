"""``uvireid data check``: count a dataset and compare it with the official figures.

Hand-rolled preparation silently producing wrong identity and image counts is the
commonest dataset complaint of the peer code (notes/users_pain.md §3). This module
counts identities and images per split × camera × modality, checks that the dataset is
internally consistent (every identity a split file lists has images, splits do not
overlap, both modalities present) and, unless told not to, compares the counts with
the official figures in :data:`OFFICIAL_FIGURES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

from uvireid.data.base import VIDataset, listed_twice, listing

_SYSU_TRAIN = (
    "the SYSU-MM01 release (Wu et al., ICCV 2017; its exp/train_id.txt and exp/val_id.txt: "
    "395 ids) and the SALCR and PGM training logs (22,258 visible / 11,909 infrared images)"
)
_SYSU_TEST = (
    "the SYSU-MM01 release's exp/test_id.txt (96 ids) and the row lengths of its "
    "exp/rand_perm_cam.mat (images per camera: 3,803 infrared queries, 6,775 visible)"
)
_REGDB = (
    "RegDB (Nguyen et al., Sensors 2017: 412 ids, 10 visible + 10 thermal images each) in "
    "the standard split of Ye et al. (206 training / 206 test ids per trial)"
)
_LLCM = "LLCM (Zhang and Wang, CVPR 2023): 713 training and 351 test identities of 1,064"


@dataclass(frozen=True)
class Figure:
    """One official count: ``ids`` and/or ``images`` of a split, camera and modality.

    ``cam``/``modality`` ``None`` mean "all cameras"/"both modalities"; ``ids``/``images``
    ``None`` mean "not compared". RegDB figures hold for every trial split.
    """

    dataset: str
    split: str
    modality: str | None
    cam: int | None
    ids: int | None
    images: int | None
    source: str


#: The official figures ``uvireid data check`` compares with, and where they come from.
OFFICIAL_FIGURES: tuple[Figure, ...] = (
    # SYSU-MM01, train = train_id.txt ∪ val_id.txt (395 ids)
    Figure("sysu", "train", None, None, 395, None, _SYSU_TRAIN),
    Figure("sysu", "train", "visible", None, None, 22258, _SYSU_TRAIN),
    Figure("sysu", "train", "infrared", None, None, 11909, _SYSU_TRAIN),
    # SYSU-MM01 test (96 ids); per camera: ids and images
    Figure("sysu", "test", None, None, 96, 10578, _SYSU_TEST),
    Figure("sysu", "test", "visible", None, 96, 6775, _SYSU_TEST),
    Figure("sysu", "test", "infrared", None, 96, 3803, _SYSU_TEST),
    Figure("sysu", "test", "visible", 1, 56, 1374, _SYSU_TEST),
    Figure("sysu", "test", "visible", 2, 56, 1565, _SYSU_TEST),
    Figure("sysu", "test", "infrared", 3, 93, 1883, _SYSU_TEST),
    Figure("sysu", "test", "visible", 4, 94, 1918, _SYSU_TEST),
    Figure("sysu", "test", "visible", 5, 95, 1918, _SYSU_TEST),
    Figure("sysu", "test", "infrared", 6, 96, 1920, _SYSU_TEST),
    # RegDB, every trial: 206 ids per split, 10 visible + 10 thermal images per id
    Figure("regdb", "train", None, None, 206, 4120, _REGDB),
    Figure("regdb", "train", "visible", None, 206, 2060, _REGDB),
    Figure("regdb", "train", "infrared", None, 206, 2060, _REGDB),
    Figure("regdb", "test", None, None, 206, 4120, _REGDB),
    Figure("regdb", "test", "visible", None, 206, 2060, _REGDB),
    Figure("regdb", "test", "infrared", None, 206, 2060, _REGDB),
    # LLCM: identities only (the image split is not documented in the notes)
    Figure("llcm", "train", None, None, 713, None, _LLCM),
    Figure("llcm", "test", None, None, 351, None, _LLCM),
)

_Key = tuple[str, int | None, str | None]


@dataclass
class Row:
    """Counts of one (split, camera, modality) cell, with the official figures if any."""

    split: str
    cam: int | None
    modality: str | None
    ids: int
    images: int
    official_ids: int | None = None
    official_images: int | None = None

    @property
    def where(self) -> str:
        cam = "all cameras" if self.cam is None else f"cam{self.cam}"
        mod = "both modalities" if self.modality is None else self.modality
        return f"{self.split} {cam} {mod}"

    def mismatches(self) -> list[str]:
        """``"found X ids, official Y (+d)"`` for each count that differs."""
        out = []
        for what, found, official in (
            ("ids", self.ids, self.official_ids),
            ("images", self.images, self.official_images),
        ):
            if official is not None and found != official:
                out.append(f"found {found:,} {what}, official {official:,} ({found - official:+,})")
        return out


@dataclass
class CheckReport:
    """What ``uvireid data check`` found: the count table and the problems."""

    dataset: str
    title: str
    root: str
    split: int | None
    official: bool
    rows: list[Row]
    problems: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    camera_names: dict[int, str] | None = None  # the folder dataset's camera folders

    @property
    def ok(self) -> bool:
        return not self.problems


def _rows(stats_by_split: dict[str, dict], figures: Sequence[Figure]) -> list[Row]:
    """Per split: one row per (camera, modality), then per modality, then the total."""
    by_key = {(f.split, f.cam, f.modality): f for f in figures}
    rows = []
    for split, stats in stats_by_split.items():
        cells: dict[_Key, tuple[int, int]] = {}
        for c in stats["cameras"]:
            cells[(split, c["cam"], c["modality"])] = (c["ids"], c["images"])
        for mod in ("visible", "infrared"):
            cells[(split, None, mod)] = (stats[mod]["ids"], stats[mod]["images"])
        cells[(split, None, None)] = (stats["ids"], stats["images"])
        for key in by_key:  # an official cell with nothing found is a row of zeros
            if key[0] == split and key not in cells:
                cells[key] = (0, 0)
        if not stats["images"] and not any(k[0] == split for k in by_key):
            continue  # e.g. the folder dataset's empty test split

        def order(key: _Key) -> tuple:  # cameras, then modality totals, then the total
            _, cam, mod = key
            return (cam is None, mod is None, cam or 0, mod != "visible")

        for key in sorted(cells, key=order):
            fig = by_key.get(key)
            rows.append(
                Row(
                    *key,
                    *cells[key],
                    official_ids=fig.ids if fig else None,
                    official_images=fig.images if fig else None,
                )
            )
    return rows


def split_overlaps(ds: VIDataset, identities: bool = True, images: bool = True) -> list[str]:
    """The identities its split files give to two splits, and the images two splits share:
    a training set that holds test identities (a leak that still gives plausible numbers)."""
    problems = []
    if identities:
        for (a, ids_a), (b, ids_b) in combinations(ds.declared_ids.items(), 2):
            both = sorted(set(ids_a.ids) & set(ids_b.ids))
            if both:
                problems.append(
                    f"{ids_a.source} ({a}) and {ids_b.source} ({b}) share {len(both)} "
                    f"identities: {listing(both)}; expected disjoint splits"
                )
    if images:
        for (a, recs_a), (b, recs_b) in combinations(ds.splits().items(), 2):
            shared = sorted({r.path for r in recs_a} & {r.path for r in recs_b})
            if shared:
                problems.append(
                    f"{len(shared)} image(s) are in both {a} and {b}: {listing(shared)}; "
                    f"expected disjoint splits"
                )
    return problems


def _consistency_problems(ds: VIDataset, stats_by_split: dict[str, dict]) -> list[str]:
    problems = []
    for split, missing in ds.missing_ids().items():
        n = len(ds.declared_ids[split].ids)
        one = len(missing) == 1
        problems.append(
            f"{split}: {len(missing)} identit{'y' if one else 'ies'} listed in "
            f"{ds.declared_ids[split].source} {'has' if one else 'have'} no image in any "
            f"camera: missing identit{'y' if one else 'ies'} {listing(missing, 20)}; expected "
            f"{n} identities with images, found {n - len(missing)}"
        )
    problems.extend(split_overlaps(ds, images=False))
    for split, records in ds.splits().items():
        twice = listed_twice(r.path for r in records)
        if twice:
            problems.append(
                f"{split}: {len(twice)} image(s) are listed more than once: "
                f"{listing(twice)}; expected each image once (a list file concatenated "
                f"twice or edited?)"
            )
    problems.extend(split_overlaps(ds, identities=False))
    for split, stats in stats_by_split.items():
        if stats["images"]:
            for mod in ("visible", "infrared"):
                if not stats[mod]["images"]:
                    problems.append(
                        f"{split} has no {mod} images; expected both modalities in every split"
                    )
    for split, records in ds.splits().items():
        seen: dict[int, set[int]] = {}
        for r in records:
            if r.pid >= 0:
                seen.setdefault(r.pid, set()).add(r.modality)
        one_sided = sorted(pid for pid, mods in seen.items() if len(mods) == 1)
        if seen and len(seen) == len(one_sided) and len(set().union(*seen.values())) == 2:
            problems.append(
                f"{split}: no identity has images in both modalities ({len(seen)} "
                f"identities, each in one only); expected the visible and infrared images of "
                f"a person to share an identity number (two numberings mixed?): no query "
                f"would have a true match"
            )
        elif one_sided and len(seen) > len(one_sided):  # some ids have both: all should
            problems.append(
                f"{split}: {len(one_sided)} identit{'y has' if len(one_sided) == 1 else 'ies have'}"
                f" images in one modality only: {listing(one_sided, 20)}; expected every "
                f"identity in both (a camera folder deleted or not extracted?)"
            )
    problems.extend(ds.consistency_problems())
    return problems


def unreadable_images(ds: VIDataset) -> list[str]:
    """Paths of the images of ``ds`` that PIL cannot decode (JPEGs decoded at reduced
    size: the whole file is still read and checked, several times faster)."""
    from PIL import Image

    bad = []
    for records in ds.splits().values():
        for r in records:
            try:
                with Image.open(r.path) as im:
                    im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                    im.load()
            except Exception:  # any decoding failure: PIL raises many kinds
                bad.append(r.path)
    return bad


def check_dataset(
    ds: VIDataset,
    official: bool = True,
    figures: Sequence[Figure] | None = None,
    decode: bool = False,
) -> CheckReport:
    """Count ``ds`` and list every problem found.

    Args:
        ds: an opened dataset.
        official: compare with the official figures (otherwise only check that the
            dataset is internally consistent).
        figures: the figures to compare with; default the rows of
            :data:`OFFICIAL_FIGURES` for ``ds.name``.
        decode: also decode every image (:func:`unreadable_images`).

    Returns:
        a :class:`CheckReport`; ``report.ok`` is False when anything is wrong.
    """
    if figures is None:
        figures = [f for f in OFFICIAL_FIGURES if f.dataset == ds.name]
    figures = list(figures) if official else []
    stats = ds.stats()
    rows = _rows(stats, figures)
    problems = _consistency_problems(ds, stats)
    for row in rows:
        problems.extend(f"{row.where}: {m}" for m in row.mismatches())
    if decode:
        bad = unreadable_images(ds)
        if bad:
            fix = (
                "export them again or remove them"  # the user's own images: no release
                if ds.name == "folder"
                else "restore them from the release archive"
            )
            problems.append(
                f"{len(bad)} image(s) cannot be decoded: {listing(bad, 5)}; {fix} (training "
                f"skips them, evaluation stops on them)"
            )
    return CheckReport(
        dataset=ds.name,
        title=ds.title,
        root=ds.root,
        split=ds.split,
        official=official,
        rows=rows,
        problems=problems,
        sources=sorted({f.source for f in figures}),
        camera_names=getattr(ds, "camera_names", None),
    )


def _cell(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def table_lines(
    rows: Sequence[Row], official: bool = True, names: dict[int, str] | None = None
) -> list[str]:
    """Rows as aligned text lines; the official columns only when ``official``."""
    header = ["split", "camera", "modality", "ids", "images"]
    if official:
        header = ["split", "camera", "modality", "ids", "official", "images", "official", ""]
    table = [header]
    for r in rows:
        cells = [
            r.split,
            "all" if r.cam is None else (names or {}).get(r.cam, f"cam{r.cam}"),
            "both" if r.modality is None else r.modality,
            _cell(r.ids),
            _cell(r.images),
        ]
        if official:
            cells[4:] = [_cell(r.official_ids), _cell(r.images), _cell(r.official_images)]
            cells.append("MISMATCH" if r.mismatches() else "")
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = range(3, len(header) - (1 if official else 0))
    return [
        "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))
        ).rstrip()
        for row in table
    ]


def format_report(report: CheckReport) -> str:
    """The report as the text ``uvireid data check`` prints: title, table, verdict."""
    split = f" split {report.split}" if report.split is not None else ""
    lines = [f"{report.title}{split} at {report.root}"]
    if report.official:
        lines.append("official figures from:" if report.sources else "no official figures known")
        lines.extend(f"  {source}" for source in report.sources)
    else:
        lines.append("official figures: not compared (internal consistency only)")
    lines.extend(table_lines(report.rows, report.official, report.camera_names))
    if report.ok:
        if report.official and report.sources:
            what = "match the official figures"
        elif report.official:
            what = "are internally consistent (no official figures to compare with)"
        else:
            what = "are internally consistent"
        lines.append(f"OK: the counts {what}.")
    else:
        lines.append(f"CHECK FAILED: {len(report.problems)} problem(s):")
        lines.extend(f"  - {p}" for p in report.problems)
    return "\n".join(lines)


def stats_table(ds: VIDataset) -> str:
    """Identity and image counts of ``ds`` per split, camera and modality, as text."""
    return "\n".join(
        table_lines(_rows(ds.stats(), []), official=False, names=getattr(ds, "camera_names", None))
    )


__all__ = [
    "OFFICIAL_FIGURES",
    "CheckReport",
    "Figure",
    "Row",
    "check_dataset",
    "unreadable_images",
    "format_report",
    "stats_table",
    "table_lines",
]
