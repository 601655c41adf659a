"""Per-key limits, held in the database: concurrency (released on disconnect), requests
and tokens per minute, a token budget; a request refused by one limit consumes no other;
minute windows, budget periods and leases end when the clock says so. (A crashed
process's leases: tests/test_crash.py.)

In-process (tests/asgi.py) on the demo model at 5 ms a step, so that streams stay in
flight while a test acts; the time is set with llmserver.clock, never slept to."""

import asyncio
from datetime import datetime, timedelta

import pytest
from django.conf import settings

from accounts import limits
from accounts.books import books
from accounts.limits import admit, minute_of, renew_leases
from accounts.models import Lease, UsageCounter, UsageRecord, period_end, period_start
from demomodel.corpus import count_prompt
from llmserver import clock
from tests.conftest import MODEL_ID, bearer, issue_key, orm, wait_for

HELLO = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]}
LONG_STREAM = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(200)}], "stream": True}


def live_leases(key) -> int:
    return Lease.objects.filter(api_key=key, expires_at__gt=clock.now()).count()


def minute_counter(key) -> UsageCounter:
    return UsageCounter.objects.get(api_key=key, kind="minute")


def a_minute_ahead(second: int = 0) -> datetime:
    """``second`` seconds into the next calendar minute (per-minute limits count in those)."""
    return minute_of(clock.now()) + timedelta(minutes=1, seconds=second)


async def settled() -> None:
    """Every finished request's settlement written (usage record, counters, lease back)."""
    assert await asyncio.to_thread(books.flush)


async def post(api, secret, body=HELLO, **headers):
    return await api.post("/v1/chat/completions", body, {**bearer(secret), **headers})


async def answered(api, secret, body=HELLO):
    """A request that must be admitted, read to its end."""
    response = await post(api, secret, body)
    assert response.status == 200, await response.body()
    return await response.json()


class Stream:
    """A streaming request held open after its first chunk."""

    @classmethod
    async def open(cls, api, secret):
        self = cls()
        self.response = await post(api, secret, LONG_STREAM)
        assert self.response.status == 200
        self.chunks = self.response.chunks()
        assert (await anext(self.chunks)).startswith(b"data: ")
        return self

    async def leave(self):
        await self.response.disconnect()


async def too_many(response, code, message):
    assert response.status == 429
    body = (await response.json())["error"]
    assert (body["type"], body["code"], body["message"]) == ("rate_limit_error", code, message)
    return int(response.headers["retry-after"])


async def test_the_request_past_a_keys_concurrency_gets_429_and_a_leaving_stream_gives_its_slot_back(slow_api):
    key, secret = await orm(issue_key, name="two-at-once", max_concurrency=2)
    first, second = await Stream.open(slow_api, secret), await Stream.open(slow_api, secret)
    refused = await post(slow_api, secret)
    assert await too_many(refused, "key_concurrency_limit", "This API key already has 2 requests in flight, its limit.") == 1
    await first.leave()  # disconnect mid-stream
    await settled()
    assert await orm(live_leases, key) == 1
    await answered(slow_api, secret)
    await second.leave()
    await settled()
    assert await orm(live_leases, key) == 0


async def test_requests_per_minute(slow_api):
    key, secret = await orm(issue_key, name="rpm", requests_per_minute=2)
    with clock.frozen(a_minute_ahead(15)):
        for _ in range(2):
            await answered(slow_api, secret)
        refused = await post(slow_api, secret)
        retry_after = await too_many(refused, "requests_per_minute_limit",
                                     "This API key has reached its limit of 2 requests per minute.")
        assert retry_after == 45  # the seconds left in the minute
        assert (await orm(minute_counter, key)).requests == 2  # the refused one was not counted


async def test_a_per_minute_limit_refusing_at_59_seconds_admits_again_at_the_next_minute(slow_api):
    key, secret = await orm(issue_key, name="rpm-edge", requests_per_minute=1)
    message = "This API key has reached its limit of 1 requests per minute."
    with clock.frozen(a_minute_ahead(59)) as time:
        first_minute = minute_of(time.now())
        await answered(slow_api, secret)
        retry_after = await too_many(await post(slow_api, secret), "requests_per_minute_limit", message)
        assert retry_after == 1  # the seconds left in the minute
        time.advance(retry_after)  # the next minute's first second
        await answered(slow_api, secret)
        assert await too_many(await post(slow_api, secret), "requests_per_minute_limit", message) == 60
        counters = await orm(lambda: list(UsageCounter.objects.filter(api_key=key, kind="minute").order_by(
            "starts_at").values_list("starts_at", "requests")))
        assert counters == [(first_minute, 1), (first_minute + timedelta(minutes=1), 1)]


async def test_a_per_minute_limit_set_on_a_key_in_use_counts_from_the_next_request(slow_api):
    key, secret = await orm(issue_key, name="rpm-later")
    with clock.frozen(a_minute_ahead(10)):
        await answered(slow_api, secret)
        assert not await orm(UsageCounter.objects.filter(api_key=key, kind="minute").exists)  # nothing to count against
        key.requests_per_minute = 1
        await orm(key.save)
        await answered(slow_api, secret)
        refused = await post(slow_api, secret)
        await too_many(refused, "requests_per_minute_limit", "This API key has reached its limit of 1 requests per minute.")


