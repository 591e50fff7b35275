"""LIME, KernelSHAP (superpixels, Captum) and Expected Gradients: analytic cases and Captum side by side."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import GradientShap, Lime

import xaibench
from xaibench.errors import InputError
from xaibench.explainers.gradient import seeded_global_rng
from xaibench.perturbation.engine import superpixel_segments
from xaibench.seeding import make_generator


class Linear(torch.nn.Module):
    """f_c(x) = sum(W_c * x) + b_c on 3x16x16 images, 4 classes."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(4, 3, 16, 16, generator=g))
        self.b = torch.nn.Parameter(torch.randn(4, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.w) + self.b


def _x(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _segment_contributions(model: Linear, x: torch.Tensor, t: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Exact Shapley value of each superpixel of an additive model with a black baseline, on its pixels."""
    per_pixel = (x * model.w[t]).sum(1)  # [B, H, W]: the contribution of each pixel (all channels)
    out = torch.zeros_like(per_pixel)
    for i in range(x.shape[0]):
        for s in segments[i].unique():
            m = segments[i] == s
            out[i][m] = per_pixel[i][m].sum()
    return out


def test_kernel_shap_gives_exact_shapley_values_of_an_additive_model() -> None:
    model, x, t = Linear().eval(), _x(2), torch.tensor([1, 3])
    exp = xaibench.explainer("kernel_shap", model, n_samples=300, n_segments=12, compactness=100, max_batch=32)
    segments = superpixel_segments(x, n_segments=12, compactness=100)
    expected = _segment_contributions(model, x, t, segments).detach()
    maps = exp(x, t)
    torch.testing.assert_close(maps, expected, rtol=1e-3, atol=1e-3)


def test_lime_equals_captum_lime_per_image_with_the_same_draws() -> None:
    model, x, t = Linear().eval(), _x(3), torch.tensor([1, 3, 0])
    ours = xaibench.explainer("lime", model, n_samples=80, n_segments=10, compactness=100, seed=7, max_batch=16)(x, t)
    segments = superpixel_segments(x, n_segments=10, compactness=100)
    gen = make_generator(7)
    with seeded_global_rng(gen, x.device):  # one seed per call; Captum walks the images in order
        ref = torch.cat([Lime(model).attribute(x[i:i + 1], target=int(t[i]), baselines=0.0,
                                               feature_mask=segments[i:i + 1, None], n_samples=80,
                                               perturbations_per_eval=16)[:, 0] for i in range(3)])
    torch.testing.assert_close(ours, ref)
    # on an additive model LIME's Lasso surrogate ranks the superpixels as their true contributions
    expected = _segment_contributions(model, x, t, segments).detach()
    lime = xaibench.explainer("lime", model, n_samples=400, n_segments=10, compactness=100)(x, t)
    for i in range(3):
        assert np.corrcoef(lime[i].flatten(), expected[i].flatten())[0, 1] > 0.95


def test_superpixels_are_the_perturbation_engines() -> None:
    from xaibench.explainers.surrogate import slic_segments

    x = _x(2)
    for n, c in ((12, 100.0), (30, 10.0)):
        assert torch.equal(slic_segments(x, n, c), superpixel_segments(x, n_segments=n, compactness=c))


def test_surrogates_are_seeded() -> None:
    model, x, t = Linear().eval(), _x(2), torch.tensor([0, 1])
    for name in ("lime", "kernel_shap"):
        a = xaibench.explainer(name, model, n_samples=30, n_segments=8, compactness=100, seed=1)(x, t)
        torch.testing.assert_close(a, xaibench.explainer(name, model, n_samples=30, n_segments=8, compactness=100, seed=1)(x, t))
        assert not torch.equal(a, xaibench.explainer(name, model, n_samples=30, n_segments=8, compactness=100, seed=2)(x, t))


def test_expected_gradients_on_a_linear_model_is_input_minus_mean_baseline_times_weights() -> None:
    """E_{x'~D, a~U(0,1)}[(x - x') * grad f(x' + a (x - x'))] = (x - E_D[x']) * w for f linear."""
    model, x, t = Linear().eval(), _x(3), torch.tensor([2, 0, 1])
    data = _x(5, seed=1)
    n = 3000
    eg = xaibench.explainer("expected_gradients", model, n_samples=n, baselines=data, max_batch=3000)
    got = eg.attribute(x, t)
    expected = (x - data.mean(0)) * model.w[t].detach()
    # each sample is (x - x'_i) * w with x'_i uniform over the 5 images: the mean's std is std_D(x') |w| / sqrt(n)
    tol = 5 * (data.std(0, unbiased=False) * model.w[t].detach().abs()) / n**0.5 + 1e-6
    assert ((got - expected).abs() <= tol).all()
    batch = xaibench.explainer("expected_gradients", model, n_samples=n, max_batch=3000).attribute(x, t)
    tol = 5 * (x.std(0, unbiased=False) * model.w[t].detach().abs()) / n**0.5 + 1e-6
    assert ((batch - (x - x.mean(0)) * model.w[t].detach()).abs() <= tol).all()


def test_gradient_shap_without_noise_is_captum_gradient_shap_with_those_baselines() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 14 * 14, 4)).eval()
    x, t, data = _x(2), torch.tensor([1, 2]), _x(4, seed=3)
    ours = xaibench.explainer("expected_gradients", model, n_samples=8, baselines=data, seed=3, max_batch=64).attribute(x, t)
    with seeded_global_rng(make_generator(3), x.device):
        ref = GradientShap(model).attribute(x, baselines=data, n_samples=8, stdevs=0.0, target=t)
    torch.testing.assert_close(ours, ref)
    shap = xaibench.explainer("gradient_shap", model, n_samples=8, baselines=data, seed=3).attribute(x, t)
    torch.testing.assert_close(shap, ours)


def test_errors_name_the_parameter() -> None:
    model = Linear().eval()
    with pytest.raises(InputError, match="single superpixel.*n_segments"):
        xaibench.explainer("lime", model, n_segments=12)(_x(1), 0)  # noise: SLIC merges it into one
    with pytest.raises(InputError, match="baselines must be one of"):
        xaibench.explainer("expected_gradients", model, baselines="train")
    with pytest.raises(InputError, match="at least 2 images"):
        xaibench.explainer("expected_gradients", model)(_x(1), 0)
    with pytest.raises(InputError, match="per image"):
        xaibench.explainer("expected_gradients", model, baselines=torch.zeros(2, 3, 8, 8))(_x(1), 0)
