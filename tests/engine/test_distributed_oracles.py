"""Mutation audit OE: the DDP helpers in one process (no launcher, or a process group of one)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from uvireid.engine import distributed as D


@pytest.fixture
def no_launcher(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


def test_one_process_helpers_keep_shapes_and_types(no_launcher):
    """Without a launcher: a 0-d tensor gathers to its (1,) vector (as the (world,) one
    under DDP), a tensor to itself, an object to a list of one, labels stay as given."""
    assert D.init_from_env("cpu") == "cpu" and not dist.is_initialized()
    got = D.all_gather_cat(torch.tensor(2.5))
    assert got.shape == (1,) and got.tolist() == [2.5]
    t = torch.arange(4).reshape(2, 2)
    assert D.all_gather_cat(t) is t
    assert D.all_gather_object({"a": 1}) == [{"a": 1}]
    labels = torch.tensor([3, -1], dtype=torch.int32)
    assert D.gather_labels(labels, "cpu") is labels
    assert D.broadcast_object([1, 2], src=0) == [1, 2]
    assert D.from_main(lambda: "x") == "x" and D.agree(lambda: 7) == 7
    assert D.all_reduce_mean(1.5) == 1.5
    assert (D.rank(), D.world_size(), D.is_main(), D.is_distributed()) == (0, 1, True, False)
    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean.fill_(3.0)
    D.broadcast_buffers(bn)
    assert bn.running_mean.tolist() == [3.0, 3.0]
    D.barrier()
    D.leave()  # nothing to leave


def test_an_error_in_from_main_or_agree_is_the_callers_own_on_one_process():
    def boom():
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        D.from_main(boom)
    with pytest.raises(KeyError, match="mine"):
        D.agree(boom)


def test_a_process_group_of_one_is_not_distributed(tmp_path, no_launcher):
    """``torchrun --nproc_per_node 1`` makes a group of one: the helpers take the
    single-process path (labels keep their dtype, a tensor is returned as it is), and
    leave() destroys the group without waiting for peers."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        assert dist.is_initialized() and dist.get_world_size() == 1
        assert not D.is_distributed() and D.world_size() == 1 and D.rank() == 0
        labels = torch.tensor([1, 2], dtype=torch.int32)
        assert D.gather_labels(labels, "cpu").dtype == torch.int32
        assert D.init_from_env("cpu") == "cpu"  # already joined: nothing happens
    finally:
        D.leave()
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    ("env", "launched"),
    [
        ({"WORLD_SIZE": "2", "RANK": "1"}, True),
        ({"WORLD_SIZE": "1", "RANK": "0"}, False),
        ({"WORLD_SIZE": "2"}, False),
        ({"RANK": "0"}, False),
        ({"WORLD_SIZE": " "}, False),
    ],
)
def test_launched_by_torchrun_needs_more_than_one_process_and_a_rank(
    monkeypatch, no_launcher, env, launched
):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert D.launched_by_torchrun() is launched
    assert D.env_world_size() == (
        int(env["WORLD_SIZE"]) if env.get("WORLD_SIZE", " ").strip() else 1
    )


def test_a_cuda_rank_takes_the_gpu_of_its_local_rank(monkeypatch, no_launcher):
    """On a second node (RANK 3 of 4, LOCAL_RANK 1) the process uses its node's GPU 1, not
    GPU 3 (the group join and the GPU stubbed: no CUDA needed)."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("device", i)))
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    assert D.init_from_env("cuda") == "cuda:1"
    assert calls == [("device", 1), "nccl"]
    calls.clear()
    assert D.init_from_env("cpu") == "cpu" and calls == ["gloo"]
