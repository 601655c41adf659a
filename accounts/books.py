"""The one thread that does this process's accounting in the database.

Why one thread: Django runs each request's sync work in a thread of its own, so key
lookups, admissions and usage records done there would open a database connection per
request (on SQLite: a file open, pragmas and a journal each time) and make the requests
of one process contend for the write lock with each other (bench/README.md, "What it has
measured so far", first rows). Here one thread keeps one connection and runs the calls it
is given in order.

Finished requests are settled in batches. A settlement waits at most
``USAGE_WRITE_DELAY_MS`` (or until ``SETTLE_BATCH`` are waiting) and then goes, with
every other one waiting, into one transaction: lease back, counters, usage records
(a fraction of one by one's CPU per request: ``python -m bench.accounting_micro``,
bench/results/accounting-micro-2026-12-04.md). A settlement does not wake the thread (it is taken when the
thread next wakes), unless the thread sleeps with none waiting. Waiting changes nothing
this process decides: the next admission gives back the leases of the waiting
settlements in its own transaction and counts their tokens against the key's limits
(``accounts.limits.admit``). Other processes see a finished request's lease gone and its
tokens counted at most ``USAGE_WRITE_DELAY_MS`` later; at exit, what waits is written
(``flush``).

Every admission and settlement runs here, the same on SQLite and PostgreSQL: admissions
that arrive together are decided in one transaction (``accounts.limits.admit_many``),
settlements are written in batches (``accounts.settlement.settle_batch``). The thread
also renews this process's leases every ``LEASE_RENEW_SECONDS`` while it holds any
(``accounts.limits.renew_leases``).

Callers on the event loop ``await books.admit(...)`` or ``await books.call(fn, *args)``;
a response closing hands its settlement over with ``books.settle_later(...)`` and does
not wait.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import NamedTuple

from django.conf import settings
from django.db import DatabaseError, connection

from accounts.limits import admit_many, holds_leases, renew_leases
from accounts.models import APIKey
from accounts.records import Admission, Settlement, UsageRow
from accounts.settlement import settle_batch
from llmserver import clock

log = logging.getLogger("llmserver.books")

SETTLE_BATCH = 64


class _Call(NamedTuple):
    """``fn(*args)`` to run on the accounting thread, its answer for ``future``."""

    fn: Callable
    args: tuple
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class _Admit(NamedTuple):
    """A request to admit, its lease id (or refusal) for ``future``."""

    admission: Admission
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


_WAKE = None  # a message that only wakes the thread (to take the finished requests)
# The inbox holds _Call, _Admit, _WAKE, and threading.Event (a flush, set once written).


class Books:
    def __init__(self):
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        # Finished requests, appended from any thread without waking the accounting
        # thread (it takes them when it next wakes), unless it sleeps with none waiting.
        self._finished: deque[Settlement] = deque()
        self._idle = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._start_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="accounting", daemon=True)
                    self._thread.start()
                    atexit.register(self.flush)

    async def call(self, fn, *args):
        """Run ``fn(*args)`` on the accounting thread; return its result or raise its error."""
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._inbox.put(_Call(fn, args, loop, future))
        return await future

    def admit(self, key: APIKey | None, request_id: str, model_names: tuple[str, ...] = ()) -> asyncio.Future:
        """Admission (``accounts.limits.admit_many``) on the accounting thread, together
        with the other admissions waiting there, and with the settlements waiting: their
        leases given back and their tokens counted in its transaction. Returns the future
        of the lease id, to be awaited on this event loop.

        A future, not a coroutine: its caller awaits it directly, so that the answer
        reaches the request in the loop iteration after the accounting thread posts it
        (a task and a shield around it would each add an iteration, milliseconds when
        the loop is busy streaming). If the future is cancelled (the client left), a lease
        granted after all is given back."""
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._inbox.put(_Admit(Admission(key, request_id, model_names), loop, future))
        return future

    def settle_later(self, lease_id: int | None, key: APIKey | None, record: UsageRow | None, tokens: int) -> None:
        """Queue a finished request's settlement (from any thread; never waits)."""
        self._ensure_thread()
        self._finished.append(Settlement(lease_id, key, record, tokens, clock.now()))
        if self._idle:
            self._inbox.put(_WAKE)

    def flush(self, timeout: float = 10.0) -> bool:
        """Write every settlement queued so far now, and wait for it (from any thread but
        the accounting thread). False if that took longer than ``timeout``."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._inbox.put(done)
        return done.wait(timeout)

    def _run(self) -> None:
        waiting: list[Settlement] = []
        deadline = 0.0  # when the oldest of them is to be written
        renewed = time.monotonic()  # when this process's leases were last renewed
        while True:
            # LEASE_RENEW_SECONDS read at each wake-up: a new value counts from the next.
            renewal = renewed + settings.LEASE_RENEW_SECONDS
            if time.monotonic() >= renewal:
                if holds_leases():  # an idle process has nothing to renew, and no query to make
                    self._guarded_renewal()
                renewed = time.monotonic()
                renewal = renewed + settings.LEASE_RENEW_SECONDS
            until = min(deadline, renewal) if waiting else renewal
            if not waiting:
                # Idle first, then look: a settlement appended meanwhile either is seen
                # here or sees _idle and wakes this thread.
                self._idle = True
            timeout = 0.0 if self._finished and not waiting else max(0.0, until - time.monotonic())
            try:
                batch = [self._inbox.get(timeout=timeout)]
            except queue.Empty:
                batch = []
            self._idle = False
            while True:
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            while self._finished:
                if not waiting:
                    deadline = time.monotonic() + settings.USAGE_WRITE_DELAY_MS / 1000
                waiting.append(self._finished.popleft())
            flushes = [message for message in batch if isinstance(message, threading.Event)]
            if waiting and (flushes or len(waiting) >= SETTLE_BATCH or time.monotonic() >= deadline):
                self._guarded(settle_batch, waiting)
                waiting = []
            admissions = [message for message in batch if isinstance(message, _Admit)]
            if admissions:
                self._admit(admissions, waiting)
            for message in batch:
                if isinstance(message, _Call):
                    self._answer(message)
            for done in flushes:
                done.set()

    def _admit(self, admissions: list[_Admit], settling: list[Settlement]) -> None:
        """Admit the requests that arrived together in one transaction; answer each."""
        try:
            results = admit_many([message.admission for message in admissions], settling=settling)
        except BaseException as exc:
            results = [exc] * len(admissions)
        by_loop: dict = defaultdict(list)
        for message, result in zip(admissions, results):
            if isinstance(result, BaseException):
                _reset_connection_if_broken(result)
            by_loop[message.loop].append((message.future, result))
        for loop, answers in by_loop.items():  # one wake-up of each event loop
            loop.call_soon_threadsafe(_set_admissions, answers)

    def _answer(self, call: _Call) -> None:
        try:
            result = call.fn(*call.args)
        except BaseException as exc:
            _reset_connection_if_broken(exc)
            call.loop.call_soon_threadsafe(_set_exception, call.future, exc)
        else:
            call.loop.call_soon_threadsafe(_set_result, call.future, result)

    def _guarded_renewal(self) -> None:
        try:
            renew_leases()
        except Exception as exc:  # a database hiccup must not end renewal for good
            _reset_connection_if_broken(exc)
            log.exception("renewing leases failed; retrying")

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:
            _reset_connection_if_broken(exc)
            log.exception("accounting failed for %d settlement(s)", len(args[0]))


def _set_admissions(answers: list) -> None:
    for future, result in answers:
        if future.cancelled():
            if not isinstance(result, BaseException):  # its request is gone: the lease back
                books.settle_later(result, None, None, 0)
        elif isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def _set_result(future, result) -> None:
    if not future.cancelled():
        future.set_result(result)


def _set_exception(future, exc) -> None:
    if not future.cancelled():
        future.set_exception(exc)


def _reset_connection_if_broken(exc: BaseException) -> None:
    if isinstance(exc, DatabaseError) and connection.connection is not None and not connection.is_usable():
        connection.close()  # reconnect on the next call


books = Books()
