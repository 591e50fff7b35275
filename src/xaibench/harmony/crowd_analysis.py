"""A crowdsourced study as one tidy table, its declared exclusion rules, and its analysis with and
without exclusions (pure pandas below ``study_frame``). See docs/harmony.md.

Rules (the study's ``crowdsourcing.exclusions``; a participant is excluded by any rule it meets):
- ``attention_max_failed``: the share of failed attention checks is above the threshold;
- ``min_median_response_ms``: the median server-measured response time of the main examples is below it;
- ``straightlining_max_share``: the share of the most used answer key (left / right / neither)
  among the main examples is above it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xaibench.harmony.analysis import analyze

RULE_COLUMNS = {"attention_max_failed": "excluded_attention", "min_median_response_ms": "excluded_speed",
                "straightlining_max_share": "excluded_straightlining"}
CODEBOOK = {
    "study": "study name (the manifest's name)",
    "participant": "pseudonym: the first 16 hex digits of HMAC-SHA256(server key, platform identifier)",
    "completed": "true when the participant reached the completion code",
    "position": "step number in the participant's sequence (1 = first)",
    "trial_kind": "practice (feedback given, not analysed), catch (attention check) or main",
    "check_kind": "practice/catch: same (one map on both sides, 'neither' expected) or wrong (a real and an obviously wrong map)",
    "dataset": "main: the condition's data set",
    "metric": "main: the explanation metric the fine-tuned model optimised",
    "model": "main: the model",
    "method": "main: the attribution method",
    "condition_id": "main: database id of the condition",
    "example": "main: example id in the study data set; practice/catch: item id, or the example whose map was used",
    "finetuned_side": "main: the side (left/right) the fine-tuned map was shown on",
    "answer_side": "the answer as given: left, right or neither",
    "choice": "main: finetuned, original or neither (the answer mapped through the sides)",
    "expected": "practice/catch: the expected answer (left, right or neither)",
    "check_passed": "practice/catch: answer_side == expected",
    "response_ms": "time from the server sending the page to receiving the answer, ms",
    "client_response_ms": "time reported by the browser, ms (not trusted)",
    "revisions": "how many times the answer was changed",
    "answered_at": "time of the last answer (UTC)",
    "excluded": "the participant is excluded by at least one rule",
    "excluded_attention": "rule attention_max_failed: share of failed attention checks above the threshold",
    "excluded_speed": "rule min_median_response_ms: median main response time below the threshold",
    "excluded_straightlining": "rule straightlining_max_share: share of the most used answer key above the threshold",
}
COLUMNS = list(CODEBOOK)


def study_frame(study) -> pd.DataFrame:
    """Every answered trial of the study's participants as the tidy table (``COLUMNS``), with the
    exclusion flags of the study's declared rules."""
    from xaibench.harmony.models import Trial

    trials = (Trial.objects.filter(participant__study=study).exclude(answer="")
              .select_related("participant", "example__condition", "item").order_by("participant__enrolled_at", "participant_id", "position"))
    rows = []
    for t in trials:
        main = t.kind == Trial.MAIN
        cond = t.example.condition if main else None
        choice = ""
        if main:
            choice = "neither" if t.answer == "neither" else ("finetuned" if (t.answer == "left") == t.finetuned_left else "original")
        rows.append({
            "study": study.name, "participant": t.participant.pseudonym, "completed": t.participant.completed_at is not None,
            "position": t.position, "trial_kind": t.kind, "check_kind": t.check_kind,
            "dataset": cond.dataset if main else "", "metric": cond.metric if main else "", "model": cond.model if main else "",
            "method": cond.method if main else "", "condition_id": cond.pk if main else None,
            "example": t.item.key if t.item_id else (t.example.key if t.example_id else ""),
            "finetuned_side": ("left" if t.finetuned_left else "right") if main else "", "answer_side": t.answer,
            "choice": choice, "expected": t.expected, "check_passed": None if main else t.answer == t.expected,
            "response_ms": t.response_ms, "client_response_ms": t.client_response_ms, "revisions": t.revisions,
            "answered_at": t.answered_at,
        })
    df = pd.DataFrame(rows, columns=COLUMNS[: COLUMNS.index("answered_at") + 1])
    for column in ("condition_id", "response_ms", "client_response_ms"):
        df[column] = df[column].astype("Int64")
    return with_exclusions(df, study.config.get("exclusions", {}))


def participant_table(tidy: pd.DataFrame, rules: dict) -> pd.DataFrame:
    """Per participant: main answers, attention checks and failures, median response time, share
    of the most used key, and one boolean column per rule (``RULE_COLUMNS``) plus ``excluded``."""
    main = tidy[tidy["trial_kind"] == "main"]
    catch = tidy[tidy["trial_kind"] == "catch"]
    table = pd.DataFrame(index=pd.Index(sorted(tidy["participant"].unique()), name="participant"))
    table["main"] = main.groupby("participant").size().reindex(table.index, fill_value=0)
    table["checks"] = catch.groupby("participant").size().reindex(table.index, fill_value=0)
    table["checks_failed"] = (~catch["check_passed"].astype(bool)).groupby(catch["participant"]).sum().reindex(table.index, fill_value=0)
    rt = pd.to_numeric(main["response_ms"], errors="coerce").astype(float)
    table["median_response_ms"] = rt.groupby(main["participant"]).median().reindex(table.index)
    shares = main.groupby("participant")["answer_side"].agg(lambda s: s.value_counts(normalize=True).max())
    table["top_key_share"] = shares.reindex(table.index).astype(float)
    failed_share = table["checks_failed"] / table["checks"].replace(0, np.nan)
    tests = {"attention_max_failed": lambda t: failed_share > t,
             "min_median_response_ms": lambda t: table["median_response_ms"] < t,
             "straightlining_max_share": lambda t: table["top_key_share"] > t}
    for rule, column in RULE_COLUMNS.items():
        table[column] = tests[rule](rules[rule]).fillna(False).astype(bool) if rule in rules else False
    table["excluded"] = table[list(RULE_COLUMNS.values())].any(axis=1)
    return table


