"""Admission: at most MAX_CONCURRENT_REQUESTS generation requests in flight per process.

A slot is taken before generation starts and given back exactly once, when the response
is done: for a stream, when its last byte is sent or the client leaves (the response's
``close()``, which Django calls on every path).
"""

from __future__ import annotations

from llmserver.errors import APIError


class ConcurrencyLimit:
    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0

    def acquire(self) -> Slot:
        # Runs on the event loop only, so a plain counter is race-free.
        if self.in_flight >= self.limit:
            raise APIError(
                429,
                f"The server is at its limit of {self.limit} concurrent requests; retry shortly.",
                code="server_concurrency_limit",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1
        return Slot(self)


class Slot:
    def __init__(self, limit: ConcurrencyLimit):
        self._limit: ConcurrencyLimit | None = limit

    def release(self) -> None:
        if self._limit is not None:
            self._limit.in_flight -= 1
            self._limit = None
