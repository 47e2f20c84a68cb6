"""Running a recipe: build its parts, fill the run folder, evaluate.

The unsupervised training loop (extract → refine → cluster → associate → train) plugs
in here; a recipe without losses is an evaluation run: extract the test features of
the recipe's backbone, write them as a features file and measure the dataset's protocol,
without and with the recipe's re-ranker.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uvireid.config import resolve_device
from uvireid.engine.extract import extract_features
from uvireid.engine.run_folder import (
    RunFolder,
    build_manifest,
    check_resume,
    check_world_size,
    dataset_meta,
    refuse_split_overlap,
    resume_target,
    resumed_manifest,
)
from uvireid.errors import ConfigError, RunFolderError, TrainingError, UvireidError
from uvireid.models.backbone import check_input_size
from uvireid.registry import BACKBONES, DATASETS, RERANKERS
from uvireid.rerank import OnDevice

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def protocol_for(dataset: Any, cfg: dict) -> str | None:
    """The recipe's evaluation protocol, checked against what the dataset supports; None
    for ``evaluation.protocol: none``, or ``auto`` on a dataset without test protocols
    (your own unlabelled crops, the ``folder`` dataset): the run trains without
    evaluating."""
    protocol = cfg["evaluation"]["protocol"]
    # a dataset of one's own may lack these (duck-typed: train and test records suffice)
    protocols = tuple(getattr(dataset, "protocols", ()) or ())
    if protocol == "none" or (protocol == "auto" and not protocols):
        return None
    if protocol == "auto":
        protocol = protocols[0]
    _check_protocol_fits(protocol, protocols, cfg["data"]["type"])
    return protocol


def _check_protocol_fits(protocol: str, protocols: Any, data_type: str) -> None:
    """Refuse a protocol that is not among a dataset's ``protocols``."""
    if protocol not in protocols:
        raise ConfigError(
            f"evaluation.protocol '{protocol}' does not fit dataset '{data_type}'; "
            + (
                f"its protocols: {', '.join(protocols)}"
                if protocols
                else "it has no test protocol: use evaluation.protocol=none (train only)"
            )
        )


def check_features_vary(feats: Any, rel: float = 1e-5, modality: Any = None) -> None:
    """Refuse test features that are all the same (the rows within ``rel`` of the largest
    magnitude of each other): a collapsed model, whose protocol figures would only measure
    the order in which ties are broken (a diverged run once reported 46 mAP that way).
    With ``modality`` (one value per row), each modality's features are checked on their
    own too: when one side alone is constant (one stem of a two-stream model collapsed,
    or one modality's images all alike), every query ranks the gallery alike and the
    figures mean as little (audit AU, session 18).

    Raises:
        TrainingError: naming the spread, the modality and what to check.
    """
    from uvireid.features import identical_rows
    from uvireid.types import MODALITY_NAMES

    groups = [("", np.arange(len(feats)))]
    if modality is not None:
        mod = np.asarray(modality)
        for m in np.unique(mod):
            groups.append((f"{MODALITY_NAMES.get(int(m), m)} ", np.flatnonzero(mod == m)))
    for name, rows in groups:
        same = identical_rows(feats if not name else np.asarray(feats)[rows], rel)
        if same is None:
            continue
        spread, scale = same
        raise TrainingError(
            f"the {len(rows)} {name}test features are all the same (largest difference "
            f"{spread:.2g} at magnitude {scale:.2g}), so the protocol's figures would only "
            f"measure the order of ties. Either the model has collapsed (check the training "
            f"log: cluster counts, loss; lower train.lr) or the {name}test images are "
            f"themselves identical or blank (look at a few of them)"
        )


def _manifest_dataset_check(folder: RunFolder) -> dict | None:
    """The run manifest's ``dataset_check`` (None when absent or unreadable)."""
    from uvireid.engine.run_folder import read_manifest

    check = (read_manifest(folder.path) or {}).get("dataset_check")
    return check if isinstance(check, dict) else None


