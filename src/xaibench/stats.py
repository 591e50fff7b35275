"""Row-wise statistics shared by the metrics, the perturbation curves and MAPS: average ranks,
Pearson and Spearman correlation of each row pair of two [B, K] tensors.

One rule for undefined correlations: a row whose K values are all equal (K < 2 included) has no
variance, and its correlation with anything is NaN. Constancy is decided on the values as given,
before any arithmetic (the float64 mean of K equal values need not equal them, which would leave a
rounding residue to correlate). Results are float64 on the inputs' device, clamped to [-1, 1]
(``scipy.stats.pearsonr`` / ``spearmanr`` per row).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def constant_rows(x: Tensor) -> Tensor:
    """[B] bool: rows of `x` [B, K] whose values are all equal (every row when K < 2)."""
    if x.shape[1] < 2:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return x.amax(dim=1) == x.amin(dim=1)


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row pair of `a`, `b` [B, K] (float64); NaN where a row is constant."""
    undefined = constant_rows(a) | constant_rows(b)
    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    undefined |= den == 0  # underflow
    r = (a * b).sum(dim=1) / den.where(~undefined, 1.0)
    return r.clamp(-1.0, 1.0).masked_fill(undefined, torch.nan)


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..K per row of `x` [B, K] (float64), ties sharing their average rank
    (``scipy.stats.rankdata(x, method="average", axis=1)``).

    One sort; each run of equal sorted values spans positions [first, last] and gets
    ``(first + last + 2) / 2``. On CPU the work runs in NumPy (its sort is about 2x faster than
    ``torch.sort`` there; ties are averaged, so the sort need not be stable); elsewhere a running
    max / reversed running min over the runs (no ``searchsorted``).
    """
    if x.device.type == "cpu":
        return torch.from_numpy(_average_ranks_np(x.detach().double().numpy()))
    return _average_ranks_torch(x)


def _average_ranks_torch(x: Tensor) -> Tensor:
    s, order = x.sort(dim=1)
    n = x.shape[1]
    pos = torch.arange(n, device=x.device).expand_as(s)
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, pos, 0).cummax(dim=1).values
    last = torch.where(ends, pos, n - 1).flip(1).cummin(dim=1).values.flip(1)
    ranks = (first + last + 2).double() / 2
    return torch.empty_like(ranks).scatter_(1, order, ranks)


def _average_ranks_np(x: np.ndarray) -> np.ndarray:
    b, n = x.shape
    out = np.empty((b, n), dtype=np.float64)
    if n == 0:
        return out
    order = np.argsort(x, axis=1)
    s = np.take_along_axis(x, order, axis=1)
    starts = np.empty((b, n), dtype=bool)
    starts[:, 0] = True
    np.not_equal(s[:, 1:], s[:, :-1], out=starts[:, 1:])
    if starts.all():  # no ties: rank = sorted position + 1
        ranks = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), (b, n))
    else:
        first = np.flatnonzero(starts)  # flat position of each run's first element (runs never span rows)
        last = np.empty_like(first)
        last[:-1] = first[1:] - 1
        last[-1] = b * n - 1
        # mean flat position + 1 of each run, repeated over the run, minus the row's offset
        ranks = np.repeat((first + last + 2) / 2, last - first + 1).reshape(b, n)
        ranks -= np.arange(0, b * n, n, dtype=np.float64)[:, None]
    np.put_along_axis(out, order, ranks, axis=1)
    return out


def spearman_rows(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation of each row pair of `a`, `b` [B, K] (float64): Pearson of the average
    ranks; NaN where a row is constant."""
    return pearson_rows(average_ranks(a), average_ranks(b))
