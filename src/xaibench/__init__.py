"""xaibench: measure how good the explanations of image classifiers are."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names -> the module that defines them; imported on first use so `import xaibench` stays light.
_EXPORTS = {
    "load_model": "xaibench.models",
    "explainer": "xaibench.explainers",
    "metrics": "xaibench.metrics",
    "load_results": "xaibench.store",
    "ExplanationMetrics": "xaibench.compat",
    # autotimm's explainer class names, so its examples run after swapping the import
    "GradCAM": "xaibench.compat",
    "GradCAMPlusPlus": "xaibench.compat",
    "IntegratedGradients": "xaibench.compat",
    "set_input_range": "xaibench.checks",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xaibench' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return module if module.__name__.endswith("." + name) else getattr(module, name)


__all__ = ["__version__", *_EXPORTS]
