"""Every layer once on each test device (`on_device`: cpu, and cuda where present; ``--device``
or XAIBENCH_TEST_DEVICE picks one; conftest marks these tests ``device``): explainers, the
perturbation engine, metrics, a trainer and a fine-tuner step, streaming metrics under Lightning,
the runner end to end. Results on the device equal the CPU's within `RTOL` / `ATOL` (float32 both,
TF32 off), so on the CPU they are equal. ``python -m benchmarks.gpu`` runs them on cuda
(``pytest -m device``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import xaibench
from xaibench import streaming
from xaibench.devices import resolve_device
from xaibench.models import architecture, save_model
from xaibench.perturbation.engine import perturbation_curves, rank_features, step_counts
from xaibench.runner import parse_config, run
from xaibench.store import load_results

REPO = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-4, 1e-5  # float32 on another device: a different summation order, nothing more


@pytest.fixture(autouse=True)
def no_tf32():
    """Full float32 matrix products and convolutions on CUDA (TF32 would differ from the CPU by ~1e-3)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory) -> str:
    """A randomly initialised digits CNN as a `file:` spec (no trained model, no cache needed)."""
    path = tmp_path_factory.mktemp("model") / "digits-cnn.pt"
    save_model(architecture("builtin:digits-cnn", seed=0), path, spec="builtin:digits-cnn")
    return f"file:{path}"


def _setup(dev: torch.device) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from conftest import TinyCNN

    torch.manual_seed(0)
    model = TinyCNN().eval().to(dev)
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        targets = model(x).argmax(1)
    return model, x, targets


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.cpu(), expected.cpu(), rtol=RTOL, atol=ATOL, equal_nan=True)


@pytest.mark.parametrize("method", ["saliency", "gradcam", "integrated_gradients", "rise"])
def test_explainers_on_the_device_equal_the_cpu(on_device, method):
    dev = resolve_device(on_device)
    params = {"n_masks": 64, "seed": 0} if method == "rise" else {}
    model, x, t = _setup(dev)
    maps = xaibench.explainer(method, model, **params)(x, t)
    assert maps.device.type == dev.type and maps.shape == (6, 16, 16)
    if method != "rise":  # RISE's masks come from a generator on the device: other numbers on cuda
        cpu_model, cpu_x, cpu_t = _setup(torch.device("cpu"))
        _close(maps, xaibench.explainer(method, cpu_model, **params)(cpu_x, cpu_t))


@pytest.mark.parametrize("mode", ["delete", "insert"])
def test_engine_curves_on_the_device_equal_the_cpu(on_device, mode):
    dev = resolve_device(on_device)
    curves = {}
    for d in (dev, torch.device("cpu")):
        model, x, t = _setup(d)
        maps = torch.rand(6, 4, 4, generator=torch.Generator().manual_seed(2)).to(d)  # ranked natively, 4x4 patches
        ranking = rank_features(maps, (16, 16))
        counts = step_counts(ranking.num_features, steps=8)
        curves[d.type] = perturbation_curves(model, x, t, ranking, counts, mode=mode, baseline="gaussian_blur",
                                             max_batch=10)
    assert curves[dev.type].device.type == dev.type
    _close(curves[dev.type], curves["cpu"])


# metric -> (parameters, needs masks, needs an explainer)
METRIC_CASES = {
    "deletion": ({"steps": 8}, False, False),
    "insertion": ({"steps": 8, "autocast": "bfloat16"}, False, False),
    "road": ({"percentages": (0.2, 0.6), "noise": 0.0}, False, False),
    "irof": ({"n_segments": 8}, False, False),
    "max_sensitivity": ({"n_samples": 3}, False, True),
    "model_parameter_randomisation": ({}, False, True),
    "relevance_mass_accuracy": ({}, True, False),
    "sparseness": ({}, False, False),
}


# generators on the device draw other numbers than on the CPU (noise, re-initialised layers); bfloat16
DRAWS_OR_MIXED = ("max_sensitivity", "model_parameter_randomisation", "insertion")