def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    cfg: dict,
    device: str,
    folder: RunFolder | None = None,
    *,
    progress: bool = True,
    bank: Any = None,
    meta: dict | None = None,
) -> dict[str, Any]:
    """Extract the test set, save the features file, run the protocol (± re-ranker).

    ``bank``: test features already extracted (a :class:`~uvireid.types.FeatureBank` in
    the order of ``dataset.test``); the trainer passes the ones it computed from its
    decoded-image cache. ``meta``: more provenance for the features file (the trainer's
    epoch, stage and whether it is the final one), which the results carry too.
    """
    from uvireid.engine.trainer import eval_resize
    from uvireid.evaluation.protocols import run_protocol
    from uvireid.features import load_features, save_features

    ev, tr = cfg["evaluation"], cfg["train"]
    protocol = protocol_for(dataset, cfg)
    t0 = time.perf_counter()
    if bank is None:
        bank = extract_features(
            model,
            dataset.test,
            height=tr["height"],
            width=tr["width"],
            device=device,
            workers=tr["workers"],
            progress=progress,
            head=ev["feature_head"],
            resize=eval_resize(tr),  # as the trainer's own evaluation decodes them
            flip=ev["flip"],
            amp=bool(tr.get("amp")),  # audit BH: an evaluation-only run ignored it
        )
    seconds = {"extract": time.perf_counter() - t0}
    check_features_vary(bank.feats, modality=bank.modality)
    extra = meta or {}
    meta = dataset_meta(dataset, cfg)
    meta.update(
        feature_head=ev["feature_head"],
        test_flip=ev["flip"],
        test_size=[int(tr["height"]), int(tr["width"])],
        test_resize=eval_resize(tr),
        produced_by=f"uvireid run {cfg['name']}",
    )
    meta.update(extra)
    from uvireid.engine.checkpoint import weights_sha1
    from uvireid.engine.trainer import precision_of

    meta.setdefault("precision", precision_of(device, bool(tr.get("amp"))))
    # which weights made the features: `uvireid match RUN --gallery features.npz` embeds
    # new queries with the same model only
    meta.setdefault("weights_sha1", weights_sha1(model))
    if "split" in meta:  # RegDB: the model of this run belongs to this split
        meta.setdefault("train_split", meta["split"])
    if meta.get("validation"):  # the run's model left the validation ids out
        meta.setdefault("train_validation", True)
    if folder is not None and "dataset_check" not in meta:
        # a copy that is not the release says so in the run's own tables and features, as
        # extract's do (audit AR: only a warning at the top of log.txt and the manifest did)
        check = _manifest_dataset_check(folder)
        if check is not None:
            meta["dataset_check"] = check
    # saved and read back, so the results come from the file a user gets; without a run
    # folder (a Trainer built in a notebook or a test) into a temporary folder, removed
    # after: nothing is written in the working directory (audit U, session 17)
    with contextlib.ExitStack() as stack:
        if folder is not None:
            target = folder.path
        else:
            target = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="uvireid-")))
        path = save_features(
            target / "features.npz",
            bank.feats,
            bank.pids,
            bank.cams,
            bank.modality,
            paths=bank.paths,
            **meta,
        )
        feats = load_features(path)
    kwargs = dict(
        trials=ev["trials"],
        shot=ev["shot"],
        sampler=ev["sampler"],
        perm_file=ev["perm_file"],
        feature_head=ev["feature_head"],
    )
    t0 = time.perf_counter()
    results = {"none": run_protocol(feats, protocol, **kwargs)}
    seconds["evaluate"] = time.perf_counter() - t0
    if cfg.get("reranker"):
        # on the training device: a GPU run re-ranks on the GPU, not on the host
        reranker = OnDevice(RERANKERS.build(cfg["reranker"]), device)
        t0 = time.perf_counter()
        results[cfg["reranker"]["type"]] = run_protocol(
            feats, protocol, reranker=reranker, **kwargs
        )
        seconds["rerank"] = time.perf_counter() - t0
    return {"results": results, "seconds": seconds, "features": str(path) if folder else None}


