"""ROAD's noisy linear imputation (Rong et al., 2022), batched in torch.

Every removed pixel takes the weighted mean of its in-image 8 neighbours (weight 1/6 for the four
direct neighbours, 1/12 for the four diagonal ones; weights of neighbours outside the image are
dropped and the rest renormalised), where neighbours that are themselves removed are unknowns
too. This couples all removed pixels of an image into one sparse linear system per image and
channel; Gaussian noise of standard deviation `noise` is then added to the imputed pixels.

Solver: the system matrix is ``diag(S) - W`` restricted to the removed pixels (``S`` the sum of
in-image neighbour weights, ``W`` the neighbour weights), symmetric and positive definite as long
as every connected group of removed pixels touches a kept pixel. It is solved for all images,
channels and masks of a batch at once with Jacobi-preconditioned conjugate gradients, where each
matrix product is a 3x3 convolution. Iterations stop when every system's residual satisfies
``||r|| <= tol * ||b||`` (default ``tol=1e-8``, float64) or after `max_iter` iterations. A group of
removed pixels with no kept neighbour at all (e.g. everything removed) has no information to
impute from; CG returns 0 there (the minimum-norm solution), plus noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_DIRECT, _DIAGONAL = 1.0 / 6.0, 1.0 / 12.0


def _kernel(dtype: torch.dtype, device: torch.device) -> Tensor:
    k = torch.tensor(
        [[_DIAGONAL, _DIRECT, _DIAGONAL], [_DIRECT, 0.0, _DIRECT], [_DIAGONAL, _DIRECT, _DIAGONAL]],
        dtype=dtype,
        device=device,
    )
    return k.view(1, 1, 3, 3)


def linear_impute(
    inputs: Tensor, removed: Tensor, *, tol: float = 1e-8, max_iter: int = 5000, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Solve the neighbour-mean system; `inputs` [N, C, H, W], `removed` [N, H, W] bool.

    Returns a tensor like `inputs` where removed pixels hold the solution and kept pixels are unchanged.
    """
    n, c, h, w = inputs.shape
    k = _kernel(dtype, inputs.device)
    x = inputs.to(dtype).reshape(n * c, 1, h, w)
    r_mask = removed[:, None].expand(n, c, h, w).reshape(n * c, 1, h, w).to(dtype)
    weight_sum = F.conv2d(torch.ones(1, 1, h, w, dtype=dtype, device=inputs.device), k, padding=1)

    def apply(u: Tensor) -> Tensor:
        return r_mask * (weight_sum * u - F.conv2d(r_mask * u, k, padding=1))

    b = r_mask * F.conv2d((1.0 - r_mask) * x, k, padding=1)
    b_norm = b.flatten(1).norm(dim=1)
    u = torch.zeros_like(b)
    res = b.clone()
    z = res / weight_sum
    p = z.clone()
    rz = (res * z).flatten(1).sum(1)
    for it in range(max_iter):
        ap = apply(p)
        den = (p * ap).flatten(1).sum(1)
        alpha = torch.where(den > 0, rz / den.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(den))
        u = u + alpha.view(-1, 1, 1, 1) * p
        res = res - alpha.view(-1, 1, 1, 1) * ap
        if it % 8 == 7 and bool((res.flatten(1).norm(dim=1) <= tol * b_norm).all()):
            break
        z = res / weight_sum
        rz_new = (res * z).flatten(1).sum(1)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(rz))
        p = z + beta.view(-1, 1, 1, 1) * p
        rz = rz_new
    out = torch.where(r_mask.bool(), u, x)
    return out.reshape(n, c, h, w).to(inputs.dtype)


def noisy_linear_impute(
    inputs: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tol: float = 1e-8,
    max_iter: int = 5000,
) -> Tensor:
    """ROAD imputation: `linear_impute` plus N(0, noise^2) on the removed pixels (``noise=0``: none)."""
    out = linear_impute(inputs, removed, tol=tol, max_iter=max_iter)
    if noise > 0:
        eps = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        out = torch.where(removed[:, None], out + noise * eps, out)
    return out
