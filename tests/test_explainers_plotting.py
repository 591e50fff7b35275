"""Heatmap overlay and gallery rendering (xaibench.plotting)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from xaibench.errors import InputError
from xaibench.plotting import overlay, save_gallery


def test_overlay_is_colormap_of_minmax_map_blended_over_grey() -> None:
    image = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(0))
    heat = torch.randn(6, 5, generator=torch.Generator().manual_seed(1)) * 7 - 3
    norm = ((heat - heat.min()) / (heat.max() - heat.min())).numpy()
    colours = plt.get_cmap("viridis")(norm)[..., :3]
    grey = image.mean(0).numpy()[..., None]
    want = np.round((0.3 * grey + 0.7 * colours) * 255).astype(np.uint8)
    got = overlay(image, heat, cmap="viridis", alpha=0.7)
    assert got.dtype == np.uint8 and got.shape == (6, 5, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    # alpha = 0 shows the grey image only; a constant map is the colormap's low end everywhere.
    assert np.array_equal(overlay(image, heat, alpha=0.0)[..., 0], np.round(grey[..., 0] * 255).astype(np.uint8))
    low = np.round(np.array(plt.get_cmap("jet")(0.0)[:3]) * 255)
    assert np.array_equal(overlay(image, torch.full((6, 5), 2.0), alpha=1.0), np.broadcast_to(low, (6, 5, 3)))


def test_overlay_resizes_low_resolution_maps_and_accepts_grey_images() -> None:
    out = overlay(torch.rand(1, 16, 16), torch.rand(2, 2))
    assert out.shape == (16, 16, 3)
    with pytest.raises(InputError):
        overlay(torch.rand(2, 16, 16), torch.rand(16, 16))
    with pytest.raises(InputError):
        overlay(torch.rand(3, 16, 16), torch.rand(1, 16, 16))


def test_save_gallery_writes_png_grid(tmp_path) -> None:
    images = torch.rand(3, 3, 12, 12)
    maps = {"a": torch.rand(3, 12, 12), "b": torch.rand(3, 3, 3)}
    path = save_gallery(images, maps, tmp_path / "g.png", titles=["x", "y", "z"], cell=1.0)
    img = plt.imread(path)
    assert img.shape[:2] == (300, 300)  # 3 rows x (1 + 2 methods) columns of 1 inch at 100 dpi
    with pytest.raises(InputError):
        save_gallery(images, {"a": torch.rand(2, 12, 12)}, tmp_path / "bad.png")
