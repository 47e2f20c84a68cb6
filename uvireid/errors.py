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
