"""The API's ASGI application driven in-process, as Daphne drives it: the same chain
(``CountArrivals`` around ``APIHandler``, llmserver/asgi.py), many requests at once on
the test's event loop, and a streamed body read chunk by chunk as it is sent.

Django's test ``AsyncClient`` is no substitute for concurrency tests: it runs the web
site's middleware chain, whose sync members serialize the requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from llmserver.handlers import APIHandler, CountArrivals


class Response:
    def __init__(self, status: int, headers: dict[str, str], chunks: asyncio.Queue, done: asyncio.Task,
                 disconnected: asyncio.Event):
        self.status = status
        self.headers = headers
        self._chunks = chunks
        self._done = done
        self._disconnected = disconnected

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces, each as the application sent it."""
        while True:
            chunk = await self._chunks.get()
            if chunk is None:
                await self._done
                return
            yield chunk

    async def body(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def json(self):
        return json.loads(await self.body())

    async def disconnect(self) -> None:
        """The client leaves (``http.disconnect``, as Daphne sends when the socket
        closes) without reading the rest; return once the application has finished."""
        self._disconnected.set()
        await self._done


class InProcessAPI:
    def __init__(self):
        self.application = CountArrivals(APIHandler())

    async def post(self, path: str, body: dict, headers: dict[str, str] | None = None) -> Response:
        data = json.dumps(body).encode()
        return await self.request("POST", path, data, {"content-type": "application/json",
                                                       "content-length": str(len(data)), **(headers or {})})

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return await self.request("GET", path, b"", headers or {})

    async def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Response:
        """Send the request; return once the response's status has been sent."""
        path, _, query = path.partition("?")
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": [(b"host", b"127.0.0.1")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
        }
        sent_body = False
        disconnected = asyncio.Event()
        started: asyncio.Future = asyncio.get_running_loop().create_future()
        chunks: asyncio.Queue = asyncio.Queue()

        async def receive():
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
                started.set_result((message["status"], headers))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    await chunks.put(message["body"])
                if not message.get("more_body", False):
                    await chunks.put(None)

        async def run():
            try:
                await self.application(scope, receive, send)
            finally:
                disconnected.set()
                if not started.done():
                    started.set_exception(AssertionError("the application sent no response"))

        done = asyncio.get_running_loop().create_task(run())
        status, response_headers = await started
        return Response(status, response_headers, chunks, done, disconnected)
