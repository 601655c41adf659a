"""Settlement: finished requests written to the database, several in one transaction:
their leases given back, their tokens added to the counters of their keys (and of the
keys' owners with limits, and teams), their usage records
inserted. Runs on the accounting thread (accounts.books), on its connection's driver
cursor (accounts.hotsql); takes no key or global lock (accounts.limits, lock order).
"""

from __future__ import annotations

import logging
from collections import defaultdict

from django.contrib.auth import get_user_model
from django.db import DataError, IntegrityError, connection, models

from accounts import hotsql
from accounts.limits import Holder, add_to_counter, minute_of, release_leases
from accounts.models import APIKey, Team, UsageCounter, UsageRecord, period_start
from accounts.prices import prices_of, record_cost, units
from accounts.records import USAGE_FIELDS, Settlement, UsageRow

log = logging.getLogger("llmserver.books")

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
            log.exception("could not record request %s",
                          settlement.record.request_id if settlement.record is not None else None)


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
                s.record = s.record._replace(api_key_id=None)
    # A team or user deleted meanwhile: their counters went with them.
    shared = {(h.column, h.id) for s in settlements if s.key is not None for h in s.key.shared_holders}
    existing = {("team_id", pk) for pk in Team.objects.filter(pk__in=[i for c, i in shared if c == "team_id"])
                .values_list("pk", flat=True)}
    existing |= {("user_id", pk) for pk in get_user_model().objects.filter(
        pk__in=[i for c, i in shared if c == "user_id"]).values_list("pk", flat=True)}
    for s in settlements:
        if s.key is not None and s.key.shared_holders:
            s.key.shared_holders = tuple(h for h in s.key.shared_holders if (h.column, h.id) in existing)


def _write_usage(cursor, settlements: list[Settlement]) -> None:
    # Each record's cost at its model's price now, in this transaction.
    prices = prices_of({s.record.model for s in settlements if s.record is not None})
    for s in settlements:
        if s.record is not None:
            s.record = s.record._replace(cost=record_cost(prices, s.record))
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])  # counter -> [tokens, cost units]
    for s in settlements:
        cost_units = units(s.record.cost) if s.record is not None else 0
        if s.key is not None and (s.tokens or cost_units):
            # The key's counters, and those of its owner (with limits) and its team.
            for holder in (Holder.of_key(s.key), *s.key.shared_holders):
                if holder.per_minute_limited:
                    sums[(holder.column, holder.id, UsageCounter.Kind.MINUTE, minute_of(s.finished_at))][0] += s.tokens
                period = sums[(holder.column, holder.id, UsageCounter.Kind.PERIOD,
                               period_start(holder.budget_period, s.finished_at))]
                period[0] += s.tokens
                period[1] += cost_units
    # In one order everywhere (admission's too), so that two processes never deadlock.
    for (column, holder_id, kind, starts_at), (tokens, cost_units) in sorted(sums.items()):
        add_to_counter(cursor, column, holder_id, kind, starts_at, tokens=tokens, cost_units=cost_units)
    rows = [_row_values(s.record) for s in settlements if s.record is not None]
    if rows:
        # One multi-row INSERT, not bulk_create (the ORM's cost per record was most of
        # settling's) nor executemany (a statement step per record, each a GIL handoff).
        hotsql.insert_rows(cursor, _RECORD_TABLE, len(USAGE_FIELDS), rows)


_RECORD_TABLE = (f"{UsageRecord._meta.db_table} "
                 f"({', '.join(connection.ops.quote_name(field.column) for field in USAGE_FIELDS)})")
# The columns whose values the driver takes converted (datetimes: SQLite stores text).
_DATETIMES = frozenset(i for i, field in enumerate(USAGE_FIELDS) if isinstance(field, models.DateTimeField))


def _row_values(record: UsageRow) -> list:
    return [hotsql.at(value) if i in _DATETIMES and value is not None else value for i, value in enumerate(record)]
