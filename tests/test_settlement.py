"""Finished requests are settled in batches (accounts.books): their usage records,
counters and leases are written together within USAGE_WRITE_DELAY_MS. Until then the
same process's next admission gives back their leases and counts their tokens, and a
server stopping writes everything still waiting.

The settlements here wait ten minutes before being written, so anything written during
a test was written by an admission, a flush or the server stopping, not by the timer."""

import asyncio
import uuid

import httpx
import pytest
from asgiref.sync import sync_to_async

from accounts.books import books
from accounts.models import Lease, UsageCounter, UsageRecord
from tests.asgi import InProcessAPI
from tests.conftest import MODEL_ID, bearer, issue_key, model_in_process, start_server

HELLO = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]}
TEN_MINUTES_MS = 600_000


def post(server, secret):
    rid = f"settle-{uuid.uuid4().hex}"
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=HELLO, timeout=60,
                          headers={**bearer(secret), "X-Request-ID": rid})
    return response, rid


def db(fn, *args, **kwargs):
    """``fn`` (ORM work) off the event loop, in asgiref's sync thread."""
    return sync_to_async(fn)(*args, **kwargs)


@pytest.fixture
def waiting_ten_minutes(live_db, settings):
    """The demo model served in this process, whose settlements wait ten minutes
    (books reads USAGE_WRITE_DELAY_MS when a settlement starts waiting: none waits now)."""
    assert books.flush()
    settings.USAGE_WRITE_DELAY_MS = TEN_MINUTES_MS
    with model_in_process():
        yield InProcessAPI()
    assert books.flush()  # nothing left waiting ten minutes for the tests after this one


async def test_waiting_settlements_count_for_the_next_admission_and_are_written_by_a_flush(waiting_ten_minutes):
    api = waiting_ten_minutes

    async def ask(secret):
        rid = f"settle-{uuid.uuid4().hex}"
        response = await api.post("/v1/chat/completions", HELLO, {**bearer(secret), "X-Request-ID": rid})
        return response.status, await response.json(), rid  # done: its settlement is queued

    one_at_a_time, one_secret = await db(issue_key, name="settle-concurrency", max_concurrency=1)
    budgeted, budget_secret = await db(issue_key, name="settle-budget", token_budget=10, budget_period="day")
    first_status, first, first_rid = await ask(one_secret)
    assert first_status == 200
    await books.call(lambda: None)  # the accounting thread has taken the settlement in, to wait
    # Not written yet: no record, no counter, and its lease still in the database.
    assert not await db(UsageRecord.objects.filter(request_id=first_rid).exists)
    assert not await db(UsageCounter.objects.filter(api_key=one_at_a_time).exists)
    assert await db(Lease.objects.filter(api_key=one_at_a_time).count) == 1

    # A key limited to one request in flight: the next one is admitted (its admission
    # gives the waiting lease back)...
    second_status, second, second_rid = await ask(one_secret)
    assert second_status == 200
    assert await db(lambda: list(Lease.objects.filter(api_key=one_at_a_time).values_list("request_id", flat=True))) == [
        second_rid]

    # ...and a key with a budget of 10 tokens is refused once a request used more,
    # before any of it is on the key's counters.
    spent_status, spent, spent_rid = await ask(budget_secret)
    used = spent["usage"]["total_tokens"]
    assert spent_status == 200 and used > 10
    refused_status, refused, refused_rid = await ask(budget_secret)
    assert refused_status == 429
    assert refused["error"]["code"] == "token_budget_exceeded"
    await books.call(lambda: None)
    assert not await db(UsageCounter.objects.filter(api_key=budgeted).exists)
    assert not await db(UsageRecord.objects.filter(request_id__in=[first_rid, second_rid, spent_rid, refused_rid]).exists)

    assert await asyncio.to_thread(books.flush)  # what a server stopping does (atexit)
    await db(assert_all_written, {first_rid: 200, second_rid: 200, spent_rid: 200, refused_rid: 429},
             one_at_a_time, first["usage"]["total_tokens"] + second["usage"]["total_tokens"], budgeted, spent_rid, used)