def check_parts(cfg: dict) -> None:
    """Build every part the recipe names, each stage's clusterer, associator and losses and
    the re-rankers, so that a value a constructor refuses fails now (and in ``--dry-run``),
    not when its stage begins, possibly hours into the run.

    Raises:
        ConfigError: naming the stage and the part.
    """
    from uvireid.registry import ASSOCIATORS, CLUSTERERS, LOSSES

    parts: list[tuple[str, Any, dict]] = []
    if is_training(cfg):
        from uvireid.engine.trainer import stages_of

        for st in stages_of(cfg):
            _check_stage_fits(st)
            parts.append((f"stage '{st.name}': clusterer", CLUSTERERS, st.clusterer))
            if st.associator:
                parts.append((f"stage '{st.name}': associator", ASSOCIATORS, st.associator))
            for i, loss in enumerate(st.losses):
                kwargs = {k: v for k, v in loss.items() if k != "weight"}
                parts.append((f"stage '{st.name}': losses.{i}", LOSSES, kwargs))
    for key in ("reranker", "refine"):
        if cfg.get(key):
            parts.append((key, RERANKERS, cfg[key]))
    _check_backbone_class(cfg)

    def propagates(name: str) -> bool:  # refine: needs features back, not distances
        return callable(getattr(RERANKERS.get(name), "propagate", None))

    refine = cfg.get("refine")
    if refine and not propagates(refine["type"]):
        able = [n for n in RERANKERS.names() if propagates(n)]
        raise ConfigError(
            f"refine: {refine['type']!r} re-ranks to distances only; refine: needs a part that "
            f"propagates features (propagate(visible, infrared)): {', '.join(able)}"
        )
    part_counts: list[tuple[str, int]] = []
    for where, registry, spec in parts:
        try:
            part = registry.build(spec)
            if callable(getattr(part, "_check_params", None)):  # checks made at fit time
                part._check_params()
        except ConfigError as exc:
            raise ConfigError(f"{where} ({spec['type']}): {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where} ({spec['type']}): {type(exc).__name__}: {exc}") from None
        if registry is LOSSES:
            from uvireid.engine.trainer import check_loss_module

            check_loss_module(part, f"{where} ({spec['type']})", warn=False)
        if registry is LOSSES and getattr(part, "needs_parts", False):
            part_counts.append((f"{where} ({spec['type']})", int(part.num_parts)))
    if part_counts and (cfg.get("backbone") or {}).get("type") == "timm" and is_training(cfg):
        # a timm model may have no spatial map (a ViT): built here without its weights,
        # so --dry-run says so too, not only the run's start (audits AA, BU)
        from uvireid.engine.trainer import check_part_map
        from uvireid.registry import BACKBONES

        spec = {**cfg["backbone"], "pretrained": False}
        tr = cfg["train"]
        check_part_map(BACKBONES.build(spec), tr["height"], tr["width"], part_counts[0][1], "timm")
    if len({n for _, n in part_counts}) > 1:
        # the trainer builds one part module for all of them
        raise ConfigError(
            f"the part losses share one part module, so their num_parts must agree; they "
            f"are {', '.join(f'{w}: {n}' for w, n in part_counts)}"
        )


def _check_backbone_class(cfg: dict) -> None:
    """A backbone class has the methods the trainer and the extraction call (the registry
    checks them on the built model; building one may load weights, so ``--dry-run``
    reads the class): a plugin backbone without ``extract`` failed after its first stage
    had trained (audit BO, session 19).

    Raises:
        RegistryError: naming the backbone and the missing method.
    """
    from uvireid.registry import BACKBONES

    spec = cfg.get("backbone") or {}
    if "type" not in spec:
        return
    cls = BACKBONES.get(spec["type"])
    if not isinstance(cls, type):  # a factory: checked when it builds
        return
    if getattr(cls, "__getattr__", None) not in (None, torch.nn.Module.__getattr__):
        return  # a wrapper that forwards attributes: its instances are checked when built
    missing = [m for m in BACKBONES.contract if not callable(getattr(cls, m, None))]
    if missing:
        from uvireid.errors import RegistryError

        raise RegistryError(
            f"backbone '{spec['type']}' ({cls.__module__}.{cls.__qualname__}) has no "
            f"{' or '.join(m + '()' for m in missing)} method; the trainer calls "
            f"forward(x, modality) -> uvireid.models.backbone.BackboneOutput and extract(x, "
            f"modality, flip=True, head='bn_feat') -> (B, d) features"
        )


