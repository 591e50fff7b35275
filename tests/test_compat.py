"""The autotimm-compatible facade against a step-by-step re-derivation of autotimm's ExplanationMetrics
(per-pixel loops, numpy argsort / corrcoef / argmax), and its batched mode against single images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn

import xaibench
from xaibench.compat import ExplanationMetrics
from xaibench.errors import InputError
from xaibench.metrics.randomisation import random_logit
from xaibench.metrics.robustness import noise_stability


class Net(nn.Module):
    """3x28x28 -> `classes`; optionally returns autotimm's dict output."""

    def __init__(self, classes: int = 3, as_dict: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 7 * 7, classes)
        self.as_dict = as_dict

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        out = self.fc(nn.functional.avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1))
        return {"logits": out} if self.as_dict else out


def saliency(model: nn.Module):
    def explain(inputs: Tensor, targets: Tensor) -> Tensor:
        x = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(x)
            out = out["logits"] if isinstance(out, dict) else out
            (grad,) = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), x)
        return grad.abs().amax(dim=1)

    return explain


class AutotimmStyle:
    """An autotimm-like explainer: .explain(image [1, C, H, W], target_class) -> numpy heatmap in [0, 1]."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls = 0

    def explain(self, image: Tensor, target_class: int | None = None) -> np.ndarray:
        self.calls += 1
        heat = saliency(self.model)(image, torch.tensor([target_class]))[0].numpy()
        heat = heat - heat.min()
        return heat / (heat.max() + 1e-8)


@pytest.fixture
def setup() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    return Net().eval(), torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(4))


def reference_curve(model: nn.Module, image: Tensor, heat: np.ndarray, target: int, steps: int, baseline: str,
                    insert: bool) -> tuple[list[float], float]:
    """autotimm's deletion / insertion loop, re-derived: softmax scores after each step, original score."""
    x = image[None]
    base = {"black": torch.zeros_like(x), "mean": torch.full_like(x, float(x.mean())),
            "blur": TF.gaussian_blur(x, kernel_size=51, sigma=20.0)}[baseline]
    prob = lambda z: float(torch.softmax(model(z), 1)[0, target])  # noqa: E731
    order = np.argsort(heat.flatten())[::-1]
    per = len(order) // steps
    modified = (base if insert else x).clone()
    scores = [prob(modified)]
    for step in range(1, steps + 1):
        for i in order[: step * per]:
            r, c = divmod(int(i), heat.shape[1])
            modified[:, :, r, c] = (x if insert else base)[:, :, r, c]
        scores.append(prob(modified))
    return scores, prob(x)


@pytest.mark.parametrize("baseline", ["blur", "black", "mean"])
@torch.no_grad()
def test_deletion_insertion_match_autotimm_loop(setup, baseline) -> None:
    model, x = setup
    metrics = ExplanationMetrics(model, saliency(model), use_cuda=False)
    steps = 9  # 784 pixels: 87 per step, 783 deleted at the end, as autotimm
    target = int(model(x[:1]).argmax())
    with torch.enable_grad():
        heat = saliency(model)(x[:1], torch.tensor([target]))[0].numpy()
    for insert in (False, True):
        ref, original = reference_curve(model, x[0], heat, target, steps, baseline, insert)
        got = (metrics.insertion if insert else metrics.deletion)(x[0], steps=steps, baseline=baseline)
        np.testing.assert_allclose(got["scores"], ref, rtol=1e-5)
        auc = np.trapezoid(ref, dx=1.0 / steps) / original
        assert got["auc"] == pytest.approx(auc, rel=1e-5)
        assert got["original_score"] == pytest.approx(original, rel=1e-6)
        if insert:
            assert got["baseline_score"] == pytest.approx(ref[0], rel=1e-6)
            assert got["final_rise"] == pytest.approx((ref[-1] - ref[0]) / abs(original - ref[0]), rel=1e-4)
            assert set(got) == {"auc", "final_rise", "scores", "original_score", "baseline_score"}
        else:
            assert got["final_drop"] == pytest.approx((original - ref[-1]) / original, rel=1e-4)
            assert set(got) == {"auc", "final_drop", "scores", "original_score"}


