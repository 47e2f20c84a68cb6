"""``uvireid data``: check a dataset folder, or write the synthetic dataset.

``uvireid data check ROOT --dataset sysu|regdb|llcm [--split N] [--official true|false]``
prints identity and image counts per split, camera and modality, compares them with
the official figures (:data:`uvireid.data.check.OFFICIAL_FIGURES`) and exits 1 when
anything differs or is inconsistent.

``uvireid data synth --out DIR [--ids N] [--seed S] [--nir X]`` writes the synthetic dataset with
:func:`uvireid.data.synthetic.generate` and prints where and how much it wrote.
"""

from __future__ import annotations

import argparse

from uvireid.errors import ConfigError

CHECK_EPILOG = """\
examples:
  uvireid data check /data/SYSU-MM01 --dataset sysu
  uvireid data check /data/RegDB --dataset regdb --split 3
  uvireid data check /data/RegDB --dataset regdb --split all    # the ten trials
  uvireid data check /data/LLCM --dataset llcm --official false   # consistency only

exit status: 0 when the counts match (and the dataset is consistent), 1 when they do
not, 2 when the folder cannot be read as that dataset."""

SYNTH_EPILOG = """\
example:
  uvireid data synth --out data/synthetic --ids 16 --seed 0
  uvireid data check data/synthetic --dataset synthetic --official false"""

