"""Explainers: oracles (autograd, completeness, Captum side by side), batching, shapes, errors."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torchvision
from captum.attr import LayerAttribution, LayerGradCam

import xaibench
from xaibench.errors import InputError, UnknownNameError
from xaibench.explainers import METHODS, find_layer
from xaibench.models import Normalized

pytestmark = pytest.mark.filterwarnings("error::UserWarning")

UNIQUE = sorted({info.name for _, info in METHODS.items()})
SEEDED = {"smoothgrad", "smoothgrad_sq", "vargrad", "gradient_shap", "random", "feature_permutation",
          "expected_gradients", "lime", "kernel_shap"}


class SmallNet(torch.nn.Module):
    """A small random-init CNN 3x16x16 -> 5 classes, with its own ReLU modules."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(6, 8, 3, padding=1, stride=2), torch.nn.ReLU(),
        )
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _small(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return SmallNet().eval()


def _x(b: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tv_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=5).eval()


@pytest.fixture(scope="module")
def models(tv_resnet: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, int]]:
    torch.manual_seed(1)
    tm = timm.create_model("resnet18", pretrained=False, num_classes=5).eval()
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, depth=2).eval()
    return {"torchvision": (tv_resnet, 64), "timm_cnn": (tm, 64), "timm_vit": (vit, 32)}


def test_saliency_is_max_abs_autograd_gradient() -> None:
    model, x, t = _small(), _x(3, 16), torch.tensor([0, 3, 4])
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).gather(1, t[:, None]).sum(), xg)
    torch.testing.assert_close(xaibench.explainer("saliency", model).attribute(x, t), grad)
    torch.testing.assert_close(xaibench.explainer("saliency", model)(x, t), grad.abs().amax(1))
    torch.testing.assert_close(xaibench.explainer("saliency", model, reduce="sum")(x, t), grad.sum(1))


def test_reduce_and_sign_policies() -> None:
    model, x, t = _small(), _x(2, 16), torch.tensor([1, 2])
    raw = xaibench.explainer("input_x_gradient", model).attribute(x, t)
    cases = {("sum", "all"): raw.sum(1), ("sum", "positive"): raw.sum(1).clamp(min=0),
             ("sum", "absolute"): raw.sum(1).abs(), ("abs_sum", "all"): raw.abs().sum(1),
             ("max_abs", "all"): raw.abs().amax(1)}
    for (reduce, sign), want in cases.items():
        got = xaibench.explainer("input_x_gradient", model, reduce=reduce, sign=sign)(x, t)
        torch.testing.assert_close(got, want)
    assert (raw.sum(1) < 0).any()  # the sign policies are exercised


def test_integrated_gradients_completeness() -> None:
    model, x, t = _small(), _x(3, 16), torch.tensor([0, 1, 2])
    attr = xaibench.explainer("integrated_gradients", model, steps=64).attribute(x, t)
    with torch.no_grad():
        delta = model(x).gather(1, t[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    assert delta.abs().min() > 1e-3
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)), delta, rtol=1e-3, atol=1e-4)


def test_gradcam_matches_captum_layergradcam(tv_resnet: torch.nn.Module) -> None:
    x, t = _x(3, 64), torch.tensor([0, 2, 4])
    ours = xaibench.explainer("gradcam", tv_resnet)
    maps = ours(x, t)
    assert ours.layer == "layer4"
    ref = LayerGradCam(tv_resnet, tv_resnet.layer4).attribute(x, target=t, relu_attributions=True)
    ref_up = LayerAttribution.interpolate(ref, (64, 64), interpolate_mode="bilinear")[:, 0]
    assert ref.abs().sum() > 0
    torch.testing.assert_close(maps, ref_up, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.attribute(x, t), ref, rtol=1e-4, atol=1e-6)


def test_layer_override_by_name_and_wrong_name(tv_resnet: torch.nn.Module) -> None:
    x, t = _x(2, 64), torch.tensor([1, 3])
    maps = xaibench.explainer("gradcam", tv_resnet, layer="layer3", upsample=False)(x, t)
    ref = LayerGradCam(tv_resnet, tv_resnet.layer3).attribute(x, target=t, relu_attributions=True)[:, 0]
    assert maps.shape == (2, 4, 4)
    torch.testing.assert_close(maps, ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="'layer4'"):
        xaibench.explainer("gradcam", tv_resnet, layer="layer44")


