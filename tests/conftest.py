"""Fixtures shared by every test folder."""

from __future__ import annotations

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
