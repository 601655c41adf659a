"""Exactly one usage record per authenticated request, with the counts the client saw:
non-streamed, streamed, disconnected, refused and failed.

In-process (tests/asgi.py), on the demo model served in this process at 5 ms a step (so
that a test can act mid-stream): a request's record is queued when its response closes,
and ``books.flush()`` writes whatever is queued, so a test reads the records, or their
absence, as soon as the response is done."""

import asyncio
import json
import uuid

import pytest

from accounts.books import books
from accounts.models import UsageRecord
from demomodel.corpus import count_prompt
from tests.conftest import MODEL_ID, bearer, issue_key, orm, sse_body


async def settled() -> None:
    """Every finished request's settlement written (its usage record among them)."""
    assert await asyncio.to_thread(books.flush)


async def records(*request_ids) -> list:
    await settled()
    return await orm(lambda: list(UsageRecord.objects.filter(request_id__in=request_ids)))


async def record_for(request_id) -> UsageRecord:
    """The request's one record (its response is done: the record is queued or written)."""
    found = await records(request_id)
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
async def keyed(slow_api):
    key, secret = await orm(issue_key, name=f"usage-{uuid.uuid4().hex[:6]}")

    async def post(path, body, **headers):
        """The response, read to its end, and its request id."""
        rid = f"usage-{uuid.uuid4().hex}"
        response = await slow_api.post(path, body, {**bearer(secret), "X-Request-ID": rid, **headers})
        response.content = await response.body()
        return response, rid

    post.key, post.secret, post.api = key, secret, slow_api
    return post


async def test_a_non_streamed_answer_is_recorded_with_its_counts(keyed):
    response, rid = await keyed("/v1/chat/completions", {
        "model": MODEL_ID, "messages": [{"role": "user", "content": "What is 3 plus 4?"}], "user": "alice"})
    usage = json.loads(response.content)["usage"]
    record = await record_for(rid)
    assert (record.api_key_id, record.key_prefix, record.model, record.endpoint, record.streamed) == (
        keyed.key.pk, keyed.key.prefix, MODEL_ID, "chat.completions", False)
    assert (record.prompt_tokens, record.completion_tokens, record.cached_tokens) == (
        usage["prompt_tokens"], usage["completion_tokens"], 0)
    assert (record.finish_reason, record.status_code, record.error_code, record.client_disconnected, record.user) == (
        "stop", 200, "", False, "alice")
    assert 0 < record.time_to_first_token_ms <= record.duration_ms
    await orm(keyed.key.refresh_from_db)
    assert keyed.key.last_used_at is not None


