"""Image-level behaviour (MAPS' B.I1) of models and of human or monkey observers, and its reliability.

- `i1(probs, labels)`: a model's per-image performance as a simulated two-alternative choice, as
  MAPS computes it: for image i of true class y, the mean over every other class d of
  ``(p_y + eps) / (p_y + p_d + 2 eps)`` with softmax probabilities p; uniform softmax gives 0.5,
  a one-hot correct softmax ``(1 + eps) / (1 + 2 eps)``.
- `i1_dprime(probs, labels)`: Rajalingham et al. (2018)'s d' version, ``Z(HR_i) - Z(FAR_y)`` capped
  at +-5, where HR_i is image i's mean two-alternative accuracy (eps = 0) and FAR_y the mean rate at
  which class y is chosen against images of other classes; ``normalise=True`` gives I1n (the mean
  over the images of each class subtracted). Labelled separately: it is not MAPS' B.I1.
- Trials (CSV, one row a trial, with an image index and a 0/1 correct column; MAPS' names
  ``image_number`` / ``image_num`` are accepted): `trial_i1` averages a common number of trials
  per image (sampled with the seed), `split_half_reliability` correlates the I1 of two random
  halves of those trials (Pearson) and applies the Spearman-Brown correction 2r / (1 + r),
  averaged over repeated splits.
- `simulate_trials`: a *simulated* observer (binomial trials from an observer model's I1), for
  tests and demos; nothing here ships human or monkey data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm, pearsonr
from torch import Tensor

from xaibench.checks import check_count, check_number, check_probabilities, check_targets
from xaibench.errors import InputError

IMAGE_COLUMNS = ("image", "image_index", "image_number", "image_num", "image_id")
CORRECT_COLUMNS = ("correct", "is_correct", "response_correct")
DPRIME_CAP = 5.0


def _check_probs(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax outputs [N, classes >= 2] (rows sum to 1) and class indices [N] in range."""
    check_probabilities(probs, "probs")
    labels = check_targets(labels, probs.shape[0], probs.shape[1], name="labels", broadcast=False)
    return probs.double(), labels.to(probs.device)


def _two_afc(probs: Tensor, labels: Tensor, eps: float) -> Tensor:
    """[N, K]: the choice probability of the true class against each class (NaN at the true class)."""
    p_true = probs.gather(1, labels[:, None])
    pc = (p_true + eps) / (p_true + probs + 2 * eps)
    return pc.scatter(1, labels[:, None], float("nan"))


def i1(probs: Tensor, labels: Tensor, eps: float = 1e-5) -> Tensor:
    """MAPS' B.I1 per image, float64 [N] (see the module docstring). `eps` in [0, 1]."""
    probs, labels = _check_probs(probs, labels)
    check_number(eps, "eps")
    return _two_afc(probs, labels, eps).nanmean(dim=1)


def _z(rate: Tensor) -> Tensor:
    """The standard normal quantile of rates (+-inf at 1 and 0, capped by the caller)."""
    return torch.from_numpy(norm.ppf(rate.cpu().numpy())).to(rate)


def i1_dprime(probs: Tensor, labels: Tensor, *, normalise: bool = False, cap: float = DPRIME_CAP) -> Tensor:
    """Rajalingham et al.'s I1 (``normalise=True``: I1n) per image as d', float64 [N]; `cap` > 0."""
    probs, labels = _check_probs(probs, labels)
    check_number(cap, "cap", 0.0, float("inf"), open_low=True)
    pc = _two_afc(probs, labels, 0.0)
    hit = pc.nanmean(dim=1)
    k = probs.shape[1]
    # FAR of class y: over images j of other classes, how often y is chosen against j's class.
    chosen = 1.0 - pc  # [N, K]: probability that class d is chosen for image j (NaN at j's class)
    other = labels[:, None] != torch.arange(k, device=labels.device)
    far = torch.where(other, chosen, 0.0).sum(0) / other.sum(0)  # NaN for a class with no other images
    d = (_z(hit) - _z(far[labels])).clamp(-cap, cap)
    if normalise:
        means = torch.zeros(k, dtype=d.dtype, device=d.device).index_add_(0, labels, d)
        counts = torch.bincount(labels, minlength=k).to(d)
        d = d - (means / counts.clamp(min=1))[labels]
    return d


