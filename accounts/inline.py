"""Admission on the event loop itself, on SQLite, when the database's write lock is free.

Why: an admission is a short transaction (~0.08 ms of CPU alone, ``python -m
bench.accounting_micro``), but handed to the accounting thread under load it cost ~0.45
ms of that thread's CPU and as much again on the event loop: waking the thread, and the
GIL going back and forth between the two at every statement. On the demo model at 8
streams that was most of what keys cost (``bench/README.md``). SQLite is a library in
this process, not a server: a transaction here is memory and page-cache work, so it can
run on the loop, as long as it never waits.

It never waits: the connection's busy timeout is 0, so if another connection holds the
write lock (the accounting thread settling a batch, a page's session, another process)
``BEGIN IMMEDIATE`` fails at once and the request goes to the accounting thread as
before. Nor does it checkpoint the WAL (``wal_autocheckpoint=0`` on this connection: a
checkpoint syncs the file); the accounting thread's connection does that.

What it decides, and what it leaves to the accounting thread, is in
``accounts.limits.admit_inline``: it admits what every limit allows even counting this
process's finished requests not yet settled; anything it would refuse, and keys with
token limits, are decided on the thread, which knows those requests. PostgreSQL never
takes this path (a round trip over the network must not block the loop).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import contextmanager

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS

from accounts.limits import NotInline, admit_inline

log = logging.getLogger("llmserver.books")


class InlineAdmission:
    def __init__(self):
        self._connection: sqlite3.Connection | None = None
        self._thread: int | None = None  # the loop's thread, which alone uses the connection
        self.enabled = settings.DATABASES[DEFAULT_DB_ALIAS]["ENGINE"] == "django.db.backends.sqlite3"

    def admit(self, key, request_id: str, model_names: tuple[str, ...]) -> int | None:
        """The request's lease id, or None: decide it on the accounting thread."""
        if not self.enabled or key is None:
            return None
        try:
            return admit_inline(self._transaction, key, request_id, model_names)
        except NotInline:
            return None
        except sqlite3.OperationalError as error:
            if _busy(error):
                return None  # the write lock is taken: the thread waits for it instead
            self._give_up(error)
        except Exception as error:  # noqa: BLE001 - whatever it is, the thread path still works
            self._give_up(error)
        return None

    @contextmanager
    def _transaction(self):
        connection = self._connect()
        cursor = connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield cursor
            cursor.execute("COMMIT")
        except BaseException:
            connection.rollback()
            raise
        finally:
            cursor.close()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            name = settings.DATABASES[DEFAULT_DB_ALIAS]["NAME"]
            connection = sqlite3.connect(str(name), timeout=0, isolation_level=None, check_same_thread=True)
            connection.execute("PRAGMA foreign_keys = ON")  # as Django's connections have it
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("PRAGMA wal_autocheckpoint = 0")
            self._connection, self._thread = connection, threading.get_ident()
        elif self._thread != threading.get_ident():
            raise RuntimeError("inline admission runs on the event loop's thread only")
        return self._connection

    def _give_up(self, error: BaseException) -> None:
        """Not a busy lock but something this path does not expect: from now on every
        admission goes to the accounting thread, as without it."""
        self.enabled = False
        log.warning("inline admission turned off for this process, admitting on the accounting thread: %r", error)
        if self._connection is not None:
            try:
                self._connection.close()
            except sqlite3.Error:
                pass
            self._connection = None


def _busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(error) or "busy" in str(error)


inline = InlineAdmission()
