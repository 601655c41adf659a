"""The chat page's conversations on the server (``CHAT_HISTORY=server``): a small JSON API
for the page, under ``/chat/conversations/``, for the logged-in user's own conversations
only (another user's is "not found").

- ``GET /chat/conversations/?q=text``: the list, newest first (``q``: those whose title
  or messages contain it), without the messages.
- ``GET /chat/conversations/<id>/``: one, whole.
- ``PUT /chat/conversations/<id>/``: create or replace it. ``version`` is the version the
  page last had (0 for a new one); if the server's is newer, 409
  ``conversation_changed`` with the server's copy, and nothing is written.
- ``DELETE /chat/conversations/<id>/``: delete it, restorable for UNDO_DAYS with ``POST
  /chat/conversations/<id>/restore/``.
- ``GET /chat/conversations/<id>/export/?format=md|json``: as a file to download.

Each change is told to the user's other chat sockets (``history`` frames, chat.consumers),
so that their other tabs follow. Errors are in OpenAI's shape, as everywhere. Sync views:
small reads and writes of one row, no generation."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone as dt_timezone
from functools import wraps

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, TextField
from django.db.models.functions import Cast
from django.http import HttpResponse, JsonResponse
from django.utils import timezone

from chat.models import Conversation
from llmserver import clock
from llmserver.errors import (APIError, ConversationChanged, InvalidAPIKey, InvalidJSON, InvalidValue, MethodNotAllowed,
                              NotFound)

MAX_MESSAGES = 1000
_ROLES = ("user", "assistant", "tool")
_STATES = ("streaming", "done", "stopped", "error")
# A message's fields as the page keeps them, and their types.
_MESSAGE_FIELDS = {"id": str, "role": str, "content": str, "reasoning": str, "state": str, "finishReason": str,
                   "model": str, "durationMs": (int, float), "thoughtMs": (int, float), "requestId": str, "usage": dict, "error": dict,
                   # an answer's tool calls ({"id", "name", "arguments"}: all text) and, on a tool
                   # message, the call it is the result of
                   "toolCalls": list, "toolCallId": str, "toolName": str,
                   # an answer given again (Regenerate): the question's other answers, and
                   # where the one shown sits among them all
                   "answers": list, "answerIndex": int}
# The fields of one of those other answers.
_ANSWER_FIELDS = {name: kind for name, kind in _MESSAGE_FIELDS.items()
                  if name not in ("id", "role", "toolCallId", "toolName", "answers", "answerIndex")}


def user_group(user) -> str:
    """The channel layer group of a user's chat sockets."""
    return f"chat.user.{user.pk}"


def _api(*methods: str):
    """A history view answering ``methods``: the logged-in user's, with history on the
    server, every error in OpenAI's shape."""
    return lambda view: _checked(view, methods)


def _checked(view, methods: tuple[str, ...]):
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        try:
            if request.method not in methods:
                raise MethodNotAllowed(f"{request.method} is not allowed here; use {' or '.join(methods)}.",
                                       headers={"Allow": ", ".join(methods)})
            if not request.user.is_authenticated:
                raise InvalidAPIKey("Log in to use your conversations.")
            if settings.CHAT_HISTORY != "server":
                raise NotFound("Conversations are kept in the browser on this server (CHAT_HISTORY=browser).")
            return view(request, *args, **kwargs)
        except APIError as exc:
            return exc.response()
    return wrapped


def _own(request, public_id: str, *, deleted: bool = False) -> Conversation:
    try:
        return Conversation.objects.get(user=request.user, public_id=public_id, deleted_at__isnull=not deleted)
    except Conversation.DoesNotExist:
        raise NotFound(f"No conversation '{public_id}' of yours.") from None


def _millis(moment) -> int:
    return int(moment.timestamp() * 1000)


def summary(conversation: Conversation) -> dict:
    return {"id": conversation.public_id, "title": conversation.title, "model": conversation.model,
            "version": conversation.version, "createdAt": _millis(conversation.created_at),
            "updatedAt": _millis(conversation.updated_at)}


def whole(conversation: Conversation) -> dict:
    return {**summary(conversation), "system": conversation.system_prompt, "settings": conversation.settings,
            "messages": conversation.messages}