def assert_all_written(statuses: dict, one_at_a_time, its_tokens: int, budgeted, spent_rid: str, used: int) -> None:
    records = {r.request_id: r for r in UsageRecord.objects.filter(request_id__in=statuses)}
    assert {rid: records[rid].status_code for rid in records} == statuses
    assert records[spent_rid].prompt_tokens + records[spent_rid].completion_tokens == used
    assert UsageCounter.objects.get(api_key=one_at_a_time, kind="period").tokens == its_tokens
    assert UsageCounter.objects.get(api_key=budgeted, kind="period").tokens == used
    assert not Lease.objects.filter(api_key__in=[one_at_a_time, budgeted]).exists()


def test_a_server_stopping_writes_the_settlements_still_waiting(tmp_path, live_db):
    """The process is the subject: SIGTERM, and what its exit writes. (That nothing is
    written before, and that the next admission counts what waits: the in-process test
    above, which can tell when the accounting thread has seen a settlement.)"""
    server = start_server(tmp_path, USAGE_WRITE_DELAY_MS=TEN_MINUTES_MS)
    one_at_a_time, one_secret = issue_key(name="settle-concurrency", max_concurrency=1)
    budgeted, budget_secret = issue_key(name="settle-budget", token_budget=10, budget_period="day")
    try:
        first, first_rid = post(server, one_secret)
        assert first.status_code == 200
        # The waiting lease is given back by the next admission of its process.
        second, second_rid = post(server, one_secret)
        assert second.status_code == 200
        assert list(Lease.objects.filter(api_key=one_at_a_time).values_list("request_id", flat=True)) == [second_rid]

        spent, spent_rid = post(server, budget_secret)
        used = spent.json()["usage"]["total_tokens"]
        assert spent.status_code == 200 and used > 10
        refused, refused_rid = post(server, budget_secret)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "token_budget_exceeded"
        assert not UsageCounter.objects.filter(api_key=budgeted).exists()
    finally:
        server.stop()  # SIGTERM: the server writes what waits, then exits

    assert server.process.returncode == 0
    assert_all_written({first_rid: 200, second_rid: 200, spent_rid: 200, refused_rid: 429}, one_at_a_time,
                       sum(response.json()["usage"]["total_tokens"] for response in (first, second)), budgeted,
                       spent_rid, used)


def test_a_record_the_database_refuses_loses_only_itself_and_every_lease_is_given_back(live_db):
    """One bad row (here a negative token count, which the column's CHECK refuses; seen in
    the wild: a NUL in a client's model name, which PostgreSQL's text refuses) must not
    lose the batch it was written with."""
    from django.utils import timezone

    from accounts.limits import admit
    from accounts.records import Settlement
    from accounts.settlement import settle_batch

    key, _ = issue_key(name="settle-bad-row", token_budget=1000, budget_period="day")
    rids = [f"settle-bad-{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
    leases = [admit(key, rid) for rid in rids]
    settlements = [Settlement(lease, key, _record(key, rid, prompt_tokens=-1 if i == 1 else 5), 5, timezone.now())
                   for i, (lease, rid) in enumerate(zip(leases, rids))]

    settle_batch(settlements)

    assert sorted(UsageRecord.objects.filter(request_id__in=rids).values_list("request_id", flat=True)) == [
        rids[0], rids[2]]
    assert UsageCounter.objects.get(api_key=key, kind="period").tokens == 10
    assert not Lease.objects.filter(pk__in=leases).exists()


def _record(key, request_id: str, prompt_tokens: int):
    from django.utils import timezone

    from accounts.records import UsageRow

    return UsageRow(api_key_id=key.pk, key_prefix=key.prefix, model=MODEL_ID, endpoint="chat.completions",
                    request_id=request_id, streamed=False, prompt_tokens=prompt_tokens, completion_tokens=5,
                    cached_tokens=0, finish_reason="stop", status_code=200, error_code="",
                    started_at=timezone.now(), duration_ms=1.0, time_to_first_token_ms=1.0,
                    client_disconnected=False, user="", cost=None)
