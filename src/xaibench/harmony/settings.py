"""Settings of the HARMONY application, read from the environment.

Environment variables
- ``XAIBENCH_HARMONY_HOME``: data folder (default ``~/.local/share/xaibench/harmony`` or the
  platform's equivalent) holding ``db.sqlite3``, ``media/`` and, when ``SECRET_KEY`` is not set, a
  generated ``secret_key`` file.
- ``DATABASE_URL``: any database dj-database-url understands (e.g. ``postgres://...``); default
  SQLite in the data folder.
- ``SECRET_KEY``, ``DEBUG`` (default off), ``ALLOWED_HOSTS`` and ``CSRF_TRUSTED_ORIGINS``
  (comma-separated).
- ``HARMONY_STATIC_ROOT``: where ``collectstatic`` writes (default ``<home>/static``).
- ``HARMONY_LOGIN_FAILURES_PER_ACCOUNT`` / ``_PER_CLIENT`` (default 5 / 20) failed logins per
  ``HARMONY_LOGIN_WINDOW_S`` (default 900) before logins are refused; ``HARMONY_TRUSTED_PROXIES``
  (comma-separated addresses whose ``X-Forwarded-For`` names the client).

Production deployments use ``xaibench.harmony.settings_production``, which also requires an explicit
``SECRET_KEY`` and turns on HTTPS-only cookies, HSTS and the proxy header.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from xaibench.harmony.paths import harmony_home


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


HOME = harmony_home()
PACKAGE_DIR = Path(__file__).resolve().parent


def _secret_key() -> str:
    key = os.environ.get("SECRET_KEY")
    if key:
        return key
    path = HOME / "secret_key"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        HOME.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(50)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(key)
        return key


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "xaibench.harmony.apps.HarmonyConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "xaibench.harmony.urls"
WSGI_APPLICATION = "xaibench.harmony.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

SQLITE_OPTIONS = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}


def _databases() -> dict:
    url = os.environ.get("DATABASE_URL")
    if url:
        import dj_database_url

        # persistent connections, checked before each request reuses one: after a database restart
        # the next request reconnects instead of failing
        db = dj_database_url.parse(url, conn_max_age=int(os.environ.get("CONN_MAX_AGE", "60")), conn_health_checks=True)
    else:
        HOME.mkdir(parents=True, exist_ok=True)
        db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(HOME / "db.sqlite3")}
    if db["ENGINE"] == "django.db.backends.sqlite3":
        db["CONN_MAX_AGE"] = 0
        db["OPTIONS"] = {**SQLITE_OPTIONS, **db.get("OPTIONS", {})}
    return {"default": db}


DATABASES = _databases()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Failed-login counters (xaibench.harmony.throttle) are rows of the study database (LoginAttempt),
# counted atomically, so every worker and machine sees the same counts.
HARMONY_LOGIN_FAILURES_PER_ACCOUNT = int(os.environ.get("HARMONY_LOGIN_FAILURES_PER_ACCOUNT", "5"))
HARMONY_LOGIN_FAILURES_PER_CLIENT = int(os.environ.get("HARMONY_LOGIN_FAILURES_PER_CLIENT", "20"))
HARMONY_LOGIN_WINDOW_S = int(os.environ.get("HARMONY_LOGIN_WINDOW_S", "900"))
# Peers whose X-Forwarded-For names the client (the reverse proxy); none when serving directly.
HARMONY_TRUSTED_PROXIES = env_list("HARMONY_TRUSTED_PROXIES", [])

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# e.g. a fast hasher for throw-away test databases: HARMONY_PASSWORD_HASHERS=django.contrib.auth.hashers.MD5PasswordHasher
_hashers = env_list("HARMONY_PASSWORD_HASHERS", [])
if _hashers:
    PASSWORD_HASHERS = _hashers

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = os.environ.get("HARMONY_STATIC_ROOT") or str(HOME / "static")
MEDIA_ROOT = str(HOME / "media")
# Media are never served by URL: the study's pictures go through an authenticated view.
MEDIA_URL = "/media-not-served/"

LOGIN_URL = "harmony:login"
LOGIN_REDIRECT_URL = "harmony:home"
LOGOUT_REDIRECT_URL = "harmony:login"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("HARMONY_LOG_LEVEL", "WARNING")},
}
