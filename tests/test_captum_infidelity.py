"""Oracles for `infidelity`: Captum 0.9.0's ``captum.metrics.infidelity`` side by side (same
perturbations), the expected values Captum's own tests assert on its toy models, analytic cases."""

from __future__ import annotations

import pytest
import torch

import xaibench.metrics as M
from xaibench.checks import set_input_range
from xaibench.errors import InputError
from xaibench.metrics.infidelity import gaussian_perturbation
from xaibench.seeding import make_generator

captum_metrics = pytest.importorskip("captum.metrics")
from captum.attr import DeepLift, FeatureAblation, IntegratedGradients  # noqa: E402
from captum.testing.helpers.basic_models import BasicModel_ConvNet_One_Conv, BasicModel_MultiLayer  # noqa: E402


class Flat(torch.nn.Module):
    """Feeds images [B, 1, 1, F] to a model of flat inputs [B, F], optionally scaling the output."""

    def __init__(self, model: torch.nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.model(x.flatten(1))


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(24, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture
def setting() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return (SmallCNN().eval(), torch.rand(5, 3, 8, 8, generator=g), torch.randn(5, 8, 8, generator=g),
            torch.randint(0, 4, (5,), generator=g))


def _captum(model, x, a, y, perturb, n, normalize=False, max_examples=None):
    """Captum on the same maps, broadcast over channels as xaibench does."""
    return captum_metrics.infidelity(model, perturb, x, a[:, None].expand_as(x).contiguous(), target=y,
                                     n_perturb_samples=n, max_examples_per_batch=max_examples, normalize=normalize)


@pytest.mark.parametrize("normalize", [False, True])
def test_equals_captum_with_the_same_gaussian_draws(setting, normalize):
    model, x, a, y = setting
    ours = M.infidelity(model, x, a, y, std=0.1, n_perturb_samples=6, normalize=normalize, seed=3)
    gen, perturb = make_generator(3), gaussian_perturbation(0.1)
    theirs = _captum(model, x, a, y, lambda inp: perturb(inp, gen), 6, normalize)
    torch.testing.assert_close(ours.scores, theirs, rtol=1e-5, atol=1e-7)
    assert (ours.scores > 0).all()


def test_independent_of_max_batch_and_seeded(setting):
    model, x, a, y = setting
    small = M.infidelity(model, x, a, y, n_perturb_samples=7, max_batch=4, seed=2)
    large = M.infidelity(model, x, a, y, n_perturb_samples=7, max_batch=500, seed=2)
    other = M.infidelity(model, x, a, y, n_perturb_samples=7, max_batch=500, seed=9)
    torch.testing.assert_close(small.scores, large.scores, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(small.scores, other.scores)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_captum_convnet_deeplift_published_zero():
    """Captum test_classification_infidelity_convnet_multi_targets: DeepLift / input, target 1,
    constant perturbation 0.0009, expected 0 (Captum's tolerance 0.05)."""
    model = BasicModel_ConvNet_One_Conv()
    x = torch.stack([torch.arange(1, 17).float()] * 4, dim=0).view(4, 1, 4, 4)
    y = torch.tensor([1] * 4)
    attr = DeepLift(model).attribute(x, target=y) / x

    def perturb(inp, generator=None):
        return 0.0009 * torch.ones_like(inp), inp - 0.0009

    set_input_range(model, None)  # Captum's published cases use pixel values outside [0, 1]
    ours = M.infidelity(model, x, attr[:, 0], y, perturb_func=perturb, n_perturb_samples=20, output="logit")
    theirs = captum_metrics.infidelity(model, perturb, x, attr, target=y, n_perturb_samples=20)
    torch.testing.assert_close(ours.scores, theirs, rtol=1e-5, atol=1e-7)
    assert ours.scores.abs().max() < 0.05


def test_captum_multilayer_ig_baseline_published_value():
    """Captum test_classification_infidelity_tpl_target_w_baseline: expected [0.10686, 0, 0, 0], the
    squared convergence delta of IntegratedGradients. Its target tuples (0|1, 1, 1) pick 8 x the
    logits and the additional input is added to x first, so both are folded into the model/input."""
    inputs = (2 * torch.arange(1.0, 13.0)).view(4, 1, 1, 3)  # x + add_input with x = add_input
    baselines = 1 + inputs / 2
    y = torch.tensor([0, 0, 1, 0])
    model = set_input_range(Flat(BasicModel_MultiLayer(), scale=8.0), None)
    attr, delta = IntegratedGradients(model).attribute(inputs, baselines=baselines, target=y,
                                                      return_convergence_delta=True)

    def to_baseline(inp, generator=None):  # Captum's perturbed_func2: perturbation 1, perturbed = baseline
        return torch.ones_like(inp), 1 + inp / 2

    ours = M.infidelity(model, inputs, attr[:, 0], y, perturb_func=to_baseline, n_perturb_samples=3, output="logit")
    torch.testing.assert_close(ours.scores, torch.tensor([0.10686, 0.0, 0.0, 0.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.scores, (delta * delta).float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", [IntegratedGradients, FeatureAblation])
@pytest.mark.parametrize(
    "rows",
    [[[0, 0, 1], [1, 0, 0], [0, 1, 0]], [[0, 1, 1], [1, 1, 0], [1, 0, 1]], [[1, 1, 1]] * 3],
    ids=["sensitivity-1", "sensitivity-2", "sensitivity-3"],
)
def test_captum_multilayer_sensitivity_n_published_zero(method, rows):
    """Captum basic_multilayer_sensitivity_n: removing 1, 2 or 3 features of [1, 2.5, 3.3], expected 0."""
    model = BasicModel_MultiLayer()
    x = torch.tensor([[1.0, 2.5, 3.3]])
    attr = method(model).attribute(x, target=0)
    pert = torch.tensor(rows, dtype=torch.float32)

    def perturb(inp, generator=None):
        p = pert.view(inp.shape)
        return p, (1 - p) * inp

    ours = M.infidelity(set_input_range(Flat(model), None), x.view(1, 1, 1, 3), attr.view(1, 1, 3), torch.tensor([0]),
                        perturb_func=perturb, n_perturb_samples=3, output="logit")
    theirs = captum_metrics.infidelity(model, lambda inp: (pert, (1 - pert) * inp), x, attr, target=0,
                                       n_perturb_samples=3)
    torch.testing.assert_close(ours.scores, theirs, rtol=1e-5, atol=1e-6)
    assert ours.scores.abs().max() < 0.05


def test_linear_model_gradient_is_exact():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(1, 1, 6, 6, generator=g)

    class Linear(torch.nn.Module):
        def forward(self, x):
            z = (x * w).flatten(1).sum(1)
            return torch.stack([z, -z], dim=1)

    x = torch.rand(4, 3, 6, 6, generator=g)
    for normalize in (False, True):
        res = M.infidelity(Linear(), x, w[0].expand(4, 6, 6), torch.zeros(4, dtype=torch.long), normalize=normalize)
        assert res.scores.abs().max() < 1e-8
    wrong = M.infidelity(Linear(), x, -w[0].expand(4, 6, 6), torch.zeros(4, dtype=torch.long))
    assert (wrong.scores > 1e-3).all()


def test_normalize_is_invariant_to_attribution_scale(setting):
    """As Captum's test_basic_infidelity_multiple_with_normalize."""
    model, x, a, y = setting
    plain = M.infidelity(model, x, a, y, normalize=True, n_perturb_samples=5)
    scaled = M.infidelity(model, x, 100 * a, y, normalize=True, n_perturb_samples=5)
    torch.testing.assert_close(plain.scores, scaled.scores, rtol=1e-4, atol=1e-8)
    raw = M.infidelity(model, x, 100 * a, y, normalize=False, n_perturb_samples=5)
    assert (raw.scores > plain.scores).all()


def test_bad_input(setting):
    model, x, a, y = setting
    with pytest.raises(InputError, match="perturb_func"):
        M.infidelity(model, x, a, y, perturb_func=lambda inp, gen: (inp[:, :1], inp))
    with pytest.raises(InputError, match="std"):
        M.infidelity(model, x, a, y, std=0.0)
    with pytest.raises(InputError, match="n_perturb_samples"):
        M.infidelity(model, x, a, y, n_perturb_samples=0)
    bad = a.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="NaN or Inf"):
        M.infidelity(model, x, bad, y)
    with pytest.raises(InputError, match="out of range"):
        M.infidelity(model, x, a, torch.full((5,), 4))
