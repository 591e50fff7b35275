"""HARMONY: a blinded web study of which attribution map humans prefer (extra ``web``).

Annotators see an image, the model's prediction and two attribution maps, the original model's and
a fine-tuned model's (sides randomised per annotator and example), plus "Neither". The package is
a complete Django project: settings, models, views, templates, admin, a study data-set loader, an
importer of the published study's database and the analysis of the labels.

See docs/harmony.md.
"""

from __future__ import annotations

import os

SETTINGS_MODULE = "xaibench.harmony.settings"


def setup(settings_module: str | None = None) -> None:
    """Configure Django for the HARMONY application (once per process)."""
    try:
        import django
    except ImportError as err:  # pragma: no cover - depends on the installed extras
        from xaibench.errors import InputError

        raise InputError(
            "the HARMONY web application needs the `web` extra: pip install 'xaibench[web]'"
        ) from err
    from django.conf import settings

    if settings.configured:
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", settings_module or SETTINGS_MODULE)
    django.setup()


def ensure_database(verbosity: int = 0) -> None:
    """Create or upgrade the database schema (idempotent)."""
    setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=verbosity)


def database_name() -> str:
    """The configured database as a user would name it, without its password: the SQLite file, or
    ``ENGINE://USER@HOST:PORT/NAME``."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    engine = db["ENGINE"].rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return f"SQLite database {db['NAME']}"
    user = f"{db['USER']}@" if db.get("USER") else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"{engine}://{user}{db.get('HOST') or 'localhost'}{port}/{db['NAME']}"

