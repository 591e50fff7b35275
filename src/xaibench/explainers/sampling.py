"""Noise-sampling variants of SmoothGrad: SmoothGrad-squared and VarGrad (Captum's NoiseTunnel).

Both draw `n_samples` Gaussian-noised copies x + e_i (std `noise`, in pixel units) of each image
and aggregate the gradients g_i of the target logit per input element:

- SmoothGrad-squared (Hooker et al. 2019): mean_i g_i^2;
- VarGrad (Adebayo et al. 2018): the variance mean_i g_i^2 - (mean_i g_i)^2 (population variance,
  as Captum computes it).

Draws come from torch's global RNG, forked and seeded from `seed` as for SmoothGrad. Raw attribution
[B, C, H, W] (non-negative); default map: max over channels, as SmoothGrad.
"""

from __future__ import annotations

from xaibench.explainers.base import register
from xaibench.explainers.gradient import SmoothGradExplainer
from xaibench.passes import Passes


@register("smoothgrad_sq", cost=Passes(forwards="n_samples", backwards="n_samples"), resolution="input",
          aliases=("smoothgrad_squared",))
class SmoothGradSquaredExplainer(SmoothGradExplainer):
    """SmoothGrad-squared (Hooker et al. 2019): mean squared gradient over Gaussian-noised copies."""

    nt_type = "smoothgrad_sq"


@register("vargrad", cost=Passes(forwards="n_samples", backwards="n_samples"), resolution="input")
class VarGradExplainer(SmoothGradExplainer):
    """VarGrad (Adebayo et al. 2018): variance of the gradient over Gaussian-noised copies."""

    nt_type = "vargrad"
