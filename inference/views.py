"""The OpenAI endpoints: validate, hand to the serving layer, frame as JSON or SSE.

Every view is an async DRF view running on the event loop; a generation never occupies
Django's single sync-view thread, and a stream is an async iterator Daphne consumes
chunk by chunk.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from functools import partial
from pathlib import Path

from adrf.views import APIView
from django.http import HttpResponse, JsonResponse

import llmserver
from accounts.auth import authenticate
from accounts.models import APIKey
from accounts.policies import AdminKey, Anyone, BearerKey, MetricsAccess
from inference import metrics
from inference.lifecycle import Lifecycle, nothing
from inference.protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest, validated
from inference.protocol_responses import ResponsesRequest
from inference.registry import ModelSpec, registry
from inference.responses import ResponsesServing
from inference.serving import ChatServing, CompletionServing, TokenizeServing
from llmserver.event_stream import EventStream
from llmserver.handlers import ARRIVAL

log = logging.getLogger("llmserver.views")


class AsyncAPIView(APIView):
    """An async DRF view that runs entirely on the event loop; its request's life is a
    :class:`~inference.lifecycle.Lifecycle` (when it has an ``endpoint``: a recorded
    request) and who may make it is its ``policy`` (accounts.policies).

    adrf's APIView runs DRF's ``initial()`` (content negotiation, authentication,
    permissions, throttles) through ``sync_to_async``, that is in Django's one sync
    thread, so every API request would queue there behind any slow sync view. Ours have
    no sync policies, so ``initial()`` runs inline.
    """

    endpoint = ""  # the usage record's name for this endpoint; "" for requests not recorded
    policy = BearerKey()

    async def async_dispatch(self, request, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        self.life = Lifecycle(self.endpoint, request.id, arrived=request.scope.get(ARRIVAL, nothing))
        try:
            if self.endpoint:
                async with self.life:
                    response = await self._respond(request, *args, **kwargs)
            else:
                response = await self._respond(request, *args, **kwargs)
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response

    async def _respond(self, request, *args, **kwargs):
        self.initial(request, *args, **kwargs)
        method = request.method.lower()
        handler = getattr(self, method, None) if method in self.http_method_names else None
        if handler is None:
            self.http_method_not_allowed(request, *args, **kwargs)  # 405, before the policy's 401 or 403
        self.credential = await self.policy.authorize(request)
        response = handler(request, *args, **kwargs)
        if inspect.isawaitable(response):
            response = await response
        return response

    def open_account(self, request) -> APIKey | None:
        """The request's account opened for the key its policy admitted; the key, or None
        when keys are off."""
        self.life.open(self.credential, reread=partial(authenticate, request))
        request._request.account = self.life.account  # the access log names its key and model (llmserver/middleware.py)
        return self.credential.key

    def answer(self, data: dict) -> Answer:
        return self.life.answered_by(Answer(data, self.life))


class _ClosesItsLifecycle:
    """A recorded request's response: closing it (Django does, once it is sent or its
    client left) closes the request's lifecycle."""

    life: Lifecycle

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.life.close(self.status_code)


class Answer(_ClosesItsLifecycle, JsonResponse):
    """A recorded request's JSON answer."""

    def __init__(self, data, life: Lifecycle, **kwargs):
        super().__init__(data, **kwargs)
        self.life = life


class EventStreamResponse(_ClosesItsLifecycle, EventStream):
    """Server-sent events from an async iterator of chunk dicts."""

    def __init__(self, chunks: AsyncIterator[dict], life: Lifecycle, *, named_events: bool = False):
        super().__init__(_sse(chunks, life, named_events), content_type="text/event-stream")
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"  # tell nginx not to buffer the stream
        self.life = life


