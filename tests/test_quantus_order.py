"""Side by side with Quantus 0.6.0 on identical random models, inputs and maps.

Settings chosen so the definitions coincide (each difference is documented in
docs/metrics-faithfulness.md):
- Quantus ``"black"`` is the image minimum: pass ``perturb_baseline=0.0`` to compare with ours.
- Quantus flattens [C, H, W] and counts elements; ``features_in_step = C * features_per_step``.
- Quantus ROAD and IROF only handle one-channel images correctly (indices over H*W, masks
  [B, 1, H, W]); they are compared on grey images. ROAD runs with ``noise=0``.
- Quantus 0.6.0 calls ``np.trapz``, removed in NumPy 2; it is aliased to ``np.trapezoid`` here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaibench import metrics
from xaibench.perturbation.imputation import linear_impute

quantus = pytest.importorskip("quantus")

QKW = dict(normalise=False, disable_warnings=True, display_progressbar=False)


class Net(torch.nn.Module):
    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * size * size, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def data(channels: int, size: int, n: int = 4, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = Net(channels, size).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, channels, size, size, generator=g)
    a = torch.randn(n, size, size, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, a, y


@pytest.fixture(autouse=True)
def numpy_trapz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


@pytest.mark.parametrize("per_step", [1, 4])
def test_pixel_flipping_matches_quantus(per_step: int) -> None:
    model, x, a, y = data(3, 12)
    q = quantus.PixelFlipping(features_in_step=3 * per_step, perturb_baseline=0.0, **QKW)
    ref = np.array(q(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
                     softmax=True, device="cpu"))
    ours = metrics.pixel_flipping(model, x, a, y, features_per_step=per_step)
    np.testing.assert_allclose(ours.curves[:, 1:].numpy(), ref, atol=1e-5)
    q = quantus.PixelFlipping(features_in_step=3 * per_step, perturb_baseline=0.0, return_auc_per_sample=True, **QKW)
    auc = np.array(q(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
                     softmax=True, device="cpu"))
    np.testing.assert_allclose(ours.scores.numpy(), auc, atol=1e-5)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_matches_quantus(order: str) -> None:
    model, x, a, y = data(3, 12)
    q = quantus.RegionPerturbation(patch_size=3, regions_evaluation=10, order=order, perturb_baseline=0.0, **QKW)
    ref = np.array(q(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
                     softmax=False, device="cpu"))
    ours = metrics.region_perturbation(model, x, a, y, patch_size=3, regions_evaluation=10, order=order, output="logit")
    np.testing.assert_allclose(ours.extras["drops"].numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(ours.scores.numpy(), ref.sum(1) / 11, atol=1e-5)


def test_road_matches_quantus_without_noise() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 5)).eval()  # sensitive arg-max
    g = torch.Generator().manual_seed(0)
    x, a = torch.rand(6, 1, 12, 12, generator=g), torch.randn(6, 12, 12, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    pct = [5, 20, 40, 60, 80, 95]
    q = quantus.ROAD(percentages=pct, noise=0.0, return_aggregate=False, **QKW)
    ref = np.array([
        list(q(model=model, x_batch=x[i : i + 1].numpy(), y_batch=y[i : i + 1].numpy(),
               a_batch=a[i : i + 1, None].numpy(), device="cpu").values())
        for i in range(6)
    ])
    ours = metrics.road(model, x, a, y, percentages=pct, noise=0.0, lerf=False)
    np.testing.assert_array_equal(ours.curves[:, 1:].numpy(), ref)
    assert 0 < ref.mean() < 1  # the curves are not degenerate


def test_road_imputation_matches_quantus_perturb_func() -> None:
    from quantus.functions.perturb_func import noisy_linear_imputation

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 9, 8, generator=g)
    removed = torch.rand(2, 9, 8, generator=g) < 0.7
    ours = linear_impute(x, removed)
    for b in range(2):
        idx = np.flatnonzero(removed[b].numpy().ravel())
        ref = noisy_linear_imputation(x[b].double().numpy(), idx, noise=0.0)
        np.testing.assert_allclose(ours[b].numpy(), ref, atol=1e-5)


def test_irof_matches_quantus() -> None:
    model, x, a, y = data(1, 16, n=3)
    q = quantus.IROF(perturb_baseline=0.0, return_aggregate=False, **QKW)
    ref = np.array(q(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
                     softmax=True, device="cpu"))
    ours = metrics.irof(model, x, a, y, baseline="black")
    assert len(set(ours.extras["num_segments"].tolist())) == 1  # Quantus pads unequal counts differently
    np.testing.assert_allclose(ours.scores.numpy(), ref, atol=1e-5)
