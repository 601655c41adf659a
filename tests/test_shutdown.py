"""Graceful shutdown (llmserver/shutdown.py): on SIGTERM the server stops accepting, lets
the streams in flight finish (up to SHUTDOWN_GRACE_SECONDS), records them and exits 0;
a stream longer than the grace ends with an error event, recorded with its tokens so
far; a second signal cuts the drain short, still recording.

The engine sleeps before each step so that a stream lasts seconds, not milliseconds."""

from __future__ import annotations

import json
import signal
import socket
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from accounts.models import Lease, UsageRecord
from demomodel.corpus import count_answer, count_prompt, repeat_prompt
from tests.conftest import MODEL_ID, bearer, chat_socket, issue_key, log_in, make_user, start_server, wait_for

pytestmark = pytest.mark.server_process

COUNT_40 = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(40)}],
            "stream": True, "stream_options": {"include_usage": True}}
LONG = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(200)}], "max_tokens": 400,
        "stream": True}


class Stream:
    """A streamed chat completion held open after its first event."""

    def __init__(self, server, secret, body):
        self.rid = f"shutdown-{uuid.uuid4().hex}"
        self.client = httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(secret))
        self.context = self.client.stream("POST", "/v1/chat/completions", json=body, headers={"X-Request-ID": self.rid})
        response = self.context.__enter__()
        assert response.status_code == 200
        self.lines = response.iter_lines()
        assert next(self.lines).startswith("data: ")

    def rest(self) -> list:
        """The remaining events, to the end of the stream ("[DONE]" kept as the string)."""
        events = [line[len("data: "):] for line in self.lines if line.startswith("data: ")]
        self.context.__exit__(None, None, None)
        self.client.close()
        return [event if event == "[DONE]" else json.loads(event) for event in events]


