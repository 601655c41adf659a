"""One authenticated request's bookkeeping: its lease and its one usage record.

:class:`RequestAccount` is opened when a request's key is known and finished exactly
once, when the request's lifecycle closes (inference.lifecycle). Finishing hands the
lease and the record to the accounting thread; nothing is written per token.
"""

from __future__ import annotations

import asyncio
import time

from accounts.auth import known_keys
from accounts.books import books
from accounts.models import APIKey
from accounts.records import USAGE_FIELDS, UsageRow
from accounts.refusals import UnknownKey
from llmserver import clock
from llmserver.errors import APIError


class RequestAccount:
    def __init__(self, key: APIKey, request_id: str, endpoint: str, *, key_checked: bool):
        self.key = key
        # Whether the key was read from the database for this request (else it came from
        # accounts.auth.known_keys, and admission reads it).
        self.key_checked = key_checked
        self.request_id = request_id
        self.endpoint = endpoint
        self.started_at = clock.now()
        self._started = time.perf_counter()
        self.model = ""  # as recorded: the model's id (or the name asked for, if unknown)
        self.model_names: tuple[str, ...] = ()  # the model's id and aliases, for admission
        self.user = ""
        self.streamed = False
        self.generation = None  # inference.generation.Generation, once generation starts
        self.error_code = ""
        self.client_disconnected = False
        self._lease_id: int | None = None
        self._finished = False

    async def admit(self) -> None:
        """Check the key afresh, its limits and the deployment's, and take a lease (or
        raise 401, 403 or 429)."""
        admission = books.admit(self.key, self.request_id, self.model_names)
        try:
            self._lease_id = await admission
            self.key_checked = True
        except asyncio.CancelledError:
            # This request was cancelled (its client left, its chat turn was stopped):
            # either while the accounting thread was admitting it (the future cancelled
            # with it: books gives back a lease granted after all), or just after the
            # lease was granted, and it is given back here. Never renewed for ever.
            admission.add_done_callback(_give_back_lease)
            raise
        except APIError as exc:
            self.key_checked = True
            if exc.status == 401:
                known_keys.forget(self.key.hashed_secret)
            if isinstance(exc, UnknownKey):
                self.discard()
            raise

    def discard(self) -> None:
        """The key turned out not to exist: no record (and no lease was taken)."""
        self._finished = True

    def finish(self, status_code: int) -> None:
        """Hand the usage record and the lease to the accounting thread (no waiting, no
        database work here, from any thread); only the first call counts."""
        if self._finished:
            return
        self._finished = True
        prompt = completion = cached = 0
        finish_reason = ""
        first_token_ms = None
        if self.generation is not None:
            usage = self.generation.usage()
            prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
            cached = usage["prompt_tokens_details"]["cached_tokens"]
            finish_reason = self.generation.finish_reasons[0] or ""
            if self.generation.first_text_at is not None:
                first_token_ms = (self.generation.first_text_at - self._started) * 1000
        record = UsageRow(
            api_key_id=self.key.pk,
            key_prefix=self.key.prefix,
            model=_text(self.model, "model"),
            endpoint=self.endpoint,
            request_id=self.request_id,
            streamed=self.streamed,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            finish_reason=finish_reason,
            status_code=status_code,
            error_code=_text(self.error_code, "error_code"),
            started_at=self.started_at,
            duration_ms=(time.perf_counter() - self._started) * 1000,
            time_to_first_token_ms=first_token_ms,
            client_disconnected=self.client_disconnected,
            user=_text(self.user, "user"),
            cost=None,  # at the model's price when the record is written (accounts.settlement)
        )
        books.settle_later(self._lease_id, self.key, record, prompt + completion)


def _text(value: str, column: str) -> str:
    """A client's string as ``column`` takes it: PostgreSQL's text cannot hold NUL (the
    whole batch of records would fail with it), and the column has a length."""
    return value.replace("\x00", "")[:_LENGTHS[column]]


_LENGTHS = {field.attname: field.max_length for field in USAGE_FIELDS if field.max_length}


def _give_back_lease(admission: asyncio.Future) -> None:
    if not admission.cancelled() and admission.exception() is None:
        books.settle_later(admission.result(), None, None, 0)
