"""Perturbation engine: baselines, ranking, lazily built masks, chunking, noisy linear imputation."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from xaibench.errors import InputError, UnknownNameError
from xaibench.perturbation.baselines import BASELINES, fill


@pytest.fixture
def imgs() -> torch.Tensor:
    return torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(1))


def test_baseline_constants_and_mean(imgs: torch.Tensor) -> None:
    assert torch.equal(fill(imgs, "black"), torch.zeros_like(imgs))
    assert torch.equal(fill(imgs, "white"), torch.ones_like(imgs))
    m = fill(imgs, "mean")
    for b in range(3):
        for c in range(3):
            assert torch.allclose(m[b, c], imgs[b, c].mean().expand(20, 24))


def test_baseline_uniform_seeded(imgs: torch.Tensor) -> None:
    a, b, c = fill(imgs, "uniform", seed=3), fill(imgs, "uniform", seed=3), fill(imgs, "uniform", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < 1 and abs(float(a.mean()) - 0.5) < 0.05


@pytest.mark.parametrize("k,s", [(5, 1.5), (11, 3.0), (19, 20.0)])
def test_gaussian_blur_matches_torchvision(imgs: torch.Tensor, k: int, s: float) -> None:
    ref = TF.gaussian_blur(imgs, [k, k], [s, s])
    assert torch.allclose(fill(imgs, "gaussian_blur", kernel_size=k, sigma=s), ref, atol=1e-6)


def test_box_blur_is_reflect_padded_mean(imgs: torch.Tensor) -> None:
    ref = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(imgs, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    assert torch.allclose(fill(imgs, "box_blur", kernel_size=5, padding="reflect"), ref, atol=1e-6)


@pytest.mark.parametrize(("height", "kernel"), [(20, 9), (50, 11), (64, 13), (224, 45), (230, 47)])
def test_box_blur_default_is_gomez_original(height: int, kernel: int) -> None:
    """Gomez et al.'s blur_data: a max(H // 5, 9) box made odd, zero padding (the sum over the window
    divided by the full window size, so borders darken)."""
    x = torch.rand(2, 3, height, 30, generator=torch.Generator().manual_seed(1))
    ref = torch.nn.functional.avg_pool2d(x, kernel, stride=1, padding=kernel // 2, count_include_pad=True)
    assert torch.allclose(fill(x, "box_blur"), ref, atol=1e-6)
    ones = fill(torch.ones(1, 1, height, height), "box_blur")[0, 0]
    half = kernel // 2 + 1
    assert ones[0, 0].item() == pytest.approx(half * half / kernel**2)  # corner: half a window each way
    assert ones[height // 2, height // 2].item() == pytest.approx(1.0)


def test_large_kernel_is_truncated_to_image(imgs: torch.Tensor) -> None:
    out = fill(imgs, "gaussian_blur")  # default 51 > 2*20-1: truncated to 39 rows / 47 cols
    ref = TF.gaussian_blur(imgs, [47, 39], [20.0, 20.0])
    assert torch.allclose(out, ref, atol=1e-6)


def test_baseline_bad_names_and_params(imgs: torch.Tensor) -> None:
    with pytest.raises(UnknownNameError, match="gaussian_blur"):
        fill(imgs, "gaussian-blurr")
    with pytest.raises(InputError):
        fill(imgs, "box_blur", kernel_size=4)
    with pytest.raises(InputError):
        fill(imgs, "black", sigma=2.0)
    assert "uniform" in BASELINES and "box-blur" in BASELINES


# ---------------------------------------------------------------- ranking, masks, chunking

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402

from xaibench.perturbation.engine import (  # noqa: E402
    perturbation_curves,
    rank_features,
    step_counts,
    step_saliency,
)
from xaibench.perturbation.imputation import linear_impute, noisy_linear_impute  # noqa: E402


class Recorder(torch.nn.Module):
    """Parameter-free model that records every input it sees and scores the image sum."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        s = x.flatten(1).sum(1)
        return torch.stack([s, -s, 0 * s], dim=1)


def brute_force_order(a: np.ndarray, descending: bool) -> list[int]:
    flat = a.ravel().tolist()
    key = (lambda i: (-flat[i], i)) if descending else (lambda i: (flat[i], i))
    return sorted(range(len(flat)), key=key)


@pytest.mark.parametrize("mode", ["delete", "insert"])
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_lazy_masks_equal_brute_force(mode: str, order: str) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 5, 4, generator=g)
    a = torch.randint(0, 4, (2, 5, 4), generator=g).float()  # many ties
    base = fill(x, "uniform", seed=9)
    ranking = rank_features(a, (5, 4), order=order)
    counts = step_counts(ranking.num_features, steps=4)
    rec = Recorder()
    perturbation_curves(rec, x, torch.tensor([0, 1]), ranking, counts, mode=mode, baseline=base, output="logit",
                        max_batch=3)
    seen = torch.cat(rec.seen).view(2, 5, 3, 5, 4)
    for b in range(2):
        ordered = brute_force_order(a[b].numpy(), descending=order == "morf")
        for k in range(5):
            n = [0, 5, 10, 15, 20][k]
            chosen = torch.zeros(20, dtype=torch.bool)
            chosen[ordered[:n]] = True
            chosen = chosen.view(1, 5, 4)
            ref = torch.where(chosen, base[b], x[b]) if mode == "delete" else torch.where(chosen, x[b], base[b])
            assert torch.equal(seen[b, k], ref)


