"""The mask task: annotators draw the region that justifies an image's label (brush, polygon, boxes).

Data set: a folder with ``manifest.json``::

    {"format": "xaibench-harmony-masks", "version": 1, "name": "optional",
     "images": [{"id": "0001", "image": "images/0001.png", "label": "tabby cat"}]}

``label`` (optional) is the class shown to the annotators and the class folder of the export.
Every annotator gets every image. An annotation is a binary mask PNG of the image's size (255 =
inside) and a list of boxes ``[x0, y0, x1, y1]`` (pixels, 0-based, end exclusive).

Export (``export_masks``) writes xaibench's folder layout, read by ``load_dataset("folder:OUT")``::

    OUT/<split>/<class>/<stem>.png          the image (as served)
    OUT/masks/<split>/<class>/<stem>.png    the mask: one annotator's, or the pixel majority
    OUT/boxes/<split>/<class>/<stem>.xml    PASCAL VOC boxes (1-based inclusive)

Agreement between annotators (``mask_agreement``): per image, the mean IoU over all pairs of
annotators of their masks (and of their box regions), NaN where both regions of a pair are empty.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import itertools
import json
import re
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

from xaibench.errors import InputError

FORMAT = "xaibench-harmony-masks"
VERSION = 1
MAX_BOXES = 100
MAX_BOX_CHARS = 64  # "[x0, y0, x1, y1], " with generous spacing
MAX_IMAGES = 100_000
DATA_URL = "data:image/png;base64,"


def read_mask_manifest(directory: str | Path) -> tuple[Path, str, list[dict]]:
    """(folder, name, images) of a mask data set; each image {key, label, path, relative, size}.
    Every problem raises ``InputError`` naming its place."""
    from xaibench.harmony.dataset import MAX_MANIFEST_BYTES, check_keys, picture_path, text_field

    root = Path(directory).expanduser().resolve()
    path = root / "manifest.json"
    if not path.is_file():
        raise InputError(f"mask data set {root}: file not found: {path}")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise InputError(f"{path}: larger than {MAX_MANIFEST_BYTES // 2**20} MiB")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise InputError(f"{path}: cannot read the JSON ({str(err)[:200]})") from None
    where = str(path)
    check_keys(data, {"format", "version", "name", "description", "images"}, {"format", "version", "images"}, where)
    if data["format"] != FORMAT:
        raise InputError(f"{where}: 'format' must be {FORMAT!r}, got {data['format']!r}")
    if data["version"] != VERSION:
        raise InputError(f"{where}: unsupported 'version' {data['version']!r} (this xaibench reads version {VERSION})")
    name = text_field(data, "name", where, required=False) or root.name[:128]
    if not isinstance(data["images"], list) or not 0 < len(data["images"]) <= MAX_IMAGES:
        raise InputError(f"{where}: 'images' must be a non-empty list of at most {MAX_IMAGES:,} images")
    images, seen = [], set()
    for i, item in enumerate(data["images"]):
        iwhere = f"{where}: images[{i}]"
        check_keys(item, {"id", "image", "label"}, {"id", "image"}, iwhere)
        key = text_field(item, "id", iwhere)
        if key in seen:
            raise InputError(f"{iwhere}: duplicate image id {key!r}")
        seen.add(key)
        resolved, size = picture_path(root, item["image"], f"{iwhere}.image")
        images.append({"key": key, "label": text_field(item, "label", iwhere, required=False), "path": resolved,
                       "relative": str(item["image"]), "size": size})
    return root, name, images


def load_masks(directory: str | Path) -> dict[str, int]:
    """Store a mask data set (idempotent; pictures re-encoded as for the preference task). Counts."""
    from django.db import transaction

    from xaibench.harmony.dataset import store_png, canonical_png
    from xaibench.harmony.models import MaskImage

    _, name, images = read_mask_manifest(directory)
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    with transaction.atomic():
        for position, item in enumerate(images):
            width, height = item["size"]
            fields = {"study": name, "label": item["label"], "image": store_png(canonical_png(item["path"])),
                      "width": width, "height": height, "position": position, "source_image": item["relative"]}
            image, created = MaskImage.objects.get_or_create(key=item["key"], defaults=fields)
            if created:
                counts["created"] += 1
            elif any(getattr(image, k) != v for k, v in fields.items()):
                MaskImage.objects.filter(pk=image.pk).update(**fields)
                counts["updated"] += 1
            else:
                counts["unchanged"] += 1
    return counts


def image_order(user_id: int) -> list[int]:
    """MaskImage ids in the annotator's own order (a hash of (annotator, image), stable)."""
    from xaibench.harmony.models import MaskImage

    ids = MaskImage.objects.values_list("id", flat=True)
    return sorted(ids, key=lambda i: hashlib.blake2b(f"mask:{user_id}:{i}".encode(), digest_size=8).digest())