def _check_stage_fits(st: Any) -> None:
    """A stage's parts fit together (each was checked alone): losses that need paired
    visible/infrared batches have a sampler that pairs, pairs and cross-modal terms have an
    associator whose labels make them. Otherwise the loss (or its cross terms) would sit
    out every step of the stage, silently (audit AA, session 17: part losses with the
    identity sampler trained on a total of 0).

    Raises:
        ConfigError: naming the stage, the part and the fix.
    """
    from uvireid.registry import LOSSES, SAMPLERS

    sampler = st.sampler.get("type")
    pairs = bool(getattr(SAMPLERS.get(sampler), "pairs", False))
    where = f"stage '{st.name}'"
    if pairs and not st.associator:
        raise ConfigError(
            f"{where}: sampler '{sampler}' pairs visible and infrared images through the "
            f"associator's cross-modal labels, but the stage has no associator; add one "
            f"(otla_dual, pgm, mbccm) or use sampler: {{type: identity}}"
        )
    for i, spec in enumerate(st.losses):
        kind = LOSSES.get(spec["type"])
        label = f"{where}: losses.{i} ({spec['type']})"
        needs_pairs = getattr(kind, "needs_pairs", False)
        if needs_pairs and not pairs:
            raise ConfigError(
                f"{label} trains on paired visible/infrared batches, but the stage's sampler "
                f"is '{sampler}', which never pairs them: the loss would sit out every step. "
                f"Use sampler: {{type: paired}} (or matched) with an associator, or drop it"
            )
        if (needs_pairs or getattr(kind, "needs_cross_labels", False)) and not st.associator:
            raise ConfigError(
                f"{label} needs cross-modal labels, but the stage has no associator: its "
                f"cross-modal terms would be skipped every step. Add an associator (otla_dual, "
                f"pgm, mbccm) to the stage, or use cluster_contrast for intra-modal training"
            )


def is_training(cfg: dict) -> bool:
    """A recipe trains when it has stages or losses; otherwise it only evaluates."""
    return bool(cfg.get("stages") or cfg.get("losses"))


def preflight(cfg: dict) -> None:
    """What a run refuses before its first epoch, checked without building the dataset or
    the weights (``uvireid run --dry-run`` runs this; a run runs it first too): the data
    and backbone sections, a clusterer without stages, every part the recipe names
    (:func:`check_parts`), the protocol against the dataset type's protocols, the
    dataset's keywords (its ``check_args``: a real dataset's root is a folder, the
    synthetic one's ids/seed/nir in range), the backbone's arch and a pretrained
    checkpoint path.

    Raises:
        ConfigError: naming the problem and the fix.
    """
    if not is_training(cfg) and (cfg.get("clusterer") or cfg.get("associator")):
        raise ConfigError(
            f"recipe '{cfg['name']}' names a clusterer/associator but no losses or stages; "
            "add losses (e.g. [{type: cluster_contrast}]) to train, or remove them to "
            "evaluate the backbone"
        )
    if not cfg.get("data") or not cfg.get("backbone"):
        raise ConfigError(f"recipe '{cfg['name']}' needs a 'data' and a 'backbone' section")
    check_parts(cfg)
    _check_sampler(cfg["evaluation"], (cfg.get("data") or {}).get("type"))
    _check_writable(cfg.get("output_dir") or "runs", "output_dir")
    cache = (cfg.get("train") or {}).get("image_cache")
    if cache not in (None, "auto"):
        _check_writable(cache, "train.image_cache")
    kind = DATASETS.get(cfg["data"]["type"])
    listed = getattr(kind, "PROTOCOLS", None)
    protocol = cfg["evaluation"]["protocol"]
    if isinstance(kind, type) and listed is not None and protocol not in ("auto", "none"):
        _check_protocol_fits(protocol, listed, cfg["data"]["type"])
    if isinstance(kind, type) and hasattr(kind, "check_args"):
        kind.check_args(**{k: v for k, v in cfg["data"].items() if k != "type"})
    bb = cfg["backbone"]
    if bb.get("type") == "two_stream_resnet":  # the backbone's own checks, before building
        from uvireid.models.backbone import check_two_stream_args

        check_two_stream_args("backbone.", **{k: v for k, v in bb.items() if k != "type"})
    elif bb.get("type") == "timm":
        from uvireid.models.timm_backbone import check_timm_args

        keys = ("pretrained", "gem_p", "output_stride", "pooling")
        check_timm_args(**{k: bb[k] for k in keys if k in bb})
    _check_start_weights(cfg)


