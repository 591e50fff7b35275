"""Robustness metrics side by side with Captum and Quantus 0.6.0 (same perturbations injected), plus analytic cases."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import quantus
import torch
from captum.attr import GuidedBackprop
from captum.attr import Saliency as CaptumSaliency
from captum.metrics import sensitivity_max
from captum.testing.helpers.basic_models import BasicModel_ConvNet_One_Conv
from torch import Tensor, nn

from xaibench.checks import set_input_range
from xaibench.errors import InputError
from xaibench.metrics import METRICS
from xaibench.metrics.robustness import (
    avg_sensitivity,
    gaussian_noise,
    local_lipschitz,
    max_sensitivity,
    minmax01,
    noise_stability,
    relative_input_stability,
    relative_output_stability,
    uniform_noise,
)

N = 4  # perturbed copies per image in the side-by-side tests


class Net(nn.Module):
    """Tiny ReLU CNN (3x12x12 -> `classes`), random init, so saliency changes under noise."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 12 * 12, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class Saliency:
    """|d logit_t / d x|, max over channels: an explainer bound to `model`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, inputs: Tensor, targets: Tensor) -> Tensor:
        x = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.model(x).gather(1, targets[:, None]).sum(), x)
        return grad.abs().amax(dim=1)


@pytest.fixture
def setup() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    return model, x, model(x).argmax(1)


def quantus_explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object) -> np.ndarray:
    return Saliency(model)(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()


def our_draws(perturb: Callable[[Tensor, torch.Generator], Tensor], x: Tensor, seed: int = 0) -> Tensor:
    """The perturbed copies our metrics build: image-major rows [B, N, C, H, W]."""
    return perturb(x.repeat_interleave(N, dim=0), torch.Generator().manual_seed(seed)).view(x.shape[0], N, *x.shape[1:])


def inject(metric: quantus.Metric, perturbed: Tensor) -> None:
    """Replace Quantus' perturbation (np.random) by ours: step s perturbs image i into perturbed[i, s]."""
    steps = iter(range(N))

    def perturb(arr: np.ndarray, indices: np.ndarray, **_: object) -> np.ndarray:
        return perturbed[:, next(steps)].reshape(arr.shape[0], -1).numpy()

    metric.perturb_func = perturb


def run_quantus(metric: quantus.Metric, model: nn.Module, x: Tensor, y: Tensor) -> np.ndarray:
    return np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
                             explain_func=quantus_explain, device="cpu"), dtype=float)


@pytest.mark.parametrize("ours, theirs", [(max_sensitivity, quantus.MaxSensitivity),
                                          (avg_sensitivity, quantus.AvgSensitivity)])
def test_sensitivity_matches_quantus(setup, ours, theirs) -> None:
    model, x, y = setup
    radius = 0.05
    result = ours(model, x, y, Saliency(model), radius=radius, n_samples=N, max_batch=5)
    metric = theirs(nr_samples=N, lower_bound=radius, disable_warnings=True)
    inject(metric, our_draws(uniform_noise(radius), x))
    np.testing.assert_allclose(result.scores.numpy(), run_quantus(metric, model, x, y), rtol=1e-5)
    assert (result.scores > 0).all()


