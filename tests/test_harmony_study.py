"""Study data sets: the optional keys for metrics after the study (maps as arrays, masks, class
indices, model specs, registry names), validated by ``read_manifest``; made by ``make-study``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from xaibench.errors import InputError
from xaibench.harmony.dataset import read_manifest
from xaibench.harmony.sample import make_sample_dataset


def _with_metric_keys(root, shape=(96, 96)):
    """The sample data set with every optional metric key on its first condition."""
    manifest = json.loads((root / "manifest.json").read_text())
    cond = manifest["conditions"][0]
    (root / "models").mkdir()
    (root / "models" / "finetuned.pt").write_bytes(b"weights")
    cond.update(original_model="builtin:digits-cnn", finetuned_model="file:models/finetuned.pt",
                metric_name="relevance_mass_accuracy", method_name="gradcam")
    for i, ex in enumerate(cond["examples"]):
        for key in ("original_map", "finetuned_map"):
            np.save(root / f"{key}{i}.npy", np.random.default_rng(i).random(shape, dtype=np.float32))
            ex[key] = f"{key}{i}.npy"
        Image.fromarray((np.arange(shape[0] * shape[1]).reshape(shape) % 2 * 255).astype(np.uint8)).save(root / f"mask{i}.png")
        ex.update(mask=f"mask{i}.png", label_index=i)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_metric_keys_are_read_and_resolved(tmp_path):
    root = make_sample_dataset(tmp_path / "s", conditions=2, examples=2, size=96)
    _with_metric_keys(root)
    m = read_manifest(root)
    cond, plain = m.conditions
    assert cond.models == {"original_model": "builtin:digits-cnn",
                           "finetuned_model": f"file:{(root / 'models' / 'finetuned.pt').resolve()}"}
    assert (cond.metric_name, cond.method_name) == ("relevance_mass_accuracy", "gradcam")
    ex = cond.examples[1]
    assert ex.label_index == 1 and ex.mask == (root / "mask1.png").resolve()
    assert np.load(ex.maps["finetuned_map"]).shape == (96, 96)
    # the keys stay optional
    assert plain.models == {} and plain.examples[0].maps == {} and plain.examples[0].label_index is None


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m, r: m["conditions"][0]["examples"][0].pop("finetuned_map"), "come together"),
        (lambda m, r: np.save(r / "original_map0.npy", np.zeros((96, 96))), "float32 [H, W]"),
        (lambda m, r: np.save(r / "original_map0.npy", np.zeros((1, 96, 96), np.float32)), "float32 [H, W]"),
        (lambda m, r: (r / "original_map0.npy").write_bytes(b"\x93NUMPY\x01\x00garbage"), "not a readable .npy"),
        (lambda m, r: (r / "original_map0.npy").write_bytes(b"PK zip"), "not a .npy file"),
        (lambda m, r: np.save(r / "original_map0.npy", np.zeros((64, 96), np.float32)), "differ in shape"),
        (lambda m, r: Image.new("L", (32, 32)).save(r / "mask0.png"), "the mask is 32x32 pixels but the maps are 96x96"),
        (lambda m, r: m["conditions"][0]["examples"][0].update(label_index=-1), "non-negative integer"),
        (lambda m, r: m["conditions"][0]["examples"][0].update(label_index=True), "non-negative integer"),
        (lambda m, r: m["conditions"][0]["examples"][0].update(mask="missing.png"), "file not found"),
        (lambda m, r: m["conditions"][0].update(finetuned_model="file:../outside.pt"), "without '..'"),
        (lambda m, r: m["conditions"][0].update(finetuned_model="file:models/none.pt"), "file not found"),
        (lambda m, r: m["conditions"][0].update(original_model="digits-cnn"), "load_model spec"),
        (lambda m, r: m["conditions"][0].update(metric_name=3), "must be a string"),
        (lambda m, r: m["conditions"][0].update(metric_nam="rma"), "unknown key(s) 'metric_nam'"),
    ],
)
def test_bad_metric_keys_are_refused_by_name(tmp_path, change, message):
    root = make_sample_dataset(tmp_path / "s", conditions=1, examples=1, size=96)
    manifest = _with_metric_keys(root)
    change(manifest, root)
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="conditions\\[0\\]") as err:
        read_manifest(root)
    assert message in str(err.value)
