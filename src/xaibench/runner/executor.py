"""Executors run shards. A shard is a pure unit (`ShardSpec` -> committed files), so any executor
that calls `fn(spec)` for every spec, in any order and on any machine sharing the run directory,
produces the same results."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

from xaibench.runner.shard import ShardSpec, ShardSummary


@runtime_checkable
class Executor(Protocol):
    """Runs `fn` on every shard spec and yields the summaries as shards finish."""

    def map(self, fn: Callable[[ShardSpec], ShardSummary], specs: Sequence[ShardSpec]) -> Iterator[ShardSummary]: ...


class LocalExecutor:
    """Runs the shards one after the other in this process (the model is loaded once)."""

    def map(self, fn: Callable[[ShardSpec], ShardSummary], specs: Sequence[ShardSpec]) -> Iterator[ShardSummary]:
        for spec in specs:
            yield fn(spec)
