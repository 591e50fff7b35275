"""Ray executor on a local 2-CPU cluster: the same rows as the local executor, a worker killed by
PID mid-shard is retried by Ray with identical results, resume across executors, progress relayed
to the driver, errors as themselves. One Ray start for the module (it costs seconds)."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from xaibench.cli import main
from xaibench.errors import InputError
from xaibench.runner import LocalExecutor, execute_shard, parse_config, run
from xaibench.runner.ray_executor import RayExecutor, import_ray
from xaibench.store import load_results

ray = pytest.importorskip("ray")

RAW = {
    "name": "ray",
    "seed": 5,
    "shard_size": 4,
    "explain_batch": 4,
    "model": {"spec": "builtin:digits-spurious-cnn"},
    "data": {"spec": "builtin:digits-spurious", "split": "test", "n": 12},
    # seeded noise in a method and in a metric: rows match only if seeds come from shard coordinates
    "methods": {"grad": {"method": "saliency"}, "noisy": {"method": "smoothgrad", "n_samples": 3}},
    "metrics": {
        "deletion": {"steps": 4},
        "max_sensitivity": {"n_samples": 2},
        "rma": {"metric": "relevance_mass_accuracy", "mask": "digit"},
    },
}
CFG = parse_config(RAW)
TOML = """
name = "ray"
seed = 5
shard_size = 4
explain_batch = 4
[model]
spec = "builtin:digits-spurious-cnn"
[data]
spec = "builtin:digits-spurious"
split = "test"
n = 12
[methods.grad]
method = "saliency"
[methods.noisy]
method = "smoothgrad"
n_samples = 3
[metrics.deletion]
steps = 4
[metrics.max_sensitivity]
n_samples = 2
[metrics.rma]
metric = "relevance_mass_accuracy"
mask = "digit"
"""


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's helpers travel by value
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory) -> pd.DataFrame:
    out = run(CFG, tmp_path_factory.mktemp("local") / "run", progress=False)
    return _rows(out)


def _rows(out: Path) -> pd.DataFrame:
    """The results table without its wall-time column (the only column allowed to differ)."""
    return load_results(out).drop(columns=["seconds"]).sort_values(["shard", "method", "metric", "image_id"],
                                                                   ignore_index=True)


def test_ray_executor_gives_the_local_rows(cluster, local_rows, tmp_path, capsys):
    path = tmp_path / "ray.toml"
    path.write_text(TOML)
    assert parse_config(tomllib.loads(TOML)).hash == CFG.hash
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--executor", "ray"]) == 0
    pd.testing.assert_frame_equal(_rows(tmp_path / "run"), local_rows)
    err = capsys.readouterr().err
    assert "ray: 3 of 3 shards done" in err  # the progress lines of the driver
    assert main(["run", str(path), "--out", str(tmp_path / "other"), "--address", "auto"]) == 2
    assert "use it with --executor ray" in capsys.readouterr().err


class PauseFirstShard:
    """Shard 0 writes its worker's PID to `folder` and waits for a ``go`` file before it runs."""

    def __init__(self, fn, folder: str) -> None:
        self.fn, self.folder = fn, folder

    def __call__(self, spec):
        if spec.index == 0:
            Path(self.folder, f"attempt-{os.getpid()}").touch()
            deadline = time.monotonic() + 120
            while not Path(self.folder, "go").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return self.fn(spec)


class Paused:
    def __init__(self, inner, folder: Path) -> None:
        self.inner, self.folder = inner, str(folder)

    def map(self, fn, specs):
        return self.inner.map(PauseFirstShard(fn, self.folder), specs)


