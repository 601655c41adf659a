"""How the engine learns that more requests are on their way before it forms a batch:
requests are counted the moment Daphne has read them (llmserver.handlers.CountArrivals),
and a request going to an idle engine first lets the event loop read its sockets
(inference.arrivals.after_pending_reads). tests/test_concurrency.py sends real bursts."""

import asyncio
import socket

import pytest

from inference.arrivals import after_pending_reads, arrivals
from llmserver.handlers import ARRIVAL, GENERATION_PATHS, CountArrivals


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