def test_wrapped_model_layer_is_found_by_full_name(tv_resnet: torch.nn.Module) -> None:
    wrapped = torch.nn.Sequential()
    wrapped.add_module("net", tv_resnet)
    assert find_layer(wrapped, _x(1, 64)) == "net.layer4"
    assert find_layer(_small(), _x(1, 16)) == "features"


def test_layer_names_are_the_networks_own_inside_xaibench_wrappers(tv_resnet: torch.nn.Module) -> None:
    """load_model's normalisation wrapper adds no prefix: layers are named as in the user's network."""
    model = Normalized(tv_resnet)
    x, t = _x(2, 64), torch.tensor([1, 3])
    found = xaibench.explainer("gradcam", model)
    maps = found(x, t)
    assert found.layer == "layer4" and find_layer(model, x) == "layer4"
    torch.testing.assert_close(xaibench.explainer("gradcam", model, layer="layer4")(x, t), maps)
    with pytest.raises(InputError, match="'layer4'"):
        xaibench.explainer("gradcam", model, layer="net.layer4")
    deeplift = xaibench.explainer("deeplift", model)(x, t)  # ReLUs reused per block are split by their own names
    assert deeplift.shape == (2, 64, 64) and torch.isfinite(deeplift).all()


OWN = sorted({info.name for _, info in METHODS.items() if info.cls.__module__.rsplit(".", 1)[-1]
              in ("gradient", "cam", "cam_family", "baselines")})


@pytest.mark.parametrize("name", OWN)
def test_every_method_returns_detached_maps(name: str) -> None:
    model, x, t = _small(), _x(2, 16), torch.tensor([1, 3])
    params = {"window": 6, "stride": 4} if name == "occlusion" else {"patch": 4} if name == "feature_ablation" else {}
    exp = xaibench.explainer(name, model, **params)
    maps, raw = exp(x, t), exp.attribute(x, t)
    assert not maps.requires_grad and not raw.requires_grad and not exp.differentiable, name
    maps.numpy(), raw.numpy()  # noqa: B018  (deeplift's maps kept their graph: .numpy() raised)


def test_guided_methods_on_a_model_without_relu_modules_warn_and_equal_saliency() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.GELU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    x, t = _x(2, 16), torch.tensor([0, 4])
    saliency = xaibench.explainer("saliency", model)(x, t)
    for name in ("guided_backprop", "deconvolution"):
        with pytest.warns(UserWarning, match="no nn.ReLU module.*'saliency'"):
            exp = xaibench.explainer(name, model)
        assert exp.same_as == "saliency"
        torch.testing.assert_close(exp(x, t), saliency)
    with pytest.warns(UserWarning, match="no nn.ReLU module"):
        assert xaibench.explainer("guided_gradcam", model, layer="0").same_as is None
    assert xaibench.explainer("guided_backprop", _small()).same_as is None  # ReLU modules: no warning