async def test_a_streamed_answer_records_what_the_client_received(keyed):
    response, rid = await keyed("/v1/completions", {
        "model": MODEL_ID, "prompt": "<|im_start|>user\nCount from 1 to 30.<|im_end|>\n<|im_start|>assistant\n",
        "stream": True, "stream_options": {"include_usage": True},
    })
    events = sse_body(response.content)
    text = "".join(e["choices"][0]["text"] for e in events[:-2])
    assert text == " ".join(str(i) for i in range(1, 31))
    usage = events[-2]["usage"]
    record = await record_for(rid)
    assert (record.endpoint, record.streamed, record.finish_reason, record.status_code) == ("completions", True, "stop", 200)
    assert (record.prompt_tokens, record.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert record.completion_tokens == 30  # one token per number


async def open_stream(api, secret, body):
    """A streamed chat completion, still open: its request id, response and chunks."""
    rid = f"usage-{uuid.uuid4().hex}"
    response = await api.post("/v1/chat/completions", {"model": MODEL_ID, "stream": True, **body},
                              {**bearer(secret), "X-Request-ID": rid})
    assert response.status == 200
    return rid, response, response.chunks()


async def test_a_disconnected_stream_records_the_tokens_generated_so_far(slow_api):
    _, secret = await orm(issue_key, name="leaver")
    rid, response, chunks = await open_stream(slow_api, secret, {"messages": [{"role": "user", "content": count_prompt(200)}]})
    received = [await anext(chunks) for _ in range(4)]
    await response.disconnect()
    record = await record_for(rid)
    assert len(received) == 4 and all(chunk.startswith(b"data: ") for chunk in received)
    assert (record.client_disconnected, record.status_code, record.streamed, record.finish_reason) == (True, 200, True, "")
    assert 1 <= record.completion_tokens < 190


@pytest.mark.parametrize("body, status, code, model", [
    ({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "invalid_type", MODEL_ID),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found", "gpt-9"),
    ({"model": MODEL_ID, "messages": [{"role": "user", "content": "tiger " * 600}]}, 400, "context_length_exceeded", MODEL_ID),
])
async def test_a_refused_request_is_recorded_with_its_status_and_no_tokens(keyed, body, status, code, model):
    response, rid = await keyed("/v1/chat/completions", body)
    assert response.status == status
    record = await record_for(rid)
    assert (record.status_code, record.error_code, record.model, record.prompt_tokens, record.completion_tokens) == (
        status, code, model, 0, 0)


async def test_a_model_name_with_a_nul_is_recorded_without_it(keyed):
    """PostgreSQL's text cannot hold NUL: kept, the record (and its batch) would be lost."""
    response, rid = await keyed("/v1/chat/completions", {"model": "no\u0000such", "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status == 400
    record = await record_for(rid)
    assert (record.status_code, record.error_code, record.model) == (400, "invalid_value", "nosuch")


async def test_listing_models_is_recorded_too(keyed):
    response = await keyed.api.get("/v1/models", {**bearer(keyed.secret), "X-Request-ID": "usage-models-1"})
    assert response.status == 200
    await response.body()
    record = await record_for("usage-models-1")
    assert (record.endpoint, record.status_code, record.api_key_id) == ("models", 200, keyed.key.pk)


async def test_an_unauthenticated_request_is_not_recorded(slow_api):
    response = await slow_api.get("/v1/models", {"X-Request-ID": "usage-anonymous-1"})
    assert response.status == 401
    await response.body()  # done: a record, if there were one, is queued now
    assert await records("usage-anonymous-1") == []


async def test_a_key_deleted_after_use_is_401_and_its_requests_leave_no_record(keyed):
    """The server knows the key from an earlier request; once it is deleted, its next
    requests (valid body or not) are refused as unknown and, like any request without a
    key, are not recorded; the records of other requests are unaffected."""
    first, first_rid = await keyed("/v1/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]})
    assert first.status == 200
    await record_for(first_rid)  # settled: deleting the key now races with nothing
    prefix = keyed.key.prefix
    await orm(keyed.key.delete)
    valid, valid_rid = await keyed("/v1/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]})
    invalid, invalid_rid = await keyed("/v1/chat/completions", {"model": MODEL_ID})
    assert (valid.status, json.loads(valid.content)["error"]["message"]) == (401, f"The API key {prefix}… no longer exists.")
    assert (invalid.status, json.loads(invalid.content)["error"]["code"]) == (401, "invalid_api_key")
    _, other_secret = await orm(issue_key, name="other-after-delete")
    other = await keyed.api.get("/v1/models", {**bearer(other_secret), "X-Request-ID": invalid_rid + "-other"})
    assert other.status == 200
    await other.body()
    assert (await record_for(invalid_rid + "-other")).status_code == 200
    assert await records(valid_rid, invalid_rid) == []


async def test_a_key_deleted_mid_stream_keeps_the_record_without_the_key(slow_api):
    key, secret = await orm(issue_key, name="deleted-mid-stream")
    body = {"messages": [{"role": "user", "content": count_prompt(30)}], "stream_options": {"include_usage": True}}
    rid, response, chunks = await open_stream(slow_api, secret, body)
    assert (await anext(chunks)).startswith(b"data: ")
    prefix = key.prefix
    await orm(key.delete)
    rest = b"".join([chunk async for chunk in chunks])
    events = [json.loads(line[6:]) for line in rest.decode().splitlines() if line.startswith("data: {")]
    record = await record_for(rid)
    assert (record.api_key, record.key_prefix, record.status_code, record.finish_reason) == (None, prefix, 200, "stop")
    assert record.completion_tokens == events[-1]["usage"]["completion_tokens"] == 30
