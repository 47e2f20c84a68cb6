"""``uvireid match``: each query image's nearest images of the other modality, as a CSV
(query, rank, gallery, distance): a trained run on folders of your own images, or any
features file."""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from uvireid.errors import ConfigError, DatasetError
from uvireid.types import INFRARED, VISIBLE

logger = logging.getLogger(__name__)

#: queries one --figure may draw (two inches a row)
FIGURE_QUERIES = 100

EPILOG = """\
SOURCE is a run folder (its config.yaml and checkpoints/latest.pt), whose model embeds
the images given with --visible and --infrared (files or folders, searched at every
depth, linked sub-folders included), or a features file (.npz: uvireid extract's, a
--save-features file, or another codebase's, see the README's "Features file"), whose
rows are split by their modality.
Examples:

  uvireid match runs/salcr-20261126-101500 --infrared probes/ --visible cams/ -o m.csv
  uvireid match runs/salcr-... --infrared p.png --visible gallery/ --top 5
  uvireid match runs/salcr-... --infrared ir/ --visible rgb/ --reranker cmfp --k 30 \\
      --save-features mine.npz -o m.csv
  uvireid match mine.npz --reranker kreciprocal -o m2.csv   # again, without re-embedding
  uvireid match sysu_test.npz --direction v2i --top 20      # any features file
  uvireid match mine.npz --top 8 --figure matches.png -o m.csv   # and a picture
  uvireid match runs/salcr-... --infrared new_probes/ --gallery mine.npz -o m3.csv
      # new queries against a gallery embedded before (by the same weights: checked)

The output has one row per (query, rank): query,rank,gallery,distance,query_pid,
gallery_pid (rank 1 = nearest; the distance is -cosine without a re-ranker, the
re-ranker's otherwise; features not of unit length are L2-normalised first, and said;
pids -1 where unknown). Without -o it goes to stdout; -o may be a link or a pipe
(/dev/stdout), written through. Images that cannot be read are skipped, counted and
named on stderr. The features are the run's evaluation's (its size, resize filter,
feature head, flip; L2-normalised).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "match",
        help="rank images of the other modality for each query image (a run's model on "
        "your folders, or a features file)",
        description="For each query image, its nearest images of the other modality, by a "
        "trained run's features (or a features file's), optionally re-ranked; written as "
        "CSV.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="a run folder, or a features file (.npz)")
    p.add_argument(
        "--visible", nargs="+", default=[], metavar="PATH", help="visible image files/folders"
    )
    p.add_argument(
        "--infrared", nargs="+", default=[], metavar="PATH", help="infrared image files/folders"
    )
    p.add_argument(
        "--gallery",
        default=None,
        metavar="F.npz",
        help="with a run folder: the gallery from a features file of the same weights "
        "(--save-features's, extract's or the run's features.npz); only the queries are "
        "embedded",
    )
    p.add_argument(
        "--direction",
        default="i2v",
        choices=["i2v", "v2i"],
        help="i2v (default): infrared queries, visible gallery; v2i the reverse",
    )
    from uvireid.cli._checks import positive_int

    p.add_argument("--top", type=positive_int, default=10, help="matches per query (10)")
    p.add_argument(
        "--reranker", default=None, help="cmfp | kreciprocal | cmrr | aim | a plugin's (none)"
    )
    p.add_argument("--k", type=positive_int, default=None, help="the re-ranker's k")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="re-ranker keyword"
    )
    p.add_argument(
        "--checkpoint", default="latest", help="latest (default), best, or a checkpoint file"
    )
    p.add_argument("-o", "--out", default=None, metavar="OUT.csv", help="CSV (default stdout)")
    p.add_argument(
        "--save-features",
        default=None,
        metavar="F.npz",
        help="also write the embedded images as a features file (match it again with "
        "another re-ranker without embedding again)",
    )
    p.add_argument(
        "--figure",
        default=None,
        metavar="OUT.png",
        help="also draw the first --figure-queries queries and their matches (needs uvireid[viz])",
    )
    p.add_argument("--figure-queries", type=positive_int, default=8, help="queries in --figure (8)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--batch", type=positive_int, default=256, help="images per forward pass")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=run)


def _reranker(args: argparse.Namespace, device: str) -> tuple[Any, str]:
    """The re-ranker of ``--reranker/--k/--set`` on ``device`` and its name, or (None,
    'none')."""
    from uvireid.cli.rerank_cmd import _build, _keywords, _label, _plan
    from uvireid.rerank import OnDevice

    kwargs = _keywords(args)
    if args.reranker is None:
        if kwargs:
            raise ConfigError(
                f"--k/--set ({', '.join(kwargs)}) are keywords of a re-ranker: give "
                f"--reranker too (e.g. --reranker cmfp --k 30)"
            )
        return None, "none"
    if args.reranker == "all":
        raise ConfigError(
            "--reranker all compares re-rankers on a test protocol: that is `uvireid rerank "
            "FEATURES.npz --reranker all --protocol ...`; match takes one re-ranker"
        )
    plan = _plan(kwargs, [args.reranker], every=False)[args.reranker]
    built = _build(args.reranker, plan)
    return OnDevice(built, device), _label(args.reranker, built, plan)


def _outputs(args: argparse.Namespace) -> tuple[Path | None, Path | None, Path | None]:
    """``-o``, ``--save-features`` and ``--figure``, checked before any work: writable,
    not existing unless ``--force`` (a link, ``/dev/stdout`` or a pipe is written through,
    not replaced), no file twice, not the features file being read."""
    from uvireid.cli._checks import output_file
    from uvireid.fileio import written_through

    paths = []
    for value, option, example in (
        (args.out, "-o", "matches.csv"),
        (args.save_features, "--save-features", "features.npz"),
        (args.figure, "--figure", "matches.png"),
    ):
        if value is None:
            paths.append(None)
            continue
        path = output_file(value, option, example=example)
        for source in [args.source] + ([args.gallery] if getattr(args, "gallery", None) else []):
            if os.path.realpath(path) == os.path.realpath(source):  # before "exists": --force
                raise ConfigError(  # would be refused next (audit IB)
                    f"{option} {source} is the features file being read; give another {option}"
                )
        # a link to a file of one's own is overwritten only with --force; /dev/stdout, a
        # pipe are written through
        linked_file = (
            path.is_symlink() and os.path.isfile(path) and not str(path).startswith("/dev/")
        )
        if path.exists() and not args.force and (not written_through(path) or linked_file):
            raise ConfigError(
                f"{path} exists; pass --force to overwrite it, or choose another {option}"
            )
        paths.append(path)
    options = ("-o", "--save-features", "--figure")
    real = [os.path.realpath(p) if p is not None else None for p in paths]
    given = [(r, o) for r, o in zip(real, options, strict=True) if r is not None]
    for i, (path, option) in enumerate(given):
        for other, option2 in given[i + 1 :]:
            if path == other:
                raise ConfigError(f"{option} and {option2} name the same file; give each its own")
    if args.figure is not None:
        from uvireid.viz import require_matplotlib

        if paths[2].suffix.lower() != ".png" and not written_through(paths[2]):
            raise ConfigError(
                f"--figure {args.figure}: the figure is a PNG; name it "
                f"{paths[2].with_suffix('.png').name}"
            )
        if args.figure_queries > FIGURE_QUERIES:
            raise ConfigError(
                f"--figure-queries {args.figure_queries}: at most {FIGURE_QUERIES} queries "
                f"in one figure ({args.figure_queries} rows would be a "
                f"{args.figure_queries * 2:,}-inch-high image); the CSV has every query"
            )

        require_matplotlib()  # before the work, not after it
    return paths[0], paths[1], paths[2]


def _embed(args: argparse.Namespace, device: str, save: Path | None) -> Any:
    """The features of the --visible and --infrared images by the run's model."""
    import numpy as np

    from uvireid.engine.inference import load_model
    from uvireid.engine.matching import image_files
    from uvireid.features import features_from_arrays, save_features

    q_name, g_name = ("infrared", "visible") if args.direction == "i2v" else ("visible", "infrared")
    given = {"visible": args.visible, "infrared": args.infrared}
    gallery = None
    if args.gallery is not None:
        if given[g_name]:
            raise ConfigError(
                f"--{g_name} and --gallery both give the gallery (--direction "
                f"{args.direction}: {q_name} queries); give one of them"
            )
        if not given[q_name]:
            raise ConfigError(
                f"give the {q_name} query images with --{q_name} (files or folders); "
                f"--gallery {args.gallery} is the {g_name} gallery"
            )
        gallery = _gallery_rows(args.gallery, g_name)
    elif not args.visible or not args.infrared:
        missing = " and ".join(f"--{n}" for n, v in given.items() if not v)
        raise ConfigError(
            f"{args.source} is a run folder: give the images to match with {missing} "
            f"(files or folders), or a gallery embedded before with --gallery F.npz"
        )
    other_name = {"visible": "infrared", "infrared": "visible"}
    for name, values in given.items():  # a folder dataset's ROOT for ROOT/<name> (audit QP)
        for value in values:
            wrong = os.path.join(str(value), other_name[name])
            if os.path.isdir(wrong):
                raise ConfigError(
                    f"--{name} {value} holds a {other_name[name]}/ folder ({wrong}), whose "
                    f"images would be read as {name}; give "
                    f"{os.path.join(str(value), name)} (a folder dataset's ROOT/{name})"
                )
    files = {name: image_files(v, f"--{name}") for name, v in given.items() if v}
    others = files.get(g_name) if gallery is None else gallery["paths"]
    real_q = {os.path.realpath(p) for p in files[q_name]}
    # the same file by two names (a link) counts too: it would find itself at rank 1
    both = sorted(str(p) for p in others or [] if os.path.realpath(str(p)) in real_q)
    if both and gallery is not None:
        raise ConfigError(
            f"{len(both)} {q_name} query image(s) are in --gallery {args.gallery} too (e.g. "
            f"{both[0]}), as {g_name} images; each image has one modality"
        )
    if both:
        raise ConfigError(
            f"{len(both)} image(s) are given as both visible and infrared (e.g. {both[0]}); "
            f"each image has one modality"
        )
    model = load_model(args.source, args.checkpoint, device)
    sha = model.weights_sha1  # hashed once: the gallery's check and the meta
    if gallery is not None:
        _check_gallery(gallery["features"], model, sha, args.gallery)
    feats, kept, codes, unread = [], [], [], []
    t = time.perf_counter()
    # the queries' modality first: an unreadable query set is said before the gallery's
    # embedding, usually the longer one
    code_of = {"visible": VISIBLE, "infrared": INFRARED}
    order = [(code_of[name], name) for name in (q_name, g_name) if name in files]
    for code, name in order:
        f, ok, skipped = model.embed(files[name], name, batch=args.batch)
        unread += skipped
        if skipped:
            for path in skipped:
                logger.debug("cannot read %s", path)
            shown = ", ".join(skipped[:3]) + (
                " (-v names every one; --save-features keeps them in its meta)"
                if len(skipped) > 3
                else ""
            )
            logger.warning(
                "%d of %d %s image(s) cannot be read and are skipped: %s",
                len(skipped),
                len(files[name]),
                name,
                shown,
            )
        if not ok:
            raise DatasetError(
                f"none of the {len(files[name])} {name} image(s) can be read (e.g. "
                f"{skipped[0]}); check that they are image files"
            )
        feats.append(f)
        kept += ok
        codes.append(np.full(len(ok), code, dtype=np.int64))
    # the last trained epoch's index, as the run's log and features files number it (the
    # checkpoint counts the epochs it has finished)
    done = model.info.get("epoch")
    last = done - 1 if isinstance(done, int) and done > 0 else None
    stage = model.info.get("stage")
    print(
        f"embedded {len(kept)} images in {time.perf_counter() - t:.1f} s with {model.source} "
        f"(epoch {last if last is not None else '?'}{f' ({stage})' if stage else ''}, "
        f"{model.height}x{model.width})",
        file=sys.stderr,
    )
    pids, cams = np.full(len(kept), -1), np.full(len(kept), -1)
    meta = {
        "source": str(args.source),
        "checkpoint": model.source,
        "epoch": last,
        "checkpoint_epoch": done,
        "stage": stage,
        "feature_head": model.head,
        "test_flip": model.flip,
        "test_size": [model.height, model.width],
        "test_resize": model.resize,
        "weights_sha1": sha,
        "unreadable": unread,
    }
    if gallery is not None:  # its rows after the queries', as they came in the file
        g = gallery["features"]
        rows = gallery["rows"]
        feats.append(g.feats[rows])
        pids = np.concatenate([pids, g.pids[rows]])
        cams = np.concatenate([cams, g.cams[rows]])
        codes.append(g.modality[rows])
        kept += [str(p) for p in gallery["paths"]]
        meta["gallery_from"] = str(args.gallery)
    arrays = (np.concatenate(feats), pids, cams)
    modality = np.concatenate(codes)
    if save is not None:
        save_features(save, *arrays, modality, paths=kept, **meta)
        what = "images" if gallery is None else "queries and the gallery's rows"
        print(f"wrote {save}: {len(kept)} {what} (uvireid match {save} ...)", file=sys.stderr)
    return features_from_arrays(*arrays, modality, paths=kept, **meta)


