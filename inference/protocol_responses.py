"""Request validation for ``POST /v1/responses``, as DRF serializers: the Responses API's
request read in chat completion terms (see inference.protocol for the policy)."""

from __future__ import annotations

from rest_framework import serializers

from inference.protocol import (MAX_TOOLS, ChatCompletionRequest, FunctionSerializer, OpenAIRequestSerializer,
                                StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField, validated)
from llmserver.errors import Code


class ResponsesFunctionToolSerializer(FunctionSerializer):
    """A Responses tool: the function's fields at the top level, not under "function"."""

    type = serializers.ChoiceField(choices=["function"], error_messages={
        "invalid_choice": "Only function tools are supported by this server; got '{input}'.",
    })


class ResponsesToolChoiceField(serializers.Field):
    default_error_messages = {
        "invalid": "Expected 'none', 'auto', 'required' or {{\"type\": \"function\", \"name\": ...}}.",
    }

    def to_internal_value(self, data):
        if data in ("none", "auto", "required"):
            return data
        if isinstance(data, dict) and data.get("type") == "function" and isinstance(data.get("name"), str):
            return {"name": data["name"]}
        self.fail("invalid")


class ResponsesTextSerializer(serializers.Serializer):
    format = serializers.DictField(required=False)


class ResponsesInputField(serializers.Field):
    """``input``: a string (one user message) or a list of items: messages (``content``
    a string or input_text/output_text parts), ``function_call`` and
    ``function_call_output``. Returned as chat messages."""

    default_error_messages = {"invalid": "Expected a string or a list of input items.",
                              "empty": "The input must not be empty."}

    def to_internal_value(self, data):
        if isinstance(data, str):
            if not data:
                self.fail("empty")
            return [{"role": "user", "content": data}]
        if not isinstance(data, list) or not data:
            self.fail("invalid")
        messages = []
        reasoning = None  # a reasoning item's text, for the assistant turn that follows it
        for position, item in enumerate(data):
            if not isinstance(item, dict):
                _refuse_item(position, None, "Expected an input item (an object).", Code.INVALID_TYPE)
            kind = item.get("type", "message")
            if kind == "message":
                messages.append(_input_message(item, position))
                if reasoning is not None and messages[-1]["role"] == "assistant":
                    messages[-1]["reasoning_content"] = reasoning
                reasoning = None
            elif kind == "reasoning":
                reasoning = _reasoning_text(item, position)
            elif kind == "function_call":
                call = {"id": _text(item, "call_id", position), "type": "function",
                        "function": {"name": _text(item, "name", position), "arguments": _text(item, "arguments", position)}}
                if messages and messages[-1]["role"] == "assistant" and "tool_calls" in messages[-1] and reasoning is None:
                    messages[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                    if reasoning is not None:
                        messages[-1]["reasoning_content"] = reasoning
                reasoning = None
            elif kind == "function_call_output":
                messages.append({"role": "tool", "tool_call_id": _text(item, "call_id", position),
                                 "content": _text(item, "output", position)})
                reasoning = None
            else:
                _refuse_item(position, "type", f"Input items of type '{kind}' are not supported by this server.",
                             Code.UNSUPPORTED_PARAMETER)
        return messages


def _refuse_item(position: int, name: str | None, message: str, code: Code):
    """An error in ``input[position]`` (``.name``), relative to the input field."""
    detail = serializers.ErrorDetail(message, code=code)
    raise serializers.ValidationError({position: {name: detail} if name else [detail]})


def _text(item: dict, name: str, position: int) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        _refuse_item(position, name, "This field is required." if value is None else "Expected a string.",
                     Code.MISSING_REQUIRED_PARAMETER if value is None else Code.INVALID_TYPE)
    return value


def _reasoning_text(item: dict, position: int) -> str:
    """A reasoning item's reasoning_text parts (as this server returns them), joined; its
    summary is not the reasoning and is left out."""
    content = item.get("content") or []
    if not isinstance(content, list) or not all(
            isinstance(part, dict) and part.get("type") == "reasoning_text" and isinstance(part.get("text"), str)
            for part in content):
        _refuse_item(position, "content", "Expected a list of reasoning_text parts.", Code.INVALID_TYPE)
    if item.get("encrypted_content") is not None:
        _refuse_item(position, "encrypted_content", "Encrypted reasoning is not supported by this server.",
                     Code.UNSUPPORTED_PARAMETER)
    return "".join(part["text"] for part in content)


def _input_message(item: dict, position: int) -> dict:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        _refuse_item(position, "role", "Expected 'user', 'assistant', 'system' or 'developer'.", Code.INVALID_VALUE)
    content = item.get("content")
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text") \
                    or not isinstance(part.get("text"), str):
                _refuse_item(position, "content", "Only input_text and output_text parts are supported by this server.",
                             Code.UNSUPPORTED_PARAMETER)
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        _refuse_item(position, "content", "Expected a string or a list of text parts.", Code.INVALID_TYPE)
    return {"role": "system" if role == "developer" else role, "content": content}


class ResponsesRequest(OpenAIRequestSerializer):
    """``POST /v1/responses``, stateless: nothing is stored, so ``store`` must be false (or
    absent) and ``previous_response_id`` is refused. Validated into the shape of a chat completion request, which the same
    serving layer runs."""

    NEUTRAL_VALUES = {
        "previous_response_id": (),
        "reasoning": ({},),
        "truncation": ("disabled",),
        "include": ([],),
        "background": (False,),
        "service_tier": ("auto", "default"),
        "top_logprobs": (0,),
        "max_tool_calls": (),
        "prompt": (),
        "conversation": (),
        "store": (False,),  # nothing is stored: a response cannot be fetched or continued later
    }

    model = StrictCharField(allow_blank=False, max_length=256)
    input = ResponsesInputField()
    instructions = StrictCharField(required=False)
    max_output_tokens = StrictIntegerField(required=False, min_value=1, max_value=2**31 - 1)
    temperature = StrictFloatField(required=False, min_value=0.0, max_value=2.0)
    top_p = StrictFloatField(required=False, min_value=0.0, max_value=1.0)
    tools = ResponsesFunctionToolSerializer(many=True, required=False, max_length=MAX_TOOLS)
    tool_choice = ResponsesToolChoiceField(required=False)
    parallel_tool_calls = StrictBooleanField(required=False, default=True)
    text = ResponsesTextSerializer(required=False)
    stream = StrictBooleanField(required=False, default=False)
    metadata = serializers.DictField(child=StrictCharField(max_length=512), required=False)
    user = StrictCharField(required=False, max_length=256)

    def validate(self, attrs):
        messages = attrs["input"]
        if "instructions" in attrs:
            messages = [{"role": "system", "content": attrs["instructions"]}, *messages]
        tools = [{"type": "function", "function": {k: v for k, v in tool.items() if k != "type" and v is not None}}
                 for tool in attrs.get("tools", [])]
        chat = {"model": attrs["model"], "messages": messages, "stream": attrs["stream"], "n": 1,
                "tools": tools, "parallel_tool_calls": attrs["parallel_tool_calls"]}
        for name in ("temperature", "top_p", "user"):
            if name in attrs:
                chat[name] = attrs[name]
        if "max_output_tokens" in attrs:
            chat["max_tokens"] = attrs["max_output_tokens"]
        if "tool_choice" in attrs:
            chat["tool_choice"] = attrs["tool_choice"]
        response_format = _response_format(attrs.get("text", {}).get("format"))
        if response_format is not None:
            chat["response_format"] = response_format
        # The chat completion rules (tool_choice against tools, messages well formed, ...),
        # their errors naming this request's own parameters.
        try:
            checked = validated(ChatCompletionRequest, _chat_body(chat))
        except serializers.ValidationError as invalid:
            raise serializers.ValidationError(_in_responses_terms(invalid.detail)) from None
        return {**checked, "responses": attrs}


# Chat completion parameters as a Responses request names them.
_RESPONSES_NAMES = {"response_format": ("text", "format"), "max_tokens": ("max_output_tokens",)}


def _in_responses_terms(errors: dict) -> dict:
    """A chat completion's validation errors, with the parameters a Responses request
    does not have renamed (``response_format`` is ``text.format`` there)."""
    renamed = {}
    for name, detail in errors.items():
        path = _RESPONSES_NAMES.get(name, (name,))
        if path != (name,):
            detail = _renamed_in_messages(detail, f"'{name}'", f"'{'.'.join(path)}'")
        if name == "response_format" and isinstance(detail, dict) and isinstance(detail.get("json_schema"), dict):
            schema_fields = detail.pop("json_schema")
            detail = {**detail, **schema_fields}  # text.format has the schema's fields itself
        node = renamed
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = detail
    return renamed


def _response_format(text_format: dict | None) -> dict | None:
    """Responses' ``text.format`` as chat's ``response_format``."""
    if not text_format:
        return None
    kind = text_format.get("type")
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {k: v for k, v in text_format.items() if k != "type"}}
    return {"type": kind}


def _renamed_in_messages(detail, old: str, new: str):
    """DRF's error detail (nested dicts and lists of ErrorDetail) with ``old`` replaced by
    ``new`` in every message."""
    if isinstance(detail, dict):
        return {key: _renamed_in_messages(value, old, new) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_renamed_in_messages(item, old, new) for item in detail]
    return serializers.ErrorDetail(str(detail).replace(old, new), code=getattr(detail, "code", None))


def _chat_body(chat: dict) -> dict:
    """The converted request as a chat completion body (tool_choice back in its wire form)."""
    body = dict(chat)
    if isinstance(body.get("tool_choice"), dict):
        body["tool_choice"] = {"type": "function", "function": body["tool_choice"]}
    if not body.get("tools"):
        body.pop("tools", None)
        body.pop("parallel_tool_calls", None)
    return body
