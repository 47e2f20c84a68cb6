# ruff: noqa: I001  (sub-packages are imported in registration order)
"""uvireid: a toolkit for unsupervised visible-infrared person re-identification.

Importing the package registers every built-in part (datasets, backbones, clusterers,
associators, losses, re-rankers, recipes) and the parts of installed plugins
(entry-point group ``uvireid.plugins``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from uvireid import registry as registry  # noqa: E402
from uvireid.errors import (  # noqa: E402
    ConfigError,
    DatasetError,
    FeatureFileError,
    ProtocolError,
    RegistryError,
    UvireidError,
)

# built-in parts register on import: one import per sub-package, no remembered imports
from uvireid import data as data  # noqa: E402
from uvireid import models as models  # noqa: E402
from uvireid import clustering as clustering  # noqa: E402
from uvireid import associations as associations  # noqa: E402
from uvireid import losses as losses  # noqa: E402
from uvireid import rerank as rerank  # noqa: E402
from uvireid import evaluation as evaluation  # noqa: E402
from uvireid import config as config  # noqa: E402  (registers the built-in recipes)

from uvireid.features import load_features, save_features  # noqa: E402
from uvireid.engine.inference import load_model  # noqa: E402

registry.load_plugins()

__all__ = [
    "ConfigError",
    "DatasetError",
    "FeatureFileError",
    "ProtocolError",
    "RegistryError",
    "UvireidError",
    "load_features",
    "load_model",
    "registry",
    "save_features",
]