async def _sse(chunks: AsyncIterator[dict], life: Lifecycle, named_events: bool = False) -> AsyncIterator[bytes]:
    """``data: {json}\n\n`` per chunk, then ``data: [DONE]\n\n``; with ``named_events``,
    ``event: {type}`` before each and no [DONE], as the Responses API streams. Closing
    ``chunks`` in ``finally`` cancels the generation when the client leaves."""
    try:
        async for chunk in chunks:
            if "error" in chunk and isinstance(chunk["error"], dict):
                life.error_sent(chunk["error"]["code"])
            elif chunk.get("type") == "error":
                life.error_sent(chunk["code"])
            data = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
            yield b"event: " + chunk["type"].encode() + b"\n" + data if named_events else data
        if not named_events:
            yield b"data: [DONE]\n\n"
    except BaseException:
        life.gone()
        raise
    finally:
        await chunks.aclose()


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
        self.life.model_label = "none"
        key = self.open_account(request)
        specs = [spec for spec in registry.specs() if key is None or key.may_use(*spec.names)]
        return self.answer({"object": "list", "data": [_model_object(spec) for spec in specs]})


class ModelDetailView(AsyncAPIView):
    """One model, by id or alias (the object names the id)."""

    endpoint = "models"

    async def get(self, request, model_id: str):
        self.open_account(request)
        self.life.describe(model=model_id)
        spec = self.life.resolve(model_id)
        await self.life.may_use(spec)
        return self.answer(_model_object(spec))


class LoadedModelsView(AsyncAPIView):
    """The models in this server process's memory (admin keys)."""

    endpoint = "models.loaded"
    policy = AdminKey()

    async def get(self, request):
        self.life.model_label = "none"
        self.open_account(request)
        return self.answer({"object": "list", "max_loaded_models": registry.max_loaded,
                            "data": [s for s in registry.statuses() if s["state"] in _IN_MEMORY]})


_IN_MEMORY = ("loading", "loaded", "unloading")


class _ModelActionView(AsyncAPIView):
    """Load or unload a model in this server process's memory (admin keys)."""

    policy = AdminKey()
    action = ""  # the registry's method: "load" or "unload"

    async def post(self, request, model_id: str):
        self.open_account(request)
        self.life.describe(model=model_id)
        spec = self.life.resolve(model_id)  # an admin key manages every model
        return self.answer(await getattr(registry, self.action)(spec.id))


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
    # Admission reads the key again in its transaction: one known to this process is taken as is.
    policy = BearerKey(known=True)

    async def post(self, request):
        self.open_account(request)
        self.life.describe(model=_model_name(request.data), streamed=_streamed(request.data), user=_user(request.data))
        data = validated(self.request_serializer, request.data)
        spec = self.life.resolve(data["model"])
        await self.life.may_use(spec)
        use = await self.life.hold(spec)
        serving = self.serving_class(use.worker, spec.id)
        generation = await self.life.begin(serving.generation(data))
        if data["stream"]:
            include_usage = data.get("stream_options", {}).get("include_usage", False)
            return self.life.answered_by(EventStreamResponse(serving.stream(generation, include_usage=include_usage),
                                                             self.life, named_events=self.named_events))
        return self.answer(await serving.create(generation))


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
        self.open_account(request)
        self.life.describe(model=_model_name(request.data))
        data = validated(self.request_serializer, request.data)
        spec = self.life.resolve(data["model"])
        await self.life.may_use(spec)
        use = await self.life.hold(spec)
        return self.answer(getattr(TokenizeServing(use.worker), self.action)(data))


class TokenizeView(_TokenizerView):
    endpoint = "tokenize"
    request_serializer = TokenizeRequest
    action = "tokenize"


class DetokenizeView(_TokenizerView):
    endpoint = "detokenize"
    request_serializer = DetokenizeRequest
    action = "detokenize"


def _model_name(data) -> str:
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else ""


def _streamed(data) -> bool:
    return isinstance(data, dict) and data.get("stream") is True


def _user(data) -> str:
    user = data.get("user") if isinstance(data, dict) else None
    return user if isinstance(user, str) else ""


class MetricsView(AsyncAPIView):
    """Prometheus metrics (inference.metrics): for admin keys, or clients whose address
    is in METRICS_ALLOWED_IPS. Not a usage-recorded request: scrapes are frequent."""

    policy = MetricsAccess()

    async def get(self, request):
        body, content_type = metrics.exposition()
        return HttpResponse(body, content_type=content_type)


class HealthView(AsyncAPIView):
    """Liveness and the models' state: 200 while a model is loaded and no loaded model's
    engine has died, else 503. (A model that failed to load is reported, and answers
    503 itself, but leaves the others serving.)"""

    policy = Anyone()

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
