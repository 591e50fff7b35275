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
  used as they are (autotimm quantises float arrays to uint8 first).

The explainer may be an autotimm-style object with ``.explain(image, target_class=...)`` returning
a 2-D heatmap, or any xaibench explainer / callable ``(inputs [B, C, H, W], targets [B]) -> maps
[B, H, W]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xaibench.checks import check_images, check_targets
from xaibench.errors import InputError
from xaibench.metrics.randomisation import model_parameter_randomisation, random_logit
from xaibench.metrics.robustness import explain_chunked, minmax01, noise_stability
from xaibench.perturbation.baselines import fill
from xaibench.perturbation.curves import trapezoid
from xaibench.perturbation.engine import perturbation_curves, rank_features
from xaibench.perturbation.forward import class_scores

_EPS = 1e-8  # autotimm's guard for a zero original score


class _Logits(nn.Module):
    """Returns the logits of a model whose output may be a dict (autotimm's convention)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if isinstance(out, dict):
            out = out.get("logits", out.get("output", next(iter(out.values()))))
        return out


def _protocol(explainer: Any) -> Callable[[Tensor, Tensor], Tensor]:
    """Our explainer protocol for either kind of explainer (autotimm ones are called image by image)."""
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

    model: the classifier (put in eval mode and moved to CUDA when `use_cuda` and available, as
    autotimm does). explainer: see the module doc. max_batch: images per forward / explanation
    chunk. seed: seeds every random draw of every call.
    """

    def __init__(self, model: nn.Module, explainer: Any, use_cuda: bool = True, *, max_batch: int = 64,
                 seed: int = 0) -> None:
        self.model = model
        self.model.eval()
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
        if isinstance(image, Tensor):
            x = image[None] if image.ndim == 3 else image
        else:
            arr = np.asarray(image)  # PIL images convert through the array interface
            if arr.ndim not in (2, 3):
                raise InputError(f"a numpy / PIL image must be HxW or HxWxC, got shape {arr.shape}")
            x = torch.from_numpy(arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32))
            x = (x[None] if x.ndim == 2 else x.permute(2, 0, 1))[None]
        x = x.to(self.device, torch.float32)
        check_images(x, "image")
        return x, x.shape[0] == 1

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
        maps = explain_chunked(self._explain, x, t, self.max_batch, finite=True)
        # autotimm resizes the heatmap bilinearly to the image and deletes k * (N // steps) pixels
        ranking = rank_features(maps, tuple(x.shape[-2:]), order="morf", granularity="pixel", resample="upsample")
        per_step = x.shape[-2] * x.shape[-1] // steps
        counts = (torch.arange(steps + 1, device=self.device) * per_step).expand(x.shape[0], -1)
        curves = perturbation_curves(self._net, x, t, ranking, counts, mode=mode, baseline=base, output="softmax",
                                     max_batch=self.max_batch)
        original = class_scores(self._net, x, t, output="softmax", max_batch=self.max_batch)
        return curves.double(), original.double(), t, single

    def deletion(self, image: Any, target_class: int | None = None, steps: int = 50,
                 baseline: str = "blur") -> dict[str, Any]:
        """Deletion: delete the most important pixels in `steps` steps (keys: auc, final_drop, scores,
        original_score). Baselines: 'blur' (Gaussian, kernel 51, sigma 20), 'black', 'mean'."""
        curves, original, _, single = self._curves("delete", image, target_class, steps, baseline)
        safe = original.clamp_min(_EPS)
        values = {"auc": trapezoid(curves, 1.0 / steps) / safe, "final_drop": (original - curves[:, -1]) / safe,
                  "scores": curves, "original_score": original}
        return self._out(values, single)

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
    def sensitivity_n(self, image: Any, target_class: int | None = None, n_samples: int = 50,
                      noise_level: float = 0.15) -> dict[str, Any]:
        """Explanation change under Gaussian noise (`xaibench.metrics.noise_stability`); keys:
        sensitivity, std, max_change, changes."""
        x, single = self._batch(image)
        t = self._targets(x, target_class)
        r = noise_stability(self._net, x, t, self._explain, noise_level=noise_level, n_samples=n_samples,
                            max_batch=self.max_batch, seed=self.seed)
        values = {"sensitivity": r.scores, "std": r.extras["std"], "max_change": r.extras["max_change"],
                  "changes": r.extras["samples"]}
        return self._out(values, single)

    # ------------------------------------------------------------ randomisation
    @staticmethod
    def _verdict(correlation: Tensor, maps: Tensor, other: Tensor) -> dict[str, Tensor]:
        change = (minmax01(other.double()) - minmax01(maps.double())).abs().flatten(1).mean(dim=1)
        return {"correlation": correlation, "change": change, "passes": correlation < 0.5}

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
        return self._out(self._verdict(r.scores, r.extras["maps"], r.extras["randomised_maps"]), single)

    def data_randomization_test(self, image: Any, target_class: int | None = None) -> dict[str, Any]:
        """Pearson correlation between the maps of the target and of a random other class
        (`xaibench.metrics.random_logit`); keys: correlation, change, passes (correlation < 0.5)."""
        x, single = self._batch(image)
        t = self._targets(x, target_class)
        r = random_logit(self._net, x, t, self._explain, similarity="pearson", absolute=False, normalise=False,
                         threshold=0.5, max_batch=self.max_batch, seed=self.seed)
        return self._out(self._verdict(r.scores, r.extras["maps"], r.extras["off_maps"]), single)

    # ------------------------------------------------------------- localisation
    def pointing_game(self, image: Any, bbox: Sequence[float] | Tensor,
                      target_class: int | None = None) -> dict[str, Any]:
        """Whether the map's maximum lies in `bbox` = [x1, y1, x2, y2] (pixels, inclusive); keys: hit,
        max_location (y, x of the max cell's top-left corner in image pixels), bbox. A batch takes one
        box for all images or one per image ([B, 4])."""
        x, single = self._batch(image)
        t = self._targets(x, target_class)
        maps = explain_chunked(self._explain, x, t, self.max_batch, finite=True)
        h, w = maps.shape[-2:]
        idx = maps.flatten(1).argmax(dim=1)  # first maximum in raster order, as numpy's argmax
        ys = (idx // w).double() * (x.shape[-2] / h)
        xs = (idx % w).double() * (x.shape[-1] / w)
        box = torch.as_tensor(bbox, dtype=torch.float64, device=self.device)
        if box.shape not in ((4,), (x.shape[0], 4)):
            raise InputError(f"bbox must be [x1, y1, x2, y2] or one box per image [B, 4], got {tuple(box.shape)}")
        box = box.expand(x.shape[0], 4)
        hit = (box[:, 0] <= xs) & (xs <= box[:, 2]) & (box[:, 1] <= ys) & (ys <= box[:, 3])
        if single:
            return {"hit": bool(hit[0]), "max_location": (float(ys[0]), float(xs[0])), "bbox": bbox}
        return {"hit": hit, "max_location": torch.stack([ys, xs], dim=1), "bbox": bbox}

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


__all__ = ["ExplanationMetrics"]
