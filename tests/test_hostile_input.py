"""Hostile input: every request of tests/hostile_corpus.py, sent to one live server over a
raw socket, gets its exact 4xx in OpenAI's error shape; none gets a 500; afterwards the
server is healthy, still answers, and its log holds no traceback.

The server is the session's shared one (its CORS_ORIGINS acts only on requests with an
Origin header, and no request of the corpus has one). The whole corpus is sent once, by
the first test that needs it, so that the tests of what follows it find it sent in any
order; the log they read is what the server wrote since this module began."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from conftest import MODEL_ID, bearer, chat, issue_key
from hostile_corpus import CATEGORIES, CORPUS, Hostile, chat_body

pytestmark = pytest.mark.timeout(600)

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def begun(server) -> int:
    """Where the shared server's log stood before the corpus was sent."""
    return len(server.log())


@pytest.fixture(scope="module")
def key(live_db) -> str:
    """A key without the admin flag: the corpus must not be able to unload the model."""
    return issue_key(name="hostile input")[1]


def _request_bytes(case: Hostile, host: str, key: str) -> bytes:
    headers = [(b"Host", host.encode()), (b"Connection", b"close")]
    if case.auth:
        headers.append((b"Authorization", f"Bearer {key}".encode()))
    headers += [(b"Authorization", value) for value in case.authorization]
    if case.content_type is not None:
        headers.append((b"Content-Type", case.content_type))
    headers += list(case.headers)
    framed = {name.lower() for name, _ in case.headers}
    body = case.body
    if case.chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
        step = 1 << 16
        body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                        for i in range(0, len(body), step)) + b"0\r\n\r\n"
    elif not framed & {b"content-length", b"transfer-encoding"}:
        headers.append((b"Content-Length", b"%d" % (len(body) if case.content_length is None else case.content_length)))
    head = b"%s %s HTTP/1.1\r\n" % (case.method.encode(), case.path.encode())
    return head + b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + body


def _send(base_url: str, case: Hostile, key: str) -> tuple[int, dict, bytes]:
    """Send ``case`` as it is, byte for byte; return the status, headers and body."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        try:
            sock.sendall(_request_bytes(case, f"{host}:{port}", key))
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before the whole request was read (413, 431): read the answer
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"the connection closed without an answer: {received!r}"
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers["content-length"])  # every answer here has one
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "the connection closed in the middle of the answer"
            body += chunk
    return int(status_line.split()[1]), headers, body


def test_the_corpus_has_at_least_200_requests_in_every_category_the_issue_names():
    assert len(CORPUS) >= 200
    assert len({case.id for case in CORPUS}) == len(CORPUS)
    assert {"malformed_json", "truncated_json", "numbers", "nan_infinity", "deep_nesting", "ten_mb_bodies",
            "invalid_utf8", "messages", "content_type", "authorization", "model_id", "model_id_in_path",
            "duplicate_keys", "not_an_object", "bom", "content_parts", "stop", "logit_bias", "tools",
            "response_format", "content_length", "content_encoding", "methods", "query_string"} <= set(CATEGORIES)
    assert all(400 <= case.status < 500 for case in CORPUS)


@pytest.fixture(scope="module")
def answers(server, begun, key) -> dict[str, tuple[int, dict, bytes] | Exception]:
    """Every request of the corpus sent, in order; its answers by case id (or what
    failed in sending it, for its test to raise)."""
    sent = {}
    for case in CORPUS:
        try:
            sent[case.id] = _send(server.base_url, case, key)
        except (AssertionError, OSError) as failure:
            sent[case.id] = failure
    return sent


@pytest.mark.parametrize("case", CORPUS, ids=[case.id for case in CORPUS])
def test_a_hostile_request_gets_its_exact_4xx_in_openai_error_shape(answers, case):
    answer = answers[case.id]
    if isinstance(answer, Exception):
        raise answer
    status, headers, body = answer
    assert status != 500
    assert headers.get("content-type", "").startswith("application/json"), (status, body[:300])

    payload = json.loads(body)
    assert (status, payload["error"]["code"]) == (case.status, case.code), payload
    error = payload["error"]
    assert set(payload) == {"error"} and set(error) == ERROR_KEYS
    assert isinstance(error["type"], str) and error["type"]
    assert isinstance(error["message"], str) and error["message"].strip()
    assert "Traceback" not in error["message"]
    assert error["param"] is None or isinstance(error["param"], str)


def test_a_body_that_never_reaches_its_content_length_leaves_the_server_serving(server, key):
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"model\": ".encode())
        time.sleep(0.5)  # the server waits for the rest, which never comes; the client leaves
    assert httpx.get(f"{server.base_url}/health", timeout=30).status_code == 200


def test_after_the_corpus_the_server_is_healthy_and_still_answers_hello(answers, server, key):
    assert httpx.get(f"{server.base_url}/health", timeout=30).status_code == 200
    with httpx.Client(base_url=server.base_url, timeout=120, headers=bearer(key)) as api:
        answer = chat(api, "Hello")
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "Hello! How can I help you?"
        # The model the corpus tried to unload (without the admin flag) is still loaded.
        assert api.get(f"/v1/models/{MODEL_ID}").status_code == 200


def test_the_server_log_has_no_traceback_and_no_500_from_the_corpus(answers, server, begun):
    log = server.log()[begun:]
    assert "Traceback" not in log
    assert " 500 " not in log
    assert "accounting failed" not in log


def test_a_well_formed_request_in_the_corpus_shape_is_answered(server, key):
    """The corpus's base body is a valid request: each case fails for its own reason."""
    with httpx.Client(base_url=server.base_url, timeout=120, headers=bearer(key)) as api:
        answer = api.post("/v1/chat/completions", json=chat_body())
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Hello! How can"


def test_a_chunked_request_body_is_read_as_sent(server, key):
    """Without a Content-Length, Django would take the body as empty; the HTTP layer gives
    a chunked body its length (llmserver/patches/http_framing.py)."""
    case = Hostile("framing", "chunked", 200, None, body=json.dumps(chat_body()).encode(), chunked=True)
    status, _, body = _send(server.base_url, case, key)
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == "Hello! How can"


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_top_k_past_the_vocabulary_samples_from_all_of_it(server, key, temperature):
    """Found by fuzzing: the engine failed such a turn (a 500 engine_error)."""
    with httpx.Client(base_url=server.base_url, timeout=120, headers=bearer(key)) as api:
        answer = api.post("/v1/completions", json={"model": MODEL_ID, "prompt": "Hello", "max_tokens": 4,
                                                   "top_k": 36_666, "temperature": temperature})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["finish_reason"] in ("stop", "length")
