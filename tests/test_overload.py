"""Overload: a bounded queue per model. Past MAX_QUEUED_REQUESTS generations waiting for
a batch slot, a request is refused at once with 503 and Retry-After (over HTTP and on the
chat page), consuming no limit; a waiting request whose client leaves is dropped from
the engine's queue without ever starting.

The engine here serves 4 sequences a step (onnxruntime-genai 0.18 on CPU) and sleeps
before each step, so that four long streams hold every slot while a test acts; the
tests leave those streams to end them."""

from __future__ import annotations

import json
import socket
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from accounts.models import Lease, UsageRecord
from demomodel.corpus import count_prompt, repeat_prompt
from tests.conftest import MODEL_ID, bearer, chat_socket, issue_key, log_in, make_user, start_server, wait_for

HELLO = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]}
LONG = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(200)}], "max_tokens": 400}
BATCH = 4  # sequences one engine step serves here (the tests check it)


@pytest.fixture(scope="module")
def busy(tmp_path_factory, live_db):
    """A server whose queue holds 2 waiting generations per model, its engine slow enough
    (100 ms a step) that a stream of some 200 tokens lasts 20 s."""
    live = start_server(tmp_path_factory.mktemp("overload"), ENGINE_STEP_DELAY_MS=100, MAX_QUEUED_REQUESTS=2)
    assert live.engine()["batch_limit"] == BATCH
    yield live
    live.stop()


@pytest.fixture
def key(live_db):
    return issue_key(name=f"overload-{uuid.uuid4().hex[:6]}")


class Stream:
    """A streamed chat completion held open after its first event (the role chunk, sent
    before the engine begins the turn); leaving closes the connection."""

    def __init__(self, server, secret, body=LONG):
        self.rid = f"overload-{uuid.uuid4().hex}"
        self.client = httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(secret))
        self.context = self.client.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                                          headers={"X-Request-ID": self.rid})
        response = self.context.__enter__()
        assert response.status_code == 200
        self.lines = response.iter_lines()
        assert next(self.lines).startswith("data: ")

    def leave(self):
        self.context.__exit__(None, None, None)
        self.client.close()


def fill_the_batch(server, secret) -> list[Stream]:
    """BATCH long streams, each begun before the next is sent (a burst would wait for the
    engine to re-form its batch, and count as waiting meanwhile)."""
    streams = []
    for running in range(1, BATCH + 1):
        streams.append(Stream(server, secret))
        wait_for(lambda: (e := server.engine())["running"] == running and e["queued"] == 0)
    return streams


def queue_up(server, secret, count: int) -> list[Stream]:
    streams = [Stream(server, secret) for _ in range(count)]
    wait_for(lambda: (e := server.engine())["waiting"] == count and e["queued"] == count)
    return streams


def leave_all(server, streams) -> None:
    for stream in streams:
        stream.leave()
    wait_for(lambda: (e := server.engine())["running"] == 0 and e["waiting"] == 0 and e["queued"] == 0)


def overloaded(response: httpx.Response, waiting: int) -> int:
    """Check the 503's exact body; return its Retry-After."""
    assert response.status_code == 503
    assert response.json() == {"error": {
        "message": f"The engine is currently overloaded: the model '{MODEL_ID}' has {waiting} generations waiting "
                   "for a slot, and takes at most 2. Please try again later.",
        "type": "server_error", "param": None, "code": "engine_overloaded"}}
    return int(response.headers["Retry-After"])


def record_for(request_id: str) -> UsageRecord:
    return wait_for(lambda: UsageRecord.objects.filter(request_id=request_id).first())


