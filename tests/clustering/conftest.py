"""Puts this folder on sys.path so the tests import their naive oracles by name, and runs
every test here on one torch thread."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(autouse=True)
def _one_thread():
    """The tests' products are tiny: with several threads on a busy 2-core machine each
    parallel region waits for the other core (a two-level ivf test took 31 s instead of a
    few; audit NE). Restored afterwards, for the other folders in the same worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
