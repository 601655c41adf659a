"""One request's life, from its key to its usage record, the same for the HTTP views
(inference.views) and the chat page's socket (chat.consumers).

A :class:`Lifecycle` is entered when a request arrives (``async with``). What the
request holds is taken through it, in this order: its account (the key's lease and usage
record, accounts.usage), the model (a registry.ModelUse), its places in the model's
queue, and admission (the key's and the deployment's limits; with keys off, this
process's concurrency limit). :meth:`close` gives all of it back, has the record written
and observes the request's metrics, exactly once, whatever the exit. The caller keeps
only its framing: JSON or server-sent events, or the socket's frames.

Where the request ends:

- leaving the ``async with`` by an exception closes it, with the status the exception
  stands for (:func:`llmserver.errors.as_api_error`), which is raised on to the caller
  as that APIError; once the answer has begun (:meth:`answering`: a stream's headers or
  the socket's "start" frame are out) the status stays the one sent (200), with the
  error's code;
- a cancellation (the client left, a chat turn was stopped) closes it as the client
  gone: 499 when none of the answer reached the client (the answer had not begun, or
  the engine had not begun generating it), else the status sent;
- leaving normally closes it with 200, unless the answer was handed to an HTTP response
  (:meth:`answered_by`), which then closes it when Django closes the response: after its
  last byte, or after the client left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from accounts.policies import Credential
from accounts.refusals import UnknownKey, check_model_access
from accounts.usage import RequestAccount
from inference import metrics
from inference.admission import ConcurrencyLimit
from inference.engine import EngineUnavailable
from inference.registry import ModelSpec, ModelUse, registry
from inference.generation import GenerationFailed, generation_error
from llmserver.errors import APIError, as_api_error

log = logging.getLogger("llmserver.lifecycle")

# Status recorded for a request whose client left before any of the answer reached it
# (nginx's).
CLIENT_CLOSED_REQUEST = 499

# With API keys off, the concurrency limit of this process alone.
in_flight = ConcurrencyLimit()


def nothing() -> None:
    """Stands in for a request's arrival count where nothing counted it."""


