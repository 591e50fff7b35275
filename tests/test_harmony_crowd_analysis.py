"""Power of the preference test (against hand computation, brute force over scipy's binomial test
and a simulation), Holm's adjustment, the sample-size plan, and the exclusion rules of a
crowdsourced study on a hand-built table (no Django needed)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xaibench.harmony.analysis import analyze
from xaibench.harmony.crowd_analysis import COLUMNS, analyze_study, participant_table, with_exclusions
from xaibench.harmony.power import binomial_power, critical_count, decided_needed, holm, plan


@functools.lru_cache(maxsize=None)
def rejected(n: int, alpha: float) -> tuple[int, ...]:
    """The counts k of n that scipy's exact two-sided test of 0.5 rejects at ``alpha``."""
    return tuple(k for k in range(n + 1) if stats.binomtest(k, n, 0.5).pvalue <= alpha)


def reference_power(n: int, p: float, alpha: float) -> float:
    """Power by enumeration: the rejected counts weighted by Binomial(n, p)."""
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in rejected(n, alpha))


def test_power_by_hand_n10():
    # n = 10: 2 P(X <= 1) = 22/1024 = 0.021 <= 0.05 but 2 P(X <= 2) = 112/1024 = 0.109: reject 0, 1, 9, 10
    assert critical_count(10, 0.05) == 1
    by_hand = 0.8**10 + 10 * 0.8**9 * 0.2 + 0.2**10 + 10 * 0.2**9 * 0.8
    assert binomial_power(10, 0.8, 0.05) == pytest.approx(by_hand, rel=1e-12)
    assert binomial_power(5, 0.9, 0.05) == 0.0  # 2 / 32 = 0.0625 > 0.05: nothing can be rejected


@pytest.mark.parametrize("alpha", [0.05, 0.00625])
def test_power_matches_enumeration_over_scipy_binomtest(alpha):
    for n in [*range(1, 41), 97, 200, 601]:
        for p in (0.3, 0.5, 0.62, 0.941):
            assert binomial_power(n, p, alpha) == pytest.approx(reference_power(n, p, alpha), abs=1e-12), (n, p)
    ns = np.arange(1, 41)
    assert np.allclose(binomial_power(ns, 0.7, alpha), [reference_power(int(n), 0.7, alpha) for n in ns], atol=1e-12)


def test_power_matches_simulation():
    n, p, alpha = 80, 0.65, 0.05
    reject = np.array([stats.binomtest(k, n, 0.5).pvalue <= alpha for k in range(n + 1)])
    draws = np.random.default_rng(0).binomial(n, p, size=40_000)
    simulated = reject[draws].mean()
    expected = binomial_power(n, p, alpha)
    assert abs(simulated - expected) < 4 * math.sqrt(expected * (1 - expected) / draws.size)


def test_decided_needed_is_the_smallest_n_reaching_the_power():
    for p, alpha in [(0.6, 0.05), (0.941, 0.05 / 8), (0.3, 0.01)]:
        n = decided_needed(p, alpha, 0.8)
        assert reference_power(n, p, alpha) >= 0.8
        assert (binomial_power(np.arange(1, n), p, alpha) < 0.8).all()
    with pytest.raises(ValueError, match="not 0.5"):
        decided_needed(0.5)


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    out = holm([0.01, 0.04, np.nan, 0.03, 0.005])
    assert np.allclose(out, [0.03, 0.06, np.nan, 0.06, 0.02], equal_nan=True)
    assert holm([0.9, 0.8]).tolist() == [1.0, 1.0]


def test_plan_labels_and_participants():
    result = plan(0.6, neither=0.25, conditions=4, alpha=0.05, power=0.8, examples_per_participant=20)
    decided = decided_needed(0.6, 0.05 / 4, 0.8)
    assert result["decided"] == decided and result["alpha_per_condition"] == 0.0125
    assert result["labels_per_condition"] == math.ceil(decided / 0.75)
    assert result["participants"] == math.ceil(result["labels_per_condition"] * 4 / 20)
    assert plan(0.6, conditions=4, correction="holm")["decided"] == decided  # Holm planned as its worst case
    assert plan(0.6, conditions=4, correction="none")["decided"] == decided_needed(0.6, 0.05, 0.8)