def _check_start_weights(cfg: dict) -> None:
    """Starting weights that trained on the ids the run tests on. A ``data.validation``
    run records that its model left the validation ids out; one that starts from a
    uvireid checkpoint trained on them (a run of the dataset without
    ``data.validation``) would be tested on training images and read as a validation
    result (audit FF). A RegDB run of one trial started from another trial's checkpoint
    tests on people that checkpoint trained on, whose features record the run's own
    split (audit HA). Both refused; any other starting weights (ImageNet's, the prior,
    another dataset's run) never saw the ids.

    Raises:
        ConfigError: naming the checkpoint and the fix.
    """
    pre = cfg["backbone"].get("pretrained")
    if not isinstance(pre, str):
        return
    path = Path(pre).expanduser()
    if not path.is_file():
        return
    from uvireid.models.backbone import uvireid_checkpoint_dataset

    record = uvireid_checkpoint_dataset(path)
    if not record or record.get("dataset") != cfg["data"].get("type"):
        return
    split = cfg["data"].get("split", 1 if record.get("split") is not None else None)
    if record.get("split") != split:
        why = (
            f"trained on split {record.get('split')}'s training ids, some of them split "
            f"{split}'s test and validation people"
        )
    elif cfg["data"].get("validation") and not record.get("validation"):
        why = "trained on the validation ids (as a run without data.validation does)"
    else:
        return
    raise ConfigError(
        f"backbone.pretrained {pre} is the checkpoint of a run that {why}, so this run's "
        f"results would include training images; start from weights that never saw its "
        f"test ids (a run's checkpoint of the same split, with data.validation=true for "
        f"a validation run; ImageNet's or the prior)"
    )


def _check_writable(folder: str, key: str) -> None:
    """A folder the run will write into: an existing folder it may write in, or one it
    can create (its nearest existing parent a writable folder). Nothing is created here
    (``--dry-run`` runs this too)."""
    import os

    path = Path(folder).expanduser()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    problem = None
    if not probe.is_dir():
        problem = f"{probe} is a file, not a folder"
    elif not os.access(probe, os.W_OK | os.X_OK):
        problem = f"{probe} cannot be written by this user"
    if problem:
        raise ConfigError(f"{key}: {folder} cannot be used ({problem}); choose another folder")


def _auto_protocol(protocol: str, data_type: Any) -> str:
    """``auto`` as the run will resolve it: the first of the dataset class's ``PROTOCOLS``
    (audit NC: the official sampler on LLCM passed the preflight as ``auto`` and failed
    at the first evaluation); ``auto`` where the class lists none or is not known."""
    if protocol != "auto" or not isinstance(data_type, str) or data_type not in DATASETS:
        return protocol
    listed = getattr(DATASETS.get(data_type), "PROTOCOLS", None)
    return str(listed[0]) if isinstance(listed, (tuple, list)) and listed else protocol