def refuses_connections(server) -> bool:
    address = urlsplit(server.base_url)
    try:
        socket.create_connection((address.hostname, address.port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def log_line(server, text: str) -> str:
    return wait_for(lambda: next((line for line in server.log().splitlines() if text in line), None))


def record_for(request_id: str) -> UsageRecord:
    return wait_for(lambda: UsageRecord.objects.filter(request_id=request_id).first())


def text_of(events: list) -> str:
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events if isinstance(e, dict) and e.get("choices"))


def test_sigterm_lets_the_streams_in_flight_finish_records_them_and_exits_0(tmp_path, live_db):
    key, secret = issue_key(name="shutdown-drain")
    # Counting to 40 takes 6 s; the suite's servers get 5 s of grace (conftest), this one 30.
    server = start_server(tmp_path, ENGINE_STEP_DELAY_MS=150, SHUTDOWN_GRACE_SECONDS=30)
    try:
        keep_alive = httpx.Client(base_url=server.base_url, timeout=10)
        assert keep_alive.get("/health").status_code == 200  # a connection kept open
        streams = [Stream(server, secret, COUNT_40) for _ in range(2)]
        wait_for(lambda: server.engine()["running"] == 2)
        server.process.send_signal(signal.SIGTERM)

        wait_for(lambda: refuses_connections(server))
        assert server.process.poll() is None  # still serving the two streams
        late = keep_alive.get("/health")
        assert (late.status_code, late.headers["Retry-After"], late.headers["Connection"]) == (503, "5", "close")
        assert late.json() == {"error": {
            "message": "The server is shutting down and takes no new requests; retry shortly.",
            "type": "server_error", "param": None, "code": "server_shutting_down"}}
        events = [stream.rest() for stream in streams]
        assert server.process.wait(30) == 0
    finally:
        server.stop()

    for stream, received in zip(streams, events):
        assert text_of(received) == count_answer(40)
        assert received[-1] == "[DONE]"
        usage = received[-2]["usage"]
        record = record_for(stream.rid)
        assert (record.status_code, record.error_code, record.finish_reason, record.client_disconnected) == (
            200, "", "stop", False)
        assert record.completion_tokens == usage["completion_tokens"] == 40
    assert not Lease.objects.filter(api_key=key).exists()
    assert "SIGTERM: stopped accepting; draining 2 requests in flight (for up to 30s)" in server.log()
    assert "(0 requests cut off); stopping" in server.log()


def cut_off(received: list) -> str:
    """Check a stream cut by the shutdown: an error event in OpenAI's shape, then [DONE];
    return the text it had received."""
    assert received[-2:] == [{"error": {
        "message": "The server is shutting down: the generation was stopped before it finished.",
        "type": "server_error", "param": None, "code": "server_shutting_down"}}, "[DONE]"]
    return text_of(received)


def test_a_stream_longer_than_the_grace_ends_with_an_error_event_and_is_recorded(tmp_path, live_db, demo_tokenizer):
    _, secret = issue_key(name="shutdown-grace")
    server = start_server(tmp_path, ENGINE_STEP_DELAY_MS=50, SHUTDOWN_GRACE_SECONDS=2)
    try:
        stream = Stream(server, secret, LONG)
        wait_for(lambda: server.engine()["running"] == 1)
        server.process.send_signal(signal.SIGTERM)
        text = cut_off(stream.rest())
        assert server.process.wait(2 + 15) == 0
    finally:
        server.stop()
    assert count_answer(200).startswith(text) and text
    record = record_for(stream.rid)
    assert (record.status_code, record.error_code, record.finish_reason, record.client_disconnected) == (
        200, "server_shutting_down", "error", False)
    assert record.completion_tokens == len(demo_tokenizer.encode(text))
    assert "(1 requests cut off); stopping" in server.log()


def test_a_second_signal_cuts_the_drain_short_and_still_records(tmp_path, live_db, demo_tokenizer):
    _, secret = issue_key(name="shutdown-twice")
    server = start_server(tmp_path, ENGINE_STEP_DELAY_MS=50)  # a grace of 30 s
    try:
        stream = Stream(server, secret, LONG)
        wait_for(lambda: server.engine()["running"] == 1)
        server.process.send_signal(signal.SIGTERM)
        log_line(server, "SIGTERM: stopped accepting")
        server.process.send_signal(signal.SIGINT)
        text = cut_off(stream.rest())
        assert server.process.wait(15) == 0  # well before the 30 s
    finally:
        server.stop()
    assert "SIGINT again: cutting the drain short" in server.log()
    record = record_for(stream.rid)
    assert (record.status_code, record.error_code) == (200, "server_shutting_down")
    assert record.completion_tokens == len(demo_tokenizer.encode(text))


def test_a_chat_page_turn_in_flight_finishes_and_a_new_one_is_refused(tmp_path, live_db):
    user = make_user("shutdown")
    # Counting to 40 takes 6 s; the suite's servers get 5 s of grace (conftest), this one 30.
    server = start_server(tmp_path, ENGINE_STEP_DELAY_MS=150, SHUTDOWN_GRACE_SECONDS=30)
    try:
        with log_in(server, user.username) as client, chat_socket(server, client) as page:
            page.send(json.dumps({"type": "chat", "id": "first", "model": MODEL_ID,
                                  "messages": [{"role": "user", "content": count_prompt(40)}]}))
            assert json.loads(page.recv(timeout=30))["type"] == "start"
            wait_for(lambda: server.engine()["running"] == 1)
            server.process.send_signal(signal.SIGTERM)
            log_line(server, "SIGTERM: stopped accepting; draining 1 requests in flight")
            page.send(json.dumps({"type": "chat", "id": "second", "model": MODEL_ID,
                                  "messages": [{"role": "user", "content": repeat_prompt("red fox")}]}))
            frames = {}
            while not all(frames.get(i, [{}])[-1].get("type") in ("done", "error") for i in ("first", "second")):
                frame = json.loads(page.recv(timeout=30))
                frames.setdefault(frame["id"], []).append(frame)
        assert server.process.wait(30) == 0
    finally:
        server.stop()
    first, second = frames["first"], frames["second"]
    assert "".join(f["text"] for f in first if f["type"] == "delta") == count_answer(40)
    assert (first[-1]["type"], first[-1]["finish_reason"]) == ("done", "stop")
    assert (second[-1]["type"], second[-1]["status"], second[-1]["error"]) == ("error", 503, {
        "message": "The server is shutting down and takes no new requests; retry shortly.",
        "type": "server_error", "param": None, "code": "server_shutting_down"})
