"""Gradient and perturbation methods, computed with Captum on the target-class logit."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import torch
from captum.attr import (
    Deconvolution,
    DeepLift,
    FeatureAblation,
    GradientShap,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import Tensor, nn

from xaibench.checks import check_positive_int
from xaibench.errors import InputError
from xaibench.explainers.base import (
    Explainer,
    network,
    no_inplace_relu,
    record_forward,
    register,
    warn_without_relu,
)
from xaibench.passes import Passes
from xaibench.seeding import make_generator


@contextlib.contextmanager
def seeded_global_rng(gen: torch.Generator, device: torch.device) -> Iterator[None]:
    """Run a block that draws from torch's and numpy's global RNGs (Captum does both) with seeds
    drawn from `gen`; both global states are restored after."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device).item())
    devices = [device] if device.type == "cuda" else []
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)


def expansions_per_image(max_batch: int, batch: int) -> int:
    """Expansions per image that keep batch * expansions <= max_batch (at least 1)."""
    return max(1, max_batch // batch)


@register("saliency", cost=Passes(forwards="1", backwards="1"), resolution="input")
class SaliencyExplainer(Explainer):
    """Gradient of the target logit w.r.t. the input (Simonyan et al. 2014).

    Raw attribution: the signed gradient [B, C, H, W]; default map: max over channels of |gradient|.
    """

    default_reduce = "max_abs"

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return Saliency(self.model).attribute(inputs, target=targets, abs=False)


@register("input_x_gradient", cost=Passes(forwards="1", backwards="1"), resolution="input")
class InputXGradientExplainer(Explainer):
    """Input times gradient of the target logit. Default map: signed sum over channels."""

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return InputXGradient(self.model).attribute(inputs, target=targets)


@register("integrated_gradients", cost=Passes(forwards="steps", backwards="steps"), resolution="input")
class IntegratedGradientsExplainer(Explainer):
    """Integrated Gradients (Sundararajan et al. 2017) from a constant baseline image.

    Raw attributions sum to f(x) - f(baseline) up to the quadrature error (completeness).
    Default map: signed sum over channels.
    """

    PARAMS = {
        "steps": "number of points on the path from the baseline to the input",
        "baseline": "constant pixel value of the baseline image (0 = black)",
        "method": "Captum quadrature rule ('gausslegendre', 'riemann_trapezoid', ...)",
    }

    def __init__(self, model: nn.Module, *, steps: int = 32, baseline: float = 0.0,
                 method: str = "gausslegendre", reduce: str | None = None, sign: str | None = None,
                 max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        self.steps = check_positive_int(steps, "steps")
        self.baseline = float(baseline)
        self.method = method
        self.params.update(steps=steps, baseline=baseline, method=method)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return IntegratedGradients(self.model).attribute(
            inputs, baselines=self.baseline, target=targets, n_steps=self.steps, method=self.method,
            internal_batch_size=max(self.max_batch, inputs.shape[0]),
        )


@register("smoothgrad", cost=Passes(forwards="n_samples", backwards="n_samples"), resolution="input")
class SmoothGradExplainer(Explainer):
    """SmoothGrad (Smilkov et al. 2017): mean gradient over Gaussian-noised copies of the input.

    Noise std = `noise` (in pixel units, the images being in [0, 1]). Captum's NoiseTunnel over
    Saliency; its draws come from torch's global RNG, which is forked and seeded from `seed`.
    Default map: max over channels of |mean gradient|.
    """

    default_reduce = "max_abs"
    nt_type: ClassVar[str] = "smoothgrad"  # Captum NoiseTunnel aggregation
    PARAMS = {
        "n_samples": "number of noisy copies per image",
        "noise": "standard deviation of the Gaussian noise, in pixel units",
    }

    def __init__(self, model: nn.Module, *, n_samples: int = 16, noise: float = 0.15,
                 seed: int | torch.Generator | None = 0, reduce: str | None = None,
                 sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.noise = float(noise)
        self.generator = make_generator(seed)
        self.params.update(n_samples=n_samples, noise=noise, seed=seed if isinstance(seed, int) else None)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        nt = NoiseTunnel(Saliency(self.model))
        with seeded_global_rng(self.generator, inputs.device):
            return nt.attribute(
                inputs, nt_type=self.nt_type, nt_samples=self.n_samples, stdevs=self.noise,
                nt_samples_batch_size=expansions_per_image(self.max_batch, inputs.shape[0]), target=targets, abs=False,
            )


@register("guided_backprop", cost=Passes(forwards="1", backwards="1"), resolution="input")
class GuidedBackpropExplainer(Explainer):
    """Guided Backpropagation (Springenberg et al. 2015): ReLU backward passes positive gradients only.

    Default map: max over channels of |attribution|. The rule applies to ``nn.ReLU`` modules; on a
    model without them (a ViT) the maps equal saliency's: a warning says so and ``same_as`` is
    ``"saliency"``. ``init="logit"`` starts the backward pass from the target's logit z_y instead
    of 1 (HARMONY's attributor). The guided pass is positively homogeneous, not linear, in its
    start: for z_y > 0 the map is z_y times the one-hot map, for z_y < 0 it is |z_y| times the
    map started from -1 (another set of gradients passes the ReLUs).
    """

    PARAMS = {"init": "output relevance of the target: 'onehot' (1) or 'logit' (its logit z_y, HARMONY's)"}
    default_reduce = "max_abs"
    engine: ClassVar[type[GuidedBackprop] | type[Deconvolution]] = GuidedBackprop

    def __init__(self, model: nn.Module, *, init: str = "onehot", reduce: str | None = None,
                 sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        if init not in ("onehot", "logit"):
            raise InputError(f"init must be 'onehot' or 'logit', got {init!r}")
        self.init = init
        self.params.update(init=init)
        warn_without_relu(self, model, "saliency")

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        model = self.model
        if self.init == "logit":
            with torch.no_grad():
                model = ScaledOutput(self.model, self.model(inputs).gather(1, targets[:, None])[:, 0])
        with no_inplace_relu(self.model):
            return self.engine(model).attribute(inputs, target=targets)


class ScaledOutput(nn.Module):
    """`model`'s logits times a fixed factor per row [B]: a backward pass from the target then
    starts from factor x one-hot."""

    def __init__(self, model: nn.Module, factor: Tensor) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.factor[:, None].to(x.dtype)


@register("deconvolution", cost=Passes(forwards="1", backwards="1"), resolution="input")
class DeconvolutionExplainer(GuidedBackpropExplainer):
    """Deconvolution (Zeiler & Fergus 2014): ReLU applied to the backward signal.

    Default map: max over channels of |attribution|. Without ``nn.ReLU`` modules it equals
    saliency, as guided backprop does.
    """

    engine = Deconvolution


class _PerCallReLU(nn.Module):
    """Stands for a ReLU module called `n` times per forward: call i uses its own child i % n."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.calls = nn.ModuleList(nn.ReLU() for _ in range(n))
        self.count = 0

    def forward(self, x: Tensor) -> Tensor:
        out = self.calls[self.count % len(self.calls)](x)
        self.count += 1
        return out


def split_reused_relus(model: nn.Module, inputs: Tensor) -> nn.Module:
    """`model`, or a copy of it in which each ReLU module used several times per forward is split
    into one module per call (DeepLIFT keeps per-module state, e.g. torchvision ResNet blocks)."""
    calls: dict[str, int] = {}
    for name, _ in record_forward(model, inputs[:1], lambda m: isinstance(m, nn.ReLU)):
        calls[name] = calls.get(name, 0) + 1
    reused = [n for n, c in calls.items() if c > 1]
    if not reused:
        return model
    model = copy.deepcopy(model)
    for name in reused:
        parent, _, attr = name.rpartition(".")
        setattr(network(model).get_submodule(parent), attr, _PerCallReLU(calls[name]))
    return model


@register("deeplift", cost=Passes(forwards="2", backwards="1"), resolution="input")
class DeepLiftExplainer(Explainer):
    """DeepLIFT Rescale rule (Shrikumar et al. 2017) from a constant baseline image (Captum).

    Modules that are not ReLU-like (GELU, attention) pass plain gradients. A ReLU module called
    several times per forward is applied through a copy of the model with one ReLU per call.
    Default map: signed sum over channels.
    """

    PARAMS = {"baseline": "constant pixel value of the baseline image (0 = black)"}

    def __init__(self, model: nn.Module, *, baseline: float = 0.0, reduce: str | None = None,
                 sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        self.baseline = float(baseline)
        self.params.update(baseline=baseline)
        self._net: nn.Module | None = None

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        if self._net is None:
            self._net = split_reused_relus(self.model, inputs)
        with no_inplace_relu(self._net):
            return DeepLift(self._net).attribute(inputs, baselines=self.baseline, target=targets)


BASELINE_SETS = ("black_white", "batch")


@register("gradient_shap", cost=Passes(forwards="n_samples", backwards="n_samples"), resolution="input")
class GradientShapExplainer(Explainer):
    """GradientSHAP (Lundberg & Lee 2017, Captum): expected gradients times (input - baseline).

    Each sample draws a baseline x' from the baseline set and a path point a ~ U(0, 1) (Captum
    draws these from numpy's global RNG, seeded from `seed` and restored), adds Gaussian noise of
    std `noise` to the input, and contributes (x - x') * dS/dx at x' + a (x - x'). With
    ``noise=0`` this is Expected Gradients (Erion et al. 2021) with the baseline distribution
    `baselines`: ``"black_white"`` ({black, white}), ``"batch"`` (the images of the call, the
    data set's distribution as in the paper) or a tensor [N, C, H, W] of images (Python API, e.g.
    training images). The samples are split into chunks of at most `max_batch` rows and averaged
    (exact: the estimator is a mean). Default map: signed sum over channels.
    """

    PARAMS = {
        "n_samples": "number of (baseline, path point) samples per image",
        "noise": "standard deviation of the Gaussian noise added to the input, in pixel units",
        "baselines": "baseline distribution: 'black_white', 'batch' (the call's images) or a tensor [N, C, H, W]",
    }

    def __init__(self, model: nn.Module, *, n_samples: int = 16, noise: float = 0.0,
                 baselines: str | Tensor = "black_white", seed: int | torch.Generator | None = 0,
                 reduce: str | None = None, sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.noise = float(noise)
        if isinstance(baselines, Tensor):
            if baselines.ndim != 4 or baselines.shape[0] < 1:
                raise InputError(f"baselines must be images [N, C, H, W], got shape {tuple(baselines.shape)}")
        elif baselines not in BASELINE_SETS:
            raise InputError(f"baselines must be one of {BASELINE_SETS} or a tensor [N, C, H, W], got {baselines!r}")
        self.baselines = baselines
        self.generator = make_generator(seed)
        self.params.update(n_samples=n_samples, noise=noise, seed=seed if isinstance(seed, int) else None,
                           baselines=baselines if isinstance(baselines, str) else "tensor")

    def _baseline_set(self, inputs: Tensor) -> Tensor:
        if isinstance(self.baselines, Tensor):
            if self.baselines.shape[1:] != inputs.shape[1:]:
                raise InputError(f"baselines have shape {tuple(self.baselines.shape[1:])} per image, the inputs "
                                 f"{tuple(inputs.shape[1:])}")
            return self.baselines.to(inputs.device, inputs.dtype)
        if self.baselines == "batch":
            if inputs.shape[0] < 2:
                raise InputError(f"{self.name} with baselines='batch' draws baselines from the other images of the "
                                 "call: it needs at least 2 images per call, got 1 (or pass baselines=<images>)")
            return inputs.detach()
        return torch.stack([torch.zeros_like(inputs[0]), torch.ones_like(inputs[0])])

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        gs = GradientShap(self.model)
        baselines = self._baseline_set(inputs)
        chunk = expansions_per_image(self.max_batch, inputs.shape[0])
        total = torch.zeros_like(inputs)
        with seeded_global_rng(self.generator, inputs.device):
            for start in range(0, self.n_samples, chunk):
                n = min(chunk, self.n_samples - start)
                total += n * gs.attribute(inputs, baselines=baselines, n_samples=n, stdevs=self.noise,
                                          target=targets)
        return total / self.n_samples


@register("expected_gradients", cost=Passes(forwards="n_samples", backwards="n_samples"), resolution="input")
class ExpectedGradientsExplainer(GradientShapExplainer):
    """Expected Gradients (Erion et al. 2021): GradientSHAP without noise, baselines drawn from the data.

    Default baseline distribution: the images of the call (``baselines="batch"``: a map depends on
    its batch); ``baselines=`` a tensor of images [N, C, H, W] draws from those. Default map: signed
    sum over channels.
    """

    def __init__(self, model: nn.Module, *, n_samples: int = 16, baselines: str | Tensor = "batch",
                 seed: int | torch.Generator | None = 0, reduce: str | None = None, sign: str | None = None,
                 max_batch: int = 64) -> None:
        super().__init__(model, n_samples=n_samples, noise=0.0, baselines=baselines, seed=seed, reduce=reduce,
                         sign=sign, max_batch=max_batch)
        del self.params["noise"]


@register("occlusion", cost=Passes(forwards="1 + ceil((H-window)/stride+1) * ceil((W-window)/stride+1)"),
          resolution="input")
class OcclusionExplainer(Explainer):
    """Occlusion (Zeiler & Fergus 2014, Captum): logit drop when a window is set to `baseline`.

    Windows of `window` x `window` pixels (all channels) slide with `stride`; each pixel gets the
    mean drop of the windows covering it. Default map: signed sum over channels.
    """

    PARAMS = {
        "window": "side of the square occluding window, in pixels (clipped to the image)",
        "stride": "step between windows, in pixels",
        "baseline": "pixel value written into the window (0 = black)",
    }

    def __init__(self, model: nn.Module, *, window: int = 16, stride: int = 8, baseline: float = 0.0,
                 reduce: str | None = None, sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        self.window = check_positive_int(window, "window")
        self.stride = check_positive_int(stride, "stride")
        self.baseline = float(baseline)
        self.params.update(window=window, stride=stride, baseline=baseline)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        c, h, w = inputs.shape[1:]
        wh, ww = min(self.window, h), min(self.window, w)
        return Occlusion(self.model).attribute(
            inputs, sliding_window_shapes=(c, wh, ww), strides=(c, self.stride, self.stride),
            baselines=self.baseline, target=targets,
            perturbations_per_eval=expansions_per_image(self.max_batch, inputs.shape[0]),
        )


@register("feature_ablation", cost=Passes(forwards="1 + ceil(H/patch) * ceil(W/patch)"), resolution="input")
class FeatureAblationExplainer(Explainer):
    """Feature ablation (Captum) on a grid of non-overlapping `patch` x `patch` squares.

    Each square (all channels) is set to `baseline`; all its pixels get the logit drop.
    Default map: signed sum over channels.
    """

    PARAMS = {
        "patch": "side of the square ablated features, in pixels",
        "baseline": "pixel value written into the ablated square (0 = black)",
    }

    def __init__(self, model: nn.Module, *, patch: int = 8, baseline: float = 0.0,
                 reduce: str | None = None, sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        self.patch = check_positive_int(patch, "patch")
        self.baseline = float(baseline)
        self.params.update(patch=patch, baseline=baseline)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        h, w = inputs.shape[2:]
        rows = torch.arange(h, device=inputs.device) // self.patch
        cols = torch.arange(w, device=inputs.device) // self.patch
        mask = rows[:, None] * ((w + self.patch - 1) // self.patch) + cols[None, :]
        return FeatureAblation(self.model).attribute(
            inputs, baselines=self.baseline, target=targets, feature_mask=mask[None, None],
            perturbations_per_eval=expansions_per_image(self.max_batch, inputs.shape[0]),
        )
