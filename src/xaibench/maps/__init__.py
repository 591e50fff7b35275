"""MAPS (Muzellec, Alghetaa, Kornblith & Kar, 2025): explanation-masked images, image-level
behaviour, and its comparison with human and monkey behaviour.

Functional core (tensors or arrays in, tensors, arrays or tables out); the pipeline is the
``maps`` experiment recipe (``xaibench experiment maps CONFIG --out DIR``).
"""

from __future__ import annotations

from xaibench.maps.behaviour import (
    expected_split_half_reliability,
    i1,
    i1_dprime,
    load_trials,
    simulate_trials,
    spearman_brown,
    split_half_reliability,
    trial_i1,
)
from xaibench.maps.consistency import (
    Estimate,
    best_method,
    bootstrap_spearman,
    consistency,
    half_splits,
    method_proxy,
    proxy_vs_ground_truth,
    rank_models,
    reference_models,
)
from xaibench.maps.emi import MAPS_FILL, MAPS_PERCENTILES, emi, keep_mask, normalised_fill
from xaibench.maps.neural import neural_predictivity, neuron_reliability
from xaibench.maps.similarity import inverse_l2, l1_similarity, l2_similarity, lpips_model, lpips_similarity

__all__ = [
    "MAPS_FILL",
    "MAPS_PERCENTILES",
    "Estimate",
    "best_method",
    "bootstrap_spearman",
    "consistency",
    "emi",
    "expected_split_half_reliability",
    "half_splits",
    "i1",
    "i1_dprime",
    "inverse_l2",
    "keep_mask",
    "l1_similarity",
    "l2_similarity",
    "load_trials",
    "lpips_model",
    "lpips_similarity",
    "method_proxy",
    "neural_predictivity",
    "neuron_reliability",
    "normalised_fill",
    "proxy_vs_ground_truth",
    "rank_models",
    "reference_models",
    "simulate_trials",
    "spearman_brown",
    "split_half_reliability",
    "trial_i1",
]
