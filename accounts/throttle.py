"""Counting failed attempts (wrong API keys, failed logins) per client address or
username, to refuse whoever keeps guessing.

A :class:`FailureCounter` counts one name's failures in a window that starts at its first
failure and lasts ``window_seconds``; once the window is over the count starts again.
The counts live in Django's cache (settings.CACHES): Redis when ``REDIS_URL`` is set, so
that every server process shares them; otherwise each process's own memory, and a
deployment of N processes allows up to N times the limit. A cache that fails is logged
and counts nothing: guessing is then unthrottled, but nobody is refused for it.

``clock`` (seconds; ``llmserver.clock.seconds`` by default) is what decides windows;
tests give their own or hold that one. The cache's own expiry, in real time, only clears
away windows long over.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable

from django.core.cache import caches

from llmserver.clock import seconds

log = logging.getLogger("llmserver.throttle")


class FailureCounter:
    def __init__(self, kind: str, window_seconds: Callable[[], float], *, clock: Callable[[], float] = seconds,
                 cache: str = "default"):
        self.kind = kind  # a prefix of its cache keys: "api-key-address", "login-username", ...
        self.window_seconds = window_seconds  # read at each use, so that settings can change it
        self.clock = clock
        self._cache = cache

    def add(self, name: str) -> tuple[int, float]:
        """Count one failure of ``name``; return the failures of its current window (this
        one included) and the seconds until that window ends ((0, 0.0) if the cache failed)."""
        now, window = self.clock(), self.window_seconds()
        cache = caches[self._cache]
        since_key, count_key = self._keys(name)
        try:
            since = cache.get(since_key)
            if since is None or now >= since + window:
                since = now
                cache.set(since_key, since, self._lifetime(window))
                cache.set(count_key, 0, self._lifetime(window))
            try:
                count = cache.incr(count_key)  # atomic, across processes too on Redis
            except ValueError:  # cleared meanwhile: this failure starts the count again
                cache.set(count_key, 1, self._lifetime(window))
                count = 1
        except Exception as error:  # noqa: BLE001 - an unreachable cache must not refuse anyone
            log.warning("could not count a failure (%s): %r", self.kind, error)
            return 0, 0.0
        return count, since + window - now

    def current(self, name: str) -> tuple[int, float]:
        """The failures of ``name``'s current window and the seconds until it ends; (0,
        0.0) if it has none."""
        now, window = self.clock(), self.window_seconds()
        cache = caches[self._cache]
        since_key, count_key = self._keys(name)
        try:
            since, count = cache.get(since_key), cache.get(count_key)
        except Exception as error:  # noqa: BLE001
            log.warning("could not read the failures (%s): %r", self.kind, error)
            return 0, 0.0
        if since is None or count is None or now >= since + window:
            return 0, 0.0
        return count, since + window - now

    def clear(self, name: str) -> None:
        try:
            caches[self._cache].delete_many(self._keys(name))
        except Exception as error:  # noqa: BLE001
            log.warning("could not clear the failures (%s): %r", self.kind, error)

    def _keys(self, name: str) -> tuple[str, str]:
        # Hashed: a cache key must be short and plain, and a username can be anything.
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"failures:{self.kind}:{digest}:since", f"failures:{self.kind}:{digest}:count"

    @staticmethod
    def _lifetime(window: float) -> int:
        return math.ceil(window) + 60

