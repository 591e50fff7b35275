"""The benchmark runner: config -> sharded, resumable run -> tidy results in a directory.

Public API: `run`, `load_config`, `parse_config`, `RunConfig`, `config_hash`, the `Executor`
protocol with `LocalExecutor`, and the shard unit (`ShardSpec`, `execute_shard`).
"""

from __future__ import annotations

from xaibench.runner.bench import plan, run
from xaibench.runner.config import MethodSpec, MetricSpec, RunConfig, config_hash, load_config, parse_config
from xaibench.runner.executor import Executor, LocalExecutor
from xaibench.runner.shard import ShardSpec, ShardSummary, compute_shard, execute_shard
from xaibench.seeding import derive_seed

__all__ = [
    "Executor",
    "LocalExecutor",
    "MethodSpec",
    "MetricSpec",
    "RunConfig",
    "ShardSpec",
    "ShardSummary",
    "compute_shard",
    "config_hash",
    "derive_seed",
    "execute_shard",
    "load_config",
    "parse_config",
    "plan",
    "run",
]
