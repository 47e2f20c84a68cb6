"""Checkpoints: written atomically each epoch, found by ``--resume``, loaded strictly.

A checkpoint (``checkpoints/latest.pt`` in the run folder) holds everything a killed run
needs to continue exactly where it stopped (STYLE.md "Resume means resume"): model,
optimiser, scheduler, the number of finished epochs, the RNG states (Python, NumPy,
torch, the sampler's and the augmentations' generators), the losses' memories, the last
pseudo-labels, and the seed and dataset fingerprint, which a resume compares with its
own and warns about when they differ.

Weights are always loaded strictly: a missing or unexpected key is a
:class:`~uvireid.errors.CheckpointError` that lists them (a silently half-loaded model
scoring 2 % R1 is a recurring trap in this field, ``notes/users_pain.md``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from uvireid.errors import CheckpointError
from uvireid.fileio import atomic_link, atomic_torch_save

__all__ = [
    "LATEST",
    "BEST",
    "keep_as_best",
    "save_checkpoint",
    "load_checkpoint",
    "load_state_strict",
    "rng_state",
    "set_rng_state",
    "weights_sha1",
]

logger = logging.getLogger(__name__)

LATEST = "latest.pt"
#: the checkpoint of the best evaluated epoch (``evaluation.keep_best``)
BEST = "best.pt"
FORMAT = 1
#: keys shown in an error message before "and N more"
_SHOWN = 8


def _listing(keys: list[str]) -> str:
    more = len(keys) - _SHOWN
    return ", ".join(keys[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _unwrapped(state: dict[str, Any], own: set[str] | None = None) -> dict[str, Any]:
    """``state`` without the wrapper prefixes (DDP's ``module.``, torch.compile's
    ``_orig_mod.``, nested: ``_orig_mod.module.``; audit MI) that every one of its names
    carries: a model's own child named ``module`` keeps its names (audit OE). With
    ``own`` (the model's names), a prefix the model's own names carry too is kept, and
    nothing more is dropped once the names are the model's (a DataParallel passed as it
    is has them: stripping refused its own weights; audit MH)."""
    changed = True
    while changed and state and (own is None or set(state) != own):
        changed = False
        for prefix in ("module.", "_orig_mod."):
            ours = own is not None and all(k.startswith(prefix) for k in own)
            if all(k.startswith(prefix) for k in state) and not ours:
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def has_checkpoint_shape(state: Any) -> bool:
    """Whether a loaded file has the entries of a uvireid training checkpoint (``format``,
    ``epoch``, ``model``), of any format version."""
    return isinstance(state, dict) and {"format", "epoch", "model"} <= set(state)


def load_state_strict(module: nn.Module, state: dict[str, Any], source: str = "checkpoint"):
    """``module.load_state_dict(state)``, refusing any missing or unexpected key.

    Also accepts the ``module.`` prefix DataParallel/DDP checkpoints carry, and the
    ``_orig_mod.`` one of a ``torch.compile``d model's, where the model's own keys lack them.

    Raises:
        CheckpointError: keys are missing or unexpected (both lists are named), or
            parameters' shapes differ (named with both shapes); nothing is loaded then.
            Or another tensor does not fit (torch's message).
    """
    own = set(module.state_dict())
    state = _unwrapped(state, own)
    missing = sorted(own - set(state))
    unexpected = sorted(set(state) - own)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        raise CheckpointError(
            f"{source} does not fit the model ({'; '.join(parts)}); it was saved from "
            f"another architecture or recipe. Load it with the recipe that wrote it (or "
            f"the same backbone settings)"
        )
    # the parameters' shapes checked before loading: torch's own check copies every
    # tensor that fits first (buffers may differ: a loss's memories take the size of the
    # checkpoint's in their _load_from_state_dict)
    wrong = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(v.shape)})"
        for k, v in module.named_parameters()
        if isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(
            f"{source} does not fit the model ({len(wrong)} tensor(s) of another shape: "
            f"{_listing(wrong)}); it was saved from another architecture or recipe. Load "
            f"it with the recipe that wrote it (or the same backbone settings)"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{source} does not fit the model: {exc}. Load it with the recipe that wrote it"
        ) from None


def weights_sha1(weights: nn.Module | dict[str, Any]) -> str:
    """A fingerprint of a model's weights: SHA-1 over its ``state_dict``'s tensors (names,
    dtypes, shapes and bytes, in name order), the same wherever the tensors live (CPU or
    GPU) and under a DDP or compile wrapper (``module.`` and ``_orig_mod.`` dropped from
    the names). Features files record it (``weights_sha1``), so features of one model can
    be told from another's, e.g. for ``uvireid match --gallery``."""
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    digest = hashlib.sha1()
    # a wrapper's prefix dropped only where every name carries it ('module.weight'
    # overwrote 'weight' of a model with a child named 'module': audit OE)
    named = _unwrapped({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    for name in sorted(named):
        t = named[name].detach()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """The global RNG states of Python, NumPy and torch (and CUDA when present)."""
    out = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the Python, numpy and torch generators (and CUDA's, where recorded) from
    :func:`rng_state`'s dict, so a resumed run draws what the killed one would have."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):
            logger.warning("checkpoint: CUDA RNG state not restored (another GPU count)")


def backbone_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone's weights in a checkpoint's ``model`` entry (a
    :class:`~uvireid.engine.trainer.TrainModel`'s state), named as the backbone's own
    ``state_dict`` (``backbone.`` dropped); empty when it holds none."""
    model = state.get("model")
    if not isinstance(model, dict):
        return {}
    prefix = "backbone."
    return {k[len(prefix) :]: v for k, v in model.items() if k.startswith(prefix)}


def save_checkpoint(folder: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``folder/latest.pt`` atomically (tmp file, fsync, rename)."""
    state = {**state, "format": FORMAT}  # the marker last: a state's own "format" key
    # replaced it, and the file was refused as no uvireid checkpoint (audit MH)
    path = Path(folder) / LATEST
    atomic_torch_save(path, state)
    return path


def keep_as_best(folder: str | os.PathLike) -> Path:
    """Make ``folder/latest.pt`` also ``folder/best.pt``, atomically and without a copy
    (:func:`uvireid.fileio.atomic_link`): the next epoch's ``latest.pt`` is a new file,
    so ``best.pt`` keeps this one."""
    folder = Path(folder)
    return atomic_link(folder / LATEST, folder / BEST)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on the CPU).

    Raises:
        CheckpointError: the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        err = CheckpointError(
            f"no checkpoint at {path}; a run writes checkpoints/{LATEST} after its first epoch"
        )
        err.checkpoint = str(path.resolve())  # not one to resume from (the CLI's hint)
        raise err
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or foreign file
        err = CheckpointError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}): damaged after "
            f"it was written (uvireid writes checkpoints atomically), or not a checkpoint. "
            f"Restore it from a copy, or start a new run"
        )
        err.checkpoint = str(path.resolve())
        raise err from None
    # of another version, not "not a uvireid checkpoint" (audit OE)
    if has_checkpoint_shape(state):
        if state["format"] != FORMAT:
            raise CheckpointError(
                f"{path} is a uvireid training checkpoint of format {state['format']!r}; "
                f"this version of uvireid reads format {FORMAT}: use the version that wrote "
                f"it (its manifest.json names it), or start a new run"
            )
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a uvireid training checkpoint (format {FORMAT}); load plain "
            f"weights through the backbone's 'pretrained' instead"
        )
    return state
