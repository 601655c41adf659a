"""Generation requests read but not yet in a model's queue, counted on the event loop for
the engine threads that decide whether a new batch waits for more of them."""

from __future__ import annotations

import asyncio


class Arrivals:
    """Generation requests this process has read and that have not yet taken their places
    in a model's queue (``EngineWorker.hold_places``): counted on the event loop from the
    moment Daphne has the whole request (``llmserver.handlers.CountArrivals``), read by
    the engine threads when they decide whether a new batch waits for more
    (``EngineWorker._gathering``).

    Counted any later, the engine saw only requests already past authentication,
    validation and tokenization, and the first of a burst began a batch alone while the
    others were still being read (bench/README.md, "Batches gathered")."""

    def __init__(self):
        self.count = 0

    def arrive(self):
        """Count one request; returns the function that stops counting it (idempotent):
        called when it takes its places, or when it ends without."""
        self.count += 1
        counted = True

        def placed() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.count -= 1

        return placed


arrivals = Arrivals()


async def after_pending_reads() -> None:
    """Return once the event loop has run the callbacks of the sockets that were readable
    when this was called (and so counted the requests they complete, :class:`Arrivals`).

    One ``sleep(0)`` is not enough: an iteration runs the callbacks already scheduled
    (this coroutine's wake-up among them) before those of the sockets it polled, so the
    second iteration is the first in which this coroutine resumes after them."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)
