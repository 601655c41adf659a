"""The one thread that does this process's accounting in the database.

Why one thread: Django runs each request's sync work in a thread of its own, so key
lookups, admissions and usage records done there would open a database connection per
request (on SQLite: a file open, pragmas and a journal each time) and make the requests
of one process contend for the write lock with each other. Measured with the demo model
at 8 streams, that cost 44% of the tokens per second. Here one thread keeps one
connection and runs the calls it is given in order.

Finished requests are settled in batches. A settlement waits at most
``USAGE_WRITE_DELAY_MS`` (or until ``SETTLE_BATCH`` are waiting) and then goes, with
every other one waiting, into one transaction: lease back, counters, usage records
(16 at once cost ~0.04 ms a request, one by one 0.19–0.30 ms; ``python -m
bench.accounting_micro``). A settlement does not wake the thread (it is taken when the
thread next wakes), unless the thread sleeps with none waiting. Waiting changes nothing
this process decides: the next admission gives back the leases of the waiting
settlements in its own transaction and counts their tokens against the key's limits
(``accounts.limits.admit``). Other processes see a finished request's lease gone and its
tokens counted at most ``USAGE_WRITE_DELAY_MS`` later; at exit, what waits is written
(``flush``).

On SQLite most admissions never reach this thread: accounts.inline decides them on the
event loop when the write lock is free at once (the hop here cost several times the
transaction under load); the others, and everything on PostgreSQL, come here.

Callers on the event loop ``await books.admit(...)`` or ``await books.call(fn, *args)``;
a response closing hands its settlement over with ``books.settle_later(...)`` and does
not wait.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import logging
import queue
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, connection

from accounts import hotsql
from accounts.inline import inline
from accounts.limits import add_to_counter, admit_many, minute_of, per_minute_limited, release_leases
from accounts.models import APIKey, UsageCounter, UsageRecord, period_start
from llmserver import clock

log = logging.getLogger("llmserver.books")

SETTLE_BATCH = 64


@dataclass(slots=True)
class Settlement:
    """A finished request, to be settled: its lease (None once given back), its key (None
    without one), its usage record (UsageRecord's columns by name; None for a lease
    alone) and the tokens to count on the key's counters, in the buckets of
    ``finished_at``."""

    lease_id: int | None
    key: APIKey | None
    record: dict | None
    tokens: int
    finished_at: datetime.datetime


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
        return await self._post("call", fn, args)

    def admit(self, key: APIKey | None, request_id: str, model_names: tuple[str, ...] = ()) -> asyncio.Future:
        """Admission (``accounts.limits.admit_many``) on the accounting thread, together
        with the other admissions waiting there, and with the settlements waiting: their
        leases given back and their tokens counted in its transaction. Returns the future
        of the lease id, to be awaited on this event loop.

        A future, not a coroutine: its caller awaits it directly, so that the answer
        reaches the request in the loop iteration after the accounting thread posts it
        (a task and a shield around it would each add an iteration, milliseconds when
        the loop is busy streaming). If the future is cancelled (the client left), a lease
        granted after all is given back.

        On SQLite most admissions are decided right here, on the event loop, without
        waking the thread (accounts.inline: only when the write lock is free at once);
        the rest go to the thread as described."""
        lease_id = inline.admit(key, request_id, model_names)
        if lease_id is not None:
            future = asyncio.get_running_loop().create_future()
            future.set_result(lease_id)
            return future
        return self._post("admit", None, (key, request_id, model_names))

    def _post(self, kind: str, fn, args) -> asyncio.Future:
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._inbox.put((kind, (fn, args, loop, future)))
        return future

    def settle_later(self, lease_id: int | None, key: APIKey | None, record: dict | None, tokens: int) -> None:
        """Queue a finished request's settlement (from any thread; never waits)."""
        self._ensure_thread()
        self._finished.append(Settlement(lease_id, key, record, tokens, clock.now()))
        if self._idle:
            self._inbox.put(("wake", None))

    def flush(self, timeout: float = 10.0) -> bool:
        """Write every settlement queued so far now, and wait for it (from any thread but
        the accounting thread). False if that took longer than ``timeout``."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._inbox.put(("flush", done))
        return done.wait(timeout)

    def _run(self) -> None:
        waiting: list[Settlement] = []
        deadline = 0.0  # when the oldest of them is to be written
        while True:
            if waiting:
                timeout = max(0.0, deadline - time.monotonic())
            else:
                # Idle first, then look: a settlement appended meanwhile either is seen
                # here or sees _idle and wakes this thread.
                self._idle = True
                timeout = 0.0 if self._finished else None
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
            flushing = any(kind == "flush" for kind, _ in batch)
            if waiting and (flushing or len(waiting) >= SETTLE_BATCH or time.monotonic() >= deadline):
                self._guarded(settle_batch, waiting)
                waiting = []
            admissions = [item for kind, item in batch if kind == "admit"]
            if admissions:
                self._admit(admissions, waiting)
            for kind, item in batch:
                if kind == "call":
                    self._answer(*item)
                elif kind == "flush":
                    item.set()

    def _admit(self, admissions: list, settling: list[Settlement]) -> None:
        """Admit the requests that arrived together in one transaction; answer each."""
        try:
            results = admit_many([args for _, args, _, _ in admissions], settling=settling)
        except BaseException as exc:
            results = [exc] * len(admissions)
        by_loop: dict = defaultdict(list)
        for (_, _, loop, future), result in zip(admissions, results):
            if isinstance(result, BaseException):
                _reset_connection_if_broken(result)
            by_loop[loop].append((future, result))
        for loop, answers in by_loop.items():  # one wake-up of each event loop
            loop.call_soon_threadsafe(_set_admissions, answers)

    def _answer(self, fn, args, loop, future, **kwargs) -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            _reset_connection_if_broken(exc)
            loop.call_soon_threadsafe(_set_exception, future, exc)
        else:
            loop.call_soon_threadsafe(_set_result, future, result)

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


def settle_batch(settlements: list[Settlement]) -> None:
    """Give back the leases, add the tokens to their keys' counters and write the usage
    records of several finished requests: a few statements, one transaction."""
    lease_ids = [s.lease_id for s in settlements if s.lease_id is not None]
    try:
        with hotsql.transaction() as cursor:
            release_leases(cursor, lease_ids)
            _write_usage(cursor, settlements)
        return
    except (IntegrityError, DataError):
        _release(lease_ids)  # a row the database refuses: see below
    except BaseException:
        _release(lease_ids)  # the leases are given back even if the records fail
        raise
    # The usual cause: a key deleted while its requests were in flight (its counters went
    # with it). Keep those requests' records, without the key, rather than lose the batch.
    _forget_deleted_keys(settlements)
    try:
        with hotsql.transaction() as cursor:
            _write_usage(cursor, settlements)
        return
    except (IntegrityError, DataError):
        if len(settlements) == 1:
            raise
    # Something in one of them the database will not take: each on its own, so that only
    # that one is lost (and logged).
    for settlement in settlements:
        try:
            with hotsql.transaction() as cursor:
                _write_usage(cursor, [settlement])
        except (IntegrityError, DataError):
            log.exception("could not record request %s", (settlement.record or {}).get("request_id"))


def _release(lease_ids: list[int]) -> None:
    with hotsql.autocommit() as cursor:
        release_leases(cursor, lease_ids)


def _forget_deleted_keys(settlements: list[Settlement]) -> None:
    keys = {s.key.pk for s in settlements if s.key is not None}
    gone = keys - set(APIKey.objects.filter(pk__in=keys).values_list("pk", flat=True))
    for s in settlements:
        if s.key is not None and s.key.pk in gone:
            s.key = None
            if s.record is not None:
                s.record["api_key_id"] = None


def _write_usage(cursor, settlements: list[Settlement]) -> None:
    tokens_by_bucket: dict[tuple, int] = defaultdict(int)
    for s in settlements:
        if s.key is not None and s.tokens:
            if per_minute_limited(s.key):
                tokens_by_bucket[(s.key.pk, UsageCounter.Kind.MINUTE, minute_of(s.finished_at))] += s.tokens
            tokens_by_bucket[(s.key.pk, UsageCounter.Kind.PERIOD, period_start(s.key.budget_period, s.finished_at))] += s.tokens
    # In one order everywhere, so that two processes settling never deadlock.
    for (key_pk, kind, starts_at), tokens in sorted(tokens_by_bucket.items()):
        add_to_counter(cursor, key_pk, kind, starts_at, tokens=tokens)
    rows = [_record_row(s.record) for s in settlements if s.record is not None]
    if rows:
        # One multi-row INSERT, not bulk_create (the ORM's cost per record was most of
        # settling's) nor executemany (a statement step per record, each a GIL handoff).
        hotsql.insert_rows(cursor, _RECORD_TABLE, len(_RECORD_COLUMNS), rows)


_RECORD_COLUMNS = [
    "api_key_id", "key_prefix", "model", "endpoint", "request_id", "streamed", "prompt_tokens",
    "completion_tokens", "cached_tokens", "finish_reason", "status_code", "error_code", "started_at",
    "duration_ms", "time_to_first_token_ms", "client_disconnected", "user",
]
_RECORD_TABLE = f"{UsageRecord._meta.db_table} ({', '.join(connection.ops.quote_name(c) for c in _RECORD_COLUMNS)})"


def _record_row(record: dict) -> list:
    return [hotsql.at(record[column]) if column == "started_at" else record[column] for column in _RECORD_COLUMNS]


books = Books()
