"""Streaming torchmetrics metrics: equal to the functional core over the whole set, under two gloo
processes, after pickling and reset; the Lightning example runs at tiny size."""

from __future__ import annotations

import importlib.util
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import xaibench
from xaibench import streaming
from xaibench.errors import InputError, UnknownNameError
from xaibench.reliability import MeanStatistic, bootstrap_ci

REPO = Path(__file__).resolve().parents[1]
N, BATCH = 24, 8


def _setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random-init CNN (3x16x16 -> 5 classes), images, predicted targets and random square masks."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5),
    ).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(N, 3, 16, 16, generator=gen)
    masks = torch.zeros(N, 16, 16, dtype=torch.bool)
    corners = torch.randint(0, 10, (N, 2), generator=gen)
    for i, (r, c) in enumerate(corners.tolist()):
        masks[i, r : r + 6, c : c + 6] = True
    with torch.no_grad():
        targets = model(x).argmax(1)
    return model, x, targets, masks


# name -> (class, metric parameters, needs masks)
CASES = {
    "deletion": (streaming.Deletion, {"steps": 4}, False),
    "insertion": (streaming.Insertion, {"steps": 4}, False),
    "average_drop": (streaming.AverageDrop, {}, False),
    "deletion_correlation": (streaming.DeletionCorrelation, {"steps": 4}, False),
    "pointing_game": (streaming.PointingGame, {}, True),
    "relevance_mass_accuracy": (streaming.RelevanceMassAccuracy, {}, True),
    "shared_interest": (streaming.SharedInterest, {}, True),
    "sparseness": (streaming.Sparseness, {}, False),
}


@pytest.fixture(scope="module")
def setup():
    model, x, targets, masks = _setup()
    maps = xaibench.explainer("saliency", model)(x, targets)
    return model, x, targets, masks, maps


@pytest.mark.parametrize("name", list(CASES))
def test_streaming_over_batches_equals_functional_on_whole_set(setup, name):
    model, x, targets, masks, maps = setup
    cls, params, needs_masks = CASES[name]
    metric = cls(method="saliency", **params)
    for s in range(0, N, BATCH):
        metric.update(model=model, inputs=x[s : s + BATCH], targets=targets[s : s + BATCH],
                      masks=masks[s : s + BATCH] if needs_masks else None)
    words = {"model": model, "inputs": x, "attributions": maps, "targets": targets, "masks": masks}
    fn = xaibench.metrics.METRICS.get(name)
    whole = fn(**{w: words[w] for w in fn.info.requires}, **params)
    assert metric.count + metric.undefined == N
    assert metric.compute().item() == pytest.approx(whole.mean(), rel=1e-9, abs=1e-12)
    assert cls.higher_is_better == fn.info.higher_is_better


def test_given_maps_and_seeded_metric_draw_with_the_seed_on_every_batch(setup):
    model, x, targets, _, maps = setup
    metric = streaming.MaxSensitivity(method="saliency", n_samples=2, seed=5)
    explainer = xaibench.explainer("saliency", model)
    expected = []
    for s in range(0, N, BATCH):
        sl = slice(s, s + BATCH)
        metric.update(model=model, inputs=x[sl], targets=targets[sl])
        expected.append(xaibench.metrics.max_sensitivity(model, x[sl], targets[sl], explainer, n_samples=2, seed=5).scores)
    assert metric.compute().item() == pytest.approx(torch.cat(expected).double().nanmean().item(), rel=1e-9)
    # maps passed in are used as they are (no method needed)
    sparse = streaming.Sparseness()
    sparse.update(attributions=maps)
    assert sparse.compute().item() == pytest.approx(xaibench.metrics.sparseness(maps).mean(), rel=1e-9)


def test_forward_returns_the_batch_value_and_accumulates_like_update(setup):
    model, x, targets, _, _ = setup
    by_update, by_forward = (streaming.MaxSensitivity(method="saliency", n_samples=2) for _ in range(2))
    for s in range(0, N, BATCH):
        sl = slice(s, s + BATCH)
        by_update.update(model=model, inputs=x[sl], targets=targets[sl])
        batch = by_forward(model=model, inputs=x[sl], targets=targets[sl])
        single = streaming.MaxSensitivity(method="saliency", n_samples=2)
        single.update(model=model, inputs=x[sl], targets=targets[sl])
        assert batch.item() == single.compute().item()
    assert by_forward.compute().item() == pytest.approx(by_update.compute().item(), rel=1e-12)


def test_nan_scores_are_counted_not_averaged():
    maps = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[0, :4] = masks[2, 4:] = True  # images 1 and 3 have empty masks
    result = xaibench.metrics.relevance_mass_accuracy(maps, masks)
    assert torch.isnan(result.scores).sum() >= 1
    metric = streaming.RelevanceMassAccuracy()
    metric.update(attributions=maps, masks=masks)
    assert int(metric.undefined) == int(torch.isnan(result.scores).sum())
    assert metric.compute().item() == pytest.approx(result.mean(), rel=1e-12)


