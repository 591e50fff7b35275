"""`xaibench reliability DIR [--json] [--max-pairs N|all]`: reliability statistics of a run, or of every run in a
folder with paired comparisons between them (see docs/reliability.md)."""

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
        "its interval and rank (controls tagged), paired Wilcoxon tests (Holm-corrected), the minimum benchmark size, "
        "the reliability verdict of each metric and the model's accuracy. If DIR holds runs in sub-folders (as "
        "`xaibench demo` writes), the same for each run, then paired bootstrap comparisons between the runs on "
        "their shared images (alpha and mean scores, --correction over every comparison). "
        "--json prints every field (NaN as null).",
    )
    p.add_argument("dir", metavar="DIR", help="run directory written by `xaibench run`, or a folder of them")
    p.add_argument("--correction", choices=("holm", "bh"), default="holm",
                   help="multiple-comparison correction of the comparisons between runs: holm (family-wise error, "
                        "default) or bh (Benjamini-Hochberg false discovery rate)")
    p.add_argument("--json", action="store_true", help="print all fields as JSON")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals; 1 - level is the significance threshold (default 0.95)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the images (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--max-pairs", type=_pair_limit, default=20, metavar="N|all",
                   help="significant method pairs to print, smallest adjusted p first (default 20; 'all'; "
                        "--json always has every pair)")
    p.set_defaults(func=handle)


def _pair_limit(text: str) -> int | None:
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'all', got {text!r}")
    return value


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "NaN"
    return f"{x:.{digits}f}"


def _text(rel: Any, max_pairs: int | None = 20, controls: set[str] | None = None, model: Any = None) -> str:
    import pandas as pd

    from xaibench.reliability import MIN_IMAGES, alpha_verdicts

    controls = controls or set()
    lines = []
    if model is not None:
        check, origin, meaningful = model
        lines += [f"Model: {check.text}; weights: {origin}"]
        if not meaningful:
            lines += ["  NOT MEANINGFUL: the model is at or near chance, or untrained; its sanity checks and rankings "
                      "say nothing about the methods"]
        lines.append("")
    lines += ["Reliability of each metric (Krippendorff's alpha, ordinal, of the per-image method rankings)"]
    alpha = pd.DataFrame(
        {
            "metric": rel.alpha["metric"],
            "alpha": [_f(a) for a in rel.alpha["alpha"]],
            f"{rel.level:.0%} CI": [f"[{_f(lo)}, {_f(hi)}]" for lo, hi in zip(rel.alpha["low"], rel.alpha["high"])],
            "point estimate": rel.alpha["interpretation"],
            "images": rel.alpha["n_images"],
        }
    )
    lines += ["  " + s for s in alpha.to_string(index=False).splitlines()]
    lines += ["", f"Verdict (the interval's lower bound must clear 0.667 / 0.8, with at least {MIN_IMAGES} images)"]
    lines += [f"  {r.metric}: {r.reason}" for r in alpha_verdicts(rel.alpha, rel.level).itertuples(index=False)]
    lines += ["", f"Ranking (mean score [{rel.level:.0%} BCa CI], rank 1 = best)"]
    for metric, group in rel.means.groupby("metric", sort=False):
        lines.append(f"  {metric}")
        for r in group.sort_values("rank", kind="stable").itertuples(index=False):
            name = f"{r.method} (control)" if r.method in controls else r.method
            lines.append(f"    #{int(r.rank):<3} {name:<24} {_f(r.mean, 4)} [{_f(r.low, 4)}, {_f(r.high, 4)}]  n={r.n}")
    sig = rel.pairwise[rel.pairwise["significant"]].sort_values(["p_adj", "p"], kind="stable")
    shown = sig if max_pairs is None else sig.head(max_pairs)
    lines += ["", f"Paired Wilcoxon tests: {len(sig)} of {len(rel.pairwise)} method pairs differ (Holm p_adj < {1 - rel.level:.2g})"
              + (f"; the {len(shown)} with the smallest p_adj:" if len(shown) < len(sig) else "")]
    lines += [f"  {r.metric}: {r.method_a} vs {r.method_b}  diff {_f(r.diff, 4)}  p_adj {r.p_adj:.2g}" for r in shown.itertuples(index=False)]
    if len(shown) < len(sig):
        lines.append(f"  ... {len(sig) - len(shown)} more (--max-pairs all prints them, --json has every pair)")
    best_mean = rel.means[rel.means["rank"] == 1].groupby("metric", sort=False)["method"].agg(list)
    lines += ["", "Minimum benchmark size (images for the top method to stay first with probability >= 0.95)",
              "  top = the method ranked first on the most images (first places), which can differ from the",
              "  mean-score #1 above when a method wins often by a little but loses by a lot elsewhere"]
    for r in rel.benchmark_size.itertuples(index=False):
        if r.top_method is None:
            lines.append(f"  {r.metric}: undefined ({r.reason})")
            continue
        probs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(dict(r.first_place_probs).items(), key=lambda kv: -kv[1]) if v > 0)
        verdict = f"{r.min_n} of {r.max_n}" + ("" if r.reducible else " (cannot be reduced)")
        by_mean = best_mean.get(r.metric, [])
        differs = f" (mean-score #1: {', '.join(by_mean)})" if by_mean and r.top_method not in by_mean else ""
        lines.append(f"  {r.metric}: top {r.top_method}{differs}, {verdict}; first places: {probs}")
    if rel.notes:
        lines += ["", "Notes"] + [f"  {n}" for n in rel.notes]
    return "\n".join(lines)


