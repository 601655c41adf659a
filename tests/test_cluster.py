"""`make cluster`: two server processes behind nginx, sharing PostgreSQL and Redis.

The cluster is brought up by the script `make cluster` runs (deploy/cluster.py), on free
ports, with a database of its own (created by the script, dropped here) and a Redis
database other than the suite's, then spoken to through nginx as a client would: exact
answers, a stream passed on token by token, both backends serving, errors in OpenAI's
shape, and the client's own address seen by the servers (TRUST_X_FORWARDED_FOR).

Skipped only when nginx is not installed (`make nginx`; a failure in CI, where .ci/run
sets LLMSERVER_REQUIRE_NGINX) or PostgreSQL or Redis do not answer.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from demomodel.corpus import count_answer, count_prompt
from tests.conftest import (
    MODEL_ID, PASSWORD, ROOT, bearer, chat_socket, free_port, log_in, start_server, wait_for,
)

pytestmark = pytest.mark.server_process

CLUSTER = [sys.executable, str(ROOT / "deploy" / "cluster.py")]
# Each engine step sleeps this long, so that a 40-token answer takes about 2 s.
STEP_DELAY_MS = 50
# The address the tests' "real client" connects from (all of 127/8 is this machine):
# nginx and the servers talk over 127.0.0.1, so an address seen as 127.0.0.2 can only
# have come from X-Forwarded-For.
CLIENT_ADDRESS = "127.0.0.2"


def nginx_binary() -> str | None:
    return os.environ.get("NGINX") or shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def unavailable(message: str):
    """Skip, saying why; fail instead in CI for nginx (LLMSERVER_REQUIRE_NGINX)."""
    if os.environ.get("LLMSERVER_REQUIRE_NGINX") and "nginx" in message:
        pytest.fail(message)
    pytest.skip(message)


def postgres_url() -> str:
    """The PostgreSQL server of the suite (DATABASE_URL), else the local one."""
    url = os.environ.get("DATABASE_URL", "")
    if urlsplit(url).scheme not in ("postgres", "postgresql"):
        url = "postgres://postgres@127.0.0.1:5432/postgres"
    return url


def with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def redis_url() -> str:
    """The suite's Redis server, in another of its databases (14, or 13 if the suite's is 14)."""
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    suites = urlsplit(url).path.strip("/") or "0"
    return with_path(url, "/13" if suites == "14" else "/14")


def maintenance(url: str):
    import psycopg

    return psycopg.connect(with_path(url.replace("postgres://", "postgresql://", 1), "/postgres"),
                           autocommit=True, connect_timeout=5)


def drop_database(url: str, name: str) -> None:
    with maintenance(url) as connection:
        connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')


def database_exists(url: str, name: str) -> bool:
    with maintenance(url) as connection:
        return connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def manage(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if nginx_binary() is None:
        unavailable("nginx is needed for the cluster tests: make nginx (apt-get install nginx)")
    base = postgres_url()
    try:
        with maintenance(base):
            pass
    except Exception as error:  # noqa: BLE001 - any failure to connect means "not here"
        unavailable(f"PostgreSQL does not answer at {urlsplit(base).netloc}: {error}")
    redis = redis_url()
    try:
        import redis as redis_client

        redis_client.Redis.from_url(redis, socket_timeout=3).ping()
    except Exception as error:  # noqa: BLE001
        unavailable(f"Redis does not answer at {urlsplit(redis).netloc}: {error}")

    name = f"llmserver_cluster_{os.getpid()}_{secrets.token_hex(3)}"
    database = with_path(base, f"/{name}")
    run_dir = tmp_path_factory.mktemp("cluster")
    port, backends = free_port(), [free_port(), free_port()]
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "REDIS_URL": redis,
        "CLUSTER_PORT": str(port),
        "CLUSTER_BACKEND_PORTS": ",".join(map(str, backends)),
        "CLUSTER_RUN_DIR": str(run_dir),
        "MODEL_PATH": "models/demo",
        "MODEL_ID": MODEL_ID,
        "ENGINE_STEP_DELAY_MS": str(STEP_DELAY_MS),
        "METRICS_ALLOWED_IPS": CLIENT_ADDRESS,
        "SHUTDOWN_GRACE_SECONDS": "10",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",  # the access log's records carry the client's address
    }
    env.pop("TRUST_X_FORWARDED_FOR", None)  # the script must set it itself
    assert not database_exists(base, name)
    try:
        started = subprocess.run([*CLUSTER, "start"], cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=240)
        assert started.returncode == 0, started.stdout + started.stderr
        assert database_exists(base, name)  # created by the script, as `make cluster` does
        secret = manage(env, "createapikey", "--name", "cluster").splitlines()[-1]
        yield SimpleNamespace(
            base_url=f"http://127.0.0.1:{port}", backends=backends, run_dir=run_dir, env=env, secret=secret,
            log=lambda backend: (run_dir / f"server-{backend}.log").read_text(errors="replace"),
        )
    finally:
        stopped = subprocess.run([*CLUSTER, "stop"], cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=120)
        drop_database(base, name)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.fixture
def api(cluster):
    with httpx.Client(base_url=cluster.base_url, timeout=60, headers=bearer(cluster.secret)) as client:
        yield client


def access_record(log: str, request_id: str) -> dict | None:
    """The access log's record (LOG_FORMAT=json) of the request with this id, once written."""
    for line in log.splitlines():
        if request_id in line:
            record = json.loads(line)
            if record["logger"] == "llmserver.access" and record["request_id"] == request_id:
                return record
    return None


