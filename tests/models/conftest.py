"""Nothing under tests/models may download weights: every fetch torch, torchvision and
timm's hub make fails the test instead."""

import pytest
import torch


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """torch.hub's and torchvision's fetches raise; the Hugging Face hub (timm's source)
    is offline. ``HF_HUB_OFFLINE`` alone is read once, when huggingface_hub is first
    imported (by another test, maybe), so its constant is set too (audit MA)."""
    import huggingface_hub.constants
    import torchvision.models._api as api

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
