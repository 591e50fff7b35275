"""builtin:digits-hard: deterministic, the digits of builtin:digits transformed, masks that match."""

from __future__ import annotations

import math

import pytest
import torch

from xaibench.data import collate, load_dataset
from xaibench.data import digits_hard as dh
from xaibench.errors import InputError, UnknownNameError


def test_same_digits_labels_and_split_as_builtin_digits() -> None:
    hard, plain = load_dataset("builtin:digits-hard", "test"), load_dataset("builtin:digits", "test")
    assert len(hard) == len(plain) == 540 and len(load_dataset("builtin:digits-hard", "train")) == 1257
    assert torch.equal(hard.labels, plain.labels)
    s = hard[3]
    assert s.id == plain[3].id.replace("digits-", "digits-hard-") and s.image.shape == (3, 32, 32)
    assert s.mask is s.masks["digit"] and set(s.masks) == {"digit", "clutter"}
    assert torch.equal(s.image[0], s.image[2]) and 0 <= s.image.min() and s.image.max() <= 1
    assert not torch.equal(s.image, plain[3].image)


def test_generation_is_deterministic_and_masks_follow_the_transformed_digit() -> None:
    grey, _, splits = dh.digits_arrays()
    part = grey[torch.as_tensor(splits["test"][:50])]
    a, b = dh._make(part, "test"), dh._make(part, "test")
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    image, digit, clutter = a
    # Where the digit mask is on, the image holds the transformed stroke (>= 0.3 before noise).
    noise_free = image[digit & ~clutter]
    assert noise_free.mean() > 0.5 and digit.float().mean() > 0.1 and clutter.any()
    assert not torch.equal(dh._make(part, "train")[0], image)  # the split changes the draws


def test_affine_conventions() -> None:
    gen = torch.Generator().manual_seed(0)
    identity = dh._affine(gen, 3, 0.0, (1.0, 1.0), 0.0, 0.0)
    torch.testing.assert_close(identity, torch.eye(2, 3).expand(3, 2, 3))
    img = torch.rand(1, 8, 8, generator=gen)
    torch.testing.assert_close(dh._warp(img, identity[:1]), img)
    # A +90-degree rotation (x to the right, y down: clockwise on screen) is torch.rot90(k=-1), exactly.
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    forward = torch.tensor([[[c, -s], [s, c]]])
    theta = torch.cat([torch.linalg.inv(forward), torch.zeros(1, 2, 1)], 2)
    torch.testing.assert_close(dh._warp(img, theta), torch.rot90(img, -1, (1, 2)), atol=1e-5, rtol=0)


def test_batches_and_errors() -> None:
    ds = load_dataset("builtin:digits-hard", "test", image_size=16)
    batch = collate([ds[i] for i in range(4)])
    assert batch.images.shape == (4, 3, 16, 16) and set(batch.masks) == {"digit", "clutter"}
    with pytest.raises(InputError, match="no split 'val'"):
        load_dataset("builtin:digits-hard", "val")
    with pytest.raises(UnknownNameError, match="builtin:digits-hard"):
        load_dataset("builtin:digits-hrd")