def _comparisons(table: Any, correction: str, level: float, controls: set[str]) -> str:
    from xaibench.reliability import CORRECTION_NAMES

    sig = table[table["significant"]]
    lines = [f"Comparisons between runs (paired bootstrap over shared images, {level:.0%} percentile intervals; "
             f"{CORRECTION_NAMES[correction]} over {len(table)} comparisons): {len(sig)} significant"]
    for r in table.itertuples(index=False):
        what = "alpha" if r.quantity == "alpha" else f"mean of {r.method}" + (" (control)" if r.method in controls else "")
        mark = "significant" if r.significant else "not significant"
        lines.append(f"  {r.metric}: {what}  {r.run_a} {_f(r.a)} - {r.run_b} {_f(r.b)} = {_f(r.diff)} "
                     f"[{_f(r.low)}, {_f(r.high)}], p_adj {_f(r.p_adj)}, n = {r.n_images} images: {mark}")
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xaibench.cli.report import find_runs
    from xaibench.errors import InputError
    from xaibench.reliability import alpha_verdicts, compare_runs, summarize
    from xaibench.report.summary import control_methods, model_sanity
    from xaibench.runner.layout import MANIFEST
    from xaibench.store import load_manifest, load_results

    folder = Path(args.dir)
    runs = [folder] if (folder / MANIFEST).exists() or not folder.is_dir() else find_runs(folder)
    if not runs:
        raise InputError(f"{folder} holds no run (no {MANIFEST} in it or below); create one with `xaibench run`")
    names = [str(r.relative_to(folder)) if r != folder else r.name for r in runs]
    results, out_json, texts = {}, {}, []
    for name, run in zip(names, runs):
        df = load_results(run)
        results[name] = df
        rel = summarize(df, level=args.level, n_boot=args.n_boot, seed=args.seed)
        controls = control_methods(df)
        model = model_sanity(df, load_manifest(run), args.level)
        check, origin, meaningful = model
        out_json[name] = {**rel.to_dict(), "verdicts": alpha_verdicts(rel.alpha, rel.level).to_dict(orient="records"),
                          "controls": sorted(controls),
                          "model": {"accuracy": check.accuracy.estimate, "low": check.accuracy.low,
                                    "high": check.accuracy.high, "n": check.n, "chance": check.chance,
                                    "near_chance": check.near_chance, "weights": origin, "meaningful": meaningful}}
        body = _text(rel, args.max_pairs, controls, model)
        texts.append(body if len(runs) == 1 else f"=== {name} ===\n{body}")
    table = None
    if len(runs) > 1:
        table = compare_runs(results, level=args.level, n_boot=args.n_boot, seed=args.seed, correction=args.correction)
        all_controls = set().union(*(control_methods(df) for df in results.values()))
        texts.append(_comparisons(table, args.correction, args.level, all_controls))
    if args.json:
        from xaibench.reliability import jsonable

        data = out_json[names[0]] if len(runs) == 1 else {
            "runs": out_json, "correction": args.correction,
            "comparisons": jsonable(table.to_dict(orient="records"))}
        print(json.dumps(jsonable(data), indent=2, allow_nan=False))
    else:
        print("\n\n".join(texts))
    return 0
