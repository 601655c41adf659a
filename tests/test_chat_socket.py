"""The chat page's WebSocket, spoken to directly: who may open it, what a turn sends
back, how Stop and a closed page free their slots, and the usage records of each turn.

Driven in-process: the socket through Channels' WebsocketCommunicator on the ASGI
application Daphne serves for WebSockets (chat.routing.websocket_application, mounted by
llmserver.asgi), with the configured channel layer (Redis when REDIS_URL is set); the
session logged in through the login form with Django's AsyncClient; the demo model
served in this process at 5 ms a step, so that a test can act mid-generation."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import AsyncClient

from accounts.books import books
from accounts.models import APIKey, KeyKind, Lease, UsageRecord
from chat.routing import websocket_application
from demomodel.corpus import count_prompt, repeat_prompt
from tests.asgi import InProcessAPI
from tests.conftest import MODEL_ID, PASSWORD, engine_state, make_user, model_in_process, wait_until

HOST = "127.0.0.1:8000"  # the server, as the browser addressed it
SAME_ORIGIN = f"http://{HOST}"


@pytest.fixture(scope="module")
def engine(live_db):
    """The demo model served in-process at 5 ms a step."""
    with model_in_process(0.005) as worker:
        yield worker


@pytest.fixture
def user(engine):
    return make_user("chat")


async def log_in(username: str, password: str = PASSWORD) -> AsyncClient:
    """A client logged in through the login form (its CSRF check on), as a browser is."""
    client = AsyncClient(enforce_csrf_checks=True)
    await client.get("/login/")
    response = await client.post("/login/", {"username": username, "password": password,
                                             "csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    assert response.status_code == 302, response.content
    return client


class Page:
    """A chat socket as the page holds it."""

    def __init__(self, communicator: WebsocketCommunicator):
        self.communicator = communicator
        self.close_code: int | None = None

    async def send(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def receive(self) -> dict:
        return json.loads(await self.communicator.receive_from(timeout=30))

    async def until_end(self, chat_id: str) -> list[dict]:
        """The frames of one turn up to its "done" or "error"."""
        frames = []
        while True:
            frame = await self.receive()
            assert frame["id"] == chat_id, frame
            frames.append(frame)
            if frame["type"] in ("done", "error"):
                return frames

    async def close(self) -> None:
        """The page goes away; returns once the consumer has handled it (its turns
        cancelled and handed to the books)."""
        await self.communicator.disconnect(timeout=10)


async def handshake(client: AsyncClient | None = None, *, origin: str | None = SAME_ORIGIN,
                    cookies: dict | None = None) -> tuple[WebsocketCommunicator, bool, int | None]:
    """A WebSocket handshake to the chat consumer, with the session of ``client`` (or
    ``cookies``) and an Origin header (None: none)."""
    cookies = {name: morsel.value for name, morsel in client.cookies.items()} if client is not None else cookies or {}
    headers = [(b"host", HOST.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if cookies:
        headers.append((b"cookie", "; ".join(f"{name}={value}" for name, value in cookies.items()).encode()))
    communicator = WebsocketCommunicator(websocket_application, "/ws/chat", headers=headers)
    opened, code = await communicator.connect(timeout=10)
    return communicator, opened, code


async def chat_socket(client: AsyncClient) -> Page:
    communicator, opened, code = await handshake(client)
    assert opened, code
    return Page(communicator)


async def chat_key(user) -> APIKey:
    return await APIKey.objects.aget(owner=user, kind=KeyKind.CHAT)


async def records(user) -> list:
    """The user's chat turns' records, once the books have written what was queued."""
    assert await asyncio.to_thread(books.flush)
    return [record async for record in UsageRecord.objects.filter(
        api_key__owner=user, api_key__kind=KeyKind.CHAT).order_by("started_at")]


def turn(chat_id: str, content: str, **fields) -> str:
    return json.dumps({"type": "chat", "id": chat_id, "model": MODEL_ID,
                       "messages": [{"role": "user", "content": content}], **fields})


def answer(frames: list[dict]) -> str:
    return "".join(frame["text"] for frame in frames if frame["type"] == "delta")


# Daphne answers a handshake the application closed before accepting with a 403; the
# consumer closes with 4401 for a session that is not logged in, the origin check with 1000.
NOT_LOGGED_IN = (False, 4401)
OTHER_ORIGIN = (False, 1000)


async def test_an_anonymous_socket_is_refused(engine):
    _, opened, code = await handshake()
    assert (opened, code) == NOT_LOGGED_IN


async def test_a_socket_from_another_site_is_refused_even_with_a_session(user):
    client = await log_in(user.username)
    for origin in ("https://evil.example.com", None):
        _, opened, code = await handshake(client, origin=origin)
        assert (opened, code) == OTHER_ORIGIN, origin


async def test_a_logged_out_session_no_longer_opens_a_socket(user):
    client = await log_in(user.username)
    cookies = {name: morsel.value for name, morsel in client.cookies.items()}
    await client.post("/logout/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    _, opened, code = await handshake(cookies=cookies)  # the old session id, replayed
    assert (opened, code) == NOT_LOGGED_IN


async def test_a_turn_streams_the_answer_and_is_recorded_against_the_users_chat_key(user):
    socket = await chat_socket(await log_in(user.username))
    await socket.send(turn("t1", repeat_prompt("tiger lemon"), temperature=0, max_tokens=20))
    frames = await socket.until_end("t1")
    await socket.close()
    start, done = frames[0], frames[-1]
    assert start["type"] == "start"
    assert answer(frames) == "tiger lemon"
    assert (done["type"], done["finish_reason"]) == ("done", "stop")
    record = (await records(user))[0]
    assert (record.request_id, record.endpoint, record.model, record.status_code, record.streamed) == (
        start["request_id"], "chat.page", MODEL_ID, 200, True)
    assert (record.prompt_tokens, record.completion_tokens) == (done["usage"]["prompt_tokens"], done["usage"]["completion_tokens"])
    assert (record.finish_reason, record.client_disconnected, record.user) == ("stop", False, user.username)
    key = await chat_key(user)
    assert (key.name, key.max_concurrency) == (f"Chat: {user.username}", 2)


async def test_the_conversation_so_far_and_the_system_prompt_reach_the_model(user):
    messages = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "2 plus 3 is 5."},
        {"role": "user", "content": repeat_prompt("red boat")},
    ]
    socket = await chat_socket(await log_in(user.username))
    await socket.send(json.dumps({"type": "chat", "id": "t", "model": MODEL_ID, "messages": messages, "temperature": 0}))
    frames = await socket.until_end("t")
    await socket.close()
    assert answer(frames) == "red boat"
    # The prompt is the whole conversation: far more than the last message's tokens.
    assert frames[-1]["usage"]["prompt_tokens"] > 30


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


async def test_a_tool_call_comes_whole_in_its_own_frame_and_the_tools_result_is_answered(user):
    """The demo model calls get_weather for this question when offered it, and answers
    from the result (tests/test_tools.py asks the same through the API)."""
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    socket = await chat_socket(await log_in(user.username))
    await socket.send(json.dumps({"type": "chat", "id": "call", "model": MODEL_ID, "messages": question,
                                  "tools": [WEATHER], "temperature": 0}))
    frames = await socket.until_end("call")
    assert [frame["type"] for frame in frames] == ["start", "tool_calls", "done"]
    [call] = frames[1]["tool_calls"]
    assert (call["type"], call["function"], frames[-1]["finish_reason"]) == (
        "function", {"name": "get_weather", "arguments": '{"city": "Paris"}'}, "tool_calls")
    await socket.send(json.dumps({"type": "chat", "id": "result", "model": MODEL_ID, "tools": [WEATHER], "messages": [
        *question, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"city": "Paris", "temperature": 18, "condition": "sunny"}'}]}))
    frames = await socket.until_end("result")
    await socket.close()
    assert (answer(frames), frames[-1]["finish_reason"]) == ("In Paris it is 18 degrees and sunny.", "stop")
    assert [(r.finish_reason, r.status_code) for r in await records(user)] == [("tool_calls", 200), ("stop", 200)]


async def _engine_idle(api) -> bool:
    state = await engine_state(api)
    return state["running"] == 0 and state["waiting"] == 0


async def _no_lease(user) -> bool:
    return not await Lease.objects.filter(api_key__owner=user, api_key__kind=KeyKind.CHAT).aexists()


async def test_stop_ends_the_generation_at_once_and_frees_its_slots(user):
    socket = await chat_socket(await log_in(user.username))
    await socket.send(turn("long", count_prompt(200), max_tokens=400))
    assert (await socket.receive())["type"] == "start"
    assert (await socket.receive())["type"] == "delta"
    await socket.send(json.dumps({"type": "stop", "id": "long"}))
    frames = await socket.until_end("long")
    done = frames[-1]
    assert (done["type"], done["finish_reason"]) == ("done", "cancelled")
    # Freed while the page stays open: no turn in the engine, no lease for the key.
    await wait_until(lambda: _engine_idle(InProcessAPI()), timeout=2)
    await wait_until(lambda: _no_lease(user), timeout=2)
    await socket.close()
    record = (await records(user))[0]
    assert (record.status_code, record.client_disconnected, record.finish_reason) == (200, True, "")
    assert 1 <= record.completion_tokens < 300
    assert record.completion_tokens == done["usage"]["completion_tokens"]


async def test_closing_the_page_mid_generation_cancels_it_and_records_it(user):
    socket = await chat_socket(await log_in(user.username))
    await socket.send(turn("long", count_prompt(200), max_tokens=400))
    assert (await socket.receive())["type"] == "start"
    assert (await socket.receive())["type"] == "delta"
    await socket.close()
    record = (await records(user))[0]
    assert (record.status_code, record.client_disconnected) == (200, True)
    assert 1 <= record.completion_tokens < 300
    await wait_until(lambda: _engine_idle(InProcessAPI()), timeout=2)


async def test_a_turn_over_the_users_concurrency_limit_gets_a_clear_429(user):
    client = await log_in(user.username)
    await client.get("/")  # the first visit creates the chat key
    key = await chat_key(user)
    key.max_concurrency = 1
    await key.asave()
    socket = await chat_socket(client)
    await socket.send(turn("first", count_prompt(200), max_tokens=400))
    assert (await socket.receive())["type"] == "start"
    assert (await socket.receive())["type"] == "delta"  # generating (stopped before that, it would be a 499)
    await socket.send(turn("second", repeat_prompt("cat")))
    while (frame := await socket.receive())["id"] != "second":
        pass
    await socket.send(json.dumps({"type": "stop", "id": "first"}))
    await socket.until_end("first")
    await socket.close()
    assert (frame["type"], frame["status"], frame["retry_after"]) == ("error", 429, 1)
    assert frame["error"] == {
        "message": "You already have an answer being written, and you may have only one at a time; "
                   "wait for it to finish or stop it, then try again.",
        "type": "rate_limit_error", "param": None, "code": "key_concurrency_limit"}
    statuses = sorted(record.status_code for record in await records(user))
    assert statuses == [200, 429]


async def test_a_turn_over_the_users_requests_per_minute_says_in_words_when_to_try_again(user):
    client = await log_in(user.username)
    await client.get("/")  # the first visit creates the chat key
    key = await chat_key(user)
    key.requests_per_minute = 0  # every turn this minute is one too many
    await key.asave()
    socket = await chat_socket(client)
    await socket.send(turn("t", repeat_prompt("cat")))
    frame = await socket.receive()
    await socket.close()
    seconds = frame["retry_after"]
    assert 1 <= seconds <= 60  # to the next minute, when the count starts again
    assert frame == {"type": "error", "id": "t", "status": 429, "retry_after": seconds,
                     "request_id": frame["request_id"], "error": {
                         "message": "You have sent too many messages in the last minute; try again in "
                                    f"{seconds} second{'' if seconds == 1 else 's'}.",
                         "type": "rate_limit_error", "param": None, "code": "requests_per_minute_limit"}}
    record = (await records(user))[0]
    assert (record.request_id, record.status_code, record.error_code) == (
        frame["request_id"], 429, "requests_per_minute_limit")


async def test_a_revoked_chat_key_is_told_to_the_user_and_leaves_no_record(user):
    client = await log_in(user.username)
    await client.get("/")
    await sync_to_async((await chat_key(user)).revoke)()
    socket = await chat_socket(client)
    await socket.send(turn("t", repeat_prompt("cat")))
    frame = await socket.receive()
    await socket.close()
    assert (frame["type"], frame["status"], frame["error"]["code"]) == ("error", 401, "invalid_api_key")
    assert frame["error"]["message"] == (
        "Your chat access has been revoked or has expired. Ask an administrator to restore it.")
    assert await records(user) == []


# The channel layer's blocking pop, shortened for the idle test; the socket timeout is
# shortened in the same ratio.
SHORT_POP_SECONDS = 0.5


def read_timeout(layer) -> float | None:
    """The read timeout of the layer's Redis connections, as redis-py makes them from
    the layer's host configuration (its own default where the configuration has none)."""
    return layer.create_pool(0).make_connection().socket_timeout


