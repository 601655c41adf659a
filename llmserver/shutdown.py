"""Graceful shutdown: SIGTERM (or SIGINT) drains the server; a second one cuts it short.

Why not Daphne's own handling: on SIGTERM it stops the reactor at once and cancels every
application instance, so every stream in flight is cut mid-answer, and a request waiting
for the engine is dropped without an answer. A deployment restarting a server (a new
release, a scaled-down pod) would break its users' answers each time.

:class:`DrainingServer` is Daphne's server with these signals handled here instead. On
the first signal:

1. the listening sockets close, so new connections are refused (a load balancer or a
   client's retry goes elsewhere); a request that still arrives on an open keep-alive
   connection is answered 503 ``server_shutting_down`` with ``Retry-After`` and
   ``Connection: close``, and so is a new chat-page turn (chat.consumers);
2. every HTTP request in flight and every chat-page turn runs to its end, for up to
   ``SHUTDOWN_GRACE_SECONDS``;
3. if some are still running then, the engines stop: their turns end with an error in
   OpenAI's shape, which their clients receive (in the stream, or as a 503) and their
   usage records note, with the tokens generated so far;
4. the reactor stops, and ``manage.py serve`` writes every usage record and lease still
   waiting (accounts.books) and exits 0.

A second signal during the drain skips the rest of the grace time: the engines stop at
once and the server exits as soon as the answers they cut are sent (within
``_WIND_DOWN_SECONDS``), still recording them.

The signal handlers only hand over to the reactor's thread (``reactor.callFromThread``,
which is safe from a signal handler); everything else runs on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time

from daphne.http_protocol import WebRequest
from twisted.internet import reactor

from llmserver.errors import SHUTDOWN_RETRY_AFTER_SECONDS, shutting_down
from llmserver.patches.http_framing import DaphneServer

log = logging.getLogger("llmserver.shutdown")

# How often the drain looks at what is still in flight.
_POLL_SECONDS = 0.05
# After the engines stop: how long the answers they cut get to reach their clients.
_WIND_DOWN_SECONDS = 5.0

_draining = False
_chat_turns: set[asyncio.Task] = set()


def draining() -> bool:
    """Whether the server has stopped taking new work."""
    return _draining


def track_turn(task: asyncio.Task) -> None:
    """Count a chat-page turn as work in flight until its task ends (a chat socket
    stays open between turns, so the socket itself is not)."""
    _chat_turns.add(task)
    task.add_done_callback(_chat_turns.discard)


class DrainingServer(DaphneServer):
    """Daphne's server (with llmserver's HTTP framing, llmserver.patches.http_framing),
    drained on SIGTERM and SIGINT (see the module docstring)."""

    def __init__(self, application, *, grace_seconds: float, **options):
        super().__init__(self._application, signal_handlers=False, **options)
        self._wrapped = application
        self.grace_seconds = grace_seconds
        self._ports = []
        self._deadline = 0.0  # monotonic; the end of the grace time, once draining
        self._drain_task: asyncio.Task | None = None

    def run(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        super().run()

    def listen_success(self, port):
        super().listen_success(port)
        self._ports.append(port)  # to stop listening when the drain starts
        address = port.getHost()
        log.info("listening on %s:%s", address.host, address.port)

    def create_application(self, protocol, scope):
        if _draining and scope["type"] == "http":
            protocol.channel.persistent = False  # Twisted closes the connection after the 503
        return super().create_application(protocol, scope)

    def _application(self, scope, receive, send):
        """The application Daphne calls: a plain function returning the instance's
        coroutine, not a coroutine function. Daphne calls it synchronously, in the socket
        callback that read the request (``Server.create_application``), so the wrapped
        application's own synchronous part (``CountArrivals`` counting the request, for
        the engines' batch gathering) runs there too; an ``async def`` here would put it
        off to the coroutine's first step, a loop iteration later."""
        if _draining and scope["type"] == "http":
            return _refuse(send)
        return self._wrapped(scope, receive, send)

    # --- the drain, on the reactor's thread -----------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        reactor.callFromThread(self._signalled, signal.Signals(signum).name)

    def _signalled(self, name: str) -> None:
        global _draining
        if self._drain_task is None:
            _draining = True
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(name))
        else:
            log.info("%s again: cutting the drain short", name)
            self._deadline = 0.0

    async def _drain(self, name: str) -> None:
        started = time.monotonic()
        self._deadline = started + self.grace_seconds
        for port in self._ports:
            port.stopListening()
        log.info("%s: stopped accepting; draining %d requests in flight (for up to %gs)",
                 name, self._in_flight(), self.grace_seconds)
        while self._in_flight() and time.monotonic() < self._deadline:
            await asyncio.sleep(_POLL_SECONDS)
        cut = self._in_flight()
        if cut:
            from inference.registry import registry

            workers = registry.workers()
            await asyncio.to_thread(_stop, workers)
            wound_down = time.monotonic() + _WIND_DOWN_SECONDS
            while self._in_flight() and time.monotonic() < wound_down:
                await asyncio.sleep(_POLL_SECONDS)
        log.info("drained in %.1fs (%d requests cut off); stopping", time.monotonic() - started, cut)
        reactor.stop()

    def _in_flight(self) -> int:
        """HTTP requests not yet answered in full, and chat-page turns."""
        requests = 0
        for protocol, details in list(self.connections.items()):
            if not isinstance(protocol, WebRequest):
                continue  # a WebSocket: its turns are counted instead
            instance = details.get("application_instance")
            if instance is not None:
                requests += not instance.done()
            else:  # not handed to the application yet, unless the client already left
                requests += "disconnected" not in details
        return requests + len(_chat_turns)


def _stop(workers) -> None:
    for worker in workers:
        worker.stop()


async def _refuse(send) -> None:
    error = shutting_down()
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(SHUTDOWN_RETRY_AFTER_SECONDS).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