def from_client_address(cluster, **headers) -> httpx.Client:
    """A client whose connections to nginx come from CLIENT_ADDRESS."""
    return httpx.Client(base_url=cluster.base_url, timeout=30, headers=headers,
                        transport=httpx.HTTPTransport(local_address=CLIENT_ADDRESS))


def ask(api: httpx.Client, content: str, **params) -> httpx.Response:
    return api.post("/v1/chat/completions",
                    json={"model": MODEL_ID, "messages": [{"role": "user", "content": content}], **params})


def test_a_chat_completion_through_nginx_is_the_demo_models_exact_answer(api):
    for n in (3, 7, 12):
        response = ask(api, count_prompt(n))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["message"]["content"] == count_answer(n)
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["completion_tokens"] == n


def test_a_stream_arrives_through_nginx_token_by_token(api):
    """With 50 ms a step the answer takes about 2 s; nginx must pass each chunk on as it
    comes (proxy_buffering off), not the whole answer at its end."""
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(40)}], "stream": True}
    arrivals, pieces = [], []
    started = time.monotonic()
    with api.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["x-upstream"].startswith("127.0.0.1:")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            content = json.loads(line[len("data: "):])["choices"][0]["delta"].get("content")
            if content:
                arrivals.append(time.monotonic() - started)
                pieces.append(content)
        total = time.monotonic() - started
    assert "".join(pieces) == count_answer(40)
    assert len(pieces) == 40
    assert total > 40 * STEP_DELAY_MS / 1000 * 0.8, total  # the delay is in force: ~2 s
    assert arrivals[0] < 0.5 * total, (arrivals[0], total)  # the first token long before the end
    # ...and the rest as they were made: spread over the answer's time, not in one burst.
    assert arrivals[-1] - arrivals[0] > 0.5 * total, (arrivals, total)
    assert len({int(t * 10) for t in arrivals}) >= 10, arrivals  # in 10 or more different tenths of a second


def test_both_backends_answer(cluster, api):
    seen = [api.get("/health").headers["x-upstream"] for _ in range(6)]
    assert set(seen) == {f"127.0.0.1:{port}" for port in cluster.backends}, seen
    # ...and both served generations: each server's own access log has some.
    upstreams = {ask(api, count_prompt(2)).headers["x-upstream"] for _ in range(4)}
    assert len(upstreams) == 2
    for port in cluster.backends:
        assert "POST /v1/chat/completions 200 " in cluster.log(port)


def test_errors_keep_openais_shape_through_nginx(cluster):
    with httpx.Client(base_url=cluster.base_url, timeout=30) as client:
        missing_key = client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": []})
        assert missing_key.status_code == 401
        assert missing_key.json()["error"]["code"] == "invalid_api_key"
        assert missing_key.headers["content-type"] == "application/json"
        unknown = client.get("/v1/nothing-here")
        assert unknown.status_code == 404
        assert unknown.json() == {"error": {"message": "Unknown path: /v1/nothing-here",
                                            "type": "invalid_request_error", "param": None, "code": "not_found"}}
        # A large body within MAX_REQUEST_SIZE_MB (10) reaches a backend, which answers...
        body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "x " * 2_000_000}]}
        large = client.post("/v1/chat/completions", json=body)
        assert large.status_code == 401
        assert large.json()["error"]["code"] == "invalid_api_key"
        assert large.headers["x-upstream"].startswith("127.0.0.1:")
        # ...and one over it is refused by nginx itself, in the same shape.
        too_large = client.post("/v1/chat/completions", content=b"x" * (10 * 1024 * 1024 + 1),
                                headers={"Content-Type": "application/json", **bearer(cluster.secret)})
        assert too_large.status_code == 413
        assert too_large.json()["error"]["code"] == "request_too_large"
        assert too_large.json()["error"]["type"] == "invalid_request_error"


def test_the_servers_see_the_clients_address_behind_nginx(cluster):
    """METRICS_ALLOWED_IPS=127.0.0.2: a client connecting from there reads /metrics
    through nginx; one connecting from 127.0.0.1 cannot, even claiming 127.0.0.2 in its
    own X-Forwarded-For (nginx replaces the header). The access log names the client."""
    with from_client_address(cluster, **{"X-Request-ID": "cluster-client-address"}) as client:
        allowed = client.get("/metrics")
    assert allowed.status_code == 200
    assert "llmserver:models_loaded" in allowed.text
    backend = allowed.headers["x-upstream"].rsplit(":", 1)[1]
    record = wait_for(lambda: access_record(cluster.log(int(backend)), "cluster-client-address"), timeout=10)
    assert record["client"] == CLIENT_ADDRESS

    with httpx.Client(base_url=cluster.base_url, timeout=30) as client:
        for headers in ({}, {"X-Forwarded-For": CLIENT_ADDRESS}):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["code"] == "invalid_api_key"