@pytest.mark.skipif(not settings.REDIS_URL, reason="the channel layer is Redis only with REDIS_URL")
async def test_a_socket_left_idle_for_a_while_still_answers(user):
    """With REDIS_URL (as in CI) the channel layer waits on Redis between messages with a
    blocking pop: an idle socket must outlive those waits (redis-py 8's 5 s read timeout,
    equal to channels_redis's 5 s pop, once killed every idle socket with 1011)."""
    from channels.layers import channel_layers

    configured = channel_layers.make_backend("default")  # as the settings configure it
    pop, timeout = configured.brpop_timeout, read_timeout(configured)
    assert timeout is None or timeout > pop, (timeout, pop)

    # The same layer with both waits shortened in the same ratio, used by the consumer:
    # the socket idles past several pops, and the read timeout, were it no longer than
    # a pop, would fail the consumer's receive before the turn is sent.
    scale = SHORT_POP_SECONDS / pop
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    shortened = type(configured)(**{**config, "hosts": [
        {**host, "socket_timeout": None if timeout is None else timeout * scale} for host in configured.hosts]})
    shortened.brpop_timeout = SHORT_POP_SECONDS
    assert read_timeout(shortened) == (None if timeout is None else timeout * scale)
    previous = channel_layers.set("default", shortened)
    try:
        socket = await chat_socket(await log_in(user.username))
        await asyncio.sleep(SHORT_POP_SECONDS * 2.5)
        await socket.send(turn("later", repeat_prompt("cat")))
        assert answer(await socket.until_end("later")) == "cat"
        await socket.close()
    finally:
        if previous is None:
            del channel_layers.backends["default"]
        else:
            channel_layers.set("default", previous)
        await shortened.close_pools()