@_api("GET")
def conversation_list(request):
    conversations = Conversation.objects.of(request.user)
    query = request.GET.get("q", "").strip()
    if query:
        conversations = conversations.annotate(text=Cast("messages", TextField())).filter(
            Q(title__icontains=query) | Q(text__icontains=query) | Q(system_prompt__icontains=query))
    if not query:
        Conversation.objects.filter(user=request.user).purge_deleted()
    return JsonResponse({"conversations": [summary(c) for c in conversations.only(
        "public_id", "title", "model", "version", "created_at", "updated_at")]})


@_api("GET", "PUT", "DELETE")
def conversation(request, public_id: str):
    if request.method == "GET":
        return JsonResponse(whole(_own(request, public_id)))
    if request.method == "DELETE":
        found = _own(request, public_id)
        found.deleted_at = clock.now()
        found.save(update_fields=["deleted_at"])
        _tell_other_tabs(request, public_id, deleted=True)
        return JsonResponse({"id": public_id, "deleted": True})
    fields, base = _parse(request, public_id)
    with transaction.atomic():
        found = (Conversation.objects.select_for_update().filter(user=request.user, public_id=public_id).first())
        if found is not None and found.deleted_at is None and found.version != base:
            raise ConversationChanged(f"The conversation '{public_id}' was changed elsewhere (now version "
                                      f"{found.version}, yours {base}).", param="version")
        if found is None:
            found = Conversation(user=request.user, public_id=public_id, version=0, created_at=fields.pop("created_at"))
        else:
            fields.pop("created_at")
        for name, value in fields.items():
            setattr(found, name, value)
        found.version += 1
        found.deleted_at = None
        try:
            found.save()
        except IntegrityError:  # made at the same moment by another tab: theirs stands
            raise ConversationChanged(f"The conversation '{public_id}' was made elsewhere.", param="version") from None
    _tell_other_tabs(request, public_id, version=found.version)
    return JsonResponse(summary(found))


@_api("POST")
def restore(request, public_id: str):
    found = _own(request, public_id, deleted=True)
    found.deleted_at = None
    found.save(update_fields=["deleted_at"])
    _tell_other_tabs(request, public_id, version=found.version)
    return JsonResponse(summary(found))


