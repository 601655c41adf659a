"""The accounting thread's statements, run on the database driver's own cursor.

Admission and settlement are a handful of short statements per request. Django's cursor
and ``atomic()`` add placeholder rewriting, execute wrappers, error wrapping per statement,
and autocommit switched off and on around each transaction: a large share of the CPU of
an admission or a settlement, which the driver's cursor of the same Django connection, in
one explicit transaction, does without (``python -m bench.accounting_micro``;
bench/results/accounting-micro-2026-12-04.md). Driver errors still become Django's (``IntegrityError``,
``OperationalError``, ...), once per transaction rather than per statement.

``transaction()`` and ``autocommit()`` run on the calling thread's Django connection: the
accounting thread's (accounts.books), which is otherwise in autocommit mode, so they never
nest inside an ``atomic()``. Statements are written with ``%s`` placeholders, as for
Django's cursors, and are the same on SQLite (3.35+) and PostgreSQL but where
``postgresql()`` says otherwise.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache, lru_cache

from django.db import DEFAULT_DB_ALIAS, connections


@cache
def _sqlite() -> bool:
    return connections[DEFAULT_DB_ALIAS].vendor == "sqlite"


def postgresql() -> bool:
    """Whether the database is PostgreSQL (else SQLite): the one place where the two
    differ is how admission takes its locks (accounts.limits)."""
    return not _sqlite()


@lru_cache(maxsize=512)  # statements with IN lists come in many lengths
def _driver_style(statement: str) -> str:
    # sqlite3 takes "?"; psycopg takes "%s" as written. No statement here holds a literal %.
    return statement.replace("%s", "?") if _sqlite() else statement


@cache
def _datetime_adapter():
    # Django's own conversion (SQLite: naive UTC text; PostgreSQL: the datetime as is). It
    # reads only settings, never the connection, so one thread's copy serves every thread.
    return connections[DEFAULT_DB_ALIAS].ops.adapt_datetimefield_value


def at(moment):
    """A datetime as the driver takes it for a DateTimeField's column."""
    return _datetime_adapter()(moment)


@cache
def _datetime_converter():
    wrapper = connections[DEFAULT_DB_ALIAS]  # as above: reads settings, not the connection
    return lambda text: wrapper.ops.convert_datetimefield_value(text, None, wrapper)


def datetime_from_text(text: str):
    """A DateTimeField's value as SQLite returns it (text), as an aware datetime."""
    return _datetime_converter()(text)


def run(cursor, statement: str, params=()) -> list:
    """Execute one statement; its rows, if it returns any."""
    cursor.execute(_driver_style(statement), params)
    return cursor.fetchall() if cursor.description else []


def insert(cursor, statement: str, params=()) -> int:
    """Execute one single-row INSERT; the new row's id. On SQLite the id is the cursor's
    ``lastrowid`` rather than a RETURNING clause: one step of the statement instead of
    two, and each step gives up the GIL and must win it back from the event loop."""
    if _sqlite():
        cursor.execute(_driver_style(statement), params)
        return cursor.lastrowid
    cursor.execute(statement + " RETURNING id", params)
    return cursor.fetchone()[0]


def insert_rows(cursor, table_and_columns: str, width: int, rows: list[list], chunk: int = 64) -> None:
    """Insert rows of ``width`` values into ``table_and_columns`` ("t (a, b)") with one
    multi-row INSERT per ``chunk`` rows: one step (SQLite) or round trip (PostgreSQL) for
    all of them, where executemany takes one per row."""
    one = f"({', '.join(['%s'] * width)})"
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        cursor.execute(_driver_style(f"INSERT INTO {table_and_columns} VALUES {', '.join([one] * len(part))}"),
                       [value for row in part for value in row])


@contextmanager
def transaction():
    """A driver cursor inside one transaction: committed if the block ends normally,
    rolled back if it raises. On SQLite the transaction is IMMEDIATE (it takes the write
    lock at BEGIN, as Django's ``transaction_mode`` does for the rest of the project)."""
    with _driver_cursor() as (raw, cursor):
        cursor.execute("BEGIN IMMEDIATE" if _sqlite() else "BEGIN")
        try:
            yield cursor
            # Deferred constraints (SQLite's foreign keys) fail here, leaving the
            # transaction open: it is rolled back like any other failure.
            cursor.execute("COMMIT")
        except BaseException:
            raw.rollback()
            raise


@contextmanager
def autocommit():
    """A driver cursor outside any transaction: each statement commits on its own."""
    with _driver_cursor() as (_, cursor):
        yield cursor


@contextmanager
def _driver_cursor():
    db = connections[DEFAULT_DB_ALIAS]  # this thread's connection
    db.ensure_connection()
    if not db.autocommit or db.in_atomic_block:
        raise RuntimeError("accounts.hotsql runs on a connection in autocommit mode, outside atomic()")
    raw = db.connection
    # Driver exceptions become Django's, and mark the connection for a health check.
    with db.wrap_database_errors:
        cursor = raw.cursor()
        try:
            yield raw, cursor
        finally:
            cursor.close()
