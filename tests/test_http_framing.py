"""Requests sent too slowly or framed wrong (llmserver/patches/http_framing.py), over raw
sockets to a real server whose deadlines are short: 1 s for the headers, 2 s for the body.

A request is answered 408 once its deadline passes, however it trickles in, and its
connection closes; a malformed framing (a bare LF, a chunk size of too many digits) is
answered at once, not after a deadline; a request that is slow but within its deadlines
is served."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.conftest import MODEL_ID, issue_key, start_server

HEADERS_SECONDS = 1.0
BODY_SECONDS = 2.0
# An answer "at once" comes well before the first deadline could have fired.
AT_ONCE = 0.5
# How late after its deadline an answer may come (the reactor's turn, a busy machine).
LATE = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory, live_db):
    live = start_server(tmp_path_factory.mktemp("framing"), REQUEST_HEADERS_TIMEOUT_SECONDS=HEADERS_SECONDS,
                        REQUEST_BODY_TIMEOUT_SECONDS=BODY_SECONDS)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def key(live_db) -> str:
    return issue_key(name="http framing")[1]


def connect(server) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_answer(sock: socket.socket, trickle: bytes = b"") -> tuple[int, dict, dict]:
    """The status, headers and JSON body of the next answer; while none has come, send
    ``trickle`` every 0.3 s (a client keeping its request alive a line at a time)."""
    received = b""
    sock.settimeout(0.3 if trickle else 10)
    deadline = time.monotonic() + 10
    while b"\r\n\r\n" not in received:
        assert time.monotonic() < deadline, f"no answer in 10 s: {received!r}"
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            sock.sendall(trickle)
            continue
        assert chunk, f"closed without an answer: {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    sock.settimeout(10)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, json.loads(body)


def error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def closed(sock: socket.socket) -> bool:
    """Whether the server closes the connection (within 10 s; it reads and drops what
    still arrives for 5 s after answering, so that its answer is not lost to a reset)."""
    sock.settimeout(10)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


HEADERS_TOO_SLOW = error("The request's headers were not received within 1 second.", "request_timeout")
BAD_CHUNK = error("Bad request: malformed chunked body (a chunk's size is at most 16 hexadecimal digits, and every "
                  "line ends with CR LF).", "bad_request")


def test_a_request_trickling_header_lines_is_answered_408_at_its_deadline_and_closed(server):
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        status, headers, body = read_answer(sock, trickle=b"X-Slow: 1\r\n")
        took = time.monotonic() - started

        assert (status, body) == (408, HEADERS_TOO_SLOW)
        assert headers["connection"] == "close"
        assert HEADERS_SECONDS <= took < HEADERS_SECONDS + LATE
        assert closed(sock)


def test_a_body_that_stops_arriving_is_answered_408_at_the_body_deadline(server, key):
    with connect(server) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n".encode())
        started = time.monotonic()
        sock.sendall(b'{"model": ')
        status, _, body = read_answer(sock)
        took = time.monotonic() - started

    assert (status, body) == (408, error("The request's body was not received within 2 seconds.", "request_timeout"))
    assert BODY_SECONDS <= took < BODY_SECONDS + LATE


def chunked_head(key: str) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()


def answer_at_once(server, *parts: bytes) -> tuple[int, dict]:
    with connect(server) as sock:
        started = time.monotonic()
        for part in parts:
            sock.sendall(part)
        status, _, body = read_answer(sock)
        assert time.monotonic() - started < AT_ONCE
    return status, body


def test_a_chunk_size_of_too_many_digits_is_400_at_once(server, key):
    assert answer_at_once(server, chunked_head(key), b"ffffffffffffffffffffffff\r\n") == (400, BAD_CHUNK)


def test_a_chunk_size_over_the_request_size_limit_is_413_at_once(server, key):
    assert answer_at_once(server, chunked_head(key), b"ffffffff\r\n") == (413, error(
        "Request body too large: the limit is 10 MB.", "request_too_large"))


def test_a_chunked_body_framed_with_bare_lfs_is_400_at_once(server, key):
    assert answer_at_once(server, chunked_head(key), b'2\n{}\n0\n\n') == (400, BAD_CHUNK)


def test_headers_ending_in_bare_lfs_are_400_at_once(server, key):
    request = f"GET /v1/models HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {key}\n\n".encode()

    assert answer_at_once(server, request) == (400, error(
        "Bad request: the request's lines must end with CR LF, not a bare LF.", "bad_request"))


def test_a_slow_request_within_both_deadlines_is_served(server, key):
    """Headers over 0.6 s and a body over 0.6 s: 1.2 s in all, more than the headers'
    deadline, each part within its own."""
    body = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with connect(server) as sock:
        for part in (head[:20], head[20:60], head[60:], body[:10], body[10:30], body[30:]):
            sock.sendall(part)
            time.sleep(0.2)  # the client's pace
        status, _, answer = read_answer(sock)

    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"] == "Hello! How can I help you?"


def test_a_keep_alive_connection_idle_between_requests_longer_than_the_deadline_is_still_served(server, key):
    request = f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    with connect(server) as sock:
        sock.sendall(request)
        assert read_answer(sock)[0] == 200
        time.sleep(HEADERS_SECONDS + 0.5)  # idle: no request being read
        sock.sendall(request)
        status, _, models = read_answer(sock)

    assert (status, [model["id"] for model in models["data"]]) == (200, [MODEL_ID])