async def test_tokens_per_minute(slow_api):
    key, secret = await orm(issue_key, name="tpm", tokens_per_minute=10)
    with clock.frozen(a_minute_ahead(10)):
        used = (await answered(slow_api, secret))["usage"]["total_tokens"]
        await settled()
        assert (await orm(minute_counter, key)).tokens == used
        refused = await post(slow_api, secret)
        await too_many(refused, "tokens_per_minute_limit", "This API key has reached its limit of 10 tokens per minute.")


async def test_a_token_budget_per_day(slow_api):
    key, secret = await orm(issue_key, name="budget", token_budget=10, budget_period="day")
    with clock.frozen(clock.now().replace(microsecond=0)) as time:
        used = (await answered(slow_api, secret))["usage"]["total_tokens"]
        assert used > 10
        await settled()
        assert await orm(UsageCounter.objects.filter(api_key=key, kind="period", tokens=used).exists)
        refused = await post(slow_api, secret)
        retry_after = await too_many(refused, "token_budget_exceeded", "This API key has used its budget of 10 tokens per day.")
        now = time.now()
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        assert retry_after == (midnight - now).total_seconds()


@pytest.mark.parametrize("period, before_the_end", [("day", timedelta(seconds=30)), ("month", timedelta(days=1))])
async def test_a_spent_budget_refuses_until_its_period_ends_and_then_admits(slow_api, period, before_the_end):
    key, secret = await orm(issue_key, name=f"budget-{period}", token_budget=10, budget_period=period)
    end = period_end(period, clock.now() + timedelta(days=40))  # a period no other test has counted in
    message = f"This API key has used its budget of 10 tokens per {period}."
    with clock.frozen(end - before_the_end - timedelta(hours=2)) as time:
        used = (await answered(slow_api, secret))["usage"]["total_tokens"]
        assert used > 10
        time.set(end - before_the_end)
        refused = await post(slow_api, secret)
        assert await too_many(refused, "token_budget_exceeded", message) == before_the_end.total_seconds()
        time.set(end - timedelta(seconds=1))
        assert await too_many(await post(slow_api, secret), "token_budget_exceeded", message) == 1
        time.set(end)  # the next period
        second = (await answered(slow_api, secret))["usage"]["total_tokens"]
        await settled()
        periods = await orm(lambda: list(UsageCounter.objects.filter(api_key=key, kind="period").order_by(
            "starts_at").values_list("starts_at", "tokens")))
        assert periods == [(period_start(period, end - before_the_end), used), (end, second)]
        assert await too_many(await post(slow_api, secret), "token_budget_exceeded", message) == (
            period_end(period, end) - end).total_seconds()


async def test_a_lease_no_one_renews_stops_counting_after_its_ttl(slow_api):
    """A lease its process no longer renews (the process died, or lost track of it) holds
    the key's place for LEASE_TTL_SECONDS from its last renewal, and not a second longer."""
    key, secret = await orm(issue_key, name="lease-ttl", max_concurrency=1)
    message = "This API key already has 1 requests in flight, its limit."
    with clock.frozen() as time:
        lease = await books.call(admit, key, "lease-ttl-lost")
        await books.call(limits._held.discard, lease)  # lost: the heartbeat no longer renews it
        try:
            time.advance(settings.LEASE_TTL_SECONDS - 1)
            assert await too_many(await post(slow_api, secret), "key_concurrency_limit", message) == 1
            time.advance(1)  # the lease's expiry
            assert await orm(live_leases, key) == 0
            await answered(slow_api, secret)
        finally:
            await orm(Lease.objects.filter(pk=lease).delete)


async def test_renewing_keeps_a_held_lease_counting_across_its_ttl(slow_api):
    key, secret = await orm(issue_key, name="lease-renewed", max_concurrency=1)
    message = "This API key already has 1 requests in flight, its limit."
    with clock.frozen() as time:
        lease = await books.call(admit, key, "lease-renewed-held")  # held by this process
        try:
            time.advance(settings.LEASE_TTL_SECONDS - 1)
            await books.call(renew_leases)  # what the heartbeat does every LEASE_RENEW_SECONDS
            renewed = await orm(lambda: Lease.objects.get(pk=lease).expires_at)
            assert renewed == time.now() + timedelta(seconds=settings.LEASE_TTL_SECONDS)
            # No renewal from here (the heartbeat's, had it run meanwhile, gave the same
            # expiry: the clock has not moved since).
            await books.call(limits._held.discard, lease)
            time.advance(settings.LEASE_TTL_SECONDS - 1)  # well past the first expiry
            assert await too_many(await post(slow_api, secret), "key_concurrency_limit", message) == 1
            time.advance(1)  # the renewed expiry
            await answered(slow_api, secret)
        finally:
            books.settle_later(lease, None, None, 0)  # given back, as a finished request's
            await settled()
    assert not await orm(Lease.objects.filter(pk=lease).exists)