def _gallery_rows(path: str, name: str) -> dict:
    """``--gallery``'s features file: ``features``, the ``rows`` of the gallery's
    modality ``name`` and their ``paths`` (``FILE:row<i>`` where the file has none)."""
    import numpy as np

    from uvireid.features import load_features

    feats = load_features(path)
    code = {"visible": VISIBLE, "infrared": INFRARED}[name]
    rows = np.flatnonzero(feats.modality == code)
    if not len(rows):
        raise ConfigError(
            f"--gallery {path} has no {name} image, the gallery of this --direction; give "
            f"a features file with {name} rows (or the other --direction)"
        )
    if feats.paths is not None:
        paths = [str(p) for p in feats.paths[rows]]
    else:
        paths = [f"{path}:row{i}" for i in rows]
    return {"features": feats, "rows": rows, "paths": paths}


def _check_gallery(feats: Any, model: Any, own: str, path: str) -> None:
    """``--gallery``'s features are of ``model``'s weights (whose fingerprint is ``own``)
    and test settings, or a ConfigError says which differ (features of two models cannot
    be ranked together)."""
    from uvireid.engine.trainer import precision_of

    meta = feats.meta if isinstance(feats.meta, dict) else {}
    sha = meta.get("weights_sha1")
    remake = (
        "embed the gallery with this run's model: uvireid match RUN --visible G --infrared "
        "Q --save-features F.npz, or uvireid extract RUN -o F.npz"
    )
    if not isinstance(sha, str):
        raise ConfigError(
            f"--gallery {path} does not say which weights made it (no weights_sha1 in its "
            f"meta: another codebase's file, or an older uvireid's); {remake}"
        )
    if sha != own:
        made = meta.get("checkpoint") or meta.get("produced_by") or "?"
        epoch = meta.get("epoch")
        raise ConfigError(
            f"--gallery {path} was made by other weights ({made}"
            f"{f', epoch {epoch}' if epoch is not None else ''}; weights {sha[:12]}) than "
            f"{model.source} (weights {own[:12]}), and features of two models cannot be "
            f"ranked together; give the checkpoint that made it with --checkpoint, or "
            f"{remake}"
        )
    settings = {
        "feature_head": model.head,
        "test_flip": model.flip,
        "test_size": [model.height, model.width],
        "test_resize": model.resize,
    }
    wrong = [
        f"{key} {meta[key]!r} (the run evaluates with {value!r})"
        for key, value in settings.items()
        if key in meta and meta[key] != value
    ]
    if "test_size" not in meta:  # a file of an older uvireid: the size cannot be checked
        logger.warning(
            "--gallery %s does not record the image size it was embedded at (an older "
            "uvireid's file); the queries are embedded at %dx%d",
            path,
            model.height,
            model.width,
        )
    changes = meta.get("changes") if isinstance(meta.get("changes"), dict) else {}
    # what changes the embedding of these weights: the backbone's settings (its pooling,
    # say; size, filter, head and flip are compared above); train.lr or train.amp (a
    # precision, warned below) do not (audit FF: every change was refused)
    embedding = {k: v for k, v in changes.items() if k.startswith("backbone.")}
    if embedding:
        wrong.append(f"changes to the run's backbone {embedding}")
    if wrong:
        raise ConfigError(
            f"--gallery {path} was made by these weights but with {'; '.join(wrong)}: the "
            f"queries would be embedded otherwise; {remake}"
        )
    precision = precision_of(str(model.device), model.amp)
    if meta.get("precision") not in (None, precision):
        logger.warning(
            "--gallery %s was embedded in %s, the queries are in %s: the distances differ "
            "slightly from a ranking of one precision",
            path,
            meta["precision"],
            precision,
        )


