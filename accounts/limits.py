"""Admission: the limits, held in the database so that every server process sharing it
enforces one limit. Everything here runs on the accounting thread (accounts.books), in
transactions on its connection (accounts.hotsql), the same on SQLite and PostgreSQL but
for how the locks are taken.

``admit_many()`` admits the requests that arrived together in one transaction that
locks their keys' rows (and the deployment's ``global`` row): for each it checks the
token budget, the cost budget, tokens and requests per minute, the key's concurrency and
the deployment's concurrency, in that order, and only if all pass does it consume anything
(a request counted this minute, a lease). A request refused by one limit therefore
consumes no other. It first gives back the leases of this process's finished requests
still waiting to be settled, and counts their tokens (accounts.books).

A lease is a request in flight. Its process renews the leases of its requests still in
flight every ``LEASE_RENEW_SECONDS`` (``renew_leases``, run by the accounting thread);
if the process dies (or loses track of a lease), they expire after at most
``LEASE_TTL_SECONDS`` and stop counting, so nothing can lock a key out for longer than
that.

Lock order, the same everywhere so that PostgreSQL never sees a deadlock: the keys' rows,
then the ``global`` row, then counter rows, keys and counters in key id order. (Before
them, admission and settling delete this process's own leases, rows no other process
locks.) Settling (accounts.settlement) takes no key or global lock. The key row is
locked FOR NO KEY UPDATE: a plain FOR UPDATE would also block the KEY SHARE lock that
inserting a usage record or counter takes on it through its foreign key, and a request
settling (holding a counter row) and one being admitted (holding the key row, wanting
that counter) would wait on each other. SQLite needs none of these: its IMMEDIATE
transactions take the whole database's write lock at BEGIN.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import NamedTuple

from django.conf import settings
from django.db import DatabaseError

from accounts import hotsql
from accounts.models import (LAST_USED_RESOLUTION, APIKey, Lease, LimitScope, UsageCounter, period_end,
                             period_start)
from accounts.prices import prices_of, record_cost, units
from accounts.records import Admission, Settlement
from accounts.refusals import UnknownKey, check_model_access, invalid_key, key_refusal, too_many
from llmserver import clock
from llmserver.errors import APIError, Code

log = logging.getLogger("llmserver.limits")

# This server process, as the holder of its leases.
PROCESS_ID = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

# Leases of this process's requests still in flight: the ones to renew. Only the
# accounting thread touches it (admit, release_leases, renew_leases all run there).
_held: set[int] = set()


def minute_of(now):
    return now.replace(second=0, microsecond=0)


# The hot path is plain SQL on the driver's cursor (accounts.hotsql): through the ORM,
# an admission and a settlement cost several times the queries' own cost in query
# building alone (bench/README.md, "accounting").
_KEY = APIKey._meta.db_table
_LEASE = Lease._meta.db_table
_COUNTER = UsageCounter._meta.db_table
_SCOPE = LimitScope._meta.db_table

_sql = hotsql.run
_at = hotsql.at


def _counter_values(cursor, key_id: int, kind: str, starts_at) -> tuple[int, int, int]:
    """(requests, tokens, cost units) of a key's counter, zeros if it has none yet."""
    rows = _sql(cursor, f"SELECT requests, tokens, cost_units FROM {_COUNTER} "
                        f"WHERE api_key_id = %s AND kind = %s AND starts_at = %s",
                [key_id, kind, _at(starts_at)])
    return rows[0] if rows else (0, 0, 0)


def add_to_counter(cursor, key_id: int, kind: str, starts_at, *, requests: int = 0, tokens: int = 0,
                   cost_units: int = 0) -> None:
    _sql(cursor, f"INSERT INTO {_COUNTER} (api_key_id, kind, starts_at, requests, tokens, cost_units) "
                 f"VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (api_key_id, kind, starts_at) DO UPDATE SET "
                 f"requests = {_COUNTER}.requests + excluded.requests, tokens = {_COUNTER}.tokens + excluded.tokens, "
                 f"cost_units = {_COUNTER}.cost_units + excluded.cost_units",
         [key_id, kind, _at(starts_at), requests, tokens, cost_units])


class _KeyRow(NamedTuple):
    """A key's row as admission reads it: what may have changed since the key was looked
    up, and whether its last_used_at is due to be written."""

    hashed_secret: str
    is_active: bool
    expires_at: object  # a datetime (SQLite: its text)
    allowed_models: object  # a list (SQLite: its JSON text)
    max_concurrency: int | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    token_budget: int | None
    cost_budget: object  # a Decimal (SQLite: a float or its text)
    budget_period: str
    stale: bool


