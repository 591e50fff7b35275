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


# --- make-study from a fine-tuned model, loaded, labelled in Chromium and analysed ------------------


def test_render_is_white_to_red_after_max_abs_normalisation():
    import torch

    from xaibench.harmony.study import render

    rgb = render(torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]]), 2)[0]
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 1].tolist() == [255, 255, 255]  # <= 0: white
    assert rgb[1, 1].tolist() == [255, 0, 0] and rgb[1, 0].tolist() == [255, 128, 128]  # 2/2 red, 1/2 half


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    from xaibench.training.finetune import finetune

    cfg = {"metric": "rma", "method": "gradcam", "preset": "xaibench", "iterations": 2, "batch_size": 8, "lr": 1e-3, "val_every": 2,
           "val_batches": 1, "device": "cpu", "model": {"spec": "builtin:digits-cnn"},
           "data": {"spec": "builtin:digits", "n": 40, "val_fraction": 0.2, "test_n": 8},
           "evaluation": {"bootstrap": 20, "gallery": 0}}
    return finetune(cfg, tmp_path_factory.mktemp("finetune") / "rma", progress=False).model_path


STUDY = """name = "digits-e2e"
data = "builtin:digits"
n = 60
examples = 2
size = 64
device = "cpu"
[[conditions]]
original = "builtin:digits-cnn"
finetuned = "file:{model}"
metric = "relevance_mass_accuracy"
method = "gradcam"
metric_label = "RMA"
method_label = "GradCAM"
[[conditions]]
original = "builtin:digits-cnn"
finetuned = "file:{model}"
metric = "focus"
method = "guided_backprop"
"""


def test_make_study_load_label_in_chromium_and_analyze(tmp_path, finetuned, chromium, capsys):
    import torch

    import xaibench
    from xaibench.cli import main
    from xaibench.data import load_dataset

    config = tmp_path / "study.toml"
    config.write_text(STUDY.format(model=finetuned))
    study = tmp_path / "study"
    assert main(["harmony", "make-study", str(config), "--out", str(study)]) == 0
    assert main(["harmony", "make-study", str(config), "--out", str(study)]) == 2  # the folder exists
    assert "already exists" in capsys.readouterr().err

    manifest = read_manifest(study)
    rma, foc = manifest.conditions
    assert (rma.metric, rma.method, rma.metric_name, foc.metric_name, foc.method_name) == (
        "RMA", "GradCAM", "relevance_mass_accuracy", "focus", "guided_backprop")
    ids = [e.key for c in manifest.conditions for e in c.examples]
    assert len(ids) == len(set(ids)) == 4  # disjoint images across conditions
    # the stored arrays are the maps of the true label, channels summed, of the stored models
    digits = load_dataset("builtin:digits", split="test")
    ex = rma.examples[0]
    sample = digits[int(ex.key)]
    assert ex.label_index == sample.label and ex.mask is not None
    for side in ("original", "finetuned"):
        model = xaibench.load_model(rma.models[f"{side}_model"], device="cpu")
        expected = xaibench.explainer("gradcam", model, reduce="sum")(sample.image[None], [sample.label])[0]
        np.testing.assert_allclose(np.load(ex.maps[f"{side}_map"]), expected.numpy(), rtol=1e-5, atol=1e-7)
        assert model(sample.image[None]).argmax(1).item() == sample.label
    assert not torch.equal(torch.from_numpy(np.load(ex.maps["original_map"])), torch.from_numpy(np.load(ex.maps["finetuned_map"])))

    _label_in_chromium(tmp_path, study, chromium)
    assert main(["harmony", "analyze", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_labels"] == 4 and len(result["conditions"]) == 2
    assert {c["metric"] for c in result["conditions"]} == {"RMA", "focus"}


def _label_in_chromium(tmp_path, study, chromium):
    from django.contrib.auth import get_user_model
    from django.db import connections
    from playwright.sync_api import sync_playwright

    from xaibench.harmony.dataset import load_dataset
    from harmony_testing import LiveServer, use_home

    home = use_home(tmp_path / "home")
    get_user_model().objects.create_user("study_ann", password="study password")
    assert load_dataset(study)["examples_created"] == 4
    connections.close_all()
    with LiveServer(home, threads=2) as live, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"], headless=True)
        page = browser.new_page()
        page.set_default_timeout(20000)
        page.goto(live.url + "/")
        page.fill("#id_username", "study_ann")
        page.fill("#id_password", "study password")
        page.click("button[type=submit]")
        page.wait_for_url(live.url + "/")
        assert page.locator(".card").count() == 2
        for card in (1, 2):
            page.goto(f"{live.url}/card/{card}/1/")
            page.locator("#picture-left").wait_for(state="visible")
            page.keyboard.press("ArrowLeft")
            page.wait_for_url(f"{live.url}/card/{card}/2/")
            page.keyboard.press("ArrowDown")
            page.wait_for_url(f"{live.url}/card/{card}/done/")
        browser.close()


@pytest.mark.parametrize("text, message", [
    ('data = "builtin:digits"\n[[conditions]]\noriginal = "builtin:digits-cnn"\nfinetuned = "file:m.pt"\n'
     'metric = "relevance_mass_acuracy"\nmethod = "gradcam"\n', "relevance_mass_accuracy"),
    ('data = "builtin:digits"\n[[conditions]]\noriginal = "builtin:digits-cnn"\nfinetuned = "file:m.pt"\n'
     'metric = "focus"\nmethod = "gradcam"\nmethod_lable = "GradCAM"\n', "unknown key 'method_lable'. Did you mean 'method_label'"),
    ('data = "builtin:digits"\n[[conditions]]\noriginal = "builtin:digits-cnn"\nmetric = "focus"\nmethod = "gradcam"\n',
     "missing key\\(s\\) finetuned"),
    ('data = "builtin:digits"\nexamples = 2\n', "at least one \\[\\[conditions\\]\\]"),
    ('data = "builtin:digits"\nexampels = 2\n', "unknown key 'exampels'. Did you mean 'examples'"),
])
def test_bad_study_configs_are_refused_before_any_work(tmp_path, text, message):
    from xaibench.errors import XaibenchError
    from xaibench.harmony.study import create_harmony_dataset, load_study_config

    (tmp_path / "study.toml").write_text(text)
    with pytest.raises(XaibenchError, match=message):
        create_harmony_dataset(out=tmp_path / "out", **load_study_config(tmp_path / "study.toml"))
    assert not (tmp_path / "out").exists()


def test_study_config_resolves_model_files_next_to_it(tmp_path):
    from xaibench.harmony.study import load_study_config

    (tmp_path / "study.toml").write_text('data = "builtin:digits"\n[[conditions]]\noriginal = "builtin:digits-cnn"\n'
                                         'finetuned = "file:runs/m.pt"\nmetric = "focus"\nmethod = "gradcam"\n')
    (cond,) = load_study_config(tmp_path / "study.toml")["conditions"]
    assert cond.finetuned == f"file:{(tmp_path / 'runs' / 'm.pt').resolve()}" and cond.original == "builtin:digits-cnn"
