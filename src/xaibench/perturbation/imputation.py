"""ROAD's noisy linear imputation (Rong et al., 2022), batched in torch.

Every removed pixel takes the weighted mean of its in-image 8 neighbours (weight 1/6 for the four
direct neighbours, 1/12 for the four diagonal ones; weights of neighbours outside the image are
dropped and the rest renormalised), where neighbours that are themselves removed are unknowns
too. This couples all removed pixels of an image into one sparse linear system per image and
channel; Gaussian noise of standard deviation `noise` is then added to the imputed pixels.

Solver: the system matrix is ``diag(S) - W`` restricted to the removed pixels (``S`` the sum of
in-image neighbour weights, ``W`` the neighbour weights), symmetric and positive definite as long
as every connected group of removed pixels touches a kept pixel. The iterative methods solve it
for all images, channels and masks of a batch at once with preconditioned conjugate gradients in
float64, where each matrix product is 8 shifted adds. Methods (``method``):

- ``"cg"``: Jacobi (diagonal), started from the same problem solved on a 2x coarser grid
  (recursively down to 16-32 px, coarse levels to ``tol=1e-3``). Fast when the removed pixels
  are scattered (noisy maps).
- ``"multigrid"``: one symmetric geometric V-cycle (2 damped-Jacobi sweeps before and after,
  omega = 2/3; piecewise-constant prolongation and its transpose as restriction; a coarse cell is
  unknown when any of its pixels is; 20 sweeps on the coarsest grid, 8-16 px). Keeps the
  iteration count near 20 on large contiguous removed regions (smooth maps), where Jacobi-CG
  needs hundreds.
- ``"banded"``: an exact direct solve on the CPU (no iterations, no tolerance). The removed
  pixels of an image, numbered in raster order along its longer side, give a banded SPD matrix
  (bandwidth at most the number of removed pixels in a window of one row plus one pixel), shared
  by the image's channels and factorised once by LAPACK's ``dpbsv`` (band Cholesky, via SciPy),
  image by image. Cost about ``removed * bandwidth**2`` flops: about 1 ms for a 3x32x32 image,
  where the batched iterations mostly pay per-operator overhead; it grows with the 4th power of the
  image side, so the iterations win on large images with many removed pixels.
- ``"auto"`` (default): ``"banded"`` for CPU images whose estimated banded cost is at most
  ``_BANDED_MAX_FLOPS`` (any mask up to about 112x112 px, larger images with fewer removed
  pixels); the others (and every image on a GPU) go to multigrid when more than half of their
  removed pixels have all 8 neighbours removed too, else to Jacobi-CG.

Iterations stop when every system's residual satisfies ``||r|| <= tol * ||b||`` (default
``tol=1e-6``, checked every 8 iterations with Jacobi, every iteration with multigrid; max abs
error about 1e-5 on 96-224 px images, far below the default noise 0.01) or after `max_iter`
iterations; converged systems leave the working set. A group of removed pixels with no kept
neighbour at all (e.g. everything removed) has no information to impute from; CG returns 0
there (the minimum-norm solution), plus noise, and so does the banded solve.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import lapack
from torch import Tensor

from xaibench.errors import InputError

_DIRECT, _DIAGONAL = 1.0 / 6.0, 1.0 / 12.0
_COARSE_TOL = 1e-3  # coarse levels only provide the initial guess of the next finer level
_MIN_SIDE = 16  # no coarser initial-guess level below this side length
_MG_MIN_SIDE = 8  # coarsest multigrid level: sides in [8, 16)
_OMEGA = 2.0 / 3.0  # damped Jacobi smoothing
_COARSEST_SWEEPS = 20
_BANDED_MAX_FLOPS = 2e8  # "auto": banded direct solve below this estimated cost per image (~30 ms)
_CPU_SOLVE_BATCH = 8  # "auto" on CPU: images per iterative solve (small working sets stay in cache)
_STACK_FLOPS = 5e5  # band solves stacked while widening the band costs less than this (~0.1 ms)
METHODS = ("auto", "cg", "multigrid", "banded")
# forward neighbours in raster order: (row offset, column offset, weight)
_FORWARD = ((0, 1, _DIRECT), (1, -1, _DIAGONAL), (1, 0, _DIRECT), (1, 1, _DIAGONAL))


def _neighbour_sum(u: Tensor) -> Tensor:
    """Weighted sum of the 8 neighbours of every pixel of u [M, 1, H, W] (zero outside)."""
    p = F.pad(u, (1, 1, 1, 1))
    direct = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    diagonal = p[..., :-2, :-2] + p[..., :-2, 2:] + p[..., 2:, :-2] + p[..., 2:, 2:]
    return direct * _DIRECT + diagonal * _DIAGONAL


Level = tuple[Tensor, Tensor]  # (unknown mask [M, 1, h, w], neighbour weight sums [1, 1, h, w])


def _apply(v: Tensor, mask: Tensor, weight_sum: Tensor) -> Tensor:
    return mask * (weight_sum * v - _neighbour_sum(mask * v))


def _mask_levels(r_mask: Tensor, multigrid: bool) -> list[Level]:
    levels = []
    m = r_mask
    while True:
        levels.append((m, _neighbour_sum(torch.ones_like(m[:1]))))
        h, w = m.shape[-2:]
        if not multigrid or min(h, w) < 2 * _MG_MIN_SIDE:
            return levels
        m = F.max_pool2d(F.pad(m, (0, w % 2, 0, h % 2)), 2)


def _v_cycle(r: Tensor, levels: list[Level], level: int = 0) -> Tensor:
    """Symmetric V-cycle for ``A e = r`` from e = 0 (a fixed linear SPD map of r)."""
    m, s = levels[level]
    dinv = m * (_OMEGA / s)
    coarsest = level == len(levels) - 1
    sweeps = _COARSEST_SWEEPS if coarsest else 2
    u = dinv * r
    for _ in range(sweeps - 1):
        u = u + dinv * (r - _apply(u, m, s))
    if coarsest:
        return u
    h, w = r.shape[-2:]
    rc = F.avg_pool2d(F.pad(r - _apply(u, m, s), (0, w % 2, 0, h % 2)), 2) * 4
    ec = _v_cycle(rc, levels, level + 1)
    u = u + m * F.interpolate(ec, scale_factor=2, mode="nearest")[..., :h, :w]
    for _ in range(sweeps):
        u = u + dinv * (r - _apply(u, m, s))
    return u


def _pcg(x: Tensor, r_mask: Tensor, u: Tensor, tol: float, max_iter: int, multigrid: bool) -> tuple[Tensor, int]:
    """Preconditioned CG on the removed pixels, from the initial guess `u`; (solution, iterations).

    Converged systems are written out and dropped from the working set (every 8 iterations with
    the cheap Jacobi preconditioner, every iteration with multigrid), so an easy system does not
    iterate as long as the hardest one of its chunk.
    """
    levels = _mask_levels(r_mask, multigrid)
    weight_sum = levels[0][1]
    tiny = torch.finfo(x.dtype).tiny

    def precondition(res: Tensor, lv: list[Level]) -> Tensor:
        return _v_cycle(res, lv) if multigrid else res / weight_sum

    b = r_mask * _neighbour_sum((1.0 - r_mask) * x)
    limit = tol * b.flatten(1).norm(dim=1)
    u = r_mask * u
    res = b - _apply(u, r_mask, weight_sum)
    p = precondition(res, levels)
    rz = (res * p).flatten(1).sum(1)
    out = u.clone()
    active = torch.arange(x.shape[0], device=x.device)
    check_every = 1 if multigrid else 8
    it = 0
    for it in range(1, max_iter + 1):
        if it % check_every == 1 % check_every:
            done = res.flatten(1).norm(dim=1) <= limit
            if bool(done.any()):
                out[active[done]] = u[done]
                keep = ~done
                if not bool(keep.any()):
                    break
                active, u, res, p, rz, limit = (t[keep] for t in (active, u, res, p, rz, limit))
                levels = [(m[keep], s) for m, s in levels]
        mask = levels[0][0]
        ap = _apply(p, mask, weight_sum)
        den = (p * ap).flatten(1).sum(1)
        alpha = torch.where(den > 0, rz / den.clamp_min(tiny), torch.zeros_like(den))
        u = u + alpha.view(-1, 1, 1, 1) * p
        res = res - alpha.view(-1, 1, 1, 1) * ap
        z = precondition(res, levels)
        rz_new = (res * z).flatten(1).sum(1)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        p = z + beta.view(-1, 1, 1, 1) * p
        rz = rz_new
    else:
        out[active] = u  # max_iter reached: the current iterate
    return out, it


def _cascade(x: Tensor, r_mask: Tensor, tol: float, max_iter: int) -> Tensor:
    """Solve coarse-to-fine: a 2x coarser problem (2x2 cells, mean of kept pixels; a cell is removed
    when all its pixels are) gives the bilinearly upsampled initial guess of this level."""
    h, w = x.shape[-2:]
    guess = torch.zeros_like(x)
    if min(h, w) >= 2 * _MIN_SIDE:
        known = 1.0 - r_mask
        pad = (0, w % 2, 0, h % 2)
        k_sum = F.avg_pool2d(F.pad(known, pad), 2) * 4
        v_sum = F.avg_pool2d(F.pad(x * known, pad), 2) * 4
        coarse_r = (k_sum == 0).to(x.dtype)
        coarse_x = v_sum / k_sum.clamp_min(1.0)
        coarse = _cascade(coarse_x, coarse_r, _COARSE_TOL, max_iter)
        guess = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]
    u, _ = _pcg(x, r_mask, guess, tol, max_iter, multigrid=False)
    return torch.where(r_mask.bool(), u, x)


def _mostly_interior(r_mask: Tensor) -> bool:
    """True when more than half of the removed pixels have all 8 neighbours removed."""
    interior = -F.max_pool2d(-F.pad(r_mask, (1, 1, 1, 1), value=1.0), 3, stride=1)
    return bool(interior.sum() * 2 > r_mask.sum())


def _banded_cost(removed: Tensor) -> Tensor:
    """Upper bound of the banded solve's cost ``m * kd**2`` per image of `removed` [N, H, W] (H >= W):
    m removed pixels; kd <= removed pixels in any raster window of W + 1 pixels."""
    n, h, w = removed.shape
    flat = removed.reshape(n, h * w).long()
    m = flat.sum(1)
    if h * w > w + 1:
        cs = F.pad(flat.cumsum(1), (1, 0))
        kd = (cs[:, w + 1 :] - cs[:, : -(w + 1)]).amax(1)
    else:
        kd = m
    return m.double() * torch.minimum(kd, m).double() ** 2


def _band_solve(ab: Tensor | np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """LAPACK ``dpbsv`` (lower band storage); None when the matrix is not positive definite."""
    _, sol, info = lapack.dpbsv(ab, b, lower=1, overwrite_ab=1, overwrite_b=1)
    return sol if info == 0 else None


def _banded(x: Tensor, removed: Tensor) -> tuple[Tensor, list[int]]:
    """Exact solve of every image of `x` [N, C, H, W] (float64, CPU; H >= W) with `removed` [N, H, W].

    Unknowns are the removed pixels in raster order; each image's matrix (diag S - W restricted to
    them) goes to LAPACK's lower band storage, its C channels are the right-hand sides. Images of
    similar bandwidth are stacked into one block-diagonal band matrix (one LAPACK call, no coupling
    between blocks; the blocks are solved exactly as alone). Returns the images with the removed
    pixels replaced, and the indices of images found not positive definite (left unchanged).
    """
    n, c, h, w = x.shape
    size = h * w
    r = removed[:, None].to(x.dtype)
    rhs = _neighbour_sum(((1.0 - r) * x).reshape(n * c, 1, h, w)).reshape(n, c, size).numpy()
    diag = _neighbour_sum(torch.ones(1, 1, h, w, dtype=x.dtype)).reshape(size).numpy()
    out = x.reshape(n, c, size).clone()
    out_np = out.numpy()
    rem = removed.reshape(n, size).numpy()
    m = rem.sum(1)
    out_np[m == size] = 0.0  # nothing kept: no information, the minimum-norm solution 0 (as CG)
    todo = np.flatnonzero((m > 0) & (m < size))
    if todo.size == 0:
        return out.reshape(n, c, h, w), []
    rem = rem[todo]
    idx = np.cumsum(rem, axis=1) - 1
    col = np.arange(size) % w
    # per forward neighbour (flat offset d): pairs of removed pixels (p, p + d) inside the image
    links = []
    kd = np.zeros(todo.size, dtype=np.int64)
    for di, dj, wt in _FORWARD:
        d = di * w + dj
        if d >= size or (dj != 0 and w == 1):
            continue
        ok = (col[: size - d] + dj >= 0) & (col[: size - d] + dj < w)
        both = rem[:, : size - d] & rem[:, d:] & ok
        links.append((d, wt, both))
        kd = np.maximum(kd, np.where(both, idx[:, d:] - idx[:, : size - d], 0).max(1))
    # groups of images of similar bandwidth (cost ~ unknowns * kd^2 with the group's largest kd)
    # (by increasing kd, an image joins the current stack unless raising the stack's bandwidth to
    # its kd costs the images already there more than `_STACK_FLOPS`, about one LAPACK call's overhead)
    order = np.argsort(kd, kind="stable")
    groups: list[np.ndarray] = []
    first, unknowns = 0, 0
    for i in range(order.size + 1):
        if i == order.size or unknowns * (int(kd[order[i]]) ** 2 - int(kd[order[i - 1]]) ** 2) > _STACK_FLOPS:
            if i > first:
                groups.append(order[first:i])
            first, unknowns = i, 0
        if i < order.size:
            unknowns += int(m[todo[order[i]]])
    failed: list[int] = []
    for g in groups:
        if g.size > 1:
            sol = _solve_stack(g, rem, links, diag, rhs[todo[g]], int(kd[g].max()))
            if sol is not None:
                _scatter(out_np, todo[g], rem[g], sol)
                continue
        for k in g:  # one image (or a stack LAPACK refused: find the culprit)
            sol = _solve_stack(np.array([k]), rem, links, diag, rhs[todo[k : k + 1]], int(kd[k]))
            if sol is None:
                failed.append(int(todo[k]))
            else:
                _scatter(out_np, todo[k : k + 1], rem[k : k + 1], sol)
    return out.reshape(n, c, h, w), failed


def _solve_stack(
    g: np.ndarray, rem: np.ndarray, links: list, diag: np.ndarray, rhs: np.ndarray, kd: int
) -> np.ndarray | None:
    """Solve the images `g` (rows of `rem`) as one block-diagonal band system; [unknowns, C] or None."""
    rg = rem[g]
    gidx = (np.cumsum(rg.ravel()) - 1).reshape(rg.shape)  # stacked numbering, image after image
    total = int(gidx[-1, -1]) + 1
    size = rg.shape[1]
    ab = np.zeros((kd + 1, total), order="F")
    ab[0] = np.broadcast_to(diag, rg.shape)[rg]
    for d, wt, both in links:
        bg = both[g]
        lo = gidx[:, : size - d][bg]
        ab[gidx[:, d:][bg] - lo, lo] = -wt
    b = np.asfortranarray(rhs.transpose(0, 2, 1)[rg])  # [unknowns, C]
    return _band_solve(ab, b)


def _scatter(out_np: np.ndarray, images: np.ndarray, rg: np.ndarray, sol: np.ndarray) -> None:
    block = out_np[images].transpose(0, 2, 1)  # [g, size, C] copy
    block[rg] = sol
    out_np[images] = block.transpose(0, 2, 1)


def _iterative(x: Tensor, removed: Tensor, tol: float, max_iter: int, method: str) -> Tensor:
    """Preconditioned CG (see the module doc) on `x` [N, C, H, W] in its dtype."""
    n, c, h, w = x.shape
    x = x.reshape(n * c, 1, h, w)
    r_mask = removed[:, None].expand(n, c, h, w).reshape(n * c, 1, h, w).to(x.dtype)
    if method == "multigrid" or (method == "auto" and _mostly_interior(r_mask)):
        u, _ = _pcg(x, r_mask, torch.zeros_like(x), tol, max_iter, multigrid=True)
        out = torch.where(r_mask.bool(), u, x)
    else:
        out = _cascade(x, r_mask, tol, max_iter)
    return out.reshape(n, c, h, w)


def linear_impute(
    inputs: Tensor,
    removed: Tensor,
    *,
    tol: float = 1e-6,
    max_iter: int = 5000,
    method: str = "auto",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Solve the neighbour-mean system; `inputs` [N, C, H, W], `removed` [N, H, W] bool.

    Returns a tensor like `inputs` where removed pixels hold the solution and kept pixels are
    unchanged. `method`: ``"auto"``, ``"cg"``, ``"multigrid"`` or ``"banded"`` (see the module
    doc; ``"banded"`` solves on the CPU in float64 whatever the device and `dtype`; `tol`,
    `max_iter` and `dtype` apply to the iterative solves). With ``"auto"`` on CPU, the images left
    to the iterative solver are solved `_CPU_SOLVE_BATCH` at a time.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    n, c, h, w = inputs.shape
    removed = removed.bool()
    if method == "banded" or (method == "auto" and inputs.device.type == "cpu"):
        transpose = w > h  # number along the longer side: bandwidth ~ the shorter one
        xt = inputs.transpose(-1, -2) if transpose else inputs
        rt = removed.transpose(-1, -2) if transpose else removed
        if method == "banded":
            direct = torch.ones(n, dtype=torch.bool)
        else:
            direct = _banded_cost(rt.cpu()) <= _BANDED_MAX_FLOPS
        if bool(direct.any()):
            sel = direct.nonzero()[:, 0]
            solved, failed = _banded(xt.detach()[sel.to(xt.device)].cpu().double().contiguous(),
                                     rt[sel.to(rt.device)].cpu().contiguous())
            direct[sel[failed]] = False
            solved = solved.transpose(-1, -2) if transpose else solved
            out = inputs.to(dtype).clone()
            ok = direct.nonzero()[:, 0]
            keep = torch.ones(solved.shape[0], dtype=torch.bool)
            keep[failed] = False
            out[ok.to(out.device)] = solved[keep].to(out.device, dtype)
            rest = (~direct).nonzero()[:, 0].to(inputs.device)
            step = _CPU_SOLVE_BATCH if inputs.device.type == "cpu" else max(1, rest.numel())
            for i in range(0, rest.numel(), step):
                part = rest[i : i + step]
                out[part] = _iterative(inputs[part].to(dtype), removed[part], tol, max_iter,
                                       "auto" if method == "banded" else method)
            return out.to(inputs.dtype)
    if method == "banded":
        method = "auto"
    return _iterative(inputs.to(dtype), removed, tol, max_iter, method).to(inputs.dtype)


def noisy_linear_impute(
    inputs: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tol: float = 1e-6,
    max_iter: int = 5000,
    method: str = "auto",
) -> Tensor:
    """ROAD imputation: `linear_impute` plus N(0, noise^2) on the removed pixels (``noise=0``: none)."""
    out = linear_impute(inputs, removed, tol=tol, max_iter=max_iter, method=method)
    if noise > 0:
        eps = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        out = torch.where(removed[:, None], out + noise * eps, out)
    return out
