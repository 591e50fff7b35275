"""`xaibench metrics [NAME] [--category C]`: the registered metrics, their direction, range, cost and parameters."""

from __future__ import annotations

import argparse
import inspect
import math
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "metrics",
        help="list the metrics: category, direction, range, cost and parameters",
        description="List every registered metric: category, whether higher or lower is better, the range "
        "of its scores, its cost per image (model passes as a formula of its parameters), what it needs "
        "(masks, an explainer, ...) and its parameters with defaults. Name one to see it alone.",
    )
    p.add_argument("name", nargs="?", help="show one metric only")
    p.add_argument("--category", help="only the metrics of one category (faithfulness, localisation, ...)")
    p.set_defaults(func=handle)


def metric_params(fn: Any) -> dict[str, Any]:
    """Parameter name -> default of a metric function, without the shared vocabulary (model, inputs, ...)."""
    from xaibench.metrics.base import VOCABULARY

    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if n not in VOCABULARY}


def _range(lo: float, hi: float) -> str:
    def f(x: float) -> str:
        return ("-inf" if x < 0 else "inf") if math.isinf(x) else f"{x:g}"

    return f"[{f(lo)}, {f(hi)}]"


def format_metrics(names: list[str] | None = None, category: str | None = None) -> str:
    """A readable listing: one block per metric (description, category, direction, range, cost, parameters)."""
    from xaibench.errors import UnknownNameError
    from xaibench.metrics import METRICS
    from xaibench.metrics.base import CATEGORIES

    if category is not None and category not in CATEGORIES:
        raise UnknownNameError(f"unknown metric category {category!r}. Known: {', '.join(CATEGORIES)}.")
    entries = {METRICS.get(n).info.name: METRICS.get(n) for n in names} if names else dict(METRICS.items())
    if category is not None:
        entries = {n: m for n, m in entries.items() if m.info.category == category}
    lines = []
    for name, metric in sorted(entries.items(), key=lambda kv: (CATEGORIES.index(kv[1].info.category), kv[0])):
        info = metric.info
        direction = "higher is better" if info.higher_is_better else "lower is better"
        needs = [r for r in info.requires if r in ("masks", "explainer", "labels")]
        lines.append(f"{name}  {info.description}")
        lines.append(f"    {info.category}, {direction}, range {_range(*info.range)}; cost per image: {info.cost}"
                     + (f"; needs {', '.join(needs)}" if needs else ""))
        for pname, default in metric_params(metric.fn).items():
            shown = "(required)" if default is inspect.Parameter.empty else repr(default)
            lines.append(f"      {pname}={shown}")
        lines.append("")
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    print(format_metrics([args.name] if args.name else None, args.category), end="")
    return 0
