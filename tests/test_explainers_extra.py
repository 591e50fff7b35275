"""CAM, SmoothGrad-squared, VarGrad, RISE and feature permutation: analytic and reference oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from skimage.transform import resize

import xaibench
from xaibench.errors import InputError

pytestmark = pytest.mark.filterwarnings("error::UserWarning")


class GapNet(torch.nn.Module):
    """conv features -> global average pooling -> linear: the architecture CAM is defined for."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(6, 8, 3, padding=1, stride=2), torch.nn.ReLU())
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _gapnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return GapNet().eval()


def _x(b: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_cam_is_classifier_weights_times_features_and_averages_to_the_logit() -> None:
    model, x, t = _gapnet(), _x(3, 16), torch.tensor([0, 2, 4])
    with torch.no_grad():
        feats = model.features(x)
        want = torch.einsum("bk,bkhw->bhw", model.fc.weight[t], feats)
        logits = model(x).gather(1, t[:, None])[:, 0]
    got = xaibench.explainer("cam", model, upsample=False)(x, t)
    torch.testing.assert_close(got, want)
    # The paper's identity for a GAP + linear head: mean over positions + bias = the class logit.
    torch.testing.assert_close(got.mean(dim=(1, 2)) + model.fc.bias[t].detach(), logits, rtol=1e-5, atol=1e-6)
    assert (got < 0).any()  # signed: no ReLU
    assert xaibench.explainer("cam", model)(x, t).shape == (3, 16, 16)


def test_cam_on_torchvision_resnet_uses_fc_and_equals_prerelu_gradcam_times_positions() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    x, t = _x(2, 64), torch.tensor([1, 4])
    exp = xaibench.explainer("cam", model, upsample=False)
    cam = exp(x, t)
    assert exp.params["classifier"] == "fc" and exp.layer == "layer4"
    # Grad-CAM's weights are mean_hw dS/dA_k = W[c, k] / (h w) for this head: ReLU(CAM) / (h w).
    gradcam = xaibench.explainer("gradcam", model, upsample=False)(x, t)
    torch.testing.assert_close(cam.clamp(min=0) / (cam.shape[1] * cam.shape[2]), gradcam, rtol=1e-4, atol=1e-6)


def test_cam_errors_name_the_layer_and_classifier() -> None:
    model, x = _gapnet(), _x(2, 16)
    with pytest.raises(InputError, match="not an nn.Linear"):
        xaibench.explainer("cam", model, classifier="features.0")
    with pytest.raises(InputError, match="6 channels"):
        xaibench.explainer("cam", model, layer="features.1")(x, 0)  # 6 channels, no linear over them
    with pytest.raises(InputError, match="'fc' takes 8 features"):
        xaibench.explainer("cam", model, layer="features.1", classifier="fc")(x, 0)


class Linear(torch.nn.Module):
    def __init__(self, size: int = 8) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 3 * size * size, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T


class Quadratic(Linear):
    """logit_c = sum_j w_cj x_j^2: gradient 2 w_cj x_j, analytic moments under Gaussian noise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).pow(2) @ self.w.T


def test_vargrad_and_smoothgrad_sq_on_a_linear_model_are_exact() -> None:
    # The gradient does not depend on the noise: VarGrad = 0 and SmoothGrad^2 = w^2 exactly.
    model, x, t = Linear().eval(), _x(2, 8), torch.tensor([1, 3])
    w = model.w.detach()[t].view(2, 3, 8, 8)
    torch.testing.assert_close(xaibench.explainer("smoothgrad_sq", model, n_samples=5).attribute(x, t), w**2)
    torch.testing.assert_close(xaibench.explainer("vargrad", model, n_samples=5).attribute(x, t),
                               torch.zeros_like(w), atol=1e-5, rtol=0)


def test_vargrad_is_smoothgrad_sq_minus_squared_smoothgrad_and_matches_the_noise_moments() -> None:
    model, x, t = Quadratic().eval(), _x(2, 8), torch.tensor([0, 2])
    kw = {"n_samples": 4000, "noise": 0.2, "seed": 7, "max_batch": 8000}
    sg = xaibench.explainer("smoothgrad", **kw, model=model).attribute(x, t)
    sq = xaibench.explainer("smoothgrad_sq", **kw, model=model).attribute(x, t)
    var = xaibench.explainer("vargrad", **kw, model=model).attribute(x, t)
    torch.testing.assert_close(var, sq - sg**2, rtol=1e-3, atol=1e-4)  # same noise draws, one identity
    # g = 2 w (x + e), e ~ N(0, s^2): E[g^2] = 4 w^2 (x^2 + s^2), Var[g] = 4 w^2 s^2.
    w = model.w.detach()[t].view(2, 3, 8, 8)
    torch.testing.assert_close(var, 4 * w**2 * 0.04, rtol=0.15, atol=1e-3)
    torch.testing.assert_close(sq, 4 * w**2 * (x**2 + 0.04), rtol=0.1, atol=1e-3)
    maps = xaibench.explainer("vargrad", **kw, model=model)(x, t)
    torch.testing.assert_close(maps, var.amax(1))  # default map: max over channels


def test_sampling_methods_are_reproducible_from_their_seed() -> None:
    model, x, t = _gapnet(), _x(4, 16), torch.tensor([0, 1, 2, 3])
    for name, params in [("vargrad", {"n_samples": 4}), ("smoothgrad_sq", {"n_samples": 4}),
                         ("rise", {"n_masks": 32}), ("feature_permutation", {"patch": 4})]:
        first = xaibench.explainer(name, model, seed=3, **params)(x, t)
        torch.testing.assert_close(first, xaibench.explainer(name, model, seed=3, **params)(x, t))
        assert not torch.allclose(first, xaibench.explainer(name, model, seed=4, **params)(x, t)), name


def _reference_rise(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, n: int, s: int, p: float,
                    seed: int) -> torch.Tensor:
    """Petsiuk et al.'s algorithm one mask and one image at a time (skimage bilinear resize, edge mode),
    with the explainer's draws: grids ``rand(n, s, s) < p`` then offsets ``rand(n, 2) * cell``."""
    gen = torch.Generator().manual_seed(seed)
    grids = (torch.rand(n, s, s, generator=gen) < p).numpy()
    h, w = x.shape[2:]
    cell = np.array([math.ceil(h / s), math.ceil(w / s)])
    offsets = (torch.rand(n, 2, generator=gen) * torch.tensor(cell)).long().numpy()
    out = torch.zeros(x.shape[0], h, w, dtype=torch.float64)
    for i in range(n):
        up = resize(grids[i].astype(float), (s + 1) * cell, order=1, mode="edge", anti_aliasing=False)
        mask = torch.from_numpy(up[offsets[i, 0]:offsets[i, 0] + h, offsets[i, 1]:offsets[i, 1] + w])
        for b in range(x.shape[0]):
            with torch.no_grad():
                prob = model(x[b:b + 1] * mask.float()).softmax(1)[0, t[b]]
            out[b] += float(prob) * mask
    return (out / (n * p)).float()


def test_rise_matches_a_one_mask_at_a_time_reference() -> None:
    model, x, t = _gapnet(), _x(3, 16), torch.tensor([0, 3, 4])
    got = xaibench.explainer("rise", model, n_masks=40, grid=5, p=0.4, seed=11, max_batch=7)(x, t)
    want = _reference_rise(model, x, t, n=40, s=5, p=0.4, seed=11)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_rise_with_every_cell_kept_is_the_target_probability_everywhere() -> None:
    model, x, t = _gapnet(), _x(2, 16), torch.tensor([1, 2])
    with torch.no_grad():
        prob = model(x).softmax(1).gather(1, t[:, None])[:, 0]
    got = xaibench.explainer("rise", model, n_masks=8, p=1.0)(x, t)
    torch.testing.assert_close(got, prob[:, None, None].expand(2, 16, 16))


def test_rise_finds_the_only_region_the_model_reads() -> None:
    class LeftHalf(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = 3 * (x[:, :, :, :8].mean(dim=(1, 2, 3)) - 0.5)
            return torch.stack([s, -s], 1)

    x = torch.ones(1, 3, 16, 16)
    m = xaibench.explainer("rise", LeftHalf(), n_masks=500, grid=4, seed=0)(x, 0)[0]
    assert m[:, :6].mean() > m[:, 10:].mean() + 0.05


def test_rise_errors() -> None:
    model = _gapnet()
    with pytest.raises(InputError, match="p must be"):
        xaibench.explainer("rise", model, p=0.0)
    with pytest.raises(InputError, match="finer"):
        xaibench.explainer("rise", model, grid=32)(_x(1, 16), 0)


def test_feature_permutation_of_two_images_is_the_swap_drop_of_a_linear_model() -> None:
    # With 2 images the only non-identity permutation is the swap: the attribution of patch P of
    # image i is f(x_i) - f(x_i with P from x_j) = sum_P w (x_i - x_j), on every pixel and channel of P.
    model, x, t = Linear().eval(), _x(2, 8), torch.tensor([1, 3])
    attr = xaibench.explainer("feature_permutation", model, patch=4).attribute(x, t)
    w = model.w.detach()[t].view(2, 3, 8, 8)
    contrib = w * (x - x.flip(0))
    want = torch.zeros_like(x)
    for r in range(0, 8, 4):
        for c in range(0, 8, 4):
            want[:, :, r:r + 4, c:c + 4] = contrib[:, :, r:r + 4, c:c + 4].sum(dim=(1, 2, 3))[:, None, None, None]
    torch.testing.assert_close(attr, want, rtol=1e-4, atol=1e-5)


def test_feature_permutation_needs_two_images() -> None:
    with pytest.raises(InputError, match="at least 2 images"):
        xaibench.explainer("feature_permutation", _gapnet())(_x(1, 16), 0)
