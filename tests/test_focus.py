"""Mosaic builder and Focus, against Quantus' Focus and analytic cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus
import torch

import xaibench.metrics as M
from xaibench.data.mosaics import build_mosaics, tile_masks
from xaibench.errors import InputError


@pytest.fixture
def source() -> tuple[torch.Tensor, torch.Tensor]:
    """30 images 3x8x8 of 5 classes; each image's pixels encode its index so tiles can be traced."""
    labels = torch.arange(30) % 5
    images = (torch.arange(30).float() / 29)[:, None, None, None].expand(30, 3, 8, 8).contiguous()
    return images, labels


def test_mosaic_layout(source) -> None:
    images, labels = source
    mos = build_mosaics(images, labels, 50, seed=0)
    assert mos.images.shape == (50, 3, 16, 16) and mos.layout.shape == (50, 4)
    # Exactly two target tiles, four distinct source images, layout = labels of the sources.
    assert ((mos.layout == mos.targets[:, None]).sum(1) == 2).all()
    assert (mos.sources.sort(1).values.diff(dim=1) > 0).all()
    assert torch.equal(mos.layout, labels[mos.sources])
    # Tiles in raster order hold their source images.
    quads = mos.images.view(50, 3, 2, 8, 2, 8).permute(0, 2, 4, 1, 3, 5).reshape(50, 4, 3, 8, 8)
    assert torch.equal(quads, images[mos.sources])
    assert torch.equal(mos.masks[:, ::8, ::8].reshape(50, 4), mos.layout == mos.targets[:, None])
    # Every position and class gets used; one seed fixes everything.
    assert (mos.layout == mos.targets[:, None]).any(0).all() and set(mos.targets.tolist()) == set(range(5))
    again = build_mosaics(images, labels, 50, seed=0)
    assert torch.equal(again.sources, mos.sources)
    assert not torch.equal(build_mosaics(images, labels, 50, seed=1).sources, mos.sources)


def test_mosaic_bad_inputs(source) -> None:
    images, labels = source
    with pytest.raises(InputError, match="at least two images"):
        build_mosaics(images[:3], torch.tensor([0, 1, 2]), 4)
    with pytest.raises(InputError, match="labels"):
        build_mosaics(images, labels[:5], 4)
    with pytest.raises(InputError, match="n must be"):
        build_mosaics(images, labels, 0)
    with pytest.raises(InputError, match="even"):
        tile_masks(torch.ones(2, 4, dtype=torch.bool), (7, 8))


def test_focus_matches_quantus(source) -> None:
    images, labels = source
    mos = build_mosaics(images, labels, 8, seed=3)
    maps = torch.randn(8, 16, 16, generator=torch.Generator().manual_seed(0))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = quantus.Focus(abs=False, normalise=False, disable_warnings=True)(
            model=model, x_batch=mos.images.numpy(), y_batch=mos.targets.numpy(), a_batch=maps[:, None].numpy(),
            custom_batch=(mos.layout == mos.targets[:, None]).int().tolist())
    got = M.focus(attributions=maps, masks=mos.masks).scores.double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_focus_analytic_and_undefined(source) -> None:
    images, labels = source
    mos = build_mosaics(images, labels, 4, seed=0)
    masks = mos.masks
    assert torch.allclose(M.focus(attributions=masks.float(), masks=masks).scores, torch.ones(4))
    assert torch.allclose(M.focus(attributions=(~masks).float(), masks=masks).scores, torch.zeros(4))
    # Coarse maps (one value per tile) are upsampled; uniform positive maps give one half.
    assert torch.allclose(M.focus(attributions=torch.ones(4, 2, 2), masks=masks).scores, torch.full((4,), 0.5))
    r = M.focus(attributions=-torch.rand(4, 16, 16), masks=masks)
    assert torch.isnan(r.scores).all() and r.reasons[0] == "no positive relevance in the map"
    with pytest.raises(InputError, match="whole mosaic tiles"):
        M.focus(attributions=torch.rand(4, 16, 16), masks=torch.rand(4, 16, 16) > 0.5)
