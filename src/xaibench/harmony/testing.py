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