async def test_a_user_deactivated_while_the_socket_is_open_is_refused_at_the_next_turn_and_disconnected(user):
    socket = await chat_socket(await log_in(user.username))
    await socket.send(turn("before", repeat_prompt("cat")))
    assert answer(await socket.until_end("before")) == "cat"
    user.is_active = False
    await user.asave(update_fields=["is_active"])
    await socket.send(turn("after", repeat_prompt("dog")))
    frame = await socket.receive()
    closed = await socket.communicator.receive_output(timeout=10)
    # As Daphne does once the server has closed the socket: the consumer then ends.
    await socket.communicator.send_input({"type": "websocket.disconnect", "code": 4401})
    await socket.communicator.wait(timeout=10)
    assert frame == {"type": "error", "id": "after", "status": 401, "error": {
        "message": "Your account has been deactivated.", "type": "invalid_request_error", "param": None,
        "code": "user_inactive"}}
    assert closed == {"type": "websocket.close", "code": 4401}
    assert len(await records(user)) == 1  # the turn before; the refused one is not recorded


@pytest.mark.parametrize("message, status, code, param", [
    ("not json", 400, "invalid_json", None),
    (json.dumps({"type": "dance", "id": "x"}), 400, "invalid_value", "type"),
    (json.dumps({"type": "chat", "id": "<bad id>"}), 400, "invalid_value", "id"),
])
async def test_a_malformed_message_gets_an_error_and_the_socket_stays_open(user, message, status, code, param):
    socket = await chat_socket(await log_in(user.username))
    await socket.send(message)
    frame = await socket.receive()
    assert (frame["type"], frame["id"], frame["status"], frame["error"]["code"], frame["error"]["param"]) == (
        "error", None, status, code, param)
    await socket.send(turn("after", repeat_prompt("dog")))
    assert answer(await socket.until_end("after")) == "dog"
    await socket.close()