_KEY_STATE = _KeyRow._fields[:-1]  # the key's columns among them


def admit(key: APIKey | None, request_id: str, model_names: tuple[str, ...] = (), *,
          settling: Sequence[Settlement] = ()) -> int:
    """Check the key and every limit and take a lease; return the lease id, or raise
    APIError (401 for a key no longer usable, 403 for a model it may not use, 429).
    ``key`` is None when API keys are not required (only the deployment limit applies).
    See :func:`admit_many`."""
    result = admit_many([Admission(key, request_id, model_names)], settling=settling)[0]
    if isinstance(result, BaseException):
        raise result
    return result


def admit_many(admissions: Sequence[Admission], *, settling: Sequence[Settlement] = ()) -> list:
    """Admit requests that arrived together, in one transaction; for each, its lease id or
    the APIError refusing it (a refusal writes nothing, so the others are unaffected).

    The keys' rows are read here, in the transaction, whatever the caller knew of them:
    a revocation, a new secret or a limit changed in any process counts from the next
    request on. The fresh values are written into each ``key``.

    ``settling``: this process's finished requests not yet settled (accounts.books).
    Their leases are given back first, in this transaction (and set to None in them once
    it commits), and their tokens count against the keys' limits as if already settled.

    One transaction for several: its BEGIN and COMMIT are a large part of an admission's
    cost, and under load requests arrive in bursts (the turns of one engine batch finish
    in the same step, and their clients send their next requests at once). If the
    database fails the group (a key deleted meanwhile, say), each is admitted alone.
    """
    try:
        return _admit_together(admissions, settling)
    except DatabaseError:
        if len(admissions) == 1:
            raise
    results = []
    for admission in admissions:
        try:
            results.append(_admit_together([admission], settling)[0])
        except DatabaseError as exc:
            results.append(exc)
    return results


def _admit_together(admissions: Sequence[Admission], settling: Sequence[Settlement]) -> list:
    now = clock.now()
    _ensure_global_scope()
    releasing = [s.lease_id for s in settling if s.lease_id is not None]
    with hotsql.transaction() as cursor:
        if releasing:
            _sql(cursor, _delete_leases(len(releasing)), releasing)
        # Every key's row first, in id order (PostgreSQL: locked FOR NO KEY UPDATE), then
        # the global row: the lock order everywhere (see the module docstring).
        keys, in_flight = _read_keys(cursor, [a.key for a in admissions if a.key is not None], now)
        # in_flight: the deployment's requests in flight, counted once (PostgreSQL: below,
        # under the global row's lock; SQLite: with the keys, in the same statement).
        touched: set[int] = set()  # keys whose last_used_at this transaction wrote
        results = [None] * len(admissions)
        for index in sorted(range(len(admissions)), key=lambda i: _key_id(admissions[i].key)):  # counters in key order
            key, request_id, model_names = admissions[index]
            try:
                if key is not None:
                    _refresh_key(key, keys.get(key.pk))
                    if model_names:  # the model's id and aliases
                        check_model_access(key, *model_names)
                    _check_key_limits(cursor, key, now, settling)
                if in_flight is None:
                    in_flight = _deployment_in_flight(cursor, now)
                _check_deployment_limit(in_flight)
            except APIError as refusal:
                results[index] = refusal
                continue
            # Admitted: only now anything is written, so a refusal above wrote nothing.
            if key is not None:
                if keys[key.pk].stale and key.pk not in touched:
                    _sql(cursor, f"UPDATE {_KEY} SET last_used_at = %s WHERE id = %s", [_at(now), key.pk])
                    touched.add(key.pk)
                if per_minute_limited(key):
                    add_to_counter(cursor, key.pk, UsageCounter.Kind.MINUTE, minute_of(now), requests=1)
            expires = now + timedelta(seconds=settings.LEASE_TTL_SECONDS)
            lease_id = hotsql.insert(cursor, f"INSERT INTO {_LEASE} (api_key_id, request_id, holder, acquired_at, "
                                             f"expires_at) VALUES (%s, %s, %s, %s, %s)",
                                     [key.pk if key else None, request_id, PROCESS_ID, _at(now), _at(expires)])
            in_flight += 1
            results[index] = lease_id
    _held.difference_update(releasing)
    for s in settling:
        s.lease_id = None
    _held.update(r for r in results if not isinstance(r, BaseException))
    return results