def test_differentiable_gradcam_carries_gradients(tv_resnet: torch.nn.Module) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    x, t = _x(2, 64), torch.tensor([0, 1])
    maps = xaibench.explainer("gradcam", model, create_graph=True)(x, t)
    assert maps.requires_grad
    maps.sum().backward()
    for p in (model.fc.weight, model.layer4[1].conv2.weight, model.conv1.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    plain = xaibench.explainer("gradcam", model)(x, t)
    assert not plain.requires_grad
    torch.testing.assert_close(plain, maps.detach())


@pytest.mark.parametrize("name", sorted(n for n in set(UNIQUE) - SEEDED if METHODS.get(n).architectures != "vit"))
def test_batched_equals_one_at_a_time(name: str) -> None:
    model, x, t = _small(), _x(3, 16), torch.tensor([4, 0, 2])
    params = {"window": 6, "stride": 4} if name == "occlusion" else {"patch": 4} if name == "feature_ablation" else {}
    batched = xaibench.explainer(name, model, max_batch=4, **params)(x, t)
    single = torch.cat([xaibench.explainer(name, model, max_batch=4, **params)(x[i:i + 1], t[i:i + 1])
                        for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    assert batched.abs().sum() > 0


@pytest.mark.parametrize("kind", ["torchvision", "timm_cnn", "timm_vit"])
def test_every_method_runs_with_right_shapes(kind: str, models: dict) -> None:
    model, size = models[kind]
    x, t = _x(2, size), torch.tensor([1, 3])
    for name in [n for n in UNIQUE if METHODS.get(n).architectures in ("any", "vit" if kind == "timm_vit" else "cnn")]:
        params = {"n_samples": 2} if name in ("smoothgrad", "smoothgrad_sq", "vargrad", "gradient_shap",
                                               "expected_gradients") else {}
        params |= {"n_samples": 8, "compactness": 100.0} if name in ("lime", "kernel_shap") else {}
        params |= {"steps": 4} if name == "integrated_gradients" else {}
        params |= {"n_masks": 64} if name == "rise" else {}
        with warnings.catch_warnings():  # a ViT has no nn.ReLU: guided methods say they equal saliency
            warnings.filterwarnings("ignore", message=".*no nn.ReLU module", category=UserWarning)
            maps = xaibench.explainer(name, model, max_batch=256, **params)(x, t)
        assert maps.shape == (2, size, size) and maps.dtype == torch.float32, name
        assert torch.isfinite(maps).all(), name
    vit_native = xaibench.explainer("gradcam", models["timm_vit"][0], upsample=False)(_x(2, 32), t)
    assert vit_native.shape == (2, 2, 2)


def test_baselines_are_model_independent_and_seeded() -> None:
    x, t = _x(2, 16), torch.tensor([0, 1])
    a, b = _small(0), _small(1)
    torch.testing.assert_close(xaibench.explainer("random", a, seed=5)(x, t), xaibench.explainer("random", b, seed=5)(x, t))
    assert not torch.equal(xaibench.explainer("random", a, seed=5)(x, t), xaibench.explainer("random", a, seed=6)(x, t))
    torch.testing.assert_close(xaibench.explainer("sobel", a)(x, t), xaibench.explainer("sobel", b)(x, t))


def test_sobel_on_a_vertical_step_edge() -> None:
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4:] = 1.0
    m = xaibench.explainer("sobel", _OneChannel())(x, 0)[0]
    # Sobel x response of a unit step: 1 + 2 + 1 = 4 on both sides of the edge, 0 elsewhere.
    assert torch.equal(m[:, 3:5], torch.full((8, 2), 4.0))
    assert m[:, :3].abs().sum() == 0 and m[:, 5:].abs().sum() == 0


class _OneChannel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3]


def test_seeded_methods_reproducible() -> None:
    model, x, t = _small(), _x(2, 16), torch.tensor([0, 1])
    for name in ("smoothgrad", "gradient_shap"):
        first = xaibench.explainer(name, model, n_samples=4, seed=3)(x, t)
        again = xaibench.explainer(name, model, n_samples=4, seed=3)(x, t)
        other = xaibench.explainer(name, model, n_samples=4, seed=4)(x, t)
        torch.testing.assert_close(first, again)
        assert not torch.allclose(first, other), name


def test_gradient_shap_chunks_average_exactly_on_a_linear_model() -> None:
    # Linear f with f(black) = f(white): every sample's attributions sum to f(x) - f(b) = f(x) - f(0),
    # so the mean over unequal chunks (4 + 4 + 2 samples) must match exactly.
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    with torch.no_grad():
        lin[1].weight -= lin[1].weight.mean(dim=1, keepdim=True)
    x, t = _x(2, 8), torch.tensor([1, 3])
    attr = xaibench.explainer("gradient_shap", lin, n_samples=10, max_batch=8).attribute(x, t)
    with torch.no_grad():
        want = (lin(x) - lin(torch.zeros_like(x))).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)), want, rtol=1e-4, atol=1e-5)


def test_errors_and_suggestions() -> None:
    model, x = _small(), _x(2, 16)
    with pytest.raises(UnknownNameError, match="gradcam"):
        xaibench.explainer("gradcm", model)
    exp = xaibench.explainer("saliency", model)
    with pytest.raises(InputError):
        exp(x[0], torch.tensor([0]))
    with pytest.raises(InputError, match="out of range"):
        exp(x, torch.tensor([0, 5]))
    with pytest.raises(InputError):
        exp(x, torch.tensor([0, 1, 2]))
    with pytest.raises(InputError, match="reduce"):
        xaibench.explainer("saliency", model, reduce="mean")
    with pytest.raises(InputError, match="sign"):
        xaibench.explainer("saliency", model, sign="neg")
    with pytest.raises(InputError, match="'steps'"):
        xaibench.explainer("integrated_gradients", model, step=4)
    with pytest.raises(InputError, match="n_samples"):
        xaibench.explainer("smoothgrad", model, n_samples=0)


