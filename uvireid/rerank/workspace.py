"""Reused host working matrices for the dense re-rankers.

A fresh (N, N) matrix on the CPU costs its page faults when it is first written: 23 ms
for the 4104 x 4104 float32 matrix of k-reciprocal re-ranking at SYSU-MM01 test size on
this project's 2-core VM, 14 % of the whole re-ranking (``benchmarks/RESULTS.md``). The
evaluation protocols re-rank ten trials of one size in a row, so a re-ranker borrows its
largest temporary here: the buffer of the previous call of the same shape, dtype and
device is handed out again instead of a new one.

- Only internal temporaries are borrowed; nothing returned to a caller is a borrowed
  buffer, so a result never changes under its holder's feet.
- A buffer is lent to one borrower at a time (a second, concurrent borrower, another
  thread or a nested call, gets a fresh tensor), so threads cannot share one.
- At most :data:`KEEP_BYTES` are kept between calls (one buffer per shape, dtype and
  device, the oldest dropped first); a larger matrix is freed after use as before.
  :func:`release` frees every kept buffer.
- On a GPU torch's caching allocator already reuses memory: ``borrow`` then allocates.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator

import torch

__all__ = ["KEEP_BYTES", "borrow", "release", "kept_bytes"]

#: bytes of buffers kept between calls, all shapes together
KEEP_BYTES = 512 * 2**20

_lock = threading.Lock()
_kept: OrderedDict[tuple, torch.Tensor] = OrderedDict()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@contextlib.contextmanager
def borrow(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu"
) -> Iterator[torch.Tensor]:
    """An uninitialised tensor of ``shape``, ``dtype`` and ``device`` for the duration of
    the ``with`` block: the kept one of that key when there is one, else a new one, kept
    afterwards when it fits :data:`KEEP_BYTES`. Its contents are whatever the last
    borrower left: write before reading."""
    device = torch.device(device)
    if device.type != "cpu":
        yield torch.empty(shape, dtype=dtype, device=device)
        return
    key = (tuple(int(s) for s in shape), dtype, str(device))
    with _lock:
        buf = _kept.pop(key, None)  # out of the cache while lent: nobody else gets it
    if buf is None:
        buf = torch.empty(key[0], dtype=dtype, device=device)
    try:
        yield buf
    finally:
        if _nbytes(buf) <= KEEP_BYTES:
            with _lock:
                _kept[key] = buf
                _kept.move_to_end(key)
                while sum(_nbytes(t) for t in _kept.values()) > KEEP_BYTES:
                    _kept.popitem(last=False)


def release() -> None:
    """Free every kept buffer."""
    with _lock:
        _kept.clear()


def kept_bytes() -> int:
    """Bytes of the buffers kept now."""
    with _lock:
        return sum(_nbytes(t) for t in _kept.values())
