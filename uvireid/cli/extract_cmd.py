"""``uvireid extract SOURCE [key=value ...] -o OUT.npz``: a features file from a trained
model, for ``uvireid eval`` and ``uvireid rerank``."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from pathlib import Path

logger = logging.getLogger(__name__)

EPILOG = """\
SOURCE is a run folder (its config.yaml and checkpoints/latest.pt) or a recipe (a YAML
file or a built-in name) with --checkpoint. Overrides change the data to extract; any
other change from a run's recipe (pooling, image size) is warned and recorded in the file.
Examples:

  uvireid extract runs/salcr-20261126-101500 -o sysu_test.npz
  uvireid extract runs/salcr-... data.root=/mnt/SYSU-MM01 -o sysu_test.npz
  uvireid extract runs/salcr_regdb_s3-... -o regdb3.npz   # a RegDB run (name=salcr_regdb_s3): its split
  uvireid extract runs/salcr-... "data={type: llcm, root: /data/LLCM}" -o llcm.npz
  uvireid extract salcr --checkpoint run/checkpoints/latest.pt data.root=... -o f.npz

then:  uvireid eval sysu_test.npz --protocol sysu-all
       uvireid rerank sysu_test.npz --reranker cmfp --protocol sysu-all

The extraction is the run's evaluation: the decoded test images at the training size,
the run's evaluation.feature_head (the BN-neck output by default), flip-averaged
(unless evaluation.flip is false) and L2-normalised (bf16 where the run trained in
bf16). A run folder records its training split, so RegDB's protocol refuses the test
images of another split.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="extract a dataset's test features with a trained checkpoint",
        description="Write the test features of a dataset, extracted with the weights of "
        "a uvireid checkpoint, as a features file (.npz) for `uvireid eval` and `uvireid "
        "rerank`.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="a run folder, or a recipe (YAML file or built-in name)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    p.add_argument("-o", "--out", required=True, metavar="OUT.npz", help="features file")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a uvireid checkpoint (default for a run folder: its checkpoints/latest.pt; a "
        "recipe needs one, or 'none' for the backbone as the recipe builds it)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the recipe's)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvireid  # noqa: F401  (registers parts)
    from uvireid.cli._checks import output_file
    from uvireid.config import check_device, load_recipe, resolve_device
    from uvireid.engine.checkpoint import LATEST
    from uvireid.engine.export import export_features
    from uvireid.errors import CheckpointError, ConfigError
    from uvireid.features import load_features

    # a folder, or an unwritable place: refused before any work
    out = output_file(args.out, "-o", example="features.npz")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it, or choose another -o")
    if args.checkpoint is not None and str(args.checkpoint).lower() != "none":
        if not Path(args.checkpoint).is_file():  # before any weights are built or read
            raise CheckpointError(
                f"--checkpoint {args.checkpoint} does not exist; give the file a run wrote "
                f"(RUN_DIR/checkpoints/latest.pt or best.pt), or 'none' for the backbone as "
                f"the recipe builds it"
            )
    source = Path(args.source)
    checkpoint = args.checkpoint
    train_split = None
    changes: dict = {}
    from uvireid.config import is_builtin_name

    if source.is_dir() and not is_builtin_name(args.source):
        config = source / "config.yaml"
        if not config.is_file():
            raise ConfigError(
                f"{source} is a folder without config.yaml, so not a run folder; give a run "
                f"folder (runs/<recipe>-<date>), or a recipe with --checkpoint"
            )
        run_cfg = load_recipe(config)
        cfg = load_recipe(config, args.overrides)
        if checkpoint is None:
            checkpoint = source / "checkpoints" / LATEST
            if not checkpoint.is_file():
                raise CheckpointError(
                    f"{source} has no checkpoint yet ({checkpoint}: a run writes it after "
                    f"its first epoch); pass --checkpoint PATH for another one"
                )
        from uvireid.engine.run_folder import recipe_changes

        changes = {
            k: v
            for k, v in recipe_changes(run_cfg, cfg).items()
            if not k.startswith("data.") and k != "data"
        }
        if changes:
            logger.warning(
                "these overrides change the model or its input from the run's, so the "
                "features are not the run's own (recorded in the file as 'changes'): %s",
                "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()),
            )
        _check_fixed_size(run_cfg, cfg, args.checkpoint is None)
        run_data, data = run_cfg.get("data") or {}, cfg.get("data") or {}
        if run_data.get("type") == data.get("type") and args.checkpoint is None:
            train_split = run_data.get("split")  # the run's own weights: its own split
    else:
        from uvireid.cli._checks import checkpoint_as_source
        from uvireid.config import recipe_path

        checkpoint_as_source(args.source, "extract")

        if not source.exists():  # neither a run folder nor a recipe file: say so first
            if os.sep in str(args.source) or source.suffix in (".yaml", ".yml"):
                raise ConfigError(
                    f"{args.source} does not exist: no such run folder or recipe file; give "
                    f"a run folder (runs/<recipe>-<date>), a recipe file or a built-in name"
                )
            recipe_path(args.source)  # a bare name: the built-in recipes, closest first
        if checkpoint is None:
            raise ConfigError(
                f"{args.source} is a recipe: pass --checkpoint PATH (the trained weights to "
                f"extract with), or --checkpoint none to extract with the backbone as the "
                f"recipe builds it (backbone.pretrained: an untrained baseline)"
            )
        cfg = load_recipe(args.source, args.overrides)
    if str(checkpoint).lower() == "none":
        checkpoint = None
    if args.device is not None:
        check_device(args.device, "--device", "--device")
    device = resolve_device(args.device or cfg["device"])
    path = export_features(
        cfg,
        out,
        checkpoint=checkpoint,
        device=device,
        train_split=train_split,
        source=str(args.source),
        changes=changes,
    )
    feats = load_features(path)
    protocols = (feats.meta or {}).get("protocols") or []
    print(f"wrote {path}: {len(feats.pids)} test images, d = {feats.feats.shape[1]}")
    meta = feats.meta or {}
    split, trained = meta.get("test_split", meta.get("split")), meta.get("train_split")
    if split is not None and trained is not None and split != trained:
        # RegDB: split i's test identities are another split's training identities
        print(
            f"note: these are split {split}'s test images and the weights were trained on "
            f"split {trained}; RegDB's protocols refuse this file (its test identities are "
            f"training identities of split {trained})"
        )
    elif meta.get("validation") is True and meta.get("train_validation") is False:
        # the protocols refuse it: no "next: uvireid eval" that exits 2 (audit JB)
        print(
            "note: these are the validation ids' images and the weights trained on them (a "
            "run without data.validation); the protocols refuse this file. Extract from a "
            "run trained with data.validation=true"
        )
    elif protocols:
        print(f"next: uvireid eval {shlex.quote(str(path))} --protocol {protocols[0]}")
    return 0


def _check_fixed_size(run_cfg: dict, cfg: dict, own_weights: bool) -> None:
    """A run whose backbone was built for a fixed size (a timm ViT's ``img_size``: its
    position embeddings have one entry per patch) extracts at that size only: another
    ``train.height``/``width`` was refused with advice to set ``backbone.img_size``,
    which then failed to load the run's position embeddings (audit BU). Refused here,
    before any image is read, with the run's size.

    Raises:
        ConfigError: the overrides change the input size of such a run.
    """
    built = (run_cfg.get("backbone") or {}).get("img_size")
    if not own_weights or built is None:
        return
    tr_run, tr = run_cfg.get("train") or {}, cfg.get("train") or {}
    size = [tr.get("height"), tr.get("width")]
    if (cfg.get("backbone") or {}).get("img_size") == built and size == [
        tr_run.get("height"),
        tr_run.get("width"),
    ]:
        return
    from uvireid.errors import ConfigError

    h, w = (int(v) for v in built)
    raise ConfigError(
        f"this run's backbone was built for {h} x {w} images (backbone.img_size: [{h}, {w}]) "
        f"and its weights fit that size only (position embeddings, one per patch); extract "
        f"at the run's size: drop the train.height/train.width and backbone.img_size "
        f"overrides (the run trained at {tr_run.get('height')} x {tr_run.get('width')})"
    )