def test_bootstrap_interval_is_reliability_bootstrap_of_all_scores(setup):
    model, x, targets, _, maps = setup
    metric = streaming.Deletion(method="saliency", steps=4, bootstrap=300, seed=7)
    for s in range(0, N, BATCH):
        metric.update(model=model, inputs=x[s : s + BATCH], targets=targets[s : s + BATCH])
    out = metric.compute()
    scores = xaibench.metrics.deletion(model, x, maps, targets, steps=4).scores.double()
    ref = bootstrap_ci(MeanStatistic(), np.sort(scores.numpy()), n_boot=300, seed=7, method="percentile")
    assert out["mean"].item() == pytest.approx(ref.estimate, rel=1e-9)
    assert (out["low"].item(), out["high"].item()) == pytest.approx((ref.low, ref.high), rel=1e-9)
    assert out["low"] < out["mean"] < out["high"]


def test_pickling_and_reset(setup):
    model, x, targets, _, _ = setup
    metric = streaming.MaxSensitivity(method="saliency", n_samples=2, bootstrap=50)
    metric.update(model=model, inputs=x[:BATCH], targets=targets[:BATCH])
    copy = pickle.loads(pickle.dumps(metric))
    for m in (metric, copy):
        m.update(model=model, inputs=x[BATCH:], targets=targets[BATCH:])
    assert copy.compute()["mean"].item() == metric.compute()["mean"].item()
    assert copy.compute()["low"].item() == metric.compute()["low"].item()
    first = metric.compute()["mean"].item()
    metric.reset()
    assert int(metric.count) == 0 and metric.scores == []
    # after a reset the same updates give the same value
    metric.update(model=model, inputs=x[:BATCH], targets=targets[:BATCH])
    metric.update(model=model, inputs=x[BATCH:], targets=targets[BATCH:])
    assert metric.compute()["mean"].item() == first


def test_errors_name_the_problem(setup):
    model, x, targets, masks, _ = setup
    with pytest.raises(InputError, match=r"unknown parameter 'stepz'. Did you mean 'steps'"):
        streaming.Deletion(stepz=3)
    with pytest.raises(UnknownNameError, match="Did you mean 'gradcam'"):
        streaming.Deletion(method="gradcan")
    with pytest.raises(InputError, match="pass the maps"):
        streaming.Deletion().update(model=model, inputs=x, targets=targets)
    with pytest.raises(InputError, match="needs masks"):
        streaming.PointingGame(method="saliency").update(model=model, inputs=x, targets=targets)
    with pytest.raises(UnknownNameError, match="Did you mean 'deletion'"):
        streaming.streaming_metric("deletio")
    assert streaming.streaming_metric("pointing-game") is streaming.PointingGame


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, x, targets, masks = _setup()
        deletion = streaming.Deletion(method="saliency", steps=4, bootstrap=100)
        pointing = streaming.PointingGame(method="saliency")
        for s in range(rank * BATCH, N, world * BATCH):  # rank 0: batches 0, 2; rank 1: batch 1
            sl = slice(s, s + BATCH)
            deletion.update(model=model, inputs=x[sl], targets=targets[sl])
            pointing.update(model=model, inputs=x[sl], targets=targets[sl], masks=masks[sl])
        out = {k: v.item() for k, v in deletion.compute().items()}
        out["pointing"] = pointing.compute().item()
        torch.save(out, f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "out")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"out.{r}") for r in range(2)]
    model, x, targets, masks = _setup()
    deletion = streaming.Deletion(method="saliency", steps=4, bootstrap=100)
    pointing = streaming.PointingGame(method="saliency")
    deletion.update(model=model, inputs=x, targets=targets)
    pointing.update(model=model, inputs=x, targets=targets, masks=masks)
    one = {k: v.item() for k, v in deletion.compute().items()}
    one["pointing"] = pointing.compute().item()
    for out in ranks:
        assert out == pytest.approx(one, rel=1e-12)


def test_lightning_example_logs_explanation_quality_each_validation_epoch():
    import lightning as L

    spec = importlib.util.spec_from_file_location("lightning_streaming", REPO / "examples" / "lightning_streaming.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    torch.manual_seed(0)
    train, val = example.loaders(n_train=64, n_val=24, batch_size=12)
    module = example.DigitsWithExplanations(steps=4)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train, val)
    logged = trainer.callback_metrics
    # the logged epoch values are the functional metrics of the trained model on all validation images
    batch = next(iter(torch.utils.data.DataLoader(val.dataset, batch_size=24, collate_fn=example.collate)))
    model = module.model.eval()
    with torch.no_grad():
        targets = model(batch.images).argmax(1)
    maps = xaibench.explainer("gradcam", model)(batch.images, targets)
    deletion = xaibench.metrics.deletion(model, batch.images, maps, targets, steps=4).mean()
    pointing = xaibench.metrics.pointing_game(maps, batch.masks["digit"]).mean()
    assert logged["val/deletion_auc"].item() == pytest.approx(deletion, rel=1e-6)
    assert logged["val/pointing_game"].item() == pytest.approx(pointing, rel=1e-6)
