"""A lean load generator for streamed completions: HTTP/1.1 over asyncio streams, one
keep-alive connection per client, and no more parsing than the figures need.

Why not httpx: the client shares the machine's two cores with the server it measures.
httpx and a JSON parse per chunk cost ~4 ms of CPU per 50-token stream, which the
server under test loses; this client costs about a quarter of that. Only the chunk that
carries ``usage`` is parsed as JSON; content chunks are recognised by their bytes, which
works because the server writes one SSE event per HTTP chunk (checked: any other
framing fails the request).
"""

from __future__ import annotations

import asyncio
import json
import time

_CONTENT = b'"delta":{"content":"'
_EMPTY_CONTENT = b'"delta":{"content":""'
_FINISHED = b'"finish_reason":"'


class StreamClient:
    """One client: one connection, requests one after another."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None):
        self.host, self.port = host, port
        self._headers = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()
            self._reader = self._writer = None

    async def _post(self, path: str, body: dict) -> tuple[float, int]:
        """Send the request (connecting first if needed); return its start time and the
        response's status (the headers are left to read)."""
        await self.connect()
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n{self._headers}\r\n").encode()
        t0 = time.perf_counter()
        self._writer.write(head + payload)
        return t0, int((await self._reader.readline()).split(b" ", 2)[1])

    async def stream(self, path: str, body: dict) -> dict:
        """POST ``body`` (a streamed request with ``include_usage``) and read its stream.
        Returns ok, status, ttft (seconds to the first content), content chunks,
        completion_tokens (from the usage chunk), itl (seconds per token after the first:
        from the first content to the chunk that finishes the choice, over the tokens
        after the first) and seconds."""
        t0, status = await self._post(path, body)
        reader = self._reader
        chunked = False
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"content-length":
                length = int(value)
        if status != 200 or not chunked:
            error = await reader.readexactly(length) if length else b""
            await self.close()
            return {"ok": False, "status": status, "error": error[:200].decode(errors="replace")}
        ttft, chunks, usage, done, finished = None, 0, None, False, None
        while True:
            size = int((await reader.readline()).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            if done or not data.startswith(b"data: "):
                done = False  # anything after [DONE] or a chunk that is not one event: broken framing
                break
            if data.startswith(b"data: [DONE]"):
                done = True
            elif _CONTENT in data and _EMPTY_CONTENT not in data:
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
            elif b'"usage":{' in data:
                usage = json.loads(data[6:])["usage"]
            if finished is None and _FINISHED in data:
                finished = time.perf_counter() - t0
        ok = done and usage is not None and ttft is not None
        if not ok:
            await self.close()
        tokens = usage["completion_tokens"] if usage else 0
        itl = (finished - ttft) / (tokens - 1) if ok and finished is not None and tokens > 1 else None
        return {"ok": ok, "status": status, "ttft": ttft, "chunks": chunks, "seconds": time.perf_counter() - t0,
                "completion_tokens": tokens, "prompt_tokens": usage["prompt_tokens"] if usage else 0, "itl": itl,
                **({} if ok else {"error": "incomplete stream"})}

    async def complete(self, path: str, body: dict) -> dict:
        """POST a non-streamed ``body``; returns ok, status, seconds, completion_tokens."""
        t0, status = await self._post(path, body)
        reader = self._reader
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = await reader.readexactly(length) if length else b""
        seconds = time.perf_counter() - t0
        if status != 200:
            await self.close()
            return {"ok": False, "status": status, "error": data[:200].decode(errors="replace"), "seconds": seconds}
        usage = json.loads(data)["usage"]
        return {"ok": True, "status": status, "seconds": seconds, "latency": seconds,
                "completion_tokens": usage["completion_tokens"], "prompt_tokens": usage["prompt_tokens"]}
