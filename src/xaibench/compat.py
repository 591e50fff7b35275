"""A drop-in replacement for autotimm's ``ExplanationMetrics`` backed by xaibench's batched metrics.

``from xaibench import ExplanationMetrics`` instead of
``from autotimm.interpretation import ExplanationMetrics``: the constructor, the method names,
arguments, defaults and returned dict keys are autotimm's (0.7.x). Differences are listed in
docs/metrics-robustness.md; the main ones:

- Every method also takes a batch [B, C, H, W] (B > 1) and then runs batched, returning per-key
  tensors: scalars as Tensor [B], curves/lists as Tensor [B, K], flags as bool Tensor [B],
  ``max_location`` as Tensor [B, 2]. A single image (PIL, numpy HWC / HW, tensor [C, H, W] or
  [1, C, H, W]) gives Python floats / lists as autotimm does. ``target_class`` may then be an int,
  None (the predicted class) or one class per image.
- Randomness comes from one seeded generator (``seed``), so results are reproducible.
- Images are in [0, 1] pixel space: uint8 arrays / PIL images are divided by 255, float arrays are
  used as they are (autotimm quantises float arrays to uint8 first); images outside the model's
  range are an error (`xaibench.checks.set_input_range` declares another range).
- Every call runs the model in eval mode and gives it back in the mode it had (autotimm leaves it
  in eval).
- Maps are used as the explainer returns them (autotimm's explainers normalise to [0, 1]
  themselves), for ``sensitivity_n`` and the ``change`` of both randomisation tests as for the rest.

The explainer may be an autotimm-style object with ``.explain(image, target_class=...)`` returning
a 2-D heatmap, any xaibench explainer / callable ``(inputs [B, C, H, W], targets [B]) -> maps
[B, H, W]``, or one of `GradCAM`, `GradCAMPlusPlus`, `IntegratedGradients`: xaibench's methods under
autotimm's class names and calling convention, so that autotimm's examples run after swapping the
import (``from xaibench import ExplanationMetrics, GradCAM``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from xaibench.checks import check_images, check_targets
from xaibench.errors import InputError
from xaibench.explainers import explainer as make_explainer
from xaibench.explainers.base import network
from xaibench.metrics.deletion import warn_small_original
from xaibench.metrics.randomisation import model_parameter_randomisation, random_logit, restored
from xaibench.metrics.robustness import explain_chunked, minmax01, noise_stability
from xaibench.models import Logits
from xaibench.perturbation.baselines import fill
from xaibench.perturbation.curves import trapezoid
from xaibench.perturbation.engine import perturbation_curves, rank_features
from xaibench.perturbation.forward import class_scores

_EPS = 1e-8  # autotimm's guard for a zero original score


class _Logits(Logits):
    """Returns the logits of a model whose output may be a dict (autotimm's convention). A
    `xaibench.models.Logits`, so layer names stay those of the user's model."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        if isinstance(out, dict):
            out = out.get("logits", out.get("output", next(iter(out.values()))))
        return out


def _as_batch(image: Any, device: torch.device, model: nn.Module) -> tuple[Tensor, bool]:
    """Images [B, C, H, W] on `device`, checked against `model`'s pixel range, and whether a
    single image was given. uint8 arrays / PIL images are divided by 255."""
    if isinstance(image, Tensor):
        x = image[None] if image.ndim == 3 else image
    else:
        arr = np.asarray(image)  # PIL images convert through the array interface
        if arr.ndim not in (2, 3):
            raise InputError(f"a numpy / PIL image must be HxW or HxWxC, got shape {arr.shape}")
        x = torch.from_numpy(arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32))
        x = (x[None] if x.ndim == 2 else x.permute(2, 0, 1))[None]
    x = x.to(device, torch.float32)
    check_images(x, "image", model=model)
    return x, x.shape[0] == 1