def parse_mask(data_url: str, width: int, height: int) -> np.ndarray:
    """bool [H, W] from a posted PNG data URL (inside = grey value >= 128 after compositing onto
    black); ``InputError`` when it is not a PNG of the image's size."""
    if not data_url.startswith(DATA_URL):
        raise InputError("the mask must be a PNG data URL")
    try:
        raw = base64.b64decode(data_url[len(DATA_URL):], validate=True)
        with Image.open(io.BytesIO(raw)) as im:
            if im.format != "PNG" or im.size != (width, height):
                raise InputError(f"the mask must be a {width}x{height} PNG, got {im.format} {im.size[0]}x{im.size[1]}")
            rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
    except InputError:
        raise
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as err:
        raise InputError(f"the mask is not a readable PNG ({err})") from None
    grey = rgba[..., :3].max(axis=-1) * rgba[..., 3] // 255
    return grey >= 128


def parse_boxes(text: str, width: int, height: int) -> list[list[int]]:
    """Boxes ``[[x0, y0, x1, y1], ...]`` (ints, 0 <= x0 < x1 <= width, likewise y) from JSON.

    Text longer than ``MAX_BOXES`` boxes can take, or nested too deeply for the parser, is refused
    before or while parsing (``InputError``), never a server error."""
    if len(text or "") > MAX_BOXES * MAX_BOX_CHARS:
        raise InputError(f"boxes must be a JSON list of at most {MAX_BOXES} boxes")
    try:
        boxes = json.loads(text or "[]")
    except (ValueError, RecursionError):
        raise InputError("boxes must be a JSON list") from None
    if not isinstance(boxes, list) or len(boxes) > MAX_BOXES:
        raise InputError(f"boxes must be a JSON list of at most {MAX_BOXES} boxes")
    out = []
    for box in boxes:
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in box)):
            raise InputError(f"a box must be four integers [x0, y0, x1, y1], got {str(box)[:80]}")
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise InputError(f"box {box} lies outside the {width}x{height} image or is empty")
        out.append(box)
    return out


def mask_png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def read_stored_mask(name: str) -> np.ndarray:
    from django.core.files.storage import default_storage

    with default_storage.open(name, "rb") as fh, Image.open(fh) as im:
        return np.asarray(im.convert("L")) >= 128


def box_region(boxes: list[list[int]], width: int, height: int) -> np.ndarray:
    region = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        region[y0:y1, x0:x1] = True
    return region


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def mask_agreement() -> dict:
    """Inter-annotator agreement of the stored annotations: per image the mean pairwise IoU of the
    masks and of the box regions; summary over images with at least two annotators."""
    from xaibench.harmony.models import MaskImage

    rows = []
    for image in MaskImage.objects.prefetch_related("annotations"):
        annotations = list(image.annotations.all())
        masks = [read_stored_mask(a.mask) for a in annotations]
        regions = [box_region(a.boxes, image.width, image.height) for a in annotations]
        pairs = list(itertools.combinations(range(len(annotations)), 2))
        mask_ious = [iou(masks[i], masks[j]) for i, j in pairs]
        box_ious = [iou(regions[i], regions[j]) for i, j in pairs]
        rows.append({
            "image": image.key, "label": image.label, "annotators": len(annotations),
            "mask_iou": float(np.nanmean(mask_ious)) if any(not np.isnan(v) for v in mask_ious) else float("nan"),
            "box_iou": float(np.nanmean(box_ious)) if any(not np.isnan(v) for v in box_ious) else float("nan"),
        })
    shared = [r for r in rows if r["annotators"] >= 2]

    def mean(key: str) -> float:
        values = [r[key] for r in shared if not np.isnan(r[key])]
        return float(np.mean(values)) if values else float("nan")

    return {"images": len(rows), "annotations": sum(r["annotators"] for r in rows), "images_2plus": len(shared),
            "mean_mask_iou": mean("mask_iou"), "mean_box_iou": mean("box_iou"), "per_image": rows}