@_api("GET")
def export(request, public_id: str):
    found = _own(request, public_id)
    kind = request.GET.get("format", "md")
    if kind not in ("md", "json"):
        raise InvalidValue("format is 'md' or 'json'.", param="format")
    stamp = timezone.localtime(found.updated_at).strftime("%Y%m%d-%H%M%S")
    if kind == "json":
        response = HttpResponse(json.dumps(whole(found), ensure_ascii=False, indent=2),
                                content_type="application/json; charset=utf-8")
    else:
        response = HttpResponse(markdown(found), content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="conversation-{stamp}.{kind}"'
    return response


def markdown(conversation: Conversation) -> str:
    """The conversation as Markdown: its title, model and time, the system prompt, then
    each turn under a heading, the text as it was written."""
    lines = [f"# {conversation.title or 'Untitled conversation'}", ""]
    when = timezone.localtime(conversation.updated_at).strftime("%Y-%m-%d %H:%M %Z")
    lines += [f"*{conversation.model + ' · ' if conversation.model else ''}{when}*", ""]
    if conversation.system_prompt:
        lines += ["## System", "", conversation.system_prompt, ""]
    for message in conversation.messages:
        if message["role"] == "tool":
            lines += [f"## Tool result ({message.get('toolName', '')})", "", _fenced(message["content"]), ""]
            continue
        role = "User" if message["role"] == "user" else "Assistant"
        model = f" ({message['model']})" if message.get("model") and message["role"] == "assistant" else ""
        lines += [f"## {role}{model}", ""]
        if message.get("reasoning"):
            lines += ["<details><summary>Reasoning</summary>", "", message["reasoning"], "", "</details>", ""]
        if message["content"] or not message.get("toolCalls"):
            lines += [message["content"], ""]
        for call in message.get("toolCalls", ()):
            lines += [f"Called `{call['name']}`:", "", _fenced(call["arguments"]), ""]
    return "\n".join(lines)


def _fenced(text: str) -> str:
    """``text`` as a code block, fenced with more backticks than it holds in a row."""
    fence = "`" * max(3, max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence}\n{text}\n{fence}"


def _parse(request, public_id: str) -> tuple[dict, int]:
    """The model fields of a PUT body, and the version it was based on."""
    try:
        body = json.loads(request.body)
    except ValueError as exc:
        raise InvalidJSON(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidValue("The body is a conversation object.")
    base = body.get("version", 0)
    if not isinstance(base, int) or isinstance(base, bool) or base < 0:
        raise InvalidValue("version is the version you last had, 0 for a new conversation.", param="version")
    messages = body.get("messages", [])
    if not isinstance(messages, list) or len(messages) > MAX_MESSAGES:
        raise InvalidValue(f"messages is a list of at most {MAX_MESSAGES} messages.", param="messages")
    settings_ = body.get("settings", {})
    if not isinstance(settings_, dict) or not all(isinstance(v, (int, float, str, bool, type(None)))
                                                  for v in settings_.values()):
        raise InvalidValue("settings is an object of plain values.", param="settings")
    now = clock.now()
    created_at, updated_at = (_moment(body.get(name), now) for name in ("createdAt", "updatedAt"))
    return {
        "title": _text(body, "title")[:200],
        "model": _text(body, "model")[:256],
        "system_prompt": _text(body, "system"),
        "settings": settings_,
        "messages": [_message(m, i) for i, m in enumerate(messages)],
        "created_at": created_at,
        "updated_at": updated_at,
    }, base


def _moment(millis, now):
    """A time the page sent (ms since the epoch), if it is one; else ``now``. The page's
    times order its list (a conversation moves up when a turn begins in it), so they are
    kept as the page has them, but never later than now."""
    if isinstance(millis, (int, float)) and not isinstance(millis, bool) and 0 < millis < 10**14:
        return min(datetime.fromtimestamp(millis / 1000, tz=dt_timezone.utc), now)
    return now


def _text(body: dict, name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise InvalidValue(f"{name} is a string.", param=name)
    return value


def _message(message, index: int) -> dict:
    """A message as the page keeps it: its known fields of the right types, nothing else."""
    where = f"messages[{index}]"
    if not isinstance(message, dict) or message.get("role") not in _ROLES or not isinstance(message.get("content"), str):
        raise InvalidValue(f"{where} needs a role ('user', 'assistant' or 'tool') and a string content.", param=where)
    kept = _fields(message, _MESSAGE_FIELDS, where)
    answers = kept.get("answers", [])
    for position, answer in enumerate(answers):
        if not isinstance(answer, dict) or not isinstance(answer.get("content"), str):
            raise InvalidValue(f"{where}.answers[{position}] needs a string content.", param=f"{where}.answers[{position}]")
        answers[position] = _fields(answer, _ANSWER_FIELDS, f"{where}.answers[{position}]")
    if not 0 <= kept.get("answerIndex", 0) <= len(answers):
        raise InvalidValue(f"{where}.answerIndex is from 0 to the number of answers.", param=f"{where}.answerIndex")
    return kept


def _fields(message: dict, fields: dict, where: str) -> dict:
    """Of ``message``, ``fields`` (name: type) that it has, each checked."""
    kept = {}
    for name, kind in fields.items():
        value = message.get(name)
        if value is None:
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InvalidValue(f"{where}.{name} has the wrong type.", param=f"{where}.{name}")
        kept[name] = value
    if kept.get("state", "done") not in _STATES:
        raise InvalidValue(f"{where}.state is one of {', '.join(_STATES)}.", param=f"{where}.state")
    for position, call in enumerate(kept.get("toolCalls", ())):
        if not (isinstance(call, dict) and call.keys() == {"id", "name", "arguments"}
                and all(isinstance(value, str) for value in call.values())):
            raise InvalidValue(f"{where}.toolCalls[{position}] is an object of id, name and arguments, all strings.",
                               param=f"{where}.toolCalls[{position}]")
    return kept


def _tell_other_tabs(request, public_id: str, **change) -> None:
    """A ``history`` frame to the user's chat sockets (their other tabs)."""
    layer = get_channel_layer()
    if layer is not None:
        tab = request.headers.get("X-Chat-Tab", "")[:64]  # the tab that changed it ignores the echo
        async_to_sync(layer.group_send)(user_group(request.user), {
            "type": "history.changed", "id": public_id, **change, **({"tab": tab} if tab else {})})
