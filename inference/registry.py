"""The models this process serves, by id.

For now one model, from ``MODEL_PATH`` and ``MODEL_ID``; the registry is the one place
the views ask for a model, so more models, aliases and lazy loading can arrive here
without the views changing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings

from inference.engine import EngineWorker, ModelLoadError
from llmserver.errors import APIError, model_not_found

log = logging.getLogger("llmserver.registry")


class ModelRegistry:
    def __init__(self):
        self._workers: dict[str, EngineWorker] = {}

    def load(self, model_id: str, path: str, *, max_batch_size: int, step_delay: float = 0.0) -> EngineWorker:
        worker = EngineWorker(model_id, path, max_batch_size=max_batch_size, step_delay=step_delay)
        worker.start()
        self._workers[model_id] = worker
        return worker

    def get(self, model_id: str) -> EngineWorker:
        """The running worker for ``model_id``: 404 if unknown, 503 if not running."""
        worker = self._workers.get(model_id)
        if worker is None:
            raise model_not_found(model_id)
        if not worker.running:
            raise APIError(
                503,
                f"The model '{model_id}' is not available right now (engine {worker.state}).",
                code="model_unavailable",
                headers={"Retry-After": "5"},
            )
        return worker

    def workers(self) -> list[EngineWorker]:
        return list(self._workers.values())

    def stop_all(self) -> None:
        for worker in self._workers.values():
            worker.stop()
        self._workers.clear()


registry = ModelRegistry()


def load_configured_models() -> None:
    """Load the configured model(s). Called once, when the ASGI application starts."""
    path = str(Path(settings.MODEL_PATH).expanduser())
    try:
        registry.load(settings.MODEL_ID, path, max_batch_size=settings.MAX_BATCH_SIZE,
                      step_delay=settings.ENGINE_STEP_DELAY_MS / 1000)
    except ModelLoadError as exc:
        raise ModelLoadError(f"llmserver: cannot serve MODEL_PATH={settings.MODEL_PATH}: {exc}") from None
