"""Randomisation checks side by side with Quantus 0.6.0 (same layer re-initialisation), plus analytic cases."""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench.errors import InputError
from xaibench.metrics import METRICS
from xaibench.metrics.randomisation import model_parameter_randomisation, random_logit, randomisable_layers
from xaibench.metrics.similarity import spearman


class Net(nn.Module):
    """Tiny ReLU CNN with a BatchNorm (3x10x10 -> `classes`)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 10 * 10, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(h)).flatten(1))


class Saliency:
    """Signed input gradient of the target logit, summed over channels."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, inputs: Tensor, targets: Tensor) -> Tensor:
        x = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.model(x).gather(1, targets[:, None]).sum(), x)
        return grad.sum(dim=1)


def edges(inputs: Tensor, targets: Tensor) -> Tensor:
    """A model-independent 'explanation': gradient magnitude of the grey image."""
    grey = inputs.mean(dim=1, keepdim=True)
    gx = F.conv2d(grey, torch.tensor([[[[-1.0, 0.0, 1.0]]]]), padding=(0, 1))
    gy = F.conv2d(grey, torch.tensor([[[[-1.0], [0.0], [1.0]]]]), padding=(1, 0))
    return (gx.pow(2) + gy.pow(2)).sqrt()[:, 0]


def quantus_reset(seed: int):
    """Quantus' layer randomisation: torch.manual_seed(seed + 1) then reset_parameters()."""

    def randomise(layer: nn.Module, generator: torch.Generator) -> None:
        torch.manual_seed(seed + 1)
        layer.reset_parameters()

    return randomise


