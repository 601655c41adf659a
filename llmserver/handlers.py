"""The ASGI handler of the API paths: Django's, without its per-request thread hops.

Django's ``ASGIHandler`` runs, for every request, each ``MiddlewareMixin`` hook
(security, sessions, common, CSRF, authentication, messages, clickjacking) and the sync
receivers of ``request_started`` / ``request_finished`` through ``sync_to_async``; inside
the request's ``ThreadSensitiveContext`` that means a thread created per request and a
dozen hops to it. Sampled with py-spy on a server answering 1-token requests one after
another, those hooks were most of the event loop's time (bench/README.md).

The API needs none of it: it authenticates with API keys (no session, no CSRF, no
messages) and never touches the ORM on the event loop (the accounting thread has its own
connection). So the API paths (:data:`API_PREFIXES`) get this handler: the same request
and response objects, URL resolver, views and error handlers as the rest of the site,
with

- its own middleware chain, ``settings.API_MIDDLEWARE``, every one of them async;
- ``Content-Length`` on every response that is not a stream (CommonMiddleware's job
  elsewhere);
- the signals' receivers and ``response.close()`` called inline: the receivers Django
  connects (``reset_queries``, ``close_old_connections``, cache closing) only act on this
  thread's connections, and the event loop opens none.

Everything else (the chat page, login, admin, static files) goes through Django's own
handler and the full ``MIDDLEWARE``.
"""

from __future__ import annotations

import asyncio

from django.conf import settings
from django.core import signals
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.core.exceptions import RequestAborted
from django.middleware.security import SecurityMiddleware
from django.urls import set_script_prefix
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

from inference.engine import arrivals

# Paths served by the API handler; everything else is the web site.
API_PREFIXES = ("/v1/", "/tokenize", "/detokenize", "/health", "/metrics", "/openapi.json")


# The paths of the generation views (inference.views._GenerationView): requests counted
# as arrivals for the engines' batch gathering (CountArrivals).
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})

# The scope key under which CountArrivals leaves the function that stops the count.
ARRIVAL = "llmserver.arrival"


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


class APISecurityMiddleware(SecurityMiddleware):
    """Django's SecurityMiddleware (HTTPS redirect, HSTS, nosniff, Referrer-Policy, COOP)
    with its hooks run inline on the event loop: they only read settings and headers.
    It also checks the Host header against ALLOWED_HOSTS, as CommonMiddleware does on the
    web paths: without it a page on another site could reach a server on loopback
    through DNS rebinding (400 otherwise). Except on /health, which is public and which
    load balancers probe by address, whatever the host names served."""

    sync_capable = False
    async_capable = True

    async def __acall__(self, request):
        if request.path != "/health":
            request.get_host()  # DisallowedHost: 400 in OpenAI's shape (handler400)
        response = self.process_request(request)
        if response is None:
            response = await self.get_response(request)
        return self.process_response(request, response)


class APIHandler(ASGIHandler):
    def load_middleware(self, is_async=False):
        """``settings.API_MIDDLEWARE``, each async-capable, around the async view path
        (none has process_view, process_template_response or process_exception hooks)."""
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        handler = convert_exception_to_response(self._get_response_async)
        for path in reversed(settings.API_MIDDLEWARE):
            factory = import_string(path)
            if not getattr(factory, "async_capable", False):
                raise RuntimeError(f"API_MIDDLEWARE: {path} is not async-capable")
            if getattr(factory, "__acall__", None) is MiddlewareMixin.__acall__:
                raise RuntimeError(f"API_MIDDLEWARE: {path} runs its hooks through sync_to_async (a thread hop each)")
            middleware = factory(handler)
            for hook in ("process_view", "process_template_response", "process_exception"):
                if hasattr(middleware, hook):
                    raise RuntimeError(f"API_MIDDLEWARE: {path} has a {hook} hook, which this handler does not run")
            handler = convert_exception_to_response(middleware)
        self._middleware_chain = handler

    async def handle(self, scope, receive, send):
        """Django 5.2's ``ASGIHandler.handle`` with the signals and ``response.close()``
        called inline instead of through ``sync_to_async``."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return

        async def process_request(request, send):
            response = await self.run_get_response(request)
            if not response.streaming and not response.has_header("Content-Length"):
                response.headers["Content-Length"] = str(len(response.content))  # as CommonMiddleware does
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected during send_response
            return response

        # Watch for a disconnect while the response is produced (as Django does).
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            signals.request_finished.send(sender=self.__class__)
        else:
            response.close()  # sends request_finished
        body_file.close()


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
    (:class:`inference.engine.Arrivals`) the moment Daphne has read all of it.

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
