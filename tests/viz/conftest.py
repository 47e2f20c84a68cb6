"""Fixtures of the viz tests; puts this folder on sys.path for ``viz_data``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from viz_data import make_features, make_run_dir  # noqa: E402

from uvireid.features import load_features  # noqa: E402


@pytest.fixture(scope="session")
def viz_features_file(tmp_path_factory):
    """72 images (6 ids x 6 cams x 2) with real image files, 16-d."""
    return make_features(tmp_path_factory.mktemp("viz_features"))


@pytest.fixture(scope="session")
def viz_features(viz_features_file):
    return load_features(viz_features_file)


@pytest.fixture()
def viz_run_dir(tmp_path, viz_features_file):
    """A finished training run's folder: config, manifest, metrics, results, features."""
    return make_run_dir(tmp_path, viz_features_file)
