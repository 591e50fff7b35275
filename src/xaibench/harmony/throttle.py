"""Failed-login throttling per account and per client, with counters in Django's cache.

A failed login adds one to two counters: the account's (the submitted user name) and the
client's (its address, see ``client_address``). While either counter is at its limit, every login
that names that account or comes from that client is refused before the password is checked, with
a message saying when to try again; the counters expire ``HARMONY_LOGIN_WINDOW_S`` seconds after
their first failure. A successful login clears the account's counter (not the client's).

Settings: ``HARMONY_LOGIN_FAILURES_PER_ACCOUNT`` (default 5), ``HARMONY_LOGIN_FAILURES_PER_CLIENT``
(default 20), ``HARMONY_LOGIN_WINDOW_S`` (default 900), ``HARMONY_TRUSTED_PROXIES`` (addresses whose
``X-Forwarded-For`` is believed).

The counters are rows of ``LoginAttempt`` in the study's database, shared by every worker and machine.
Counting is atomic: an attempt first *reserves* a place in both counters (one conditional UPDATE each,
inside a transaction that holds the row: a row lock on PostgreSQL, the write lock on SQLite, whose
transactions begin IMMEDIATE), and only an attempt that got a place under both limits has its
password checked. A burst of concurrent wrong passwords therefore gets exactly the limit through. A
successful login gives its place back (clears the account's counter, returns the client's place).
"""

from __future__ import annotations

import hashlib
import math
import time

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

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
        return f"{kind}-{hashlib.sha256(value.encode('utf-8', 'replace')).hexdigest()}"

    return [
        (key("account", username), _setting("HARMONY_LOGIN_FAILURES_PER_ACCOUNT")),
        (key("client", client_address(request)), _setting("HARMONY_LOGIN_FAILURES_PER_CLIENT")),
    ]


def _increment(key: str, now: float, window: int) -> tuple[int, float]:
    """Atomically add one attempt to ``key``'s counter; (count after it, end of its window)."""
    from xaibench.harmony.models import LoginAttempt

    rows = LoginAttempt.objects.filter(key=key)
    for _ in range(5):  # a concurrent first attempt may create the row between our UPDATE and INSERT
        try:
            with transaction.atomic():
                if rows.filter(expires__gt=now).update(count=F("count") + 1):
                    return rows.values_list("count", "expires").get()
                if not rows.filter(expires__lte=now).update(count=1, expires=now + window):
                    LoginAttempt.objects.filter(expires__lte=now).delete()  # made-up names do not pile up
                    LoginAttempt.objects.create(key=key, count=1, expires=now + window)
                return 1, now + window
        except IntegrityError:
            continue
    raise RuntimeError(f"could not count a login attempt for {key} (the counter row kept changing)")


def reserve(request, username: str) -> int | None:
    """Count one login attempt naming ``username`` from this client. None: it may go on (check the
    password, then ``record_success`` if it was right); else the seconds until a login is accepted
    again (the account's or the client's limit was already reached)."""
    window, now = _setting("HARMONY_LOGIN_WINDOW_S"), time.time()
    waits = []
    for key, limit in _keys(request, username):
        count, expires = _increment(key, now, window)
        if count > limit:
            waits.append(max(1, math.ceil(expires - now)))
    return max(waits) if waits else None


def record_success(request, username: str) -> None:
    """A right password: clear the account's counter and give the client's place back."""
    from xaibench.harmony.models import LoginAttempt

    (account, _), (client, _) = _keys(request, username)
    LoginAttempt.objects.filter(key=account).delete()
    LoginAttempt.objects.filter(key=client, count__gt=0).update(count=F("count") - 1)
