"""The new methods through the runner and the report: a random-init timm ViT-Tiny at 224 px with the
attention, CAM-family and model-agnostic methods, and a torchvision ResNet-18 with the CNN-only ones."""

from __future__ import annotations

import pytest

import xaibench
from xaibench.explainers import METHODS
from xaibench.report import build_report
from xaibench.runner import parse_config, run

SURROGATE = {"n_samples": 8, "n_segments": 8, "compactness": 30.0}
VIT_METHODS = {
    "raw_attention": {}, "attention_rollout": {"discard_ratio": 0.5}, "grad_attention_rollout": {}, "attnlrp": {},
    "hirescam": {}, "xgradcam": {}, "eigencam": {}, "lime": SURROGATE, "kernel_shap": SURROGATE,
    "expected_gradients": {"n_samples": 2},
}
CNN_METHODS = {"fullgrad": {}, "hirescam": {}, "xgradcam": {}, "eigencam": {}, "ablationcam": {"max_batch": 256},
               "lime": SURROGATE}


def _config(model: str, size: int, methods: dict) -> dict:
    return {
        "name": f"new methods on {model}", "seed": 0, "shard_size": 2,
        "model": {"spec": model, "num_classes": 10},
        "data": {"spec": "builtin:digits", "n": 2, "image_size": size},
        "methods": methods,
        "metrics": {"sparseness": {}},
    }


@pytest.mark.parametrize(("model", "size", "methods"), [
    ("timm:vit_tiny_patch16_224", 224, VIT_METHODS),
    ("torchvision:resnet18", 64, CNN_METHODS),
])
def test_new_methods_run_through_the_runner_and_the_report(tmp_path, model: str, size: int, methods: dict) -> None:
    out = tmp_path / "run"
    run(parse_config(_config(model, size, methods)), out)
    results = xaibench.load_results(out)
    assert set(results["method"]) == set(methods)
    undefined = results[results["score"].isna()]
    # LIME's Lasso (alpha 0.01) can zero every coefficient of a random model whose logit hardly moves
    assert set(undefined["method"]) <= {"lime"} and (undefined["nan_reason"] == "all-zero map").all()
    assert results.groupby("method")["score"].count().min() >= 1
    page = build_report(out).read_text(encoding="utf-8")
    for name in methods:
        assert name in page
    assert '<section id="criteria">' in page


def test_every_new_method_declares_where_it_applies() -> None:
    vit_only = {"raw_attention", "attention_rollout", "grad_attention_rollout", "attnlrp"}
    for name in vit_only:
        assert METHODS.get(name).architectures == "vit"
    assert METHODS.get("fullgrad").architectures == "cnn"
    assert set(VIT_METHODS) | set(CNN_METHODS) >= vit_only | {"fullgrad", "ablationcam", "kernel_shap"}
