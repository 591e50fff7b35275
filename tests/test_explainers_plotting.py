"""Map colours, mask outlines and the PNG gallery (xaibench.plotting)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from xaibench.errors import InputError
from xaibench.plotting import DIVERGING, SEQUENTIAL, colour_limits, map_colours, mask_outline, save_gallery


def _cmap(name: str, values: np.ndarray) -> np.ndarray:
    return np.round(plt.get_cmap(name)(values)[..., :3] * 255).astype(np.uint8)


def test_signed_maps_are_diverging_and_centred_at_zero() -> None:
    heat = torch.tensor([[-2.0, 0.0], [1.0, 0.5]])
    assert colour_limits(heat) == (-2.0, 2.0, DIVERGING)
    rgb, vmin, vmax, cmap = map_colours(heat)
    assert (vmin, vmax, cmap) == (-2.0, 2.0, DIVERGING)
    want = _cmap(DIVERGING, np.array([[0.0, 0.5], [0.75, 0.625]]))  # (m + 2) / 4
    assert np.abs(rgb.astype(int) - want.astype(int)).max() <= 1
    # 0 is the middle of the diverging map (near white), not the colour of the minimum
    assert rgb[0, 1].min() > 200


def test_non_negative_maps_are_sequential_from_zero() -> None:
    heat = torch.tensor([[0.0, 3.0], [1.5, 0.75]])
    rgb, vmin, vmax, cmap = map_colours(heat)
    assert (vmin, vmax, cmap) == (0.0, 3.0, SEQUENTIAL)
    assert np.abs(rgb.astype(int) - _cmap(SEQUENTIAL, heat.numpy() / 3).astype(int)).max() <= 1
    # a constant positive map keeps its level against 0 (no min-max stretching); all-zero is 0's colour
    assert np.array_equal(map_colours(torch.full((2, 2), 5.0))[0], np.broadcast_to(_cmap(SEQUENTIAL, np.array([1.0]))[0], (2, 2, 3)))
    assert np.array_equal(map_colours(torch.zeros(2, 2))[0], np.broadcast_to(_cmap(SEQUENTIAL, np.array([0.0]))[0], (2, 2, 3)))


def test_map_colours_resizes_and_rejects_bad_shapes() -> None:
    assert map_colours(torch.rand(2, 2), (16, 12))[0].shape == (16, 12, 3)
    with pytest.raises(InputError):
        map_colours(torch.rand(1, 16, 16))


def test_mask_outline_is_the_inner_border() -> None:
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[1:5, 1:5] = True
    outline = mask_outline(mask)
    want = mask.numpy().copy()
    want[2:4, 2:4] = False
    assert np.array_equal(outline, want)
    full = mask_outline(torch.ones(3, 3, dtype=torch.bool))  # the image edge counts as outside
    assert full.sum() == 8 and not full[1, 1]


def test_save_gallery_writes_png_grid_with_a_colour_bar_per_map(tmp_path) -> None:
    images = torch.rand(3, 3, 12, 12)
    maps = {"a": torch.rand(3, 12, 12) - 0.5, "b": torch.rand(3, 3, 3)}
    masks = torch.zeros(3, 12, 12, dtype=torch.bool)
    masks[:, 3:9, 3:9] = True
    path = save_gallery(images, maps, tmp_path / "g.png", titles=["x", "y", "z"], masks=masks, cell=1.0)
    img = plt.imread(path)
    assert img.shape[:2] == (300, 375)  # 3 rows x (1 + 2 methods) columns of 1.25 x 1 inch at 100 dpi
    with pytest.raises(InputError):
        save_gallery(images, {"a": torch.rand(2, 12, 12)}, tmp_path / "bad.png")
    with pytest.raises(InputError):
        save_gallery(images, maps, tmp_path / "bad.png", masks=masks[:2])
