"""How the engine learns that more requests are on their way before it forms a batch:
requests are counted the moment Daphne has read them (llmserver.handlers.CountArrivals),
and a request going to an idle engine first lets the event loop read its sockets
(inference.arrivals.after_pending_reads). tests/test_concurrency.py sends real bursts; the
last test checks the count through ``manage.py serve`` (Daphne and DrainingServer)."""

import asyncio
import os
import socket

import httpx
import pytest

from inference.arrivals import after_pending_reads, arrivals
from llmserver.handlers import ARRIVAL, GENERATION_PATHS, CountArrivals
from tests.conftest import MODEL_ID, bearer, start_server


def _readable_socket_seen(settle) -> bool:
    """Whether a socket callback for data already readable has run once ``settle`` returns."""

    async def main():
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        seen = []
        loop.add_reader(ours.fileno(), lambda: seen.append(ours.recv(10)))
        try:
            await asyncio.sleep(0.01)  # the loop polls with nothing to read yet
            theirs.send(b"request")
            await settle()
            return seen == [b"request"]
        finally:
            loop.remove_reader(ours.fileno())
            ours.close()
            theirs.close()

    return asyncio.run(main())


def test_after_pending_reads_returns_after_the_readable_sockets_callbacks():
    assert _readable_socket_seen(after_pending_reads)


def test_one_turn_of_the_loop_is_not_enough():
    """Why after_pending_reads turns the loop twice: after one, the socket's callback has
    not run yet (an iteration runs the callbacks already scheduled before those it polls)."""

    async def once():
        await asyncio.sleep(0)

    assert not _readable_socket_seen(once)


@pytest.mark.parametrize(("method", "path", "counted"), [
    ("POST", "/v1/chat/completions", True),
    ("POST", "/v1/completions", True),
    ("POST", "/v1/responses", True),
    ("GET", "/v1/chat/completions", False),
    ("POST", "/v1/models/x/load", False),
    ("POST", "/tokenize", False),
])
def test_a_generation_request_counts_from_the_moment_the_application_is_called(method, path, counted):
    ran = []

    async def app(scope, receive, send):
        ran.append(arrivals.count)
        if ARRIVAL in scope:
            scope[ARRIVAL]()  # taken its places: no longer counted
            scope[ARRIVAL]()  # once only
            ran.append(arrivals.count)

    before = arrivals.count
    scope = {"type": "http", "method": method, "path": path}
    coroutine = CountArrivals(app)(scope, None, None)  # as Daphne calls it, in its socket callback
    assert arrivals.count == before + counted  # before the coroutine has run at all
    asyncio.run(coroutine)
    assert ran == ([before + 1, before] if counted else [before])
    assert arrivals.count == before


def test_a_request_that_ends_before_taking_its_places_stops_counting():
    async def refused(scope, receive, send):
        raise ValueError("400")

    before = arrivals.count
    coroutine = CountArrivals(refused)({"type": "http", "method": "POST", "path": "/v1/chat/completions"}, None, None)
    with pytest.raises(ValueError):
        asyncio.run(coroutine)
    assert arrivals.count == before


def test_websockets_pass_through_uncounted():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    before = arrivals.count
    asyncio.run(CountArrivals(app)({"type": "websocket", "path": "/ws/chat/"}, None, None))
    assert arrivals.count == before and ARRIVAL not in seen[0]


def test_the_generation_paths_are_those_of_the_generation_views():
    from django.urls import resolve

    from inference.urls import urlpatterns
    from inference.views import _GenerationView

    generation = {"/" + str(p.pattern) for p in urlpatterns if issubclass(p.callback.view_class, _GenerationView)}
    assert generation == GENERATION_PATHS
    assert all(issubclass(resolve(path).func.view_class, _GenerationView) for path in GENERATION_PATHS)


# Loaded by the server process at start (as sitecustomize): prints the arrival count just
# before and just after each call of Daphne's Server.create_application, the call Daphne
# makes in the socket callback that read a request, before any loop iteration runs the
# application's coroutine.
_PROBE = """
from daphne.server import Server

_create_application = Server.create_application


def create_application(self, protocol, scope):
    from inference.engine import arrivals

    before = arrivals.count
    queue = _create_application(self, protocol, scope)
    print("arrival-probe", scope["type"], scope.get("method", "-"), scope["path"], before, arrivals.count,
          flush=True)
    return queue


Server.create_application = create_application
"""


@pytest.mark.server_process
def test_through_serve_a_generation_request_is_counted_when_daphne_creates_its_application(
        tmp_path, api_key):
    """The count is up when Daphne's ``create_application`` returns, in the socket
    callback that read the request, whatever ``manage.py serve`` puts between Daphne and
    CountArrivals (DrainingServer's application); and it is down again once the request
    has taken its places."""
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "sitecustomize.py").write_text(_PROBE)
    server = start_server(tmp_path, PYTHONPATH=os.pathsep.join(
        filter(None, [str(tmp_path / "probe"), os.environ.get("PYTHONPATH")])))
    try:
        with httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(api_key)) as client:
            answer = client.post("/v1/chat/completions", json={
                "model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
            assert answer.status_code == 200, answer.text
            assert client.post("/tokenize", json={"model": MODEL_ID, "prompt": "Hi"}).status_code == 200
            assert client.get("/v1/models").status_code == 200
    finally:
        server.stop()

    probed = [line.split()[1:] for line in server.log().splitlines() if line.startswith("arrival-probe ")]
    # Before these, start_server's own /health requests (never counted).
    *health, generation, tokenize, models = probed
    assert {tuple(line) for line in health} == {("http", "GET", "/health", "0", "0")}
    assert generation == ["http", "POST", "/v1/chat/completions", "0", "1"]
    assert tokenize == ["http", "POST", "/tokenize", "0", "0"]
    assert models == ["http", "GET", "/v1/models", "0", "0"]