def test_the_accounting_thread_renews_the_leases_in_flight_by_itself(live_db, settings):
    """Nothing asks for it: every LEASE_RENEW_SECONDS the accounting thread pushes back
    the expiry of this process's leases (and of no other's)."""
    key, _ = issue_key(name="lease-heartbeat")
    with clock.frozen() as time:
        mine = asyncio.run(books.call(admit, key, "lease-heartbeat-mine"))  # held by this process
        others = Lease.objects.create(api_key=key, request_id="lease-heartbeat-other", holder="another:1",
                                      expires_at=time.now() + timedelta(seconds=settings.LEASE_TTL_SECONDS))
        first_expiry = others.expires_at
        try:
            time.advance(100)
            settings.LEASE_RENEW_SECONDS = 0.05
            asyncio.run(books.call(lambda: None))  # wakes it: the new period counts from now
            renewed = time.now() + timedelta(seconds=settings.LEASE_TTL_SECONDS)
            wait_for(lambda: Lease.objects.get(pk=mine).expires_at == renewed)
            assert Lease.objects.get(pk=others.pk).expires_at == first_expiry
        finally:
            Lease.objects.filter(pk__in=[mine, others.pk]).delete()
            asyncio.run(books.call(limits._held.discard, mine))


async def test_a_request_refused_by_one_limit_consumes_no_other(slow_api):
    key, secret = await orm(issue_key, name="no-double-count", max_concurrency=1, requests_per_minute=10)
    with clock.frozen(a_minute_ahead(10)):
        held = await Stream.open(slow_api, secret)
        refused = await post(slow_api, secret, **{"X-Request-ID": "refused-once"})
        await too_many(refused, "key_concurrency_limit", "This API key already has 1 requests in flight, its limit.")
        assert (await orm(minute_counter, key)).requests == 1  # only the stream
        assert await orm(live_leases, key) == 1
        await held.leave()
        await settled()
    record = await orm(UsageRecord.objects.get, request_id="refused-once")
    assert (record.status_code, record.error_code, record.prompt_tokens, record.completion_tokens) == (
        429, "key_concurrency_limit", 0, 0)


def test_requests_admitted_together_are_each_decided_as_if_alone(live_db):
    """The accounting thread admits the requests waiting for it in one transaction
    (accounts.limits.admit_many): each is still judged on its own, in arrival order, and
    counts for the next; a refusal among them writes nothing and stops no other."""
    from accounts.limits import admit_many
    from accounts.models import APIKey
    from accounts.records import Admission

    one, _ = issue_key(name="together-one", max_concurrency=1)
    free, _ = issue_key(name="together-free")
    per_minute, _ = issue_key(name="together-rpm", requests_per_minute=1)
    revoked, _ = issue_key(name="together-revoked")
    APIKey.objects.filter(pk=revoked.pk).update(is_active=False)

    with clock.frozen(a_minute_ahead(10)):
        results = admit_many([Admission(one, "t-1"), Admission(one, "t-2"), Admission(revoked, "t-3"),
                              Admission(free, "t-4"), Admission(per_minute, "t-5"), Admission(per_minute, "t-6")])
        try:
            refusals = {i: (r.status, r.code) for i, r in enumerate(results) if isinstance(r, Exception)}
            assert refusals == {1: (429, "key_concurrency_limit"), 2: (401, "invalid_api_key"),
                                5: (429, "requests_per_minute_limit")}
            leases = Lease.objects.filter(pk__in=[r for r in results if isinstance(r, int)])
            assert sorted(leases.values_list("request_id", flat=True)) == ["t-1", "t-4", "t-5"]
            assert minute_counter(per_minute).requests == 1
            assert (live_leases(one), live_leases(free), live_leases(per_minute), live_leases(revoked)) == (1, 1, 1, 0)
            assert APIKey.objects.get(pk=revoked.pk).last_used_at is None  # refused: nothing written
            assert APIKey.objects.get(pk=free.pk).last_used_at is not None
        finally:
            Lease.objects.filter(request_id__in=["t-1", "t-4", "t-5"]).delete()
            limits._held.difference_update(r for r in results if isinstance(r, int))


def test_a_request_cancelled_while_being_admitted_gives_back_the_lease_admission_took(live_db):
    """The client leaves (or Stop is pressed) while the accounting thread admits: the
    lease it takes then must be given back, not held (and renewed) by this process."""
    from accounts.usage import RequestAccount

    key, _ = issue_key(name="cancelled-in-admission", token_budget=1_000_000)
    seen = []

    async def scenario():
        account = RequestAccount(key, "cancelled-in-admission", "chat.completions", key_checked=True)
        admission = asyncio.ensure_future(account.admit())
        await asyncio.sleep(0)  # queued on the accounting thread, not yet done
        admission.cancel()
        with pytest.raises(asyncio.CancelledError):
            await admission
        account.finish(499)
        # The accounting thread admits anyway: a lease appears, then goes.
        for _ in range(500):
            seen.append(await books.call(live_leases, key))
            if seen[-1] == 0 and 1 in seen:
                return
            await asyncio.sleep(0.002)

    asyncio.run(scenario())
    assert seen[-1] == 0