# --- trials of observers ------------------------------------------------------------------------


def load_trials(path: str | Path) -> pd.DataFrame:
    """A trial table (CSV) with columns ``image`` (int index) and ``correct`` (0/1), renamed from
    MAPS' / common names; errors name the file and the missing column."""
    path = Path(path)
    try:
        raw = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(f"behaviour file not found: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV trial table ({err})") from None
    image = next((c for c in IMAGE_COLUMNS if c in raw.columns), None)
    correct = next((c for c in CORRECT_COLUMNS if c in raw.columns), None)
    for col, names in ((image, IMAGE_COLUMNS), (correct, CORRECT_COLUMNS)):
        if col is None:
            raise InputError(f"{path}: no column named {' or '.join(names)} (columns: {', '.join(raw.columns)})")
    return check_trials(pd.DataFrame({"image": raw[image], "correct": raw[correct]}), f"{path}: column")


def check_trials(trials: pd.DataFrame, where: str = "trials column") -> pd.DataFrame:
    """A trial table (at least one row; ``image``: integer indices >= 0, ``correct``: 0/1 or
    true/false) with ``image`` as int64 and ``correct`` as float64; errors name the column."""
    if not isinstance(trials, pd.DataFrame):
        raise InputError(f"trials must be a pandas DataFrame with columns image and correct, got {type(trials).__name__}")
    for col in ("image", "correct"):
        if col not in trials.columns:
            raise InputError(f"{where} {col!r} is missing (columns: {', '.join(map(str, trials.columns))}); "
                             "load_trials renames MAPS' column names")
    if trials.empty:
        raise InputError("trials hold no trial (0 rows); pass at least one per image")
    out = trials.copy()
    for col in ("image", "correct"):
        if out[col].isna().any():
            raise InputError(f"{where} {col!r} has empty cells")
    if not set(np.unique(out["correct"])) <= {0, 1, True, False}:
        raise InputError(f"{where} 'correct' must hold 0/1 (or true/false), got {sorted(set(np.unique(out['correct'])))[:5]}")
    try:
        image = out["image"].to_numpy()
        if not np.array_equal(image, np.asarray(image, dtype=np.int64)):
            raise ValueError
        out["image"] = out["image"].astype(np.int64)
    except (TypeError, ValueError):
        raise InputError(f"{where} 'image' must hold integer image indices") from None
    if (out["image"] < 0).any():
        raise InputError(f"{where} 'image' must hold image indices >= 0")
    out["correct"] = out["correct"].astype(np.float64)
    return out


def _by_image(trials: pd.DataFrame, n_images: int | None) -> tuple[np.ndarray, list[np.ndarray], int]:
    trials = check_trials(trials)
    images = np.sort(trials["image"].unique())
    if n_images is not None:
        check_count(n_images, "n_images")
        images = np.arange(n_images)
        missing = np.setdiff1d(images, trials["image"].unique())
        if missing.size:
            raise InputError(f"no trials for images {missing[:10].tolist()} (of {n_images})")
    groups = trials.groupby("image")["correct"]
    outcomes = [groups.get_group(i).to_numpy() for i in images]
    return images, outcomes, min(len(o) for o in outcomes)


def trial_i1(trials: pd.DataFrame, *, seed: int = 0, n_images: int | None = None) -> np.ndarray:
    """Per-image I1 (fraction correct) from the same number of trials per image (the smallest
    count), sampled without replacement with `seed`; images in ascending index order."""
    rng = np.random.default_rng(seed)
    _, outcomes, n = _by_image(trials, n_images)
    return np.array([rng.choice(o, n, replace=False).mean() for o in outcomes])