def run(args: argparse.Namespace) -> int:
    import numpy as np

    import uvireid  # noqa: F401  (registers parts)
    from uvireid.config import check_device, resolve_device
    from uvireid.engine.matching import top_matches
    from uvireid.engine.run_folder import RunFolder
    from uvireid.features import load_features

    device = resolve_device(check_device(args.device, "--device", "--device"))
    out, save, figure = _outputs(args)
    reranker, label = _reranker(args, device)  # a wrong keyword: before any image is read
    source = Path(args.source)
    if not source.exists():  # not "is a features file": a typo'd run, an unmatched glob
        raise ConfigError(
            f"{source} does not exist; give a run folder (runs/<recipe>-<time>) or a features file"
        )
    if source.is_dir():
        if not RunFolder.is_run(source):
            raise ConfigError(
                f"{source} is a folder without config.yaml, so not a run folder; give a run "
                f"folder (runs/<recipe>-<date>) or a features file"
            )
        feats = _embed(args, device, save)
    else:
        from uvireid.cli._checks import checkpoint_as_source

        checkpoint_as_source(args.source, "match")
        given = [
            o
            for o, v in (
                ("--visible", args.visible),
                ("--infrared", args.infrared),
                ("--save-features", args.save_features),
                ("--checkpoint", args.checkpoint != "latest"),
                ("--gallery", args.gallery),
            )
            if v
        ]
        if given:
            raise ConfigError(
                f"{args.source} is a features file: its images are embedded already, so "
                f"{', '.join(given)} do(es) not apply; give a run folder to embed images"
            )
        feats = load_features(source)
    q_code, g_code = (1, 0) if args.direction == "i2v" else (0, 1)
    names = {0: "visible", 1: "infrared"}
    q, g = np.flatnonzero(feats.modality == q_code), np.flatnonzero(feats.modality == g_code)
    for rows, code, role in ((q, q_code, "query"), (g, g_code, "gallery")):
        if not len(rows):
            raise ConfigError(
                f"{args.source} has no {names[code]} image, the {role} of --direction "
                f"{args.direction}"
            )
    unit = _unit_rows(feats.feats, args.source)
    t = time.perf_counter()
    index, dist = top_matches(unit[q], unit[g], args.top, reranker)
    seconds = time.perf_counter() - t
    paths = feats.paths
    if paths is None:
        paths = np.array([f"row:{i}" for i in range(len(feats.pids))])

    def write(stream: Any) -> None:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["query", "rank", "gallery", "distance", "query_pid", "gallery_pid"])
        for i, qi in enumerate(q):  # a query's rows at a time: no second copy of the table
            qp, qid = paths[qi], int(feats.pids[qi])
            writer.writerows(
                [qp, r, paths[gi], f"{d:.6g}", qid, int(feats.pids[gi])]
                for r, (gi, d) in enumerate(zip(g[index[i]], dist[i], strict=True), start=1)
            )

    def write_bytes(fh: Any, encoding: str) -> None:
        # a file name that is not UTF-8 (legal on Linux) keeps its own bytes, on stdout
        # as with -o (strict stdout raised UnicodeEncodeError on one; audit MI)
        text = io.TextIOWrapper(fh, encoding=encoding, errors="surrogateescape", newline="")
        try:
            write(text)
            text.flush()
        finally:
            text.detach()  # the byte stream stays open: its owner closes it

    if out is None:
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:  # a stream of text only (a notebook's, a test's capture)
            write(sys.stdout)
        else:
            sys.stdout.flush()
            write_bytes(buffer, sys.stdout.encoding or "utf-8")
        sys.stdout.flush()
    else:
        from uvireid.fileio import write_output

        write_output(out, lambda fh: write_bytes(fh, "utf-8"))
    if figure is not None:
        from uvireid.viz.ranking import plot_matches

        n = min(args.figure_queries, len(q))
        if feats.paths is None:
            print(
                "note: the features file has no image paths: the figure shows ids and distances only",
                file=sys.stderr,
            )
        plot_matches(
            None if feats.paths is None else [str(paths[i]) for i in q[:n]],
            None if feats.paths is None else [str(p) for p in paths[g]],
            index[:n],
            dist[:n],
            figure,
            query_pids=feats.pids[q[:n]],
            gallery_pids=feats.pids[g],
            title=f"{args.source}: {names[q_code]} queries, {names[g_code]} gallery, "
            f"re-ranker {label}",
        )
        print(f"wrote {figure}: the first {n} queries' matches", file=sys.stderr)
    whole = " (the whole gallery)" if index.shape[1] == len(g) and args.top > len(g) else ""
    print(
        f"ranked {len(g)} {names[g_code]} images for {len(q)} {names[q_code]} queries "
        f"(re-ranker: {label}, {seconds:.2f} s), {index.shape[1]} a query{whole}"
        + (f"; wrote {out}" if out is not None else ""),
        file=sys.stderr,
    )
    return 0


def _unit_rows(x: Any, source: str) -> Any:
    """``x`` with L2-normalised rows, said when they were not: the distance is -cosine
    as the help says (a features file of another codebase may hold raw features, whose
    dot product favours long rows)."""
    import numpy as np

    norms = np.linalg.norm(x, axis=1)
    if np.abs(norms - 1).max() <= 1e-3:
        return x
    print(
        f"note: the features of {source} are not unit length (norms {norms.min():.3g} to "
        f"{norms.max():.3g}); they are L2-normalised, so the distance is -cosine",
        file=sys.stderr,
    )
    return x / np.where(norms > 0, norms, 1)[:, None]
