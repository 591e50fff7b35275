"""The demo: two benchmark runs on the built-in digits, reliability statistics and two reports.

Both runs explain the same images (``builtin:digits-spurious``: a small square in a fixed corner
whose colour gives away the class, in the training split and in the test split), once with the
model trained on plain digits and once with the model trained on the spurious data. The configs
ship in `xaibench/configs/`. The summary compares how well the maps align with the ``digit`` and
with the ``square`` mask: a model that learned the shortcut looks at the square.
"""

from __future__ import annotations

import shutil
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from xaibench.runner import layout, parse_config, run
from xaibench.runner.config import RunConfig

CONFIGS = Path(__file__).parent / "configs"
RUNS = {"normal": "demo-digits.toml", "spurious": "demo-spurious.toml"}
ALIGNMENT_MASKS = ("digit", "square")


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its runs and reports, and the alignment comparison it printed."""

    out: Path
    runs: dict[str, Path]
    reports: dict[str, Path]
    alignment: pd.DataFrame  # model, metric, method, digit, square (mean scores)
    seconds: float

    def alignment_summary(self) -> pd.DataFrame:
        """Mean over methods per (model, metric) of the digit and square alignment."""
        return self.alignment.groupby(["model", "metric"], sort=False)[list(ALIGNMENT_MASKS)].mean().reset_index()


def demo_config(which: str, n: int | None = None, device: str | None = None) -> RunConfig:
    """The shipped config of one demo run (``"normal"`` or ``"spurious"``), optionally with `n` images."""
    with (CONFIGS / RUNS[which]).open("rb") as fh:
        raw: dict[str, Any] = tomllib.load(fh)
    if n is not None:
        raw["data"]["n"] = n
    if device is not None:
        raw["device"] = device
    return parse_config(raw)


def _prepare(out: Path, cfg: RunConfig) -> bool:
    """Whether `out` holds a run of `cfg` to resume; a demo run of another config there is replaced."""
    manifest = layout.read_manifest(out)
    if manifest is None:
        return False
    if manifest["config_hash"] == cfg.hash:
        return True
    shutil.rmtree(out)
    return False


def alignment_table(results: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean localisation score per (model, metric, method) on the digit and on the square mask, control
    methods left out as in the report (`xaibench.report.summary.alignment_by_method`)."""
    from xaibench.report.summary import alignment_by_method, control_methods

    frames = []
    for model, df in results.items():
        table = alignment_by_method(df, control_methods(df))
        table.insert(0, "model", model)
        frames.append(table)
    out = pd.concat(frames, ignore_index=True)
    missing = [m for m in ALIGNMENT_MASKS if m not in out]
    if missing:
        raise RuntimeError(f"the demo configs score no localisation metric on mask(s) {missing}")
    return out[["model", "metric", "method", *ALIGNMENT_MASKS]]


def run_demo(out: str | Path = "runs/demo", n: int | None = None, device: str | None = None, quiet: bool = False) -> DemoResult:
    """Run both demo configs into `out`/normal and `out`/spurious, write their reports, print a summary.

    A finished run of the same config is reused; `n` overrides the number of images.
    """
    from xaibench.report import build_report
    from xaibench.store import load_results

    start = time.perf_counter()
    out = Path(out)
    runs, reports, results = {}, {}, {}
    for which in RUNS:
        cfg = demo_config(which, n, device)
        run_dir = out / which
        resume = _prepare(run_dir, cfg)
        t0 = time.perf_counter()
        run(cfg, run_dir, resume=resume)
        t1 = time.perf_counter()
        reports[which] = build_report(run_dir)
        runs[which] = run_dir
        results[which] = load_results(run_dir)
        if not quiet:
            print(f"[{which}] {cfg.model['spec']}: run {t1 - t0:.1f} s, report {time.perf_counter() - t1:.1f} s")
    alignment = alignment_table(results)
    result = DemoResult(out, runs, reports, alignment, time.perf_counter() - start)
    if not quiet:
        _print_summary(result, results)
    return result


def _print_summary(result: DemoResult, results: dict[str, pd.DataFrame]) -> None:
    from xaibench.reliability import summarize
    from xaibench.report.summary import best_per_metric, control_methods, model_sanity
    from xaibench.store import load_manifest

    pd.set_option("display.width", 160)
    for which, df in results.items():
        check, origin, meaningful = model_sanity(df, load_manifest(result.runs[which]))
        best = best_per_metric(summarize(df), control_methods(df))
        print(f"\n[{which}] model: {check.text}; weights: {origin}")
        print(f"[{which}] best method per metric, controls excluded; reliability verdict of the metric "
              f"(Krippendorff's alpha, {'' if meaningful else 'NOT MEANINGFUL: model at or near chance; '}"
              "* = reliable enough to rank by):")
        for r in best.itertuples(index=False):
            note = f"   (control {', '.join(r.beaten_by)} scores better)" if r.beaten_by else ""
            print(f"  {r.metric:<29} {r.best or 'none':<22} {r.mean:8.3f}{' *' if r.reliable and meaningful else '  '} "
                  f"{r.verdict}{note}")
    summary = result.alignment_summary()
    print("\nHuman alignment with each mask (mean over the non-control methods; higher is more aligned)")
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for metric, group in summary.groupby("metric", sort=False):
        g = group.set_index("model")
        if not {"normal", "spurious"} <= set(g.index):
            continue
        ok = g.loc["spurious", "square"] > g.loc["spurious", "digit"] and g.loc["normal", "digit"] > g.loc["normal", "square"]
        verdict = "as expected" if ok else "NOT as expected"
        print(
            f"  {metric}: spurious model square {g.loc['spurious', 'square']:.3f} vs digit {g.loc['spurious', 'digit']:.3f}; "
            f"normal model digit {g.loc['normal', 'digit']:.3f} vs square {g.loc['normal', 'square']:.3f} ({verdict})"
        )
    print(f"\nDemo finished in {result.seconds:.1f} s.")
    for which, path in result.reports.items():
        print(f"Report ({which} model): {path.resolve()}")