def test_past_the_queue_bound_a_request_is_refused_at_once_with_503_and_retry_after(busy, key):
    api_key, secret = key
    running = fill_the_batch(busy, secret)
    waiting = queue_up(busy, secret, 1)
    try:
        rid = f"overload-{uuid.uuid4().hex}"
        # One waits and the bound is 2: a request with n=2 brings two turns, one too many.
        two = httpx.post(f"{busy.base_url}/v1/chat/completions", json={**HELLO, "n": 2}, timeout=60,
                         headers={**bearer(secret), "X-Request-ID": rid})
        assert overloaded(two, 1) >= 1
        waiting.append(Stream(busy, secret))
        wait_for(lambda: (e := busy.engine())["waiting"] == 2 and e["queued"] == 2)
        refused = httpx.post(f"{busy.base_url}/v1/chat/completions", json=HELLO, timeout=60,
                             headers={**bearer(secret), "X-Request-ID": rid + "-1"})
        assert overloaded(refused, 2) >= 1
        # Answered while the long streams still hold the batch and the others wait.
        engine = busy.engine()
        assert (engine["running"], engine["waiting"], engine["queued"]) == (BATCH, 2, 2)
    finally:
        leave_all(busy, running + waiting)

    for request_id in (rid, rid + "-1"):
        record = record_for(request_id)
        assert (record.api_key, record.status_code, record.error_code, record.prompt_tokens,
                record.completion_tokens, record.client_disconnected) == (
            api_key, 503, "engine_overloaded", 0, 0, False)
    # Refused before admission: no lease was ever taken for them.
    assert not Lease.objects.filter(request_id__in=[rid, rid + "-1"]).exists()

    again = httpx.post(f"{busy.base_url}/v1/chat/completions", json=HELLO, timeout=60, headers=bearer(secret))
    assert again.status_code == 200
    assert again.json()["choices"][0]["message"]["content"] == "Hello! How can I help you?"


def test_a_chat_page_turn_past_the_queue_bound_gets_the_same_503(busy, key):
    _, secret = key
    user = make_user("overload")
    running = fill_the_batch(busy, secret)
    waiting = queue_up(busy, secret, 2)
    try:
        with log_in(busy, user.username) as client, chat_socket(busy, client) as page:
            page.send(json.dumps({"type": "chat", "id": "t", "model": MODEL_ID,
                                  "messages": [{"role": "user", "content": repeat_prompt("red fox")}]}))
            frame = json.loads(page.recv(timeout=30))
    finally:
        leave_all(busy, running + waiting)
    assert (frame["type"], frame["id"], frame["status"]) == ("error", "t", 503)
    assert frame["error"] == {
        "message": f"The engine is currently overloaded: the model '{MODEL_ID}' has 2 generations waiting for a slot, "
                   "and takes at most 2. Please try again later.",
        "type": "server_error", "param": None, "code": "engine_overloaded"}
    record = record_for(frame["request_id"])
    assert (record.endpoint, record.status_code, record.error_code, record.completion_tokens) == (
        "chat.page", 503, "engine_overloaded", 0)


def send_raw(server, secret: str, body: dict, request_id: str) -> socket.socket:
    """A chat completion request written on a socket of its own, not read: closing the
    socket is the client leaving."""
    address = urlsplit(server.base_url)
    connection = socket.create_connection((address.hostname, address.port), timeout=10)
    payload = json.dumps(body).encode()
    connection.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\nX-Request-ID: {request_id}\r\nContent-Length: {len(payload)}\r\n\r\n"
        .encode() + payload)
    return connection


def test_waiting_requests_whose_clients_leave_are_dropped_without_ever_starting(busy, key):
    _, secret = key
    running = fill_the_batch(busy, secret)
    try:
        before = busy.engine()
        plain, streamed = f"overload-{uuid.uuid4().hex}", f"overload-{uuid.uuid4().hex}"
        sockets = [send_raw(busy, secret, HELLO, plain), send_raw(busy, secret, {**HELLO, "stream": True}, streamed)]
        wait_for(lambda: (e := busy.engine())["waiting"] == 2 and e["queued"] == 2)
        wait_for(lambda: Lease.objects.filter(request_id__in=[plain, streamed]).count() == 2)  # both admitted
        for connection in sockets:
            connection.close()
        # Out of the engine's queue, never begun; the long streams run on.
        after = wait_for(lambda: (e := busy.engine())["waiting"] == 0 and e["queued"] == 0 and e)
        assert after["turns_started"] == before["turns_started"]
        assert after["running"] == BATCH
    finally:
        leave_all(busy, running)
    for request_id, streamed_flag in ((plain, False), (streamed, True)):
        record = record_for(request_id)
        assert (record.status_code, record.client_disconnected, record.streamed, record.prompt_tokens,
                record.completion_tokens, record.finish_reason) == (499, True, streamed_flag, 0, 0, "")
    wait_for(lambda: not Lease.objects.filter(request_id__in=[plain, streamed]).exists())
