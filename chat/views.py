"""The chat page: one template, its static files, and the settings it starts with. The
conversation itself runs over the WebSocket of :mod:`chat.consumers`."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from accounts.books import books
from accounts.models import APIKey
from chat.consumers import WS_PATH
from inference.registry import registry


@login_required
async def chat_page(request):
    user = await request.auser()
    request.user = user  # loaded: the template's context processors must not query it again
    # Created here on the first visit, so that an admin sees the user's key (and can set
    # its limits) from then on; on the accounting thread, not Django's sync thread.
    key = await books.call(APIKey.objects.chat_key_for, user)
    models = [worker.model_id for worker in registry.workers() if key.may_use(worker.model_id)]
    config = {
        "models": models,
        "default_model": settings.MODEL_ID if settings.MODEL_ID in models else (models[0] if models else ""),
        "max_tokens": settings.DEFAULT_MAX_TOKENS,
        "temperature": settings.DEFAULT_TEMPERATURE,
        "user": user.get_username(),
        "ws_path": WS_PATH,
        "limits": {
            "max_concurrency": key.max_concurrency,
            "token_budget": key.token_budget,
            "budget_period": key.get_budget_period_display().lower(),
        },
    }
    return render(request, "chat/chat.html", {"chat_config": config, "is_staff": user.is_staff})
