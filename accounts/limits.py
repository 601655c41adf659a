"""Admission: the limits, held in the database so that every server process sharing it
enforces one limit. Everything here runs on the accounting thread (accounts.books), in
transactions on its connection (accounts.hotsql), the same on SQLite and PostgreSQL but
for how the locks are taken.

A request counts against its key, the key's owner (if an admin gave them UserLimits) and
the key's team (if it has one): its holders (``Holder``). ``admit_many()`` admits the
requests that arrived together, in arrival order, in one transaction that locks their
keys' rows, their owners' limits and teams where those limit requests in flight or per
minute (and the deployment's ``global`` row): for
each holder in that order it checks the token budget, the cost budget, tokens and
requests per minute and concurrency, then the deployment's concurrency, and only if all
pass does it consume anything (a request counted this minute for each holder with a
per-minute limit, a lease). A request refused by one limit therefore consumes no other,
and the tightest limit is the one that refuses. It first gives back the leases of this
process's finished requests still waiting to be settled, and counts their tokens
(accounts.books).

A lease is a request in flight. Its process renews the leases of its requests still in
flight every ``LEASE_RENEW_SECONDS`` (``renew_leases``, run by the accounting thread);
if the process dies (or loses track of a lease), they expire after at most
``LEASE_TTL_SECONDS`` and stop counting, so nothing can lock a key out for longer than
that.

Lock order, the same everywhere so that PostgreSQL never sees a deadlock: the keys' rows,
then the owners' UserLimits rows, then the teams' rows (each in id order), then the
``global`` row, then counter rows, in the order of (holder column, holder id, kind,
start): admission writes its counters last, in that order, as settling does (before
them, admission and settling delete this process's own leases, rows no other process
locks). Settling (accounts.settlement) takes no key, user, team or global lock. Those
rows are locked FOR NO KEY UPDATE: a plain FOR UPDATE would also block the KEY SHARE
lock that inserting a usage record or counter takes on them through its foreign key, and
a request settling (holding a counter row) and one being admitted (holding the key row,
wanting that counter) would wait on each other. (Leases refer to users and teams without
a constraint, so inserting one locks nothing.) SQLite needs none of these: its IMMEDIATE
transactions take the whole database's write lock at BEGIN.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import NamedTuple

from django.conf import settings
from django.db import DatabaseError

from accounts import hotsql
from accounts.models import (LAST_USED_RESOLUTION, APIKey, Lease, Limits, LimitScope, Team, UsageCounter,
                             UserLimits, period_end, period_start)
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
_USER_LIMITS = UserLimits._meta.db_table
_TEAM = Team._meta.db_table

_sql = hotsql.run
_at = hotsql.at


class Holder(NamedTuple):
    """One that a request counts against, with its limits (None: no such limit): the key,
    the key's owner (if they have UserLimits) and the key's team (if it has one). Each
    has counters (UsageCounter) and leases (Lease) in its ``column``."""

    column: str  # "api_key_id", "user_id" or "team_id"
    id: int
    name: str  # the team's name (for a refusal's message)
    max_concurrency: int | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    token_budget: int | None
    cost_budget: Decimal | None
    budget_period: str

    @classmethod
    def of_key(cls, key: APIKey) -> Holder:
        return cls("api_key_id", key.pk, key.name, key.max_concurrency, key.requests_per_minute,
                   key.tokens_per_minute, key.token_budget, key.cost_budget, key.budget_period)

    @property
    def per_minute_limited(self) -> bool:
        """Whether its requests and tokens are counted per minute: only while it has a
        per-minute limit (the counters serve nothing else), so a limit set in the middle
        of a minute counts from that moment."""
        return self.requests_per_minute is not None or self.tokens_per_minute is not None

    def holds(self, key: APIKey) -> bool:
        """Whether a request with ``key`` counts against this holder."""
        return getattr(key, _KEY_ATTRIBUTE[self.column]) == self.id


# Where a key names each kind of holder.
_KEY_ATTRIBUTE = {"api_key_id": "pk", "user_id": "owner_id", "team_id": "team_id"}
_MINUTE = timedelta(minutes=1)


# What each holder's refusals say and their codes, by holder column: (who, the codes of
# token budget, cost budget, tokens per minute, requests per minute, concurrency).
_KEY_REFUSALS = ("This API key", Code.TOKEN_BUDGET_EXCEEDED, Code.COST_BUDGET_EXCEEDED, Code.TOKENS_PER_MINUTE_LIMIT,
                 Code.REQUESTS_PER_MINUTE_LIMIT, Code.KEY_CONCURRENCY_LIMIT)
_USER_REFUSALS = ("Your account", Code.USER_TOKEN_BUDGET_EXCEEDED, Code.USER_COST_BUDGET_EXCEEDED,
                  Code.USER_TOKENS_PER_MINUTE_LIMIT, Code.USER_REQUESTS_PER_MINUTE_LIMIT, Code.USER_CONCURRENCY_LIMIT)
_TEAM_REFUSALS = ("Your team", Code.TEAM_TOKEN_BUDGET_EXCEEDED, Code.TEAM_COST_BUDGET_EXCEEDED,
                  Code.TEAM_TOKENS_PER_MINUTE_LIMIT, Code.TEAM_REQUESTS_PER_MINUTE_LIMIT, Code.TEAM_CONCURRENCY_LIMIT)
_REFUSALS = {"api_key_id": _KEY_REFUSALS, "user_id": _USER_REFUSALS, "team_id": _TEAM_REFUSALS}


def _counters_of(cursor, holders: Sequence[Holder], now) -> dict[tuple, tuple[int, int, int]]:
    """(requests, tokens, cost units) of the counters the limits of ``holders`` read
    ``now`` (a budget's period, a per-minute limit's minute) by (column, holder id,
    kind), zeros for a counter not made yet: one statement for all of them."""
    wanted = []
    for holder in holders:
        if holder.token_budget is not None or holder.cost_budget is not None:
            wanted.append((holder.column, holder.id, UsageCounter.Kind.PERIOD, period_start(holder.budget_period, now)))
        if holder.per_minute_limited:
            wanted.append((holder.column, holder.id, UsageCounter.Kind.MINUTE, minute_of(now)))
    if not wanted:
        return {}
    rows = _sql(cursor, f"SELECT api_key_id, user_id, team_id, kind, requests, tokens, cost_units FROM {_COUNTER} "
                        f"WHERE {' OR '.join(f'({column} = %s AND kind = %s AND starts_at = %s)' for column, *_ in wanted)}",
                [value for _, holder_id, kind, starts_at in wanted for value in (holder_id, kind, _at(starts_at))])
    found = {}
    for key_id, user_id, team_id, kind, *values in rows:
        holder = ("api_key_id", key_id) if key_id is not None else ("user_id", user_id) if user_id is not None \
            else ("team_id", team_id)
        found[(*holder, kind)] = tuple(values)
    return {(column, holder_id, kind): found.get((column, holder_id, kind), (0, 0, 0))
            for column, holder_id, kind, _ in wanted}


def add_to_counter(cursor, column: str, holder_id: int, kind: str, starts_at, *, requests: int = 0, tokens: int = 0,
                   cost_units: int = 0) -> None:
    """Add to the counter of the holder ``holder_id`` in ``column`` ("api_key_id",
    "user_id", "team_id"), creating it if needed."""
    _sql(cursor, f"INSERT INTO {_COUNTER} ({column}, kind, starts_at, requests, tokens, cost_units) "
                 f"VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT ({column}, kind, starts_at) "
                 f"WHERE {column} IS NOT NULL DO UPDATE SET "
                 f"requests = {_COUNTER}.requests + excluded.requests, tokens = {_COUNTER}.tokens + excluded.tokens, "
                 f"cost_units = {_COUNTER}.cost_units + excluded.cost_units",
         [holder_id, kind, _at(starts_at), requests, tokens, cost_units])


class _KeyRow(NamedTuple):
    """A key's row as admission reads it: what may have changed since the key was looked
    up, whether its last_used_at is due to be written, and those it counts against
    besides itself (its owner's limits, its team)."""

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
    owner_id: int | None
    team_id: int | None
    stale: bool
    shared: tuple[Holder, ...]


_KEY_STATE = _KeyRow._fields[:-2]  # the key's columns among them
_LIMIT_COLUMNS = Limits.LIMITS  # a user's or a team's, in Holder's order


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
        # its owner's limits and its team, then the global row: the lock order everywhere
        # (see the module docstring).
        keys, in_flight = _read_keys(cursor, [a.key for a in admissions if a.key is not None], now)
        # in_flight: the deployment's requests in flight, counted once (PostgreSQL: below,
        # under the global row's lock; SQLite: with the keys, in the same statement).
        touched: set[int] = set()  # keys whose last_used_at this transaction wrote
        # Requests counted this minute by this transaction, by counter; written at the
        # end, in the order settling writes counters in (accounts.settlement).
        counted: dict[tuple, int] = defaultdict(int)
        results = [None] * len(admissions)
        for index, (key, request_id, model_names) in enumerate(admissions):  # in arrival order
            holders: tuple[Holder, ...] = ()
            try:
                if key is not None:
                    _refresh_key(key, keys.get(key.pk))
                    if model_names:  # the model's id and aliases
                        check_model_access(key, *model_names)
                    holders = (Holder.of_key(key), *key.shared_holders)
                    counters = _counters_of(cursor, holders, now)
                    for holder in holders:  # the key's limits, then its owner's, then its team's
                        _check_limits(cursor, holder, now, settling, counted, counters)
                if in_flight is None:
                    in_flight = _deployment_in_flight(cursor, now)
                _check_deployment_limit(in_flight)
            except APIError as refusal:
                results[index] = refusal
                continue
            # Admitted: only now anything is written, so a refusal above wrote nothing.
            if key is not None and keys[key.pk].stale and key.pk not in touched:
                _sql(cursor, f"UPDATE {_KEY} SET last_used_at = %s WHERE id = %s", [_at(now), key.pk])
                touched.add(key.pk)
            for holder in holders:
                if holder.per_minute_limited:
                    counted[(holder.column, holder.id, UsageCounter.Kind.MINUTE, minute_of(now))] += 1
            expires = now + timedelta(seconds=settings.LEASE_TTL_SECONDS)
            lease_id = hotsql.insert(cursor, f"INSERT INTO {_LEASE} (api_key_id, user_id, team_id, request_id, holder, "
                                             f"acquired_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                                     [key.pk if key else None, key.owner_id if key else None,
                                      key.team_id if key else None, request_id, PROCESS_ID, _at(now), _at(expires)])
            in_flight += 1
            results[index] = lease_id
        for (column, holder_id, kind, starts_at), requests in sorted(counted.items()):
            add_to_counter(cursor, column, holder_id, kind, starts_at, requests=requests)
    _held.difference_update(releasing)
    for s in settling:
        s.lease_id = None
    _held.update(r for r in results if not isinstance(r, BaseException))
    return results


