"""Model selection over the per-epoch log (a pandas DataFrame with ``epoch``, ``val_accuracy``, ``ece``).

- ``"last"``: the last epoch trained.
- ``"accuracy"``: the epoch of highest validation accuracy.
- ``"accuracy+ece"`` (Gomez & Mouchère): among the top ``max(ceil(10% of the epochs), 5)`` epochs by
  validation accuracy, the one of lowest ECE.

Ties in accuracy go to the earlier epoch, ties in ECE to the more accurate one (stable sorts), so the
rule is a function of the log alone.
"""

from __future__ import annotations

import pandas as pd

from xaibench.errors import InputError

RULES = ("accuracy+ece", "accuracy", "last")
MIN_CANDIDATES = 5


def candidate_count(rule: str, n_epochs: int) -> int:
    """How many top epochs by validation accuracy the rule chooses among (0 for ``"last"``)."""
    if rule == "last":
        return 0
    if rule == "accuracy":
        return 1
    if rule == "accuracy+ece":
        return max(-(-n_epochs // 10), MIN_CANDIDATES)
    raise InputError(f"selection must be one of {RULES}, got {rule!r}")


def top_epochs(log: pd.DataFrame, k: int) -> list[int]:
    """The `k` epochs of highest validation accuracy (ties: earlier first), best first."""
    ranked = log.sort_values("val_accuracy", ascending=False, kind="stable")
    return [int(e) for e in ranked["epoch"].head(k)]


def select_epoch(log: pd.DataFrame, rule: str) -> int:
    """The epoch the rule selects from the per-epoch log."""
    k = candidate_count(rule, len(log))
    if len(log) == 0:
        raise InputError("cannot select an epoch from an empty training log")
    if rule == "last":
        return int(log["epoch"].iloc[-1])
    if log["val_accuracy"].isna().all():
        raise InputError(f"selection {rule!r} needs validation accuracy in the log")
    top = log.set_index("epoch").loc[top_epochs(log, k)]
    if rule == "accuracy":
        return int(top.index[0])
    return int(top.sort_values("ece", kind="stable").index[0])
