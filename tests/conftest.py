"""Fixtures shared by every test folder."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
        ),
    ]
)
def device(request) -> str:
    """Each device a test should run on: the CPU, and CUDA where torch sees a GPU."""
    return request.param


@pytest.fixture(autouse=True, scope="session")
def _threads_per_worker():
    """Under pytest-xdist, this machine's CPUs shared among the workers: with ``-n 2`` on
    2 cores each worker's torch ran 2 threads, and every parallel region waited for the
    core the other worker held (the suite took 8:32 instead of 7:43 once the clustering
    tests stopped leaking their one-thread setting into the rest of their worker). A
    session fixture, so it follows the test modules that set a count at import."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        torch.set_num_threads(max(1, cpus // workers))
    yield
