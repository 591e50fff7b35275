"""Models: built-in digits CNNs (accuracy, shortcut, cache), model_hash, torchvision/timm wrapping, weights, files,
specs parsed (`ModelSpec`)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import xaibench
from xaibench.data import load_dataset
from xaibench.errors import InputError, UnknownNameError, WeightsUnavailableError
from xaibench.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Logits,
    Normalized,
    as_classifier,
    load_model,
    model_hash,
    save_model,
    unwrap,
)
from xaibench.modelspec import ModelSpec


def _accuracy(model: nn.Module, spec: str, split: str) -> float:
    images, labels = load_dataset(spec, split).tensors()
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


@pytest.fixture(scope="module")
def digits_cnn():
    return load_model("builtin:digits-cnn", device="cpu")


@pytest.fixture(scope="module")
def spurious_cnn():
    return load_model("builtin:digits-spurious-cnn", device="cpu")


# --- built-in models --------------------------------------------------------------------------------


def test_digits_cnn_accuracy(digits_cnn):
    assert not digits_cnn.training and next(digits_cnn.parameters()).device.type == "cpu"
    assert _accuracy(digits_cnn, "builtin:digits", "test") > 0.9


def test_spurious_cnn_learns_the_shortcut(spurious_cnn):
    assert _accuracy(spurious_cnn, "builtin:digits-spurious", "test") > 0.95
    assert _accuracy(spurious_cnn, "builtin:digits-spurious", "uncorrelated") < 0.5  # fooled by the colour
    assert _accuracy(spurious_cnn, "builtin:digits", "test") < 0.6  # no square: it barely reads digits


def test_builtin_gradcam(digits_cnn):
    x = load_dataset("builtin:digits", "test").tensors()[0][:4]
    exp = xaibench.explainer("gradcam", digits_cnn)
    maps = exp(x, torch.tensor([0, 1, 2, 3]))
    assert maps.shape == (4, 32, 32) and exp.layer == "features" and torch.isfinite(maps).all()


def test_cache_reused(digits_cnn):
    start = time.perf_counter()
    again = load_model("builtin:digits-cnn", device="cpu")
    assert time.perf_counter() - start < 2.0
    assert again is not digits_cnn and model_hash(again) == model_hash(digits_cnn)


def test_two_processes_train_once(tmp_path):
    """Two processes loading a built-in model into an empty cache: one trains, both get the same weights."""
    code = ("import xaibench.models as m; print('HASH', m.model_hash(m.load_model('builtin:digits-spurious-cnn', "
            "device='cpu')))")
    env = {**os.environ, "XAIBENCH_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    hashes = {line.split()[1] for out, _ in outs for line in out.splitlines() if line.startswith("HASH")}
    trained = sum(err.count("training builtin:digits-spurious-cnn") for _, err in outs)
    assert trained == 1 and len(hashes) == 1
    files = list((tmp_path / "models").glob("*.pt"))
    assert len(files) == 1 and not list((tmp_path / "models").glob("*.tmp"))
    # The file is a save_model file: loadable with file:.
    assert model_hash(load_model(f"file:{files[0]}", device="cpu")) in hashes


# --- model_hash -------------------------------------------------------------------------------------


def test_model_hash_stable_and_sensitive(digits_cnn):
    h = model_hash(digits_cnn)
    assert len(h) == 64 and h == model_hash(copy.deepcopy(digits_cnn))
    changed = copy.deepcopy(digits_cnn)
    with torch.no_grad():
        changed.fc.bias[3] += 1e-6
    assert model_hash(changed) != h
    renamed = nn.Sequential(digits_cnn)  # same tensors under other names
    assert model_hash(renamed) != h
    half = copy.deepcopy(digits_cnn).double()
    assert model_hash(half) != h
    # Across processes: see test_two_processes_train_once (hashes printed by two processes agree with this one).


# --- torchvision / timm -------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "size", "layer", "mean", "std"), [
    ("torchvision:resnet18", 64, "layer4", IMAGENET_MEAN, IMAGENET_STD),  # layer names of the network itself
    ("timm:resnet18", 64, "layer4", IMAGENET_MEAN, IMAGENET_STD),
    ("timm:vit_tiny_patch16_224", 224, "blocks.11.norm1", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # timm's cfg
])
def test_random_init_pixel_space_and_gradcam(spec, size, layer, mean, std):
    torch.manual_seed(0)
    model = load_model(spec, num_classes=5, device="cpu")
    assert isinstance(model, Normalized) and not model.training
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
        direct = unwrap(model)((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert logits.shape == (2, 5)
    torch.testing.assert_close(logits, direct)  # normalisation happens inside, on [0, 1] input
    exp = xaibench.explainer("gradcam", model)
    maps = exp(x, torch.tensor([0, 4]))
    assert maps.shape == (2, size, size) and torch.isfinite(maps).all() and exp.layer == layer


def test_pretrained_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    for spec in ("torchvision:resnet18", "timm:resnet18"):
        start = time.perf_counter()
        with pytest.raises(WeightsUnavailableError) as info:
            load_model(spec, weights="pretrained", device="cpu")
        assert time.perf_counter() - start < 5.0
        message = str(info.value)
        assert "weights=<path" in message and str(tmp_path) in message, message
    with pytest.raises(WeightsUnavailableError, match=r"resnet18-f37072fd\.pth.*torch.*checkpoints"):
        load_model("torchvision:resnet18", weights="IMAGENET1K_V1", device="cpu")
    with pytest.raises(UnknownNameError, match="IMAGENET1K_V1"):
        load_model("torchvision:resnet18", weights="IMAGENET1K_V9", device="cpu")


def test_pretrained_from_local_caches(tmp_path, monkeypatch):
    """Weights already in the torch hub dir / Hugging Face cache are loaded without any download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    torch.manual_seed(3)
    import torchvision

    reference = torchvision.models.resnet18()
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = load_model("torchvision:resnet18", weights="pretrained", device="cpu")
    assert model_hash(unwrap(model)) == model_hash(reference)

    import timm

    ref = timm.create_model("resnet18", pretrained=False)
    snap = tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    torch.save(ref.state_dict(), snap / "pytorch_model.bin")
    model = load_model("timm:resnet18", weights="pretrained", device="cpu")
    assert model_hash(unwrap(model)) == model_hash(ref)


