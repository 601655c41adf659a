"""The chat page's WebSocket: a logged-in user's chat turns, streamed from the same
serving layer and engine as ``/v1/chat/completions``, limited and recorded against the
user's chat key.

The socket is authenticated by the Django session (``AuthMiddlewareStack``), and
``chat.origin.SameOriginOnly`` refuses a handshake whose ``Origin`` is not the page's own
(scheme, host and port) or a trusted one: a session cookie alone, sent by another page,
opens nothing.

Protocol (JSON text frames; ``id`` is the client's name for one generation):

- client → server: ``{"type": "chat", "id", "model", "messages", "temperature",
  "max_tokens", "tools", "tool_choice"}`` starts a generation (the messages and tools as
  ``/v1/chat/completions`` takes them, tool results included); ``{"type": "stop", "id"}``
  cancels it.
- server → client: ``{"type": "start", "id", "request_id"}`` once admitted,
  ``{"type": "delta", "id", "text"}`` per piece of text (a reasoning model's reasoning
  first, as ``{"type": "reasoning", "id", "text"}``; each tool call the model makes, once
  whole, as ``{"type": "tool_calls", "id", "tool_calls"}`` with OpenAI's message parts),
  then either
  ``{"type": "done", "id", "finish_reason", "usage"}`` (``finish_reason`` is
  ``"cancelled"`` after a stop) or ``{"type": "error", "id", "status", "error"}`` with
  OpenAI's error object, the HTTP status the API would have answered, ``retry_after``
  (seconds) where the API would send ``Retry-After`` and, when the turn has a usage
  record, its ``request_id``. Refusals are worded for the person at the page
  (chat.refusals), with the API's codes.
- server → client, with ``CHAT_HISTORY=server``: ``{"type": "history", "id", "version"}``
  or ``{"type": "history", "id", "deleted": true}`` when one of the user's conversations
  changed (in any tab or browser: chat.history), for the page to read it again; with
  ``"tab"``, the tab that changed it (its ``X-Chat-Tab``).

Each chat turn is one request in the books, recorded as the same request streamed over
HTTP would be: refused turns with their status, started ones with 200, a stopped one (or
one whose page was closed) with ``client_disconnected``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from rest_framework.exceptions import ValidationError

from accounts.policies import ChatSession
from chat import refusals
from chat.history import user_group
from inference.lifecycle import Lifecycle
from inference.protocol import ChatCompletionRequest, validated
from inference.serving import ChatServing
from llmserver import shutdown
from llmserver.errors import (APIError, DuplicateId, InvalidJSON, InvalidValue, RequestTooLarge, UserInactive,
                              shutting_down, validation_error)

log = logging.getLogger("llmserver.chat")

WS_PATH = "/ws/chat"
# Close code for a socket whose session is not (or no longer) logged in.
NOT_AUTHENTICATED = 4401
ENDPOINT = "chat.page"  # the usage records' endpoint for chat-page turns

_CHAT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ChatConsumer(AsyncWebsocketConsumer):
    policy = ChatSession()

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Closing before accepting refuses the handshake (HTTP 403).
            await self.close(code=NOT_AUTHENTICATED)
            return
        self.user = user
        self.generations: dict[str, asyncio.Task] = {}
        self.stopping: set[str] = set()
        self.connected = True
        await self.accept()
        if settings.CHAT_HISTORY == "server":  # the user's other tabs' changes (chat.history)
            self.group = user_group(user)
            await self.channel_layer.group_add(self.group, self.channel_name)

    async def disconnect(self, code):
        self.connected = False
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)
        # The page is gone: cancel its generations (freeing their batch and concurrency
        # slots) and wait until each has handed its record to the books.
        tasks = list(getattr(self, "generations", {}).values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def receive(self, text_data=None, bytes_data=None):
        try:
            message = self._parse(text_data)
        except APIError as exc:
            await self._send_error(None, exc)
            return
        chat_id = message["id"]
        if message["type"] == "stop":
            task = self.generations.get(chat_id)
            if task is not None:
                self.stopping.add(chat_id)
                task.cancel()
            return
        if chat_id in self.generations:
            await self._send_error(chat_id, DuplicateId(f"A generation with id '{chat_id}' is running.", param="id"))
            return
        task = asyncio.create_task(self._generate(chat_id, message))
        self.generations[chat_id] = task
        shutdown.track_turn(task)  # a server draining lets it finish
        task.add_done_callback(lambda _: self.generations.pop(chat_id, None))

    def _parse(self, text_data) -> dict:
        if text_data is None:
            raise InvalidJSON("Send JSON text frames.")
        if len(text_data) > settings.MAX_REQUEST_SIZE_BYTES:
            raise RequestTooLarge(f"Message too large: the limit is {settings.MAX_REQUEST_SIZE_MB:g} MB.")
        try:
            message = json.loads(text_data)
        except ValueError as exc:
            raise InvalidJSON(f"We could not parse the JSON of your message: {exc}") from None
        if not isinstance(message, dict) or message.get("type") not in ("chat", "stop"):
            raise InvalidValue("A message needs a 'type' of 'chat' or 'stop'.", param="type")
        chat_id = message.get("id")
        if not isinstance(chat_id, str) or not _CHAT_ID.match(chat_id):
            raise InvalidValue("A message needs an 'id' of 1 to 64 letters, digits, '_' or '-'.", param="id")
        return message

    async def _generate(self, chat_id: str, message: dict) -> None:
        """One chat turn: its lifecycle (inference.lifecycle) framed as the socket's
        frames."""
        life = Lifecycle(ENDPOINT, uuid.uuid4().hex)
        try:
            async with life:
                life.open(await self.policy.authorize(self.user))
                life.describe(model=message.get("model") if isinstance(message.get("model"), str) else "",
                              streamed=True, user=self.user.get_username())
                if shutdown.draining():
                    raise shutting_down()  # the turns in flight finish; no new one begins
                data = _validated(message)
                spec = life.resolve(data["model"])
                await life.may_use(spec)
                use = await life.hold(spec)
                serving = ChatServing(use.worker, spec.id)
                generation = await life.begin(serving.generation(data))
                await self._send(type="start", id=chat_id, request_id=life.request_id)
                life.answering()
                finish_reason = None
                async for update in generation.updates():
                    if update.reasoning:
                        await self._send(type="reasoning", id=chat_id, text=update.reasoning)
                    text, calls, reason = serving.streamed(update)
                    if text:
                        await self._send(type="delta", id=chat_id, text=text)
                    if calls:
                        await self._send(type="tool_calls", id=chat_id, tool_calls=[call.as_message_part() for call in calls])
                    if reason:
                        finish_reason = reason
                        generation.finish_reasons[update.index] = reason  # "tool_calls", for the record
                await self._send(type="done", id=chat_id, finish_reason=finish_reason,
                                 usage=_usage(generation.usage()))
        except asyncio.CancelledError:
            if chat_id in self.stopping and self.connected:
                usage = _usage(life.generation.usage()) if life.account and life.account.generation else None
                await self._send(type="done", id=chat_id, finish_reason="cancelled", usage=usage)
            if not self.connected:
                raise
        except APIError as exc:
            if isinstance(exc, UserInactive):
                await self._send_error(chat_id, exc)
                await self.close(code=NOT_AUTHENTICATED)
                return
            key = life.account.key if life.account is not None else None
            await self._send_error(chat_id, refusals.for_person(exc, key), life)
        finally:
            self.stopping.discard(chat_id)

    async def history_changed(self, event: dict) -> None:
        """A conversation of the user's changed (chat.history): the page reads it again."""
        await self._send(type="history", **{name: event[name] for name in ("id", "version", "deleted", "tab")
                                            if name in event})

    async def _send(self, **message) -> None:
        if self.connected:
            await self.send(text_data=json.dumps(message, separators=(",", ":")))

    async def _send_error(self, chat_id: str | None, exc: APIError, life: Lifecycle | None = None) -> None:
        """The error of one turn (or of a message that named none); with the request id
        of its usage record when it has one."""
        extra = {"request_id": life.request_id} if life is not None and life.account is not None else {}
        if (retry_after := refusals.retry_after(exc)) is not None:
            extra["retry_after"] = retry_after
        await self._send(type="error", id=chat_id, status=exc.status, **extra, **exc.body())


# What of a chat frame is the request: the page's settings, and tools to offer.
_FIELDS = ("model", "messages", "temperature", "max_tokens", "tools", "tool_choice")


def _validated(message: dict) -> dict:
    """The turn as a streamed chat completion request, validated like one."""
    body = {name: message[name] for name in _FIELDS if name in message}
    try:
        return validated(ChatCompletionRequest, {**body, "stream": True})
    except ValidationError as exc:
        raise validation_error(exc) from None


def _usage(usage: dict) -> dict:
    return {name: usage[name] for name in ("prompt_tokens", "completion_tokens", "total_tokens")}