def _read_keys(cursor, keys: list[APIKey], now) -> tuple[dict[int, _KeyRow], int | None]:
    """The current state of the keys' rows by id, with the limits of their owners and
    teams; and on SQLite the deployment's requests in flight (None on PostgreSQL, where
    they are counted after the global row is locked).

    One statement for all on SQLite: each statement step gives up the GIL, and winning
    it back from a busy event loop costs that loop a forced switch. On PostgreSQL the
    owners' limits and the teams are then locked, in that order, each in id order."""
    if not keys:
        return {}, None
    ids = sorted({key.pk for key in keys})
    postgres = hotsql.postgresql()
    lock = " FOR NO KEY UPDATE OF k" if postgres else ""
    count = "NULL" if postgres else f"(SELECT COUNT(*) FROM {_LEASE} WHERE expires_at > %s)"
    limits = ", ".join(f"{table}.{column}" for table in ("u", "t") for column in _LIMIT_COLUMNS)
    rows = _sql(cursor, f"SELECT {count}, k.id, {', '.join('k.' + c for c in _KEY_STATE)}, "
                        f"(k.last_used_at IS NULL OR k.last_used_at < %s), u.id, t.name, {limits} "
                        f"FROM {_KEY} k LEFT JOIN {_USER_LIMITS} u ON u.user_id = k.owner_id "
                        f"LEFT JOIN {_TEAM} t ON t.id = k.team_id "
                        f"WHERE k.id IN ({', '.join(['%s'] * len(ids))}) ORDER BY k.id{lock}",
                [*([] if postgres else [_at(now)]), _at(now - LAST_USED_RESOLUTION), *ids])
    in_flight = rows[0][0] if rows else None
    width, limits_width = len(_KEY_STATE), len(_LIMIT_COLUMNS)
    found = {}
    for row in rows:
        state, stale, user_limits_id, team_name = row[2:2 + width], row[2 + width], row[3 + width], row[4 + width]
        user_limits = row[5 + width:5 + width + limits_width]
        team_limits = row[5 + width + limits_width:]
        owner_id, team_id = state[-2], state[-1]
        shared = []
        if user_limits_id is not None:
            shared.append(Holder("user_id", owner_id, "", *_limit_values(user_limits)))
        if team_id is not None:
            shared.append(Holder("team_id", team_id, team_name, *_limit_values(team_limits)))
        found[row[1]] = _KeyRow(*state, stale=bool(stale), shared=tuple(shared))
    if postgres:
        # Only the rows of holders whose counts admission decides on (requests in flight
        # or this minute, counted as it admits); budgets and tokens per minute count what
        # settlement wrote, and need no turn-taking.
        counted = [h for row in found.values() for h in row.shared
                   if h.max_concurrency is not None or h.requests_per_minute is not None]
        _lock_rows(cursor, _USER_LIMITS, "user_id", {h.id for h in counted if h.column == "user_id"})
        _lock_rows(cursor, _TEAM, "id", {h.id for h in counted if h.column == "team_id"})
    return found, in_flight