def test_the_chat_pages_socket_works_through_nginx(cluster):
    """Logged in through nginx (the session in the shared database, whichever backend
    answers), the chat page's WebSocket is upgraded through nginx and answers a turn."""
    username = f"cluster-{secrets.token_hex(4)}"
    manage(cluster.env, "shell", "-c",
           f"from django.contrib.auth import get_user_model; "
           f"get_user_model().objects.create_user({username!r}, password={PASSWORD!r})")
    with log_in(cluster, username) as client, chat_socket(cluster, client) as socket:
        socket.send(json.dumps({"type": "chat", "id": "c1", "model": MODEL_ID,
                                "messages": [{"role": "user", "content": count_prompt(5)}]}))
        frames = []
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(socket.recv(timeout=30)))
    assert frames[-1]["type"] == "done", frames
    assert "".join(frame["text"] for frame in frames if frame["type"] == "delta") == count_answer(5)


def test_the_status_command_names_what_runs(cluster):
    status = subprocess.run([*CLUSTER, "status"], cwd=ROOT, env=cluster.env, capture_output=True, text=True,
                            timeout=30)
    assert status.returncode == 0, status.stdout
    for port in cluster.backends:
        assert f"server-{port}: running" in status.stdout
    assert "nginx: running" in status.stdout


def test_stopping_the_cluster_lets_a_stream_in_flight_finish(cluster, api):
    """`make cluster-stop` while an answer streams: nginx quits gracefully and the servers
    drain, so the answer arrives whole; then nothing of the cluster runs. (The module's
    cluster is started again afterwards, for the tests that follow in a random order.)"""
    try:
        _stop_while_streaming(cluster, api)
    finally:
        started = subprocess.run([*CLUSTER, "start"], cwd=ROOT, env=cluster.env, capture_output=True, text=True,
                                 timeout=240)
        assert started.returncode == 0, started.stdout + started.stderr


def _stop_while_streaming(cluster, api) -> None:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(30)}], "stream": True}
    with api.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        stopping = subprocess.Popen([*CLUSTER, "stop"], cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        rest = [line for line in lines if line]
    output, _ = stopping.communicate(timeout=60)
    assert stopping.returncode == 0, output
    assert rest[-1] == "data: [DONE]"
    content = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in rest[:-1])
    assert content == count_answer(30)
    assert "cut off" not in output
    for port in cluster.backends:
        log = cluster.log(port)
        assert "SIGTERM: stopped accepting" in log
        assert "(0 requests cut off)" in log
    assert not list(Path(cluster.run_dir).glob("*.pid"))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{cluster.base_url}/health", timeout=5)


# --- TRUST_X_FORWARDED_FOR, on a server reached directly ------------------------------------


def test_a_spoofed_x_forwarded_for_is_ignored_by_default(tmp_path, live_db):
    server = start_server(tmp_path, METRICS_ALLOWED_IPS=CLIENT_ADDRESS, LOG_FORMAT="json")
    try:
        refused = httpx.get(f"{server.base_url}/metrics", timeout=10,
                            headers={"X-Forwarded-For": CLIENT_ADDRESS, "X-Request-ID": "spoofed-xff"})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert wait_for(lambda: access_record(server.log(), "spoofed-xff"))["client"] == "127.0.0.1"
    finally:
        server.stop()


def test_trust_x_forwarded_for_takes_the_headers_first_address(tmp_path, live_db):
    """What the switch does, and why a server with it on must be reachable through the
    proxy alone: whoever reaches it directly chooses the address it sees."""
    server = start_server(tmp_path, METRICS_ALLOWED_IPS=CLIENT_ADDRESS, TRUST_X_FORWARDED_FOR="true",
                          LOG_FORMAT="json")
    try:
        assert httpx.get(f"{server.base_url}/metrics", timeout=10).status_code == 401
        allowed = httpx.get(f"{server.base_url}/metrics", timeout=10,
                            headers={"X-Forwarded-For": f"{CLIENT_ADDRESS}, 10.0.0.1", "X-Request-ID": "trusted-xff"})
        assert allowed.status_code == 200
        assert wait_for(lambda: access_record(server.log(), "trusted-xff"))["client"] == CLIENT_ADDRESS
    finally:
        server.stop()


def test_a_trust_x_forwarded_for_that_is_not_a_boolean_stops_the_start():
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TRUST_X_FORWARDED_FOR": "ture"}, timeout=60)
    assert done.returncode != 0
    assert "TRUST_X_FORWARDED_FOR must be true or false, got 'ture'" in done.stderr