def with_exclusions(tidy: pd.DataFrame, rules: dict) -> pd.DataFrame:
    """The tidy table with the participants' exclusion flags (``excluded`` and one per rule)."""
    table = participant_table(tidy, rules)
    flags = ["excluded", *RULE_COLUMNS.values()]
    out = tidy.drop(columns=[c for c in flags if c in tidy.columns]).join(table[flags], on="participant")
    return out[COLUMNS]


def labels_of(tidy: pd.DataFrame) -> pd.DataFrame:
    """The main answers in the analysis's input format (``annotator`` = participant pseudonym)."""
    main = tidy[tidy["trial_kind"] == "main"]
    return main.rename(columns={"participant": "annotator"})[
        ["annotator", "dataset", "metric", "model", "method", "example", "choice", "response_ms"]]


def analyze_study(tidy: pd.DataFrame, confidence: float = 0.95, alpha: float = 0.05) -> dict:
    """Exclusions (participants and labels removed per rule, from the table's flags), the analysis
    of all main answers and of those kept, and the balance of labels over examples, conditions and sides."""
    tidy = tidy.copy()
    for column in ["excluded", *RULE_COLUMNS.values()]:
        tidy[column] = tidy[column].astype(str).str.lower().isin(["true", "1"])
    main = tidy[tidy["trial_kind"] == "main"]
    people = tidy.drop_duplicates("participant")
    rules = []
    for rule, column in RULE_COLUMNS.items():
        rules.append({"rule": rule, "participants": int(people[column].sum()), "labels": int(main[column].sum())})
    labels = labels_of(tidy)
    kept = labels[~main["excluded"].to_numpy()]
    per_example = main.groupby(["metric", "model", "method", "dataset", "example"])
    sides = per_example["finetuned_side"].agg(lambda s: abs(int((s == "left").sum()) - int((s == "right").sum())))
    per_condition = main.groupby(["dataset", "metric", "model", "method"]).size()
    return {
        "participants": int(len(people)), "completed": int(people["completed"].astype(str).str.lower().isin(["true", "1"]).sum()),
        "exclusions": rules, "excluded_participants": int(people["excluded"].sum()), "excluded_labels": int(main["excluded"].sum()),
        "balance": {"labels_per_example_min": int(per_example.size().min()) if len(main) else 0,
                    "labels_per_example_max": int(per_example.size().max()) if len(main) else 0,
                    "labels_per_condition": {" / ".join(k): int(v) for k, v in per_condition.items()},
                    "side_imbalance_max": int(sides.max()) if len(main) else 0},
        "all": analyze(labels, confidence=confidence, alpha=alpha),
        "kept": analyze(kept, confidence=confidence, alpha=alpha),
    }


def format_study(result: dict) -> str:
    from xaibench.harmony.analysis import format_report

    b = result["balance"]
    lines = [f"{result['participants']} participant(s), {result['completed']} completed",
             "Exclusions (a participant may meet several rules):"]
    lines += [f"  {r['rule']}: {r['participants']} participant(s), {r['labels']} label(s) removed" for r in result["exclusions"]]
    lines += [f"  any rule: {result['excluded_participants']} participant(s), {result['excluded_labels']} label(s) removed",
              f"Balance: {b['labels_per_example_min']} to {b['labels_per_example_max']} labels per example; "
              f"largest left/right difference of an example's fine-tuned side {b['side_imbalance_max']}"]
    lines += [f"  {k}: {v} labels" for k, v in b["labels_per_condition"].items()]
    lines += ["", "== Without exclusions ==", format_report(result["all"]),
              "", "== With exclusions ==", format_report(result["kept"])]
    return "\n".join(lines)


def write_codebook(path, study_name: str, rules: dict, rows: int) -> None:
    from xaibench.files import write_text

    lines = [f"# Codebook: {study_name}", "", f"{rows} rows, one per answer (practice, attention check or main example).",
             "", "| column | meaning |", "|---|---|"]
    lines += [f"| `{c}` | {m} |" for c, m in CODEBOOK.items()]
    lines += ["", "Declared exclusion rules (thresholds):", ""]
    lines += [f"- `{k}` = {v:g}" for k, v in rules.items()] or ["- none"]
    write_text(path, "\n".join(lines) + "\n")


def export_study(name: str, out) -> tuple:
    """Write ``OUT/<name>.csv`` (the tidy table) and ``OUT/<name>-codebook.md``; returns both paths."""
    from pathlib import Path

    from xaibench.errors import InputError
    from xaibench.files import write_atomic
    from xaibench.harmony.models import Study

    study = Study.objects.filter(name=name).first()
    if study is None:
        known = ", ".join(Study.objects.values_list("name", flat=True)) or "none loaded"
        raise InputError(f"no crowdsourced study named {name!r} (studies: {known})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = study_frame(study)
    table, codebook = out / f"{name}.csv", out / f"{name}-codebook.md"
    write_atomic(table, lambda tmp: df.to_csv(tmp, index=False))
    write_codebook(codebook, name, study.config.get("exclusions", {}), len(df))
    return table, codebook
