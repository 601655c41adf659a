"""Two server processes sharing one database enforce one per-key limit between them.

With PostgreSQL (DATABASE_URL, as CI provides) this is the multi-machine shape; without
it the processes share the SQLite file, which shows the same on one machine."""

import httpx

from accounts.models import Lease
from demomodel.corpus import count_prompt
from tests.conftest import MODEL_ID, bearer, issue_key, start_server, wait_for

HELLO = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]}


def open_stream(client):
    context = client.stream("POST", "/v1/chat/completions", json={
        "model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(200)}], "stream": True})
    response = context.__enter__()
    assert response.status_code == 200
    lines = response.iter_lines()
    assert next(lines).startswith("data: ")
    return context, lines


def test_a_key_limited_to_two_never_has_more_than_two_in_flight_across_two_processes(tmp_path, live_db):
    key, secret = issue_key(name="shared-limit", max_concurrency=2)
    first = start_server(tmp_path, ENGINE_STEP_DELAY_MS=5)
    second = start_server(tmp_path, ENGINE_STEP_DELAY_MS=5)
    clients = [httpx.Client(base_url=s.base_url, timeout=60, headers=bearer(secret)) for s in (first, second)]
    try:
        held = [open_stream(clients[0]), open_stream(clients[1])]  # one in each process
        for client in clients:
            refused = client.post("/v1/chat/completions", json=HELLO)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "key_concurrency_limit"
        assert Lease.objects.filter(api_key=key).count() == 2
        held[0][0].__exit__(None, None, None)  # leave the stream in the first process
        wait_for(lambda: Lease.objects.filter(api_key=key).count() == 1, timeout=10)
        # ...and the second process may now admit one.
        assert clients[1].post("/v1/chat/completions", json=HELLO).status_code == 200
        held[1][0].__exit__(None, None, None)
    finally:
        for client in clients:
            client.close()
        first.stop()
        second.stop()


def test_a_key_revoked_through_one_process_is_refused_by_the_other(tmp_path, live_db):
    key, secret = issue_key(name="revoked-across")
    first = start_server(tmp_path)
    second = start_server(tmp_path)
    try:
        for server in (first, second):
            assert httpx.post(f"{server.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret)).status_code == 200
        key.revoke()  # as the admin, in any process, would
        for server in (first, second):
            assert httpx.post(f"{server.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret)).status_code == 401
    finally:
        first.stop()
        second.stop()