def test_registry_entries_describe_cost_params_resolution() -> None:
    assert METHODS.get("gradcam++") is METHODS.get("gradcam-plus-plus")
    required = {"saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop",
                "deconvolution", "deeplift", "gradient_shap", "occlusion", "feature_ablation", "gradcam",
                "gradcam_plus_plus", "scorecam", "layercam", "guided_gradcam", "random", "sobel"}
    assert required <= set(UNIQUE)
    for name in UNIQUE:
        info = METHODS.get(name)
        assert info.cost and info.description and info.resolution in ("input", "layer")
        assert {"reduce", "sign", "max_batch"} <= set(info.params)
        assert all(doc for _, doc in info.params.values()), name
    assert METHODS.get("integrated_gradients").params["steps"][0] == 32
    assert METHODS.get("gradcam").resolution == "layer"


def test_methods_command_lists_every_method_with_cost_and_defaults(capsys: pytest.CaptureFixture) -> None:
    import argparse

    from xaibench.cli import methods

    parser = argparse.ArgumentParser()
    methods.register(parser.add_subparsers())
    args = parser.parse_args(["methods"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for name in UNIQUE:
        assert f"\n{name} " in "\n" + out, name
        assert str(METHODS.get(name).cost) in out
    assert "alias: gradcam++" in out and "steps=32" in out and "reduce='max_abs'" in out
    args = parser.parse_args(["methods", "gradcam"])
    args.func(args)
    assert capsys.readouterr().out.startswith("gradcam ")


def test_cam_variants_match_formulas_on_split_model() -> None:
    # Independent path: run features and head separately (no hooks), formulas from the papers.
    model, x, t = _small(), _x(3, 16), torch.tensor([0, 2, 4])
    acts = model.features(x).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model.head(acts).gather(1, t[:, None]).sum(), acts)
    acts = acts.detach()
    relu = torch.nn.functional.relu
    gradcam = relu((g.mean(dim=(2, 3), keepdim=True) * acts).sum(1))
    layercam = relu((relu(g) * acts).sum(1))
    denom = 2 * g**2 + acts.sum(dim=(2, 3), keepdim=True) * g**3
    alpha = g**2 / torch.where(denom != 0, denom, 1.0)
    pp = relu(((alpha * relu(g)).sum(dim=(2, 3), keepdim=True) * acts).sum(1))
    up = torch.nn.functional.interpolate(acts, size=(16, 16), mode="bilinear", align_corners=False)
    weights = torch.zeros(3, acts.shape[1])
    for i in range(3):
        for k in range(acts.shape[1]):
            m = up[i, k]
            if m.max() > m.min():
                m = (m - m.min()) / (m.max() - m.min())
                weights[i, k] = model(x[i:i + 1] * m).softmax(1)[0, t[i]]
            else:
                weights[i, k] = model(x[i:i + 1] * 0).softmax(1)[0, t[i]]
    scorecam = relu((weights[:, :, None, None] * acts).sum(1)).detach()
    for name, want in {"gradcam": gradcam, "layercam": layercam, "gradcam++": pp, "scorecam": scorecam}.items():
        got = xaibench.explainer(name, model, upsample=False, max_batch=5)(x, t)
        assert want.abs().sum() > 0, name
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)


def test_deeplift_summation_to_delta_on_resnet_with_reused_relus() -> None:
    # torchvision ResNet blocks call one ReLU module twice; BN statistics and biases are randomised
    # so the net is not positively homogeneous (input x gradient then misses the output difference).
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    x, t = _x(2, 64), torch.tensor([1, 4])
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, t[:, None])[:, 0]
    attr = xaibench.explainer("deeplift", model).attribute(x, t)
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)), delta, rtol=1e-3, atol=1e-4)
    ixg = xaibench.explainer("input_x_gradient", model).attribute(x, t).sum(dim=(1, 2, 3))
    assert not torch.allclose(ixg, delta, rtol=1e-2, atol=1e-3)
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 9  # the model is left unchanged