@pytest.mark.parametrize("name", list(METRIC_CASES))
def test_metrics_on_the_device(on_device, name):
    """Scores on the device; those without random draws or mixed precision equal the CPU's."""
    dev = resolve_device(on_device)
    params, with_masks, with_explainer = METRIC_CASES[name]
    maps = torch.rand(6, 16, 16, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(6, 16, 16, dtype=torch.bool)
    masks[:, 4:10, 4:10] = True
    scores = {}
    for d in (dev, torch.device("cpu")):
        model, x, t = _setup(d)
        entry = xaibench.metrics.METRICS.get(name)
        words = {"model": model, "inputs": x, "attributions": maps.to(d), "targets": t, "masks": masks.to(d),
                 "explainer": xaibench.explainer("saliency", model)}
        result = entry.fn(**{w: words[w] for w in entry.info.requires}, **params)
        scores[d.type] = result.scores
    assert scores[dev.type].shape == (6,) and torch.isfinite(scores[dev.type]).all()
    if name not in DRAWS_OR_MIXED:
        _close(scores[dev.type], scores["cpu"])


def test_one_training_step_per_setting_part(on_device, tmp_path):
    """Focal loss, FP and AP batches in one optimiser step on the device (Lightning's accelerator)."""
    from xaibench.training import train

    cfg = {"seed": 0, "device": on_device, "setting": "fl+fp+ap", "epochs": 1, "batch_size": 16,
           "schedule": "constant", "selection": "last", "model": {"spec": "builtin:digits-cnn"},
           "data": {"spec": "builtin:digits", "n": 16, "val_fraction": 0.0}}
    result = train(cfg, tmp_path / "train", progress=False)
    assert len(result.log) == 1 and result.log["loss"].notna().all()
    assert xaibench.load_model(f"file:{result.model_path}", device="cpu") is not None


def test_one_finetuning_step(on_device, tmp_path, digits_file):
    """HARMONY fine-tuning (gradients through Grad-CAM maps) one step on the device, then evaluation."""
    from xaibench.training.finetune import finetune

    cfg = {"metric": "rma", "method": "gradcam", "preset": "xaibench", "iterations": 1, "batch_size": 4, "lr": 1e-3, "val_every": 1,
           "val_batches": 1, "device": on_device, "model": {"spec": digits_file},
           "data": {"spec": "builtin:digits", "n": 12, "val_fraction": 0.34, "test_n": 4},
           "evaluation": {"bootstrap": 10, "gallery": 1}}
    result = finetune(cfg, tmp_path / "ft", progress=False)
    assert result.model_path.is_file() and result.log["step"].max() == 1


def test_streaming_metrics_under_lightning(on_device):
    """The Lightning example: one epoch with Deletion and PointingGame accumulated on the device;
    the logged values equal the functional metrics on all validation images."""
    import lightning as L

    dev = resolve_device(on_device)
    spec = importlib.util.spec_from_file_location("lightning_streaming", REPO / "examples" / "lightning_streaming.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    torch.manual_seed(0)
    train, val = example.loaders(n_train=16, n_val=8, batch_size=8)
    module = example.DigitsWithExplanations(steps=4)
    where: list[str] = []

    class StateDevice(L.Callback):
        def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            where.append(pl_module.deletion.total.device.type)

    trainer = L.Trainer(max_epochs=1, accelerator="gpu" if dev.type == "cuda" else "cpu",
                        devices=[dev.index or 0] if dev.type == "cuda" else 1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[StateDevice()])
    trainer.fit(module, train, val)
    assert where == [dev.type]  # the sums were accumulated on the device
    batch = next(iter(torch.utils.data.DataLoader(val.dataset, batch_size=8, collate_fn=example.collate)))
    model = module.model.eval().to(dev)  # Lightning hands the module back on the CPU
    x = batch.images.to(dev)
    with torch.no_grad():
        targets = model(x).argmax(1)
    maps = xaibench.explainer("gradcam", model)(x, targets)
    expected = xaibench.metrics.deletion(model, x, maps, targets, steps=4).mean()
    assert trainer.callback_metrics["val/deletion_auc"].item() == pytest.approx(expected, rel=1e-5)


def test_runner_end_to_end(on_device, tmp_path, digits_file):
    """A tiny run (two shards, a gradient method, an order metric and a mask metric) on the device:
    its rows equal those of the same run on the CPU."""
    raw = {"seed": 1, "shard_size": 4, "model": {"spec": digits_file},
           "data": {"spec": "builtin:digits", "n": 6},
           "methods": {"grad": {"method": "saliency"}, "cam": {"method": "gradcam"}},
           "metrics": {"deletion": {"steps": 4}, "pointing_game": {}}}
    rows = {}
    for d in dict.fromkeys([on_device, "cpu"]):
        out = run(parse_config({**raw, "device": d}), tmp_path / d, progress=False)
        rows[d] = load_results(out).sort_values(["method", "metric", "image_id"]).reset_index(drop=True)
    assert len(rows[on_device]) == 6 * 2 * 2 and rows[on_device]["score"].notna().all()
    _close(torch.tensor(rows[on_device]["score"].to_numpy()), torch.tensor(rows["cpu"]["score"].to_numpy()))


def test_finetuning_that_keeps_the_original_says_so(tmp_path, digits_file):
    """HARMONY's schedule validates after update val_every + 1: one iteration never validates, and
    the run warns that the saved model is the original instead of passing it off as fine-tuned."""
    from xaibench.training.finetune import finetune

    cfg = {"metric": "rma", "method": "gradcam", "preset": "harmony", "iterations": 1, "batch_size": 4,
           "val_every": 1, "val_batches": 1, "device": "cpu", "model": {"spec": digits_file},
           "data": {"spec": "builtin:digits", "n": 12, "val_fraction": 0.34, "test_n": 4},
           "evaluation": {"bootstrap": 10, "gallery": 0}}
    with pytest.warns(UserWarning, match=r"kept the original weights: 0 validation\(s\).*HARMONY's schedule"):
        result = finetune(cfg, tmp_path / "ft", progress=False)
    assert result.evaluation["selected_step"] == 0
