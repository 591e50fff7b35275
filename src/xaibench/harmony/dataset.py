"""The study data-set format: a folder with ``manifest.json`` and PNG files.

Validation (``read_manifest``) needs no Django; ``load_dataset`` stores it in the database.
See docs/harmony.md for the format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from xaibench.errors import InputError

FORMAT = "xaibench-harmony-study"
VERSION = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TOP_KEYS = {"format", "version", "name", "description", "conditions"}
CONDITION_KEYS = {"dataset", "metric", "model", "method", "examples", "description"}
CONDITION_REQUIRED = {"dataset", "metric", "model", "method", "examples"}
EXAMPLE_KEYS = {"id", "image", "original", "finetuned", "prediction", "label"}
EXAMPLE_REQUIRED = {"id", "image", "original", "finetuned", "prediction"}
PICTURES = ("image", "original", "finetuned")


@dataclass
class ExampleSpec:
    key: str
    prediction: str
    label: str
    pictures: dict[str, Path]  # image / original / finetuned -> absolute path
    relative: dict[str, str] = field(default_factory=dict)


@dataclass
class ConditionSpec:
    dataset: str
    metric: str
    model: str
    method: str
    examples: list[ExampleSpec]


@dataclass
class Manifest:
    root: Path
    name: str
    conditions: list[ConditionSpec]


def _check_keys(obj: object, allowed: set[str], required: set[str], where: str) -> dict:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(obj))
    if missing:
        raise InputError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    return obj


def _text(obj: dict, key: str, where: str, required: bool = True) -> str:
    value = obj.get(key, "")
    if isinstance(value, int) and not isinstance(value, bool) and key == "id":
        value = str(value)
    if not isinstance(value, str):
        raise InputError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    value = value.strip()
    if required and not value:
        raise InputError(f"{where}: {key!r} must not be empty")
    if len(value) > 128 and key in {"id", "dataset", "metric", "model", "method"}:
        raise InputError(f"{where}: {key!r} is longer than 128 characters")
    return value


def _picture(root: Path, rel: object, where: str) -> Path:
    if not isinstance(rel, str) or not rel.strip():
        raise InputError(f"{where}: expected a relative PNG path")
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise InputError(f"{where}: {rel!r} must be a path relative to the data-set folder, without '..'")
    path = root.joinpath(*pure.parts)
    if not path.is_file():
        raise InputError(f"{where}: file not found: {path}")
    with open(path, "rb") as fh:
        if fh.read(8) != PNG_SIGNATURE:
            raise InputError(f"{where}: {path} is not a PNG file")
    return path


def read_manifest(directory: str | Path) -> Manifest:
    """Read and validate DIR/manifest.json; every problem raises ``InputError`` naming its place."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise InputError(f"study data set {root}: not a directory")
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"study data set {root}: file not found: {manifest_path}")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{manifest_path}: bad JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    except UnicodeDecodeError as err:
        raise InputError(f"{manifest_path}: not UTF-8 text") from err
    where = str(manifest_path)
    _check_keys(data, TOP_KEYS, {"format", "version", "conditions"}, where)
    if data["format"] != FORMAT:
        raise InputError(f"{where}: 'format' must be {FORMAT!r}, got {data['format']!r}")
    if data["version"] != VERSION:
        raise InputError(f"{where}: unsupported 'version' {data['version']!r} (this xaibench reads version {VERSION})")
    name = _text(data, "name", where, required=False) or root.name
    if not isinstance(data["conditions"], list) or not data["conditions"]:
        raise InputError(f"{where}: 'conditions' must be a non-empty list")
    conditions: list[ConditionSpec] = []
    seen_conditions: set[tuple[str, ...]] = set()
    for ci, cond in enumerate(data["conditions"]):
        cwhere = f"{where}: conditions[{ci}]"
        _check_keys(cond, CONDITION_KEYS, CONDITION_REQUIRED, cwhere)
        ident = tuple(_text(cond, k, cwhere) for k in ("dataset", "metric", "model", "method"))
        if ident in seen_conditions:
            raise InputError(f"{cwhere}: duplicate condition {' / '.join(ident)}")
        seen_conditions.add(ident)
        if not isinstance(cond["examples"], list) or not cond["examples"]:
            raise InputError(f"{cwhere}: 'examples' must be a non-empty list")
        examples: list[ExampleSpec] = []
        seen_keys: set[str] = set()
        for ei, ex in enumerate(cond["examples"]):
            ewhere = f"{cwhere}.examples[{ei}]"
            _check_keys(ex, EXAMPLE_KEYS, EXAMPLE_REQUIRED, ewhere)
            key = _text(ex, "id", ewhere)
            if key in seen_keys:
                raise InputError(f"{ewhere}: duplicate example id {key!r}")
            seen_keys.add(key)
            pictures = {p: _picture(root, ex[p], f"{ewhere}.{p}") for p in PICTURES}
            examples.append(
                ExampleSpec(
                    key=key,
                    prediction=_text(ex, "prediction", ewhere),
                    label=_text(ex, "label", ewhere, required=False),
                    pictures=pictures,
                    relative={p: str(ex[p]) for p in PICTURES},
                )
            )
        conditions.append(ConditionSpec(*ident, examples=examples))
    return Manifest(root=root, name=name, conditions=conditions)


