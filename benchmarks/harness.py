"""Timing, memory and reporting helpers shared by the benchmark modules (no metric code here).

- `timed_pair`: best-of-N wall times of a metric call and of its unavoidable cost (forwards or
  explainer calls), interleaved so that load changes on a shared machine hit both alike.
- `Counting` / `CountingExplainer`: count the images a metric pushes through the model or the
  explainer, and the wall time spent inside it (the in-run ratio).
- `peak_memory`: peak memory growth of a call (CPU: peak RSS; CUDA: allocator peak).
- `agreement`, `markdown`, `line`: score comparison and the report formats of benchmarks/README.md.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


class Counting(nn.Module):
    """Counts the images passed through the wrapped model and the wall time spent inside it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.images, self.seconds = model, 0, 0.0

    def forward(self, x: Tensor) -> Tensor:
        start = time.perf_counter()
        self.images += x.shape[0]
        out = self.model(x)
        if out.is_cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        return out


class CountingExplainer:
    """Counts the rows an explainer ``(inputs, targets) -> maps`` is called on, and its wall time."""

    def __init__(self, explainer: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.explainer, self.images, self.seconds = explainer, 0, 0.0

    def __call__(self, inputs: Tensor, targets: Tensor) -> Tensor:
        start = time.perf_counter()
        self.images += inputs.shape[0]
        out = self.explainer(inputs, targets)
        if out.is_cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        return out


def clock(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of ``fn()`` (synchronising CUDA around it) and its result."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def best_of(fn: Callable[[], Any], repeats: int, budget_s: float = math.inf) -> tuple[float, Any]:
    """Best wall time of up to `repeats` calls (fewer once `budget_s` seconds have been spent)."""
    best, out, spent = math.inf, None, 0.0
    for _ in range(repeats):
        t, out = clock(fn)
        best, spent = min(best, t), spent + t
        if spent > budget_s:
            break
    return best, out


def timed_pair(
    first: Callable[[], Any], counter: Any, second: Callable[[], Any] | None, repeats: int
) -> tuple[float, float, float, Any]:
    """Best wall times of `first` (which calls the model or explainer through `counter`) and
    `second` over `repeats` interleaved calls, the time `first` spent inside `counter` in its best
    call, and the last result of `first`. `second` None: its time is NaN."""
    best_a, best_b, inside, out = math.inf, math.inf, math.nan, None
    for _ in range(repeats):
        if counter is not None:
            counter.seconds = 0.0
        t_a, out = clock(first)
        if t_a < best_a:
            best_a, inside = t_a, (counter.seconds if counter is not None else math.nan)
        if second is not None:
            best_b = min(best_b, clock(second)[0])
    return best_a, (best_b if second is not None else math.nan), inside, out


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_memory(fn: Callable[[], Any], device: str) -> int:
    """Peak memory growth (bytes) during ``fn()``: CUDA allocator peak, or peak RSS on CPU (``VmHWM``
    reset through ``/proc/self/clear_refs`` after ``malloc_trim``, so every page the call touches
    counts, tensors and interpreter alike)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, so reuse does not hide a peak
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM) to the current one
    before = _status("VmRSS")
    fn()
    return _status("VmHWM") - before


def agreement(ours: np.ndarray, ref: np.ndarray, random_reference: bool) -> str:
    """max |difference| (deterministic references) or difference of the means (references that
    draw their own random numbers); NaN pairs are counted and shown with the reference's values."""
    ours, ref = np.asarray(ours, dtype=np.float64).ravel(), np.asarray(ref, dtype=np.float64).ravel()
    if random_reference or ours.shape != ref.shape:
        return f"mean diff {np.nanmean(ours) - np.nanmean(ref):+.3f}"
    both = ~(np.isnan(ours) | np.isnan(ref))
    text = "-"
    if both.any():
        diff = np.abs(ours[both] - ref[both])
        text = f"max abs diff {diff.max():.1e}"
        if np.abs(ref[both]).max() > 10:  # large scores (ratios): the relative difference is the telling one
            text += f", rel {(diff / np.maximum(np.abs(ref[both]), 1e-300)).max():.1e}"
    if not both.all():
        text += f" ({int((~both).sum())} NaN ours, ref {np.unique(ref[~both])[:3].tolist()})"
    return text


def header(device: str, **settings: Any) -> dict[str, Any]:
    """The run's context: date, device, threads, machine, torch version, load average, settings."""
    return dict(
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), device=device,
        threads=torch.get_num_threads(), cpus=os.cpu_count(), machine=platform.processor() or platform.machine(),
        torch=torch.__version__, load=" / ".join(f"{v:.1f}" for v in os.getloadavg()), **settings,
    )


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


def line(row: dict[str, Any]) -> str:
    """One result as a progress line."""
    ref = (f" | {row['reference']} {row['reference_s']:.2f}s speed-up {row['speedup']:.1f}x, {row['agreement']}"
           if "reference" in row else "")
    return (f"{row['metric']}: {row['ours_s']:.3f}s, {_fmt(row.get('calls_per_image'), '.0f')} "
            f"{row.get('unit', 'forwards')}/image, pure cost {_fmt(row.get('pure_s'), '.3f', 's')}, "
            f"ratio {_fmt(row.get('ratio'), '.2f', 'x')}, in-run {_fmt(row.get('ratio_inside'), '.2f', 'x')}{ref} | "
            f"peak memory {row['memory_small'] / 2**20:.1f} / {row['memory_large'] / 2**20:.1f} MiB")


def markdown(report: dict[str, Any], unit: str = "forwards") -> str:
    """The results as a markdown table (the format of benchmarks/README.md)."""
    small, large = report["small_n"], report["n"]
    lines = [
        f"{report['date']}, device {report['device']}, torch {report['torch']}, {report['threads']} threads, "
        f"load average {report['load']} at the end; N = {large} (memory also at N = {small}); "
        f"{report.get('settings', '')}",
        "",
        f"| metric | {unit} / image | ours (s) | pure cost (s) | ratio | ratio in-run | reference | reference (s) "
        f"| speed-up | agreement | mean ours / ref | peak MiB N={small} | peak MiB N={large} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        ref = f"- | - | - | - | {r['mean']:.3f}"
        if "reference" in r:
            ref = (f"{r['reference']} | {r['reference_s']:.2f} | {r['speedup']:.1f}x | "
                   f"{r['agreement'].replace('|', '/')} | {r['mean']:.3f} / {r['reference_mean']:.3f}")
        lines.append(
            f"| {r['metric']} | {_fmt(r.get('calls_per_image'), '.0f')} | {r['ours_s']:.3f} | "
            f"{_fmt(r.get('pure_s'), '.3f')} | {_fmt(r.get('ratio'), '.2f', 'x')} | "
            f"{_fmt(r.get('ratio_inside'), '.2f', 'x')} | {ref} | {r['memory_small'] / 2**20:.1f} | "
            f"{r['memory_large'] / 2**20:.1f} |")
    return "\n".join(lines)
