"""``APIHandler``: Django's ASGI handler for the API paths, without its per-request
thread hops (see llmserver/patches/__init__.py for why this is here, and the pins).

Django's ``ASGIHandler`` runs, for every request, each ``MiddlewareMixin`` hook and the
sync receivers of ``request_started`` / ``request_finished`` through ``sync_to_async``;
inside the request's ``ThreadSensitiveContext`` that is a thread created per request and
a dozen hops to it, most of the event loop's time on short requests (bench/README.md,
"Per-request thread hops"). Django has no switch for it: ``handle`` is copied with the
signals and ``response.close()`` called inline, and ``load_middleware`` builds an
async-only chain.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from django.conf import settings
from django.core import signals
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.core.exceptions import RequestAborted
from django.urls import set_script_prefix
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

from llmserver.event_stream import EventStream



class APIHandler(ASGIHandler):
    """Django's ASGI handler for the API paths (``llmserver.handlers.API_PREFIXES``): the
    same request and response objects, URL resolver, views and error handlers as the rest
    of the site, with

    - its own middleware chain, ``settings.API_MIDDLEWARE``, every one of them async;
    - ``Content-Length`` on every response that is not a stream (CommonMiddleware's job
      elsewhere);
    - the signals' receivers and ``response.close()`` called inline: the receivers Django
      connects (``reset_queries``, ``close_old_connections``, cache closing) only act on
      this thread's connections, and the event loop opens none (the API authenticates with
      API keys and never touches the ORM on the event loop);
    - an :class:`~llmserver.event_stream.EventStream`'s events sent as they come, without
      Django's streaming wrappers."""

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

    async def send_response(self, response, send):
        """Django's, except for an :class:`EventStream`: its headers (it has no cookies),
        then each of its events as one body message, then the end."""
        if not isinstance(response, EventStream):
            await super().send_response(response, send)
            return
        headers = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        async with aclosing(response.events) as events:
            async for data in events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
        response.completed = True
        response.ended()  # before the end reaches the client, as Django's wrappers logged it
        await send({"type": "http.response.body"})