@pytest.mark.parametrize("fields, status, code, param", [
    ({"temperature": "hot"}, 400, "invalid_type", "temperature"),
    ({"model": "gpt-9"}, 404, "model_not_found", "model"),
    ({"messages": []}, 400, "invalid_value", "messages"),
    ({"tools": "get_weather"}, 400, "invalid_type", "tools"),
    ({"tool_choice": "required"}, 400, "invalid_value", "tool_choice"),
])
async def test_an_invalid_turn_is_refused_and_recorded_with_its_status(user, fields, status, code, param):
    socket = await chat_socket(await log_in(user.username))
    body = json.loads(turn("bad", "hello"))
    await socket.send(json.dumps({**body, **fields}))
    frame = await socket.receive()
    await socket.close()
    assert (frame["type"], frame["id"], frame["status"], frame["error"]["code"], frame["error"]["param"]) == (
        "error", "bad", status, code, param)
    record = (await records(user))[0]
    assert (record.request_id, record.status_code, record.error_code, record.completion_tokens) == (
        frame["request_id"], status, code, 0)


async def test_the_page_needs_a_login_and_creates_the_chat_key_on_the_first_visit(user):
    anonymous = await AsyncClient().get("/")
    assert (anonymous.status_code, anonymous.headers["Location"]) == (302, "/login/?next=/")
    assert not await APIKey.objects.filter(owner=user).aexists()
    page = await (await log_in(user.username)).get("/")
    assert page.status_code == 200
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self';")
    assert (await chat_key(user)).kind == "chat"
    assert f'"user": "{user.username}"' in page.content.decode()