def _check_sampler(ev: dict, data_type: Any = None) -> None:
    """The evaluation's gallery sampler, before any epoch: the protocol would only refuse
    it at the first evaluation, after an epoch (or the whole run) has trained."""
    if ev.get("protocol") == "none":
        return
    asked = str(ev.get("protocol"))
    protocol = _auto_protocol(asked, data_type)
    regdb = protocol.startswith("regdb")  # auto on RegDB is regdb-v2i by now
    if regdb and ev.get("shot", "single") != "single":
        # audit AX: refused only at the first evaluation, after the training
        raise ConfigError(
            f"evaluation.shot is '{ev['shot']}', but RegDB has no gallery sampling (every "
            f"test image of the split is used); drop evaluation.shot (single)"
        )
    if regdb and data_type in ("regdb", None) and int(ev.get("trials", 1) or 1) != 1:
        # audit BS: recorded as 10 in config.yaml, evaluated (and recorded in the results)
        # as 1; a warning, not a refusal: 10 is also the default a recipe without
        # datasets/regdb.yaml carries (a RegDB protocol on another dataset is refused,
        # more to the point, by its fit)
        logger.warning(
            "evaluation.trials is %s, but a RegDB evaluation is one trial of its split: "
            "RegDB's ten trials are its ten splits (train and evaluate with data.split=1..10, "
            "then `uvireid eval` averages the features files); each evaluation of this run "
            "is one trial (set evaluation.trials=1, as recipes/datasets/regdb.yaml does)",
            ev["trials"],
        )
    perm = ev.get("perm_file")
    if ev.get("sampler") == "official":
        if not perm:
            raise ConfigError(
                "evaluation.sampler is 'official' (SYSU-MM01's rand_perm_cam.mat) but "
                "evaluation.perm_file is not set; set it to <SYSU-MM01 root>/exp/"
                "rand_perm_cam.mat, or use evaluation.sampler=seeded"
            )
        if not Path(perm).is_file():
            raise ConfigError(
                f"evaluation.perm_file {perm} is not a file; the official sampler reads "
                f"<SYSU-MM01 root>/exp/rand_perm_cam.mat"
            )
        if protocol != "auto" and not protocol.startswith("sysu"):
            named = f" (evaluation.protocol auto on {data_type})" if asked == "auto" else ""
            raise ConfigError(
                f"evaluation.sampler 'official' exists for SYSU-MM01 only; protocol "
                f"{protocol}{named} uses sampler: seeded"
            )
    elif perm:
        raise ConfigError(
            "evaluation.perm_file is set but evaluation.sampler is 'seeded'; set "
            "evaluation.sampler=official to use it, or drop perm_file"
        )


def run_recipe(
    cfg: dict, *, resume: Any = False, progress: bool = True, allow_changes: bool = False
) -> RunFolder:
    """Run a resolved recipe (see :func:`uvireid.config.load_recipe`) into a run folder.

    A recipe with ``stages`` or ``losses`` trains (:func:`train_recipe`); otherwise the
    backbone is evaluated as it is. ``resume``, ``allow_changes``: see
    :func:`train_recipe`.
    """
    if is_training(cfg):
        return train_recipe(cfg, resume=resume, progress=progress, allow_changes=allow_changes)
    preflight(cfg)  # the sections, the parts (a re-ranker that cannot be built), ...
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    dataset = DATASETS.build(cfg["data"])
    if protocol_for(dataset, cfg) is None:  # refuse a mismatched protocol before any folder
        raise ConfigError(
            f"recipe '{cfg['name']}' only evaluates (no stages or losses), but "
            f"evaluation.protocol is none or dataset '{cfg['data']['type']}' has no test "
            f"protocol: nothing to do. Add stages to train, or choose a protocol"
        )
    folder = resume_target(cfg, resume)
    changes = check_resume(folder, cfg, allow_changes) if folder is not None else {}
    if folder is not None and (folder.path / "results.json").exists():
        logger.info("run %s already finished; nothing to resume", folder.path)
        return folder
    manifest = build_manifest(cfg, device, dataset)
    if folder is not None:
        manifest = resumed_manifest(folder, manifest, 0, changes)
    folder = folder or RunFolder.create(cfg["output_dir"], cfg["name"])
    # held as a training run's folder is, and cleaned of what a killed run left
    # half-written (audit IC: an evaluation-only resume did neither)
    with folder.held():
        return _evaluate_in(folder, cfg, dataset, device, manifest, progress)


def _evaluate_in(folder, cfg, dataset, device, manifest, progress) -> RunFolder:
    """The evaluation of :func:`run_recipe`'s evaluation-only recipe, in a folder this
    process holds."""
    run_log = folder.attach_log()
    try:
        folder.write_config(cfg)
        folder.write_manifest(manifest)
        logger.info("run folder %s (device %s)", folder.path, device)
        model = BACKBONES.build(cfg["backbone"]).to(device)
        check_input_size(model, cfg["train"]["height"], cfg["train"]["width"])
        out = evaluate(model, dataset, cfg, device, folder, progress=progress)
        tables = {name: res.to_dict() for name, res in out["results"].items()}
        from uvireid.engine.trainer import Trainer

        # the schema of a training run's evaluation before its first epoch (audit AY:
        # epoch 0 and bare phase names were drawn as a trained epoch's "extract"); the
        # backbone may hold trained weights (backbone.pretrained), so not "untrained"
        folder.log_metrics(
            {
                "epoch": -1,
                "stage": "evaluation only",
                "eval": Trainer.summary(tables),
                "seconds": {f"eval_{k}": v for k, v in out["seconds"].items()},
            }
        )
        folder.write_json("results.json", tables)
        for res in out["results"].values():
            logger.info("\n%s", res.table())
    finally:
        run_log.close()
    return folder