def test_weights_path_and_file_round_trip(tmp_path, digits_cnn):
    torch.manual_seed(0)
    model = load_model("torchvision:resnet18", num_classes=3, device="cpu")
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    path = save_model(model, tmp_path / "r18.pt", "torchvision:resnet18")
    saved = torch.load(path, weights_only=True)
    assert saved["spec"] == "torchvision:resnet18" and saved["num_classes"] == 3
    back = load_model(f"file:{path}", device="cpu")
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert model_hash(back) == model_hash(model)
    # A plain state dict file via weights=<path>.
    torch.save(unwrap(model).state_dict(), tmp_path / "sd.pth")
    same = load_model("torchvision:resnet18", num_classes=3, weights=str(tmp_path / "sd.pth"), device="cpu")
    assert model_hash(same) == model_hash(model)
    with pytest.raises(InputError, match="do not fit"):
        load_model("torchvision:resnet18", num_classes=4, weights=str(tmp_path / "sd.pth"), device="cpu")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_model("torchvision:resnet18", weights=str(tmp_path / "missing.pt"))
    # Built-in architecture through a file.
    path = save_model(digits_cnn, tmp_path / "digits.pt", "builtin:digits-cnn")
    assert model_hash(load_model(f"file:{path}", device="cpu")) == model_hash(digits_cnn)
    assert model_hash(load_model("builtin:digits-cnn", weights=str(path), device="cpu")) == model_hash(digits_cnn)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_file_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"spec": "builtin:digits-cnn", "num_classes": 10, "state_dict": {}, "x": _Evil()}, path)
    with pytest.raises(InputError, match="cannot read model file"):
        load_model(f"file:{path}")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a save_model file"):
        load_model(f"file:{tmp_path / 'other.pt'}")
    with pytest.raises(InputError, match="does not exist"):
        load_model(f"file:{tmp_path / 'nothing.pt'}")


class _DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        feats = self.conv(x)
        return {"logits": self.fc(feats.mean(dim=(2, 3))), "features": feats}


class _TupleNet(_DictNet):
    def forward(self, x):
        out = super().forward(x)
        return out["logits"], out["features"]