def _key_id(key: APIKey | None) -> int:
    return key.pk if key is not None else 0


def _read_keys(cursor, keys: list[APIKey], now) -> tuple[dict[int, _KeyRow], int | None]:
    """The current state of the keys' rows by id; and on SQLite the deployment's requests
    in flight (None on PostgreSQL, where they are counted after the global row is
    locked).

    One statement for both on SQLite: each statement step gives up the GIL, and winning
    it back from a busy event loop costs that loop a forced switch."""
    if not keys:
        return {}, None
    ids = sorted({key.pk for key in keys})
    postgres = hotsql.postgresql()
    lock = " FOR NO KEY UPDATE" if postgres else ""
    count = "NULL" if postgres else f"(SELECT COUNT(*) FROM {_LEASE} WHERE expires_at > %s)"
    rows = _sql(cursor, f"SELECT {count}, id, {', '.join(_KEY_STATE)}, "
                        f"(last_used_at IS NULL OR last_used_at < %s) FROM {_KEY} "
                        f"WHERE id IN ({', '.join(['%s'] * len(ids))}) ORDER BY id{lock}",
                [*([] if postgres else [_at(now)]), _at(now - LAST_USED_RESOLUTION), *ids])
    in_flight = rows[0][0] if rows else None
    return {row[1]: _KeyRow(*row[2:-1], stale=bool(row[-1])) for row in rows}, in_flight


def per_minute_limited(key: APIKey) -> bool:
    """Whether the key's requests and tokens are counted per minute: only while it has a
    per-minute limit (the counters serve nothing else), so a limit set in the middle of
    a minute counts from that moment."""
    return key.requests_per_minute is not None or key.tokens_per_minute is not None


def _refresh_key(key: APIKey, row: _KeyRow | None) -> None:
    """Write the row's current state into ``key``; raise 401 if the key is gone, has a
    new secret, or is revoked or expired."""
    if row is None:
        raise UnknownKey(f"The API key {key.prefix}… no longer exists.")
    if row.hashed_secret != key.hashed_secret:
        raise invalid_key(f"The API key {key.prefix}… has been replaced by a new secret.")
    expires_at, allowed_models = row.expires_at, row.allowed_models
    if isinstance(expires_at, str):  # SQLite
        expires_at = hotsql.datetime_from_text(expires_at)
    if isinstance(allowed_models, str):
        allowed_models = json.loads(allowed_models)
    key.is_active = bool(row.is_active)
    key.expires_at = expires_at
    key.allowed_models = allowed_models
    key.max_concurrency = row.max_concurrency
    key.requests_per_minute = row.requests_per_minute
    key.tokens_per_minute = row.tokens_per_minute
    key.token_budget = row.token_budget
    key.cost_budget = None if row.cost_budget is None else _decimal(row.cost_budget)
    key.budget_period = row.budget_period
    refusal = key_refusal(key)
    if refusal is not None:
        raise refusal