def _stage_batches(cfg: dict, world_size: int) -> list[dict]:
    """Per stage: images per GPU step (visible, CA, infrared), per BatchNorm, global."""
    from uvireid.engine.trainer import stages_of
    from uvireid.registry import SAMPLERS

    out = []
    for st in stages_of(cfg):
        sv, s = SAMPLERS.build(st.sampler).rows()  # visible, infrared
        per_gpu = 2 * sv + s  # visible + its CA view + infrared
        out.append(
            {
                "stage": st.name,
                "per_gpu": per_gpu,
                # shared layers' BatchNorm sees the whole step; a two-stream backbone's
                # modality-specific layers see their modality's images only
                "per_batchnorm": per_gpu,
                "per_batchnorm_specific": {"visible": 2 * sv, "infrared": s},
                "global": per_gpu * world_size,
                "iters_per_epoch": st.iters,
                "epochs": st.epochs,
            }
        )
    return out


def train_recipe(
    cfg: dict, *, resume: Any = False, progress: bool = True, allow_changes: bool = False
) -> RunFolder:
    """Train a recipe's stages (:class:`uvireid.engine.trainer.Trainer`) in a run folder.

    ``resume``: True continues the latest run folder of this recipe (named
    ``<name>-<time>`` under its ``output_dir``; a new run when there is none), a path that
    run folder, from its ``checkpoints/latest.pt``. The recipe must be the one the folder's
    ``config.yaml`` holds, but for where and how fast it runs and how it is evaluated
    (:data:`~uvireid.engine.run_folder.RESUME_FREE_KEYS`); ``allow_changes`` accepts other
    changes with a warning and records them in ``manifest.json``, whose first record
    of the run is kept. Under torchrun every rank trains; rank 0 writes the folder.
    """
    from uvireid.data import synthetic as _synthetic  # noqa: F401  (registers 'synthetic')
    from uvireid.engine import distributed as D
    from uvireid.engine.checkpoint import LATEST

    preflight(cfg)
    # this call joins the process group torchrun describes, and leaves it when done: a
    # process that exits holding it could abort in its teardown ("terminate called
    # without an active exception", SIGABRT on a rank that had stopped cleanly)
    owned = D.launched_by_torchrun() and not D.is_distributed()
    device = D.init_from_env(resolve_device(cfg["device"]))
    try:
        seed_everything(cfg["seed"])
        folder, changes, refused, created = None, {}, None, False
        if D.is_main():  # a refused resume stops before the dataset is built (or generated)
            try:
                folder = resume_target(cfg, resume)
                if folder is not None:
                    changes = check_resume(folder, cfg, allow_changes)
                    if not (folder.path / "results.json").exists():
                        changes.update(check_world_size(folder, D.world_size(), allow_changes))
                    folder.check_free()  # another process training in it: now, not later
            except UvireidError as exc:
                refused = exc
        _stop_all_ranks(refused)
        dataset = DATASETS.build(cfg["data"])
        protocol_for(dataset, cfg)
        refuse_split_overlap(dataset)  # before any folder is made (every rank: the same answer)
        if D.is_main():
            if folder is not None and (folder.path / "results.json").exists():
                logger.info("run %s already finished; nothing to resume", folder.path)
            elif folder is None:
                if resume:
                    logger.warning(
                        "--resume: no run folder of '%s' with a config.yaml under %s (a run that "
                        "stopped before its start leaves none to resume); starting a new run",
                        cfg["name"],
                        cfg["output_dir"],
                    )
                folder, created = RunFolder.create(cfg["output_dir"], cfg["name"]), True
        path = D.broadcast_object(str(folder.path) if folder else None)
        folder = RunFolder(path)
        if (folder.path / "results.json").exists() and resume:
            return folder
        ckpt = folder.checkpoints / LATEST
        refused = None
        if D.is_main() and resume and not ckpt.exists():
            trained = [m for m in folder.read_metrics() if m.get("epoch", -1) >= 0]
            if trained:
                refused = RunFolderError(
                    f"{folder.path}: {len(trained)} epoch(s) were trained (metrics.jsonl) but "
                    f"{ckpt} is missing; resuming would train them again into the same folder. "
                    f"Restore the checkpoint, or start a new run"
                )
        _stop_all_ranks(refused)
        with folder.held() if D.is_main() else contextlib.nullcontext():
            try:
                # a folder made just now resumes nothing (rank 0 made it, and says so)
                resumed = resume and not created
                return _train_in(folder, cfg, dataset, device, resumed, changes, progress)
            except BaseException as exc:  # any stop (a CUDA out-of-memory too) can be resumed
                with contextlib.suppress(AttributeError, TypeError):
                    exc.run_folder = str(folder.path)  # the CLI says how to resume it
                raise
    finally:
        if owned:
            D.leave(stopped_by=sys.exc_info()[1])


