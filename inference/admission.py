"""Admission without API keys (REQUIRE_API_KEY off, for benchmarks of the bare serving
path): at most MAX_CONCURRENT_REQUESTS generation requests in flight in this process.
With keys on, accounts.limits counts them across every process instead.

A slot is taken before generation starts and given back exactly once, when Django closes
the response (after its last byte or after the client left).
"""

from __future__ import annotations

import threading

from django.conf import settings

from llmserver.errors import ServerConcurrencyLimit


class ConcurrencyLimit:
    """At most ``settings.MAX_CONCURRENT_REQUESTS`` slots taken, the setting read at each
    admission (as accounts.limits reads it with keys on)."""

    def __init__(self):
        self.in_flight = 0
        # Taken on the event loop, given back from Django's sync thread (response close).
        self._lock = threading.Lock()

    def acquire(self) -> Slot:
        with self._lock:
            return self._acquire()

    def _acquire(self) -> Slot:
        limit = settings.MAX_CONCURRENT_REQUESTS
        if self.in_flight >= limit:
            raise ServerConcurrencyLimit(f"The server is at its limit of {limit} concurrent requests; retry shortly.",
                                         headers={"Retry-After": "1"})
        self.in_flight += 1
        return Slot(self)


class Slot:
    def __init__(self, limit: ConcurrencyLimit):
        self._limit: ConcurrencyLimit | None = limit

    def release(self) -> None:
        limit, self._limit = self._limit, None
        if limit is not None:
            with limit._lock:
                limit.in_flight -= 1
