"""The study data-set format: a folder with ``manifest.json`` and PNG files.

Validation (``read_manifest``) needs no Django; ``load_dataset`` stores it in the database.
Stored pictures are re-encoded from their pixels (``canonical_png``); the two maps of an example
have one size and are stored without compression, so their files differ in nothing but the
pixels and have the same length. See docs/harmony.md for the format and what is left as a signal.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from xaibench.config import suggest
from xaibench.errors import InputError, UnknownNameError
from xaibench.modelspec import ModelSpec

FORMAT = "xaibench-harmony-study"
VERSION = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TOP_KEYS = {"format", "version", "name", "description", "conditions", "crowdsourcing"}
# optional keys that keep what is needed to compute metrics after the study (not shown to annotators)
CONDITION_MODEL_KEYS = ("original_model", "finetuned_model")  # load_model specs; file: relative to the folder
CONDITION_NAME_KEYS = ("metric_name", "method_name")  # xaibench registry names
CONDITION_KEYS = {"dataset", "metric", "model", "method", "examples", "description",
                  *CONDITION_MODEL_KEYS, *CONDITION_NAME_KEYS}
CONDITION_REQUIRED = {"dataset", "metric", "model", "method", "examples"}
MAP_ARRAYS = ("original_map", "finetuned_map")  # .npy float32 [H, W], the maps as explained
EXAMPLE_KEYS = {"id", "image", "original", "finetuned", "prediction", "label", *MAP_ARRAYS, "mask", "label_index"}
EXAMPLE_REQUIRED = {"id", "image", "original", "finetuned", "prediction"}
PICTURES = ("image", "original", "finetuned")
NPY_SIGNATURE = b"\x93NUMPY"
# the longest text per key (the database columns' sizes); paths as the data-set folder names them
MAX_TEXT = {"id": 128, "dataset": 128, "metric": 128, "model": 128, "method": 128, "name": 128,
            "prediction": 256, "label": 256, "description": 10_000,
            "original_model": 1024, "finetuned_model": 1024, "metric_name": 128, "method_name": 128,
            "completion_code": 64, "platform_study_id": 64}
MAX_PATH = 512  # a picture's path relative to the folder (Example.source_image)
MAX_DIR = 4096  # the data-set folder's own path
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_SIDE = 4096  # pixels per side of a picture


@dataclass
class ExampleSpec:
    key: str
    prediction: str
    label: str
    pictures: dict[str, Path]  # image / original / finetuned -> absolute path
    relative: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # (width, height)
    maps: dict[str, Path] = field(default_factory=dict)  # original_map / finetuned_map -> absolute .npy path
    mask: Path | None = None  # absolute PNG path, nonzero = inside, the maps' size
    label_index: int | None = None


@dataclass
class ConditionSpec:
    dataset: str
    metric: str
    model: str
    method: str
    examples: list[ExampleSpec]
    # load_model specs with file: paths made absolute; registry names of the study's metric and method
    models: dict[str, str] = field(default_factory=dict)  # original_model / finetuned_model -> spec
    metric_name: str = ""
    method_name: str = ""


@dataclass
class ItemSpec:
    """A practice example or a supplied attention check: image, real map, optional wrong map."""

    key: str
    prediction: str
    feedback: str
    pictures: dict[str, Path]  # image / map / wrong (optional) -> absolute path


@dataclass
class CrowdSpec:
    """The optional ``crowdsourcing`` section: texts, items and the settings (``CROWD_DEFAULTS`` keys)."""

    consent: str
    instructions: str
    practice: list[ItemSpec]
    catch_trials: list[ItemSpec]
    config: dict


@dataclass
class Manifest:
    root: Path
    name: str
    conditions: list[ConditionSpec]
    crowd: CrowdSpec | None = None


def check_keys(obj: object, allowed: set[str], required: set[str], where: str) -> dict:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {_short(', '.join(map(repr, unknown)))}.{suggest(unknown[0], allowed)} "
                         f"Allowed: {', '.join(sorted(allowed))}.")
    missing = sorted(required - set(obj))
    if missing:
        raise InputError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    return obj


def text_field(obj: dict, key: str, where: str, required: bool = True) -> str:
    value = obj.get(key, "")
    if isinstance(value, int) and not isinstance(value, bool) and key == "id":
        value = str(value)
    if not isinstance(value, str):
        raise InputError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    value = value.strip()
    if required and not value:
        raise InputError(f"{where}: {key!r} must not be empty")
    if len(value) > MAX_TEXT[key]:
        raise InputError(f"{where}: {key!r} has {len(value):,} characters; at most {MAX_TEXT[key]:,} are allowed")
    return value


def _short(text: str, keep: int = 80) -> str:
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text):,} characters)"


def _inside(root: Path, rel: object, where: str, kind: str = "PNG") -> tuple[Path, Path]:
    """(path as named, resolved path) of an existing file inside ``root`` (resolved)."""
    if not isinstance(rel, str) or not rel.strip():
        raise InputError(f"{where}: expected a relative {kind} path")
    if len(rel) > MAX_PATH:
        raise InputError(f"{where}: the path {_short(rel)!r} is longer than {MAX_PATH} characters")
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise InputError(f"{where}: {rel!r} must be a path relative to the data-set folder, without '..'")
    path = root.joinpath(*pure.parts)
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        raise InputError(f"{where}: file not found: {path}") from None
    except (OSError, RuntimeError) as err:  # a name too long, a symlink loop, no permission
        raise InputError(f"{where}: cannot open {path}: {getattr(err, 'strerror', None) or err}") from None
    if not resolved.is_relative_to(root):
        raise InputError(f"{where}: {rel!r} leads to {resolved}, outside the data-set folder {root} (a symbolic link?)")
    if not resolved.is_file():
        raise InputError(f"{where}: file not found: {path}")
    return path, resolved


def picture_path(root: Path, rel: object, where: str) -> tuple[Path, tuple[int, int]]:
    """The resolved path of a picture inside ``root`` (resolved) and its (width, height)."""
    path, resolved = _inside(root, rel, where)
    try:
        with open(resolved, "rb") as fh:
            if fh.read(8) != PNG_SIGNATURE:
                raise InputError(f"{where}: {path} is not a PNG file")
        with Image.open(resolved) as im:
            size = im.size
            if max(size) > MAX_SIDE:
                raise InputError(f"{where}: {path} is {size[0]}x{size[1]} pixels; at most {MAX_SIDE} per side are allowed")
            im.verify()  # chunk checksums and a complete file, without decoding the pixels
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many types for a damaged file
        raise InputError(f"{where}: {path} is not a readable PNG file ({err})") from None
    return resolved, size


def _map_array(root: Path, rel: object, where: str) -> tuple[Path, tuple[int, int]]:
    """The resolved path of a .npy map (float32 [H, W]) inside ``root`` and its (width, height)."""
    path, resolved = _inside(root, rel, where, kind=".npy")
    try:
        with open(resolved, "rb") as fh:
            if fh.read(6) != NPY_SIGNATURE:
                raise InputError(f"{where}: {path} is not a .npy file")
        array = np.load(resolved, mmap_mode="r", allow_pickle=False)  # header and length, no data read
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - numpy raises several types for a damaged file
        raise InputError(f"{where}: {path} is not a readable .npy file ({err})") from None
    if array.dtype != np.float32 or array.ndim != 2:
        raise InputError(f"{where}: {path} must hold a float32 [H, W] map, got {array.dtype} of shape {list(array.shape)}")
    height, width = array.shape
    if min(height, width) < 1 or max(height, width) > MAX_SIDE:
        raise InputError(f"{where}: {path} is {width}x{height}; 1 to {MAX_SIDE} per side are allowed")
    return resolved, (width, height)


def _model_spec(root: Path, cond: dict, key: str, where: str) -> str:
    """A load_model spec; a ``file:`` path is relative to the folder and returned absolute."""
    spec = text_field(cond, key, where)
    try:
        parsed = ModelSpec.parse(spec)
    except (InputError, UnknownNameError):
        raise InputError(f"{where}: {key!r} must be a load_model spec such as 'file:models/finetuned.pt' or "
                         f"'builtin:digits-cnn', got {spec!r}") from None
    if parsed.kind == "file":
        _, resolved = _inside(root, parsed.name, f"{where}.{key}", kind="model file")
        return str(ModelSpec("file", str(resolved)))
    return spec


def _metric_data(root: Path, ex: dict, where: str) -> dict:
    """The optional per-example keys for metrics after the study, checked; ExampleSpec fields."""
    found = {k: _map_array(root, ex[k], f"{where}.{k}") for k in MAP_ARRAYS if k in ex}
    if len(found) == 1:
        raise InputError(f"{where}: {'/'.join(MAP_ARRAYS)} come together; only {next(iter(found))!r} is given")
    shapes = {size for _, size in found.values()}
    if len(shapes) > 1:
        raise InputError(f"{where}: original_map and finetuned_map differ in shape")
    mask = None
    if "mask" in ex:
        mask, size = picture_path(root, ex["mask"], f"{where}.mask")
        if shapes and size not in shapes:
            (wm, hm), (w, h) = size, next(iter(shapes))
            raise InputError(f"{where}: the mask is {wm}x{hm} pixels but the maps are {w}x{h}; save the mask at the maps' size")
    label_index = ex.get("label_index")
    if label_index is not None and (isinstance(label_index, bool) or not isinstance(label_index, int) or label_index < 0):
        raise InputError(f"{where}: 'label_index' must be a non-negative integer, got {label_index!r}")
    return {"maps": {k: path for k, (path, _) in found.items()}, "mask": mask, "label_index": label_index}


def read_manifest(directory: str | Path) -> Manifest:
    """Read and validate DIR/manifest.json; every problem raises ``InputError`` naming its place."""
    if len(str(directory)) > MAX_DIR:
        raise InputError(f"study data set {_short(str(directory))!r}: the path is longer than {MAX_DIR} characters")
    try:
        root = Path(directory).expanduser().resolve()
        if not root.is_dir():
            raise InputError(f"study data set {root}: not a directory")
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise InputError(f"study data set {root}: file not found: {manifest_path}")
        if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise InputError(f"{manifest_path}: larger than {MAX_MANIFEST_BYTES // 2**20} MiB")
        text = manifest_path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"study data set {_short(str(directory))}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{manifest_path}: not UTF-8 text") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{manifest_path}: bad JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    except (ValueError, RecursionError) as err:  # an integer of thousands of digits, nesting too deep
        raise InputError(f"{manifest_path}: cannot read the JSON ({_short(str(err))})") from None
    where = str(manifest_path)
    check_keys(data, TOP_KEYS, {"format", "version", "conditions"}, where)
    if data["format"] != FORMAT:
        raise InputError(f"{where}: 'format' must be {FORMAT!r}, got {data['format']!r}")
    if data["version"] != VERSION:
        raise InputError(f"{where}: unsupported 'version' {data['version']!r} (this xaibench reads version {VERSION})")
    name = text_field(data, "name", where, required=False) or root.name[: MAX_TEXT["name"]]
    text_field(data, "description", where, required=False)
    if not isinstance(data["conditions"], list) or not data["conditions"]:
        raise InputError(f"{where}: 'conditions' must be a non-empty list")
    conditions: list[ConditionSpec] = []
    seen_conditions: set[tuple[str, ...]] = set()
    for ci, cond in enumerate(data["conditions"]):
        cwhere = f"{where}: conditions[{ci}]"
        check_keys(cond, CONDITION_KEYS, CONDITION_REQUIRED, cwhere)
        ident = tuple(text_field(cond, k, cwhere) for k in ("dataset", "metric", "model", "method"))
        text_field(cond, "description", cwhere, required=False)
        models = {k: _model_spec(root, cond, k, cwhere) for k in CONDITION_MODEL_KEYS if k in cond}
        names = {k: text_field(cond, k, cwhere) for k in CONDITION_NAME_KEYS if k in cond}
        if ident in seen_conditions:
            raise InputError(f"{cwhere}: duplicate condition {' / '.join(ident)}")
        seen_conditions.add(ident)
        if not isinstance(cond["examples"], list) or not cond["examples"]:
            raise InputError(f"{cwhere}: 'examples' must be a non-empty list")
        examples: list[ExampleSpec] = []
        seen_keys: set[str] = set()
        for ei, ex in enumerate(cond["examples"]):
            ewhere = f"{cwhere}.examples[{ei}]"
            check_keys(ex, EXAMPLE_KEYS, EXAMPLE_REQUIRED, ewhere)
            key = text_field(ex, "id", ewhere)
            if key in seen_keys:
                raise InputError(f"{ewhere}: duplicate example id {key!r}")
            seen_keys.add(key)
            prediction = text_field(ex, "prediction", ewhere)
            label = text_field(ex, "label", ewhere, required=False)
            found = {p: picture_path(root, ex[p], f"{ewhere}.{p}") for p in PICTURES}
            sizes = {p: size for p, (_, size) in found.items()}
            if sizes["original"] != sizes["finetuned"]:
                (wo, ho), (wf, hf) = sizes["original"], sizes["finetuned"]
                raise InputError(
                    f"{ewhere}: the two maps differ in size (original {wo}x{ho}, finetuned {wf}x{hf} pixels); "
                    "render both at one size, or the size would tell the sides apart"
                )
            examples.append(
                ExampleSpec(
                    key=key,
                    prediction=prediction,
                    label=label,
                    pictures={p: path for p, (path, _) in found.items()},
                    relative={p: str(ex[p]) for p in PICTURES},
                    sizes=sizes,
                    **_metric_data(root, ex, ewhere),
                )
            )
        conditions.append(ConditionSpec(*ident, examples=examples, models=models, **names))
    crowd = None
    if "crowdsourcing" in data:
        n_examples = sum(len(c.examples) for c in conditions)
        crowd = _crowdsourcing(root, data["crowdsourcing"], f"{where}: crowdsourcing", n_examples)
    return Manifest(root=root, name=name, conditions=conditions, crowd=crowd)


# the crowdsourcing section: settings with their defaults (docs/harmony.md, "Running a crowdsourced study")
CROWD_DEFAULTS = {"catch_rate": 0.1, "examples_per_participant": None, "labels_per_example": None,
                  "completion_code": "", "redirect_url": "", "deadline_hours": 24.0, "platform_study_id": "",
                  "exclusions": {}}
CROWD_KEYS = {"consent", "instructions", "practice", "catch_trials", *CROWD_DEFAULTS}
ITEM_KEYS = {"id", "image", "map", "wrong", "prediction", "feedback"}
EXCLUSION_RULES = {  # rule -> (lowest, highest) allowed value
    "attention_max_failed": (0.0, 1.0),  # exclude when the share of failed attention checks is above
    "min_median_response_ms": (0.0, 3_600_000.0),  # exclude when the median response time is below
    "straightlining_max_share": (0.0, 1.0),  # exclude when the share of the most used answer key is above
}
MAX_TEXT_FILE = 100_000  # characters of a consent or instructions file


def _number(obj: dict, key: str, where: str, low: float, high: float, integer: bool = False) -> float | int:
    value = obj[key]
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise InputError(f"{where}: {key!r} must be {what} from {low:g} to {high:g}, got {value!r}")
    return value


def _text_file(root: Path, rel: object, where: str) -> str:
    path, resolved = _inside(root, rel, where, kind="text file")
    try:
        text = resolved.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise InputError(f"{where}: {path} is not UTF-8 text") from None
    if not text or len(text) > MAX_TEXT_FILE:
        raise InputError(f"{where}: {path} must hold 1 to {MAX_TEXT_FILE:,} characters, it has {len(text):,}")
    return text


def _items(root: Path, items: object, where: str) -> list[ItemSpec]:
    if not isinstance(items, list):
        raise InputError(f"{where}: expected a list of items ({{'id', 'image', 'map', optional 'wrong'}})")
    out: list[ItemSpec] = []
    for i, item in enumerate(items):
        iwhere = f"{where}[{i}]"
        check_keys(item, ITEM_KEYS, {"id", "image", "map"}, iwhere)
        key = text_field(item, "id", iwhere)
        if key in {o.key for o in out}:
            raise InputError(f"{iwhere}: duplicate id {key!r}")
        found = {p: picture_path(root, item[p], f"{iwhere}.{p}") for p in ("image", "map", "wrong") if p in item}
        if "wrong" in found and found["wrong"][1] != found["map"][1]:
            raise InputError(f"{iwhere}: 'map' and 'wrong' differ in size; render both at one size")
        feedback = item.get("feedback", "")
        if not isinstance(feedback, str) or len(feedback) > MAX_TEXT["description"]:
            raise InputError(f"{iwhere}: 'feedback' must be a string of at most {MAX_TEXT['description']:,} characters")
        out.append(ItemSpec(key=key, prediction=text_field(item, "prediction", iwhere, required=False), feedback=feedback.strip(),
                            pictures={p: path for p, (path, _) in found.items()}))
    return out


def _crowdsourcing(root: Path, section: object, where: str, n_examples: int) -> CrowdSpec:
    """Validate the ``crowdsourcing`` section; every problem names its key."""
    check_keys(section, CROWD_KEYS, {"consent", "instructions"}, where)
    config = {**CROWD_DEFAULTS, **{k: section[k] for k in CROWD_DEFAULTS if k in section}}
    config["catch_rate"] = _number(config, "catch_rate", where, 0.0, 1.0)
    config["deadline_hours"] = _number(config, "deadline_hours", where, 0.01, 24.0 * 366)
    for key in ("examples_per_participant", "labels_per_example"):
        if config[key] is not None:
            _number(config, key, where, 1, 1_000_000, integer=True)
    config["examples_per_participant"] = min(config["examples_per_participant"] or n_examples, n_examples)
    for key in ("completion_code", "platform_study_id"):
        config[key] = text_field(config, key, where, required=False)
    url = config["redirect_url"]
    if not isinstance(url, str) or (url and not url.startswith(("https://", "http://"))) or len(url) > 1024:
        raise InputError(f"{where}: 'redirect_url' must be an http(s) URL of at most 1,024 characters "
                         f"(it may hold {{code}} for the completion code), got {_short(str(url))!r}")
    rules = config["exclusions"]
    if not isinstance(rules, dict):
        raise InputError(f"{where}: 'exclusions' must be an object with some of {', '.join(EXCLUSION_RULES)}")
    check_keys(rules, set(EXCLUSION_RULES), set(), f"{where}.exclusions")
    config["exclusions"] = {k: float(_number(rules, k, f"{where}.exclusions", *EXCLUSION_RULES[k])) for k in rules}
    return CrowdSpec(consent=_text_file(root, section["consent"], f"{where}.consent"),
                     instructions=_text_file(root, section["instructions"], f"{where}.instructions"),
                     practice=_items(root, section.get("practice", []), f"{where}.practice"),
                     catch_trials=_items(root, section.get("catch_trials", []), f"{where}.catch_trials"),
                     config=config)


def _rgb(im: Image.Image) -> np.ndarray:
    """8-bit RGB pixels of a decoded PNG: 16-bit values scaled to 8 bits, transparency composited
    onto white."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L"):
        im = Image.fromarray(np.round(np.asarray(im, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3:] / 255
        return np.round(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return np.asarray(im.convert("RGB"))


def canonical_png(path: Path, compress: bool = True) -> bytes:
    """The picture's pixels as 8-bit RGB, encoded by one PNG encoder with fixed settings and no
    ancillary chunk (no text, colour profile, gamma, resolution or time): only the pixels of two
    files can differ. Without ``compress`` (zlib level 0) the length depends only on the size."""
    try:
        with Image.open(path) as im:
            im.load()
            pixels = _rgb(im)
    except Exception as err:  # noqa: BLE001 - PIL raises many types for a damaged file
        raise InputError(f"{path}: cannot decode the PNG ({err})") from None
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=9 if compress else 0)
    return buffer.getvalue()


def pictures_of(espec: ExampleSpec) -> dict[str, bytes]:
    """The bytes stored for an example: canonical PNGs, the maps uncompressed (equal lengths)."""
    return {p: canonical_png(espec.pictures[p], compress=p == "image") for p in PICTURES}


def store_png(data: bytes, suffix: str = ".png") -> str:
    """Store bytes (a PNG, or a .npy with ``suffix``) in media storage under their content hash
    (names reveal nothing); returns the name."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    digest = hashlib.sha256(data).hexdigest()
    name = f"harmony/{digest[:2]}/{digest}{suffix}"
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
            metric_data = {"original_model": cspec.models.get("original_model", ""),
                           "finetuned_model": cspec.models.get("finetuned_model", ""),
                           "metric_name": cspec.metric_name, "method_name": cspec.method_name}
            condition, created = Condition.objects.get_or_create(
                dataset=cspec.dataset, metric=cspec.metric, model=cspec.model, method=cspec.method, legacy=False,
                defaults={"study": manifest.name, **metric_data},
            )
            counts["conditions_created"] += int(created)
            if any(getattr(condition, k) != v for k, v in metric_data.items()):
                Condition.objects.filter(pk=condition.pk).update(**metric_data)
            for position, espec in enumerate(cspec.examples):
                stored = {p: store_png(data) for p, data in pictures_of(espec).items()}
                fields = {
                    "position": position,
                    "prediction": espec.prediction,
                    "label": espec.label,
                    "image": stored["image"],
                    "original_map": stored["original"],
                    "finetuned_map": stored["finetuned"],
                    "source_image": espec.relative["image"],
                    "original_array": store_png(espec.maps["original_map"].read_bytes(), ".npy") if espec.maps else "",
                    "finetuned_array": store_png(espec.maps["finetuned_map"].read_bytes(), ".npy") if espec.maps else "",
                    "mask": store_png(espec.mask.read_bytes()) if espec.mask else "",
                    "label_index": espec.label_index,
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
            if assign:  # the coordinator's annotators; participants get examples by enrolment
                for user in get_user_model().objects.filter(is_active=True, is_staff=False, harmony_participant__isnull=True):
                    assign_conditions(user, [condition])
        if manifest.crowd is not None:
            _store_study(manifest.name, manifest.crowd)
    return counts


def _store_study(name: str, crowd: CrowdSpec) -> None:
    """Create or update the study's enrolment settings and its practice and attention-check items."""
    from xaibench.harmony.models import CheckItem, Study

    items = {kind: [item.key for item in items] for kind, items in (("practice", crowd.practice), ("catch", crowd.catch_trials))}
    config = {**crowd.config, "items": items}  # the items in use: an item dropped from the manifest is not shown again
    study, _ = Study.objects.update_or_create(
        name=name, defaults={"consent": crowd.consent, "instructions": crowd.instructions, "config": config})
    for kind, items in ((CheckItem.PRACTICE, crowd.practice), (CheckItem.CATCH, crowd.catch_trials)):
        for position, item in enumerate(items):
            stored = {p: store_png(canonical_png(path, compress=p == "image")) for p, path in item.pictures.items()}
            CheckItem.objects.update_or_create(
                study=study, kind=kind, key=item.key,
                defaults={"position": position, "prediction": item.prediction, "feedback": item.feedback,
                          "image": stored["image"], "map": stored["map"], "wrong": stored.get("wrong", "")})


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
