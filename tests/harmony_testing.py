"""Run the application in-process against a throw-away data folder (used by the test suite).

``use_home(path)`` may be called several times in one process: the first call configures Django,
later calls point the (already configured) database connection and media storage at a new folder.
With ``HARMONY_TEST_DATABASE_URL`` set (a PostgreSQL server, e.g. ``postgres://harmony@127.0.0.1:5433/postgres``)
each folder gets a fresh database on that server instead of its SQLite file, and ``LiveServer``
and the CLI use it too; ``PostgresCluster`` starts such a server for the tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

FAST_HASHERS = "django.contrib.auth.hashers.MD5PasswordHasher"
TEST_DATABASE_ENV = "HARMONY_TEST_DATABASE_URL"


def use_home(home: str | Path) -> Path:
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    os.environ["XAIBENCH_HARMONY_HOME"] = str(home)
    url = _fresh_database(home)
    if url:
        os.environ["DATABASE_URL"] = url
    else:
        os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("HARMONY_PASSWORD_HASHERS", FAST_HASHERS)
    os.environ["DJANGO_SETTINGS_MODULE"] = "xaibench.harmony.settings"
    import django
    from django.conf import settings

    first = not settings.configured
    if first:
        django.setup()
    from django.db import connections
    from django.test.utils import override_settings, setup_test_environment

    connections.close_all()
    connections["default"].settings_dict["NAME"] = urlsplit(url).path.lstrip("/") if url else str(home / "db.sqlite3")
    override_settings(MEDIA_ROOT=str(home / "media"), ALLOWED_HOSTS=["testserver", "127.0.0.1", "localhost"]).enable()
    if first:
        try:
            setup_test_environment()
        except RuntimeError:  # already set up by another harness
            pass
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    return home


def _fresh_database(home: Path) -> str | None:
    """With ``HARMONY_TEST_DATABASE_URL``: (re)create a database named after ``home`` on that server
    and return its URL; else None (SQLite in ``home``)."""
    base = os.environ.get(TEST_DATABASE_ENV)
    if not base:
        return None
    import hashlib

    import psycopg

    name = "harmony_" + hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:20]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(base)._replace(path=f"/{name}"))


def make_annotator(name: str, password: str = "correct horse 1", dataset: str = "Sample"):
    """An annotator account holding every condition of ``dataset`` (the sample data set's name)."""
    from django.contrib.auth import get_user_model

    from xaibench.harmony.dataset import assign_conditions
    from xaibench.harmony.models import Condition

    user = get_user_model().objects.create_user(username=name, password=password)
    assign_conditions(user, list(Condition.objects.filter(dataset=dataset, legacy=False)))
    return user


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LiveServer:
    """``xaibench harmony serve`` in a child process on 127.0.0.1 and a free port (a context manager)."""

    def __init__(self, home: str | Path, threads: int = 8, startup_timeout: float = 60.0):
        self.home = Path(home)
        self.threads = threads
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def __enter__(self) -> "LiveServer":
        import subprocess
        import sys
        import time
        import urllib.request

        env = {**os.environ, "XAIBENCH_HARMONY_HOME": str(self.home), "DJANGO_SETTINGS_MODULE": "xaibench.harmony.settings"}
        if not os.environ.get(TEST_DATABASE_ENV):  # else the database use_home made for this folder
            env.pop("DATABASE_URL", None)
        env.setdefault("HARMONY_PASSWORD_HASHERS", FAST_HASHERS)
        self.log = open(self.home / "server.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xaibench.harmony", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--threads", str(self.threads)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {(self.home / 'server.log').read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(self.url + "/accounts/login/", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("server did not start in time")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except Exception:  # noqa: BLE001
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()


def cli(*argv: str) -> int:
    """Run ``xaibench harmony ARGV`` in this process; errors propagate (the CLI would print them)."""
    from xaibench.cli import build_parser

    args = build_parser().parse_args(["harmony", *argv])
    return int(args.func(args) or 0)


class PostgresCluster:
    """A throw-away PostgreSQL server (the distribution's ``initdb`` / ``pg_ctl``) in a temporary
    folder, listening on 127.0.0.1 and a free port (its socket in that folder), trust
    authentication for the superuser ``harmony``; run as the ``postgres`` user when started by root
    (PostgreSQL refuses root). A context manager: stopped and deleted on exit."""

    def __init__(self, bindir: str | Path):
        self.bindir = Path(bindir)
        self.port = free_port()
        self.url = f"postgres://harmony@127.0.0.1:{self.port}/postgres"
        self.data: Path | None = None

    @staticmethod
    def find_bindir() -> Path | None:
        """The folder of ``pg_ctl`` and ``initdb``: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
        import shutil

        found = shutil.which("pg_ctl")
        if found and Path(found).with_name("initdb").exists():
            return Path(found).parent
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
        return candidates[-1].parent if candidates else None

    @staticmethod
    def _as_owner(*args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)

    def _run(self, command: list[str], timeout: float = 120) -> None:
        import subprocess

        r = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            log = (self.data / "server.log").read_text(errors="replace")[-2000:] if (self.data / "server.log").exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}\n{log}")

    def pg_ctl(self, action: str, *extra: str) -> list[str]:
        """The command line of ``pg_ctl ACTION`` for this server (as its owner), e.g. to restart it
        from another process."""
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        return self._as_owner(str(self.bindir / "pg_ctl"), action, "-D", str(self.data / "db"), "-l",
                              str(self.data / "server.log"), "-w", "-t", "60", "-o", options, *extra)

    def __enter__(self) -> "PostgresCluster":
        import shutil
        import tempfile

        self.data = Path(tempfile.mkdtemp(prefix="harmony-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
        try:
            self._run(self._as_owner(str(self.bindir / "initdb"), "-D", str(self.data / "db"), "-U", "harmony",
                                     "--auth=trust", "-E", "UTF8", "--locale=C"))
            self._run(self.pg_ctl("start"))
        except BaseException:
            shutil.rmtree(self.data, ignore_errors=True)
            raise
        return self

    def restart(self) -> None:
        """Restart the server the hard way (``-m immediate``: no clean shutdown, recovery from the WAL)."""
        self._run(self.pg_ctl("restart", "-m", "immediate"))

    def __exit__(self, *exc) -> None:
        import shutil

        try:
            self._run(self.pg_ctl("stop", "-m", "immediate"))
        finally:
            shutil.rmtree(self.data, ignore_errors=True)