def _lock_rows(cursor, table: str, column: str, ids: set[int]) -> None:
    """PostgreSQL: lock the rows (FOR NO KEY UPDATE, in id order) whose counts admission
    reads, so that two processes admitting for one user or team take turns."""
    if ids:
        _sql(cursor, f"SELECT id FROM {table} WHERE {column} IN ({', '.join(['%s'] * len(ids))}) "
                     f"ORDER BY {column} FOR NO KEY UPDATE", sorted(ids))


def _limit_values(values) -> tuple:
    """A user's or team's limit columns as Holder takes them (SQLite: a cost budget as a
    float or text)."""
    *counts, cost_budget, period = values
    return (*counts, None if cost_budget is None else _decimal(cost_budget), period)


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
    key.owner_id = row.owner_id
    key.team_id = row.team_id
    key.shared_holders = row.shared
    refusal = key_refusal(key)
    if refusal is not None:
        raise refusal


def _decimal(value) -> Decimal:
    """A DecimalField's value as the driver gives it (SQLite: a float or text)."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _unsettled_tokens(settling: Sequence[Settlement], holder: Holder, since, until) -> int:
    """Tokens of ``holder``'s finished requests not yet on its counters that finished
    from ``since`` to ``until`` (a minute, a budget period)."""
    return sum(s.tokens for s in settling if s.key is not None and since <= s.finished_at < until and holder.holds(s.key))


def _unsettled_cost_units(settling: Sequence[Settlement], holder: Holder, since, until) -> int:
    """The cost, in units, of ``holder``'s finished requests not yet on its counters that
    finished from ``since`` to ``until``, at the prices they will be settled at."""
    records = [s.record for s in settling if s.key is not None and s.record is not None
               and since <= s.finished_at < until and holder.holds(s.key)]
    if not records:
        return 0
    prices = prices_of({record.model for record in records})
    return sum(units(record_cost(prices, record)) for record in records)


def _check_limits(cursor, holder: Holder, now, settling: Sequence[Settlement], counted: dict[tuple, int],
                  counters: dict[tuple, tuple[int, int, int]]) -> None:
    """Raise 429 if ``holder`` (its limits as just read) may not start a request ``now``:
    token budget, cost budget, tokens per minute, requests per minute, concurrency, in
    that order. ``counted``: requests this transaction admitted, not yet on counters;
    ``counters``: its counters' values (_counters_of)."""
    budget, cost_budget, period = holder.token_budget, holder.cost_budget, holder.budget_period
    tpm, rpm = holder.tokens_per_minute, holder.requests_per_minute
    who, budget_code, cost_code, tpm_code, rpm_code, concurrency_code = _REFUSALS[holder.column]
    if holder.column == "team_id":
        who = f"{who} {holder.name}"
    budgeted, per_minute = budget is not None or cost_budget is not None, tpm is not None or rpm is not None
    if budgeted:
        since, until = period_start(period, now), period_end(period, now)
        _, used, cost_used = counters[(holder.column, holder.id, UsageCounter.Kind.PERIOD)]
        until_next_period = (until - now).total_seconds()
        if budget is not None:
            if settling:
                used += _unsettled_tokens(settling, holder, since, until)
            if used >= budget:
                raise too_many(f"{who} has used its budget of {budget} tokens per {period}.",
                               budget_code, until_next_period)
        if cost_budget is not None:
            if settling:
                cost_used += _unsettled_cost_units(settling, holder, since, until)
            if cost_used >= units(cost_budget):
                raise too_many(f"{who} has used its budget of {cost_budget.normalize():f} "
                               f"{settings.COST_CURRENCY} per {period}.", cost_code, until_next_period)
    if per_minute:
        minute_start = minute_of(now)
        to_next_minute = 60 - (now - minute_start).total_seconds()
        requests, tokens, _ = counters[(holder.column, holder.id, UsageCounter.Kind.MINUTE)]
        requests += counted.get((holder.column, holder.id, UsageCounter.Kind.MINUTE, minute_start), 0)
        if settling and tpm is not None:
            tokens += _unsettled_tokens(settling, holder, minute_start, minute_start + _MINUTE)
        if tpm is not None and tokens >= tpm:
            raise too_many(f"{who} has reached its limit of {tpm} tokens per minute.", tpm_code, to_next_minute)
        if rpm is not None and requests >= rpm:
            raise too_many(f"{who} has reached its limit of {rpm} requests per minute.", rpm_code, to_next_minute)
    if holder.max_concurrency is not None:
        in_flight = _sql(cursor, f"SELECT COUNT(*) FROM {_LEASE} WHERE {holder.column} = %s AND expires_at > %s",
                         [holder.id, _at(now)])[0][0]
        if in_flight >= holder.max_concurrency:
            raise too_many(f"{who} already has {in_flight} requests in flight, its limit.", concurrency_code, 1)


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
            Code.SERVER_CONCURRENCY_LIMIT, 1,
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
