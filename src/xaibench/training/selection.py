"""Model selection over the per-epoch log (a pandas DataFrame with ``epoch``, ``val_accuracy``, ``ece``).

- ``"last"``: the last epoch trained.
- ``"accuracy"``: the epoch of highest validation accuracy.
- ``"accuracy+ece"`` (default): among the top ``max(ceil(10% of the epochs), 5)`` epochs by
  validation accuracy, those within `ACCURACY_SLACK` (2 points) of the best accuracy, the one of
  lowest ECE. Ties in accuracy go to the earlier epoch, ties in ECE to the more accurate one
  (stable sorts), so the rule is a function of the log alone.
- ``"gomez"``: Gomez & Mouchère's rule as their code runs it
  (``training/multi_obj_epoch_selection.py``, ``_acc_and_ece_selection``): the same candidates
  without the slack, and the first epoch *of the whole log* whose ECE equals the candidates'
  minimum (on an exact tie that may be an epoch outside the candidates). Ties in accuracy at the
  cut go to the earlier epoch (``torch.topk`` leaves their order unspecified). In a short run the
  candidates can include undertrained epochs, so a warning names a selection more than
  `ACCURACY_SLACK` below the best accuracy.
"""

from __future__ import annotations

import warnings

import pandas as pd

from xaibench.errors import InputError

RULES = ("accuracy+ece", "gomez", "accuracy", "last")
MIN_CANDIDATES = 5
ACCURACY_SLACK = 0.02  # "accuracy+ece" never keeps an epoch further below the best validation accuracy


def candidate_count(rule: str, n_epochs: int) -> int:
    """How many top epochs by validation accuracy the rule chooses among (0 for ``"last"``)."""
    if rule == "last":
        return 0
    if rule == "accuracy":
        return 1
    if rule in ("accuracy+ece", "gomez"):
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
    best = float(top["val_accuracy"].iloc[0])
    if rule == "accuracy":
        return int(top.index[0])
    if rule == "gomez":
        epoch = int(log.loc[log["ece"] == top["ece"].min(), "epoch"].iloc[0])
        accuracy = float(log.set_index("epoch").loc[epoch, "val_accuracy"])
        if accuracy < best - ACCURACY_SLACK:
            warnings.warn(f"selection 'gomez' chose epoch {epoch} (validation accuracy {accuracy:.3f}), more than "
                          f"{ACCURACY_SLACK:.2f} below the best ({best:.3f}): its candidates, the top {k} epochs by "
                          "accuracy, include undertrained ones; train longer or use selection = 'accuracy+ece'",
                          UserWarning, stacklevel=2)
        return epoch
    near = top[top["val_accuracy"] >= best - ACCURACY_SLACK]
    return int(near.sort_values("ece", kind="stable").index[0])
