"""The admin's Models page: the catalogue with each model's state, and Load / Unload.

A sync view (the admin's), so it never waits for a load: it starts the load or unload
on the server's event loop, where the registry lives, and redirects at once; the page
shows "loading" until it is done. It acts on this server process, like the API's
/v1/models/{id}/load and /unload.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone as dt_timezone

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_http_methods

from inference.registry import registry
from llmserver.errors import APIError

log = logging.getLogger("llmserver.registry")

_background: set[asyncio.Task] = set()  # strong references until each task ends


@require_http_methods(["GET", "POST"])
def models_page(request):
    if request.method == "POST":
        if not request.user.is_superuser:
            raise PermissionDenied
        action, model_id = request.POST.get("action"), request.POST.get("model", "")
        if action not in ("load", "unload"):
            raise PermissionDenied
        try:
            registry.resolve(model_id)
        except APIError as exc:
            messages.error(request, exc.message)
            return redirect("admin-models")
        async_to_sync(_start)(action, model_id)
        messages.info(request, f"{'Loading' if action == 'load' else 'Unloading'} {model_id}…")
        return redirect("admin-models")
    context = {
        **admin.site.each_context(request),
        "title": "Models",
        "models": [_displayed(status) for status in registry.statuses()],
        "max_loaded": registry.max_loaded,
        "default_model": registry.default,
        "can_manage": request.user.is_superuser,
    }
    return TemplateResponse(request, "admin/inference/models.html", context)


def _displayed(status: dict) -> dict:
    loaded_at = status["loaded_at"]
    return {**status, "loaded_at_display": datetime.fromtimestamp(loaded_at, tz=dt_timezone.utc) if loaded_at else None}


async def _start(action: str, model_id: str) -> None:
    """On the event loop: begin the load or unload and return without waiting for it."""
    task = asyncio.get_running_loop().create_task(_run(action, model_id))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _run(action: str, model_id: str) -> None:
    try:
        await (registry.load(model_id) if action == "load" else registry.unload(model_id))
    except APIError as exc:  # the page shows the model's state and error
        log.warning("admin %s of %s: %s", action, model_id, exc.message)
