"""Where a run keeps its files, atomic writes, commit records and the run directory's lock.

::

    DIR/run.json                          manifest: config, config hash, image ids and hashes, shard count
    DIR/run.lock                          the lock of the one process writing the run (host, PID)
    DIR/shards/shard-00000.parquet        results of shard 0: its commit marker, renamed into place last
    DIR/commits/shard-00000.json          size and sha256 of every file of shard 0 (written just before)
    DIR/curves/shard-00000.parquet        per-image curves of curve metrics (deletion, insertion, ...)
    DIR/images/shard-00000.pt             the shard's images (uint8) for galleries
    DIR/maps/<method>/shard-00000.pt      cached attribution maps, reused on resume
    DIR/report.html                       written by `xaibench report`

Every file is written atomically (`xaibench.files`: a temporary file in its folder, named
``.<name>.<host>-<pid>.<random>.tmp``, renamed into place), so a clean-up can tell whose a left-over
temporary file is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from xaibench.errors import InputError
from xaibench.files import HOST, HOST_TAG, write_atomic, write_temp, write_text

MANIFEST = "run.json"
LOCK = "run.lock"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def results_path(out: Path, index: int) -> Path:
    return out / "shards" / f"{shard_name(index)}.parquet"


def commit_path(out: Path, index: int) -> Path:
    return out / "commits" / f"{shard_name(index)}.json"


def curves_path(out: Path, index: int) -> Path:
    return out / "curves" / f"{shard_name(index)}.parquet"


def images_path(out: Path, index: int) -> Path:
    return out / "images" / f"{shard_name(index)}.pt"


def maps_path(out: Path, method: str, index: int) -> Path:
    return out / "maps" / method / f"{shard_name(index)}.pt"


# --- writes ------------------------------------------------------------------------------------


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def parquet_writer(df: pd.DataFrame) -> Callable[[Path], None]:
    return lambda p: df.to_parquet(p, index=False, engine="pyarrow")


def write_parquet(path: Path, df: pd.DataFrame) -> None:
    write_atomic(path, parquet_writer(df))


def write_torch(path: Path, obj: Any) -> None:
    write_atomic(path, lambda p: torch.save(obj, p))


def temp_owner_alive(tmp: Path) -> bool:
    """Whether the process named in a temporary file's name (this host only) still runs."""
    host_pid = tmp.name.rsplit(".", 3)[-3] if tmp.name.count(".") >= 3 else ""
    host, _, pid = host_pid.rpartition("-")
    return host == HOST_TAG and pid.isdigit() and _alive(int(pid), None)


def remove_stale_temps(out: Path) -> int:
    """Delete temporary files left by interrupted writes, except those of live processes on this host.

    Call it only while holding the run's lock: every other writer of the run is then dead (or is
    one of this run's own workers, which have not started yet).
    """
    removed = 0
    for tmp in out.rglob(".*.tmp"):
        if temp_owner_alive(tmp):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


# --- checksums and commit records ----------------------------------------------------------------


