"""Import the database of the published HARMONY study (Django app label ``relevavance``).

Examples are imported without pictures (the original database stores only image paths). Choices
``learn`` / ``original`` / ``neither`` become ``finetuned`` / ``original`` / ``neither``. When an
(annotator, example) pair was labelled more than once, the latest label (highest id) wins.

The file is checked before anything is written: required tables and columns, a readable (not
damaged) database, and every row: no NULL, BLOB or non-UTF-8 value, no empty name, no string longer
than the column it goes to, no label whose user or example is missing, no unknown choice. Rows with
problems stop the import with a report (``skip_invalid`` imports the others and counts them).
Legacy annotators become inactive accounts without a password, named ``legacy.<name>``: they can
never log in and never merge into a live account. Legacy conditions are marked ``legacy``: they never
merge into a live condition of the same names (nor a live one into them), are never assigned to a
live annotator, and their labels stay on their own examples.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path

from xaibench.errors import InputError

LEGACY_CHOICES = {"learn": "finetuned", "original": "original", "neither": "neither"}
LEGACY_PREFIX = "legacy."  # namespace of imported annotators; `add-annotator` refuses it
STUDY = "harmony-2024"
REQUIRED_COLUMNS = {
    "auth_user": {"id", "username"},
    "relevavance_dataset": {"id", "name"},
    "relevavance_experiment": {"id", "name"},
    "relevavance_cnnmodel": {"id", "name"},
    "relevavance_relevancymethod": {"id", "name"},
    "relevavance_example": {"id", "dataset_id", "experiment_id", "cnn_model_id", "relevancy_method_id", "image", "prediction"},
    "relevavance_label": {"id", "user_id", "example_id", "choice"},
}
# the longest value per field: the columns of xaibench.harmony.models that receive them
MAX_LENGTH = {"data set": 128, "metric": 128, "model": 128, "method": 128, "image": 512, "prediction": 256,
              "username": 150 - len(LEGACY_PREFIX), "choice": 16}
SHOW_IDS = 5


class _NotUtf8(bytes):
    """A TEXT value that is not valid UTF-8 (reported like a BLOB)."""


def _text_factory(raw: bytes):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _NotUtf8(raw)


def _problem(field: str, value, allow_empty: bool = False) -> str | None:
    """Why ``value`` cannot be imported as ``field``, or None."""
    if value is None:
        return f"{field} is NULL"
    if not isinstance(value, str):
        return f"{field} is not text ({'invalid UTF-8' if isinstance(value, _NotUtf8) else type(value).__name__})"
    if "\x00" in value:
        return f"{field} contains a NUL character"
    if not allow_empty and not value.strip():
        return f"{field} is empty"
    if len(value.strip()) > MAX_LENGTH[field]:
        return f"{field} is longer than {MAX_LENGTH[field]} characters"
    return None


def _report(path: Path, problems: dict[str, list]) -> str:
    parts = []
    for reason, ids in sorted(problems.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(map(str, ids[:SHOW_IDS])) + (", ..." if len(ids) > SHOW_IDS else "")
        parts.append(f"{len(ids)} x {reason} (id {shown})")
    return f"{path}: {sum(map(len, problems.values()))} row(s) cannot be imported: " + "; ".join(parts)


def _connect(path: Path) -> sqlite3.Connection:
    """A read-only connection to a database that has the required tables and columns."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        con.text_factory = _text_factory
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        columns = {t: {r[1] for r in con.execute(f"PRAGMA table_info({t})")} for t in REQUIRED_COLUMNS if t in tables}
    except sqlite3.DatabaseError as err:
        raise InputError(f"{path}: not an SQLite database, or a damaged one ({err})") from None
    missing = sorted(set(REQUIRED_COLUMNS) - tables)
    lacking = [f"{t} lacks {', '.join(sorted(REQUIRED_COLUMNS[t] - c))}" for t, c in columns.items() if REQUIRED_COLUMNS[t] - c]
    if missing or lacking:
        con.close()
        if missing:
            raise InputError(f"{path}: not a HARMONY study database, missing table(s) {', '.join(missing)}")
        raise InputError(f"{path}: not a HARMONY study database, missing column(s): {'; '.join(lacking)}")
    return con


