"""Pairwise similarity of attribution maps: ``f(a [B, ...], b [B, ...]) -> Tensor [B]``.

These functions compare two batches of maps image by image (``a[i]`` with ``b[i]``); they are
building blocks of the randomisation checks and of method-agreement studies, not metrics of
their own. Conventions:

- Maps are flattened per image; the feature order is the same for `a` and `b`.
- Computation is in float64 on the maps' device; results are float32 [B].
- Where a quantity is undefined (a correlation of a constant map, the cosine of an all-zero map,
  a z-score of a constant map, SSIM with zero data range) the result is NaN.
- Signs are kept: pass ``a.abs()`` to compare magnitudes only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from xaibench.errors import InputError, WeightsUnavailableError
from xaibench.stats import average_ranks, pearson_rows, spearman_rows

__all__ = ["cosine", "kendall", "l1", "l2", "lpips", "pearson", "spearman", "ssim", "top_k_intersection"]


def _check(name: str, t: Tensor, min_ndim: int = 2) -> None:
    if not isinstance(t, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim < min_ndim:
        raise InputError(f"{name} must be batched with shape [B, ...], got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN or Inf values")


def _pair(a: Tensor, b: Tensor, min_ndim: int = 2) -> tuple[Tensor, Tensor]:
    """Check a pair of map batches and return them flattened to float64 [B, N]."""
    _check("a", a, min_ndim)
    _check("b", b, min_ndim)
    if a.shape != b.shape:
        raise InputError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.detach().flatten(1).double(), b.detach().to(a.device).flatten(1).double()


def _zscore(x: Tensor) -> Tensor:
    """Standardise each row to mean 0 and (population) std 1; constant rows become NaN."""
    centred = x - x.mean(dim=1, keepdim=True)
    std = centred.pow(2).mean(dim=1, keepdim=True).sqrt()
    return centred / torch.where(std > 0, std, torch.nan)


def l1(a: Tensor, b: Tensor, *, zscore: bool = False) -> Tensor:
    """Manhattan distance ``sum |a - b|`` per image (as ``scipy.spatial.distance.cityblock``).

    zscore: standardise each map first (mean 0, population std 1), which makes the distance
    invariant to the scale and offset of each map; constant maps then give NaN.
    """
    x, y = _pair(a, b)
    if zscore:
        x, y = _zscore(x), _zscore(y)
    return (x - y).abs().sum(dim=1).float()


def l2(a: Tensor, b: Tensor, *, zscore: bool = False) -> Tensor:
    """Euclidean distance ``sqrt(sum (a - b)^2)`` per image; `zscore` as in `l1`."""
    x, y = _pair(a, b)
    if zscore:
        x, y = _zscore(x), _zscore(y)
    return (x - y).pow(2).sum(dim=1).sqrt().float()


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity ``a.b / (|a| |b|)`` (1 - ``scipy.spatial.distance.cosine``); NaN for a zero map."""
    x, y = _pair(a, b)
    denom = x.norm(dim=1) * y.norm(dim=1)
    return ((x * y).sum(dim=1) / torch.where(denom > 0, denom, torch.nan)).float()


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation per image (as ``scipy.stats.pearsonr``); NaN when a map is constant."""
    return pearson_rows(*_pair(a, b)).float()


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per image (as ``scipy.stats.spearmanr``: Pearson of average ranks)."""
    return spearman_rows(*_pair(a, b)).float()


def against(similarity: Callable[[Tensor, Tensor], Tensor], a: Tensor) -> Callable[[Tensor], Tensor]:
    """``b -> similarity(a, b)`` for many `b` and one reference `a`, with the work on `a` done once.

    For `spearman` the reference is checked and ranked once, for `pearson` checked and centred
    once (same results as calling the function each time); any other function is called as is.
    """
    if similarity not in (spearman, pearson):
        return lambda b: similarity(a, b)
    _check("a", a)
    x = a.detach().flatten(1).double()
    x = average_ranks(x) if similarity is spearman else x

    def compare(b: Tensor) -> Tensor:
        _check("b", b)
        if a.shape != b.shape:
            raise InputError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        y = b.detach().to(a.device).flatten(1).double()
        return pearson_rows(x, average_ranks(y) if similarity is spearman else y).float()

    return compare


