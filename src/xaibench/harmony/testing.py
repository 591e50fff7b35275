"""Run the application in-process against a throw-away data folder (used by the test suite).

``use_home(path)`` may be called several times in one process: the first call configures Django,
later calls point the (already configured) database connection and media storage at a new folder.
"""

from __future__ import annotations

import os
from pathlib import Path

FAST_HASHERS = "django.contrib.auth.hashers.MD5PasswordHasher"


def use_home(home: str | Path) -> Path:
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    os.environ["XAIBENCH_HARMONY_HOME"] = str(home)
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
    connections["default"].settings_dict["NAME"] = str(home / "db.sqlite3")
    override_settings(MEDIA_ROOT=str(home / "media"), ALLOWED_HOSTS=["testserver", "127.0.0.1", "localhost"]).enable()
    if first:
        try:
            setup_test_environment()
        except RuntimeError:  # already set up by another harness
            pass
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    return home


def make_annotator(name: str, password: str = "correct horse 1", dataset: str = "Sample"):
    """An annotator account holding every condition of ``dataset`` (the sample data set's name)."""
    from django.contrib.auth import get_user_model

    from xaibench.harmony.dataset import assign_conditions
    from xaibench.harmony.models import Condition

    user = get_user_model().objects.create_user(username=name, password=password)
    assign_conditions(user, list(Condition.objects.filter(dataset=dataset)))
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