def file_record(path: Path) -> dict[str, Any]:
    """Size in bytes and sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def check_file(path: Path, record: dict[str, Any], *, full: bool = True) -> str | None:
    """Why `path` does not match its `record` (missing, size, sha256), or None when it does.

    ``full=False`` compares sizes only (cheap, for every read); ``--resume`` compares hashes too.
    """
    if not path.exists():
        return "missing"
    size = path.stat().st_size
    if size != record["size"]:
        return f"{size} bytes, {record['size']} were committed"
    if full and file_record(path)["sha256"] != record["sha256"]:
        return "its sha256 differs from the one committed"
    return None


def read_commit(out: Path, index: int) -> dict[str, Any] | None:
    """The commit record of shard `index` (None when there is none); `InputError` when unreadable."""
    path = commit_path(out, index)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        wrong = _wrong_types(record, COMMIT_TYPES, ("files",))
        files = record["files"] if not wrong else {}
        wrong += [f"files[{name!r}]: {why}" for name, rec in files.items()
                  for why in _wrong_types(rec, FILE_RECORD_TYPES, tuple(FILE_RECORD_TYPES))]
    except (ValueError, UnicodeDecodeError) as err:
        wrong = [f"not valid JSON: {err}"]
    if wrong:
        raise InputError(f"commit record {path} is corrupt ({'; '.join(wrong[:3])}); delete it and run with --resume "
                         "to rebuild it")
    return record


# What the files a run writes hold: key -> (accepted types, element type of a list or None).
_INT = (int,)
MANIFEST_TYPES: dict[str, tuple[tuple[type, ...], type | None]] = {
    "config_hash": ((str,), None), "config": ((dict,), None), "n_shards": (_INT, None), "model_hash": ((str,), None),
    "positions": ((list,), int), "n_total": (_INT, None), "image_ids": ((list,), str),
    "image_hashes": ((list,), str), "data_hash": ((str,), None), "n_images": (_INT, None),
    "methods": ((list,), str), "metrics": ((list,), str), "classes": ((list,), None), "started": ((str,), None),
}
MANIFEST_REQUIRED = ("config_hash", "config", "n_shards")
COMMIT_TYPES: dict[str, tuple[tuple[type, ...], type | None]] = {"shard": (_INT, None), "files": ((dict,), None)}
FILE_RECORD_TYPES: dict[str, tuple[tuple[type, ...], type | None]] = {"size": (_INT, None), "sha256": ((str,), None)}


def _wrong_types(obj: Any, types: dict[str, tuple[tuple[type, ...], type | None]], required: tuple[str, ...]
                 ) -> list[str]:
    """What in the JSON object `obj` is missing or of the wrong type (empty when it is as written)."""
    if not isinstance(obj, dict):
        return [f"expected a JSON object, got {type(obj).__name__}"]
    wrong = [f"no {key!r}" for key in required if key not in obj]
    for key, (accepted, element) in types.items():
        if key not in obj:
            continue
        value = obj[key]
        names = " or ".join(t.__name__ for t in accepted)
        if isinstance(value, bool) or not isinstance(value, accepted):
            wrong.append(f"{key!r} must be {names}, got {json.dumps(value)[:40]}")
        elif element is not None and any(isinstance(v, bool) or not isinstance(v, element) for v in value):
            wrong.append(f"{key!r} must be a list of {element.__name__}")
    return wrong


# --- the manifest --------------------------------------------------------------------------------


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of run directory `out` (None when there is none); `InputError` naming it when corrupt."""
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is corrupt (not valid JSON: {err}); the run's identity is lost: "
                         "start it again with --overwrite") from None
    wrong = _wrong_types(manifest, MANIFEST_TYPES, MANIFEST_REQUIRED)
    if wrong:
        raise InputError(f"{path} is corrupt ({'; '.join(wrong[:3])}); start the run again with --overwrite")
    return manifest


# --- the lock: one writer per run directory ------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (Linux /proc), to tell a reused PID from the original."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _process_start(pid)
    return started is None or now is None or now == started


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _describe(holder: dict[str, Any]) -> str:
    return f"process {holder.get('pid')} on host {holder.get('host')!r} (since {holder.get('since')})"


@contextlib.contextmanager
def _guard(out: Path) -> Iterator[None]:
    """Serialise stale-lock take-overs between processes of this host."""
    import fcntl

    with (out / f".{LOCK}.guard").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _create(path: Path, text: str) -> bool:
    """Create `path` holding `text` if it does not exist (atomically: a hard link of a complete
    temporary file; exclusive creation where the filesystem has no hard links). False if it exists."""
    tmp = write_temp(path, lambda p: p.write_text(text))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return True
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[dict[str, Any]]:
    """Hold the exclusive lock of run directory `out` for the body of the ``with`` block.

    The lock is ``DIR/run.lock``, created by an atomic hard link (fails if it exists, also on NFS)
    holding the host, PID and start time of its holder. A lock whose holder is a dead process of
    this host is taken over; a live holder, or one on another host (whose liveness cannot be
    checked from here), gives an `InputError` naming it.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    me = {"host": HOST, "pid": os.getpid(), "process_start": _process_start(os.getpid()),
          "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": secrets.token_hex(8)}
    for _ in range(20):
        if _create(path, json.dumps(me)):
            break
        holder = _read_holder(path)
        if holder is None:  # vanished, or being written on a filesystem without link(): look again
            time.sleep(0.05)
            continue
        if holder.get("host") == HOST and not _alive(int(holder.get("pid", -1)), holder.get("process_start")):
            with _guard(out):
                if _read_holder(path) == holder:
                    path.unlink(missing_ok=True)  # stale: its process is dead
            continue
        where = "" if holder.get("host") == HOST else (
            f"; if that process no longer runs, delete {path} "
            "(a lock held on another host cannot be checked from here)")
        raise InputError(f"{out} is being written by {_describe(holder)}; wait for it to finish or stop it{where}")
    else:
        raise InputError(f"cannot take the lock {path}: it is unreadable or changes hands too often; "
                         "if no process writes the run, delete it")
    try:
        yield me
    finally:
        if (_read_holder(path) or {}).get("token") == me["token"]:
            path.unlink(missing_ok=True)
