"""Request validation for the OpenAI endpoints, as DRF serializers.

Fields follow OpenAI's order and meaning. The policy is "honour or refuse, never ignore":
a parameter llmserver cannot honour is accepted only with its neutral value (``null``,
``0``, ``false``...) and otherwise refused with a 400 naming it; a parameter OpenAI does
not have is refused as unrecognized, as OpenAI does. Extensions: ``top_k``.

JSON types are strict: ``"0.5"`` is not a number and ``1`` is not a boolean here, unlike
DRF's lenient defaults, because an OpenAI client that sends them has a bug to learn of.
"""

from __future__ import annotations

import json
import math
import re
import threading

from rest_framework import parsers, serializers
from rest_framework.exceptions import ParseError
from rest_framework.utils.json import strict_constant

from inference.chat_template import RESERVED_VARIABLES
from llmserver.errors import Code, UnsupportedMediaType

MAX_N = 16
MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 128  # prompts x n in one completions request
MAX_TOOLS = 128
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# Deeper than any OpenAI request needs (structured outputs allow 10 levels of schema
# nesting); deeper JSON would reach the chat template and the grammar compiler, native
# code that recurses on it.
MAX_JSON_DEPTH = 64
# A \uD800-\uDFFF escape: JSON can spell a lone surrogate, which is no Unicode character.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser (which refuses NaN and Infinity, and any charset that is not a
    text encoding), refusing also what it would let through to fail later:

    - JSON nested deeper than the Python parser can go (a RecursionError, not a
      ValueError), or than :data:`MAX_JSON_DEPTH`;
    - lone surrogates, which no tokenizer, database or log line can encode;
    - duplicate keys, which JSON parsers resolve differently (a proxy that checks the
      first ``model`` must not let the server use the last);
    - a compressed body (``Content-Encoding``), which would be parsed as it is.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        request = parser_context.get("request")
        coding = request.headers.get("Content-Encoding", "identity").strip().lower() if request else "identity"
        if coding not in ("", "identity"):
            raise UnsupportedMediaType(f"Content-Encoding '{coding[:32]}' is not supported; send the body uncompressed.")
        try:
            text = stream.read().decode(parsers.get_encoding(parser_context))
            data = json.loads(text, parse_constant=strict_constant, object_pairs_hook=_unique_keys)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
        except ValueError as exc:  # UnicodeDecodeError included
            raise ParseError(f"JSON parse error - {exc}") from None
        if _SURROGATE_ESCAPE.search(text):
            _refuse_lone_surrogates(data)
        if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _deeper_than(data, MAX_JSON_DEPTH):
            raise ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels")
        return data


def _unique_keys(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {json.dumps(key)}")
            seen.add(key)
    return obj


def _refuse_lone_surrogates(data) -> None:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end]
        raise ParseError(f"JSON parse error - lone surrogate \\u{ord(bad[0]):04x} is not a Unicode character") from None


def _deeper_than(data, limit: int) -> bool:
    """Whether ``data`` nests lists and objects more than ``limit`` deep (iteratively:
    the point is not to recurse)."""
    level = [data]
    for _ in range(limit):
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
        if not level:
            return False
    return True


def _refuse(field: str, message: str, *, code: Code = Code.INVALID_VALUE):
    """Raise a validation error for ``field`` with an OpenAI error code."""
    raise serializers.ValidationError({field: serializers.ErrorDetail(message, code=code)})