def _inversions(v: Tensor) -> Tensor:
    """Pairs ``i < j`` with ``v[:, i] > v[:, j]`` per row, by a vectorised bottom-up merge sort.

    Rows are padded with +inf to a power of two; at each level every right block counts, with
    ``searchsorted``, the elements of its (sorted) left neighbour that exceed each of its values.
    O(N log^2 N) per row.
    """
    b, n = v.shape
    size = 1 << max(n - 1, 0).bit_length()
    x = torch.cat([v, v.new_full((b, size - n), torch.inf)], dim=1)
    total = torch.zeros(b, dtype=torch.float64, device=v.device)
    width = 1
    while width < size:
        blocks = x.view(b, size // (2 * width), 2, width)
        left = blocks[:, :, 0].reshape(-1, width).contiguous()
        right = blocks[:, :, 1].reshape(-1, width).contiguous()
        greater = width - torch.searchsorted(left, right, right=True)
        total += greater.view(b, -1).sum(dim=1).double()
        x = blocks.reshape(b, -1, 2 * width).sort(dim=2).values.reshape(b, size)
        width *= 2
    return total


def _tied_pairs(v: Tensor) -> Tensor:
    """Number of pairs with equal values per row: ``sum_groups t (t - 1) / 2``."""
    sv = v.sort(dim=1).values
    count = torch.searchsorted(sv, v.contiguous(), right=True) - torch.searchsorted(sv, v.contiguous())
    return (count - 1).double().sum(dim=1) / 2


def kendall(a: Tensor, b: Tensor) -> Tensor:
    """Kendall's tau-b per image (as ``scipy.stats.kendalltau``, ties corrected); NaN for a constant map.

    ``tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2))`` with ``n0 = N (N - 1) / 2``, ``n1`` / ``n2`` the
    pairs tied in `a` / `b` and ``n3`` those tied in both, so ``C - D = n0 - n1 - n2 + n3 - 2 D``.
    The discordant pairs ``D`` are the inversions of `b` sorted by (`a`, `b`): O(N log^2 N).
    """
    x, y = _pair(a, b)
    n = x.shape[1]
    # integer ranks (lowest index of each tie group) make a lexicographic (a, b) key exact
    rx = torch.searchsorted(x.sort(dim=1).values, x.contiguous())
    ry = torch.searchsorted(y.sort(dim=1).values, y.contiguous())
    key = rx * (n + 1) + ry
    order = key.argsort(dim=1)
    discordant = _inversions(ry.gather(1, order).double())
    n0 = n * (n - 1) / 2
    n1, n2, n3 = _tied_pairs(x), _tied_pairs(y), _tied_pairs(key.double())
    denom = ((n0 - n1) * (n0 - n2)).sqrt()
    s = n0 - n1 - n2 + n3 - 2 * discordant
    return (s / torch.where(denom > 0, denom, torch.nan)).clamp(-1.0, 1.0).float()


def top_k_intersection(a: Tensor, b: Tensor, k: int | float = 0.1) -> Tensor:
    """Fraction of the `k` highest-valued features of `a` that are also among the `k` highest of `b`.

    k: an int counts features, a float in (0, 1] is a fraction of them (rounded, at least 1).
    Ties at the k-th value are broken by ``torch.topk`` (deterministic on a given device).
    """
    x, y = _pair(a, b)
    n = x.shape[1]
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise InputError(f"k must be an int or a float fraction, got {k!r}")
    count = k if isinstance(k, int) else max(1, round(k * n))
    if isinstance(k, float) and not 0 < k <= 1:
        raise InputError(f"a float k is a fraction in (0, 1], got {k}")
    if not 1 <= count <= n:
        raise InputError(f"k must be in [1, {n}] features, got {k}")
    in_a = torch.zeros_like(x, dtype=torch.bool).scatter_(1, x.topk(count, dim=1).indices, True)
    in_b = torch.zeros_like(y, dtype=torch.bool).scatter_(1, y.topk(count, dim=1).indices, True)
    return ((in_a & in_b).sum(dim=1).double() / count).float()


def _ssim_kernel(gaussian: bool, win_size: int, sigma: float, device: torch.device) -> Tensor:
    if gaussian:
        radius = int(3.5 * sigma + 0.5)  # scipy.ndimage.gaussian_filter with truncate=3.5
        x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
    else:
        k = torch.ones(win_size, dtype=torch.float64, device=device)
    return k / k.sum()


def ssim(
    a: Tensor,
    b: Tensor,
    *,
    data_range: float | None = None,
    gaussian_weights: bool = False,
    win_size: int = 7,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    use_sample_covariance: bool = True,
) -> Tensor:
    """Mean structural similarity of 2-D maps [B, H, W], as ``skimage.metrics.structural_similarity``.

    Defaults are skimage's: a uniform ``win_size`` x ``win_size`` window (7), ``K1 = 0.01``,
    ``K2 = 0.03`` and sample covariances (``N / (N - 1)``). ``gaussian_weights=True`` uses a
    Gaussian window of std `sigma` truncated at 3.5 std (11 x 11 for 1.5), as skimage; pass
    ``use_sample_covariance=False`` too for Wang et al.'s original setting. The SSIM image is
    averaged over the positions where the window fits inside the map (skimage crops the same
    border). data_range: ``None`` uses each pair's joint range ``max(a, b) - min(a, b)`` (the
    convention of Quantus' ``ssim``); a zero range gives NaN.
    """
    if a.ndim != 3 or b.ndim != 3:
        raise InputError(f"ssim compares 2-D maps [B, H, W], got {tuple(a.shape)} and {tuple(b.shape)}")
    x, y = _pair(a, b)
    x, y = x.view(a.shape), y.view(a.shape)
    kernel = _ssim_kernel(gaussian_weights, win_size, sigma, x.device)
    size = kernel.numel()
    if size % 2 == 0 or size > min(a.shape[1:]):
        raise InputError(f"the SSIM window ({size}) must be odd and fit in maps of size {tuple(a.shape[1:])}")
    if data_range is None:
        rng = torch.maximum(x.flatten(1).amax(1), y.flatten(1).amax(1)) - torch.minimum(
            x.flatten(1).amin(1), y.flatten(1).amin(1)
        )
    else:
        rng = torch.full((a.shape[0],), float(data_range), dtype=torch.float64, device=x.device)
    wy, wx = kernel.view(1, 1, -1, 1), kernel.view(1, 1, 1, -1)

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t[:, None], wy), wx)[:, 0]

    n_px = size * size
    cov_norm = n_px / (n_px - 1) if use_sample_covariance else 1.0
    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    c1 = ((k1 * rng) ** 2).view(-1, 1, 1)
    c2 = ((k2 * rng) ** 2).view(-1, 1, 1)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    out = s.flatten(1).mean(dim=1)
    return torch.where(rng > 0, out, torch.nan).float()