def test_non_cumulative_perturbs_only_the_step() -> None:
    x = torch.rand(1, 1, 2, 2, generator=torch.Generator().manual_seed(0)) + 0.1
    a = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    ranking = rank_features(a, (2, 2))
    counts = step_counts(ranking.num_features, features_per_step=1)
    curves = perturbation_curves(Recorder(), x, torch.tensor([0]), ranking, counts, cumulative=False, output="logit")
    total = float(x.sum())
    expected = [total] + [total - float(v) for v in x.flatten()]
    assert torch.allclose(curves[0], torch.tensor(expected), atol=1e-6)


def test_chunking_does_not_change_curves() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 10 * 10, 5)).eval()
    g = torch.Generator().manual_seed(2)
    x, a = torch.rand(5, 3, 12, 12, generator=g), torch.randn(5, 12, 12, generator=g)
    t = torch.tensor([0, 1, 2, 3, 4])
    ranking = rank_features(a, (12, 12), order="random", seed=4)
    counts = step_counts(ranking.num_features, steps=7)
    runs = [
        perturbation_curves(model, x, t, ranking, counts, baseline="uniform", max_batch=m, seed=1) for m in (1, 4, 13, 1000)
    ]
    for r in runs[1:]:
        assert torch.allclose(r, runs[0], atol=1e-6, rtol=0)
    assert runs[0].shape == (5, 8)


def test_low_resolution_map_ranked_natively_then_nearest() -> None:
    a = torch.tensor([[[1.0, 4.0], [3.0, 2.0]]])
    r = rank_features(a, (4, 4), order="morf", resample="rank_native")
    expected = torch.tensor([[3, 3, 0, 0], [3, 3, 0, 0], [1, 1, 2, 2], [1, 1, 2, 2]])
    assert torch.equal(r.ranks[0], expected)
    assert r.num_features.tolist() == [4]
    assert r.sorted_scores[0].tolist() == [4.0, 3.0, 2.0, 1.0]
    up = rank_features(a, (4, 4), order="morf", resample="upsample")
    big = torch.nn.functional.interpolate(a[:, None], size=(4, 4), mode="bilinear", align_corners=False)[0, 0]
    order = brute_force_order(big.numpy(), descending=True)
    ref = torch.empty(16, dtype=torch.long)
    ref[order] = torch.arange(16)
    assert torch.equal(up.ranks[0].flatten(), ref)


def test_constant_map_ties_follow_raster_order() -> None:
    a = torch.zeros(1, 3, 3)
    for order in ("morf", "lerf"):
        assert torch.equal(rank_features(a, (3, 3), order=order).ranks.flatten(), torch.arange(9))


