"""Admission and settlement: the limits, held in the database so that every server
process sharing it enforces one limit. Everything here runs on the accounting thread
(accounts.books).

``admit()`` runs in one transaction that locks the key's row (and the deployment's
``global`` row): it checks the token budget, tokens and requests per minute, the key's
concurrency and the deployment's concurrency, in that order, and only if all pass does
it consume anything (a request counted this minute, a lease). A request refused by one
limit therefore consumes no other.

A lease is a request in flight. Its process renews the leases of its requests still in
flight every ``LEASE_RENEW_SECONDS``; if the process dies (or loses track of a lease),
they expire after at most ``LEASE_TTL_SECONDS`` and stop counting, so nothing can lock a
key out for longer than that.

Lock order, the same everywhere so that PostgreSQL never sees a deadlock: the key's row,
then the ``global`` row, then counter rows. Settling (accounts.books.settle_batch) takes no key or global lock. The
key row is locked FOR NO KEY UPDATE: a plain FOR UPDATE would also block the KEY SHARE
lock that inserting a usage record or counter takes on it through its foreign key, and a
request settling (holding a counter row) and one being admitted (holding the key row,
wanting that counter) would wait on each other.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import threading
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import APIKey, Lease, LimitScope, UsageCounter, period_end, period_start
from llmserver.errors import APIError

log = logging.getLogger("llmserver.limits")

# This server process, as the holder of its leases.
PROCESS_ID = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

# Leases of this process's requests still in flight: the ones to renew.
_held: set[int] = set()
_held_lock = threading.Lock()


def _too_many(message: str, code: str, retry_after: float) -> APIError:
    return APIError(429, message, code=code, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


def _minute(now):
    return now.replace(second=0, microsecond=0)


def _counter(key: APIKey, kind: str, starts_at) -> UsageCounter:
    counter, _ = UsageCounter.objects.get_or_create(api_key=key, kind=kind, starts_at=starts_at)
    return counter


def admit(key: APIKey | None, request_id: str) -> int:
    """Check every limit and take a lease; return the lease id, or raise APIError 429.
    ``key`` is None when API keys are not required (only the deployment limit applies)."""
    now = timezone.now()
    with transaction.atomic():
        if key is not None:
            key = APIKey.objects.select_for_update(no_key=True).get(pk=key.pk)
            _check_key_limits(key, now)
        _check_deployment_limit(now)
        if key is not None:
            APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
            minute = _counter(key, UsageCounter.Kind.MINUTE, _minute(now))
            UsageCounter.objects.filter(pk=minute.pk).update(requests=F("requests") + 1)
        lease = Lease.objects.create(
            api_key=key, request_id=request_id, holder=PROCESS_ID,
            acquired_at=now, expires_at=now + timedelta(seconds=settings.LEASE_TTL_SECONDS),
        )
    with _held_lock:
        _held.add(lease.pk)
    return lease.pk


def _check_key_limits(key: APIKey, now) -> None:
    if key.token_budget is not None:
        used = _counter(key, UsageCounter.Kind.PERIOD, period_start(key.budget_period, now)).tokens
        if used >= key.token_budget:
            raise _too_many(
                f"This API key has used its budget of {key.token_budget} tokens per {key.budget_period}.",
                "token_budget_exceeded", (period_end(key.budget_period, now) - now).total_seconds(),
            )
    minute_start = _minute(now)
    to_next_minute = 60 - (now - minute_start).total_seconds()
    minute = None
    if key.tokens_per_minute is not None or key.requests_per_minute is not None:
        minute = _counter(key, UsageCounter.Kind.MINUTE, minute_start)
    if key.tokens_per_minute is not None and minute.tokens >= key.tokens_per_minute:
        raise _too_many(
            f"This API key has reached its limit of {key.tokens_per_minute} tokens per minute.",
            "tokens_per_minute_limit", to_next_minute,
        )
    if key.requests_per_minute is not None and minute.requests >= key.requests_per_minute:
        raise _too_many(
            f"This API key has reached its limit of {key.requests_per_minute} requests per minute.",
            "requests_per_minute_limit", to_next_minute,
        )
    if key.max_concurrency is not None:
        in_flight = Lease.objects.filter(api_key=key, expires_at__gt=now).count()
        if in_flight >= key.max_concurrency:
            raise _too_many(
                f"This API key already has {in_flight} requests in flight, its limit.",
                "key_concurrency_limit", 1,
            )


def _check_deployment_limit(now) -> None:
    # Lock the one "global" row: admissions across the deployment take turns here, for
    # the milliseconds of a count and an insert.
    LimitScope.objects.select_for_update().get_or_create(name="global")
    in_flight = Lease.objects.filter(expires_at__gt=now).count()
    if in_flight >= settings.MAX_CONCURRENT_REQUESTS:
        raise _too_many(
            f"The server is at its limit of {settings.MAX_CONCURRENT_REQUESTS} concurrent requests; retry shortly.",
            "server_concurrency_limit", 1,
        )


def release_leases(lease_ids: list[int]) -> None:
    """Give back places in flight: on their own, so that they are given back even if
    writing the usage records that follow fails."""
    if not lease_ids:
        return
    with _held_lock:
        _held.difference_update(lease_ids)
    Lease.objects.filter(pk__in=lease_ids).delete()


# --- lease renewal ---------------------------------------------------------------------

_heartbeat: asyncio.Task | None = None


def ensure_heartbeat() -> None:
    """Start this process's lease renewal on the running event loop (once)."""
    global _heartbeat
    if _heartbeat is None or _heartbeat.done():
        _heartbeat = asyncio.get_running_loop().create_task(_renew_forever(), name="lease-heartbeat")


async def _renew_forever() -> None:
    from accounts.books import books

    while True:
        await asyncio.sleep(settings.LEASE_RENEW_SECONDS)
        try:
            await books.call(renew_leases)
        except Exception:  # a database hiccup must not end renewal for good
            log.exception("renewing leases failed; retrying")


def renew_leases() -> None:
    now = timezone.now()
    with _held_lock:
        held = list(_held)
    if held:
        Lease.objects.filter(pk__in=held).update(expires_at=now + timedelta(seconds=settings.LEASE_TTL_SECONDS))
    # Leases of dead processes stopped counting at their expiry; clear them away.
    Lease.objects.filter(expires_at__lt=now - timedelta(minutes=10)).delete()