_LPIPS_HELP = (
    "LPIPS needs the 'lpips' package (pip install lpips; it ships the calibrated linear layers) and the "
    "torchvision weights of its backbone in the torch hub cache ({cache}), e.g. alexnet-owt-7be5be79.pth "
    "for net='alex' or vgg16-397923af.pth for net='vgg'. Copy them there from a machine with network access."
)


def lpips(a: Tensor, b: Tensor, *, net: str = "alex") -> Tensor:
    """LPIPS distance (Zhang et al. 2018) between maps [B, H, W], with the pretrained `net` backbone.

    Each pair is scaled jointly from its range ``[min(a, b), max(a, b)]`` to [-1, 1] and repeated
    over 3 channels (LPIPS' input convention). Only pretrained weights found locally are used; when
    they are missing a `WeightsUnavailableError` says how to supply them. No random backbone is
    ever used.
    """
    if net not in ("alex", "vgg", "squeeze"):
        raise InputError(f"net must be 'alex', 'vgg' or 'squeeze', got {net!r}")
    if a.ndim != 3:
        raise InputError(f"lpips compares 2-D maps [B, H, W], got {tuple(a.shape)}")
    x, y = _pair(a, b)
    cache = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    try:
        import lpips as lpips_pkg  # type: ignore[import-not-found]
    except ImportError as err:
        raise WeightsUnavailableError(_LPIPS_HELP.format(cache=cache)) from err
    try:
        model = lpips_pkg.LPIPS(net=net, pretrained=True, verbose=False).to(x.device).eval()
    except Exception as err:  # the backbone download fails offline
        raise WeightsUnavailableError(_LPIPS_HELP.format(cache=cache) + f" ({err})") from err
    lo = torch.minimum(x.amin(1), y.amin(1)).view(-1, 1)
    hi = torch.maximum(x.amax(1), y.amax(1)).view(-1, 1)
    span = torch.where(hi > lo, hi - lo, 1.0)
    shape = (a.shape[0], 1, *a.shape[1:])
    xs = ((x - lo) / span * 2 - 1).float().view(shape).expand(-1, 3, -1, -1)
    ys = ((y - lo) / span * 2 - 1).float().view(shape).expand(-1, 3, -1, -1)
    with torch.no_grad():
        return model(xs, ys).flatten().float()
