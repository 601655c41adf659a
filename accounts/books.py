"""The one thread that does this process's accounting in the database.

Why one thread: Django runs each request's sync work in a thread of its own, so key
lookups, admissions and usage records done there would open a database connection per
request (on SQLite: a file open, pragmas and a journal each time) and make the requests
of one process contend for the write lock with each other. Measured with the demo model
at 8 streams, that cost 44% of the tokens per second. Here one thread keeps one
connection, runs the calls it is given in order, and settles finished requests in
batches: every settlement queued while it was busy goes into one transaction.

Callers on the event loop ``await books.call(fn, *args)``; a response closing hands its
settlement over with ``books.settle_later(...)`` and does not wait.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import defaultdict

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from accounts.limits import add_to_counter, minute_of, per_minute_limited, release_leases
from accounts.models import APIKey, UsageCounter, UsageRecord, period_start

log = logging.getLogger("llmserver.books")


class Books:
    def __init__(self):
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._start_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="accounting", daemon=True)
                    self._thread.start()

    async def call(self, fn, *args):
        """Run ``fn(*args)`` on the accounting thread; return its result or raise its error."""
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._inbox.put(("call", (fn, args, loop, future)))
        return await future

    def settle_later(self, lease_id, record, tokens: int) -> None:
        """Queue a finished request's settlement (lease back, counters, usage record)."""
        self._ensure_thread()
        self._inbox.put(("settle", (lease_id, record, tokens)))

    def _run(self) -> None:
        while True:
            batch = [self._inbox.get()]
            while True:
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            settlements = [item for kind, item in batch if kind == "settle"]
            if settlements:
                # First: leases given back before anyone queued behind them is admitted.
                self._guarded(settle_batch, settlements)
            for kind, item in batch:
                if kind == "call":
                    self._answer(*item)

    def _answer(self, fn, args, loop, future) -> None:
        try:
            result = fn(*args)
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


def _set_result(future, result) -> None:
    if not future.cancelled():
        future.set_result(result)


def _set_exception(future, exc) -> None:
    if not future.cancelled():
        future.set_exception(exc)


def _reset_connection_if_broken(exc: BaseException) -> None:
    if isinstance(exc, DatabaseError) and connection.connection is not None and not connection.is_usable():
        connection.close()  # reconnect on the next call


def settle_batch(settlements: list) -> None:
    """Give back the leases, add the tokens to their keys' counters and write the usage
    records of several finished requests: a few statements, one transaction."""
    release_leases([lease_id for lease_id, _, _ in settlements if lease_id is not None])
    records = [record for _, record, _ in settlements if record is not None]
    if not records:
        return
    try:
        _write_usage(settlements)
    except IntegrityError:
        # A key deleted while its requests were in flight (its counters went with it):
        # keep those requests' records, without the key, rather than lose the batch.
        keys = {record.api_key_id for record in records if record.api_key_id is not None}
        gone = keys - set(APIKey.objects.filter(pk__in=keys).values_list("pk", flat=True))
        if not gone:
            raise
        for record in records:
            if record.api_key_id in gone:
                record.api_key = None
        _write_usage(settlements)


def _write_usage(settlements: list) -> None:
    records = [record for _, record, _ in settlements if record is not None]
    now = timezone.now()
    tokens_by_bucket: dict[tuple, int] = defaultdict(int)
    for _, record, tokens in settlements:
        key = record.api_key if record is not None else None
        if key is not None and tokens:
            if per_minute_limited(key):
                tokens_by_bucket[(key.pk, UsageCounter.Kind.MINUTE, minute_of(now))] += tokens
            tokens_by_bucket[(key.pk, UsageCounter.Kind.PERIOD, period_start(key.budget_period, now))] += tokens
    with transaction.atomic(), connection.cursor() as cursor:
        # In one order everywhere, so that two processes settling never deadlock.
        for (key_pk, kind, starts_at), tokens in sorted(tokens_by_bucket.items()):
            add_to_counter(cursor, key_pk, kind, starts_at, tokens=tokens)
        # executemany, not bulk_create: the ORM's cost per record was most of settling's.
        cursor.executemany(_INSERT_RECORD, [_record_row(record) for record in records])


_RECORD_COLUMNS = [
    "api_key_id", "key_prefix", "model", "endpoint", "request_id", "streamed", "prompt_tokens",
    "completion_tokens", "cached_tokens", "finish_reason", "status_code", "error_code", "started_at",
    "duration_ms", "time_to_first_token_ms", "client_disconnected", "user",
]
_INSERT_RECORD = (
    f"INSERT INTO {UsageRecord._meta.db_table} ({', '.join(connection.ops.quote_name(c) for c in _RECORD_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_RECORD_COLUMNS))})"
)


def _record_row(record) -> list:
    row = [getattr(record, column) for column in _RECORD_COLUMNS]
    row[_RECORD_COLUMNS.index("started_at")] = connection.ops.adapt_datetimefield_value(record.started_at)
    return row


books = Books()