def test_non_tensor_outputs_unwrapped():
    torch.manual_seed(0)
    net = _DictNet().eval()
    x = torch.rand(2, 3, 8, 8)
    wrapped = as_classifier(net, input_shape=(3, 8, 8))
    assert isinstance(wrapped, Logits) and wrapped.net is net
    torch.testing.assert_close(wrapped(x), net(x)["logits"])
    maps = xaibench.explainer("gradcam", wrapped)(x, torch.tensor([0, 2]))
    assert maps.shape == (2, 8, 8)
    tup = _TupleNet().eval()
    tup.load_state_dict(net.state_dict())
    torch.testing.assert_close(as_classifier(tup, input_shape=(3, 8, 8))(x), net(x)["logits"])
    normed = as_classifier(tup, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    torch.testing.assert_close(normed(x), net((x - 0.5) / 0.25)["logits"])
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    assert as_classifier(plain, input_shape=(3, 8, 8)) is plain  # tensor outputs: not wrapped


def test_unknown_names_suggest_close_ones():
    with pytest.raises(UnknownNameError, match="'resnet18'"):
        load_model("torchvision:resnet19")
    with pytest.raises(UnknownNameError, match="'resnet18'"):
        load_model("timm:resnet19")
    with pytest.raises(UnknownNameError, match="'digits-cnn'"):
        load_model("builtin:digit-cnn")
    with pytest.raises(UnknownNameError, match="'torchvision:'"):
        load_model("torchvison:resnet18")
    with pytest.raises(InputError, match="10 classes"):
        load_model("builtin:digits-cnn", num_classes=3)
    with pytest.raises(InputError, match="model spec"):
        load_model("resnet18")
    assert json.dumps(sorted(xaibench.models.BUILTIN_MODELS))  # the built-in names are listed


@pytest.mark.parametrize("text", ["torchvision:resnet18", "timm:vit_tiny_patch16_224.augreg_in21k",
                                  "builtin:digits-cnn", "file:models/c0-original.pt", "file:/abs/m.pt",
                                  "file:C:/weights/m.pt"])
def test_model_spec_round_trips_as_written(text):
    spec = ModelSpec.parse(text)
    assert str(spec) == text and ModelSpec.parse(spec) == spec
    assert spec.kind == text.split(":")[0] and spec.name == text[len(spec.kind) + 1:]
    assert spec.is_architecture == (spec.kind != "file")
    assert (ModelSpec.architecture(text) is not None) == spec.is_architecture


def test_model_spec_refuses_what_load_model_refuses():
    for bad, error, match in [("resnet18", InputError, "model spec must look like"), (None, InputError, "model spec"),
                              ("torchvison:resnet18", UnknownNameError, "'torchvision:'"),
                              ("builtin:", InputError, "names no model")]:
        with pytest.raises(error, match=match):
            ModelSpec.parse(bad)
        assert ModelSpec.architecture(bad) is None
    with pytest.raises(InputError, match="not a file: spec"):
        ModelSpec.parse("builtin:digits-cnn").path


def test_model_spec_anchors_relative_files_at_their_folder(tmp_path):
    folder = tmp_path / "study"
    anchored = ModelSpec("file", str((folder / "models/m.pt").resolve()))
    assert ModelSpec.parse("file:models/m.pt", base=folder) == anchored
    assert str(ModelSpec.parse("file:sub/../m.pt", base=folder)) == f"file:{(folder / 'm.pt').resolve()}"
    assert str(ModelSpec.parse("file:/abs/m.pt", base=folder)) == "file:/abs/m.pt"  # absolute: as written
    assert str(ModelSpec.parse("file:~/m.pt", base=folder)) == "file:~/m.pt"
    assert ModelSpec.parse("file:~/m.pt").path == Path.home() / "m.pt"
    assert str(ModelSpec.parse("builtin:digits-cnn", base=folder)) == "builtin:digits-cnn"
    inside = ModelSpec.parse("file:models/m.pt", base=folder)
    assert str(inside.relative_to(folder.resolve())) == "file:models/m.pt"


def test_load_model_takes_a_parsed_spec(tmp_path, digits_cnn):
    path = save_model(digits_cnn, tmp_path / "digits.pt", "builtin:digits-cnn")
    spec = ModelSpec.parse("file:digits.pt", base=tmp_path)
    assert spec.path == path.resolve()
    assert model_hash(load_model(spec, device="cpu")) == model_hash(digits_cnn)