def test_batch_equals_single_images(setup) -> None:
    model, x = setup
    metrics = ExplanationMetrics(model, saliency(model), use_cuda=False)
    targets = torch.tensor([0, 2, 1])
    batch = metrics.deletion(x, target_class=targets, steps=5)
    assert batch["scores"].shape == (3, 6) and batch["auc"].shape == (3,)
    for i in range(3):
        single = metrics.deletion(x[i], target_class=int(targets[i]), steps=5)
        assert isinstance(single["auc"], float) and isinstance(single["scores"], list)
        assert single["auc"] == pytest.approx(float(batch["auc"][i]), rel=1e-6)
    sens = metrics.sensitivity_n(x, n_samples=3)
    assert set(sens) == {"sensitivity", "std", "max_change", "changes"} and sens["changes"].shape == (3, 3)
    expected = noise_stability(model, x, model(x).argmax(1), saliency(model), n_samples=3, normalise=False)
    torch.testing.assert_close(sens["sensitivity"], expected.scores)


def test_autotimm_style_explainer_and_randomisation_tests(setup) -> None:
    model, x = setup
    explainer = AutotimmStyle(model)
    metrics = ExplanationMetrics(model, explainer, use_cuda=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mprt = metrics.model_parameter_randomization_test(x[0])
    assert set(mprt) == {"correlation", "change", "passes"} and explainer.calls == 2
    assert mprt["passes"] == (mprt["correlation"] < 0.5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k

    two = Net(classes=2).eval()
    metrics = ExplanationMetrics(two, AutotimmStyle(two), use_cuda=False)
    got = metrics.data_randomization_test(x[1], target_class=0)
    h0, h1 = (AutotimmStyle(two).explain(x[1:2], c) for c in (0, 1))  # 2 classes: the other class is 1
    assert got["correlation"] == pytest.approx(np.corrcoef(h0.flatten(), h1.flatten())[0, 1], abs=1e-6)
    assert got["change"] == pytest.approx(np.abs(h1 - h0).mean(), abs=1e-6)
    assert got["passes"] == (got["correlation"] < 0.5)


def test_model_independent_explainer_fails_both_tests(setup) -> None:
    model, x = setup
    metrics = ExplanationMetrics(model, lambda i, t: i.mean(dim=1), use_cuda=False)
    for result in (metrics.model_parameter_randomization_test(x), metrics.data_randomization_test(x)):
        torch.testing.assert_close(result["correlation"], torch.ones(3))
        assert not result["passes"].any() and torch.equal(result["change"], torch.zeros(3))


def test_weights_restored_when_explainer_raises(setup) -> None:
    model, x = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def flaky(inputs: Tensor, targets: Tensor) -> Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return saliency(model)(inputs, targets)

    with pytest.raises(RuntimeError, match="boom"):
        ExplanationMetrics(model, flaky, use_cuda=False).model_parameter_randomization_test(x[0])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_pointing_game_low_resolution_map(setup) -> None:
    model, x = setup

    def peaked(inputs: Tensor, targets: Tensor) -> Tensor:  # 7x7 maps, maximum at (row 2, col 5)
        maps = torch.zeros(inputs.shape[0], 7, 7)
        maps[:, 2, 5] = 1.0
        return maps

    metrics = ExplanationMetrics(model, peaked, use_cuda=False)
    got = metrics.pointing_game(x[0], bbox=[20, 8, 27, 12])
    assert got == {"hit": True, "max_location": (8.0, 20.0), "bbox": [20, 8, 27, 12]}
    assert not metrics.pointing_game(x[0], bbox=[21, 0, 27, 27])["hit"]
    batch = metrics.pointing_game(x, bbox=[[0, 0, 5, 5], [20, 8, 20, 8], [0, 0, 27, 27]])
    assert batch["hit"].tolist() == [False, True, True]
    assert batch["max_location"].tolist() == [[8.0, 20.0]] * 3
    with pytest.raises(InputError, match="bbox"):
        metrics.pointing_game(x, bbox=[1, 2, 3])


def test_evaluate_all_inputs_and_dict_models() -> None:
    torch.manual_seed(1)
    model = Net(as_dict=True).eval()
    metrics = xaibench.ExplanationMetrics(model, saliency(model), use_cuda=False)
    rgb = (np.random.default_rng(0).random((28, 28, 3)) * 255).astype(np.uint8)
    results = metrics.evaluate_all(Image.fromarray(rgb), bbox=[0, 0, 10, 10])
    assert set(results) == {"deletion", "insertion", "sensitivity", "param_randomization", "data_randomization",
                            "pointing_game"}
    as_tensor = metrics.deletion(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    assert results["deletion"]["auc"] == pytest.approx(as_tensor["auc"])
    assert "pointing_game" not in metrics.evaluate_all(rgb)
    with pytest.raises(ValueError, match="Unknown baseline"):
        metrics.deletion(rgb, baseline="white")
    with pytest.raises(InputError):
        metrics.deletion(rgb, target_class=7)


class BNNet(Net):
    """Net with a batch norm after the convolution (its statistics move in train mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(nn.functional.avg_pool2d(torch.relu(self.bn(self.conv(x))), 4).flatten(1))


def test_train_mode_model_keeps_its_mode_and_statistics(setup) -> None:
    _, x = setup
    torch.manual_seed(0)
    model = BNNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = ExplanationMetrics(model, saliency(model), use_cuda=False)
    assert model.training
    metrics.model_parameter_randomization_test(x)
    metrics.deletion(x[0], steps=4)
    metrics.data_randomization_test(x)
    assert model.training and model.bn.training  # autotimm leaves the model in eval
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # eval forwards: running statistics unchanged


def test_sensitivity_and_change_use_maps_as_returned(setup) -> None:
    """autotimm compares the explainer's heatmaps as they are: no rescaling before sensitivity_n or the
    randomisation tests' change; noise_level=0 gives zeros."""
    model, x = setup

    def scaled(inputs: Tensor, targets: Tensor) -> Tensor:  # not in [0, 1]
        return 3.0 * saliency(model)(inputs, targets) + 1.0

    metrics = ExplanationMetrics(model, scaled, use_cuda=False)
    zero = metrics.sensitivity_n(x, n_samples=2, noise_level=0.0)
    torch.testing.assert_close(zero["max_change"], torch.zeros(3), atol=1e-6, rtol=0)  # batch size rounding only
    assert metrics.sensitivity_n(x[0], n_samples=2, noise_level=0)["sensitivity"] == pytest.approx(0.0, abs=1e-6)
    t = torch.tensor([0, 1, 2])
    got = metrics.data_randomization_test(x, target_class=t)
    off = random_logit(model, x, t, scaled, similarity="pearson")
    expected = (off.extras["off_maps"] - off.extras["maps"]).abs().flatten(1).mean(dim=1)
    torch.testing.assert_close(got["change"], expected.double())


def test_nan_correlation_says_why(setup) -> None:
    model, x = setup
    flat_off_target = lambda i, t: torch.where((t == 0)[:, None, None], saliency(model)(i, t), 0.0)  # noqa: E731
    metrics = ExplanationMetrics(model, flat_off_target, use_cuda=False)
    with pytest.warns(UserWarning, match=r"data_randomization_test: correlation is nan .*other class.*constant"):
        got = metrics.data_randomization_test(x[0], target_class=0)
    assert np.isnan(got["correlation"])


@pytest.mark.parametrize(("bbox", "match"), [([10, 2, 5, 8], "inverted"), ([0, 9, 5, 3], "inverted"),
                                             ([30, 0, 40, 10], "outside"), ([-9, -9, -1, -1], "outside"),
                                             ([0, float("nan"), 3, 3], "NaN")])
def test_bad_box_is_an_error_not_a_miss(setup, bbox, match) -> None:
    model, x = setup
    metrics = ExplanationMetrics(model, saliency(model), use_cuda=False)
    with pytest.raises(InputError, match=match):
        metrics.pointing_game(x[0], bbox=bbox)
    assert isinstance(metrics.pointing_game(x[0], bbox=[-5, -5, 3, 3])["hit"], bool)  # overlapping: fine


def test_tiny_probability_class_warns(setup) -> None:
    model, x = setup
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([30.0, 0.0, 0.0]))  # class 2: probability ~1e-13
    metrics = ExplanationMetrics(model, saliency(model), use_cuda=False)
    with pytest.warns(UserWarning, match="scores below 0.01"):
        metrics.deletion(x[0], target_class=2, steps=4)
    with pytest.warns(UserWarning, match="scores below 0.01"):
        xaibench.metrics.insertion(model, x, torch.rand(3, 28, 28), torch.tensor([0, 2, 0]), steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.deletion(x[0], target_class=0, steps=4)


def test_images_outside_the_pixel_range_are_refused(setup) -> None:
    model, x = setup
    metrics = ExplanationMetrics(model, saliency(model), use_cuda=False)
    with pytest.raises(InputError, match="divide by 255"):
        metrics.deletion(x[0] * 255)
    with pytest.raises(InputError, match="normalis"):
        metrics.sensitivity_n((x - 0.5) / 0.1, n_samples=2)


def test_autotimm_class_names_swap_the_import(setup) -> None:
    """autotimm's example with the import swapped: GradCAM(model) into ExplanationMetrics."""
    from xaibench import GradCAM, GradCAMPlusPlus, IntegratedGradients

    model, x = setup
    explainer = GradCAM(model, use_cuda=False)
    heat = explainer.explain(x[0], target_class=1)
    raw = xaibench.explainer("gradcam", model, upsample=False)(x[:1], torch.tensor([1]))[0]
    assert isinstance(heat, np.ndarray) and heat.shape == (28, 28)  # the layer's resolution ('conv')
    np.testing.assert_allclose(heat, ((raw - raw.min()) / (raw.max() - raw.min() + 1e-8)).numpy(), atol=1e-6)
    assert np.array_equal(GradCAM(model, target_layer=model.conv, use_cuda=False)(x[0], target_class=1), heat)
    deeper = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    assert GradCAM(deeper, use_cuda=False).explainer.layer == "2"  # autotimm's default: the last Conv2d
    with pytest.raises(InputError, match="Conv2d"):
        GradCAM(nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 3)), use_cuda=False)
    metrics = ExplanationMetrics(model, explainer, use_cuda=False)
    batch = metrics.deletion(x, target_class=torch.tensor([1, 1, 1]), steps=4)
    single = metrics.deletion(x[0], target_class=1, steps=4)
    assert single["auc"] == pytest.approx(float(batch["auc"][0]), rel=1e-6)
    assert GradCAMPlusPlus(model, use_cuda=False).explain(x[1]).shape == (28, 28)

    ig = IntegratedGradients(model, steps=8, use_cuda=False)
    got = ig.explain(x[2], target_class=0, normalize=False)
    path = [(k / 8 * x[2:3]).requires_grad_(True) for k in range(1, 9)]  # right Riemann sum from black
    grads = sum(torch.autograd.grad(model(p)[0, 0], p)[0] for p in path) / 8
    np.testing.assert_allclose(got, (x[2:3] * grads).sum(dim=1)[0].numpy(), rtol=1e-4, atol=1e-6)
    norm = ig.explain(x[2], target_class=0)
    assert norm.min() == 0.0 and norm.max() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(InputError, match="baseline"):
        IntegratedGradients(model, baseline="blur")
