"""Failed-login throttling per account and per client, with counters in Django's cache.

A failed login adds one to two counters: the account's (the submitted user name) and the
client's (its address, see ``client_address``). While either counter is at its limit, every login
that names that account or comes from that client is refused before the password is checked, with
a message saying when to try again; the counters expire ``HARMONY_LOGIN_WINDOW_S`` seconds after
their first failure. A successful login clears the account's counter (not the client's).

Settings: ``HARMONY_LOGIN_FAILURES_PER_ACCOUNT`` (default 5), ``HARMONY_LOGIN_FAILURES_PER_CLIENT``
(default 20), ``HARMONY_LOGIN_WINDOW_S`` (default 900), ``HARMONY_TRUSTED_PROXIES`` (addresses whose
``X-Forwarded-For`` is believed). The cache is the database cache of the settings, shared by every
worker and machine that shares the database. Counting is get-then-set: under a burst of concurrent
failures a few extra attempts may pass, which does not change the order of magnitude.
"""

from __future__ import annotations

import hashlib
import math
import time

from django.conf import settings
from django.core.cache import cache

DEFAULTS = {
    "HARMONY_LOGIN_FAILURES_PER_ACCOUNT": 5,
    "HARMONY_LOGIN_FAILURES_PER_CLIENT": 20,
    "HARMONY_LOGIN_WINDOW_S": 900,
}


def _setting(name: str) -> int:
    return int(getattr(settings, name, DEFAULTS[name]))


def client_address(request) -> str:
    """The client's address: ``REMOTE_ADDR``, or, when that is a trusted proxy, the right-most
    ``X-Forwarded-For`` entry that is not a trusted proxy (proxies append the peer they saw)."""
    remote = request.META.get("REMOTE_ADDR", "") or "unknown"
    trusted = set(getattr(settings, "HARMONY_TRUSTED_PROXIES", []))
    if remote not in trusted:
        return remote
    hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop[:64]
    return remote


def _keys(request, username: str) -> list[tuple[str, int]]:
    def key(kind: str, value: str) -> str:
        return f"harmony-login-{kind}-{hashlib.sha256(value.encode('utf-8', 'replace')).hexdigest()}"

    return [
        (key("account", username), _setting("HARMONY_LOGIN_FAILURES_PER_ACCOUNT")),
        (key("client", client_address(request)), _setting("HARMONY_LOGIN_FAILURES_PER_CLIENT")),
    ]


def retry_after(request, username: str) -> int | None:
    """Seconds until a login naming ``username`` from this client is accepted again; None if now."""
    waits, now = [], time.time()
    for key, limit in _keys(request, username):
        count, expires = cache.get(key) or (0, now)
        if count >= limit and expires > now:
            waits.append(max(1, math.ceil(expires - now)))
    return max(waits) if waits else None


def record_failure(request, username: str) -> None:
    window = _setting("HARMONY_LOGIN_WINDOW_S")
    now = time.time()
    for key, _ in _keys(request, username):
        count, expires = cache.get(key) or (0, now)
        if expires <= now:  # a new window starts with this failure
            count, expires = 0, now + window
        cache.set(key, (count + 1, expires), timeout=max(1, math.ceil(expires - now)))


def record_success(username: str, request) -> None:
    cache.delete(_keys(request, username)[0][0])
