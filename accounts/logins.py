"""Logins (the chat page's and the admin's) refused for a while after too many failures.

Failed logins are counted per username and per client address (accounts.throttle), in a
window of ``LOGIN_FAILURES_WINDOW_MINUTES`` from the first. Past
``LOGIN_FAILURES_PER_USERNAME`` for a username, or ``LOGIN_FAILURES_PER_ADDRESS`` from an
address, the form refuses that username, or everyone at that address, until the window is
over, the right password included: a password can be guessed, and a guesser told when a
guess is right would not be slowed down at all. Per username, so that guesses spread
over many addresses still stop; per address, so that one address cannot try a few
passwords on every user. A successful login clears its username's count.

Each failure and each refusal is logged at WARNING (the username and the address, never
the password).
"""

from __future__ import annotations

import logging
import math

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from accounts.throttle import FailureCounter

log = logging.getLogger("llmserver.logins")


def _window_seconds() -> float:
    return settings.LOGIN_FAILURES_WINDOW_MINUTES * 60


by_username = FailureCounter("login-username", _window_seconds)
by_address = FailureCounter("login-address", _window_seconds)


def locked_message(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return f"Too many failed attempts to log in. Try again in {minutes} minute{'s' if minutes > 1 else ''}."


class ThrottledLogin:
    """For Django's AuthenticationForm and its subclasses: refuses a username or an
    address that failed too often, and counts the failures."""

    def clean(self):
        username, password = self.cleaned_data.get("username"), self.cleaned_data.get("password")
        if not (username and password):
            return super().clean()  # a field is missing: nothing is tried, nothing counted
        # Usernames are compared as the database may (case-insensitively), so that
        # "Admin" is not a fresh count for "admin".
        name = username.casefold()
        address = (self.request.META.get("REMOTE_ADDR") if self.request is not None else None) or "unknown"
        wait = self._locked_for(name, address)
        if wait:
            log.warning("login refused for %r from %s: too many failed attempts (for %d s more)",
                        username, address, math.ceil(wait))
            raise forms.ValidationError(locked_message(wait), code="too_many_attempts")
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            # No user: the password was wrong. (With one, it was right but the user may
            # not log in here: inactive, or not staff on the admin's form.)
            if self.user_cache is None:
                self._count_failure(username, name, address)
            raise
        by_username.clear(name)
        return cleaned

    @staticmethod
    def _locked_for(name: str, address: str) -> float:
        """Seconds until ``name`` and ``address`` may try again; 0 if they may now."""
        waits = []
        for counter, limit, key in ((by_username, settings.LOGIN_FAILURES_PER_USERNAME, name),
                                    (by_address, settings.LOGIN_FAILURES_PER_ADDRESS, address)):
            failures, remaining = counter.current(key)
            if failures >= limit:
                waits.append(remaining)
        return max(waits, default=0.0)

    @staticmethod
    def _count_failure(username: str, name: str, address: str) -> None:
        for_username, _ = by_username.add(name)
        for_address, _ = by_address.add(address)
        log.warning("failed login for %r from %s (%d of %d allowed for the username, %d of %d for the address, "
                    "within %d minutes)", username, address, for_username, settings.LOGIN_FAILURES_PER_USERNAME,
                    for_address, settings.LOGIN_FAILURES_PER_ADDRESS, settings.LOGIN_FAILURES_WINDOW_MINUTES)


class LoginForm(ThrottledLogin, AuthenticationForm):
    """The chat page's login form (chat.views.login_page)."""


class AdminLoginForm(ThrottledLogin, AdminAuthenticationForm):
    """The admin's login form (admin.site.login_form, set in llmserver/urls.py)."""
