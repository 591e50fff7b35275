"""`RayExecutor`: every shard a Ray task, on a local Ray cluster or an existing one (``address``).

It shares everything with `LocalExecutor` but the scheduling: each task calls the same ``fn``
(`execute_shard`), which loads the model and data once per worker process (`get_context` is a
process cache and Ray reuses its workers: ``max_calls=0``, also for GPU tasks) and commits the
shard's files atomically in the run directory. Every worker must therefore see the run directory
at the same path (one machine, or shared storage on a cluster; docs/distributed.md says why).

- Fault tolerance is Ray's: a task whose worker dies (killed, out of memory, node lost) is run
  again, up to ``max_retries`` times. Shards draw their randomness from their coordinates, so a
  retried shard writes the same rows; a half-written shard leaves only temporary files.
- A ``progress`` callback bound into ``fn`` (``functools.partial(execute_shard, progress=...)``, as
  `run` does) is called on the driver with the same arguments: workers send them through a Ray
  queue. (A retried shard reports its steps again.)
- Errors raised by a shard (`XaibenchError`) reach the driver as themselves.
- A local cluster (no ``address``) shares the driver's fate: if the driver is killed, a watcher
  kills the cluster's processes (`xaibench.runner.reaper`). An existing cluster (``address``) is
  not ours: a killed driver's job ends there and Ray stops its tasks and workers, while the
  cluster's own processes keep running, as they should.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from xaibench.errors import InputError, XaibenchError
from xaibench.runner.reaper import watch
from xaibench.runner.shard import ShardSpec, ShardSummary


def import_ray() -> Any:
    """The `ray` module, or a clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        raise InputError("--executor ray needs the ray package (pip install 'xaibench[ray]')") from err
    return ray


def start_local_cluster(num_cpus: int | None = None) -> None:
    """``ray.init`` of a local cluster that does not outlive this process: ``ray.shutdown()`` stops it
    when the run ends, and a watcher (`xaibench.runner.reaper`) kills what is left of it if this
    process is killed."""
    ray = import_ray()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    watch()


def _run_shard(fn: Callable[..., ShardSummary], spec: ShardSpec, queue: Any) -> ShardSummary:
    """The Ray task: ``fn(spec)``, with progress events sent to the driver's queue when there is one."""
    if queue is None:
        return fn(spec)
    return fn(spec, progress=lambda *event: queue.put(event))


class RayExecutor:
    """Runs the shards as Ray tasks and yields their summaries as they finish (see the module docstring).

    address: an existing cluster (``"auto"``, ``"ray://head:10001"``, ``"10.0.0.1:6379"``); ``None``
    starts a local one with ``num_cpus`` CPUs (all by default), shut down after the run. When this
    process has already called ``ray.init``, that cluster is used and left running.
    cpus / gpus / memory: resources of one task (memory in bytes); ``None`` takes them from the
    config's ``[resources]`` table (cpus 1, gpus: one per task when the device is CUDA, else none).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        cpus: float | None = None,
        gpus: float | None = None,
        memory: int | None = None,
        max_retries: int = 3,
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.cpus = cpus
        self.gpus = gpus
        self.memory = memory
        self.max_retries = max_retries

    def _options(self, specs: Sequence[ShardSpec]) -> dict[str, Any]:
        config = specs[0].config if specs else {}
        wanted = config.get("resources") or {}
        cpus = self.cpus if self.cpus is not None else wanted.get("cpus", 1.0)
        gpus = self.gpus if self.gpus is not None else wanted.get("gpus")
        if gpus is None:
            gpus = 1 if str(config.get("device", "cpu")).startswith("cuda") else 0
        memory = self.memory if self.memory is not None else wanted.get("memory")
        options: dict[str, Any] = {
            "num_cpus": cpus,
            "num_gpus": gpus,
            "max_retries": self.max_retries,
            "max_calls": 0,  # keep workers (and their loaded model) across tasks, GPU tasks too
        }
        if memory is not None:
            options["memory"] = memory
        return options

    def map(self, fn: Callable[[ShardSpec], ShardSummary], specs: Sequence[ShardSpec]) -> Iterator[ShardSummary]:
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            if self.address is None:
                start_local_cluster(self.num_cpus)
            else:
                try:
                    ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
                except ConnectionError as err:
                    raise InputError(f"cannot connect to the Ray cluster at {self.address!r}: {err}") from None
        try:
            yield from self._map(ray, fn, specs)
        finally:
            if started:
                ray.shutdown()

    def _map(self, ray: Any, fn: Callable[..., ShardSummary], specs: Sequence[ShardSpec]) -> Iterator[ShardSummary]:
        from ray.util.queue import Queue

        progress = None
        if isinstance(fn, functools.partial) and callable(fn.keywords.get("progress")):
            progress = fn.keywords["progress"]
            fn = functools.partial(fn.func, *fn.args, **{k: v for k, v in fn.keywords.items() if k != "progress"})
        queue = Queue(actor_options={"num_cpus": 0}) if progress is not None and specs else None
        task = ray.remote(**self._options(specs))(_run_shard)
        fn_ref = ray.put(fn)
        pending = [task.remote(fn_ref, spec, queue) for spec in specs]

        def relay() -> None:
            if queue is not None:
                for event in queue.get_nowait_batch(queue.qsize()):
                    progress(*event)

        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.2)
                relay()
                for ref in done:
                    try:
                        summary = ray.get(ref)
                    except ray.exceptions.RayTaskError as err:
                        if isinstance(err.cause, XaibenchError):
                            raise err.cause from None
                        raise
                    yield summary
        finally:
            for ref in pending:  # interrupted: running shards stop (KeyboardInterrupt), workers stay
                ray.cancel(ref)
            if queue is not None:
                queue.shutdown()