# --- strict JSON scalar fields ----------------------------------------------------------


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        try:
            data = float(data)
        except OverflowError:  # an integer past the largest float
            self.fail("invalid")
        if not math.isfinite(data):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            if not (isinstance(data, float) and data.is_integer()):
                self.fail("invalid")
        return super().to_internal_value(int(data))


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictCharField(serializers.CharField):
    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        kwargs.setdefault("allow_blank", True)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StopField(serializers.Field):
    """``stop``: a string or a list of up to 4 non-empty strings; always a list inside."""

    default_error_messages = {
        "invalid": "Expected a string or a list of up to 4 strings.",
        "too_many": "Expected a string or a list of up to 4 strings.",
        "empty": "Stop sequences must not be empty strings.",
    }

    def to_internal_value(self, data):
        items = [data] if isinstance(data, str) else data
        if not isinstance(items, list):
            self.fail("invalid")
        if len(items) > MAX_STOP_SEQUENCES:
            self.fail("too_many")
        if not all(isinstance(item, str) for item in items):
            self.fail("invalid")
        if any(item == "" for item in items):
            self.fail("empty")
        return items


class PromptField(serializers.Field):
    """``prompt``: a string, a list of strings, a list of token ids or a list of lists of
    token ids; inside, a non-empty list whose items are each a str or a list of ints."""

    default_error_messages = {
        "invalid": "Expected a string, a list of strings, or token ids (a list of integers or a list of such lists).",
        "empty": "The prompt must not be empty.",
    }

    def to_internal_value(self, data):
        if isinstance(data, str):
            return [data]
        if not isinstance(data, list) or not data:
            self.fail("invalid" if not isinstance(data, list) else "empty")
        if all(_is_token_id(item) for item in data):
            return [list(data)]
        prompts = []
        for item in data:
            if isinstance(item, str):
                prompts.append(item)
            elif isinstance(item, list) and item and all(_is_token_id(t) for t in item):
                prompts.append(list(item))
            else:
                self.fail("invalid")
        return prompts


def _is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = StrictBooleanField(required=False, default=False)


def validated(serializer_class: type[serializers.Serializer], data) -> dict:
    """``data`` as ``serializer_class`` validates it; raises its ValidationError.

    One instance of each serializer class is kept per thread and reused: DRF builds every
    field of a serializer, and of the serializers nested in it, and deep-copies them, the
    first time an instance uses them, which costs several times the validation itself.
    Validating keeps its state (the data, the result, the errors) on the instance, never
    on its fields, and that state is cleared here before each use."""
    instances = _validators.__dict__
    serializer = instances.get(serializer_class)
    if serializer is None:
        serializer = instances[serializer_class] = serializer_class(data=data)
    else:
        serializer.initial_data = data
        for state in ("_validated_data", "_errors", "_data"):
            serializer.__dict__.pop(state, None)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


_validators = threading.local()


# --- the request serializers ------------------------------------------------------------


class OpenAIRequestSerializer(serializers.Serializer):
    """Common checks: unknown fields refused; known-but-unsupported fields refused unless
    they carry their neutral value."""

    # name -> values that mean "not used" and may therefore be accepted.
    NEUTRAL_VALUES: dict[str, tuple] = {}

    def to_internal_value(self, data):
        if isinstance(data, dict):
            for name in data:
                if name in self.NEUTRAL_VALUES:
                    if data[name] is not None and data[name] not in self.NEUTRAL_VALUES[name]:
                        _refuse(name, f"'{name}' is not supported by this server.", code=Code.UNSUPPORTED_PARAMETER)
                elif name not in self.fields:
                    _refuse(name, f"Unrecognized request argument supplied: {name}", code=Code.UNKNOWN_PARAMETER)
            # null for an optional field means "not given", as in OpenAI's API.
            data = {k: v for k, v in data.items() if v is not None and k not in self.NEUTRAL_VALUES}
        return super().to_internal_value(data)

    def validate(self, attrs):
        if "stream_options" in attrs and not attrs.get("stream", False):
            _refuse("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        # 'seed' with sampling is checked against the model's engine (inference.serving):
        # only one with dynamic batching seeds a turn.
        return attrs


_SAMPLING_NEUTRAL = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
    "logprobs": (False, None),
    "top_logprobs": (0,),
}