def _safe(name: str, fallback: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or fallback
    return cleaned[:100]


def _voc(boxes: list[list[int]], filename: str, label: str, width: int, height: int) -> str:
    objects = "".join(
        f"<object><name>{escape(label)}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for x0, y0, x1, y1 in boxes
    )
    return (f"<annotation><filename>{escape(filename)}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objects}</annotation>\n")


def export_masks(out: str | Path, split: str = "val", annotator: str | None = None) -> dict[str, int]:
    """Write the annotated images in xaibench's folder layout. With ``annotator`` that annotator's
    masks and boxes; else the pixel majority of all annotators' masks (inside where more than half
    of the image's annotators drew it) and every annotator's boxes (the folder reader takes their
    union). Images nobody annotated are left out. Returns counts."""
    from django.core.files.storage import default_storage

    from xaibench.harmony.models import MaskAnnotation, MaskImage

    out = Path(out)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", split) or split in ("masks", "boxes"):
        raise InputError(f"split {split!r}: use letters, digits, '.', '_' or '-', and not 'masks' or 'boxes'")
    annotations = MaskAnnotation.objects.select_related("image", "annotator")
    if annotator is not None:
        annotations = annotations.filter(annotator__username=annotator)
        if not annotations.exists():
            raise InputError(f"annotator {annotator!r} has no mask annotation")
    by_image: dict[int, list] = {}
    for a in annotations:
        by_image.setdefault(a.image_id, []).append(a)
    stems: set[tuple[str, str]] = set()
    counts = {"images": 0, "boxes": 0}
    for image in MaskImage.objects.filter(pk__in=by_image):
        group = by_image[image.pk]
        cls, stem = _safe(image.label, "unlabelled"), _safe(image.key, f"image-{image.pk}")
        if (cls, stem) in stems:
            stem = f"{stem}-{image.pk}"
        stems.add((cls, stem))
        masks = np.stack([read_stored_mask(a.mask) for a in group])
        combined = masks.sum(axis=0) * 2 > len(group)
        boxes = [b for a in group for b in a.boxes]
        for folder, data in ((out / split / cls, None), (out / "masks" / split / cls, mask_png(combined))):
            folder.mkdir(parents=True, exist_ok=True)
            if data is None:
                with default_storage.open(image.image, "rb") as fh:
                    data = fh.read()
            (folder / f"{stem}.png").write_bytes(data)
        if boxes:
            (out / "boxes" / split / cls).mkdir(parents=True, exist_ok=True)
            (out / "boxes" / split / cls / f"{stem}.xml").write_text(
                _voc(boxes, f"{stem}.png", image.label or cls, image.width, image.height), encoding="utf-8")
        counts["images"] += 1
        counts["boxes"] += len(boxes)
    return counts


def save_annotation(user, image, mask: np.ndarray, boxes: list[list[int]]) -> None:
    """Store (or replace) ``user``'s annotation of ``image`` (one row per pair, also under concurrency)."""
    from django.db import IntegrityError, transaction

    from xaibench.harmony.dataset import store_png
    from xaibench.harmony.models import MaskAnnotation

    fields = {"mask": store_png(mask_png(mask)), "boxes": boxes, "inside": int(mask.sum())}
    with transaction.atomic():
        row = MaskAnnotation.objects.select_for_update().filter(annotator=user, image=image).first()
        if row is None:
            try:
                with transaction.atomic():
                    MaskAnnotation.objects.create(annotator=user, image=image, **fields)
                return
            except IntegrityError:  # a concurrent request of the same annotator created it
                row = MaskAnnotation.objects.select_for_update().get(annotator=user, image=image)
        for k, v in fields.items():
            setattr(row, k, v)
        row.revisions += 1
        row.save()
