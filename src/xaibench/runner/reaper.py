"""Fate sharing for a local Ray cluster: its processes end when the driver that started it ends.

``ray.init()`` without an address starts a head node (GCS, raylet, monitors, dashboard agent,
runtime-env agent) as children of the driver. When the driver exits normally, ``ray.shutdown()``
stops them; when it is killed (SIGKILL, OOM killer), some of them (the dashboard and runtime-env
agents, about 170 MB) live on and ignore SIGTERM. `watch` starts a small watcher in a session of its
own (so neither Ctrl-C nor a kill of the driver's process group reaches it) that records every
descendant of the driver while the driver lives and, once it is gone, kills those still running
(matched by PID *and* start time, so a reused PID is never hit). It then exits.

Linux only (it reads ``/proc``); elsewhere `watch` does nothing. This file imports only the standard
library and runs as a script, so the watcher costs a few MB, not a torch import.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent PID, start time in clock ticks) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """{PID: start time} of every living descendant of ``root``."""
    children: dict[int, list[int]] = {}
    start: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            children.setdefault(stat[1], []).append(int(entry))
            start[int(entry)] = stat[2]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child in start and child not in found:
                found[child] = start[child]
                todo.append(child)
    return found


def _alive(pid: int, start: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[2] == start and stat[0] != "Z"


def reap(driver: int) -> int:
    """Wait for ``driver`` to end, then SIGKILL the descendants it had; returns how many were killed."""
    driver_stat = _stat(driver)
    if driver_stat is None:
        return 0
    seen: dict[int, int] = {}
    while _alive(driver, driver_stat[2]):
        seen.update(_descendants(driver))
        time.sleep(POLL_S)
    seen.pop(os.getpid(), None)
    killed = 0
    for pid, start in seen.items():
        if _alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def watch() -> subprocess.Popen | None:
    """Start the watcher for this process (see the module docstring); None where ``/proc`` is missing."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen([sys.executable, __file__, str(os.getpid())], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reap(int(sys.argv[1]))
