"""The chat page: one template, its static files, and the settings it starts with. The
conversation itself runs over the WebSocket of :mod:`chat.consumers`."""

from __future__ import annotations

from functools import wraps

from asgiref.sync import iscoroutinefunction

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import reverse

from accounts.books import books
from accounts.logins import LoginForm
from accounts.models import APIKey
from chat.consumers import WS_PATH
from inference.registry import registry


# The pages load only their own files and talk only to their own origin (the WebSocket
# included): even text that slipped into the page as markup could run no script.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def content_security_policy(view):
    """Send :data:`CONTENT_SECURITY_POLICY` with the responses of ``view`` (sync or async)."""
    if iscoroutinefunction(view):
        @wraps(view)
        async def with_policy(request, *args, **kwargs):
            response = await view(request, *args, **kwargs)
            response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            return response
    else:
        @wraps(view)
        def with_policy(request, *args, **kwargs):
            response = view(request, *args, **kwargs)
            response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            return response
    return with_policy


@content_security_policy
@login_required
async def chat_page(request):
    user = await request.auser()
    request.user = user  # loaded: the template's context processors must not query it again
    # Created here on the first visit, so that an admin sees the user's key (and can set
    # its limits) from then on; on the accounting thread, not Django's sync thread.
    key = await books.call(APIKey.objects.chat_key_for, user)
    models = [spec.id for spec in registry.specs() if key.may_use(*spec.names)]
    config = {
        "models": models,
        "default_model": registry.default if registry.default in models else (models[0] if models else ""),
        "max_tokens": settings.DEFAULT_MAX_TOKENS,
        "temperature": settings.DEFAULT_TEMPERATURE,
        "user": user.get_username(),
        "ws_path": WS_PATH,
        "history": settings.CHAT_HISTORY,
        "conversations_url": reverse("conversations"),
        "limits": {
            "max_concurrency": key.max_concurrency,
            "token_budget": key.token_budget,
            "budget_period": key.get_budget_period_display().lower(),
        },
    }
    return render(request, "chat/chat.html", {"chat_config": config, "is_staff": user.is_staff})



# Django's login view, sync (logins are rare, it may use Django's sync thread), with a
# form that refuses a username or address after too many failures (accounts/logins.py).
login_page = content_security_policy(auth_views.LoginView.as_view(redirect_authenticated_user=True,
                                                                  authentication_form=LoginForm))
