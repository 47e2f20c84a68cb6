"""Input checks and conversions shared by the re-rankers.

Every re-ranker takes query and gallery features as numpy arrays or torch tensors and
computes in torch on the input's device; numpy in gives numpy out. The checks here run at
the boundary (mismatched dims, NaN/inf, empty sets, sizes that cannot fit in memory) so
the numerical code can trust its input.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from typing import Any

import numpy as np
import torch

from uvireid.errors import ConfigError, FeatureFileError, non_finite_rows

__all__ = [
    "as_tensor",
    "check_pair",
    "to_output",
    "available_memory",
    "ensure_fits",
    "check_k",
]

logger = logging.getLogger(__name__)


def as_tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """``(tensor, was_numpy)``: a torch view of ``x`` (no copy for numpy float input).

    Integer features are computed as each library's default float: numpy's as float64
    (``x.astype(float)``), torch's as float32 (``x.float()``); cast them first for the
    other (an int8 embedding as numpy float32 takes half the memory). float16 and
    bfloat16 are computed in float32. Complex and bool features are refused (the
    imaginary part would be dropped)."""
    if isinstance(x, torch.Tensor):
        t, was_numpy = x.detach(), False
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise FeatureFileError(
                f"{name} features could not be read as an array ({exc}); "
                "pass an (N, d) numpy array or torch tensor"
            ) from None
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise FeatureFileError(
                f"{name} features have dtype {arr.dtype}; pass an (N, d) float array"
            )
        arr = np.ascontiguousarray(arr)
        with warnings.catch_warnings():
            # a read-only array (np.load(..., mmap_mode="r")) is shared, not copied: nothing
            # here writes into its input (tests/rerank check every re-ranker for that)
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            t, was_numpy = torch.from_numpy(arr), True
    if t.is_complex() or t.dtype == torch.bool:
        raise FeatureFileError(f"{name} features have dtype {t.dtype}; pass an (N, d) float array")
    if t.ndim != 2:
        raise FeatureFileError(
            f"{name} features must be 2-D (N, d), got shape {tuple(t.shape)}; "
            "reshape them to one row per image"
        )
    if not t.is_floating_point():
        t = t.double() if was_numpy else t.float()
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t, was_numpy


def refuse_non_finite(t: torch.Tensor, who: str, what: str, fix: str) -> None:
    """Raise :class:`FeatureFileError` naming the rows of the 2-D ``t`` that hold NaN or
    inf: one reduction where every value is finite."""
    bad = non_finite_rows(t)
    if bad is not None:
        raise FeatureFileError(
            f"{who}: {what} contain NaN or inf in {bad[0]} row(s) (first: row {bad[1][0]}); {fix}"
        )


def check_pair(query: Any, gallery: Any, who: str) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate a (query, gallery) pair; returns ``(q, g, was_numpy)`` on one device/dtype.

    Raises:
        FeatureFileError: an empty side, no columns, different feature dims, NaN or inf
            values.
    """
    q, q_np = as_tensor(query, f"{who}: query")
    g, g_np = as_tensor(gallery, f"{who}: gallery")
    if q.shape[0] == 0 or g.shape[0] == 0:
        raise FeatureFileError(
            f"{who}: empty input ({q.shape[0]} query and {g.shape[0]} gallery rows); "
            "re-ranking needs at least one query and one gallery image"
        )
    if q.shape[1] != g.shape[1]:
        raise FeatureFileError(
            f"{who}: query features have d={q.shape[1]} but gallery features d={g.shape[1]}; "
            "both must come from the same extractor and feature head"
        )
    if q.shape[1] == 0:  # every re-ranker would give a constant distance (audit GB)
        raise FeatureFileError(
            f"{who}: the features have no columns (d=0, {q.shape[0]} query and {g.shape[0]} "
            "gallery rows); pass the feature vectors, not an empty slice of them"
        )
    for name, t in (("query", q), ("gallery", g)):
        refuse_non_finite(t, who, f"{name} features", "fix the extractor or drop those images")
    if g.device != q.device:
        g = g.to(q.device)
    if g.dtype != q.dtype:
        dt = torch.promote_types(q.dtype, g.dtype)
        q, g = q.to(dt), g.to(dt)
    return q, g, (q_np and g_np)


def to_output(t: torch.Tensor, was_numpy: bool) -> Any:
    """Numpy for numpy input, the tensor otherwise."""
    return t.cpu().numpy() if was_numpy else t


def check_k(value: Any, name: str, who: str, minimum: int = 1) -> int:
    """An integer hyper-parameter ``>= minimum`` (ConfigError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{who}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (Python or numpy; a bool is not)."""
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def check_real(value: Any, name: str, who: str, lo: float, hi: float = math.inf) -> float:
    """A finite real hyper-parameter in ``[lo, hi]`` (ConfigError otherwise: an infinite
    weight, temperature or tolerance is never meant, and gives inf/NaN losses or a
    degenerate assignment instead of an error)."""
    if not is_real(value) or not lo <= float(value) <= hi or not math.isfinite(float(value)):
        span = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
        raise ConfigError(f"{who}: {name} must be a finite number {span}, got {value!r}")
    return float(value)


def check_positive(value: Any, name: str, who: str) -> float:
    """A finite real hyper-parameter ``> 0`` (ConfigError otherwise, naming a wrong type
    too)."""
    if not is_real(value) or not 0 < float(value) < math.inf:
        raise ConfigError(f"{who}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device`` (host: MemAvailable; CUDA: the device's
    free memory plus what torch's allocator holds cached but unused, which it hands out
    again: after a training epoch that is most of what the device "lacks", audit AG)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _fits(nbytes: float, free: float) -> bool:
    """Whether ``nbytes`` fits in ``free`` bytes, a tenth kept for everything else."""
    return nbytes <= 0.9 * free


def fits_in_memory(nbytes: float, device: torch.device) -> bool:
    """Whether ``nbytes`` fit on ``device`` by the rule :func:`ensure_fits` enforces."""
    return _fits(nbytes, available_memory(device))


def ensure_fits(nbytes: float, device: torch.device, what: str, instead: str) -> None:
    """Stop before the work starts when ``nbytes`` cannot fit on ``device``.

    Raises:
        ConfigError: saying how much is needed, how much is free, and what to use instead.
    """
    free = available_memory(device)
    if not _fits(nbytes, free):
        raise ConfigError(
            f"{what} needs about {_gib(nbytes)} but only {_gib(free)} is free on "
            f"{device.type}; {instead}"
        )
    logger.debug("%s: about %s of %s free", what, _gib(nbytes), _gib(free))