def _decimal(value) -> Decimal:
    """A DecimalField's value as the driver gives it (SQLite: a float or text)."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _unsettled_tokens(settling: Sequence[Settlement], key_id: int, bucket, now) -> int:
    """Tokens of ``key_id``'s finished requests not yet on its counters, in the bucket
    (a function of a moment: its minute, its budget period) that ``now`` is in."""
    current = bucket(now)
    return sum(s.tokens for s in settling if s.key is not None and s.key.pk == key_id and bucket(s.finished_at) == current)


def _unsettled_cost_units(settling: Sequence[Settlement], key_id: int, period: str, now) -> int:
    """The cost, in units, of ``key_id``'s finished requests not yet on its counters, in
    the budget period ``now`` is in, at the prices they will be settled at."""
    current = period_start(period, now)
    records = [s.record for s in settling if s.key is not None and s.key.pk == key_id and s.record is not None
               and period_start(period, s.finished_at) == current]
    if not records:
        return 0
    prices = prices_of({record.model for record in records})
    return sum(units(record_cost(prices, record)) for record in records)


def _check_key_limits(cursor, key: APIKey, now, settling: Sequence[Settlement]) -> None:
    """Raise 429 if ``key`` (its limits as just read) may not start a request ``now``:
    token budget, cost budget, tokens per minute, requests per minute, concurrency, in
    that order."""
    budget, cost_budget, period = key.token_budget, key.cost_budget, key.budget_period
    tpm, rpm = key.tokens_per_minute, key.requests_per_minute
    if budget is not None or cost_budget is not None:
        _, used, cost_used = _counter_values(cursor, key.pk, UsageCounter.Kind.PERIOD, period_start(period, now))
        until_next_period = (period_end(period, now) - now).total_seconds()
        if budget is not None:
            if settling:
                used += _unsettled_tokens(settling, key.pk, lambda moment: period_start(period, moment), now)
            if used >= budget:
                raise too_many(f"This API key has used its budget of {budget} tokens per {period}.",
                               "token_budget_exceeded", until_next_period)
        if cost_budget is not None:
            if settling:
                cost_used += _unsettled_cost_units(settling, key.pk, period, now)
            if cost_used >= units(cost_budget):
                raise too_many(f"This API key has used its budget of {cost_budget.normalize():f} "
                               f"{settings.COST_CURRENCY} per {period}.", Code.COST_BUDGET_EXCEEDED, until_next_period)
    minute_start = minute_of(now)
    to_next_minute = 60 - (now - minute_start).total_seconds()
    if tpm is not None or rpm is not None:
        requests, tokens, _ = _counter_values(cursor, key.pk, UsageCounter.Kind.MINUTE, minute_start)
        if settling and tpm is not None:
            tokens += _unsettled_tokens(settling, key.pk, minute_of, now)
        if tpm is not None and tokens >= tpm:
            raise too_many(f"This API key has reached its limit of {tpm} tokens per minute.",
                           "tokens_per_minute_limit", to_next_minute)
        if rpm is not None and requests >= rpm:
            raise too_many(f"This API key has reached its limit of {rpm} requests per minute.",
                           "requests_per_minute_limit", to_next_minute)
    if key.max_concurrency is not None:
        in_flight = _sql(cursor, f"SELECT COUNT(*) FROM {_LEASE} WHERE api_key_id = %s AND expires_at > %s",
                         [key.pk, _at(now)])[0][0]
        if in_flight >= key.max_concurrency:
            raise too_many(f"This API key already has {in_flight} requests in flight, its limit.",
                           "key_concurrency_limit", 1)


_global_scope_exists = False


def _ensure_global_scope() -> None:
    global _global_scope_exists
    if not _global_scope_exists:
        LimitScope.objects.get_or_create(name="global")
        _global_scope_exists = True


def _deployment_in_flight(cursor, now) -> int:
    if hotsql.postgresql():
        # Lock the one "global" row: admissions across the deployment take turns here,
        # for the time of a count and an insert. (SQLite's IMMEDIATE transactions
        # already take turns for the whole database.)
        _sql(cursor, f"SELECT id FROM {_SCOPE} WHERE name = 'global' FOR UPDATE")
    return _sql(cursor, f"SELECT COUNT(*) FROM {_LEASE} WHERE expires_at > %s", [_at(now)])[0][0]


def _check_deployment_limit(in_flight: int) -> None:
    if in_flight >= settings.MAX_CONCURRENT_REQUESTS:
        raise too_many(
            f"The server is at its limit of {settings.MAX_CONCURRENT_REQUESTS} concurrent requests; retry shortly.",
            "server_concurrency_limit", 1,
        )


def release_leases(cursor, lease_ids: list[int]) -> None:
    """Give back places in flight, in the caller's transaction."""
    if lease_ids:
        _sql(cursor, _delete_leases(len(lease_ids)), lease_ids)
        _held.difference_update(lease_ids)


def _delete_leases(count: int) -> str:
    return f"DELETE FROM {_LEASE} WHERE id IN ({', '.join(['%s'] * count)})"


# --- lease renewal ---------------------------------------------------------------------

def holds_leases() -> bool:
    """Whether this process has requests in flight (leases to renew)."""
    return bool(_held)


def renew_leases() -> None:
    """Push back the expiry of this process's leases in flight, and delete long-expired
    ones of any process (the accounting thread runs it every LEASE_RENEW_SECONDS while
    this process holds leases)."""
    now = clock.now()
    if _held:
        Lease.objects.filter(pk__in=list(_held)).update(expires_at=now + timedelta(seconds=settings.LEASE_TTL_SECONDS))
    # Leases of dead processes stopped counting at their expiry; clear them away.
    Lease.objects.filter(expires_at__lt=now - timedelta(minutes=10)).delete()
