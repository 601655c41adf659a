"""Overload: a bounded queue per model. Past MAX_QUEUED_REQUESTS generations waiting for
a batch slot, a request is refused at once with 503 and Retry-After (over HTTP and on the
chat page), consuming no limit; a waiting request whose client leaves is dropped from
the engine's queue without ever starting.

The engine here serves 4 sequences a step (onnxruntime-genai 0.18 on CPU) and sleeps
before each step, so that four long streams hold every slot while a test acts; the
tests leave those streams to end them. The API is driven in-process (tests/asgi.py), the
chat page's socket through the ASGI application Daphne serves for WebSockets."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from channels.testing import WebsocketCommunicator

from accounts.books import books
from accounts.models import Lease, UsageRecord
from chat.routing import websocket_application
from demomodel.corpus import count_prompt, repeat_prompt
from tests.asgi import Exchange, InProcessAPI
from tests.conftest import MODEL_ID, bearer, engine_state, issue_key, make_user, model_in_process, wait_until

HELLO = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]}
LONG = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(200)}], "max_tokens": 400}
BATCH = 4  # sequences one engine step serves here (the tests check it)


@pytest.fixture(scope="module")
def engine(live_db):
    """The demo model served in this process, slow enough (100 ms a step) that a stream of
    some 200 tokens lasts 20 s."""
    with model_in_process(0.1) as worker:
        assert worker.batch_limit == BATCH
        yield worker


@pytest.fixture
def busy(engine, settings) -> InProcessAPI:
    """The API in-process, its queue holding 2 waiting generations per model (the bound
    is read at each request)."""
    settings.MAX_QUEUED_REQUESTS = 2
    return InProcessAPI()


@pytest.fixture
def key(live_db):
    return issue_key(name=f"overload-{uuid.uuid4().hex[:6]}")


class Stream:
    """A streamed chat completion held open after its first event (the role chunk, sent
    before the engine begins the turn); leaving disconnects its client."""

    @classmethod
    async def open(cls, api: InProcessAPI, secret: str, body=LONG) -> Stream:
        stream = cls()
        stream.rid = f"overload-{uuid.uuid4().hex}"
        stream.response = await api.post("/v1/chat/completions", {**body, "stream": True},
                                         {**bearer(secret), "X-Request-ID": stream.rid})
        assert stream.response.status == 200
        first = await anext(stream.response.chunks())
        assert first.startswith(b"data: ")
        return stream

    def leave(self):
        self.response.leave()


async def fill_the_batch(api, secret) -> list[Stream]:
    """BATCH long streams, each begun before the next is sent (a burst would wait for the
    engine to re-form its batch, and count as waiting meanwhile)."""
    streams = []
    for running in range(1, BATCH + 1):
        streams.append(await Stream.open(api, secret))
        await wait_until(lambda: state_is(api, running=running, queued=0))
    return streams


async def state_is(api, **expected) -> dict | None:
    state = await engine_state(api)
    return state if all(state[name] == value for name, value in expected.items()) else None


async def queue_up(api, secret, count: int) -> list[Stream]:
    streams = [await Stream.open(api, secret) for _ in range(count)]
    await wait_until(lambda: state_is(api, waiting=count, queued=count))
    return streams


async def leave_all(api, streams) -> None:
    for stream in streams:
        stream.leave()
    await wait_until(lambda: state_is(api, running=0, waiting=0, queued=0))


async def overloaded(response, waiting: int) -> int:
    """Check the 503's exact body; return its Retry-After."""
    assert response.status == 503
    assert await response.json() == {"error": {
        "message": f"The engine is currently overloaded: the model '{MODEL_ID}' has {waiting} generations waiting "
                   "for a slot, and takes at most 2. Please try again later.",
        "type": "server_error", "param": None, "code": "engine_overloaded"}}
    return int(response.headers["retry-after"])


async def record_for(request_id: str) -> UsageRecord:
    async def written():
        await _flushed()
        return await UsageRecord.objects.filter(request_id=request_id).select_related("api_key").afirst()

    return await wait_until(written)


async def _flushed() -> None:
    assert await asyncio.to_thread(books.flush)


