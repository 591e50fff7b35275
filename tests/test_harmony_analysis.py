"""HARMONY analysis as a pure function over a DataFrame: statistics against published examples,
scipy and the krippendorff package (no Django needed)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xaibench.harmony.analysis import (
    analyze,
    binomial_test,
    fleiss_kappa,
    format_report,
    krippendorff_alpha_nominal,
    to_jsonable,
    wilson_interval,
)

# Fleiss (1971), as worked through on Wikipedia: 10 items, 14 raters, 5 categories, kappa = 0.210.
FLEISS_EXAMPLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)


def test_fleiss_kappa_published_example():
    assert fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(0.20993, abs=5e-5)
    assert round(fleiss_kappa(FLEISS_EXAMPLE), 3) == 0.210
    assert fleiss_kappa(np.array([[3, 0], [0, 3]])) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa(np.array([[0, 5], [0, 5]])))  # one category only: undefined
    with pytest.raises(ValueError):
        fleiss_kappa(np.array([[1, 1], [3, 0]]))


def _counts(reliability: np.ndarray, values) -> np.ndarray:
    return np.stack([(reliability == v).sum(axis=0) for v in values], axis=1)


def test_krippendorff_alpha_published_example_and_package():
    krippendorff = pytest.importorskip("krippendorff")
    nan = np.nan
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": nominal alpha = 0.743
    data = np.array(
        [
            [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
            [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
        ]
    )
    ours = krippendorff_alpha_nominal(_counts(data, [1, 2, 3, 4, 5]))
    assert round(ours, 3) == 0.743
    assert ours == pytest.approx(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"), abs=1e-12)

    rng = np.random.default_rng(0)
    for trial in range(5):
        raters, units = rng.integers(2, 7), rng.integers(5, 60)
        data = rng.integers(0, 3, size=(raters, units)).astype(float)
        data[rng.random(data.shape) < 0.2] = np.nan
        if trial % 2:  # some agreement
            data[:, : units // 2] = np.where(np.isnan(data[:, : units // 2]), np.nan, data[0, : units // 2])
        expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
        assert krippendorff_alpha_nominal(_counts(data, [0, 1, 2])) == pytest.approx(expected, abs=1e-10)


def test_binomial_test_matches_scipy():
    for k, n, p in [(0, 1, 0.5), (7, 10, 0.5), (623, 662, 0.5), (3, 40, 0.5), (20, 40, 0.5), (5, 30, 0.3), (29, 30, 0.7), (12, 12, 0.5)]:
        assert binomial_test(k, n, p) == pytest.approx(stats.binomtest(k, n, p).pvalue, rel=1e-9, abs=1e-300)
    assert math.isnan(binomial_test(0, 0))


def test_wilson_interval_matches_scipy_and_formula():
    for k, n in [(0, 10), (1, 10), (623, 662), (50, 100), (10, 10), (3, 7)]:
        ours = wilson_interval(k, n)
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert ours == pytest.approx((ref.low, ref.high), abs=1e-12)
        z = 1.959963984540054
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert ours == pytest.approx((max(0, centre - half), min(1, centre + half)), abs=1e-12)
    ours = wilson_interval(7, 20, confidence=0.9)
    ref = stats.binomtest(7, 20).proportion_ci(confidence_level=0.9, method="wilson")
    assert ours == pytest.approx((ref.low, ref.high), abs=1e-12)


def _frame(rows):
    return pd.DataFrame(rows, columns=["annotator", "example", "choice", "metric", "model", "method"])


def test_analyze_counts_preference_agreement_and_annotators():
    rows = []
    # condition A: 4 examples x 3 annotators; condition B: everything "neither"
    choices_a = {
        "e1": ["finetuned", "finetuned", "finetuned"],
        "e2": ["finetuned", "original", "learn"],  # legacy spelling of fine-tuned
        "e3": ["neither", "neither", "original"],
        "e4": ["finetuned", "finetuned", "neither"],
    }
    for ex, cs in choices_a.items():
        for ann, c in zip(["a1", "a2", "a3"], cs):
            rows.append([ann, ex, c, "M1", "VGG", "GradCAM"])
    for ex in ["e1", "e2"]:
        for ann in ["a1", "a2", "a3"]:
            rows.append([ann, ex, "neither", "M1", "VGG", "Guided"])
    df = _frame(rows)
    df["response_ms"] = 1000
    res = analyze(df)
    assert res["n_labels"] == 18 and res["n_annotators"] == 3
    by = {c["method"]: c for c in res["conditions"]}
    a = by["GradCAM"]
    assert (a["n"], a["finetuned"], a["original"], a["neither"]) == (12, 7, 2, 3)
    assert a["pct_finetuned"] == pytest.approx(700 / 12) and a["pct_neither"] == pytest.approx(25.0)
    assert a["preference"] == pytest.approx(7 / 9)
    assert a["p_value"] == pytest.approx(stats.binomtest(7, 9).pvalue)
    ref = stats.binomtest(7, 9).proportion_ci(method="wilson")
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((ref.low, ref.high))
    table = np.array([[3, 0, 0], [2, 1, 0], [0, 1, 2], [2, 0, 1]])
    assert a["fleiss_kappa"] == pytest.approx(fleiss_kappa(table))
    assert a["krippendorff_alpha"] == pytest.approx(krippendorff_alpha_nominal(table))
    b = by["Guided"]
    assert b["pct_neither"] == 100.0 and math.isnan(b["preference"]) and math.isnan(b["fleiss_kappa"])
    (m1,) = res["metrics"]
    assert m1["n"] == 18 and m1["conditions"] == 2 and m1["finetuned"] == 7
    ann = {x["annotator"]: x for x in res["annotators"]}
    assert ann["a1"]["n"] == 6 and ann["a1"]["median_response_ms"] == 1000
    # a3 vs the others' majority: e1 agree, e2 (others split) skipped, e3 disagree, e4 disagree, B: 2 agree
    assert ann["a3"]["majority_agreement"] == pytest.approx(3 / 5)
    assert to_jsonable(res)["conditions"][1]["preference"] is None
    text = format_report(res)
    assert "Per condition" in text and "Pooled per metric" in text and "a3" in text


def test_analyze_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown choice"):
        analyze(_frame([["a", "e", "left", "M", "m", "x"]]))
    with pytest.raises(ValueError, match="lack column"):
        analyze(pd.DataFrame({"annotator": ["a"], "choice": ["neither"]}))
    assert analyze(_frame([]))["n_labels"] == 0


def test_fleiss_uses_items_with_the_modal_number_of_ratings():
    rows = [[f"a{i}", "e1", "finetuned", "M", "m", "x"] for i in range(3)]
    rows += [[f"a{i}", "e2", "original", "M", "m", "x"] for i in range(3)]
    rows += [["a0", "e3", "finetuned", "M", "m", "x"], ["a1", "e3", "original", "M", "m", "x"]]
    rows += [["a0", "e4", "neither", "M", "m", "x"]]
    c = analyze(_frame(rows))["conditions"][0]
    assert c["fleiss_raters"] == 3 and c["fleiss_items"] == 2 and c["fleiss_kappa"] == pytest.approx(1.0)
    assert c["alpha_items"] == 3 and c["items"] == 4
