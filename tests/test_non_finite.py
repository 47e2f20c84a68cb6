"""``uvireid.errors.non_finite_rows``, the one NaN/inf check behind the features,
distances and similarities refusals, against a row-by-row loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uvireid.errors import non_finite_rows


def _naive(a: np.ndarray, allow_neg_inf: bool):
    """Rows (entries along the first axis) holding NaN or inf, by a Python loop."""
    if a.ndim == 0:
        a = a.reshape(1)
    rows = []
    for i in range(a.shape[0]):
        for v in np.asarray(a[i]).reshape(-1).tolist():
            if math.isnan(v) or (math.isinf(v) and not (allow_neg_inf and v < 0)):
                rows.append(i)
                break
    return (len(rows), rows[:5]) if rows else None


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("allow_neg_inf", [False, True])
def test_non_finite_rows_matches_a_loop(backend, allow_neg_inf):
    rng = np.random.default_rng(0)
    specials = [np.nan, np.inf, -np.inf]
    for trial in range(120):
        shape = [(), (7,), (9, 4), (3, 2, 5)][trial % 4]
        dtype = [np.float32, np.float64, np.float16][trial % 3]
        a = rng.normal(size=shape).astype(dtype)
        n_bad = rng.integers(0, 4)
        flat = a.reshape(-1)
        for _ in range(n_bad):
            flat[rng.integers(0, flat.size)] = specials[rng.integers(0, 3)]
        x = a if backend == "numpy" else torch.from_numpy(a)
        assert non_finite_rows(x, allow_neg_inf=allow_neg_inf) == _naive(a, allow_neg_inf), (
            trial,
            a,
        )


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_sum_that_overflows_is_not_called_non_finite(backend):
    a = np.full((6, 3), 6e4, dtype=np.float16)  # finite values, their sum overflows float16
    a[4, 1] = np.nan
    x = a if backend == "numpy" else torch.from_numpy(a)
    assert non_finite_rows(x) == (1, [4])
    a[4, 1] = 1.0
    x = a if backend == "numpy" else torch.from_numpy(a)
    assert non_finite_rows(x) is None


def test_many_bad_rows_report_the_count_and_the_first_five():
    a = np.zeros((20, 2))
    a[3:17, 0] = np.inf
    assert non_finite_rows(a) == (14, [3, 4, 5, 6, 7])
    assert non_finite_rows(torch.from_numpy(a)) == (14, [3, 4, 5, 6, 7])
    assert non_finite_rows(-a, allow_neg_inf=True) is None  # -inf masks only
    assert non_finite_rows(-a) == (14, [3, 4, 5, 6, 7])


def test_integer_and_empty_inputs_hold_nothing_to_refuse():
    assert non_finite_rows(np.arange(6).reshape(2, 3)) is None
    assert non_finite_rows(torch.arange(6)) is None
    assert non_finite_rows(np.zeros((0, 4))) is None
    assert non_finite_rows(torch.zeros(0, 4)) is None
