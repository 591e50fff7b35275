"""`xaibench reliability DIR [--json]`: reliability statistics of a run (see docs/reliability.md)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reliability",
        help="reliability statistics of a run: Krippendorff's alpha, ranking with CIs, minimum benchmark size",
        description="Print, for each metric of the run in DIR: Krippendorff's alpha of the per-image method "
        "rankings (images are the raters) with a BCa bootstrap interval, the mean score of each method with "
        "its interval and rank, paired Wilcoxon tests (Holm-corrected) and the minimum benchmark size. "
        "--json prints every field (NaN as null).",
    )
    p.add_argument("dir", metavar="DIR", help="run directory written by `xaibench run`")
    p.add_argument("--json", action="store_true", help="print all fields as JSON")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals; 1 - level is the significance threshold (default 0.95)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the images (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.set_defaults(func=handle)


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "NaN"
    return f"{x:.{digits}f}"


def _text(rel: Any) -> str:
    import pandas as pd

    lines = ["Reliability of each metric (Krippendorff's alpha, ordinal, of the per-image method rankings)"]
    alpha = pd.DataFrame(
        {
            "metric": rel.alpha["metric"],
            "alpha": [_f(a) for a in rel.alpha["alpha"]],
            f"{rel.level:.0%} CI": [f"[{_f(lo)}, {_f(hi)}]" for lo, hi in zip(rel.alpha["low"], rel.alpha["high"])],
            "interpretation": rel.alpha["interpretation"],
            "images": rel.alpha["n_images"],
        }
    )
    lines += ["  " + s for s in alpha.to_string(index=False).splitlines()]
    lines += ["", f"Ranking (mean score [{rel.level:.0%} BCa CI], rank 1 = best)"]
    for metric, group in rel.means.groupby("metric", sort=False):
        lines.append(f"  {metric}")
        for r in group.sort_values("rank", kind="stable").itertuples(index=False):
            lines.append(f"    #{int(r.rank):<3} {r.method:<24} {_f(r.mean, 4)} [{_f(r.low, 4)}, {_f(r.high, 4)}]  n={r.n}")
    sig = rel.pairwise[rel.pairwise["significant"]]
    lines += ["", f"Paired Wilcoxon tests: {len(sig)} of {len(rel.pairwise)} method pairs differ (Holm p_adj < {1 - rel.level:.2g})"]
    lines += [f"  {r.metric}: {r.method_a} vs {r.method_b}  diff {_f(r.diff, 4)}  p_adj {r.p_adj:.2g}" for r in sig.itertuples(index=False)]
    lines += ["", "Minimum benchmark size (images for the top method to stay first with probability >= 0.95)"]
    for r in rel.benchmark_size.itertuples(index=False):
        if r.top_method is None:
            lines.append(f"  {r.metric}: undefined ({r.reason})")
            continue
        probs = ", ".join(f"{k} {v:.2f}" for k, v in dict(r.first_place_probs).items())
        verdict = f"{r.min_n} of {r.max_n}" + ("" if r.reducible else " (cannot be reduced)")
        lines.append(f"  {r.metric}: top {r.top_method}, {verdict}; first places: {probs}")
    if rel.notes:
        lines += ["", "Notes"] + [f"  {n}" for n in rel.notes]
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    from xaibench.reliability import summarize
    from xaibench.store import load_results

    rel = summarize(load_results(args.dir), level=args.level, n_boot=args.n_boot, seed=args.seed)
    if args.json:
        print(json.dumps(rel.to_dict(), indent=2, allow_nan=False))
    else:
        print(_text(rel))
    return 0
