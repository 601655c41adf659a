"""The OpenAI endpoints: validate, hand to the serving layer, frame as JSON or SSE.

Every view is an async DRF view running on the event loop; a generation never occupies
Django's single sync-view thread, and a stream is an async iterator Daphne consumes
chunk by chunk.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from functools import partial
from pathlib import Path

from adrf.views import APIView
from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse

import llmserver
from accounts.auth import authenticate
from accounts.models import APIKey
from accounts.refusals import UnknownKey, check_model_access
from accounts.usage import RequestAccount
from inference import metrics
from inference.admission import ConcurrencyLimit
from inference.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, ResponsesRequest,
                                TokenizeRequest)
from inference.registry import ModelSpec, ModelUse, registry
from inference.serving import ChatServing, CompletionServing, ResponsesServing, TokenizeServing
from llmserver.errors import APIError
from llmserver.handlers import ARRIVAL

log = logging.getLogger("llmserver.views")


class AsyncAPIView(APIView):
    """An async DRF view that runs entirely on the event loop, and closes the books of
    each request exactly once.

    adrf's APIView runs DRF's ``initial()`` (content negotiation, authentication,
    permissions, throttles) through ``sync_to_async``, that is in Django's one sync
    thread, so every API request would queue there behind any slow sync view. Ours have
    no sync policies (keys are checked by :meth:`authenticate_key`), so ``initial()``
    runs inline.

    What a request opened (its :class:`RequestAccount`: lease and usage record; or, with
    keys off, its in-process slot) is closed when Django closes the response, after its
    last byte or after the client left, or here if the client left before any response
    existed (Django then cancels the view).
    """

    endpoint = ""  # the usage record's name for this endpoint

    async def async_dispatch(self, request, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        self.account: RequestAccount | None = None
        self.slot = None
        self.model_use: ModelUse | None = None
        self.started = time.perf_counter()
        self.generation = None  # for the metrics, once generation starts
        self.model_label = "unknown"  # the catalogue id, once the model is known (bounded labels)
        try:
            self.initial(request, *args, **kwargs)
            method = request.method.lower()
            handler = getattr(self, method, None) if method in self.http_method_names else None
            response = (handler or self.http_method_not_allowed)(request, *args, **kwargs)
            if inspect.isawaitable(response):
                response = await response
        except asyncio.CancelledError:
            if self.account is not None:
                self.account.client_disconnected = True
            self._close(CLIENT_CLOSED_REQUEST)
            raise
        except Exception as exc:
            response = self.handle_exception(await self._key_refusal_first(exc))
        self.response = self.finalize_response(request, response, *args, **kwargs)
        if self.endpoint or self.account is not None or self.slot is not None or self.model_use is not None:
            # Django calls a response's closers once it is done with it, on every path.
            self.response._resource_closers.append(partial(self._close, self.response.status_code, self.response))
        return self.response

    async def _key_refusal_first(self, exc: Exception) -> Exception:
        """A request refused before its key was read from the database (it came from
        this process's known keys) is refused for its key if the key is no longer
        usable: a revoked key always gets its 401, whatever else is wrong."""
        if self.account is None or self.account.key_checked:
            return exc
        try:
            await authenticate(self.request, fresh=True)
        except APIError as refusal:
            if isinstance(refusal, UnknownKey):
                self.account.discard()
            return refusal
        return exc

    def _close(self, status_code: int, response=None) -> None:
        """Give back what the request holds and have its record written (the database
        work happens on the accounting thread; nothing here blocks).

        A client that left before the engine began its generation is recorded as 499,
        as one that left before the response began is, even if a stream's headers were
        out: none of the answer was."""
        if self.generation is not None:
            self.generation.release_places()
            if self.account is not None and self.account.client_disconnected and not self.generation.began:
                status_code = CLIENT_CLOSED_REQUEST
        try:
            if self.account is not None:
                self.account.finish(status_code, response)
        except Exception:
            # Django swallows a closer's exceptions; a lost usage record must be loud.
            log.exception("could not record usage of request %s", self.account.request_id)
        finally:
            if self.slot is not None:
                self.slot.release()
            if self.model_use is not None:
                self.model_use.release()
            if self.endpoint:
                metrics.observe(self.endpoint, self.model_label, status_code, self.started, self.generation)

    async def authenticate_key(self, request, *, fresh: bool = True) -> APIKey | None:
        """The request's API key (401 if missing or bad), and its account opened; None
        when keys are not required. ``fresh=False``: a key this process knows may be
        taken without reading it, for requests that go on to admission, which does."""
        if not settings.REQUIRE_API_KEY:
            return None
        key = await authenticate(request, fresh=fresh)
        self.account = RequestAccount(key, request.id, self.endpoint, key_checked=fresh)
        request._request.account = self.account  # the access log names its key and model (llmserver/middleware.py)
        return key

    async def check_model_access(self, key: APIKey | None, spec: ModelSpec) -> APIKey | None:
        """403 if ``key`` may not use the model (by its id or an alias), judged by the
        key as the database has it now; returns that key."""
        if key is None or key.may_use(*spec.names):
            return key
        if not self.account.key_checked:  # the model may have been allowed since
            key = self.account.key = await authenticate(self.request)
            self.account.key_checked = True
        check_model_access(key, *spec.names)
        return key

    async def hold_model(self, spec: ModelSpec) -> ModelUse:
        """The model loaded (loading it now if need be: 503 if it cannot be) and held
        until the response ends."""
        self.model_use = await registry.acquire(spec.id)
        self.model_label = spec.id
        return self.model_use

    async def admit(self) -> None:
        """Take a place in flight: the key's and the deployment's limits, or 429."""
        if self.account is not None:
            await self.account.admit()
        else:
            self.slot = in_flight.acquire()


# Status recorded for a request whose client left before the response began (nginx's).
CLIENT_CLOSED_REQUEST = 499


def _nothing() -> None:
    """Stands in for the arrival count's stop where no CountArrivals counted the request."""


# With API keys off, the concurrency limit of this process alone.
in_flight = ConcurrencyLimit()


def _model_object(spec: ModelSpec) -> dict:
    try:
        created = int(Path(spec.path, "genai_config.json").stat().st_mtime)
    except OSError:  # a folder that is not there (yet): listed, and 503 when asked for
        created = 0
    # max_model_len as vLLM reports it: the tokens one sequence (prompt and answer) may hold.
    return {"id": spec.id, "object": "model", "created": created, "owned_by": "llmserver",
            "max_model_len": registry.max_model_len(spec)}


class ModelListView(AsyncAPIView):
    """Every model in the catalogue the key may use, loaded or not."""

    endpoint = "models"

    async def get(self, request):
        self.model_label = "none"
        key = await self.authenticate_key(request)
        specs = [spec for spec in registry.specs() if key is None or key.may_use(*spec.names)]
        return JsonResponse({"object": "list", "data": [_model_object(spec) for spec in specs]})


class ModelDetailView(AsyncAPIView):
    """One model, by id or alias (the object names the id)."""

    endpoint = "models"

    async def get(self, request, model_id: str):
        key = await self.authenticate_key(request)
        if self.account is not None:
            self.account.model = model_id[:256]
        spec = registry.resolve(model_id)
        self.model_label = spec.id
        if key is not None:
            self.account.model = spec.id
            check_model_access(key, *spec.names)
        return JsonResponse(_model_object(spec))


class _ModelManagementView(AsyncAPIView):
    """Load, unload and inspect models: for keys with the admin flag (or anyone when keys
    are off). Acts on this server process's memory."""

    async def authenticate_admin(self, request) -> None:
        key = await self.authenticate_key(request)
        if key is not None and not key.is_admin:
            raise APIError(403, "Managing models needs an API key with the admin flag.", code="admin_key_required")


class LoadedModelsView(_ModelManagementView):
    endpoint = "models.loaded"

    async def get(self, request):
        self.model_label = "none"
        await self.authenticate_admin(request)
        return JsonResponse({"object": "list", "max_loaded_models": registry.max_loaded,
                             "data": [s for s in registry.statuses() if s["state"] in _IN_MEMORY]})


_IN_MEMORY = ("loading", "loaded", "unloading")


class _ModelActionView(_ModelManagementView):
    action = ""  # the registry's method: "load" or "unload"

    async def post(self, request, model_id: str):
        await self.authenticate_admin(request)
        self.model_label = registry.resolve(model_id).id
        if self.account is not None:
            self.account.model = self.model_label
        return JsonResponse(await getattr(registry, self.action)(model_id))


class LoadModelView(_ModelActionView):
    endpoint = "models.load"
    action = "load"


class UnloadModelView(_ModelActionView):
    endpoint = "models.unload"
    action = "unload"


class _GenerationView(AsyncAPIView):
    request_serializer = None
    serving_class = None
    named_events = False  # SSE framing: "event: <type>" lines and no [DONE] (the Responses API)

    async def post(self, request):
        key = await self.authenticate_key(request, fresh=False)
        if key is not None:
            self.account.model = _model_name(request.data)  # recorded even if the body is invalid
        body = self.request_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        spec = registry.resolve(data["model"])
        key = await self.check_model_access(key, spec)
        account = self.account
        if account is not None:
            account.model, account.model_names = spec.id, spec.names
            account.streamed = data["stream"]
            account.user = data.get("user", "")
        use = await self.hold_model(spec)
        serving = self.serving_class(use.worker, spec.id)
        # Tokenize and check the prompt and the grammar before admission: a 400 consumes no
        # limit; nor does a 503 for a queue already full.
        generation = self.generation = serving.generation(data)
        await generation.check_grammar()
        generation.hold_places()
        # Counted since it was read (llmserver.handlers.CountArrivals); from now on the
        # engine counts it among the queued.
        request.scope.get(ARRIVAL, _nothing)()
        await self.admit()
        if account is not None:
            account.generation = generation
        if data["stream"]:
            include_usage = data.get("stream_options", {}).get("include_usage", False)
            return EventStreamResponse(serving.stream(generation, include_usage=include_usage), account,
                                       named_events=self.named_events)
        return JsonResponse(await serving.create(generation))


class ChatCompletionsView(_GenerationView):
    endpoint = "chat.completions"
    request_serializer = ChatCompletionRequest
    serving_class = ChatServing


class CompletionsView(_GenerationView):
    endpoint = "completions"
    request_serializer = CompletionRequest
    serving_class = CompletionServing


class ResponsesView(_GenerationView):
    """``POST /v1/responses``, stateless (see ResponsesRequest)."""

    endpoint = "responses"
    request_serializer = ResponsesRequest
    serving_class = ResponsesServing
    named_events = True


class _TokenizerView(AsyncAPIView):
    """``/tokenize`` and ``/detokenize``: the model's tokenizer, for clients counting
    tokens before they send. Any key that may use the model; no generation, so no
    admission (recorded, with no tokens)."""

    request_serializer = None
    action = ""

    async def post(self, request):
        key = await self.authenticate_key(request)
        if key is not None:
            self.account.model = _model_name(request.data)
        body = self.request_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        spec = registry.resolve(body.validated_data["model"])
        await self.check_model_access(key, spec)
        if self.account is not None:
            self.account.model = spec.id
        use = await self.hold_model(spec)
        return JsonResponse(getattr(TokenizeServing(use.worker), self.action)(body.validated_data))


class TokenizeView(_TokenizerView):
    endpoint = "tokenize"
    request_serializer = TokenizeRequest
    action = "tokenize"


class DetokenizeView(_TokenizerView):
    endpoint = "detokenize"
    request_serializer = DetokenizeRequest
    action = "detokenize"


class EventStreamResponse(StreamingHttpResponse):
    """Server-sent events from an async iterator of chunk dicts."""

    def __init__(self, chunks: AsyncIterator[dict], account: RequestAccount | None, *, named_events: bool = False):
        super().__init__(_sse(chunks, account, named_events), content_type="text/event-stream")
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"  # tell nginx not to buffer the stream


async def _sse(chunks: AsyncIterator[dict], account: RequestAccount | None,
               named_events: bool = False) -> AsyncIterator[bytes]:
    """``data: {json}\n\n`` per chunk, then ``data: [DONE]\n\n``; with ``named_events``,
    ``event: {type}`` before each and no [DONE], as the Responses API streams. Closing
    ``chunks`` in ``finally`` cancels the generation when the client leaves."""
    try:
        async for chunk in chunks:
            if account is not None:
                if "error" in chunk and isinstance(chunk["error"], dict):
                    account.error_code = chunk["error"]["code"] or ""
                elif chunk.get("type") == "error":
                    account.error_code = chunk["code"] or ""
            data = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
            yield b"event: " + chunk["type"].encode() + b"\n" + data if named_events else data
        if not named_events:
            yield b"data: [DONE]\n\n"
    except BaseException:
        if account is not None:
            account.client_disconnected = True
        raise
    finally:
        await chunks.aclose()


def _model_name(data) -> str:
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else ""


class MetricsView(AsyncAPIView):
    """Prometheus metrics (inference.metrics): for admin keys, or clients whose address
    is in METRICS_ALLOWED_IPS. Not a usage-recorded request: scrapes are frequent."""

    async def get(self, request):
        if settings.REQUIRE_API_KEY and request.META.get("REMOTE_ADDR") not in settings.METRICS_ALLOWED_IPS:
            key = await authenticate(request)
            if not key.is_admin:
                raise APIError(403, "The metrics need an API key with the admin flag, or a client address in "
                                    "METRICS_ALLOWED_IPS.", code="admin_key_required")
        body, content_type = metrics.exposition()
        return HttpResponse(body, content_type=content_type)


class HealthView(AsyncAPIView):
    """Liveness and the models' state: 200 while a model is loaded and no loaded model's
    engine has died, else 503. (A model that failed to load is reported, and answers
    503 itself, but leaves the others serving.)"""

    async def get(self, request):
        models = []
        for slot in registry.slots():
            status = slot.status()
            del status["path"]  # /health is public: no file system paths
            worker = slot.worker
            if worker is not None:
                status.update(context_length=worker.context_length, queued=worker.queued, **asdict(worker.stats))
            models.append(status)
        healthy = any(m["state"] == "loaded" for m in models) and not any(s.engine_died for s in registry.slots())
        return JsonResponse(
            {
                "status": "ok" if healthy else "unavailable",
                "version": llmserver.__version__,
                "model": registry.default,
                "models": models,
            },
            status=200 if healthy else 503,
        )
