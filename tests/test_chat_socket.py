"""The chat page's WebSocket, spoken to directly: who may open it, what a turn sends
back, how Stop and a closed page free their slots, and the usage records of each turn."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from demomodel.corpus import count_prompt, repeat_prompt
from tests.conftest import MODEL_ID, chat_socket, log_in, make_user, start_server, wait_for


@pytest.fixture(scope="module")
def slow(tmp_path_factory, live_db):
    """A server whose engine takes 5 ms a step, so that a test can act mid-generation."""
    server = start_server(tmp_path_factory.mktemp("chat-slow"), ENGINE_STEP_DELAY_MS=5)
    yield server
    server.stop()


def chat_key(user):
    from accounts.models import APIKey, KeyKind

    return APIKey.objects.get(owner=user, kind=KeyKind.CHAT)


def records(user) -> list:
    from accounts.models import UsageRecord

    return list(UsageRecord.objects.filter(api_key=chat_key(user)).order_by("started_at"))


def turn(chat_id: str, content: str, **fields) -> str:
    return json.dumps({"type": "chat", "id": chat_id, "model": MODEL_ID,
                       "messages": [{"role": "user", "content": content}], **fields})


def receive(socket) -> dict:
    return json.loads(socket.recv(timeout=30))


def until_end(socket, chat_id: str) -> list[dict]:
    """The frames of one turn up to its "done" or "error"."""
    frames = []
    while True:
        frame = receive(socket)
        assert frame["id"] == chat_id, frame
        frames.append(frame)
        if frame["type"] in ("done", "error"):
            return frames


def answer(frames: list[dict]) -> str:
    return "".join(frame["text"] for frame in frames if frame["type"] == "delta")


@pytest.fixture
def user(live_db):
    return make_user("chat")


def test_an_anonymous_socket_is_refused(server):
    with pytest.raises(InvalidStatus) as refused:
        chat_socket(server)
    assert refused.value.response.status_code == 403


def test_a_socket_from_another_site_is_refused_even_with_a_session(server, user):
    with log_in(server, user.username) as client:
        for origin in ("https://evil.example.com", None):
            with pytest.raises(InvalidStatus) as refused:
                chat_socket(server, client, origin=origin)
            assert refused.value.response.status_code == 403


def test_a_logged_out_session_no_longer_opens_a_socket(server, user):
    with log_in(server, user.username) as client:
        cookies = dict(client.cookies)
        client.post("/logout/", data={"csrfmiddlewaretoken": client.cookies["csrftoken"]},
                    headers={"Referer": f"{server.base_url}/"})
        client.cookies.clear()
        client.cookies.update(cookies)  # the old session id, replayed
        with pytest.raises(InvalidStatus):
            chat_socket(server, client)


def test_a_turn_streams_the_answer_and_is_recorded_against_the_users_chat_key(server, user):
    with log_in(server, user.username) as client, chat_socket(server, client) as socket:
        socket.send(turn("t1", repeat_prompt("tiger lemon"), temperature=0, max_tokens=20))
        frames = until_end(socket, "t1")
    start, done = frames[0], frames[-1]
    assert start["type"] == "start"
    assert answer(frames) == "tiger lemon"
    assert (done["type"], done["finish_reason"]) == ("done", "stop")
    record = wait_for(lambda: records(user))[0]
    assert (record.request_id, record.endpoint, record.model, record.status_code, record.streamed) == (
        start["request_id"], "chat.page", MODEL_ID, 200, True)
    assert (record.prompt_tokens, record.completion_tokens) == (done["usage"]["prompt_tokens"], done["usage"]["completion_tokens"])
    assert (record.finish_reason, record.client_disconnected, record.user) == ("stop", False, user.username)
    key = chat_key(user)
    assert (key.name, key.max_concurrency) == (f"Chat: {user.username}", 2)


def test_the_conversation_so_far_and_the_system_prompt_reach_the_model(server, user):
    messages = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "2 plus 3 is 5."},
        {"role": "user", "content": repeat_prompt("red boat")},
    ]
    with log_in(server, user.username) as client, chat_socket(server, client) as socket:
        socket.send(json.dumps({"type": "chat", "id": "t", "model": MODEL_ID, "messages": messages, "temperature": 0}))
        frames = until_end(socket, "t")
    assert answer(frames) == "red boat"
    # The prompt is the whole conversation: far more than the last message's tokens.
    assert frames[-1]["usage"]["prompt_tokens"] > 30


def test_stop_ends_the_generation_at_once_and_frees_its_slots(slow, user):
    with log_in(slow, user.username) as client, chat_socket(slow, client) as socket:
        socket.send(turn("long", count_prompt(200), max_tokens=400))
        assert receive(socket)["type"] == "start"
        assert receive(socket)["type"] == "delta"
        socket.send(json.dumps({"type": "stop", "id": "long"}))
        frames = until_end(socket, "long")
        done = frames[-1]
        assert (done["type"], done["finish_reason"]) == ("done", "cancelled")
        # Freed while the page stays open: no turn in the engine, no lease for the key.
        wait_for(lambda: slow.engine()["running"] == 0 and slow.engine()["waiting"] == 0, timeout=2)
        from accounts.models import Lease

        wait_for(lambda: not Lease.objects.filter(api_key=chat_key(user)).exists(), timeout=2)
    record = wait_for(lambda: records(user))[0]
    assert (record.status_code, record.client_disconnected, record.finish_reason) == (200, True, "")
    assert 1 <= record.completion_tokens < 300
    assert record.completion_tokens == done["usage"]["completion_tokens"]


def test_closing_the_page_mid_generation_cancels_it_and_records_it(slow, user):
    with log_in(slow, user.username) as client, chat_socket(slow, client) as socket:
        socket.send(turn("long", count_prompt(200), max_tokens=400))
        assert receive(socket)["type"] == "start"
        assert receive(socket)["type"] == "delta"
    record = wait_for(lambda: records(user))[0]
    assert (record.status_code, record.client_disconnected) == (200, True)
    assert 1 <= record.completion_tokens < 300
    wait_for(lambda: slow.engine()["running"] == 0, timeout=2)


def test_a_turn_over_the_users_concurrency_limit_gets_a_clear_429(slow, user):
    with log_in(slow, user.username) as client:
        client.get("/")  # the first visit creates the chat key
        key = chat_key(user)
        key.max_concurrency = 1
        key.save()
        with chat_socket(slow, client) as socket:
            socket.send(turn("first", count_prompt(200), max_tokens=400))
            assert receive(socket)["type"] == "start"
            assert receive(socket)["type"] == "delta"  # generating (stopped before that, it would be a 499)
            socket.send(turn("second", repeat_prompt("cat")))
            while (frame := receive(socket))["id"] != "second":
                pass
            socket.send(json.dumps({"type": "stop", "id": "first"}))
            until_end(socket, "first")
    assert (frame["type"], frame["status"], frame["retry_after"]) == ("error", 429, 1)
    assert frame["error"] == {
        "message": "You already have an answer being written, and you may have only one at a time; "
                   "wait for it to finish or stop it, then try again.",
        "type": "rate_limit_error", "param": None, "code": "key_concurrency_limit"}
    statuses = sorted(record.status_code for record in wait_for(lambda: len(records(user)) == 2 and records(user)))
    assert statuses == [200, 429]


def test_a_turn_over_the_users_requests_per_minute_says_in_words_when_to_try_again(server, user):
    with log_in(server, user.username) as client:
        client.get("/")  # the first visit creates the chat key
        key = chat_key(user)
        key.requests_per_minute = 0  # every turn this minute is one too many
        key.save()
        with chat_socket(server, client) as socket:
            socket.send(turn("t", repeat_prompt("cat")))
            frame = receive(socket)
    seconds = frame["retry_after"]
    assert 1 <= seconds <= 60  # to the next minute, when the count starts again
    assert frame == {"type": "error", "id": "t", "status": 429, "retry_after": seconds,
                     "request_id": frame["request_id"], "error": {
                         "message": "You have sent too many messages in the last minute; try again in "
                                    f"{seconds} second{'' if seconds == 1 else 's'}.",
                         "type": "rate_limit_error", "param": None, "code": "requests_per_minute_limit"}}
    record = wait_for(lambda: records(user))[0]
    assert (record.request_id, record.status_code, record.error_code) == (
        frame["request_id"], 429, "requests_per_minute_limit")


def test_a_revoked_chat_key_is_told_to_the_user_and_leaves_no_record(server, user):
    with log_in(server, user.username) as client:
        client.get("/")
        chat_key(user).revoke()
        with chat_socket(server, client) as socket:
            socket.send(turn("t", repeat_prompt("cat")))
            frame = receive(socket)
    assert (frame["type"], frame["status"], frame["error"]["code"]) == ("error", 401, "invalid_api_key")
    assert frame["error"]["message"] == (
        "Your chat access has been revoked or has expired. Ask an administrator to restore it.")
    assert records(user) == []


def test_a_socket_left_idle_for_a_while_still_answers(server, user):
    """With REDIS_URL (as in CI) the channel layer waits on Redis between messages: an
    idle socket must outlive those waits (redis-py 8's 5 s read timeout once killed it)."""
    import time

    with log_in(server, user.username) as client, chat_socket(server, client) as socket:
        time.sleep(7)
        socket.send(turn("later", repeat_prompt("cat")))
        assert answer(until_end(socket, "later")) == "cat"


def test_a_user_deactivated_while_the_socket_is_open_is_refused_at_the_next_turn_and_disconnected(server, user):
    from websockets.exceptions import ConnectionClosed

    with log_in(server, user.username) as client:
        with chat_socket(server, client) as socket:
            socket.send(turn("before", repeat_prompt("cat")))
            assert answer(until_end(socket, "before")) == "cat"
            user.is_active = False
            user.save(update_fields=["is_active"])
            socket.send(turn("after", repeat_prompt("dog")))
            frame = receive(socket)
            with pytest.raises(ConnectionClosed):
                socket.recv(timeout=10)
    assert frame == {"type": "error", "id": "after", "status": 401, "error": {
        "message": "Your account has been deactivated.", "type": "invalid_request_error", "param": None,
        "code": "user_inactive"}}
    assert socket.close_code == 4401
    wait_for(lambda: len(records(user)) == 1)  # the turn before; the refused one is not recorded


@pytest.mark.parametrize("message, status, code, param", [
    ("not json", 400, "invalid_json", None),
    (json.dumps({"type": "dance", "id": "x"}), 400, "invalid_value", "type"),
    (json.dumps({"type": "chat", "id": "<bad id>"}), 400, "invalid_value", "id"),
])
def test_a_malformed_message_gets_an_error_and_the_socket_stays_open(server, user, message, status, code, param):
    with log_in(server, user.username) as client, chat_socket(server, client) as socket:
        socket.send(message)
        frame = receive(socket)
        assert (frame["type"], frame["id"], frame["status"], frame["error"]["code"], frame["error"]["param"]) == (
            "error", None, status, code, param)
        socket.send(turn("after", repeat_prompt("dog")))
        assert answer(until_end(socket, "after")) == "dog"


@pytest.mark.parametrize("fields, status, code, param", [
    ({"temperature": "hot"}, 400, "invalid_type", "temperature"),
    ({"model": "gpt-9"}, 404, "model_not_found", "model"),
    ({"messages": []}, 400, "invalid_value", "messages"),
])
def test_an_invalid_turn_is_refused_and_recorded_with_its_status(server, user, fields, status, code, param):
    with log_in(server, user.username) as client, chat_socket(server, client) as socket:
        body = json.loads(turn("bad", "hello"))
        socket.send(json.dumps({**body, **fields}))
        frame = receive(socket)
    assert (frame["type"], frame["id"], frame["status"], frame["error"]["code"], frame["error"]["param"]) == (
        "error", "bad", status, code, param)
    record = wait_for(lambda: records(user))[0]
    assert (record.request_id, record.status_code, record.error_code, record.completion_tokens) == (
        frame["request_id"], status, code, 0)


def test_the_page_needs_a_login_and_creates_the_chat_key_on_the_first_visit(server, user):
    from accounts.models import APIKey

    anonymous = httpx.get(f"{server.base_url}/", follow_redirects=False)
    assert (anonymous.status_code, anonymous.headers["Location"]) == (302, "/login/?next=/")
    assert not APIKey.objects.filter(owner=user).exists()
    with log_in(server, user.username) as client:
        page = client.get("/")
    assert page.status_code == 200
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self';")
    assert chat_key(user).kind == "chat"
    assert f'"user": "{user.username}"' in page.text