class _SamplingFields(serializers.Serializer):
    temperature = StrictFloatField(required=False, min_value=0.0, max_value=2.0)
    top_p = StrictFloatField(required=False, min_value=0.0, max_value=1.0)
    top_k = StrictIntegerField(required=False, min_value=0, max_value=2**31 - 1)  # extension; 0 = off
    n = StrictIntegerField(required=False, default=1, min_value=1, max_value=MAX_N)
    stop = StopField(required=False)
    stream = StrictBooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False)
    seed = StrictIntegerField(required=False, min_value=-(2**63), max_value=2**64 - 1)
    user = StrictCharField(required=False, max_length=256)


class ContentPartSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["text"], error_messages={
        "invalid_choice": "Only text content parts are supported by this server; got '{input}'.",
    })
    text = StrictCharField()

    def to_internal_value(self, data):
        # A part of another type is refused for its type (its own fields are not text's).
        if isinstance(data, dict) and data.get("type") == "text":
            for name in sorted(set(data) - set(self.fields)):
                _refuse(name, f"Unrecognized content part field: {name}", code=Code.UNKNOWN_PARAMETER)
        return super().to_internal_value(data)


class MessageContentField(serializers.Field):
    """A message's ``content``: a string or a list of text parts, joined to one string."""

    default_error_messages = {"invalid": "Expected a string or a list of content parts."}

    def to_internal_value(self, data):
        if isinstance(data, str):
            return data
        if not isinstance(data, list):
            self.fail("invalid")
        parts = ContentPartSerializer(data=data, many=True)
        parts.is_valid(raise_exception=True)
        return "".join(part["text"] for part in parts.validated_data)


class FunctionCallSerializer(serializers.Serializer):
    name = StrictCharField(allow_blank=False, max_length=64)
    arguments = StrictCharField()  # a JSON string, as the model wrote it


class ToolCallSerializer(serializers.Serializer):
    """An assistant message's earlier tool call, sent back in the history."""

    id = StrictCharField(allow_blank=False, max_length=256)
    type = serializers.ChoiceField(choices=["function"])
    function = FunctionCallSerializer()


class ChatMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant", "tool"])
    content = MessageContentField(required=False, allow_null=True)
    name = StrictCharField(required=False, max_length=256)
    tool_calls = ToolCallSerializer(many=True, required=False, allow_empty=False)
    tool_call_id = StrictCharField(required=False, max_length=256)
    # An assistant's reasoning, as this server returned it (vLLM's field): given to the
    # chat template, which keeps or drops it (Qwen3's keeps it only within a tool loop).
    reasoning_content = StrictCharField(required=False)

    # Fields of OpenAI's assistant message this server does not produce, accepted with the
    # value meaning "none": a client that appends the message it was given (OpenAI's
    # function-calling guide does) sends them back as null or empty.
    NEUTRAL_VALUES = {"refusal": (), "audio": (), "function_call": (), "annotations": ([],)}

    def to_internal_value(self, data):
        if isinstance(data, dict):
            for name in sorted(set(data) - set(self.fields)):
                if name not in self.NEUTRAL_VALUES:
                    _refuse(name, f"Unrecognized message field: {name}", code=Code.UNKNOWN_PARAMETER)
                if data[name] is not None and data[name] not in self.NEUTRAL_VALUES[name]:
                    _refuse(name, f"'{name}' in a message is not supported by this server.", code=Code.UNSUPPORTED_PARAMETER)
            # null for an optional field means "not given", as at the top level; a null
            # content is kept: it says the message is only tool calls.
            data = {k: v for k, v in data.items()
                    if k in self.fields and (v is not None or k == "content")}
        return super().to_internal_value(data)

    def validate(self, attrs):
        # The chat template knows system, user, assistant and tool; OpenAI's newer
        # "developer" role means the same as "system" for a model without the distinction.
        if attrs["role"] == "developer":
            attrs["role"] = "system"
        if "tool_calls" in attrs and attrs["role"] != "assistant":
            _refuse("tool_calls", "Only assistant messages have 'tool_calls'.")
        if "reasoning_content" in attrs and attrs["role"] != "assistant":
            _refuse("reasoning_content", "Only assistant messages have 'reasoning_content'.")
        if attrs["role"] == "tool" and "tool_call_id" not in attrs:
            _refuse("tool_call_id", "This field is required.", code=Code.MISSING_REQUIRED_PARAMETER)
        if attrs.get("content") is None:
            if "tool_calls" not in attrs:
                _refuse("content", "This field is required.", code=Code.MISSING_REQUIRED_PARAMETER)
            attrs["content"] = ""
        return attrs


