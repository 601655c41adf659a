"""The outermost ASGI applications of the HTTP side: the count of arrivals, the router
between the API paths and the web site, and the API paths' security middleware.

The API paths (:data:`API_PREFIXES`) are served by ``APIHandler`` (llmserver/patches.py:
Django's ASGI handler without its per-request thread hops, with its own async middleware
chain, ``settings.API_MIDDLEWARE``). Everything else (the chat page, login, admin, static
files) goes through Django's own handler and the full ``MIDDLEWARE``.
"""

from __future__ import annotations

from asgiref.sync import markcoroutinefunction
from django.middleware.security import SecurityMiddleware

from inference.arrivals import arrivals
from llmserver.patches.asgi_handler import APIHandler

__all__ = ["API_PREFIXES", "ARRIVAL", "GENERATION_PATHS", "APIHandler", "APISecurityMiddleware", "CountArrivals",
           "HTTPRouter", "is_api_path"]

# Paths served by the API handler; everything else is the web site.
API_PREFIXES = ("/v1/", "/tokenize", "/detokenize", "/health", "/metrics", "/openapi.json")


# The paths of the generation views (inference.views._GenerationView): requests counted
# as arrivals for the engines' batch gathering (CountArrivals).
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})

# The scope key under which CountArrivals leaves the function that stops the count.
ARRIVAL = "llmserver.arrival"


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


class APISecurityMiddleware:
    """Django's SecurityMiddleware (HTTPS redirect, HSTS, nosniff, Referrer-Policy, COOP)
    with its hooks run inline on the event loop: they only read settings and headers.
    It also checks the Host header against ALLOWED_HOSTS, as CommonMiddleware does on the
    web paths: without it a page on another site could reach a server on loopback
    through DNS rebinding (400 otherwise). Except on /health, which is public and which
    load balancers probe by address, whatever the host names served."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.security = SecurityMiddleware(get_response)  # its process_request/process_response hooks
        markcoroutinefunction(self)  # an async middleware, to the middleware before it

    async def __call__(self, request):
        if request.path != "/health":
            request.get_host()  # DisallowedHost: 400 in OpenAI's shape (handler400)
        response = self.security.process_request(request)
        if response is None:
            response = await self.get_response(request)
        return self.security.process_response(request, response)


class HTTPRouter:
    """The ``http`` application: API paths to :class:`APIHandler`, the rest to Django's
    own handler."""

    def __init__(self, api, web):
        self.api, self.web = api, web

    async def __call__(self, scope, receive, send):
        app = self.api if is_api_path(scope["path"]) else self.web
        await app(scope, receive, send)


class CountArrivals:
    """The outermost application: counts a generation request as arrived
    (:class:`inference.arrivals.Arrivals`) the moment Daphne has read all of it.

    Daphne calls the application synchronously in the socket callback that read the
    request (``Server.create_application``); only the coroutine it returns runs later. So
    ``__call__`` is a plain function, and so is every application Daphne calls before it
    (``DrainingServer._application``): the count is up before any request read in the
    same callback, or before, has reached an engine (tests/test_gathering.py checks it
    through ``manage.py serve``). The view stops it when the request takes its places in
    the model's queue (``scope[ARRIVAL]()``), and it stops anyway when the request ends."""

    _asgi_single_callable = True  # asgiref: an ASGI 3 application, though __call__ is not async

    def __init__(self, app):
        self.app = app

    def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in GENERATION_PATHS:
            placed = scope[ARRIVAL] = arrivals.arrive()
            return self._counted(scope, receive, send, placed)
        return self.app(scope, receive, send)

    async def _counted(self, scope, receive, send, placed):
        try:
            await self.app(scope, receive, send)
        finally:
            placed()