async def test_past_the_queue_bound_a_request_is_refused_at_once_with_503_and_retry_after(busy, key):
    api_key, secret = key
    running = await fill_the_batch(busy, secret)
    waiting = await queue_up(busy, secret, 1)
    try:
        rid = f"overload-{uuid.uuid4().hex}"
        # One waits and the bound is 2: a request with n=2 brings two turns, one too many.
        two = await busy.post("/v1/chat/completions", {**HELLO, "n": 2}, {**bearer(secret), "X-Request-ID": rid})
        assert await overloaded(two, 1) >= 1
        waiting.append(await Stream.open(busy, secret))
        await wait_until(lambda: state_is(busy, waiting=2, queued=2))
        refused = await busy.post("/v1/chat/completions", HELLO, {**bearer(secret), "X-Request-ID": rid + "-1"})
        assert await overloaded(refused, 2) >= 1
        # Answered while the long streams still hold the batch and the others wait.
        engine = await engine_state(busy)
        assert (engine["running"], engine["waiting"], engine["queued"]) == (BATCH, 2, 2)
    finally:
        await leave_all(busy, running + waiting)

    for request_id in (rid, rid + "-1"):
        record = await record_for(request_id)
        assert (record.api_key, record.status_code, record.error_code, record.prompt_tokens,
                record.completion_tokens, record.client_disconnected) == (
            api_key, 503, "engine_overloaded", 0, 0, False)
    # Refused before admission: no lease was ever taken for them.
    assert not await Lease.objects.filter(request_id__in=[rid, rid + "-1"]).aexists()

    again = await busy.post("/v1/chat/completions", HELLO, bearer(secret))
    assert again.status == 200
    assert (await again.json())["choices"][0]["message"]["content"] == "Hello! How can I help you?"


def logged_in_cookie(user) -> str:
    """The session cookie of ``user`` logged in through the login form."""
    from django.test import Client

    from tests.conftest import PASSWORD

    client = Client(enforce_csrf_checks=True)
    client.get("/login/")
    response = client.post("/login/", {"username": user.username, "password": PASSWORD,
                                       "csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    assert response.status_code == 302, response.content
    return client.cookies["sessionid"].value


async def test_a_chat_page_turn_past_the_queue_bound_gets_the_same_503(busy, key):
    _, secret = key
    user = await asyncio.to_thread(make_user, "overload")
    cookie = await asyncio.to_thread(logged_in_cookie, user)
    running = await fill_the_batch(busy, secret)
    waiting = await queue_up(busy, secret, 2)
    try:
        page = WebsocketCommunicator(websocket_application, "/ws/chat", headers=[
            (b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1"), (b"cookie", f"sessionid={cookie}".encode())])
        opened, _ = await page.connect(timeout=10)
        assert opened
        await page.send_to(text_data=json.dumps({"type": "chat", "id": "t", "model": MODEL_ID,
                                                 "messages": [{"role": "user", "content": repeat_prompt("red fox")}]}))
        frame = json.loads(await page.receive_from(timeout=30))
        await page.disconnect()
    finally:
        await leave_all(busy, running + waiting)
    assert (frame["type"], frame["id"], frame["status"]) == ("error", "t", 503)
    assert frame["error"] == {
        "message": f"The engine is currently overloaded: the model '{MODEL_ID}' has 2 generations waiting for a slot, "
                   "and takes at most 2. Please try again later.",
        "type": "server_error", "param": None, "code": "engine_overloaded"}
    record = await record_for(frame["request_id"])
    assert (record.endpoint, record.status_code, record.error_code, record.completion_tokens) == (
        "chat.page", 503, "engine_overloaded", 0)


def send_without_reading(api: InProcessAPI, secret: str, body: dict, request_id: str) -> Exchange:
    """A chat completion request whose response is not read: leaving is the client
    closing its connection."""
    return api.post_later("/v1/chat/completions", body, {**bearer(secret), "X-Request-ID": request_id})


async def test_waiting_requests_whose_clients_leave_are_dropped_without_ever_starting(busy, key):
    _, secret = key
    running = await fill_the_batch(busy, secret)
    try:
        before = await engine_state(busy)
        plain, streamed = f"overload-{uuid.uuid4().hex}", f"overload-{uuid.uuid4().hex}"
        clients = [send_without_reading(busy, secret, HELLO, plain),
                   send_without_reading(busy, secret, {**HELLO, "stream": True}, streamed)]
        await wait_until(lambda: state_is(busy, waiting=2, queued=2))
        await wait_until(lambda: _leases_held(plain, streamed, count=2))  # both admitted
        for client in clients:
            client.leave()
        # Out of the engine's queue, never begun; the long streams run on.
        after = await wait_until(lambda: state_is(busy, waiting=0, queued=0))
        assert after["turns_started"] == before["turns_started"]
        assert after["running"] == BATCH
    finally:
        await leave_all(busy, running)
    for request_id, streamed_flag in ((plain, False), (streamed, True)):
        record = await record_for(request_id)
        assert (record.status_code, record.client_disconnected, record.streamed, record.prompt_tokens,
                record.completion_tokens, record.finish_reason) == (499, True, streamed_flag, 0, 0, "")
    await wait_until(lambda: _leases_held(plain, streamed, count=0))


async def _leases_held(*request_ids: str, count: int) -> bool:
    return await Lease.objects.filter(request_id__in=request_ids).acount() == count
