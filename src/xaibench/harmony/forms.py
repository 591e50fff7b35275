"""Login forms with failed-login throttling (``xaibench.harmony.throttle``), for the annotators'
login page and the admin's."""

from __future__ import annotations

import math

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from xaibench.harmony import throttle


class ThrottledLoginMixin:
    """Counts the attempt first (atomically) and refuses it before the password is checked when a
    limit is reached; clears the account's counter on success. ``throttled`` tells the view to
    answer 429."""

    throttled = False

    def clean(self):
        username = self.cleaned_data.get("username")
        if not username:
            return super().clean()  # the required-field error; no password is checked
        wait = throttle.reserve(self.request, username)
        if wait is not None:
            self.throttled = True
            minutes = math.ceil(wait / 60)
            raise ValidationError(
                f"Too many failed logins for this account or from this address. Try again in {minutes} minute(s).",
                code="throttled",
            )
        cleaned = super().clean()  # a wrong password raises: its attempt stays counted
        throttle.record_success(self.request, username)
        return cleaned


class LoginForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass
