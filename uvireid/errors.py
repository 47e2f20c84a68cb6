"""The exceptions uvireid raises at its boundaries.

Every message names the thing that is wrong, what was expected, and the fix.
"""

from __future__ import annotations


class UvireidError(Exception):
    """Base class of every error uvireid raises on purpose."""


class ConfigError(UvireidError, ValueError):
    """A recipe, a CLI override or a component's keywords are wrong."""


class RegistryError(ConfigError, KeyError):
    """A name is not registered, registered twice, or built with wrong keywords."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DatasetError(UvireidError, FileNotFoundError):
    """A dataset folder, split file or image is missing or laid out wrongly."""


class FeatureFileError(UvireidError, ValueError):
    """A features file (.npz) is missing arrays or has arrays of mismatched size."""


class ProtocolError(UvireidError, ValueError):
    """An evaluation protocol was asked for something it cannot measure honestly."""


class CheckpointError(UvireidError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


class TrainingError(UvireidError, RuntimeError):
    """Training cannot go on (a non-finite loss, no pseudo-label to train on)."""


class RunFolderError(UvireidError, RuntimeError):
    """A run folder that cannot be used now: another process holds it, or its checkpoint
    is missing where epochs were trained."""


class DiskFullError(UvireidError, OSError):
    """A file could not be written for lack of space; the file it would have replaced is
    left as it was."""


#: the largest seed NumPy's legacy seeding (``np.random.seed``) accepts
SEED_MAX = 2**32 - 1


def check_seed(value: object, what: str, error: type[UvireidError] = ConfigError) -> int:
    """``value`` as a seed in 0..2**32-1 (what ``random``, NumPy and torch all accept), else
    ``error`` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise error(f"{what} must be an integer in 0..2**32-1 ({SEED_MAX}), got {value!r}")
    return int(value)


def non_finite_rows(t: object, *, allow_neg_inf: bool = False) -> tuple[int, list[int]] | None:
    """Where the numpy array or torch tensor ``t`` holds NaN or inf: ``(count, head)``, the
    number of rows (entries along the first axis; a 0-d array is one row) holding one and
    the first five of them;
    None when every value is finite, or when ``t`` has no floating values.

    ``allow_neg_inf`` lets -inf through (a mask, as in a similarity matrix whose excluded
    entries are -inf). The common all-finite case costs one reduction: only a sum that is
    not finite (a NaN, an inf or an overflow) reads the values again. The one check behind
    every "NaN or inf" refusal of features, distances and similarities; each caller words
    its own message."""
    import numpy as np

    if isinstance(t, np.ndarray):
        if t.size == 0 or not np.issubdtype(t.dtype, np.floating):
            return None
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(t.sum()):
                return None
        bad = np.isnan(t) | (np.isposinf(t) if allow_neg_inf else np.isinf(t))
        rows = np.flatnonzero(bad.reshape(len(t) if t.ndim else 1, -1).any(1))
        count = len(rows)
    else:
        import torch

        if not isinstance(t, torch.Tensor) or t.numel() == 0 or not t.is_floating_point():
            return None
        if bool(torch.isfinite(t.sum())):
            return None
        bad = torch.isnan(t) | (torch.isposinf(t) if allow_neg_inf else torch.isinf(t))
        flags = bad.reshape(t.shape[0] if t.ndim else 1, -1).any(1)
        count = int(flags.sum())
        rows = flags.nonzero().squeeze(1)[:5].cpu().numpy()
    return (count, [int(r) for r in rows[:5]]) if count else None
