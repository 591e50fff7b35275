"""Bad input to every public function of `maps`, `training.losses`, `training.calibration`,
`metrics.learnable` and `streaming`: one table of calls, each with the error type it must raise and a
phrase of its message (the argument it names or the fix it suggests). A coverage test checks that
every public function of the five modules has a row."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import xaibench
from xaibench import maps, streaming
from xaibench.errors import InputError, UnknownNameError, WeightsUnavailableError
from xaibench.metrics import learnable
from xaibench.training import calibration, losses

MODULES = (maps, losses, calibration, learnable, streaming)


class Net(nn.Module):
    """3x8x8 -> 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


torch.manual_seed(0)
NET = Net().eval()
X = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
T = torch.zeros(4, dtype=torch.long)
MASKS = torch.zeros(4, 8, 8, dtype=torch.bool)
MASKS[:, 2:6, 2:6] = True
A = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(1))
PROBS = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
LABELS = torch.tensor([2, 0, 2, 1])
TRIALS = pd.DataFrame({"image": [0, 0, 1, 1, 2, 2], "correct": [1, 0, 1, 1, 0, 1]})
I1 = np.linspace(0.2, 0.9, 8)
GEN = torch.Generator().manual_seed(0)


def explain(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return xaibench.explainer("gradcam", NET, sign="positive")(inputs, targets)


def coarse(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.rand(inputs.shape[0], 4, 4)  # maps not at the input resolution


def _csv(tmp: str, text: str) -> str:
    path = f"{tmp}/trials.csv"
    with open(path, "w") as f:
        f.write(text)
    return path


@dataclass(frozen=True)
class Bad:
    function: str  # the public function (or Class.method) the row covers
    call: Callable[[], object]
    error: type[Exception]
    phrase: str


def _road(**kw):
    return learnable.learnable_metric("road", **kw)


def _irof():
    return learnable.learnable_metric("irof", n_segments=4)


def _is(**kw):
    return learnable.learnable_metric("is", **kw)


CASES = [
    # --- training.losses ------------------------------------------------------------------------
    Bad("focal_loss", lambda: losses.focal_loss(torch.randn(6, 3), torch.tensor([0, 1, 2, 0])), InputError,
        "targets has 4 entries for 6 rows"),
    Bad("focal_loss", lambda: losses.focal_loss(torch.randn(0, 3), torch.zeros(0, dtype=torch.long)), InputError,
        "empty batch"),
    Bad("focal_loss", lambda: losses.focal_loss(torch.randn(2, 3), torch.tensor([0.0, 1.0])), InputError,
        "integer class indices"),
    Bad("focal_loss", lambda: losses.focal_loss(torch.randn(2, 3), torch.tensor([0, 1]), gamma=-1), InputError,
        "gamma must be in"),
    Bad("focal_loss", lambda: losses.focal_loss(torch.randn(2, 3), torch.tensor([0, 1]), reduction="avg"), InputError,
        "reduction must be one of"),
    Bad("adaptive_focal_loss", lambda: losses.adaptive_focal_loss(torch.randn(2, 10), torch.tensor([10, 1])),
        InputError, "out of range [0, 10)"),
    Bad("adaptive_focal_loss", lambda: losses.adaptive_focal_loss(torch.randn(0, 10), torch.zeros(0, dtype=torch.long)),
        InputError, "empty batch"),
    Bad("adaptive_focal_loss", lambda: losses.adaptive_focal_loss(torch.full((2, 3), float("nan")), torch.tensor([0, 1])),
        InputError, "NaN or Inf"),
    Bad("adaptive_focal_loss", lambda: losses.adaptive_focal_loss(torch.randn(2), torch.tensor([0, 1])), InputError,
        "[N, classes >= 2]"),
    Bad("adaptive_gamma", lambda: losses.adaptive_gamma(torch.tensor([1.5])), InputError, "pt must be in [0, 1]"),
    Bad("adaptive_gamma", lambda: losses.adaptive_gamma(torch.tensor([1])), InputError, "float tensor"),
    # --- training.calibration -------------------------------------------------------------------
    Bad("expected_calibration_error", lambda: calibration.expected_calibration_error(PROBS, torch.tensor([0, 1, 2, 3])),
        InputError, "labels out of range [0, 3)"),
    Bad("expected_calibration_error", lambda: calibration.expected_calibration_error(PROBS * 5 - 2, LABELS),
        InputError, "apply .softmax(dim=1)"),
    Bad("expected_calibration_error", lambda: calibration.expected_calibration_error(PROBS * 0.5, LABELS), InputError,
        "do not sum to 1"),
    Bad("expected_calibration_error", lambda: calibration.expected_calibration_error(PROBS, LABELS, n_bins=0),
        InputError, "n_bins must be >= 1"),
    Bad("adaptive_calibration_error", lambda: calibration.adaptive_calibration_error(PROBS, LABELS, n_bins=0),
        InputError, "n_bins must be >= 1"),
    Bad("adaptive_calibration_error", lambda: calibration.adaptive_calibration_error(PROBS, LABELS[:3]), InputError,
        "labels has 3 entries for 4 rows"),
    Bad("classwise_calibration_error", lambda: calibration.classwise_calibration_error(PROBS, LABELS, n_bins=0),
        InputError, "n_bins must be >= 1"),
    Bad("classwise_calibration_error", lambda: calibration.classwise_calibration_error(PROBS, LABELS + 1), InputError,
        "labels out of range"),
    Bad("top_label", lambda: calibration.top_label(PROBS[:0], LABELS[:0]), InputError, "empty batch"),
    Bad("top_label", lambda: calibration.top_label(PROBS.numpy(), LABELS), InputError, "must be a torch.Tensor"),
    Bad("confidence_calibration_error",
        lambda: calibration.confidence_calibration_error(torch.tensor([0.5, 1.5]), torch.tensor([1.0, 0.0])),
        InputError, "conf (top-label confidences) must be in [0, 1]"),
    Bad("confidence_calibration_error",
        lambda: calibration.confidence_calibration_error(torch.tensor([0.5, 0.7]), torch.tensor([2.0, 0.0])),
        InputError, "hits must be 0 or 1"),
    Bad("confidence_adaptive_error",
        lambda: calibration.confidence_adaptive_error(torch.rand(4), torch.ones(3)), InputError,
        "conf has 4 entries but hits has 3"),
    Bad("confidence_adaptive_error",
        lambda: calibration.confidence_adaptive_error(torch.rand(4), torch.ones(4), n_bins=0), InputError,
        "n_bins must be >= 1"),
    Bad("reliability_bins", lambda: calibration.reliability_bins(torch.rand(0), torch.ones(0)), InputError,
        "non-empty"),
    Bad("reliability_bins", lambda: calibration.reliability_bins(torch.rand(4), torch.ones(4), n_bins=0), InputError,
        "n_bins must be >= 1"),
    # --- maps: behaviour ------------------------------------------------------------------------
    Bad("i1", lambda: maps.i1(PROBS * 3, LABELS), InputError, "probabilities in [0, 1]"),
    Bad("i1", lambda: maps.i1(PROBS * 0.5, LABELS), InputError, "do not sum to 1"),
    Bad("i1", lambda: maps.i1(PROBS, torch.tensor([0, 1, 2, 3])), InputError, "labels out of range"),
    Bad("i1", lambda: maps.i1(PROBS, LABELS[:2]), InputError, "labels has 2 entries for 4 rows"),
    Bad("i1", lambda: maps.i1(PROBS, LABELS, eps=-1.0), InputError, "eps must be in"),
    Bad("i1_dprime", lambda: maps.i1_dprime(PROBS.log(), LABELS), InputError, "softmax"),
    Bad("i1_dprime", lambda: maps.i1_dprime(PROBS, LABELS, cap=0.0), InputError, "cap must be in"),
    Bad("trial_i1", lambda: maps.trial_i1(TRIALS.assign(correct=2)), InputError, "'correct' must hold 0/1"),
    Bad("trial_i1", lambda: maps.trial_i1(TRIALS.drop(columns="correct")), InputError, "'correct' is missing"),
    Bad("trial_i1", lambda: maps.trial_i1(TRIALS.iloc[:0]), InputError, "no trial"),
    Bad("trial_i1", lambda: maps.trial_i1(TRIALS.assign(image=[0.5] * 6)), InputError, "integer image indices"),
    Bad("trial_i1", lambda: maps.trial_i1(TRIALS, n_images=0), InputError, "n_images must be >= 1"),
    Bad("trial_i1", lambda: maps.trial_i1(TRIALS.to_numpy()), InputError, "pandas DataFrame"),
    Bad("split_half_reliability", lambda: maps.split_half_reliability(TRIALS, repeats=0), InputError,
        "repeats must be >= 1"),
    Bad("split_half_reliability", lambda: maps.split_half_reliability(TRIALS.assign(image=-1)), InputError,
        "indices >= 0"),
    Bad("spearman_brown", lambda: maps.spearman_brown(-2.0), InputError, "correlation in [-1, 1]"),
    Bad("spearman_brown", lambda: maps.spearman_brown(np.array([0.5, 1.5])), InputError, "correlation in [-1, 1]"),
    Bad("spearman_brown", lambda: maps.spearman_brown("high"), InputError, "correlation in [-1, 1]"),
    Bad("simulate_trials", lambda: maps.simulate_trials(np.array([0.5, 1.2]), 3), InputError, "probabilities in [0, 1]"),
    Bad("simulate_trials", lambda: maps.simulate_trials(I1, 0), InputError, "trials_per_image must be >= 1"),
    Bad("expected_split_half_reliability", lambda: maps.expected_split_half_reliability(np.array([]), 3), InputError,
        "non-empty vector"),
    Bad("expected_split_half_reliability", lambda: maps.expected_split_half_reliability(I1, 0), InputError,
        "trials_per_image must be >= 1"),
    Bad("load_trials", lambda: maps.load_trials("/nonexistent/trials.csv"), InputError, "not found"),
    # --- maps: consistency ----------------------------------------------------------------------
    Bad("bootstrap_spearman", lambda: maps.bootstrap_spearman(I1, I1, n_boot=0), InputError, "n_boot must be >= 1"),
    Bad("bootstrap_spearman", lambda: maps.bootstrap_spearman(I1, I1, level=0), InputError, "level must be in (0, 100]"),
    Bad("bootstrap_spearman", lambda: maps.bootstrap_spearman(I1[:2], I1[:2]), InputError, "at least 3 pairs"),
    Bad("bootstrap_spearman", lambda: maps.bootstrap_spearman(I1, I1[:5]), InputError, "differ in length"),
    Bad("consistency", lambda: maps.consistency(I1, I1, 1.5), InputError, "at most 1"),
    Bad("consistency", lambda: maps.consistency(I1, I1, "0.8"), InputError, "reliability must be a number"),
    Bad("rank_models", lambda: maps.rank_models({}, I1, 0.8), InputError, "at least 1 model"),
    Bad("half_splits", lambda: maps.half_splits(1), InputError, "n_images must be >= 2"),
    Bad("half_splits", lambda: maps.half_splits(8, repeats=0), InputError, "repeats must be >= 1"),
    Bad("reference_models", lambda: maps.reference_models({"a": I1}, maps.half_splits(8)), InputError,
        "at least 2 model"),
    Bad("reference_models", lambda: maps.reference_models({"a": I1, "b": I1[::-1]}, []), InputError,
        "splits is empty"),
    Bad("method_proxy", lambda: maps.method_proxy({}, {"a": "b"}, [], maps.half_splits(8)), InputError,
        "at least one target model"),
    Bad("method_proxy", lambda: maps.method_proxy({}, {"a": "b"}, ["gradcam"], maps.half_splits(8)), InputError,
        "no I1 of model"),
    Bad("best_method", lambda: maps.best_method(pd.DataFrame()), InputError, "non-empty table"),
    Bad("best_method", lambda: maps.best_method(pd.DataFrame({"method": ["a"]})), InputError, "lacks column(s) proxy"),
    Bad("proxy_vs_ground_truth",
        lambda: maps.proxy_vs_ground_truth(pd.DataFrame({"method": ["a"], "proxy": [0.1]}), pd.DataFrame({"method": ["a"]})),
        InputError, "lacks column(s) agreement"),
    # --- maps: EMIs ------------------------------------------------------------------------------
    Bad("emi", lambda: maps.emi(X * 255, A, 75), InputError, "divide by 255"),
    Bad("emi", lambda: maps.emi(X, A, 75, fill=2.0), InputError, "fill (pixel-space colour) must be in [0, 1]"),
    Bad("emi", lambda: maps.emi(X, A, 75, fill="grey"), InputError, "fill must be a pixel value"),
    Bad("emi", lambda: maps.emi(X, A, 75, kind="both"), InputError, "kind must be one of"),
    Bad("keep_mask", lambda: maps.keep_mask(X, A, 150), InputError, "percentile must be in [0, 100]"),
    Bad("keep_mask", lambda: maps.keep_mask(X, A[:2], 50), InputError, "attributions must be maps"),
    Bad("keep_mask", lambda: maps.keep_mask(X[:0], A[:0], 50), InputError, "empty batch"),
    Bad("keep_mask", lambda: maps.keep_mask(X, A.numpy(), 50), InputError, "attributions must be a torch.Tensor"),
    Bad("normalised_fill", lambda: maps.normalised_fill(0.5, std=(0.2, 0.0, 0.2)), InputError, "std must be in"),
    Bad("normalised_fill", lambda: maps.normalised_fill(0.5, mean=(0.5,)), InputError, "one value per channel"),
    # --- maps: neural predictivity ---------------------------------------------------------------
    Bad("neural_predictivity", lambda: maps.neural_predictivity(np.ones((6, 3)), np.ones((6, 2)), folds=1), InputError,
        "folds must be >= 2"),
    Bad("neural_predictivity", lambda: maps.neural_predictivity(np.ones((6, 3)), np.ones((6, 2)), folds=10), InputError,
        "exceeds the number of images"),
    Bad("neural_predictivity", lambda: maps.neural_predictivity(np.ones(6), np.ones((6, 2))), InputError,
        "features must be [images"),
    Bad("neural_predictivity", lambda: maps.neural_predictivity(np.full((6, 3), np.nan), np.ones((6, 2)), folds=2),
        InputError, "must be finite"),
    Bad("neural_predictivity", lambda: maps.neural_predictivity(np.ones((6, 3)), np.ones((5, 2)), folds=2), InputError,
        "for 6 images"),
    Bad("neural_predictivity", lambda: maps.neural_predictivity(np.ones((6, 3)), np.ones((6, 2)), n_components=0),
        InputError, "n_components must be >= 1"),
    Bad("neuron_reliability", lambda: maps.neuron_reliability(np.ones((1, 6, 2))), InputError, "repetitions >= 2"),
    Bad("neuron_reliability", lambda: maps.neuron_reliability(np.ones((2, 6, 2)), repeats=0), InputError,
        "repeats must be >= 1"),
    # --- maps: similarities ----------------------------------------------------------------------
    Bad("l1_similarity", lambda: maps.l1_similarity(A, A[:, :4]), InputError, "of one shape"),
    Bad("l1_similarity", lambda: maps.l1_similarity(A[:0], A[:0]), InputError, "empty batch"),
    Bad("l1_similarity", lambda: maps.l1_similarity(A.numpy(), A), InputError, "a must be a torch.Tensor"),
    Bad("l2_similarity", lambda: maps.l2_similarity(A, A.clone().fill_(float("nan"))), InputError, "NaN or Inf"),
    Bad("inverse_l2", lambda: maps.inverse_l2(A > 0.5, A > 0.2), InputError, "real numbers"),
    Bad("lpips_similarity", lambda: maps.lpips_similarity(A, A, model="alex"), InputError, "LPIPS module"),
    Bad("lpips_similarity", lambda: maps.lpips_similarity(A, A[:2]), InputError, "of one shape"),
    Bad("lpips_model", lambda: maps.lpips_model("/nonexistent/alexnet.pth"), WeightsUnavailableError, "not found"),
    # --- metrics.learnable -----------------------------------------------------------------------
    Bad("positive_share", lambda: learnable.positive_share(A, MASKS[:, :4]), InputError, "masks has shape"),
    Bad("positive_share", lambda: learnable.positive_share(A[0], MASKS[0]), InputError, "[B, H, W]"),
    Bad("model_space", lambda: learnable.model_space(NET, X[0]), InputError, "images [B, C, H, W]"),
    Bad("max_abs_normalise", lambda: learnable.max_abs_normalise(A, 0.0), InputError, "eps must be in (0"),
    Bad("max_abs_normalise", lambda: learnable.max_abs_normalise(A[:0], 1e-9), InputError, "non-empty float tensor"),
    Bad("l1_normalise_eps", lambda: learnable.l1_normalise_eps(A.long(), 1e-9), InputError, "non-empty float tensor"),
    Bad("IS.objective", lambda: _is().objective(X, X[:2], A, A), InputError, "x, x' of one shape"),
    Bad("finite_mean", lambda: learnable.finite_mean(torch.ones(2, 2)), InputError, "float tensor [B]"),
    Bad("rows_where", lambda: learnable.rows_where(torch.full((4,), 1.5), torch.zeros(4, 8, 8), torch.full((4,), 64)),
        InputError, "fraction must be in [0, 1]"),
    Bad("rows_where", lambda: learnable.rows_where(torch.full((3,), 0.5), torch.zeros(4, 8, 8), torch.full((4,), 64)),
        InputError, "need fraction [B]"),
    Bad("learnable_metric", lambda: learnable.learnable_metric("road", fraction=0.5), InputError, "it takes"),
    Bad("learnable_metric", lambda: learnable.learnable_metric("raod"), UnknownNameError, "road"),
    Bad("check_batch", lambda: learnable.check_batch(NET, X, torch.tensor([0, 1])), InputError,
        "targets has 2 entries for 4 rows"),
    Bad("explained", lambda: learnable.explained(coarse, X, T), InputError, "input resolution"),
    Bad("LearnableMetric.fractions", lambda: learnable.LearnableMetric.fractions(0, GEN, X.device), InputError,
        "n must be >= 1"),
    Bad("LearnableMetric.fractions", lambda: learnable.LearnableMetric.fractions(4, None, X.device), InputError,
        "generator must be a torch.Generator"),
    Bad("LearnableMetric", lambda: learnable.LearnableMetric(preset="paper"), InputError, "preset must be one of"),
    Bad("LearnableMetric.perturb_input", lambda: learnable.Focus().perturb_input(X, A, GEN), NotImplementedError,
        "Focus has no input perturbation"),
    Bad("LearnableMetric.evaluate", lambda: learnable.LearnableMetric().evaluate(NET, X, T, explain), NotImplementedError,
        "must implement evaluate"),
    Bad("Focus", lambda: learnable.Focus("mosaic"), InputError, "'harmony' or 'original'"),
    Bad("Focus.mosaics", lambda: learnable.Focus().mosaics(NET, torch.rand(6, 3, 8, 8)), InputError, "divisible by 4"),
    Bad("Focus.evaluate", lambda: learnable.Focus().evaluate(NET, X[:0], None, explain), InputError, "empty batch"),
    Bad("Focus.evaluate", lambda: learnable.Focus().evaluate(NET, X * 255, None, explain), InputError, "divide by 255"),
    Bad("Focus.evaluate", lambda: learnable.Focus().evaluate(NET, X, None, coarse), InputError, "explainer's maps"),
    Bad("Focus.evaluate", lambda: learnable.Focus("original").evaluate(NET, X, T, explain, MASKS[:2]), InputError,
        "masks has shape"),
    Bad("RMA.evaluate", lambda: learnable.RMA().evaluate(NET, X, T, explain), InputError, "needs masks"),
    Bad("RMA.evaluate", lambda: learnable.RMA().evaluate(NET, X, T[:2], explain, MASKS), InputError,
        "targets has 2 entries"),
    Bad("RMA.evaluate", lambda: learnable.RMA().evaluate(NET, X, T, coarse, MASKS), InputError, "explainer's maps"),
    Bad("RMA.evaluate",
        lambda: learnable.RMA().evaluate(NET, X, T, lambda i, t: torch.rand(2, 8, 8), MASKS), InputError,
        "expected 4 (one map per image)"),
    Bad("ROAD", lambda: _road(percentages=()), InputError, "percentages is empty"),
    Bad("ROAD", lambda: _road(percentages=(50, 150)), InputError, "percentages must be in (0, 100]"),
    Bad("ROAD", lambda: _road(noise=-0.1), InputError, "noise must be in"),
    Bad("ROAD.perturb_input", lambda: _road().perturb_input(X, A, GEN, fraction=torch.full((4,), 1.5)), InputError,
        "fraction must be in [0, 1]"),
    Bad("ROAD.perturb_input", lambda: _road().perturb_input(X * 255, A, GEN), InputError, "divide by 255"),
    Bad("ROAD.perturb_input", lambda: _road().perturb_input(X, A, None), InputError, "generator must be"),
    Bad("ROAD.perturb_input", lambda: _road().perturb_input(X, A[:2], GEN), InputError, "maps has batch size 2"),
    Bad("ROAD.evaluate", lambda: _road().evaluate(NET, X, torch.full((4,), 3), explain), InputError, "out of range"),
    Bad("ROAD.evaluate", lambda: _road().evaluate(NET, X, T, coarse), InputError, "explainer's maps"),
    Bad("IROF", lambda: learnable.learnable_metric("irof", n_segments=0), InputError, "n_segments must be >= 1"),
    Bad("IROF", lambda: learnable.learnable_metric("irof", compactness=0), InputError, "compactness must be in (0"),
    Bad("IROF.perturb_input", lambda: _irof().perturb_input(X, A[:2], GEN), InputError, "maps has batch size 2"),
    Bad("IROF.perturb_input", lambda: _irof().perturb_input(X, A, GEN, fraction=torch.tensor([0.5])), InputError,
        "one removal fraction per image"),
    Bad("IROF.evaluate", lambda: _irof().evaluate(NET, X[:0], T[:0], explain), InputError, "empty batch"),
    Bad("IROF.evaluate", lambda: _irof().evaluate(NET, X, T, coarse), InputError, "explainer's maps"),
    Bad("IS", lambda: _is(n_samples=0), InputError, "n_samples must be >= 1"),
    Bad("IS", lambda: _is(radius=0), InputError, "radius must be in (0"),
    Bad("IS", lambda: _is(eps_min=-1), InputError, "eps_min must be in (0"),
    Bad("IS.perturb_input", lambda: _is().perturb_input(X * 255), InputError, "divide by 255"),
    Bad("IS.ratio", lambda: _is().ratio(X, X[:2], A, A), InputError, "x, x' of one shape"),
    Bad("IS.evaluate", lambda: _is(n_samples=2).evaluate(NET, X, T, coarse), InputError, "explainer's maps"),
    Bad("IS.evaluate", lambda: _is(n_samples=2).evaluate(NET, X, T.float(), explain), InputError,
        "integer class indices"),
    # --- streaming -------------------------------------------------------------------------------
    Bad("ExplanationMetric", lambda: streaming.Deletion(bootstrap=1), InputError, "bootstrap must be 0"),
    Bad("ExplanationMetric", lambda: streaming.Deletion(bootstrap=-1), InputError, "bootstrap must be >= 0"),
    Bad("ExplanationMetric", lambda: streaming.Deletion(level=1.5), InputError, "level must be in (0, 1]"),
    Bad("ExplanationMetric", lambda: streaming.Deletion(level=1.0), InputError, "level must be in (0, 1)"),
    Bad("ExplanationMetric", lambda: streaming.Deletion(seed=-1), InputError, "seed must be >= 0"),
    Bad("ExplanationMetric", lambda: streaming.Deletion(stepz=3), InputError, "Did you mean 'steps'"),
    Bad("ExplanationMetric", lambda: streaming.Deletion(method="gradcm"), UnknownNameError, "gradcam"),
    Bad("ExplanationMetric", lambda: streaming.Deletion(method_params=["sign"]), InputError, "method_params must be"),
    Bad("ExplanationMetric.update", lambda: streaming.Deletion(steps=4).update("net", X, A, T), InputError,
        "model must be a torch.nn.Module"),
    Bad("ExplanationMetric.update", lambda: streaming.Deletion(steps=4).update(NET, X.tolist(), A, T), InputError,
        "inputs must be a torch.Tensor"),
    Bad("ExplanationMetric.update", lambda: streaming.Deletion(steps=4).update(NET, X, targets=T), InputError,
        "pass the maps"),
    Bad("ExplanationMetric.update", lambda: streaming.Deletion(steps=4).update(NET, X * 255, A, T), InputError,
        "divide by 255"),
    Bad("ExplanationMetric.update", lambda: streaming.Deletion(steps=4).update(NET, X[:0], A[:0], T[:0]), InputError,
        "empty batch"),
    Bad("ExplanationMetric.update", lambda: streaming.Deletion(steps=4).update(NET, X, A[:2], T), InputError,
        "batch size 2, expected 4"),
    Bad("ExplanationMetric.update", lambda: streaming.PointingGame().update(attributions=A), InputError, "needs masks"),
    Bad("streaming_metric", lambda: streaming.streaming_metric("delet"), UnknownNameError, "deletion"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.function}-{i}" for i, c in enumerate(CASES)])
def test_bad_call_gives_a_clear_error(case: Bad) -> None:
    with pytest.raises(case.error) as err:
        case.call()
    assert case.phrase in str(err.value), str(err.value)


def test_bad_trial_files_name_the_file(tmp_path) -> None:
    bad = _csv(str(tmp_path), "image,correct\n0,2\n1,1\n")
    with pytest.raises(InputError, match=r"trials.csv: column 'correct' must hold 0/1"):
        maps.load_trials(bad)
    with pytest.raises(InputError, match="no trial"):
        maps.load_trials(_csv(str(tmp_path), "image,correct\n"))


def _public(module) -> set[str]:
    """Public functions and public methods of public classes defined in `module` (or its sub-modules)."""
    names: set[str] = set()
    for name, obj in vars(module).items():
        if name.startswith("_") or not getattr(obj, "__module__", "").startswith(module.__name__):
            continue
        if inspect.isfunction(obj):
            names.add(name)
        elif inspect.isclass(obj) and not issubclass(obj, Exception) and not getattr(obj, "__dataclass_fields__", None):
            if module is streaming and obj is not streaming.ExplanationMetric:
                continue  # the generated classes are ExplanationMetric with a metric name
            own = [m for m, f in vars(obj).items() if not m.startswith("_") and inspect.isfunction(f)]
            names.add(name) if "__init__" in vars(obj) or not own else None
            names.update(f"{name}.{m}" for m in own if m not in ("reset", "compute"))
    return names


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_every_public_function_has_bad_calls(module) -> None:
    covered = {c.function for c in CASES}
    assert _public(module) - covered == set()


# --- values that were wrong, now right -----------------------------------------------------------


def test_l1_and_l2_similarity_of_constant_maps_are_undefined() -> None:
    zeros, ones = torch.zeros(2, 4, 4), torch.ones(2, 4, 4)
    for sim in (maps.l1_similarity, maps.l2_similarity):
        assert torch.isnan(sim(zeros, ones)).all()  # was 0.99999999: "identical"
        mixed = torch.stack([torch.rand(4, 4), torch.ones(4, 4)])
        out = sim(mixed, mixed)
        assert out[0] == pytest.approx(1.0, abs=1e-6) and torch.isnan(out[1])


def test_spearman_brown_of_minus_one_is_undefined() -> None:
    assert np.isnan(maps.spearman_brown(-1.0))
    np.testing.assert_allclose(maps.spearman_brown(np.array([-1.0, 0.5, np.nan])), [np.nan, 2 / 3, np.nan])
    assert maps.spearman_brown(0.5) == pytest.approx(2 / 3)


def test_expected_reliability_without_variance_is_undefined() -> None:
    assert np.isnan(maps.expected_split_half_reliability(np.ones(4), 10))


def test_streaming_nan_says_why() -> None:
    metric = streaming.Deletion(steps=4)
    metric.update(NET, X, torch.zeros_like(A), T)  # constant maps: every score undefined
    with pytest.warns(UserWarning, match=r"every score is undefined \(4 images: 4 x constant map"):
        assert torch.isnan(metric.compute())
    assert "constant map" in metric.nan_reason
    metric.reset()
    assert metric.nan_reasons == {} and "call update() first" in metric.nan_reason
