"""The wall clock behind the server's time windows.

Per-minute limits, budget periods, lease expiry and renewal, key expiry and the
guessing throttle all ask this module what time it is (:func:`now`, :func:`seconds`)
instead of asking ``datetime`` or ``time``, so that a test sets the time
(:func:`frozen`) instead of sleeping to the edge of a minute. Durations (how long a
request took, a flush's deadline) are measured with ``time.monotonic`` and
``time.perf_counter``; they are no window's business and this clock does not touch them.

Outside tests the clock is the system's: :func:`now` is ``timezone.now()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

_lock = threading.Lock()
_frozen: float | None = None  # seconds since the epoch while a test holds the clock


def seconds() -> float:
    """Seconds since the epoch, as ``time.time()``."""
    frozen = _frozen
    return time.time() if frozen is None else frozen


def now() -> datetime:
    """The current time, aware, in UTC (as ``django.utils.timezone.now()`` with USE_TZ)."""
    return datetime.fromtimestamp(seconds(), tz=timezone.utc)


class FrozenClock:
    """The clock a test holds: it stays where it is put until moved."""

    def now(self) -> datetime:
        return now()

    def set(self, moment: datetime) -> None:
        global _frozen
        with _lock:
            _frozen = moment.timestamp()

    def advance(self, by: float | timedelta) -> datetime:
        global _frozen
        step = by.total_seconds() if isinstance(by, timedelta) else by
        with _lock:
            _frozen = (_frozen if _frozen is not None else time.time()) + step
        return now()


@contextmanager
def frozen(at: datetime | None = None) -> Iterator[FrozenClock]:
    """Hold the clock at ``at`` (now, by default) for the block; it moves only by
    :meth:`FrozenClock.advance` or :meth:`FrozenClock.set`."""
    global _frozen
    clock = FrozenClock()
    clock.set(at or now())
    try:
        yield clock
    finally:
        with _lock:
            _frozen = None
