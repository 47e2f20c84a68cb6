"""extract_images' flip averaging and part weights against a naive computation
(mutation audit CB)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uvireid.data.transforms import normalize
from uvireid.engine.trainer import extract_images


class Toy(nn.Module):
    out_dim = 5

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(3 * 4 * 6, 5, generator=g))

    def raw(self, x):
        return x.flatten(1) @ self.w

    def forward(self, x, m):
        return SimpleNamespace(bn_feat=self.raw(x), feature_map=x[:, :, :2, :3] * 2.0)

    def extract(self, x, m, flip=True, head="bn_feat"):
        f = F.normalize(self.raw(x), dim=1)
        if flip:
            f = F.normalize(f + F.normalize(self.raw(x.flip(3)), dim=1), dim=1)
        return f


class Parts(nn.Module):
    def self_parts(self, fm, normalize=False):  # (B, P=3, d=6): one part per channel
        return fm.flatten(2)


def _data():
    g = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 256, (7, 3, 4, 6), generator=g, dtype=torch.uint8)
    return imgs, np.array([0, 1, 0, 1, 1, 0, 0])


def _naive(model, imgs):
    x = normalize(imgs.float() / 255.0)
    a = F.normalize(model.raw(x), dim=1)
    b = F.normalize(model.raw(x.flip(3)), dim=1)  # horizontal: the width axis
    return x, a, b


def test_flip_means_of_the_unrenormalised_halves_are_the_horizontal_flip_average():
    model, (imgs, mod) = Toy(), _data()
    _, a, b = _naive(model, imgs)
    f, _ = extract_images(model, imgs, mod, "cpu", batch=3, flip=True, renormalize=False)
    torch.testing.assert_close(f, (a + b) / 2)
    assert (f.norm(dim=1) < 1 - 1e-4).all()  # PGM's clustering features: norm <= 1


def test_flip_with_a_part_module_renormalises_and_weights_the_parts_by_the_joint_norm():
    model, parts, (imgs, mod) = Toy(), Parts(), _data()
    x, a, b = _naive(model, imgs)
    weights: list = []
    f, p = extract_images(
        model, imgs, mod, "cpu", batch=3, flip=True, part_module=parts, part_weights=weights
    )
    torch.testing.assert_close(f, F.normalize(a + b, dim=1))
    torch.testing.assert_close(f.norm(dim=1), torch.ones(len(imgs)))
    raw = (x[:, :, :2, :3] * 2.0).flatten(2)
    torch.testing.assert_close(p, F.normalize(raw, dim=-1))
    got = torch.cat(weights)
    for i in range(len(imgs)):  # |part_p| / |[parts ‖ bn_feat]|, one image at a time
        joint = torch.cat([raw[i].flatten(), model.raw(x[i : i + 1])[0]]).norm()
        for k in range(raw.shape[1]):
            assert abs(float(got[i, k]) - float(raw[i, k].norm() / joint)) < 1e-5