class FunctionSerializer(serializers.Serializer):
    name = StrictCharField(allow_blank=False, max_length=64)
    description = StrictCharField(required=False, allow_null=True)
    parameters = serializers.DictField(required=False, allow_null=True)
    strict = StrictBooleanField(required=False, allow_null=True)

    def validate_name(self, value):
        if not _FUNCTION_NAME.match(value):
            raise serializers.ValidationError("A function name is 1 to 64 letters, digits, '_' or '-'.",
                                              code=Code.INVALID_VALUE)
        return value


class ToolSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["function"])
    function = FunctionSerializer()


class ToolChoiceField(serializers.Field):
    """``"none"``, ``"auto"``, ``"required"``, or ``{"type": "function", "function":
    {"name": ...}}`` (returned as the name's dict ``{"name": ...}``)."""

    default_error_messages = {
        # Doubled braces: DRF formats these messages with str.format.
        "invalid": "Expected 'none', 'auto', 'required' or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}.",
    }

    def to_internal_value(self, data):
        if data in ("none", "auto", "required"):
            return data
        if (isinstance(data, dict) and data.get("type") == "function" and isinstance(data.get("function"), dict)
                and isinstance(data["function"].get("name"), str) and set(data) == {"type", "function"}):
            return {"name": data["function"]["name"]}
        self.fail("invalid")


class ChatTemplateKwargsField(serializers.DictField):
    """``chat_template_kwargs`` (vLLM's extension): an object of extra variables for the
    model's chat template, e.g. ``{"enable_thinking": false}``. Names the renderer sets
    itself (``messages``, ``tools``, ``bos_token``, ...) are refused."""

    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        taken = sorted(name for name in data if name in RESERVED_VARIABLES)
        if taken:
            raise serializers.ValidationError(f"'{taken[0]}' is a variable the server sets for the chat template.",
                                              code=Code.INVALID_VALUE)
        return data


class JSONSchemaFormatSerializer(serializers.Serializer):
    name = StrictCharField(allow_blank=False, max_length=64)
    description = StrictCharField(required=False)
    schema = serializers.DictField(required=False)
    strict = StrictBooleanField(required=False, allow_null=True)


class ResponseFormatSerializer(serializers.Serializer):
    """``{"type": "text"}``, ``{"type": "json_object"}`` or ``{"type": "json_schema",
    "json_schema": {"name", "schema", ...}}``: the output is then JSON (valid against the
    schema) by construction, with or without ``strict``."""

    type = serializers.ChoiceField(choices=["text", "json_object", "json_schema"])
    json_schema = JSONSchemaFormatSerializer(required=False)

    def validate(self, attrs):
        if attrs["type"] == "json_schema" and "json_schema" not in attrs:
            _refuse("json_schema", "This field is required.", code=Code.MISSING_REQUIRED_PARAMETER)
        return attrs


