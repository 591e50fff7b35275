"""Production settings: HTTPS behind a reverse proxy. ``manage.py check --deploy`` is clean.

Requires ``SECRET_KEY`` and ``ALLOWED_HOSTS`` in the environment. The proxy terminates TLS and
sets ``X-Forwarded-Proto: https``.
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

from xaibench.harmony.settings import *  # noqa: F403
from xaibench.harmony.settings import env_bool, env_list

if not os.environ.get("SECRET_KEY"):
    raise ImproperlyConfigured("set SECRET_KEY in the environment (50+ random characters)")
if not os.environ.get("ALLOWED_HOSTS"):
    raise ImproperlyConfigured("set ALLOWED_HOSTS in the environment (comma-separated host names)")

DEBUG = False
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [f"https://{h}" for h in ALLOWED_HOSTS if h[0] not in ".*"])
HARMONY_TRUSTED_PROXIES = env_list("HARMONY_TRUSTED_PROXIES", ["127.0.0.1", "::1"])
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
USE_X_FORWARDED_HOST = env_bool("USE_X_FORWARDED_HOST", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