def test_worker_killed_by_pid_mid_shard_is_retried_with_identical_rows(cluster, local_rows, tmp_path):
    folder = tmp_path / "signals"
    folder.mkdir()
    errors = []
    thread = threading.Thread(
        target=lambda: _capture(errors, run, CFG, tmp_path / "run", executor=Paused(RayExecutor(), folder),
                                progress=False)
    )
    thread.start()
    deadline = time.monotonic() + 120
    while not list(folder.glob("attempt-*")) and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not errors, errors
    (first,) = folder.glob("attempt-*")
    pid = int(first.name.split("-")[1])
    os.kill(pid, signal.SIGKILL)  # the worker dies in the middle of shard 0
    (folder / "go").touch()
    thread.join(timeout=300)
    assert not thread.is_alive() and not errors, errors
    attempts = sorted(folder.glob("attempt-*"))
    assert len(attempts) == 2 and str(pid) in attempts[0].name + attempts[1].name  # Ray ran it again elsewhere
    pd.testing.assert_frame_equal(_rows(tmp_path / "run"), local_rows)


def _capture(errors, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except BaseException as err:  # noqa: BLE001 - reported by the test
        errors.append(err)


class StopAfter:
    """An executor interrupted (like Ctrl-C) after `k` shards finished."""

    def __init__(self, inner, k: int) -> None:
        self.inner, self.k = inner, k

    def map(self, fn, specs):
        for i, summary in enumerate(self.inner.map(fn, specs)):
            yield summary
            if i + 1 == self.k:
                raise KeyboardInterrupt


@pytest.mark.parametrize(("first", "second"), [("local", "ray"), ("ray", "local")])
def test_resume_across_executors(cluster, local_rows, tmp_path, first, second):
    make = {"local": LocalExecutor, "ray": RayExecutor}
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(CFG, out, executor=StopAfter(make[first](), 1), progress=False)
    done = sorted(p.name for p in (out / "shards").glob("*.parquet"))
    assert 1 <= len(done) < 3
    run(CFG, out, resume=True, executor=make[second](), progress=False)
    pd.testing.assert_frame_equal(_rows(out), local_rows)


def test_progress_is_relayed_to_the_driver_and_errors_arrive_as_themselves(cluster, tmp_path):
    from xaibench.runner import plan
    from xaibench.runner.shard import get_context

    ctx = get_context(CFG)
    specs = plan(CFG, tmp_path / "local", list(range(8)), ctx.model_hash)
    local_events, ray_events = [], []
    list(LocalExecutor().map(functools.partial(execute_shard, progress=lambda *e: local_events.append(e)), specs))
    specs = plan(CFG, tmp_path / "ray", list(range(8)), ctx.model_hash)
    summaries = list(RayExecutor().map(functools.partial(execute_shard, progress=lambda *e: ray_events.append(e)),
                                       specs))
    assert sorted(s.index for s in summaries) == [0, 1]
    assert sorted(ray_events, key=repr) == sorted(local_events, key=repr) and len(local_events) > 0
    bad = [dataclasses.replace(specs[0], config_hash="0" * 64)]
    with pytest.raises(InputError, match="config does not match its hash"):
        list(RayExecutor().map(execute_shard, bad))


def test_missing_ray_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r"pip install 'xaibench\[ray\]'"):
        import_ray()


DRIVER = """
import os, sys, time
from xaibench.runner.ray_executor import start_local_cluster
start_local_cluster(num_cpus=1)
import ray
@ray.remote
def pid():
    return os.getpid()
ray.get(pid.remote())  # a worker, as a run would have
print(os.getpid(), flush=True)
time.sleep(600)
"""


def test_local_cluster_does_not_outlive_a_killed_driver(tmp_path):
    from xaibench.runner.reaper import _alive, _descendants

    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, start_new_session=True)
    try:
        assert int(driver.stdout.readline()) == driver.pid
        time.sleep(3)  # the agents are up
        cluster = _descendants(driver.pid)
        assert len(cluster) >= 4  # gcs, raylet, agents, worker, ...
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.time() + 60
        while time.time() < deadline and any(_alive(p, s) for p, s in cluster.items()):
            time.sleep(0.5)
        assert not [p for p, s in cluster.items() if _alive(p, s)]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
