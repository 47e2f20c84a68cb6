"""The re-rankers' reused working matrices: lent to one borrower at a time, bounded,
and invisible in the results."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from uvireid.registry import RERANKERS
from uvireid.rerank import workspace


@pytest.fixture(autouse=True)
def empty_workspace():
    workspace.release()
    yield
    workspace.release()


def test_a_buffer_is_reused_by_the_next_borrower_of_its_key_only():
    with workspace.borrow((64, 32), torch.float32) as a:
        ptr = a.data_ptr()
        with workspace.borrow((64, 32), torch.float32) as nested:  # a second borrower
            assert nested.data_ptr() != ptr
    with workspace.borrow((64, 32), torch.float32) as b:
        assert b.data_ptr() == ptr  # the next call gets it (its pages already mapped)
    with workspace.borrow((64, 32), torch.float64) as c:  # another key: another buffer
        assert c.data_ptr() != ptr and c.dtype == torch.float64
    seen = []

    def worker():
        with workspace.borrow((64, 32), torch.float32) as t:
            seen.append(t.data_ptr())
            barrier.wait()  # both threads hold theirs at once

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 2


def test_what_is_kept_stays_within_its_bound(monkeypatch):
    monkeypatch.setattr(workspace, "KEEP_BYTES", 3 * 4096)
    with workspace.borrow((1024,), torch.float32):  # 4 KiB
        pass
    with workspace.borrow((2048,), torch.float32):  # 8 KiB: 12 KiB in all
        pass
    assert workspace.kept_bytes() == 3 * 4096
    with workspace.borrow((512,), torch.float32):  # 2 KiB more: the oldest goes
        pass
    assert workspace.kept_bytes() == 8192 + 2048
    with workspace.borrow((8192,), torch.float32):  # 32 KiB: over the bound, not kept
        pass
    assert workspace.kept_bytes() == 8192 + 2048
    workspace.release()
    assert workspace.kept_bytes() == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reranking_results_do_not_depend_on_what_the_workspace_held(dtype):
    """Each dense re-ranker, called on inputs of one size one after the other, gives what
    it gives with an empty workspace, and a result already returned is not changed by
    the next call (no result is a view of a borrowed buffer)."""
    rng = np.random.default_rng(0)
    inputs = [
        (rng.normal(size=(60, 8)).astype(dtype), rng.normal(size=(15, 8)).astype(dtype))
        for _ in range(2)
    ]
    for name in ("kreciprocal", "cmrr", "cmfp"):
        part = RERANKERS.build({"type": name})
        fresh = []
        for q, g in inputs:
            workspace.release()
            fresh.append(part.rerank(q, g).copy())
        workspace.release()
        first = part.rerank(*inputs[0])
        assert workspace.kept_bytes() > 0, name  # it borrowed
        second = part.rerank(*inputs[1])
        np.testing.assert_array_equal(first, fresh[0], err_msg=name)
        np.testing.assert_array_equal(second, fresh[1], err_msg=name)


def test_a_buffer_of_exactly_the_bound_is_kept(monkeypatch):
    """Kept afterwards "when it fits KEEP_BYTES": a buffer of exactly that size fits."""
    monkeypatch.setattr(workspace, "KEEP_BYTES", 4096)
    with workspace.borrow((1024,), torch.float32) as a:
        ptr = a.data_ptr()
    assert workspace.kept_bytes() == 4096
    with workspace.borrow((1024,), torch.float32) as b:
        assert b.data_ptr() == ptr


def test_the_buffer_returned_last_is_the_newest_even_after_a_nested_borrow(monkeypatch):
    """The oldest buffer is dropped first. A nested borrower of the same key returns a
    fresh buffer first; the outer one, returned after another key's, is then the newest
    and must survive the next eviction."""
    monkeypatch.setattr(workspace, "KEEP_BYTES", 3 * 4096)
    with workspace.borrow((1024,), torch.float32) as outer:  # key A, 4 KiB
        ptr = outer.data_ptr()
        with workspace.borrow((1024,), torch.float32):  # A again: a fresh one, kept
            pass
        with workspace.borrow((2048,), torch.float32):  # key B, 8 KiB: A, B kept
            pass
    # the outer A replaces the nested one and is now the most recent: order B, A
    with workspace.borrow((512,), torch.float32):  # 2 KiB more: over 12 KiB, B goes
        pass
    assert workspace.kept_bytes() == 4096 + 2048
    with workspace.borrow((1024,), torch.float32) as again:
        assert again.data_ptr() == ptr


def test_a_buffer_is_returned_when_its_borrower_raises():
    """A re-ranker that stops with an error inside its ``with`` block still hands its
    buffer back (the next call of that size reuses it)."""
    with pytest.raises(RuntimeError), workspace.borrow((64, 8), torch.float64) as a:
        ptr = a.data_ptr()
        raise RuntimeError("stop")
    assert workspace.kept_bytes() == 64 * 8 * 8
    with workspace.borrow((64, 8), torch.float64) as b:
        assert b.data_ptr() == ptr
