"""Metric fine-tuning: bad input gets clear errors before anything is written; an interrupted run
resumes from its last checkpoint; the objective's fidelity term."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from xaibench.errors import InputError, UnknownNameError
from xaibench.training import finetune as ft

BASE = {"preset": "xaibench", "metric": "rma", "method": "gradcam", "iterations": 4, "batch_size": 8, "lr": 1e-3, "val_every": 2,
        "val_batches": 1, "device": "cpu", "model": {"spec": "builtin:digits-cnn"},
        "data": {"spec": "builtin:digits", "n": 40, "val_fraction": 0.2, "test_n": 8},
        "evaluation": {"bootstrap": 20, "gallery": 1}}


def _cfg(**changes):
    return {**BASE, **changes}


def test_fidelity_term_is_zero_for_parallel_logits_and_one_for_opposite():
    z = torch.tensor([[1.0, 2.0, 3.0]])
    assert ft.fidelity(z, 2 * z).item() == pytest.approx(0.0, abs=1e-7)
    assert ft.fidelity(z, -z).item() == pytest.approx(1.0)
    assert ft.fidelity(z, torch.tensor([[2.0, -1.0, 0.0]])).item() == pytest.approx(0.5)  # orthogonal


def test_harmony_defaults_per_metric():
    cfg = ft.parse_finetune_config(_cfg(lr=None, metric="focus"))
    assert (cfg.lr, cfg.weight, cfg.metric) == (3e-5, 0.01, "focus")
    cfg = ft.parse_finetune_config({k: v for k, v in _cfg().items() if k not in ("lr", "batch_size", "iterations")})
    assert (cfg.lr, cfg.weight, cfg.batch_size, cfg.iterations, cfg.clip) == (3e-6, 0.05, 8, 20000, 1.0)
    assert ft.parse_finetune_config(_cfg(metric="is")).weight == 5e-6
    cfg = ft.parse_finetune_config({k: v for k, v in _cfg().items() if k not in ("val_every", "val_batches")})
    assert (cfg.val_every, cfg.val_batches, cfg.method_params) == (50, 10, {})


@pytest.mark.parametrize("changes, error, message", [
    ({"metric": "relevance_mass_acuracy"}, UnknownNameError, "config metric: .*relevance_mass_accuracy"),
    ({"method": "gradcan"}, UnknownNameError, "config method: .*gradcam"),
    ({"method": "scorecam"}, InputError, "'scorecam' has no differentiable mode; the fine-tuner supports gradcam"),
    ({"metric": "focus", "batch_size": 6}, InputError, "divisible by 4, got 6"),
    ({"iterationz": 3}, InputError, "iterationz"),
    ({"preset": "harmoni"}, InputError, "preset: must be one of"),
    ({"clip": -1.0}, InputError, "clip: must be >= 0"),
])
def test_bad_configs_are_refused_by_name(changes, error, message):
    with pytest.raises(error, match=message):
        ft.parse_finetune_config(_cfg(**changes))


@pytest.mark.parametrize("changes, message", [
    ({"method_params": {"layer": "features.12"}}, "no layer 'features.12'. Did you mean"),
    ({"method_params": {"layer": "fc"}}, "layer 'fc' returns shape"),
    ({"mask": "digt"}, "no mask 'digt'. Did you mean 'digit'"),
])
def test_bad_runs_fail_before_anything_is_written(tmp_path, changes, message):
    with pytest.raises(InputError, match=message):
        ft.finetune(_cfg(**changes), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_masks_are_named():
    from xaibench.data.base import Sample
    from xaibench.metrics.learnable import RMA

    cfg = ft.parse_finetune_config(_cfg())
    with pytest.raises(InputError, match="needs masks, but data set 'builtin:digits' has none"):
        ft.mask_name(cfg, RMA(), Sample(torch.zeros(3, 8, 8), 0, "0"))


def test_interrupted_finetuning_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    steps: list[int] = []
    crash = [True]
    original_step = ft.HarmonyModule.training_step

    def crash_at_three(self, batch, batch_idx):
        steps.append(self.global_step)
        if self.global_step == 3 and crash[0]:
            raise RuntimeError("power cut")
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(ft.HarmonyModule, "training_step", crash_at_three)
    with pytest.raises(RuntimeError, match="power cut"):
        ft.finetune(_cfg(), out, progress=False)
    before = pd.read_csv(out / "log.csv")
    assert before["step"].tolist() == [0, 2] and (out / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(InputError, match="already holds a fine-tuning run; pass --resume"):
        ft.finetune(_cfg(), out, progress=False)
    with pytest.raises(InputError, match="refusing to resume"):
        ft.finetune(_cfg(lr=2e-3), out, resume=True, progress=False)

    steps.clear()
    crash[0] = False
    result = ft.finetune(_cfg(), out, resume=True, progress=False)
    assert steps == [2, 3]  # continued from the checkpoint of step 2
    # ... with the same batches: the weights equal those of an uninterrupted run (bitwise on the CPU)
    straight = ft.finetune(_cfg(), tmp_path / "straight", progress=False)
    resumed_state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    straight_state = torch.load(straight.model_path, weights_only=True)["state_dict"]
    assert all(torch.equal(resumed_state[k], straight_state[k]) for k in straight_state)
    pd.testing.assert_frame_equal(result.log.drop(columns="seconds"), straight.log.drop(columns="seconds"))
    assert result.log["step"].tolist() == [0, 2, 4]
    pd.testing.assert_frame_equal(result.log.iloc[:2][["step", "metric", "agreement"]], before[["step", "metric", "agreement"]])
    assert result.log["selected"].sum() <= 1
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation) >= {"original", "finetuned", "difference", "wilcoxon_p", "agreement", "accuracy_original"}
    assert 0 <= evaluation["agreement"] <= 1 and (out / "gallery.pt").is_file()
    shown = ft.load_gallery(out)
    assert set(shown.maps) == {"original", "fine-tuned"} and shown.maps["original"].shape[0] == len(shown.titles)
    import xaibench

    model = xaibench.load_model(f"file:{out / 'model.pt'}", device="cpu")
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert ft.finetune(_cfg(), out, resume=True, progress=False).evaluation == evaluation  # finished: returned as is


def test_a_damaged_last_checkpoint_falls_back_to_the_best_one(tmp_path, monkeypatch):
    out = tmp_path / "run"
    original_step = ft.HarmonyModule.training_step

    def crash_at_three(self, batch, batch_idx):
        if self.global_step == 3:
            raise RuntimeError("power cut")
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(ft.HarmonyModule, "training_step", crash_at_three)
    with pytest.raises(RuntimeError, match="power cut"):
        ft.finetune(_cfg(), out, progress=False)
    monkeypatch.setattr(ft.HarmonyModule, "training_step", original_step)
    last, best = out / "checkpoints" / "last.ckpt", out / "checkpoints" / "best.ckpt"
    assert best.is_file()
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    saved = best.read_bytes()
    best.write_bytes(b"")
    with pytest.raises(InputError, match=rf"checkpoint {last} is damaged .*no earlier full checkpoint"):
        ft.finetune(_cfg(), out, resume=True, progress=False)
    best.write_bytes(saved)
    with pytest.warns(UserWarning, match=rf"{last} is damaged .*resuming from the earlier checkpoint {best}"):
        result = ft.finetune(_cfg(), out, resume=True, progress=False)
    assert result.log["step"].tolist() == [0, 2, 4] and (out / "model.pt").is_file()


@pytest.mark.parametrize("metric", ["focus", "road", "irof", "is"])
def test_every_objective_gives_a_finite_loss_with_gradient(metric):
    import copy

    import xaibench
    from xaibench.data import collate, load_dataset
    from xaibench.metrics.learnable import learnable_metric

    cfg = ft.parse_finetune_config(_cfg(metric=metric, metric_params={"n_segments": 20} if metric == "irof" else {}))
    orig = xaibench.load_model("builtin:digits-cnn", device="cpu")
    learn = copy.deepcopy(orig)
    m = learnable_metric(cfg.metric, **cfg.metric_params)
    module = ft.HarmonyModule(learn, orig, cfg, m, [], [])
    batch = collate([load_dataset("builtin:digits", split="test")[i] for i in range(8)])
    x = batch.images
    with torch.no_grad():
        pred = orig(x).argmax(1)
    z = learn(x)
    term = module.metric_term(x, pred, batch.masks["digit"], z, torch.tensor(1.0), torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(term, learn.features[0].weight)
    assert torch.isfinite(term) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    if metric == "road":  # agreement x mean(p(masked)[y] / p(clean)[y]) with the same masked images
        masked = m.perturb_input(x, xaibench.explainer("gradcam", learn)(x, pred), torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = (learn(masked).softmax(1)[range(8), pred] / learn(x).softmax(1)[range(8), pred]).mean()
        assert term.item() == pytest.approx(expected.item(), rel=1e-5)


def test_scale_divides_each_map_by_its_maximum_absolute_value():
    import xaibench

    from xaibench.data import collate, load_dataset

    model = xaibench.load_model("builtin:digits-cnn", device="cpu")
    batch = collate([load_dataset("builtin:digits", split="test")[i] for i in range(3)])
    x, t = batch.images, batch.labels
    plain = ft.method_maps(ft.parse_finetune_config(_cfg()), model)(x, t)
    scaled = ft.method_maps(ft.parse_finetune_config(_cfg(scale=True)), model, differentiable=True)(x, t)
    peak = plain.flatten(1).abs().amax(1)
    assert (peak > 0).all() and scaled.requires_grad
    torch.testing.assert_close(scaled.detach(), plain / peak[:, None, None])
