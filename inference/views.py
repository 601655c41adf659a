"""The OpenAI endpoints: validate, hand to the serving layer, frame as JSON or SSE.

Every view is an async DRF view running on the event loop; a generation never occupies
Django's single sync-view thread, and a stream is an async iterator Daphne consumes
chunk by chunk.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

from adrf.views import APIView
from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse

import llmserver
from inference.admission import ConcurrencyLimit
from inference.protocol import ChatCompletionRequest, CompletionRequest
from inference.registry import registry
from inference.serving import ChatServing, CompletionServing
from llmserver.errors import model_not_found


class AsyncAPIView(APIView):
    """adrf's APIView runs DRF's ``initial()`` (content negotiation, authentication,
    permissions, throttles) through ``sync_to_async``, that is in Django's one sync
    thread, so every API request would queue there behind any slow sync view. Ours have
    no sync policies, so ``initial()`` runs inline, on the event loop."""

    async def async_dispatch(self, request, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            self.initial(request, *args, **kwargs)
            method = request.method.lower()
            handler = getattr(self, method, None) if method in self.http_method_names else None
            response = (handler or self.http_method_not_allowed)(request, *args, **kwargs)
            if inspect.isawaitable(response):
                response = await response
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response


def _model_object(worker) -> dict:
    return {
        "id": worker.model_id,
        "object": "model",
        "created": int(Path(worker.path, "genai_config.json").stat().st_mtime),
        "owned_by": "llmserver",
    }


class ModelListView(AsyncAPIView):
    async def get(self, request):
        return JsonResponse({"object": "list", "data": [_model_object(w) for w in registry.workers()]})


class ModelDetailView(AsyncAPIView):
    async def get(self, request, model_id: str):
        for worker in registry.workers():
            if worker.model_id == model_id:
                return JsonResponse(_model_object(worker))
        raise model_not_found(model_id)


in_flight = ConcurrencyLimit(settings.MAX_CONCURRENT_REQUESTS)


class _GenerationView(AsyncAPIView):
    request_serializer = None
    serving_class = None

    async def post(self, request):
        body = self.request_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        worker = registry.get(data["model"])
        slot = in_flight.acquire()
        streaming = False
        try:
            serving = self.serving_class(worker, data["model"])
            generation = serving.generation(data)
            if data["stream"]:
                include_usage = data.get("stream_options", {}).get("include_usage", False)
                response = EventStreamResponse(serving.stream(generation, include_usage=include_usage), on_close=slot.release)
                streaming = True
                return response
            return JsonResponse(await serving.create(generation))
        finally:
            if not streaming:
                slot.release()


class ChatCompletionsView(_GenerationView):
    request_serializer = ChatCompletionRequest
    serving_class = ChatServing


class CompletionsView(_GenerationView):
    request_serializer = CompletionRequest
    serving_class = CompletionServing


class EventStreamResponse(StreamingHttpResponse):
    """Server-sent events from an async iterator of chunk dicts. ``on_close`` runs when
    Django closes the response: after the last byte, or after the client left."""

    def __init__(self, chunks: AsyncIterator[dict], *, on_close):
        super().__init__(_sse(chunks), content_type="text/event-stream")
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"  # tell nginx not to buffer the stream
        self._on_close = on_close

    def close(self):
        self._on_close()
        super().close()


async def _sse(chunks: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    """Server-sent events: ``data: {json}\\n\\n`` per chunk, then ``data: [DONE]\\n\\n``.
    Closing ``chunks`` in ``finally`` cancels the generation when the client leaves."""
    try:
        async for chunk in chunks:
            yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        await chunks.aclose()


class HealthView(AsyncAPIView):
    """Liveness and engine state: 200 when every model's engine runs, else 503."""

    async def get(self, request):
        models = [
            {
                "id": worker.model_id,
                "state": worker.state if worker.running or worker.state != "running" else "stopped",
                "error": worker.error,
                "max_batch_size": worker.max_batch_size,
                "batch_limit": worker.batch_limit,
                "context_length": worker.context_length,
                **asdict(worker.stats),
            }
            for worker in registry.workers()
        ]
        healthy = bool(models) and all(m["state"] == "running" for m in models)
        return JsonResponse(
            {
                "status": "ok" if healthy else "unavailable",
                "version": llmserver.__version__,
                "model": settings.MODEL_ID,
                "models": models,
            },
            status=200 if healthy else 503,
        )