def test_patch_ranking_by_sum_with_partial_border_patches() -> None:
    a = torch.arange(25, dtype=torch.float32).view(1, 5, 5) * torch.tensor([1, -1, 1, -1, 1]).view(1, 5, 1)
    r = rank_features(a, (5, 5), granularity="patch", patch_size=2, order="morf")
    sums = {}
    for i in range(5):
        for j in range(5):
            sums[(i // 2, j // 2)] = sums.get((i // 2, j // 2), 0.0) + float(a[0, i, j])
    keys = sorted(sums, key=lambda p: (-sums[p], p[0] * 3 + p[1]))
    for i in range(5):
        for j in range(5):
            assert int(r.ranks[0, i, j]) == keys.index((i // 2, j // 2))
    assert r.num_features.tolist() == [9]


def test_superpixel_ranking_by_mean_and_step_saliency() -> None:
    seg = torch.tensor([[[5, 5, 7], [5, 9, 7], [9, 9, 7]]])  # sparse labels -> 3 features
    a = torch.tensor([[[1.0, 1.0, 2.0], [4.0, 0.0, 2.0], [3.0, 3.0, 2.0]]])
    r = rank_features(a, (3, 3), granularity="superpixel", segments=seg, order="morf")
    # means: label5 = 2.0, label7 = 2.0, label9 = 2.0 -> ties by label index: 5, 7, 9
    assert torch.equal(r.ranks[0], torch.tensor([[0, 0, 1], [0, 2, 1], [2, 2, 1]]))
    a2 = a.clone()
    a2[0, 2, 0] = 9.0  # label9 mean = 4
    r2 = rank_features(a2, (3, 3), granularity="superpixel", segments=seg, order="morf")
    assert r2.sorted_scores[0].tolist() == [4.0, 2.0, 2.0]
    counts = step_counts(r2.num_features, features_per_step=2)
    assert counts.tolist() == [[0, 2, 3]]
    assert step_saliency(r2, counts)[0].tolist() == [3.0, 2.0]


def test_random_order_seeded_permutation() -> None:
    a = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0))
    r1 = rank_features(a, (4, 4), order="random", seed=3)
    r2 = rank_features(a, (4, 4), order="random", seed=3)
    r3 = rank_features(a, (4, 4), order="random", seed=4)
    assert torch.equal(r1.ranks, r2.ranks) and not torch.equal(r1.ranks, r3.ranks)
    assert torch.equal(r1.ranks.flatten(1).sort(1).values, torch.arange(16).expand(2, -1))


def test_step_counts_schedules_and_errors() -> None:
    n = torch.tensor([10, 7])
    assert step_counts(n, steps=3).tolist() == [[0, 3, 6, 10], [0, 2, 4, 7]]
    assert step_counts(n, features_per_step=4).tolist() == [[0, 4, 8, 10], [0, 4, 7, 7]]
    with pytest.raises(InputError, match="exceeds"):
        step_counts(n, steps=8)
    with pytest.raises(InputError):
        step_counts(n)
    with pytest.raises(InputError):
        rank_features(torch.zeros(1, 2, 2), (2, 2), order="most")


# ---------------------------------------------------------------- ROAD imputation


def dense_reference(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Independent dense solve of ROAD's neighbour-mean equations (one channel)."""
    h, w = img.shape
    idx = {p: i for i, p in enumerate(zip(*np.nonzero(removed)))}
    a = np.zeros((len(idx), len(idx)))
    b = np.zeros(len(idx))
    for (i, j), row in idx.items():
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if (di, dj) == (0, 0) or not (0 <= i + di < h and 0 <= j + dj < w):
                    continue
                wgt = 1 / 6 if di == 0 or dj == 0 else 1 / 12
                a[row, row] += wgt
                if (i + di, j + dj) in idx:
                    a[row, idx[(i + di, j + dj)]] -= wgt
                else:
                    b[row] += wgt * img[i + di, j + dj]
    out = img.copy()
    sol = scipy.linalg.solve(a, b)
    for (i, j), row in idx.items():
        out[i, j] = sol[row]
    return out


@pytest.mark.parametrize("method", ["auto", "cg", "multigrid"])
def test_linear_imputation_matches_dense_solve(method: str) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 2, 7, 6, generator=g)
    removed = torch.rand(3, 7, 6, generator=g) < 0.6
    out = linear_impute(x, removed, method=method)
    for b in range(3):
        for c in range(2):
            ref = dense_reference(x[b, c].double().numpy(), removed[b].numpy())
            assert np.abs(out[b, c].double().numpy() - ref).max() < 1e-6


def test_noisy_imputation_noise_is_seeded_and_on_removed_pixels_only() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 16, 16, generator=g)
    removed = torch.rand(2, 16, 16, generator=g) < 0.5
    clean = linear_impute(x, removed)
    n1 = noisy_linear_impute(x, removed, noise=0.1, generator=torch.Generator().manual_seed(0))
    n2 = noisy_linear_impute(x, removed, noise=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(n1, n2)
    diff = (n1 - clean)[removed[:, None].expand_as(x)]
    assert torch.equal(n1[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)])
    assert abs(float(diff.std()) - 0.1) < 0.01
    assert torch.equal(noisy_linear_impute(x, removed, noise=0.0), clean)


@pytest.mark.parametrize("method", ["cg", "multigrid"])
@pytest.mark.parametrize("smooth", [True, False])
def test_solvers_match_dense_solve_on_larger_image(method: str, smooth: bool) -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 1, 40, 36, generator=g)  # >= 32 px: coarse levels are used by both methods
    a = torch.rand(2, 1, 4, 4, generator=g) if smooth else torch.rand(2, 1, 40, 36, generator=g)
    a = torch.nn.functional.interpolate(a, size=(40, 36), mode="bilinear")[:, 0]
    removed = a > a.flatten(1).quantile(0.3, dim=1)[:, None, None]  # large regions or scattered pixels
    out = linear_impute(x, removed, method=method)
    for b in range(2):
        ref = dense_reference(x[b, 0].double().numpy(), removed[b].numpy())
        assert np.abs(out[b, 0].double().numpy() - ref).max() < 1e-4
    with pytest.raises(InputError):
        linear_impute(x, removed, method="direct")


def test_engine_rejects_bad_modes() -> None:
    x = torch.rand(1, 1, 2, 2)
    ranking = rank_features(torch.rand(1, 2, 2), (2, 2))
    counts = step_counts(ranking.num_features, steps=2)
    with pytest.raises(InputError):
        perturbation_curves(Recorder(), x, torch.tensor([0]), ranking, counts, mode="reveal")
    with pytest.raises(InputError, match="imputer"):
        perturbation_curves(Recorder(), x, torch.tensor([0]), ranking, counts, mode="insert",
                            imputer=lambda a, b, c: a)


def test_rank_features_rejects_maps_finer_than_the_inputs() -> None:
    with pytest.raises(InputError, match="finer than the inputs"):
        rank_features(torch.rand(2, 8, 8), (4, 4))
