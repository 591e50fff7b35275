"""HiResCAM, XGrad-CAM, Eigen-CAM, Ablation-CAM and FullGrad side by side with pytorch-grad-cam 1.5.7.

Convention: pytorch-grad-cam returns minmax(upsample(ReLU(cam))) per image; xaibench returns
upsample(ReLU(cam)), so the reference is compared with ``minmax`` of xaibench's maps.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision

import xaibench
from xaibench.errors import InputError

gradcam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402


def _minmax(maps: torch.Tensor) -> np.ndarray:
    maps = maps - maps.amin(dim=(1, 2), keepdim=True)
    return (maps / (maps.amax(dim=(1, 2), keepdim=True) + 1e-7)).numpy()


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    """Random-init ResNet-18 with non-trivial batch-norm statistics (so FullGrad's BN biases matter)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.3, 0.3)
    return model


def _x(b: int, size: int) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(0))


def _reference(cls: type, model: torch.nn.Module, layers: list, x: torch.Tensor, t: list[int], **kw) -> np.ndarray:
    return cls(model=model, target_layers=layers, **kw)(x, targets=[ClassifierOutputTarget(i) for i in t])


@pytest.mark.parametrize(("name", "ref"), [("hirescam", "HiResCAM"), ("xgradcam", "XGradCAM"),
                                           ("eigencam", "EigenCAM")])
def test_gradient_cams_match_pytorch_grad_cam(resnet: torch.nn.Module, name: str, ref: str) -> None:
    x, t = _x(3, 96), [1, 3, 0]
    ours = xaibench.explainer(name, resnet, layer="layer4")(x, torch.tensor(t))
    theirs = _reference(getattr(gradcam, ref), resnet, [resnet.layer4], x, t)
    if name == "eigencam":  # the SVD's sign is arbitrary: compare the projections up to sign, then images agreeing
        acts = {}
        hook = resnet.layer4.register_forward_hook(lambda _m, _i, o: acts.setdefault("a", o.detach()))
        resnet(x)
        hook.remove()
        native = xaibench.explainer(name, resnet, layer="layer4", upsample=False)
        from xaibench.explainers.cam_family import first_component

        ours_proj = first_component(acts["a"]).numpy()
        theirs_proj = get_2d_projection(acts["a"].numpy())
        signs = np.sign((ours_proj * theirs_proj).sum(axis=(1, 2)))
        np.testing.assert_allclose(ours_proj, signs[:, None, None] * theirs_proj, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(native(x, torch.tensor(t)).numpy(), np.maximum(ours_proj, 0), atol=1e-5)
        same = signs > 0
        assert same.any()
        ours, theirs = ours[torch.from_numpy(same)], theirs[same]
    np.testing.assert_allclose(_minmax(ours), theirs, atol=1e-4)


def test_hirescam_and_xgradcam_formulas_at_native_resolution(resnet: torch.nn.Module) -> None:
    x, t = _x(2, 96), torch.tensor([2, 4])
    store = {}
    hook = resnet.layer4.register_forward_hook(lambda _m, _i, o: store.setdefault("a", o))
    score = resnet(x).gather(1, t[:, None]).sum()
    hook.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(score, a)
    a, g = a.detach(), g.detach()
    hires = torch.relu((g * a).sum(1))
    xw = torch.nan_to_num((g * a).sum((2, 3)) / a.sum((2, 3)))  # post-ReLU: a zero sum is an all-zero channel
    xgrad = torch.relu((xw[:, :, None, None] * a).sum(1))
    torch.testing.assert_close(xaibench.explainer("hirescam", resnet, upsample=False)(x, t), hires)
    torch.testing.assert_close(xaibench.explainer("xgradcam", resnet, upsample=False)(x, t), xgrad)


class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(6, 8, 3, padding=1, stride=2), torch.nn.ReLU())
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_ablationcam_matches_pytorch_grad_cam_and_chunking() -> None:
    torch.manual_seed(3)
    model = SmallNet().eval()
    x, t = _x(3, 16), [1, 3, 0]
    theirs = _reference(gradcam.AblationCAM, model, [model.features], x, t, batch_size=3)
    for max_batch in (5, 64):  # chunks across images and channels, and all B*K rows at once
        ours = xaibench.explainer("ablationcam", model, layer="features", max_batch=max_batch)(x, torch.tensor(t))
        np.testing.assert_allclose(_minmax(ours), theirs, atol=1e-4)
    # weights by hand: the relative drop of the target logit with channel k zeroed
    with torch.no_grad():
        a = model.features(x[:1])
        s = model.head(a)[0, 1]
        w = torch.stack([(s - model.head(a * (torch.arange(8) != k)[None, :, None, None])[0, 1]) / s
                         for k in range(8)])
        expected = torch.relu((w[:, None, None] * a[0]).sum(0))
    torch.testing.assert_close(xaibench.explainer("ablationcam", model, upsample=False)(x[:1], 1)[0], expected)


def test_fullgrad_matches_pytorch_grad_cam(resnet: torch.nn.Module) -> None:
    x, t = _x(2, 64), [1, 3]
    ours = xaibench.explainer("fullgrad", resnet)(x, torch.tensor(t))
    theirs = _reference(gradcam.FullGrad, resnet, [], x, t)
    np.testing.assert_allclose(_minmax(ours), theirs, atol=1e-4)
    assert all(m.inplace for m in resnet.modules() if isinstance(m, torch.nn.ReLU))  # restored


def test_fullgrad_refuses_vision_transformers_and_cams_run_on_tokens() -> None:
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, depth=2).eval()
    with pytest.raises(InputError, match="vision transformer"):
        xaibench.explainer("fullgrad", vit)
    x, t = _x(2, 32), torch.tensor([0, 1])
    for name in ("hirescam", "xgradcam", "eigencam", "ablationcam"):
        maps = xaibench.explainer(name, vit, max_batch=128)(x, t)
        assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all(), name