def _store_png(path: Path) -> str:
    """Copy a PNG into media storage under a content hash (names reveal nothing); returns its name."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    name = f"harmony/{digest[:2]}/{digest}.png"
    if not default_storage.exists(name):
        saved = default_storage.save(name, ContentFile(data))
        if saved != name:  # pragma: no cover - concurrent save of the same content
            default_storage.delete(saved)
    return name


def load_dataset(directory: str | Path, assign: bool = True) -> dict[str, int]:
    """Store a study data set (idempotent: loading again changes nothing). Returns counts."""
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from xaibench.harmony.models import Condition, Example

    manifest = read_manifest(directory)
    counts = {"conditions_created": 0, "examples_created": 0, "examples_updated": 0, "examples_unchanged": 0}
    with transaction.atomic():
        for cspec in manifest.conditions:
            condition, created = Condition.objects.get_or_create(
                dataset=cspec.dataset, metric=cspec.metric, model=cspec.model, method=cspec.method,
                defaults={"study": manifest.name},
            )
            counts["conditions_created"] += int(created)
            for position, espec in enumerate(cspec.examples):
                fields = {
                    "position": position,
                    "prediction": espec.prediction,
                    "label": espec.label,
                    "image": _store_png(espec.pictures["image"]),
                    "original_map": _store_png(espec.pictures["original"]),
                    "finetuned_map": _store_png(espec.pictures["finetuned"]),
                    "source_image": espec.relative["image"],
                }
                example = Example.objects.filter(condition=condition, key=espec.key).first()
                if example is None:
                    Example.objects.create(condition=condition, key=espec.key, **fields)
                    counts["examples_created"] += 1
                elif any(getattr(example, k) != v for k, v in fields.items()):
                    for k, v in fields.items():
                        setattr(example, k, v)
                    example.save()
                    counts["examples_updated"] += 1
                else:
                    counts["examples_unchanged"] += 1
            if assign:
                for user in get_user_model().objects.filter(is_active=True, is_staff=False):
                    assign_conditions(user, [condition])
    return counts


def assign_conditions(user, conditions) -> int:
    """Give ``user`` the ``conditions`` they do not have yet, after their existing cards, in a
    random order (so card numbers say nothing about the condition). Returns how many were added."""
    import random

    from xaibench.harmony.models import Assignment

    have = set(Assignment.objects.filter(annotator=user).values_list("condition_id", flat=True))
    new = [c for c in conditions if c.pk not in have]
    random.SystemRandom().shuffle(new)
    start = (Assignment.objects.filter(annotator=user).order_by("-position").values_list("position", flat=True).first() or 0) + 1
    Assignment.objects.bulk_create(
        [Assignment(annotator=user, condition=c, position=start + i) for i, c in enumerate(new)],
        ignore_conflicts=True,
    )
    return len(new)