def read_legacy(path: str | Path, skip_invalid: bool = False) -> dict:
    """Read and check the legacy database (read-only). Returns the valid ``examples`` and
    ``labels`` as tuples, and ``problems`` (reason -> row ids) of the rows left out, which is empty
    unless ``skip_invalid``; otherwise any problem raises ``InputError`` with the report."""
    path = Path(path).expanduser()
    try:
        found = path.is_file()
    except OSError as err:
        raise InputError(f"legacy database {str(path)[:80]!r}...: {err.strerror or err}") from None
    if not found:
        raise InputError(f"legacy database not found: {path}")
    con = _connect(path)
    try:
        example_rows = con.execute(
            """SELECT e.id, d.name, x.name, m.name, r.name, e.image, e.prediction
               FROM relevavance_example e
               LEFT JOIN relevavance_dataset d ON d.id = e.dataset_id
               LEFT JOIN relevavance_experiment x ON x.id = e.experiment_id
               LEFT JOIN relevavance_cnnmodel m ON m.id = e.cnn_model_id
               LEFT JOIN relevavance_relevancymethod r ON r.id = e.relevancy_method_id
               ORDER BY e.id"""
        ).fetchall()
        label_rows = con.execute(
            "SELECT l.id, u.id, u.username, l.example_id, l.choice FROM relevavance_label l "
            "LEFT JOIN auth_user u ON u.id = l.user_id ORDER BY l.id"
        ).fetchall()
    except sqlite3.DatabaseError as err:
        raise InputError(
            f"{path}: the database cannot be read ({err}); it may be damaged (`sqlite3 {path} .recover` "
            "can save what is left)"
        ) from None
    finally:
        con.close()

    problems: dict[str, list] = defaultdict(list)
    examples, idents = [], set()
    for row in example_rows:
        legacy_id, *names, image, prediction = row
        if not isinstance(legacy_id, int):
            problems["example id is not an integer"].append(repr(legacy_id)[:20])
            continue
        checks = [_problem(f, v) for f, v in zip(("data set", "metric", "model", "method"), names)]
        checks += [_problem("image", image, allow_empty=True), _problem("prediction", prediction, allow_empty=True)]
        reasons = [c for c in checks if c]
        if reasons:
            problems[f"example: {reasons[0]}"].append(legacy_id)
            continue
        example = (legacy_id, *(n.strip() for n in names), image.strip(), prediction.strip())
        ident = (*example[1:5], _example_key(example[5], legacy_id))
        if ident in idents:
            problems["example whose image name repeats another of its condition"].append(legacy_id)
            continue
        idents.add(ident)
        examples.append(example)
    known_examples = {e[0] for e in examples}
    labels = []
    for label_id, user_pk, username, example_id, choice in label_rows:
        if user_pk is None:
            reason = "label whose user is missing"
        elif example_id not in known_examples:
            reason = "label whose example is missing or cannot be imported"
        else:
            reason = _problem("username", username) or _problem("choice", choice)
            if reason is None and choice not in LEGACY_CHOICES:
                reason = f"label with unknown choice {choice!r} (known: {', '.join(LEGACY_CHOICES)})"
            elif reason is not None:
                reason = f"label: {reason}"
        if reason:
            problems[reason].append(label_id)
            continue
        labels.append((label_id, username, example_id, choice))  # exact: two legacy names never merge
    if problems and not skip_invalid:
        raise InputError(_report(path, problems) + "; fix the database or import the other rows with --skip-invalid")
    return {"examples": examples, "labels": labels, "problems": dict(problems)}


def _example_key(image_path: str, legacy_id: int) -> str:
    stem = Path(image_path).name
    key = stem[: -len("_image.png")] if stem.endswith("_image.png") else ""
    return key if key and len(key) <= 128 else str(legacy_id)


