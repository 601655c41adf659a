"""Two server processes sharing one database enforce one per-key limit between them.

With PostgreSQL (DATABASE_URL, as CI provides) this is the multi-machine shape; without
it the processes share the SQLite file, which shows the same on one machine."""

import threading
import time
from collections import Counter

import httpx
import pytest

from accounts.models import Lease
from demomodel.corpus import count_prompt
from tests.conftest import MODEL_ID, bearer, issue_key, log_in, make_user, start_server, wait_for

pytestmark = pytest.mark.server_process

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
    admin = make_user("admin", is_staff=True, is_superuser=True)
    first = start_server(tmp_path)
    second = start_server(tmp_path)
    try:
        for server in (first, second):
            assert httpx.post(f"{server.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret)).status_code == 200
        # An admin revokes it on the first process's admin site...
        with log_in(first, admin.username) as browser:
            browser.get("/admin/accounts/apikey/")
            revoked = browser.post("/admin/accounts/apikey/", data={
                "action": "revoke_keys", "_selected_action": [key.pk],
                "csrfmiddlewaretoken": browser.cookies["csrftoken"]}, headers={"Referer": f"{first.base_url}/admin/"})
            assert revoked.status_code == 302
        # ...and the second refuses it on its next request, as does the first.
        for server in (second, first):
            refused = httpx.post(f"{server.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret))
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"
    finally:
        first.stop()
        second.stop()


def probe(servers, secrets: list[str], leases, seconds: float = 8) -> dict:
    """Clients (one per secret, alternating between the servers) stream for ``seconds``
    while a probe samples ``leases`` (a Lease queryset) in the shared database, which is
    what "in flight" is for every process. (The clients' own view cannot serve: a client
    sees its stream end after the server let go of it, so a client-side count overlaps
    the next admission.) What was seen: lease counts, 200s, 429s and anything else."""
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    seen = {"leases": Counter(), 200: 0, 429: 0, "other": []}

    def client(server, secret):
        body = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(20)}], "stream": True}
        with httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(secret)) as http:
            while time.monotonic() < deadline:
                with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        response.read()
                        with lock:
                            if response.status_code == 429:
                                seen[429] += 1
                            else:
                                seen["other"].append(response.status_code)
                        time.sleep(0.01)
                        continue
                    events = [line for line in response.iter_lines() if line]
                    with lock:
                        seen[200] += 1
                    if events[-1] != "data: [DONE]" or "error" in events[-2]:
                        seen["other"].append(events[-2:])

    def sample_leases():
        from django.db import connection

        while time.monotonic() < deadline:
            seen["leases"][leases.count()] += 1
            time.sleep(0.002)
        connection.close()  # this thread's own

    threads = [threading.Thread(target=client, args=(servers[i % 2], secret)) for i, secret in enumerate(secrets)]
    threads.append(threading.Thread(target=sample_leases))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
    finally:
        for server in servers:
            server.stop()
    return seen


def test_a_probe_of_many_clients_on_both_processes_never_sees_more_than_the_limit_in_flight(tmp_path, live_db):
    """Eight clients, four on each process, with a key limited to three."""
    limit = 3
    key, secret = issue_key(name="probe", max_concurrency=limit)
    servers = [start_server(tmp_path, ENGINE_STEP_DELAY_MS=2), start_server(tmp_path, ENGINE_STEP_DELAY_MS=2)]
    seen = probe(servers, [secret] * 8, Lease.objects.filter(api_key=key))
    assert seen["other"] == []
    assert max(seen["leases"]) == limit, seen  # reached, never passed (samples by count in flight)
    assert seen["leases"][limit] >= 10, seen  # ...and held at it while the clients pushed
    assert seen[200] >= 10 and seen[429] >= 10, seen


def test_a_teams_concurrency_holds_across_the_keys_of_its_members_on_both_processes(tmp_path, live_db):
    """Eight clients with four keys of two members of a team limited to three in flight:
    different keys, different processes, one team count."""
    from accounts.models import Team, TeamMembership

    limit = 3
    members = [make_user("probe-member") for _ in range(2)]
    team = Team.objects.create(name=f"probe-{members[0].username}", max_concurrency=limit)
    for user in members:
        TeamMembership.objects.create(team=team, user=user)
    secrets = [issue_key(name=f"probe-{i}", owner=members[i % 2], team=team)[1] for i in range(4)]
    servers = [start_server(tmp_path, ENGINE_STEP_DELAY_MS=2), start_server(tmp_path, ENGINE_STEP_DELAY_MS=2)]
    seen = probe(servers, secrets * 2, Lease.objects.filter(team=team))
    assert seen["other"] == []
    assert max(seen["leases"]) == limit, seen
    assert seen["leases"][limit] >= 10, seen
    assert seen[200] >= 10 and seen[429] >= 10, seen


def test_a_team_budget_and_a_users_concurrency_hold_across_two_processes(tmp_path, live_db):
    """What one process counts for a team or a user, the other refuses by: a team's token
    budget spent through the first refuses another member's key on the second, and a
    user limited to one request in flight across their keys has one, whichever process."""
    from accounts.models import Team, TeamMembership, UsageCounter, UserLimits

    alice, bob = make_user("team-alice"), make_user("team-bob")
    team = Team.objects.create(name=f"two-processes-{alice.username}", token_budget=10, budget_period="month")
    for user in (alice, bob):
        TeamMembership.objects.create(team=team, user=user)
    UserLimits.objects.create(user=bob, max_concurrency=1)
    _, alices = issue_key(name="team-alice", owner=alice, team=team)
    _, bobs = issue_key(name="team-bob", owner=bob, team=team)
    _, bobs_other = issue_key(name="team-bob-own", owner=bob)
    first = start_server(tmp_path, ENGINE_STEP_DELAY_MS=5)
    second = start_server(tmp_path, ENGINE_STEP_DELAY_MS=5)
    try:
        answered = httpx.post(f"{first.base_url}/v1/chat/completions", json=HELLO, headers=bearer(alices))
        used = answered.json()["usage"]["total_tokens"]
        assert used > 10
        wait_for(lambda: UsageCounter.objects.filter(team=team, kind="period", tokens=used).exists(), timeout=10)
        refused = httpx.post(f"{second.base_url}/v1/chat/completions", json=HELLO, headers=bearer(bobs))
        assert (refused.status_code, refused.json()["error"]["code"], refused.json()["error"]["message"]) == (
            429, "team_token_budget_exceeded", f"Your team {team.name} has used its budget of 10 tokens per month.")
        # Bob's key outside the team: his own limit of one in flight, across processes.
        with httpx.Client(base_url=first.base_url, timeout=60, headers=bearer(bobs_other)) as on_first:
            held = open_stream(on_first)
            refused = httpx.post(f"{second.base_url}/v1/chat/completions", json=HELLO, headers=bearer(bobs_other))
            assert (refused.status_code, refused.json()["error"]["code"]) == (429, "user_concurrency_limit")
            assert Lease.objects.filter(user=bob).count() == 1
            held[0].__exit__(None, None, None)
        wait_for(lambda: not Lease.objects.filter(user=bob).exists(), timeout=10)
        assert httpx.post(f"{second.base_url}/v1/chat/completions", json=HELLO,
                          headers=bearer(bobs_other)).status_code == 200
    finally:
        first.stop()
        second.stop()