def _in_eval(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a method of an object with a ``model`` in eval mode; the modes are restored after."""

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        with restored(self.model, state=False):
            self.model.eval()
            return method(self, *args, **kwargs)

    return run


class _AutotimmExplainer:
    """An xaibench method under an autotimm class name: ``explain(image, target_class=None,
    normalize=True)`` (also the call) returns a 2-D numpy heatmap, min-max normalised to [0, 1]
    when `normalize` as autotimm's explainers do. `ExplanationMetrics` runs it batched."""

    method: ClassVar[str]

    def __init__(self, model: nn.Module, use_cuda: bool, **params: Any) -> None:
        self.model = model
        self.device = torch.device("cuda" if use_cuda and torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.explainer = make_explainer(self.method, model, **params)

    def _normalise(self, maps: Tensor) -> Tensor:
        return minmax01(maps)

    @_in_eval
    def maps(self, inputs: Tensor, targets: Tensor, normalize: bool = True) -> Tensor:
        """Batched heatmaps [B, h, w] of images [B, C, H, W] for classes [B]."""
        maps = self.explainer(inputs, targets)
        return self._normalise(maps) if normalize else maps

    def explain(self, image: Any, target_class: int | None = None, normalize: bool = True) -> np.ndarray:
        x, _ = _as_batch(image, self.device, self.model)
        if target_class is None:
            with restored(self.model, state=False), torch.no_grad():
                self.model.eval()
                target_class = int(Logits(self.model)(x[:1]).argmax(dim=1))
        return self.maps(x[:1], torch.tensor([int(target_class)], device=self.device), normalize)[0].cpu().numpy()

    __call__ = explain


def _layer_name(model: nn.Module, target_layer: str | nn.Module | None) -> str:
    """The name of `target_layer` (a name or a module); None: the last ``nn.Conv2d``, autotimm's rule."""
    if isinstance(target_layer, str):
        return target_layer
    modules = list(network(model).named_modules())
    if target_layer is None:
        convs = [name for name, m in modules if isinstance(m, nn.Conv2d)]
        if not convs:
            raise InputError("the model has no nn.Conv2d layer to explain; pass target_layer (a layer name or module)")
        return convs[-1]
    for name, module in modules:
        if module is target_layer:
            return name
    raise InputError("target_layer is not a module of the model")


class GradCAM(_AutotimmExplainer):
    """Grad-CAM (xaibench's ``gradcam``) as autotimm's ``GradCAM(model, target_layer=None,
    use_cuda=True)``: by default at the last ``nn.Conv2d`` (autotimm's choice, not xaibench's),
    heatmaps at the layer's resolution, as autotimm returns them."""

    method = "gradcam"

    def __init__(self, model: nn.Module, target_layer: str | nn.Module | None = None, use_cuda: bool = True) -> None:
        super().__init__(model, use_cuda, layer=_layer_name(model, target_layer), upsample=False)


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (xaibench's ``gradcam_plus_plus``) as autotimm's ``GradCAMPlusPlus``."""

    method = "gradcam_plus_plus"


class IntegratedGradients(_AutotimmExplainer):
    """Integrated Gradients as autotimm's ``IntegratedGradients(model, baseline="black", steps=50,
    use_cuda=True)``: the right Riemann sum over `steps` points, summed over channels; normalised
    maps are ``|a|`` min-max scaled. Baselines: "black" or "white" (constant images)."""

    method = "integrated_gradients"

    def __init__(self, model: nn.Module, baseline: str = "black", steps: int = 50, use_cuda: bool = True) -> None:
        values = {"black": 0.0, "white": 1.0}
        if baseline not in values:
            raise InputError(f"baseline must be 'black' or 'white' (constant images), got {baseline!r}")
        super().__init__(model, use_cuda, baseline=values[baseline], steps=steps, method="riemann_right",
                         reduce="sum", sign="all")

    def _normalise(self, maps: Tensor) -> Tensor:
        return minmax01(maps.abs())


def _protocol(explainer: Any) -> Callable[[Tensor, Tensor], Tensor]:
    """Our explainer protocol for either kind of explainer (autotimm ones are called image by image)."""
    if isinstance(explainer, _AutotimmExplainer):
        return explainer.maps
    if hasattr(explainer, "explain") and not hasattr(explainer, "attribute"):

        def run(inputs: Tensor, targets: Tensor) -> Tensor:
            maps = []
            for image, target in zip(inputs, targets.tolist()):
                heat = explainer.explain(image[None], target_class=int(target))
                heat = heat.detach().cpu() if isinstance(heat, Tensor) else torch.from_numpy(np.asarray(heat))
                maps.append(heat.float().squeeze())
            return torch.stack(maps).to(inputs.device)

        return run
    if not callable(explainer):
        raise InputError("explainer must have .explain(image, target_class=...) or be callable (inputs, targets)")
    return explainer


class ExplanationMetrics:
    """autotimm-compatible explanation metrics (see the module doc).

    model: the classifier (moved to CUDA when `use_cuda` and available, as autotimm does; each
    call runs it in eval mode and restores its mode). explainer: see the module doc. max_batch:
    images per forward / explanation chunk. seed: seeds every random draw of every call.
    """

    def __init__(self, model: nn.Module, explainer: Any, use_cuda: bool = True, *, max_batch: int = 64,
                 seed: int = 0) -> None:
        self.model = model
        self.explainer = explainer
        self.device = torch.device("cuda" if use_cuda and torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.max_batch = max_batch
        self.seed = seed
        self._net = _Logits(model)
        self._explain = _protocol(explainer)

    # ----------------------------------------------------------------- inputs
    def _batch(self, image: Any) -> tuple[Tensor, bool]:
        """Images [B, C, H, W] in [0, 1] on the device, and whether a single image was given."""
        return _as_batch(image, self.device, self.model)

    def _targets(self, x: Tensor, target_class: int | Sequence[int] | Tensor | None) -> Tensor:
        logits = torch.cat([self._logits(x[s:s + self.max_batch]) for s in range(0, x.shape[0], self.max_batch)])
        if target_class is None:
            return logits.argmax(dim=1)
        return check_targets(torch.as_tensor(target_class), x.shape[0], logits.shape[1]).to(self.device)

    @torch.no_grad()
    def _logits(self, x: Tensor) -> Tensor:
        return self._net(x)

    @staticmethod
    def _out(values: dict[str, Tensor | Any], single: bool) -> dict[str, Any]:
        """Python scalars / lists for a single image (as autotimm), tensors for a batch."""
        if not single:
            return values
        out: dict[str, Any] = {}
        for key, v in values.items():
            if isinstance(v, Tensor):
                v = v[0]
                out[key] = v.tolist() if v.ndim else v.item()
            else:
                out[key] = v
        return out

    # ----------------------------------------------------------- faithfulness
    def _baseline(self, x: Tensor, baseline: str) -> Tensor:
        if baseline == "black":
            return fill(x, "black")
        if baseline == "mean":  # autotimm: one value, the mean over all channels and pixels
            return x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
        if baseline == "blur":
            return fill(x, "gaussian_blur", kernel_size=51, sigma=20.0)
        raise InputError(f"Unknown baseline: {baseline}")

    def _curves(self, mode: str, image: Any, target_class: Any, steps: int,
                baseline: str) -> tuple[Tensor, Tensor, Tensor, bool]:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"steps must be a positive int, got {steps!r}")
        x, single = self._batch(image)
        t = self._targets(x, target_class)
        base = self._baseline(x, baseline)
        maps = explain_chunked(self._explain, x, t, self.max_batch)
        # autotimm resizes the heatmap bilinearly to the image and deletes k * (N // steps) pixels
        ranking = rank_features(maps, tuple(x.shape[-2:]), order="morf", granularity="pixel", resample="upsample")
        per_step = x.shape[-2] * x.shape[-1] // steps
        counts = (torch.arange(steps + 1, device=self.device) * per_step).expand(x.shape[0], -1)
        curves = perturbation_curves(self._net, x, t, ranking, counts, mode=mode, baseline=base, output="softmax",
                                     max_batch=self.max_batch)
        original = class_scores(self._net, x, t, output="softmax", max_batch=self.max_batch)
        warn_small_original(f"ExplanationMetrics.{'deletion' if mode == 'delete' else 'insertion'}", original)
        return curves.double(), original.double(), t, single

    @_in_eval
    def deletion(self, image: Any, target_class: int | None = None, steps: int = 50,
                 baseline: str = "blur") -> dict[str, Any]:
        """Deletion: delete the most important pixels in `steps` steps (keys: auc, final_drop, scores,
        original_score). Baselines: 'blur' (Gaussian, kernel 51, sigma 20), 'black', 'mean'."""
        curves, original, _, single = self._curves("delete", image, target_class, steps, baseline)
        safe = original.clamp_min(_EPS)
        values = {"auc": trapezoid(curves, 1.0 / steps) / safe, "final_drop": (original - curves[:, -1]) / safe,
                  "scores": curves, "original_score": original}
        return self._out(values, single)

    @_in_eval
    def insertion(self, image: Any, target_class: int | None = None, steps: int = 50,
                  baseline: str = "blur") -> dict[str, Any]:
        """Insertion: reveal the most important pixels on the baseline (keys: auc, final_rise, scores,
        original_score, baseline_score)."""
        curves, original, _, single = self._curves("insert", image, target_class, steps, baseline)
        base_score = curves[:, 0]
        denom = original - base_score
        rise = torch.where(denom.abs() < 1e-6, 0.0, (curves[:, -1] - base_score) / denom.abs())
        values = {"auc": trapezoid(curves, 1.0 / steps) / original.clamp_min(_EPS), "final_rise": rise,
                  "scores": curves, "original_score": original, "baseline_score": base_score}
        return self._out(values, single)

    # ------------------------------------------------------------- robustness
    @_in_eval
    def sensitivity_n(self, image: Any, target_class: int | None = None, n_samples: int = 50,
                      noise_level: float = 0.15) -> dict[str, Any]:
        """Explanation change under Gaussian noise (`xaibench.metrics.noise_stability` on the maps as
        returned); keys: sensitivity, std, max_change, changes. ``noise_level=0``: zeros for a
        deterministic explainer, as autotimm."""
        x, single = self._batch(image)
        t = self._targets(x, target_class)
        r = noise_stability(self._net, x, t, self._explain, noise_level=noise_level, n_samples=n_samples,
                            normalise=False, max_batch=self.max_batch, seed=self.seed)
        values = {"sensitivity": r.scores, "std": r.extras["std"], "max_change": r.extras["max_change"],
                  "changes": r.extras["samples"]}
        return self._out(values, single)

    # ------------------------------------------------------------ randomisation
    @staticmethod
    def _verdict(correlation: Tensor, maps: Tensor, other: Tensor) -> dict[str, Tensor]:
        change = (other.double() - maps.double()).abs().flatten(1).mean(dim=1)
        return {"correlation": correlation, "change": change, "passes": correlation < 0.5}

    @staticmethod
    def _warn_nan(test: str, reasons: tuple[str | None, ...] | None) -> None:
        """A NaN correlation says why (autotimm returns a bare nan)."""
        for i, reason in enumerate(reasons or ()):
            if reason is not None:
                warnings.warn(f"{test}: correlation is nan for image {i}: {reason}", UserWarning, stacklevel=3)

    @_in_eval
    def model_parameter_randomization_test(self, image: Any, target_class: int | None = None) -> dict[str, Any]:
        """Pearson correlation between the maps of the model and of the model with every layer's
        parameters replaced by N(0, 1) draws; keys: correlation, change, passes (correlation < 0.5).
        The model's weights are restored afterwards, also when the explainer raises."""
        x, single = self._batch(image)
        t = self._targets(x, target_class)
        r = model_parameter_randomisation(self._net, x, t, self._explain, order="bottom_up", skip_layers=True,
                                          randomise="normal", similarity="pearson", absolute=False,
                                          normalise=False, score="last", threshold=0.5, max_batch=self.max_batch,
                                          seed=self.seed)
        self._warn_nan("model_parameter_randomization_test", r.reasons)
        return self._out(self._verdict(r.scores, r.extras["maps"], r.extras["randomised_maps"]), single)

    @_in_eval
    def data_randomization_test(self, image: Any, target_class: int | None = None) -> dict[str, Any]:
        """Pearson correlation between the maps of the target and of a random other class
        (`xaibench.metrics.random_logit`); keys: correlation, change, passes (correlation < 0.5).
        A nan correlation (a constant map, e.g. an all-zero Grad-CAM) comes with a warning saying which."""
        x, single = self._batch(image)
        t = self._targets(x, target_class)
        r = random_logit(self._net, x, t, self._explain, similarity="pearson", absolute=False, normalise=False,
                         threshold=0.5, max_batch=self.max_batch, seed=self.seed)
        self._warn_nan("data_randomization_test", r.reasons)
        return self._out(self._verdict(r.scores, r.extras["maps"], r.extras["off_maps"]), single)

    # ------------------------------------------------------------- localisation
    @_in_eval
    def pointing_game(self, image: Any, bbox: Sequence[float] | Tensor,
                      target_class: int | None = None) -> dict[str, Any]:
        """Whether the map's maximum lies in `bbox` = [x1, y1, x2, y2] (pixels, inclusive); keys: hit,
        max_location (y, x of the max cell's top-left corner in image pixels), bbox. A batch takes one
        box for all images or one per image ([B, 4]). An inverted box (x2 < x1 or y2 < y1) or one
        entirely outside the image is an error (autotimm reports a miss)."""
        x, single = self._batch(image)
        t = self._targets(x, target_class)
        maps = explain_chunked(self._explain, x, t, self.max_batch)
        h, w = maps.shape[-2:]
        idx = maps.flatten(1).argmax(dim=1)  # first maximum in raster order, as numpy's argmax
        ys = (idx // w).double() * (x.shape[-2] / h)
        xs = (idx % w).double() * (x.shape[-1] / w)
        box = torch.as_tensor(bbox, dtype=torch.float64, device=self.device)
        if box.shape not in ((4,), (x.shape[0], 4)):
            raise InputError(f"bbox must be [x1, y1, x2, y2] or one box per image [B, 4], got {tuple(box.shape)}")
        box = box.expand(x.shape[0], 4)
        _check_boxes(box, x.shape[-2], x.shape[-1])
        hit = (box[:, 0] <= xs) & (xs <= box[:, 2]) & (box[:, 1] <= ys) & (ys <= box[:, 3])
        if single:
            return {"hit": bool(hit[0]), "max_location": (float(ys[0]), float(xs[0])), "bbox": bbox}
        return {"hit": hit, "max_location": torch.stack([ys, xs], dim=1), "bbox": bbox}

    @_in_eval
    def evaluate_all(self, image: Any, target_class: int | None = None,
                     bbox: Sequence[float] | None = None) -> dict[str, dict[str, Any]]:
        """All metrics with their defaults; keys: deletion, insertion, sensitivity, param_randomization,
        data_randomization and, with a `bbox`, pointing_game."""
        results = {
            "deletion": self.deletion(image, target_class=target_class),
            "insertion": self.insertion(image, target_class=target_class),
            "sensitivity": self.sensitivity_n(image, target_class=target_class),
            "param_randomization": self.model_parameter_randomization_test(image, target_class=target_class),
            "data_randomization": self.data_randomization_test(image, target_class=target_class),
        }
        if bbox is not None:
            results["pointing_game"] = self.pointing_game(image, bbox, target_class=target_class)
        return results


def _check_boxes(box: Tensor, height: int, width: int) -> None:
    """Boxes [B, 4] (x1, y1, x2, y2, inclusive pixels) must be finite, not inverted and overlap the image."""
    if not torch.isfinite(box).all():
        raise InputError("bbox holds NaN or Inf coordinates")
    x1, y1, x2, y2 = box.unbind(dim=1)
    inverted = (x2 < x1) | (y2 < y1)
    outside = (x2 < 0) | (y2 < 0) | (x1 > width - 1) | (y1 > height - 1)
    for what, bad in (("inverted (need x1 <= x2 and y1 <= y2)", inverted),
                      (f"outside the {width}x{height} image", outside)):
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise InputError(f"bbox {box[i].tolist()} (image {i}) is {what}; a bbox is [x1, y1, x2, y2] in pixels")


__all__ = ["ExplanationMetrics", "GradCAM", "GradCAMPlusPlus", "IntegratedGradients"]
