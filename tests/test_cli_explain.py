"""`xaibench explain`: chunked maps equal whole-batch maps; maps.pt and the gallery pages are written;
--image-size reaches the data set, --n beyond the data set says so, --device names what exists."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import pytest
import torch
import torchvision

import xaibench
from xaibench.cli import explain
from xaibench.errors import UnknownNameError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    explain.register(parser.add_subparsers())
    return parser


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=4).eval()


def test_explain_images_chunks_equal_whole_batch() -> None:
    model = _model()
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2, 3, 0])
    maps = explain.explain_images(model, x, t, ["saliency", "gradcam", "random"], batch_size=2, seed=7)
    for name in ("saliency", "gradcam"):
        torch.testing.assert_close(maps[name], xaibench.explainer(name, model)(x, t))
    first = xaibench.explainer("random", model, seed=7)
    assert torch.equal(maps["random"][:2], first(x[:2], t[:2]))  # chunks draw from one seeded stream
    assert torch.equal(maps["random"][2:4], first(x[2:4], t[2:4]))


@dataclass
class _Sample:
    image: torch.Tensor
    label: int
    id: str
    masks: dict = field(default_factory=dict)


@dataclass
class _Batch:
    images: torch.Tensor
    labels: torch.Tensor
    masks: dict
    ids: list


def _fake_data(monkeypatch: pytest.MonkeyPatch, calls: list | None = None) -> list[_Sample]:
    import xaibench.data

    gen = torch.Generator().manual_seed(1)
    samples = [_Sample(torch.rand(3, 32, 32, generator=gen), i % 4, f"img{i}") for i in range(6)]

    def load_dataset(spec, split="test", **kw):
        if calls is not None:
            calls.append((spec, split, kw))
        return samples

    monkeypatch.setattr(xaibench, "load_model", lambda spec, **kw: _model(), raising=False)
    monkeypatch.setattr(xaibench.data, "load_dataset", load_dataset, raising=False)
    monkeypatch.setattr(xaibench.data, "collate", lambda s: _Batch(
        torch.stack([x.image for x in s]), torch.tensor([x.label for x in s]), {}, [x.id for x in s]),
        raising=False)
    return samples


def test_explain_writes_maps_and_gallery(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples = _fake_data(monkeypatch)
    args = _parser().parse_args(["explain", "--model", "m", "--data", "d", "--methods", "saliency,gradcam++",
                                 "--n", "4", "--out", str(tmp_path), "--target", "label", "--batch-size", "3"])
    assert args.func(args) == 0
    saved = torch.load(tmp_path / "maps.pt", weights_only=True)
    assert saved["ids"] == ["img0", "img1", "img2", "img3"]
    assert saved["targets"].tolist() == [0, 1, 2, 3]
    images = torch.stack([s.image for s in samples[:4]])
    assert set(saved["maps"]) == {"saliency", "gradcam++"}
    torch.testing.assert_close(saved["maps"]["saliency"], xaibench.explainer("saliency", _model())(images, saved["targets"]))
    assert plt.imread(tmp_path / "gallery.png").shape[:2] == (4 * 160, 3 * 200)  # 1.6 x 2 inches per picture


def test_explain_predicted_targets_and_unknown_method(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    samples = _fake_data(monkeypatch)
    args = _parser().parse_args(["explain", "--model", "m", "--data", "d", "--methods", "sobel",
                                 "--n", "10", "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert "--n 10 is more than the 6 images of 'd'" in capsys.readouterr().err
    saved = torch.load(tmp_path / "maps.pt", weights_only=True)
    with torch.no_grad():
        assert saved["targets"].tolist() == _model()(torch.stack([s.image for s in samples])).argmax(1).tolist()
    assert saved["maps"]["sobel"].shape == (6, 32, 32)  # --n larger than the data set: all of it, said on stderr
    bad = _parser().parse_args(["explain", "--model", "m", "--data", "d", "--methods", "salency",
                                "--out", str(tmp_path)])
    with pytest.raises(UnknownNameError, match="saliency"):
        bad.func(bad)


def test_explain_builtin_model_and_data(tmp_path) -> None:
    import xaibench.data

    if not hasattr(xaibench.data, "load_dataset"):
        pytest.skip("xaibench.data.load_dataset is not available")
    args = _parser().parse_args(["explain", "--model", "builtin:digits-cnn", "--data", "builtin:digits",
                                 "--methods", "saliency,gradcam", "--n", "3", "--out", str(tmp_path)])
    assert args.func(args) == 0
    saved = torch.load(tmp_path / "maps.pt", weights_only=True)
    assert saved["maps"]["gradcam"].shape[0] == 3 and (tmp_path / "gallery.png").stat().st_size > 0


def test_explain_image_size_reaches_the_data_set(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    _fake_data(monkeypatch, calls)
    args = _parser().parse_args(["explain", "--model", "m", "--data", "folder:photos", "--methods", "sobel",
                                 "--n", "2", "--image-size", "224", "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert calls == [("folder:photos", "test", {"image_size": 224})]
    assert torch.load(tmp_path / "maps.pt", weights_only=True)["image_size"] == 224


def test_explain_gallery_is_paginated(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_data(monkeypatch)
    monkeypatch.setattr(explain, "GALLERY_ROWS", 4)
    args = _parser().parse_args(["explain", "--model", "m", "--data", "d", "--methods", "sobel",
                                 "--n", "6", "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert sorted(p.name for p in tmp_path.glob("gallery*.png")) == ["gallery-01.png", "gallery-02.png"]
    assert plt.imread(tmp_path / "gallery-01.png").shape[0] == 4 * 160
    assert plt.imread(tmp_path / "gallery-02.png").shape[0] == 2 * 160


@pytest.mark.parametrize("device", ["gpu", "cuda:7", "tpu"])
def test_explain_unavailable_device_lists_the_available_ones(tmp_path, monkeypatch: pytest.MonkeyPatch, device) -> None:
    from xaibench.errors import InputError

    _fake_data(monkeypatch)
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    args = _parser().parse_args(["explain", "--model", "m", "--data", "d", "--methods", "sobel",
                                 "--out", str(tmp_path), "--device", device])
    with pytest.raises(InputError, match=r"Available.*cpu"):
        args.func(args)


def test_explain_photos_of_different_sizes_with_image_size_in_the_spec(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from xaibench.errors import InputError

    root = tmp_path / "photos" / "test"
    for k, (cls, size) in enumerate([("cat", (40, 50)), ("dog", (64, 48)), ("dog", (33, 70))]):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (40 * k, 90, 200)).save(root / cls / f"p{k}.png")
    monkeypatch.setattr(xaibench, "load_model", lambda spec, **kw: _model(), raising=False)
    spec = f"folder:{tmp_path / 'photos'}"
    base = ["explain", "--model", "m", "--methods", "sobel", "--n", "3"]
    plain = _parser().parse_args([*base, "--data", spec, "--out", str(tmp_path / "a")])
    with pytest.raises(InputError, match="image_size"):
        plain.func(plain)
    for extra in (["--data", f"{spec}?image_size=24"], ["--data", spec, "--image-size", "24"]):
        args = _parser().parse_args([*base, *extra, "--out", str(tmp_path / "b")])
        assert args.func(args) == 0
        saved = torch.load(tmp_path / "b" / "maps.pt", weights_only=True)
        assert saved["maps"]["sobel"].shape == (3, 24, 24) and saved["classes"] == ["cat", "dog"]
    clash = _parser().parse_args([*base, "--data", f"{spec}?image_size=24", "--image-size", "32", "--out", str(tmp_path)])
    with pytest.raises(InputError, match="give it once"):
        clash.func(clash)
    bad = _parser().parse_args([*base, "--data", f"{spec}?size=24", "--out", str(tmp_path)])
    with pytest.raises(InputError, match=r"\?image_size=<positive int>"):
        bad.func(bad)