def _legacy_users(names: list[str]) -> tuple[dict, int]:
    """The inactive, password-less ``legacy.<name>`` account of each name (created if needed) and
    how many were created; refuses a name held by an account that can log in."""
    from django.contrib.auth import get_user_model

    User = get_user_model()
    users, created = {}, 0
    for name in names:
        username = LEGACY_PREFIX + name
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User(username=username, is_active=False)
            user.set_unusable_password()
            user.save()
            created += 1
        elif user.is_active or user.is_staff or user.is_superuser or user.has_usable_password():
            raise InputError(
                f"account {username!r} exists and is not an imported legacy annotator (it can log in); "
                "rename or deactivate it before importing"
            )
        users[name] = user
    return users, created


def import_legacy(path: str | Path, skip_invalid: bool = False) -> dict[str, int]:
    """Import a legacy HARMONY database. Idempotent: importing again updates and adds nothing twice."""
    from django.db import transaction

    from xaibench.harmony.dataset import assign_conditions
    from xaibench.harmony.models import Condition, Example, Label

    data = read_legacy(path, skip_invalid=skip_invalid)
    latest: dict[tuple[str, int], tuple[int, str]] = {}
    for label_id, username, example_id, choice in data["labels"]:
        latest[(username, example_id)] = (label_id, LEGACY_CHOICES[choice])  # ordered by id: latest wins
    duplicates = len(data["labels"]) - len(latest)
    skipped = sum(map(len, data["problems"].values()))

    counts = {"conditions": 0, "examples": len(data["examples"]), "annotators": 0,
              "labels_read": len(data["labels"]), "rows_skipped": skipped,
              "labels": len(latest), "duplicates": duplicates, "labels_created": 0, "labels_updated": 0}
    with transaction.atomic():
        conditions: dict[tuple[str, str, str, str], Condition] = {}
        for _, dataset, metric, model, method, _image, _pred in data["examples"]:
            ident = (dataset, metric, model, method)
            if ident not in conditions:
                conditions[ident], _ = Condition.objects.get_or_create(
                    dataset=dataset, metric=metric, model=model, method=method, legacy=True, defaults={"study": STUDY}
                )
        counts["conditions"] = len(conditions)
        existing = {(e.condition_id, e.key): e for e in Example.objects.filter(condition__in=conditions.values())}
        new_examples = []
        by_legacy: dict[int, tuple[int, str]] = {}
        position: dict[int, int] = {}
        for legacy_id, dataset, metric, model, method, image, prediction in data["examples"]:
            cond = conditions[(dataset, metric, model, method)]
            key = _example_key(image, legacy_id)
            by_legacy[legacy_id] = (cond.pk, key)
            pos = position.get(cond.pk, 0)
            position[cond.pk] = pos + 1
            if (cond.pk, key) not in existing:
                new_examples.append(
                    Example(condition=cond, key=key, position=pos, prediction=prediction, source_image=image)
                )
        Example.objects.bulk_create(new_examples, batch_size=500)
        example_pk = {
            (e.condition_id, e.key): e.pk for e in Example.objects.filter(condition__in=conditions.values())
        }

        users, counts["annotators"] = _legacy_users(sorted({u for u, _ in latest}))
        for user in users.values():
            assign_conditions(user, list(conditions.values()))

        have = {
            (a, e): (pk, c)
            for pk, a, e, c in Label.objects.filter(annotator__in=users.values()).values_list(
                "pk", "annotator_id", "example_id", "choice"
            )
        }
        new_labels, changed = [], []
        for (username, legacy_example), (label_id, choice) in latest.items():
            user_id = users[username].pk
            ex_id = example_pk[by_legacy[legacy_example]]
            if (user_id, ex_id) in have:
                pk, old = have[(user_id, ex_id)]
                if old != choice:
                    changed.append(Label(pk=pk, choice=choice, legacy_id=label_id))
            else:
                new_labels.append(Label(annotator_id=user_id, example_id=ex_id, choice=choice, legacy_id=label_id))
        Label.objects.bulk_create(new_labels, batch_size=1000)
        Label.objects.bulk_update(changed, ["choice", "legacy_id"], batch_size=1000)
        counts["labels_created"] = len(new_labels)
        counts["labels_updated"] = len(changed)
    return counts