class Lifecycle:
    def __init__(self, endpoint: str, request_id: str, *, arrived: Callable[[], None] = nothing):
        """``arrived``: stops the count of this request among the arrivals not yet queued
        for the engine (llmserver.handlers.CountArrivals), once it holds its places."""
        self.endpoint = endpoint
        self.request_id = request_id
        self.started = time.perf_counter()
        self.account: RequestAccount | None = None
        self.model_label = "unknown"  # the catalogue id once known: a bounded metrics label
        self.generation = None  # inference.generation.Generation, once it holds its places
        self.client_left = False
        self._arrived = arrived
        self._reread: Callable[[], Awaitable] | None = None
        self._answering = False
        self._handed_over = False
        self._admitted = False
        self._model_use: ModelUse | None = None
        self._slot = None
        self._closed = False

    # --- the request's holdings, in order -------------------------------------------------

    def open(self, credential: Credential, *, reread: Callable[[], Awaitable] | None = None) -> None:
        """Open the request's account when it has a key. ``reread``: reads the key from
        the database, for a key that came from this process's known keys."""
        if credential.key is not None:
            self.account = RequestAccount(credential.key, self.request_id, self.endpoint,
                                          key_checked=credential.checked)
            self._reread = reread

    def describe(self, *, model: str = "", streamed: bool = False, user: str = "") -> None:
        """What the request asks for, as its record names it even if it is refused before
        the model is resolved: the model's name, whether it streams, the end user."""
        if self.account is not None:
            self.account.model, self.account.streamed, self.account.user = model[:256], streamed, user

    def resolve(self, name: str) -> ModelSpec:
        """The model ``name`` (id or alias) names, recorded as the request's (404 if none)."""
        spec = registry.resolve(name)
        self.model_label = spec.id
        if self.account is not None:
            self.account.model, self.account.model_names = spec.id, spec.names
        return spec

    async def may_use(self, spec: ModelSpec) -> None:
        """403 if the key may not use the model, judged by the key as the database has
        it now."""
        account = self.account
        if account is None:
            return
        if not account.key.may_use(*spec.names) and not account.key_checked:
            account.key = await self._reread()  # the model may have been allowed since
            account.key_checked = True
        check_model_access(account.key, *spec.names)

    async def hold(self, spec: ModelSpec) -> ModelUse:
        """The model loaded (loading it now if need be: 503 if it cannot be) and held
        until the request closes."""
        self._model_use = await registry.acquire(spec.id)
        return self._model_use

    async def begin(self, generation):
        """Take the generation's places in the model's queue (503 if it is full) and have
        it admitted (429 past a limit); its grammar is checked before, so that a 400
        consumes no limit, nor does a 503 for a queue already full."""
        await generation.check_grammar()
        generation.hold_places()
        self.generation = generation
        self._arrived()  # counted since it was read; from now on the engine counts it as queued
        if self.account is not None:
            await self.account.admit()
            self.account.generation = generation
        else:
            self._slot = in_flight.acquire()
        self._admitted = True
        return generation

    # --- how it goes ----------------------------------------------------------------------

    def answering(self) -> None:
        """The answer has begun to reach the client: its status is sent."""
        self._answering = True

    def answered_by(self, response):
        """Hand the request to the HTTP response that carries its answer; the response
        closes it (see inference.views.Answer)."""
        self._answering = self._handed_over = True
        return response

    def gone(self) -> None:
        """The client left (or stopped the turn)."""
        self.client_left = True
        if self.account is not None:
            self.account.client_disconnected = True

    def error_sent(self, code: str | None) -> None:
        """An error with ``code`` reached the client inside an answer already begun."""
        if self.account is not None:
            self.account.error_code = code or ""

    # --- the end --------------------------------------------------------------------------

    async def __aenter__(self) -> Lifecycle:
        return self

    async def __aexit__(self, kind, exc, traceback) -> None:
        if exc is None:
            if not self._handed_over:
                self.close(200)
            return
        if isinstance(exc, asyncio.CancelledError):
            self.gone()
            self.close(200)
            return
        if not isinstance(exc, Exception):
            self.close(500)
            return
        error = await self._key_refusal_first(_api_error(exc))
        if self._answering:
            self.error_sent(error.code)
            self.close(200)
        else:
            if self.account is not None:
                self.account.error_code = error.code or ""
            self.close(error.status)
        if error is not exc:
            raise error from None

    async def _key_refusal_first(self, error: APIError) -> APIError:
        """A request refused before its key was read from the database (it came from this
        process's known keys) is refused for its key if the key is no longer usable: a
        revoked key always gets its 401, whatever else is wrong; and an unknown key has
        no record."""
        account = self.account
        if account is None or account.key_checked or self._reread is None:
            return error
        try:
            await self._reread()
        except APIError as refusal:
            if isinstance(refusal, UnknownKey):
                account.discard()
            return refusal
        return error

    def close(self, status: int) -> None:
        """Give back what the request holds, hand its record to the books (no waiting:
        the database work is the accounting thread's) and observe its metrics; only the
        first call counts."""
        if self._closed:
            return
        self._closed = True
        generation = self.generation
        if self.client_left and not (self._answering and generation is not None and generation.began):
            status = CLIENT_CLOSED_REQUEST
        try:
            if generation is not None:
                generation.release_places()
            if self.account is not None:
                self.account.finish(status)
        except Exception:
            # A closer's exception is swallowed by Django; a lost usage record must be loud.
            log.exception("could not record usage of request %s", self.request_id)
        finally:
            if self._slot is not None:
                self._slot.release()
            if self._model_use is not None:
                self._model_use.release()
            metrics.observe(self.endpoint, self.model_label, status, self.started,
                            generation if self._admitted else None)



def _api_error(exc: Exception) -> APIError:
    """What a client is told of ``exc``."""
    if isinstance(exc, (GenerationFailed, EngineUnavailable)):
        return generation_error(exc)
    return as_api_error(exc)
