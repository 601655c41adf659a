"""HTTP middleware: request ids, timing, access log and the request-size limit.

Both are sync- and async-capable: under Daphne a request stays on the event loop (an
async-incapable middleware would push every request through Django's sync thread), and
the sync test client and management commands still work.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from django.conf import settings
from django.utils.decorators import sync_and_async_middleware

from llmserver.errors import request_too_large
from llmserver.event_stream import EventStream

access_log = logging.getLogger("llmserver.access")

# A client may bring its own id; accept only a sane one so it cannot inject into logs.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# An API key sent where it does not belong (``?api_key=sk-...``, as some clients do for
# other services) must not reach the log with the path.
_SECRET_IN_PATH = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{16,}")


def _fields(request, path: str, status: int, duration_ms: float, outcome: str) -> dict:
    """An access log record's facts as fields of their own, keys of the line's JSON
    object with LOG_FORMAT=json (llmserver/logs.py); the API key's visible prefix and the
    model once an API view has read them (inference/views.py)."""
    fields = {"request_id": request.id, "method": request.method, "path": path, "status": status,
              "duration_ms": duration_ms, "client": request.META.get("REMOTE_ADDR") or None}
    if outcome:
        fields["outcome"] = outcome
    account = getattr(request, "account", None)
    if account is not None:
        fields["key_prefix"] = account.key.prefix
        if account.model:
            fields["model"] = account.model
    return fields


def _request_id(request) -> str:
    given = request.headers.get("X-Request-ID", "")
    return given if _CLIENT_REQUEST_ID.match(given) else uuid.uuid4().hex


@sync_and_async_middleware
def RequestContextMiddleware(get_response):
    """Give every request an id, answer with ``X-Request-ID`` and ``X-Process-Time``
    (seconds until the response headers), and log one line per request when its last
    byte has been sent (for a stream: when the stream ends or the client leaves)."""

    def _log(request, status: int, started: float, outcome: str = "") -> None:
        path = _SECRET_IN_PATH.sub("sk-***", request.get_full_path())
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        access_log.info(
            "%s %s %s %.1fms rid=%s%s",
            request.method,
            path,
            status,
            duration_ms,
            request.id,
            f" {outcome}" if outcome else "",
            extra=_fields(request, path, status, duration_ms, outcome),
        )

    def _prepare(request) -> float:
        request.id = _request_id(request)
        return time.perf_counter()

    def _finish(request, response, started: float):
        response["X-Request-ID"] = request.id
        response["X-Process-Time"] = f"{time.perf_counter() - started:.6f}"
        if not response.streaming:
            _log(request, response.status_code, started)
        elif isinstance(response, EventStream):  # says when it ends; sent without wrappers
            status = response.status_code
            response.when_ended(lambda completed: _log(
                request, status, started, "stream ended" if completed else "client disconnected"))
        elif response.is_async:
            response.streaming_content = _logged_stream(request, response.streaming_content, response.status_code, started)
        else:  # a file (static files: WhiteNoise): logged once sent, without "stream ended"
            response.streaming_content = _logged_file(request, response.streaming_content, response.status_code, started)
        return response

    def _logged_file(request, source, status: int, started: float):
        outcome = ""
        try:
            yield from source
        except BaseException:
            outcome = "client disconnected"
            raise
        finally:
            _log(request, status, started, outcome)

    async def _logged_stream(request, source, status: int, started: float):
        outcome = "stream ended"
        try:
            async for chunk in source:
                yield chunk
        except BaseException:
            outcome = "client disconnected"
            raise
        finally:
            _log(request, status, started, outcome)

    if _is_async(get_response):

        async def middleware(request):
            started = _prepare(request)
            return _finish(request, await get_response(request), started)

    else:

        def middleware(request):
            started = _prepare(request)
            return _finish(request, get_response(request), started)

    return middleware


@sync_and_async_middleware
def RequestSizeLimitMiddleware(get_response):
    """Answer 413 when the declared body is over MAX_REQUEST_SIZE_MB, before it is read.

    A body without Content-Length is caught by Django's DATA_UPLOAD_MAX_MEMORY_SIZE
    (same limit) when it is parsed, and mapped to the same 413 by the error handlers."""

    def _too_large(request) -> bool:
        try:
            return int(request.META.get("CONTENT_LENGTH") or 0) > settings.MAX_REQUEST_SIZE_BYTES
        except ValueError:
            return False

    if _is_async(get_response):

        async def middleware(request):
            if _too_large(request):
                return request_too_large()
            return await get_response(request)

    else:

        def middleware(request):
            if _too_large(request):
                return request_too_large()
            return get_response(request)

    return middleware


def _is_async(get_response) -> bool:
    from asgiref.sync import iscoroutinefunction

    return iscoroutinefunction(get_response)