def test_max_sensitivity_matches_captum(setup) -> None:
    model, x, y = setup
    radius = 0.05
    result = max_sensitivity(model, x, y, Saliency(model), radius=radius, n_samples=N)
    gen = torch.Generator().manual_seed(0)

    def captum_perturb(inputs: Tensor, perturb_radius: float) -> Tensor:
        return inputs + (2 * torch.rand(inputs.shape, generator=gen) - 1) * perturb_radius

    def explain(inputs: Tensor | tuple[Tensor, ...], target: Tensor) -> Tensor | tuple[Tensor, ...]:
        if isinstance(inputs, tuple):  # Captum expects the structure of its inputs back
            return (Saliency(model)(inputs[0], target)[:, None],)
        return Saliency(model)(inputs, target)[:, None]

    expected = sensitivity_max(explain, x,
                               perturb_func=captum_perturb, perturb_radius=radius, n_perturb_samples=N, target=y)
    torch.testing.assert_close(result.scores, expected.float(), rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
def test_captum_published_convnet_case() -> None:
    """Captum's tests/metrics/test_sensitivity.py convnet cases: expected sensitivity 0 (+-0.05)."""
    model = set_input_range(BasicModel_ConvNet_One_Conv(), None)  # Captum's pixels run 1..16
    x = torch.stack([torch.arange(1, 17).float()] * 20, dim=0).view(20, 1, 4, 4)
    targets = torch.tensor([1] * 20)
    ramp = torch.arange(-8, 8).view(1, 4, 4).float() / 100  # Captum's test perturbation

    def explainer(inputs: Tensor, t: Tensor) -> Tensor:
        return CaptumSaliency(model).attribute(inputs, target=t)[:, 0]

    ours = max_sensitivity(model, x, targets, explainer, n_samples=10, perturb_func=lambda r, g: r + ramp,
                           max_batch=40)
    theirs = sensitivity_max(CaptumSaliency(model).attribute, x, perturb_func=lambda r: r + ramp,
                             n_perturb_samples=10, target=targets, max_examples_per_batch=40)
    torch.testing.assert_close(ours.scores, torch.zeros(20), atol=0.05, rtol=0)
    torch.testing.assert_close(ours.scores, theirs.float())
    # test_convnet_multi_target_and_default_pert_func: GuidedBackprop, default uniform noise, expected 0 (+-0.05)
    gbp = max_sensitivity(model, x, targets, lambda i, t: GuidedBackprop(model).attribute(i, target=t)[:, 0],
                          n_samples=10, max_batch=40)
    torch.testing.assert_close(gbp.scores, torch.zeros(20), atol=0.05, rtol=0)


def test_linear_model_gradient_is_insensitive() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    x = torch.rand(2, 3, 8, 8)
    for metric in (max_sensitivity, avg_sensitivity, local_lipschitz):
        result = metric(model, x, torch.tensor([0, 3]), Saliency(model), n_samples=3)
        assert torch.equal(result.scores, torch.zeros(2)), metric.__name__


@pytest.mark.parametrize("normalise", [False, True])
def test_local_lipschitz_matches_quantus(setup, normalise) -> None:
    model, x, y = setup
    result = local_lipschitz(model, x, y, Saliency(model), std=0.1, n_samples=N, max_batch=7, normalise=normalise)
    # Quantus' normalise_by_max divides by the max over the whole batch unless told the per-image axes
    metric = quantus.LocalLipschitzEstimate(nr_samples=N, perturb_std=0.1, normalise=normalise,
                                            normalise_func_kwargs={"normalise_axes": [1, 2, 3]},
                                            disable_warnings=True)
    inject(metric, our_draws(gaussian_noise(0.1), x))
    np.testing.assert_allclose(result.scores.numpy(), run_quantus(metric, model, x, y), rtol=1e-5)
    assert torch.isfinite(result.scores).all() and (result.scores > 0).all()


@pytest.mark.parametrize("ours, theirs", [(relative_input_stability, quantus.RelativeInputStability),
                                          (relative_output_stability, quantus.RelativeOutputStability)])
def test_relative_stability_matches_quantus(setup, ours, theirs) -> None:
    model, x, y = setup
    radius = 0.01
    result = ours(model, x, y, Saliency(model), radius=radius, n_samples=N, keep_prediction=False)
    metric = theirs(nr_samples=N, return_nan_when_prediction_changes=False, disable_warnings=True)
    inject(metric, our_draws(uniform_noise(radius), x))
    np.testing.assert_allclose(result.scores.numpy(), run_quantus(metric, model, x, y), rtol=1e-5)
    assert torch.isfinite(result.scores).all() and (result.scores > 0).all()


def test_keep_prediction_excludes_flipped_copies(setup) -> None:
    """A copy that changes the predicted class is left out of the max; all flipped -> NaN with a reason."""
    model, x, y = setup
    flip = torch.zeros(N, *x.shape[1:])
    flip[0] = 5.0  # the first copy of every image is pushed far away

    def perturb(rows: Tensor, g: torch.Generator) -> Tensor:
        return rows + flip.repeat(rows.shape[0] // N, 1, 1, 1) + 0.01 * torch.rand(rows.shape, generator=g)

    kept = relative_input_stability(model, x, y, Saliency(model), perturb_func=perturb, n_samples=N)
    every = relative_input_stability(model, x, y, Saliency(model), perturb_func=perturb, n_samples=N,
                                     keep_prediction=False)
    flipped = model(x + 5.0).argmax(1) != y
    assert flipped.any()
    assert torch.isnan(kept.extras["samples"][flipped, 0]).all()
    torch.testing.assert_close(kept.scores, every.extras["samples"][:, 1:].amax(1))

    always = relative_input_stability(model, x, y, Saliency(model), perturb_func=lambda r, g: -r,
                                      n_samples=2, keep_prediction=True)
    changed = model(-x).argmax(1) != y
    assert torch.isnan(always.scores[changed]).all() and always.reasons is not None
    assert all(("predicted class" in r) == bool(c) for r, c in zip([r or "" for r in always.reasons], changed))


def test_noise_stability_is_autotimms_sensitivity(setup) -> None:
    """Re-derive autotimm's sensitivity_n per image and copy with the same noisy images."""
    model, x, y = setup
    result = noise_stability(model, x, y, Saliency(model), n_samples=N, max_batch=5)
    noisy = our_draws(gaussian_noise(0.15), x)
    assert noisy.min() < 0  # autotimm 0.7 does not clip
    clipped = noise_stability(model, x, y, Saliency(model), n_samples=N, max_batch=5, clip=True)
    assert not torch.equal(clipped.scores, result.scores)

    def heatmap(img: Tensor, t: Tensor) -> np.ndarray:  # autotimm's explain(): [0, 1]-normalised numpy map
        h = Saliency(model)(img[None], t[None])[0].numpy()
        h = h - h.min()
        return h / (h.max() + 1e-8)

    changes = np.array([[np.abs(heatmap(noisy[i, s], y[i]) - heatmap(x[i], y[i])).mean() for s in range(N)]
                        for i in range(x.shape[0])])
    np.testing.assert_allclose(result.scores, changes.mean(1), rtol=1e-5)
    np.testing.assert_allclose(result.extras["std"], changes.std(1), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result.extras["max_change"], changes.max(1), rtol=1e-5)
    assert float(minmax01(torch.full((1, 3, 3), 2.0)).abs().max()) == 0.0


def test_chunking_and_seed(setup) -> None:
    model, x, y = setup
    rows: list[int] = []

    def recording(inputs: Tensor, targets: Tensor) -> Tensor:
        rows.append(inputs.shape[0])
        return Saliency(model)(inputs, targets)

    a = max_sensitivity(model, x, y, recording, n_samples=5, max_batch=2, seed=7)
    assert max(rows) == 2 and sum(rows) == 3 * 5 + 3  # the copies and the originals, 2 rows at a time
    b = max_sensitivity(model, x, y, Saliency(model), n_samples=5, max_batch=64, seed=7)
    c = max_sensitivity(model, x, y, Saliency(model), n_samples=5, seed=8)
    torch.testing.assert_close(a.scores, b.scores)
    assert not torch.equal(a.scores, c.scores)


def test_zero_map_and_bad_input(setup) -> None:
    model, x, y = setup
    zero = max_sensitivity(model, x, y, lambda i, t: torch.zeros(i.shape[0], 12, 12), n_samples=2)
    assert torch.isnan(zero.scores).all() and "all zeros" in zero.reasons[0]
    with pytest.raises(InputError, match=r"\[B, H, W\]"):
        max_sensitivity(model, x, y, lambda i, t: torch.zeros(i.shape[0], 1, 12, 12), n_samples=2)
    with pytest.raises(InputError, match="n_samples"):
        avg_sensitivity(model, x, y, Saliency(model), n_samples=0)
    with pytest.raises(InputError, match="targets"):
        local_lipschitz(model, x, torch.tensor([0, 9, 1]), Saliency(model))
    with pytest.raises(InputError, match="radius"):
        max_sensitivity(model, x, y, Saliency(model), radius=0.0)
    with pytest.raises(InputError, match="NaN or Inf"):
        max_sensitivity(model, x, y, lambda i, t: torch.full((i.shape[0], 12, 12), torch.nan), n_samples=2)
    with pytest.raises(InputError, match="NaN or Inf"):
        noise_stability(model, x, y, lambda i, t: torch.full((i.shape[0], 12, 12), torch.inf), n_samples=2)
    assert METRICS.get("noise_stability").info.category == "robustness"
