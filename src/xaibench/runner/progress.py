"""Progress of a run: a bar in a terminal, plain lines in a log, time estimated from declared costs.

Every step of a shard (the maps of a method, a metric on a method's maps) has a weight: its
planned forward-pass equivalents per image (`xaibench.runner.cost.step_units`) times the shard's
images. Elapsed time over finished weight gives the ETA, so a shard of cheap localisation metrics
does not make a run of expensive randomisation checks look nearly done.

In a terminal a tqdm bar names the shard, method and metric being computed. Elsewhere (a pipe, a
batch job's log) a plain line ``<run>: shard k of n | <method> / <metric> | elapsed .. | ETA ..``
is printed when the run starts, then at most every `interval` seconds, and when it ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from tqdm.auto import tqdm


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class RunProgress:
    """Receives the steps of the shards of one run (`step`, `shard_done`) and shows them.

    weights: forward-pass equivalents per image of each (method, metric) step (metric None = maps);
    shards: shard index -> image count of every pending shard; done_before: shards committed
    before this start. Events may come from shards running in parallel (other processes).
    """

    def __init__(
        self,
        label: str,
        weights: Mapping[tuple[str, str | None], float],
        shards: Mapping[int, int],
        n_shards: int,
        done_before: int = 0,
        *,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
        interval: float = 30.0,
    ) -> None:
        self.label = label
        self.weights = dict(weights)
        self.n_shards = n_shards
        self.done = done_before
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.interval = interval
        per_image = sum(self.weights.values())
        self.shards = dict(shards)
        self.total = per_image * sum(self.shards.values())
        self.finished = 0.0
        self.current = "starting"
        self.start = time.monotonic()
        self.last_line = -float("inf")
        self.bar: Any = None
        if self.terminal:
            self.bar = tqdm(total=round(self.total, 2) or None, unit="fwd", unit_scale=True, file=self.stream,
                            desc=label, dynamic_ncols=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")

    # --- events ---

    def step(self, shard: int, method: str, metric: str | None, finished: bool) -> None:
        """The `Progress` callback of `execute_shard`."""
        what = f"{method} / {metric or 'maps'}"
        if finished:
            weight = self.weights.get((method, metric), 0.0) * self.shards.get(shard, 0)
            self.finished += weight
            if self.bar is not None:
                self.bar.update(round(weight, 2))
            return
        self.current = what
        if self.bar is not None:
            self.bar.set_description(f"{self.label}: shard {self.done + 1}/{self.n_shards} {what}", refresh=True)
        else:
            self._line()

    def shard_done(self) -> None:
        self.done += 1
        if self.bar is None:
            self._line(final=self.done == self.n_shards)
        elif self.done == self.n_shards:
            self.bar.set_description(f"{self.label}: {self.done} of {self.n_shards} shards done", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    # --- plain lines ---

    def eta(self) -> float | None:
        elapsed = time.monotonic() - self.start
        if self.finished <= 0 or self.total <= 0:
            return None
        return elapsed * max(self.total - self.finished, 0.0) / self.finished

    def _line(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last_line < self.interval:
            return
        self.last_line = now
        elapsed = format_seconds(now - self.start)
        if final:
            text = f"{self.label}: {self.done} of {self.n_shards} shards done | elapsed {elapsed}"
        else:
            eta = self.eta()
            text = (f"{self.label}: shard {min(self.done + 1, self.n_shards)} of {self.n_shards} | {self.current} | "
                    f"elapsed {elapsed} | ETA {'?' if eta is None else format_seconds(eta)}")
        print(text, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A line outside the bar (the planned cost, a note)."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