def spearman_brown(r: float | np.ndarray) -> float | np.ndarray:
    """Reliability of the full set from the correlation r in [-1, 1] of two halves: 2r / (1 + r).

    NaN where r is NaN or -1 (halves that disagree perfectly: no reliability); r outside [-1, 1]
    is an error (not a correlation)."""
    try:
        values = np.asarray(r, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"r must be a correlation in [-1, 1] (a number or an array), got {r!r}") from None
    if (np.abs(values[~np.isnan(values)]) > 1 + 1e-12).any():
        raise InputError(f"r must be a correlation in [-1, 1], got values in [{np.nanmin(values):.4g}, "
                         f"{np.nanmax(values):.4g}]")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(values > -1, 2 * values / (1 + values), np.nan)
    return float(out) if out.ndim == 0 else out


def split_half_reliability(trials: pd.DataFrame, *, repeats: int = 10, seed: int = 0,
                           n_images: int | None = None) -> float:
    """Spearman-Brown corrected split-half reliability of per-image I1, averaged over `repeats`
    random splits of a common number n of trials per image; with an odd n the first half holds
    the extra trial (``np.array_split``, as MAPS' ``maps_utils.py``)."""
    check_count(repeats, "repeats")
    rng = np.random.default_rng(seed)
    _, outcomes, n = _by_image(trials, n_images)
    if n < 2:
        raise InputError("split-half reliability needs at least 2 trials per image")
    values = []
    for _ in range(repeats):
        halves = [rng.choice(o, n, replace=False) for o in outcomes]
        first = np.array([h[: (n + 1) // 2].mean() for h in halves])  # np.array_split: the first half
        second = np.array([h[(n + 1) // 2 :].mean() for h in halves])  # gets the odd trial (maps_utils.py)
        if first.std() == 0 or second.std() == 0:
            continue
        values.append(spearman_brown(pearsonr(first, second)[0]))
    return float(np.mean(values)) if values else float("nan")


def simulate_trials(i1_values: np.ndarray | Tensor, trials_per_image: int, *, seed: int = 0) -> pd.DataFrame:
    """A SIMULATED observer: `trials_per_image` Bernoulli trials per image with success probability
    the observer's I1. Columns image, correct, plus ``simulated = True`` so it is never mistaken
    for recorded behaviour."""
    p = np.asarray(torch.as_tensor(i1_values).double().cpu().numpy() if isinstance(i1_values, Tensor) else i1_values,
                   dtype=np.float64)
    _check_rates(p, "i1_values")
    check_count(trials_per_image, "trials_per_image")
    rng = np.random.default_rng(seed)
    correct = rng.random((p.size, trials_per_image)) < p[:, None]
    return pd.DataFrame({
        "image": np.repeat(np.arange(p.size), trials_per_image),
        "correct": correct.ravel().astype(np.float64),
        "simulated": True,
    })


def expected_split_half_reliability(i1_values: np.ndarray, trials_per_image: int) -> float:
    """The analytic reliability of binomial trials: true-score variance over observed variance of
    a per-image mean of n trials, var(p) / (var(p) + mean(p(1-p)) / n) (Spearman-Brown consistent)."""
    p = np.asarray(i1_values, dtype=np.float64)
    _check_rates(p, "i1_values")
    check_count(trials_per_image, "trials_per_image")
    true_var = p.var()
    noise = (p * (1 - p)).mean() / trials_per_image
    total = true_var + noise
    return float(true_var / total) if total > 0 else float("nan")  # every rate 0 or 1 and equal: undefined


def _check_rates(p: np.ndarray, name: str) -> None:
    if p.ndim != 1 or p.size == 0 or np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise InputError(f"{name} (an observer's I1) must be a non-empty vector of probabilities in [0, 1], got "
                         f"shape {p.shape}")