def test_analysis_reports_holm_and_achieved_power():
    rows = [["a", f"e{i}", "finetuned" if i < 30 else "original", "M", "m", "x"] for i in range(40)]
    rows += [["a", f"f{i}", "finetuned" if i < 11 else "neither", "M", "m", "y"] for i in range(20)]
    result = analyze(pd.DataFrame(rows, columns=["annotator", "example", "choice", "metric", "model", "method"]))
    x, y = result["conditions"]
    assert x["power"] == pytest.approx(reference_power(40, 30 / 40, 0.025))
    assert y["power"] == pytest.approx(reference_power(11, 1.0, 0.025))
    p = sorted([x["p_value"], y["p_value"]])
    assert sorted([x["p_holm"], y["p_holm"]]) == pytest.approx([2 * p[0], max(2 * p[0], p[1])])


def tidy(rows: list[dict]) -> pd.DataFrame:
    base = {c: "" for c in COLUMNS}
    df = pd.DataFrame([{**base, "study": "s", "completed": True, "dataset": "D", "metric": "M", "model": "m",
                        "method": "x", **r} for r in rows])
    return df[COLUMNS[: COLUMNS.index("answered_at") + 1]]


def person(name, answers, times, checks):
    rows = [{"participant": name, "trial_kind": "main", "example": f"e{i}", "answer_side": a, "response_ms": t,
             "finetuned_side": "left" if i % 2 else "right",
             "choice": "neither" if a == "neither" else ("finetuned" if (a == "left") == (i % 2 == 1) else "original")}
            for i, (a, t) in enumerate(zip(answers, times))]
    rows += [{"participant": name, "trial_kind": "catch", "answer_side": "neither", "expected": "neither", "check_passed": ok}
             for ok in checks]
    return rows


def test_exclusion_rules_on_a_hand_built_study():
    rules = {"attention_max_failed": 0.5, "min_median_response_ms": 500, "straightlining_max_share": 0.9}
    rows = (person("good", "lrnl", [1000, 1200, 900, 1100], [True, True])
            + person("careless", "lrnr", [1000] * 4, [False, False])        # 2 of 2 checks failed
            + person("borderline", "lrnn", [1000] * 4, [True, False])       # 1 of 2: not above 0.5
            + person("fast", "lrnl", [300, 200, 900, 400], [True, True])    # median 350 ms
            + person("straight", "llll", [1000] * 4, [True, True]))        # one key throughout
    table = participant_table(tidy(rows), rules)
    assert table.loc["careless", "excluded_attention"] and not table.loc["borderline", "excluded_attention"]
    assert table.loc["fast", "median_response_ms"] == 350 and table.loc["fast", "excluded_speed"]
    assert table.loc["straight", "top_key_share"] == 1.0 and table.loc["straight", "excluded_straightlining"]
    assert sorted(table.index[table["excluded"]]) == ["careless", "fast", "straight"]
    assert not participant_table(tidy(rows), {})["excluded"].any()  # no declared rule, nobody excluded

    result = analyze_study(with_exclusions(tidy(rows), rules))
    assert {r["rule"]: (r["participants"], r["labels"]) for r in result["exclusions"]} == {
        "attention_max_failed": (1, 4), "min_median_response_ms": (1, 4), "straightlining_max_share": (1, 4)}
    assert result["excluded_participants"] == 3 and result["excluded_labels"] == 12
    assert result["all"]["n_labels"] == 20 and result["kept"]["n_labels"] == 8
    assert result["kept"]["n_annotators"] == 2 and result["balance"]["labels_per_example_min"] == 5
    assert result["balance"]["side_imbalance_max"] == 5  # every example shown on one side only here


def test_power_command(capsys):
    from xaibench.errors import InputError
    from harmony_testing import cli

    cli("power", "--preference", "0.6", "--neither", "0.4", "--conditions", "8", "--examples-per-participant", "40")
    out = capsys.readouterr().out
    decided = decided_needed(0.6, 0.05 / 8, 0.8)
    labels = math.ceil(decided / 0.6)
    assert f"decided answers per condition: {decided} " in out
    assert f"labels per condition with 40.0% 'Neither': {labels}; all conditions: {8 * labels}" in out
    assert f"participants at 40 main examples each: {math.ceil(8 * labels / 40)}" in out
    with pytest.raises(InputError, match="not 0.5"):
        cli("power", "--preference", "0.5")
    with pytest.raises(InputError, match="--conditions must be at least 1"):
        cli("power", "--preference", "0.6", "--conditions", "0")