DATA_EPILOG = """\
examples:
  uvireid data check /data/SYSU-MM01 --dataset sysu
  uvireid data synth --out data/synthetic"""


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` with its sub-commands ``check`` and ``synth``."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = subparsers.add_parser(
        "data",
        help="check a dataset folder against the official counts, or write the synthetic set",
        description="Dataset tools: check a release folder, write the synthetic dataset.",
        epilog=DATA_EPILOG,
        formatter_class=fmt,
    )
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _help(parser))

    check = sub.add_parser(
        "check",
        help="count identities and images and compare with the official figures",
        description=(
            "Count identities and images per split, camera and modality, check that every "
            "identity the split files list has images, and compare the counts with the "
            "official figures of the release."
        ),
        epilog=CHECK_EPILOG,
        formatter_class=fmt,
    )
    check.add_argument("root", help="the dataset folder (the release as extracted)")
    check.add_argument(
        "--dataset",
        required=True,
        help="dataset name: sysu, regdb or llcm (any registered dataset; see `uvireid list`)",
    )
    check.add_argument(
        "--split",
        type=_split_arg,
        help="RegDB trial split 1..10 (default 1), or 'all': every split found in idx/",
    )
    check.add_argument(
        "--official",
        type=_bool,
        default=True,
        metavar="true|false",
        help="compare with the official figures (default true); false checks only that "
        "the dataset is internally consistent",
    )
    check.add_argument(
        "--decode",
        type=_bool,
        default=True,
        metavar="true|false",
        help="also decode every image and list the unreadable ones (default true; about a "
        "minute for SYSU-MM01 on two cores)",
    )
    check.set_defaults(func=run_check)

    synth = sub.add_parser(
        "synth",
        help="write the synthetic dataset (tiny, for demos and tests)",
        description="Write the synthetic visible-infrared dataset and print its counts.",
        epilog=SYNTH_EPILOG,
        formatter_class=fmt,
    )
    synth.add_argument("--out", required=True, help="folder to write the dataset into")
    synth.add_argument("--ids", type=int, default=None, help="number of identities (default 500)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument(
        "--nir",
        type=float,
        default=0.0,
        help="near-infrared share of the infrared images, 0..1: 0 (default) renders heat "
        "as a thermal camera (RegDB), higher values let the clothes' visible brightness "
        "show as near-infrared cameras (SYSU-MM01) do",
    )
    synth.set_defaults(func=run_synth)


def _split_arg(text: str) -> int | str:
    """``--split``: a trial number, or ``all``."""
    if text.strip().lower() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a split: give a trial number (1..10 for RegDB) or all"
        ) from None


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _open(name: str, root: str, split: int | None = None):
    """Open dataset ``name`` at ``root`` through the registry (with ``split`` if given)."""
    from uvireid.registry import DATASETS

    kwargs: dict = {"type": name, "root": root}
    if split is not None:
        if "split" not in DATASETS.signature(name).parameters:
            raise ConfigError(
                f"--split applies to datasets with several splits (regdb); {name} has one "
                f"fixed split. Leave --split out"
            )
        kwargs["split"] = split
    return DATASETS.build(kwargs)


def run_check(args: argparse.Namespace) -> int:
    """``uvireid data check``: print the count table; 1 when anything is wrong."""
    from uvireid.data.check import check_dataset, format_report

    if args.dataset == "synthetic":  # checking reads: never generate into the folder
        from uvireid.data.synthetic import read_manifest
        from uvireid.errors import DatasetError

        if read_manifest(args.root) is None:
            raise DatasetError(
                f"no complete synthetic dataset at {args.root} (no manifest.json and DONE); "
                f"write one with: uvireid data synth --out {args.root}"
            )
    if args.split == "all":
        return _check_every_split(args)
    ds = _open(args.dataset, args.root, args.split)
    report = check_dataset(ds, official=args.official, decode=args.decode)
    print(format_report(report))
    return 0 if report.ok else 1


def _check_every_split(args: argparse.Namespace) -> int:
    """``--split all``: each split's report, then one line per split; 1 when a split's
    check fails, 2 when a split cannot be read (the others are still checked)."""
    from uvireid.data.base import as_root, require_root
    from uvireid.data.check import check_dataset, format_report
    from uvireid.errors import DatasetError, UvireidError
    from uvireid.registry import DATASETS

    cls = DATASETS.get(args.dataset)
    finder = getattr(cls, "available_splits", None)
    if finder is None:
        raise ConfigError(
            f"--split all applies to datasets with several splits (regdb); {args.dataset} "
            f"has one fixed split. Leave --split out"
        )
    # the root as one split's dataset reads it (~ expanded), and its missing-root error
    title = getattr(cls, "title", args.dataset)
    args.root = as_root(args.root, title)
    require_root(args.root, title, getattr(cls, "layout", ""))
    splits = finder(args.root)
    if not splits:
        raise DatasetError(
            f"no split lists under {args.root}/idx (train_visible_N.txt); copy the idx/ "
            f"folder from the release"
        )
    status: dict[int, str] = {}
    for split in splits:
        try:
            ds = _open(args.dataset, args.root, split)
            report = check_dataset(ds, official=args.official, decode=args.decode)
        except UvireidError as exc:
            print(f"split {split}: error: {exc}\n")
            status[split] = "unreadable"
            continue
        print(format_report(report) + "\n")
        status[split] = "ok" if report.ok else "mismatch"
    bad = {s: v for s, v in status.items() if v != "ok"}
    names = ", ".join(map(str, splits))
    if not bad:
        what = "consistent, with the official counts" if args.official else "consistent"
        print(f"every split checked ({names}): all {what}")
        return 0
    listing = "; ".join(f"split {s}: {v}" for s, v in bad.items())
    print(f"{len(bad)} of {len(splits)} splits ({names}) failed: {listing}")
    return 2 if "unreadable" in bad.values() else 1


def run_synth(args: argparse.Namespace) -> int:
    """``uvireid data synth``: write the synthetic dataset and print its counts."""
    from uvireid.cli._checks import output_folder
    from uvireid.data import synthetic
    from uvireid.data.check import stats_table

    # the numbers first: a refused --ids left the --out folder made, empty (audit IB)
    synthetic.check_params(args.ids, args.seed, args.nir)
    output_folder(args.out, "--out")
    kw = {"nir": args.nir} if args.nir else {}
    out = synthetic.generate(args.out, ids=args.ids, seed=args.seed, **kw)
    ds = _open("synthetic", str(out))
    print(f"wrote the synthetic dataset to {out}")
    print(stats_table(ds))
    return 0
