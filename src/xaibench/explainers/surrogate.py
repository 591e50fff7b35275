"""Model-agnostic surrogate methods over superpixels: LIME and KernelSHAP (Captum).

Features are SLIC superpixels of each image (scikit-image, per image on the CPU; the same call as the
perturbation engine's `superpixel_segments`, so the features are those of its superpixel metrics):
about `n_segments` per image, `compactness` as in scikit-image.
A sample switches each superpixel on (image) or off (`baseline` pixel value); the target logit of
the `n_samples` perturbed images is fitted by a linear surrogate whose coefficient for a superpixel
is its attribution, written on all its pixels.

- LIME (Ribeiro et al. 2016), Captum's ``Lime`` defaults: superpixels kept with probability 1/2,
  samples weighted by an exponential kernel of the cosine distance to the unperturbed image (width
  1), Lasso surrogate (``alpha=0.01``, scikit-learn).
- KernelSHAP (Lundberg & Lee 2017), Captum's ``KernelShap``: coalitions drawn with the Shapley kernel's
  size distribution, weighted least squares. For an additive model the coefficients are the exact
  Shapley values of the superpixels (tested).

Captum fits one surrogate per image; the perturbed images of one image are scored
`max_batch` at a time (``perturbations_per_eval``). Captum draws from torch's global RNG, forked
and seeded from `seed` (one seed per call from the explainer's generator). Raw attribution
[B, 1, H, W]; default map: the coefficients (signed).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from captum.attr import KernelShap, Lime
from torch import Tensor, nn

from xaibench.checks import check_positive_int
from xaibench.errors import InputError
from xaibench.explainers.base import Explainer, register
from xaibench.explainers.gradient import seeded_global_rng
from xaibench.passes import Passes
from xaibench.seeding import make_generator


def slic_segments(inputs: Tensor, n_segments: int, compactness: float) -> Tensor:
    """SLIC superpixel labels [B, H, W] (long, from 0) of images [B, C, H, W], one image at a time on the CPU."""
    from skimage.segmentation import slic

    images = inputs.detach().permute(0, 2, 3, 1).double().cpu().numpy()
    labels = np.stack([slic(im, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1)
                       for im in images])
    return torch.from_numpy(labels.astype(np.int64)).to(inputs.device)


class SurrogateExplainer(Explainer):
    """Shared machinery: superpixels, seeding and Captum's per-image surrogate fit."""

    engine: ClassVar[type[Lime] | type[KernelShap]] = Lime
    PARAMS = {
        "n_samples": "number of perturbed images per image (superpixels switched on or off)",
        "n_segments": "approximate number of SLIC superpixels per image",
        "compactness": "SLIC compactness (higher: squarer superpixels)",
        "baseline": "pixel value of a switched-off superpixel (0 = black)",
    }

    def __init__(self, model: nn.Module, *, n_samples: int = 256, n_segments: int = 50, compactness: float = 10.0,
                 baseline: float = 0.0, seed: int | torch.Generator | None = 0, reduce: str | None = None,
                 sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.n_segments = check_positive_int(n_segments, "n_segments")
        self.compactness = float(compactness)
        self.baseline = float(baseline)
        self.generator = make_generator(seed)
        self.params.update(n_samples=n_samples, n_segments=n_segments, compactness=compactness, baseline=baseline,
                           seed=seed if isinstance(seed, int) else None)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        segments = slic_segments(inputs, self.n_segments, self.compactness)
        counts = segments.flatten(1).amax(1) + 1
        if int(counts.min()) < 2:
            raise InputError(f"{self.name}: SLIC found a single superpixel in image {int(counts.argmin())}; raise "
                             f"n_segments (now {self.n_segments}) or compactness (now {self.compactness})")
        with seeded_global_rng(self.generator, inputs.device):
            attr = self.engine(self.model).attribute(
                inputs, target=targets, baselines=self.baseline, feature_mask=segments[:, None],
                n_samples=self.n_samples, perturbations_per_eval=self.max_batch,
            )
        return attr[:, :1]


@register("lime", cost=Passes(forwards="n_samples", note="+ one SLIC per image on CPU"), resolution="input")
class LimeExplainer(SurrogateExplainer):
    """LIME (Ribeiro et al. 2016) over SLIC superpixels: Lasso surrogate of the target logit (Captum)."""

    engine = Lime


@register("kernel_shap", cost=Passes(forwards="n_samples", note="+ one SLIC per image on CPU"), resolution="input", aliases=("kernelshap",))
class KernelShapExplainer(SurrogateExplainer):
    """KernelSHAP (Lundberg & Lee 2017) over SLIC superpixels: Shapley-kernel weighted regression (Captum)."""

    engine = KernelShap
