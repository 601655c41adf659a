"""Per-key limits, held in the database: concurrency (released on disconnect), requests
and tokens per minute, a token budget; a request refused by one limit consumes no other.
(A crashed process's leases: tests/test_crash.py.)"""

import time
from datetime import datetime, timedelta, timezone as dt_timezone

import httpx
import pytest

from accounts.models import Lease, UsageCounter, UsageRecord
from demomodel.corpus import count_prompt
from tests.conftest import MODEL_ID, bearer, issue_key, start_server, wait_for

HELLO = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]}
LONG_STREAM = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(200)}], "stream": True}


@pytest.fixture(scope="module")
def slow(tmp_path_factory, live_db):
    """A server whose engine sleeps 5 ms a step, so streams stay in flight while we act."""
    live = start_server(tmp_path_factory.mktemp("limits"), ENGINE_STEP_DELAY_MS=5)
    yield live
    live.stop()


def live_leases(key) -> int:
    return Lease.objects.filter(api_key=key, expires_at__gt=datetime.now(dt_timezone.utc)).count()


def minute_counter(key) -> UsageCounter:
    return UsageCounter.objects.get(api_key=key, kind="minute")


def early_in_a_minute():
    """Per-minute limits count in calendar minutes; start a test well inside one."""
    second = datetime.now(dt_timezone.utc).second
    if second > 45:
        time.sleep(61 - second)


class Stream:
    """A streaming request held open after its first chunk."""

    def __init__(self, base_url, secret):
        self.client = httpx.Client(base_url=base_url, timeout=60, headers=bearer(secret))
        self.context = self.client.stream("POST", "/v1/chat/completions", json=LONG_STREAM)
        self.response = self.context.__enter__()
        assert self.response.status_code == 200
        self.lines = self.response.iter_lines()
        assert next(self.lines).startswith("data: ")

    def leave(self):
        self.context.__exit__(None, None, None)
        self.client.close()


def too_many(response, code, message):
    assert response.status_code == 429
    body = response.json()["error"]
    assert (body["type"], body["code"], body["message"]) == ("rate_limit_error", code, message)
    return int(response.headers["Retry-After"])


def test_the_request_past_a_keys_concurrency_gets_429_and_a_leaving_stream_gives_its_slot_back(slow):
    key, secret = issue_key(name="two-at-once", max_concurrency=2)
    first, second = Stream(slow.base_url, secret), Stream(slow.base_url, secret)
    refused = httpx.post(f"{slow.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret))
    assert too_many(refused, "key_concurrency_limit", "This API key already has 2 requests in flight, its limit.") == 1
    first.leave()  # disconnect mid-stream
    wait_for(lambda: live_leases(key) == 1)
    admitted = httpx.post(f"{slow.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret))
    assert admitted.status_code == 200
    second.leave()
    wait_for(lambda: live_leases(key) == 0)


def test_requests_per_minute(slow):
    early_in_a_minute()
    key, secret = issue_key(name="rpm", requests_per_minute=2)
    for _ in range(2):
        assert httpx.post(f"{slow.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret)).status_code == 200
    refused = httpx.post(f"{slow.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret))
    retry_after = too_many(refused, "requests_per_minute_limit", "This API key has reached its limit of 2 requests per minute.")
    assert 1 <= retry_after <= 60
    assert minute_counter(key).requests == 2  # the refused one was not counted


def test_a_per_minute_limit_set_on_a_key_in_use_counts_from_the_next_request(slow):
    early_in_a_minute()
    key, secret = issue_key(name="rpm-later")
    assert httpx.post(f"{slow.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret)).status_code == 200
    assert not UsageCounter.objects.filter(api_key=key, kind="minute").exists()  # nothing to count against
    key.requests_per_minute = 1
    key.save()
    assert httpx.post(f"{slow.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret)).status_code == 200
    refused = httpx.post(f"{slow.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret))
    too_many(refused, "requests_per_minute_limit", "This API key has reached its limit of 1 requests per minute.")


def test_tokens_per_minute(slow):
    early_in_a_minute()
    key, secret = issue_key(name="tpm", tokens_per_minute=10)
    first = httpx.post(f"{slow.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret))
    used = first.json()["usage"]["total_tokens"]
    wait_for(lambda: minute_counter(key).tokens == used)
    refused = httpx.post(f"{slow.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret))
    too_many(refused, "tokens_per_minute_limit", "This API key has reached its limit of 10 tokens per minute.")


def test_a_token_budget_per_day(slow):
    key, secret = issue_key(name="budget", token_budget=10, budget_period="day")
    first = httpx.post(f"{slow.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret))
    used = first.json()["usage"]["total_tokens"]
    assert used > 10
    wait_for(lambda: UsageCounter.objects.filter(api_key=key, kind="period", tokens=used).exists())
    refused = httpx.post(f"{slow.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret))
    retry_after = too_many(refused, "token_budget_exceeded", "This API key has used its budget of 10 tokens per day.")
    now = datetime.now(dt_timezone.utc)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert abs(retry_after - (midnight - now).total_seconds()) <= 3


def test_a_request_refused_by_one_limit_consumes_no_other(slow):
    early_in_a_minute()
    key, secret = issue_key(name="no-double-count", max_concurrency=1, requests_per_minute=10)
    held = Stream(slow.base_url, secret)
    refused = httpx.post(f"{slow.base_url}/v1/chat/completions", json=HELLO,
                         headers={**bearer(secret), "X-Request-ID": "refused-once"})
    too_many(refused, "key_concurrency_limit", "This API key already has 1 requests in flight, its limit.")
    assert minute_counter(key).requests == 1  # only the stream
    assert live_leases(key) == 1
    held.leave()
    record = wait_for(lambda: UsageRecord.objects.filter(request_id="refused-once").first())
    assert (record.status_code, record.error_code, record.prompt_tokens, record.completion_tokens) == (
        429, "key_concurrency_limit", 0, 0)


def test_requests_admitted_together_are_each_decided_as_if_alone(live_db):
    """The accounting thread admits the requests waiting for it in one transaction
    (accounts.limits.admit_many): each is still judged on its own, in arrival order, and
    counts for the next; a refusal among them writes nothing and stops no other."""
    from accounts.limits import admit_many
    from accounts.models import APIKey

    early_in_a_minute()
    one, _ = issue_key(name="together-one", max_concurrency=1)
    free, _ = issue_key(name="together-free")
    per_minute, _ = issue_key(name="together-rpm", requests_per_minute=1)
    revoked, _ = issue_key(name="together-revoked")
    APIKey.objects.filter(pk=revoked.pk).update(is_active=False)

    results = admit_many([(one, "t-1", ()), (one, "t-2", ()), (revoked, "t-3", ()), (free, "t-4", ()),
                          (per_minute, "t-5", ()), (per_minute, "t-6", ())])
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


def test_a_request_cancelled_while_being_admitted_gives_back_the_lease_admission_took(live_db):
    """The client leaves (or Stop is pressed) while the accounting thread admits: the
    lease it takes then must be given back, not held (and renewed) by this process.
    (A key with a token budget: the accounting thread decides it, never the event loop;
    tests/test_inline_admission.py.)"""
    import asyncio

    from accounts.books import books
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
