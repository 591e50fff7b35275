"""Import the database of the published HARMONY study (Django app label ``relevavance``).

Examples are imported without pictures (the original database stores only image paths). Choices
``learn`` / ``original`` / ``neither`` become ``finetuned`` / ``original`` / ``neither``. When an
(annotator, example) pair was labelled more than once, the latest label (highest id) wins.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from xaibench.errors import InputError

LEGACY_CHOICES = {"learn": "finetuned", "original": "original", "neither": "neither"}
REQUIRED_TABLES = {
    "auth_user",
    "relevavance_dataset",
    "relevavance_experiment",
    "relevavance_cnnmodel",
    "relevavance_relevancymethod",
    "relevavance_example",
    "relevavance_label",
}


def read_legacy(path: str | Path) -> dict:
    """Read the legacy database (read-only) into plain Python lists."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"legacy database not found: {path}")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as err:
        raise InputError(f"{path}: not an SQLite database ({err})") from err
    missing = sorted(REQUIRED_TABLES - tables)
    if missing:
        con.close()
        raise InputError(f"{path}: not a HARMONY study database, missing table(s) {', '.join(missing)}")
    try:
        examples = con.execute(
            """SELECT e.id, d.name, x.name, m.name, r.name, e.image, e.prediction
               FROM relevavance_example e
               JOIN relevavance_dataset d ON d.id = e.dataset_id
               JOIN relevavance_experiment x ON x.id = e.experiment_id
               JOIN relevavance_cnnmodel m ON m.id = e.cnn_model_id
               JOIN relevavance_relevancymethod r ON r.id = e.relevancy_method_id
               ORDER BY e.id"""
        ).fetchall()
        labels = con.execute(
            "SELECT l.id, u.username, l.example_id, l.choice FROM relevavance_label l "
            "JOIN auth_user u ON u.id = l.user_id ORDER BY l.id"
        ).fetchall()
    finally:
        con.close()
    unknown = sorted({c for *_, c in labels} - set(LEGACY_CHOICES))
    if unknown:
        raise InputError(f"{path}: unknown label choice(s) {', '.join(map(repr, unknown))}")
    return {"examples": examples, "labels": labels}


def _example_key(image_path: str, legacy_id: int) -> str:
    stem = Path(image_path).name
    return stem[: -len("_image.png")] if stem.endswith("_image.png") else str(legacy_id)


def import_legacy(path: str | Path) -> dict[str, int]:
    """Import a legacy HARMONY database. Idempotent: importing again updates and adds nothing twice."""
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from xaibench.harmony.dataset import assign_conditions
    from xaibench.harmony.models import Condition, Example, Label

    data = read_legacy(path)
    User = get_user_model()
    latest: dict[tuple[str, int], tuple[int, str]] = {}
    for label_id, username, example_id, choice in data["labels"]:
        latest[(username, example_id)] = (label_id, LEGACY_CHOICES[choice])  # ordered by id: latest wins
    duplicates = len(data["labels"]) - len(latest)

    counts = {"conditions": 0, "examples": len(data["examples"]), "annotators": 0, "labels_read": len(data["labels"]),
              "labels": len(latest), "duplicates": duplicates, "labels_created": 0, "labels_updated": 0}
    with transaction.atomic():
        conditions: dict[tuple[str, str, str, str], Condition] = {}
        for _, dataset, metric, model, method, _image, _pred in data["examples"]:
            ident = (dataset, metric, model, method)
            if ident not in conditions:
                conditions[ident], _ = Condition.objects.get_or_create(
                    dataset=dataset, metric=metric, model=model, method=method, defaults={"study": "harmony-2024"}
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

        users = {}
        for username in sorted({u for u, _ in latest}):
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_unusable_password()
                user.save()
                counts["annotators"] += 1
            users[username] = user
            assign_conditions(user, list(conditions.values()))

        have = {
            (a, e): (pk, c)
            for pk, a, e, c in Label.objects.filter(annotator__in=users.values()).values_list(
                "pk", "annotator_id", "example_id", "choice"
            )
        }
        new_labels, changed = [], []
        for (username, legacy_example), (label_id, choice) in latest.items():
            if legacy_example not in by_legacy:
                raise InputError(f"{path}: label {label_id} refers to missing example {legacy_example}")
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