def quantus_explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object) -> np.ndarray:
    return Saliency(model)(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()


@pytest.fixture
def setup() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.rand(3, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    return model, x, model(x).argmax(1)


@pytest.mark.parametrize("order", ["top_down", "bottom_up", "independent"])
def test_mprt_matches_quantus(setup, order) -> None:
    model, x, y = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ours = model_parameter_randomisation(model, x, y, Saliency(model), order=order, randomise=quantus_reset(42))
    metric = quantus.MPRT(layer_order=order, seed=42, disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None, explain_func=quantus_explain,
                    device="cpu")
    layers = [k for k in theirs if k != "original"]
    assert layers == ours.params["layers"]
    expected = np.array([theirs[k] for k in layers]).T
    np.testing.assert_allclose(ours.curves.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(ours.scores.numpy(), expected.mean(axis=1), atol=1e-5)
    assert np.isfinite(expected).all() and (expected < 0.999).any()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k

    last = model_parameter_randomisation(model, x, y, Saliency(model), order=order, score="last",
                                         randomise=quantus_reset(42))
    metric = quantus.MPRT(layer_order=order, seed=42, return_last_correlation=True, disable_warnings=True)
    theirs_last = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
                         explain_func=quantus_explain, device="cpu")
    np.testing.assert_allclose(last.scores.numpy(), theirs_last, atol=1e-5)


def test_skip_layers_equals_last_cascading_step(setup) -> None:
    model, x, y = setup
    full = model_parameter_randomisation(model, x, y, Saliency(model), order="bottom_up", seed=3)
    skip = model_parameter_randomisation(model, x, y, Saliency(model), order="bottom_up", seed=3, skip_layers=True)
    assert skip.curves.shape == (3, 1)
    torch.testing.assert_close(skip.curves[:, 0], full.curves[:, -1])
    torch.testing.assert_close(skip.extras["randomised_maps"], full.extras["randomised_maps"])


def test_model_independent_explainer_fails(setup) -> None:
    model, x, y = setup
    result = model_parameter_randomisation(model, x, y, edges, similarity="ssim", threshold=0.5)
    assert result.curves.shape == (3, len(randomisable_layers(model)))
    torch.testing.assert_close(result.curves, torch.ones_like(result.curves))
    assert not result.extras["passed"].any()
    off = random_logit(model, x, y, edges, similarity="pearson")
    torch.testing.assert_close(off.scores, torch.ones(3))
    assert not off.extras["passed"].any()


def test_gradient_passes_after_full_randomisation(setup) -> None:
    model, x, y = setup
    result = model_parameter_randomisation(model, x, y, Saliency(model), order="top_down", score="last",
                                           threshold=0.5, seed=1)
    assert result.extras["passed"].all()
    torch.testing.assert_close(result.curves[:, -1], spearman(result.extras["maps"].abs(),
                                                              result.extras["randomised_maps"].abs()))


def test_weights_restored_when_the_explainer_raises(setup) -> None:
    model, x, y = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def flaky(inputs: Tensor, targets: Tensor) -> Tensor:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("explainer failed")
        return Saliency(model)(inputs, targets)

    with pytest.raises(RuntimeError, match="explainer failed"):
        model_parameter_randomisation(model, x, y, flaky, order="bottom_up")
    assert len(calls) == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_random_logit_matches_quantus_two_classes() -> None:
    """With 2 classes the 'random other class' is determined, so Quantus and we explain the same class."""
    torch.manual_seed(1)
    model = Net(classes=2).eval()
    x = torch.rand(4, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 1, 0])
    ours = random_logit(model, x, y, Saliency(model), similarity="spearman")
    assert torch.equal(ours.extras["off_targets"], 1 - y)
    metric = quantus.RandomLogit(num_classes=2, similarity_func=quantus.similarity_func.correlation_spearman,
                                 disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None, explain_func=quantus_explain,
                    device="cpu")
    np.testing.assert_allclose(ours.scores.numpy(), theirs, atol=1e-5)
    assert np.isfinite(theirs).all()


def test_random_logit_draws_other_classes_uniformly() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    x = torch.rand(2000, 3, 4, 4)
    y = torch.randint(0, 5, (2000,))
    result = random_logit(model, x, y, lambda i, t: i.mean(1) * (t[:, None, None] + 1.0), similarity="pearson",
                          max_batch=1000)
    off = result.extras["off_targets"]
    assert (off != y).all()
    counts = torch.bincount((off - y) % 5, minlength=5)
    assert counts[0] == 0 and (counts[1:] - 500).abs().max() < 100  # 4 shifts, ~500 each
    again = random_logit(model, x[:50], y[:50], lambda i, t: i.mean(1), similarity="pearson", seed=0)
    assert torch.equal(again.extras["off_targets"], random_logit(model, x[:50], y[:50], lambda i, t: i.mean(1),
                                                                 similarity="pearson", seed=0).extras["off_targets"])


def test_bad_input(setup) -> None:
    model, x, y = setup
    with pytest.raises(InputError, match="order"):
        model_parameter_randomisation(model, x, y, Saliency(model), order="sideways")
    with pytest.raises(InputError, match="similarity"):
        model_parameter_randomisation(model, x, y, Saliency(model), similarity="kendal")
    with pytest.raises(InputError, match="not randomisable"):
        model_parameter_randomisation(model, x, y, Saliency(model), layers=["conv9"])
    with pytest.raises(InputError, match="2 classes"):
        random_logit(nn.Sequential(nn.Flatten(), nn.Linear(300, 1)), x, torch.zeros(3, dtype=torch.long), edges)
    assert METRICS.get("random_logit").info.category == "randomisation"


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm"])
@pytest.mark.parametrize("randomise", ["reset", "normal"])
def test_parametrized_layers_are_randomised(setup, wrap, randomise) -> None:
    """A layer under a weight_norm / spectral_norm parametrization: the weight it computes with changes
    (resetting the computed tensor in place changed nothing: similarity 1.0) and is restored after."""
    model, x, y = setup
    getattr(nn.utils.parametrizations, wrap)(model.conv1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model.conv1.weight.detach().clone()
    seen = []

    def explainer(inputs: Tensor, targets: Tensor) -> Tensor:
        seen.append(model.conv1.weight.detach().clone())
        return Saliency(model)(inputs, targets)

    r = model_parameter_randomisation(model, x, y, explainer, layers=["conv1"], randomise=randomise)
    assert r.params["layers"] == ["conv1"]
    assert not torch.allclose(seen[-1], weight)
    assert (r.scores < 0.99).all()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(model.conv1.weight, weight)


def test_train_mode_model_keeps_its_statistics_and_mode(setup) -> None:
    """The snapshot is taken before the first forward: batch-norm running statistics of a model in
    train mode are the same afterwards, and every module's mode is restored."""
    model, x, y = setup
    model.train()
    model.fc.eval()  # a mixed-mode model
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def explainer(inputs: Tensor, targets: Tensor) -> Tensor:
        model.eval()  # an explainer that changes the mode
        return Saliency(model)(inputs, targets)

    with pytest.warns(UserWarning, match="training mode"):  # the one policy of every metric
        model_parameter_randomisation(model, x, y, explainer, order="bottom_up")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training and model.bn.training and not model.fc.training


def test_layer_names_of_a_wrapped_model_are_the_networks_own(setup) -> None:
    from xaibench.models import Normalized

    model, x, y = setup
    wrapped = Normalized(model, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert [n for n, _ in randomisable_layers(wrapped)] == [n for n, _ in randomisable_layers(model)]
    r = model_parameter_randomisation(wrapped, x, y, Saliency(wrapped), layers=["fc", "conv2"])
    assert r.params["layers"] == ["fc", "conv2"]
    with pytest.raises(InputError, match="'fc'"):
        model_parameter_randomisation(wrapped, x, y, Saliency(wrapped), layers=["net.fc"])


def test_random_logit_nan_says_which_map_is_constant(setup) -> None:
    model, x, y = setup

    def explainer(inputs: Tensor, targets: Tensor) -> Tensor:  # flat for every class but the target
        maps = Saliency(model)(inputs, targets)
        return torch.where((targets == y)[:, None, None], maps, torch.zeros_like(maps))

    r = random_logit(model, x, y, explainer, similarity="pearson")
    assert torch.isnan(r.scores).all()
    assert all("other class" in reason and "constant" in reason for reason in r.reasons)