def _stop_all_ranks(refused: Exception | None) -> None:
    """Raise rank 0's refusal on every rank (under torchrun the other ranks would
    otherwise wait for rank 0 and die of a closed connection, whose traceback buries the
    reason): rank 0 raises its own error, the others a short one naming it
    (:func:`~uvireid.engine.distributed.from_main`)."""
    from uvireid.engine import distributed as D

    def outcome() -> None:
        if refused is not None:
            raise refused

    D.from_main(outcome)


def _train_in(folder, cfg, dataset, device, resume, changes, progress) -> RunFolder:
    """The training part of :func:`train_recipe`, in a folder this process holds."""
    from uvireid.engine import distributed as D
    from uvireid.engine.checkpoint import LATEST
    from uvireid.engine.trainer import Trainer

    run_log = folder.attach_log() if D.is_main() else None
    # not locals(): its snapshot of this frame outlived traceback.clear_frames, and with it
    # the trainer, past the process group (distributed.leave)
    trainer = None
    try:
        if D.is_main() and not (folder.path / "config.yaml").exists():
            # a new run's folder is a run folder before the trainer is built (building the
            # starting weights takes minutes): killed then, `report` and `--resume` know it
            folder.write_config(cfg)
        try:
            trainer = Trainer(
                cfg, dataset, device, folder if D.is_main() else None, progress=progress
            )
        except Exception as exc:  # the folder's log says why it holds nothing
            logger.error("the run stopped before its first epoch: %s", exc)
            raise
        ckpt = folder.checkpoints / LATEST
        if resume and ckpt.exists():
            trainer.restore(ckpt)
        elif resume and D.is_main():  # killed before its first checkpoint: said, not silent
            logger.warning(
                "resume: %s has no checkpoint yet (the run stopped before the end of its "
                "first epoch); training from the start in this folder",
                folder.path,
            )
        if D.is_main():
            folder.write_config(cfg)
            manifest = build_manifest(cfg, device, dataset, world_size=D.world_size())
            manifest["batch"] = {"stages": _stage_batches(cfg, D.world_size())}
            if resume and ckpt.exists():
                manifest = resumed_manifest(folder, manifest, trainer.epoch, changes)
            folder.write_manifest(manifest)
            logger.info(
                "run folder %s (device %s, world size %d)", folder.path, device, D.world_size()
            )
        tables = trainer.fit()
        if D.is_main():
            # results.json marks a finished run: {} for one that never evaluates
            # (evaluation.protocol: none; audit AY: its report said "killed")
            folder.write_json("results.json", tables if tables is not None else {})
    except KeyboardInterrupt as exc:
        # the folder's own log says the run was stopped, not only the terminal (audit AV)
        logger.warning(
            "stopped (%s) after %s",
            "SIGTERM" if type(exc).__name__ == "Terminated" else "Ctrl-C / SIGINT",
            f"epoch {trainer.epoch - 1}" if trainer is not None and trainer.epoch else "no epoch",
        )
        raise
    finally:
        if run_log is not None:
            run_log.close()
    return folder
