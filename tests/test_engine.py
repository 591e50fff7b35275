"""Perturbation engine: baselines, ranking, lazily built masks, chunking, noisy linear imputation."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from xaibench.errors import InputError, UnknownNameError
from xaibench.perturbation.baselines import BASELINES, fill


@pytest.fixture
def imgs() -> torch.Tensor:
    return torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(1))


def test_baseline_constants_and_mean(imgs: torch.Tensor) -> None:
    assert torch.equal(fill(imgs, "black"), torch.zeros_like(imgs))
    assert torch.equal(fill(imgs, "white"), torch.ones_like(imgs))
    m = fill(imgs, "mean")
    for b in range(3):
        for c in range(3):
            assert torch.allclose(m[b, c], imgs[b, c].mean().expand(20, 24))


def test_baseline_uniform_seeded(imgs: torch.Tensor) -> None:
    a, b, c = fill(imgs, "uniform", seed=3), fill(imgs, "uniform", seed=3), fill(imgs, "uniform", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < 1 and abs(float(a.mean()) - 0.5) < 0.05


@pytest.mark.parametrize("k,s", [(5, 1.5), (11, 3.0), (19, 20.0)])
def test_gaussian_blur_matches_torchvision(imgs: torch.Tensor, k: int, s: float) -> None:
    ref = TF.gaussian_blur(imgs, [k, k], [s, s])
    assert torch.allclose(fill(imgs, "gaussian_blur", kernel_size=k, sigma=s), ref, atol=1e-6)


def test_box_blur_is_reflect_padded_mean(imgs: torch.Tensor) -> None:
    ref = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(imgs, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    assert torch.allclose(fill(imgs, "box_blur", kernel_size=5), ref, atol=1e-6)


def test_large_kernel_is_truncated_to_image(imgs: torch.Tensor) -> None:
    out = fill(imgs, "gaussian_blur")  # default 51 > 2*20-1: truncated to 39 rows / 47 cols
    ref = TF.gaussian_blur(imgs, [47, 39], [20.0, 20.0])
    assert torch.allclose(out, ref, atol=1e-6)


def test_baseline_bad_names_and_params(imgs: torch.Tensor) -> None:
    with pytest.raises(UnknownNameError, match="gaussian_blur"):
        fill(imgs, "gaussian-blurr")
    with pytest.raises(InputError):
        fill(imgs, "box_blur", kernel_size=4)
    with pytest.raises(InputError):
        fill(imgs, "black", sigma=2.0)
    assert "uniform" in BASELINES and "box-blur" in BASELINES