class ChatCompletionRequest(OpenAIRequestSerializer, _SamplingFields):
    NEUTRAL_VALUES = {
        **_SAMPLING_NEUTRAL,
        "functions": ([],),
        "function_call": ("none",),
        "store": (False,),
        "metadata": ({},),
        "service_tier": ("auto", "default"),
        "modalities": (["text"],),
    }

    model = StrictCharField(allow_blank=False, max_length=256)
    messages = ChatMessageSerializer(many=True, allow_empty=False)
    response_format = ResponseFormatSerializer(required=False)
    tools = ToolSerializer(many=True, required=False, max_length=MAX_TOOLS)
    tool_choice = ToolChoiceField(required=False)
    parallel_tool_calls = StrictBooleanField(required=False, default=True)
    max_tokens = StrictIntegerField(required=False, min_value=1, max_value=2**31 - 1)
    max_completion_tokens = StrictIntegerField(required=False, min_value=1, max_value=2**31 - 1)
    chat_template_kwargs = ChatTemplateKwargsField(required=False)  # extension (vLLM's)

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if "max_tokens" in attrs and "max_completion_tokens" in attrs:
            _refuse("max_tokens", "Give either 'max_tokens' or 'max_completion_tokens', not both.")
        tools = attrs.get("tools") or []
        choice = attrs.setdefault("tool_choice", "auto" if tools else "none")
        names = [tool["function"]["name"] for tool in tools]
        if choice in ("auto", "required") and not tools:
            _refuse("tool_choice", f"tool_choice '{choice}' needs 'tools'.")
        if isinstance(choice, dict) and choice["name"] not in names:
            _refuse("tool_choice", f"No tool named '{choice['name']}' in 'tools'.")
        if len(set(names)) != len(names):
            _refuse("tools", "Each tool needs a name of its own.")
        if choice != "none" and attrs.get("response_format", {}).get("type", "text") != "text":
            if choice == "auto":  # an answer in words would need the format, a call the tools' grammar
                _refuse("response_format", "Give either tools or a JSON 'response_format', not both, unless "
                                           "'tool_choice' forces a call.")
            del attrs["response_format"]  # a call is forced: no text comes for the format to shape
        return attrs


class TokenizeRequest(OpenAIRequestSerializer):
    """``/tokenize``: a ``prompt`` as is, or chat ``messages`` rendered by the model's
    chat template (with the assistant's opening by default, as a chat completion
    renders them: the count is then its ``usage.prompt_tokens``). ``add_special_tokens``
    (vLLM's): the BOS the tokenizer adds to a text; by default for a prompt (as
    /v1/completions counts it), not for messages (the template writes its own)."""

    model = StrictCharField(allow_blank=False, max_length=256)
    prompt = StrictCharField(required=False)
    messages = ChatMessageSerializer(many=True, required=False, allow_empty=False)
    add_generation_prompt = StrictBooleanField(required=False, default=True)
    tools = ToolSerializer(many=True, required=False, max_length=MAX_TOOLS)  # as the template shows them
    chat_template_kwargs = ChatTemplateKwargsField(required=False)
    add_special_tokens = StrictBooleanField(required=False)

    def validate(self, attrs):
        if ("prompt" in attrs) == ("messages" in attrs):
            _refuse("prompt", "Give either 'prompt' or 'messages'.")
        if "chat_template_kwargs" in attrs and "messages" not in attrs:
            _refuse("chat_template_kwargs", "'chat_template_kwargs' applies to 'messages' only.")
        return attrs


class DetokenizeRequest(OpenAIRequestSerializer):
    model = StrictCharField(allow_blank=False, max_length=256)
    tokens = serializers.ListField(child=StrictIntegerField(min_value=0, max_value=2**31 - 1), max_length=1_000_000)


class CompletionRequest(OpenAIRequestSerializer, _SamplingFields):
    NEUTRAL_VALUES = {
        **_SAMPLING_NEUTRAL,
        "echo": (False,),
        "best_of": (1,),
        "suffix": ("",),
    }

    model = StrictCharField(allow_blank=False, max_length=256)
    prompt = PromptField()
    max_tokens = StrictIntegerField(required=False, min_value=1, max_value=2**31 - 1)

    def validate(self, attrs):
        attrs = super().validate(attrs)
        choices = len(attrs["prompt"]) * attrs["n"]
        if choices > MAX_CHOICES:
            _refuse("prompt", f"{len(attrs['prompt'])} prompts with n={attrs['n']} make {choices} choices; "
                              f"the limit is {MAX_CHOICES} per request.")
        return attrs
