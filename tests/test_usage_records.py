"""Exactly one usage record per authenticated request, with the counts the client saw:
non-streamed, streamed, disconnected, refused and failed."""

import json
import time
import uuid
from contextlib import contextmanager

import httpx
import pytest

from accounts.models import UsageRecord
from demomodel.corpus import count_prompt
from tests.conftest import MODEL_ID, bearer, issue_key, sse_events, start_server


def record_for(request_id, timeout=10.0) -> UsageRecord:
    """The request's record (written when the response closes, just after the last byte)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = list(UsageRecord.objects.filter(request_id=request_id))
        if records:
            time.sleep(0.2)  # a second record would show up now
            records = list(UsageRecord.objects.filter(request_id=request_id))
            assert len(records) == 1
            return records[0]
        time.sleep(0.05)
    raise AssertionError(f"no usage record for {request_id}")


@pytest.fixture
def keyed(server, live_db):
    key, secret = issue_key(name=f"usage-{uuid.uuid4().hex[:6]}")

    def post(path, body, **headers):
        rid = f"usage-{uuid.uuid4().hex}"
        response = httpx.post(f"{server.base_url}{path}", json=body, timeout=60,
                              headers={**bearer(secret), "X-Request-ID": rid, **headers})
        return response, rid

    post.key, post.secret, post.server = key, secret, server
    return post


def test_a_non_streamed_answer_is_recorded_with_its_counts(keyed):
    response, rid = keyed("/v1/chat/completions", {
        "model": MODEL_ID, "messages": [{"role": "user", "content": "What is 3 plus 4?"}], "user": "alice"})
    usage = response.json()["usage"]
    record = record_for(rid)
    assert (record.api_key, record.key_prefix, record.model, record.endpoint, record.streamed) == (
        keyed.key, keyed.key.prefix, MODEL_ID, "chat.completions", False)
    assert (record.prompt_tokens, record.completion_tokens, record.cached_tokens) == (
        usage["prompt_tokens"], usage["completion_tokens"], 0)
    assert (record.finish_reason, record.status_code, record.error_code, record.client_disconnected, record.user) == (
        "stop", 200, "", False, "alice")
    assert 0 < record.time_to_first_token_ms <= record.duration_ms
    keyed.key.refresh_from_db()
    assert keyed.key.last_used_at is not None


def test_a_streamed_answer_records_what_the_client_received(keyed):
    rid = f"usage-{uuid.uuid4().hex}"
    with httpx.Client(base_url=keyed.server.base_url, timeout=60, headers=bearer(keyed.secret)) as client:
        with client.stream("POST", "/v1/completions", headers={"X-Request-ID": rid}, json={
            "model": MODEL_ID, "prompt": "<|im_start|>user\nCount from 1 to 30.<|im_end|>\n<|im_start|>assistant\n",
            "stream": True, "stream_options": {"include_usage": True},
        }) as response:
            events = sse_events(response)
    text = "".join(e["choices"][0]["text"] for e in events[:-2])
    assert text == " ".join(str(i) for i in range(1, 31))
    usage = events[-2]["usage"]
    record = record_for(rid)
    assert (record.endpoint, record.streamed, record.finish_reason, record.status_code) == ("completions", True, "stop", 200)
    assert (record.prompt_tokens, record.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert record.completion_tokens == 30  # one token per number


@pytest.fixture(scope="module")
def slow(tmp_path_factory, live_db):
    """A server whose engine takes 5 ms a step, so that a test can act mid-stream."""
    server = start_server(tmp_path_factory.mktemp("slow"), ENGINE_STEP_DELAY_MS=5)
    yield server
    server.stop()


@contextmanager
def open_stream(server, secret, body):
    """A streamed chat completion: yields its request id and its lines, still open."""
    rid = f"usage-{uuid.uuid4().hex}"
    with httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(secret)) as client:
        with client.stream("POST", "/v1/chat/completions", headers={"X-Request-ID": rid},
                           json={"model": MODEL_ID, "stream": True, **body}) as response:
            yield rid, response.iter_lines()


def test_a_disconnected_stream_records_the_tokens_generated_so_far(slow):
    _, secret = issue_key(name="leaver")
    with open_stream(slow, secret, {"messages": [{"role": "user", "content": count_prompt(200)}]}) as (rid, lines):
        received = [next(lines) for _ in range(4)]
    record = record_for(rid)
    assert len(received) == 4
    assert (record.client_disconnected, record.status_code, record.streamed, record.finish_reason) == (True, 200, True, "")
    assert 1 <= record.completion_tokens < 190


@pytest.mark.parametrize("body, status, code, model", [
    ({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "invalid_type", MODEL_ID),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found", "gpt-9"),
    ({"model": MODEL_ID, "messages": [{"role": "user", "content": "tiger " * 600}]}, 400, "context_length_exceeded", MODEL_ID),
])
def test_a_refused_request_is_recorded_with_its_status_and_no_tokens(keyed, body, status, code, model):
    response, rid = keyed("/v1/chat/completions", body)
    assert response.status_code == status
    record = record_for(rid)
    assert (record.status_code, record.error_code, record.model, record.prompt_tokens, record.completion_tokens) == (
        status, code, model, 0, 0)


def test_a_model_name_with_a_nul_is_recorded_without_it(keyed):
    """PostgreSQL's text cannot hold NUL: kept, the record (and its batch) would be lost."""
    response, rid = keyed("/v1/chat/completions", {"model": "no\u0000such", "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 400
    record = record_for(rid)
    assert (record.status_code, record.error_code, record.model) == (400, "invalid_value", "nosuch")


def test_listing_models_is_recorded_too(keyed):
    response = httpx.get(f"{keyed.server.base_url}/v1/models", headers={**bearer(keyed.secret), "X-Request-ID": "usage-models-1"})
    assert response.status_code == 200
    record = record_for("usage-models-1")
    assert (record.endpoint, record.status_code, record.api_key) == ("models", 200, keyed.key)


def test_an_unauthenticated_request_is_not_recorded(server, live_db):
    response = httpx.get(f"{server.base_url}/v1/models", headers={"X-Request-ID": "usage-anonymous-1"})
    assert response.status_code == 401
    time.sleep(0.3)
    assert not UsageRecord.objects.filter(request_id="usage-anonymous-1").exists()


def test_a_key_deleted_after_use_is_401_and_its_requests_leave_no_record(keyed):
    """The server knows the key from an earlier request; once it is deleted, its next
    requests (valid body or not) are refused as unknown and, like any request without a
    key, are not recorded; the records of other requests are unaffected."""
    first, first_rid = keyed("/v1/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]})
    assert first.status_code == 200
    record_for(first_rid)  # settled: deleting the key now races with nothing
    prefix = keyed.key.prefix
    keyed.key.delete()
    valid, valid_rid = keyed("/v1/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]})
    invalid, invalid_rid = keyed("/v1/chat/completions", {"model": MODEL_ID})
    assert (valid.status_code, valid.json()["error"]["message"]) == (401, f"The API key {prefix}… no longer exists.")
    assert (invalid.status_code, invalid.json()["error"]["code"]) == (401, "invalid_api_key")
    _, other_secret = issue_key(name="other-after-delete")
    other = httpx.get(f"{keyed.server.base_url}/v1/models", headers={**bearer(other_secret), "X-Request-ID": invalid_rid + "-other"})
    assert other.status_code == 200
    assert record_for(invalid_rid + "-other").status_code == 200
    assert not UsageRecord.objects.filter(request_id__in=[valid_rid, invalid_rid]).exists()


def test_a_key_deleted_mid_stream_keeps_the_record_without_the_key(slow):
    key, secret = issue_key(name="deleted-mid-stream")
    body = {"messages": [{"role": "user", "content": count_prompt(30)}], "stream_options": {"include_usage": True}}
    with open_stream(slow, secret, body) as (rid, lines):
        assert next(lines).startswith("data: ")
        prefix = key.prefix
        key.delete()
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    record = record_for(rid)
    assert (record.api_key, record.key_prefix, record.status_code, record.finish_reason) == (None, prefix, 200, "stop")
    assert record.completion_tokens == events[-1]["usage"]["completion_tokens"] == 30
