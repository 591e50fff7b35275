"""Labels as a table: the CSV export and the input of the analysis."""

from __future__ import annotations

import pandas as pd

COLUMNS = [
    "annotator", "dataset", "metric", "model", "method", "condition_id", "example_id", "example",
    "prediction", "choice", "finetuned_side", "response_ms", "client_response_ms", "revisions", "created_at",
    "updated_at",
]


def labels_frame() -> pd.DataFrame:
    """All labels with their condition, one row per (annotator, example)."""
    from xaibench.harmony.models import Label

    rows = Label.objects.values_list(
        "annotator__username", "example__condition__dataset", "example__condition__metric",
        "example__condition__model", "example__condition__method", "example__condition_id", "example_id",
        "example__key", "example__prediction", "choice", "finetuned_left", "response_ms", "client_response_ms", "revisions",
        "created_at", "updated_at",
    ).order_by("annotator__username", "example__condition_id", "example__position", "example_id")
    df = pd.DataFrame.from_records(list(rows), columns=COLUMNS)
    df["finetuned_side"] = df["finetuned_side"].map({True: "left", False: "right"})
    for column in ("response_ms", "client_response_ms"):
        df[column] = df[column].astype("Int64")
    return df


def write_csv(target) -> int:
    """Write the labels as CSV to a path or a text file object; returns the number of rows."""
    df = labels_frame()
    df.to_csv(target, index=False)
    return len(df)
