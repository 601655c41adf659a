"""The OpenAPI 3 schema of the API, served at ``GET /openapi.json`` (as vLLM serves it).

drf-spectacular generates it from the views and the request serializers of
:mod:`inference.protocol`. What it cannot see is declared here: the JSON types of the
custom fields (``stop``, ``prompt``, a message's ``content``...), every operation's
responses (200, and the one error shape for each refusal) and the bearer-key security.

The declarations live in this module, applied to the views and fields from outside,
rather than as decorators in ``views.py`` and ``protocol.py``: there they would be as
long as the code they describe, and a reader of a view should see what it does, not
its documentation. The price is that a new endpoint must be added here too; the test of
the served schema (tests/test_openapi.py) lists every path, so a missing one shows.
"""

from __future__ import annotations

from functools import cache

from django.http import JsonResponse
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.settings import patched_settings
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers

import llmserver
from accounts.policies import Anyone
from inference import protocol, protocol_responses, views

BEARER = [{"bearerAuth": []}]

_SPECTACULAR = {
    "TITLE": "llmserver",
    "DESCRIPTION": "An OpenAI-compatible API for ONNX Runtime GenAI models. Every /v1 path and /tokenize, "
                   "/detokenize need an API key (Authorization: Bearer sk-...). Errors have OpenAI's shape: "
                   '{"error": {"message", "type", "param", "code"}}.',
    "VERSION": llmserver.__version__,
    # One schema per serializer, request and response alike (the request bodies are only requests).
    "COMPONENT_SPLIT_REQUEST": False,
    "APPEND_COMPONENTS": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key, sk-..."}},
    },
    # The enums of the protocol's ChoiceFields, named for what they are (else spectacular
    # names them by hash, e.g. Type7c4Enum).
    "ENUM_NAME_OVERRIDES": {
        "RoleEnum": ["system", "developer", "user", "assistant", "tool"],
        "ResponseFormatTypeEnum": ["text", "json_object", "json_schema"],
        "FunctionTypeEnum": ["function"],
    },
    "ENUM_GENERATE_CHOICE_DESCRIPTION": False,
    # allow_blank=False as minLength 1 (spectacular does it only for split request components).
    "ENFORCE_NON_BLANK_FIELDS": True,
}


# --- the custom fields' JSON types --------------------------------------------------------

_STRING = {"type": "string"}
_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "minItems": 1}
_TOOL_CHOICE_MODES = {"type": "string", "enum": ["none", "auto", "required"]}

extend_schema_field({
    "description": "A string, or a list of up to 4 strings; generation stops before any of them.",
    "oneOf": [{"type": "string", "minLength": 1},
              {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": protocol.MAX_STOP_SEQUENCES}],
})(protocol.StopField)

extend_schema_field({
    "description": "A string, a list of strings, a list of token ids, or a list of lists of token ids.",
    "oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string", "minLength": 1},
                                                    "minItems": 1},
              _TOKEN_IDS, {"type": "array", "items": _TOKEN_IDS, "minItems": 1}],
})(protocol.PromptField)

extend_schema_field({
    "description": "A string, or a list of text parts joined into one.",
    "oneOf": [_STRING, {"type": "array", "items": {
        "type": "object", "required": ["type", "text"],
        "properties": {"type": {"type": "string", "enum": ["text"]}, "text": _STRING}}}],
    "nullable": True,
})(protocol.MessageContentField)

extend_schema_field({
    "oneOf": [_TOOL_CHOICE_MODES, {
        "type": "object", "required": ["type", "function"], "additionalProperties": False,
        "properties": {"type": {"type": "string", "enum": ["function"]},
                       "function": {"type": "object", "required": ["name"], "properties": {"name": _STRING}}},
    }],
})(protocol.ToolChoiceField)

extend_schema_field({
    "oneOf": [_TOOL_CHOICE_MODES, {
        "type": "object", "required": ["type", "name"],
        "properties": {"type": {"type": "string", "enum": ["function"]}, "name": _STRING},
    }],
})(protocol_responses.ResponsesToolChoiceField)

_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"type": "string", "enum": ["input_text", "output_text"]}, "text": _STRING}}
extend_schema_field({
    "description": "A string (one user message), or a list of input items: messages, function_call, "
                   "function_call_output, and reasoning (its reasoning_text goes with the assistant turn after it).",
    "oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": {"oneOf": [
        {"type": "object", "required": ["role", "content"], "properties": {
            "type": {"type": "string", "enum": ["message"]},
            "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
            "content": {"oneOf": [_STRING, {"type": "array", "items": _TEXT_PART}]}}},
        {"type": "object", "required": ["type", "call_id", "name", "arguments"], "properties": {
            "type": {"type": "string", "enum": ["function_call"]},
            "call_id": _STRING, "name": _STRING, "arguments": _STRING}},
        {"type": "object", "required": ["type", "call_id", "output"], "properties": {
            "type": {"type": "string", "enum": ["function_call_output"]}, "call_id": _STRING, "output": _STRING}},
        {"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string", "enum": ["reasoning"]},
            "content": {"type": "array", "items": {"type": "object", "required": ["type", "text"], "properties": {
                "type": {"type": "string", "enum": ["reasoning_text"]}, "text": _STRING}}}}},
    ]}}],
})(protocol_responses.ResponsesInputField)


# --- responses ---------------------------------------------------------------------------


class ErrorDetail(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class Error(serializers.Serializer):
    """OpenAI's error shape: every refusal, on every path."""

    error = ErrorDetail()


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(Error, description=description)


_AUTH_ERRORS = {401: _error("No API key, or one that is unknown, revoked or expired (invalid_api_key).")}
_BODY_ERRORS = {
    400: _error("The body is not valid JSON, or a parameter is invalid (the error names it in param)."),
    413: _error("The body is over MAX_REQUEST_SIZE_MB (request_too_large)."),
    415: _error("The body is not application/json (unsupported_media_type)."),
}
_MODEL_ERRORS = {
    403: _error("The key may not use this model (model_not_allowed)."),
    404: _error("No such model (model_not_found)."),
    503: _error("The model cannot be loaded, or every loaded model is busy (Retry-After)."),
}
_GENERATION_ERRORS = {
    **_AUTH_ERRORS, **_BODY_ERRORS, **_MODEL_ERRORS,
    429: _error("A limit of the key or of the server is reached; Retry-After says when to try again."),
}
_ADMIN_ERRORS = {**_AUTH_ERRORS, 403: _error("The key has no admin flag (admin_key_required).")}

_USAGE = {"type": "object", "properties": {
    "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"},
}}
_CHAT_COMPLETION = {"type": "object", "required": ["id", "object", "created", "model", "choices"], "properties": {
    "id": _STRING, "object": {"type": "string", "enum": ["chat.completion"]}, "created": {"type": "integer"},
    "model": _STRING, "usage": _USAGE,
    "choices": {"type": "array", "items": {"type": "object", "properties": {
        "index": {"type": "integer"},
        "message": {"type": "object", "properties": {
            "role": {"type": "string", "enum": ["assistant"]}, "content": {"type": "string", "nullable": True},
            "tool_calls": {"type": "array", "items": {"type": "object"}}}},
        "finish_reason": {"type": "string", "enum": ["stop", "length", "tool_calls"]}}}},
}}
_COMPLETION = {"type": "object", "required": ["id", "object", "created", "model", "choices"], "properties": {
    "id": _STRING, "object": {"type": "string", "enum": ["text_completion"]}, "created": {"type": "integer"},
    "model": _STRING, "usage": _USAGE,
    "choices": {"type": "array", "items": {"type": "object", "properties": {
        "index": {"type": "integer"}, "text": _STRING, "finish_reason": {"type": "string", "enum": ["stop", "length"]}}}},
}}
_RESPONSE = {"type": "object", "required": ["id", "object", "status", "output"], "properties": {
    "id": _STRING, "object": {"type": "string", "enum": ["response"]}, "created_at": {"type": "integer"},
    "status": _STRING, "model": _STRING, "output": {"type": "array", "items": {"type": "object"}},
    "usage": {"type": "object"},
}}
_MODEL = {"type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
    "id": _STRING, "object": {"type": "string", "enum": ["model"]}, "created": {"type": "integer"},
    "owned_by": _STRING,
    "max_model_len": {"type": "integer", "nullable": True,
                      "description": "The tokens one sequence (prompt and answer) may hold; null if unknown."},
}}
_MODEL_LIST = {"type": "object", "required": ["object", "data"], "properties": {
    "object": {"type": "string", "enum": ["list"]}, "data": {"type": "array", "items": _MODEL},
}}
_MODEL_STATUS = {"type": "object", "required": ["id", "state"], "properties": {
    "id": _STRING, "aliases": {"type": "array", "items": _STRING},
    "state": {"type": "string", "enum": ["unloaded", "loading", "loaded", "unloading", "failed"]},
    "error": {"type": "string", "nullable": True}, "in_flight": {"type": "integer"},
}}
_LOADED_MODELS = {"type": "object", "required": ["object", "data"], "properties": {
    "object": {"type": "string", "enum": ["list"]}, "max_loaded_models": {"type": "integer"},
    "data": {"type": "array", "items": _MODEL_STATUS},
}}
_TOKENIZED = {"type": "object", "required": ["count", "max_model_len", "tokens"], "properties": {
    "count": {"type": "integer"}, "max_model_len": {"type": "integer"},
    "tokens": {"type": "array", "items": {"type": "integer"}},
}}
_DETOKENIZED = {"type": "object", "required": ["prompt"], "properties": {"prompt": _STRING}}
_HEALTH = {"type": "object", "required": ["status", "version", "model", "models"], "properties": {
    "status": {"type": "string", "enum": ["ok", "unavailable"]}, "version": _STRING, "model": _STRING,
    "models": {"type": "array", "items": {"type": "object"}},
}}
_EVENT_STREAM = OpenApiResponse(
    {"type": "string"},
    description="With stream: true, server-sent events: one chunk object per data: line, then data: [DONE] "
                "(the Responses API: named events and no [DONE]).",
)


def _generation(request, answer: dict) -> dict:
    return {"request": request, "auth": BEARER, "responses": {
        (200, "application/json"): OpenApiResponse(answer), (200, "text/event-stream"): _EVENT_STREAM,
        **_GENERATION_ERRORS,
    }}


_MODEL_ID = OpenApiParameter("model_id", str, OpenApiParameter.PATH, description="A model's id or alias.")

# view -> (operationId as OpenAI names it where it has one, tag, summary, extend_schema arguments)
_OPERATIONS = {
    views.ChatCompletionsView: ("createChatCompletion", "OpenAI", "Create a chat completion",
                                _generation(protocol.ChatCompletionRequest, _CHAT_COMPLETION)),
    views.CompletionsView: ("createCompletion", "OpenAI", "Create a completion",
                            _generation(protocol.CompletionRequest, _COMPLETION)),
    views.ResponsesView: ("createResponse", "OpenAI", "Create a response (stateless)",
                          _generation(protocol_responses.ResponsesRequest, _RESPONSE)),
    views.ModelListView: ("listModels", "OpenAI", "List the models the key may use",
                          {"auth": BEARER, "responses": {200: _MODEL_LIST, **_AUTH_ERRORS}}),
    views.ModelDetailView: ("retrieveModel", "OpenAI", "A model, by id or alias",
                            {"auth": BEARER, "parameters": [_MODEL_ID],
                             "responses": {200: _MODEL, **_AUTH_ERRORS, **_MODEL_ERRORS}}),
    views.LoadedModelsView: ("listLoadedModels", "Models", "The models in memory (admin keys)",
                             {"auth": BEARER, "responses": {200: _LOADED_MODELS, **_ADMIN_ERRORS}}),
    views.LoadModelView: ("loadModel", "Models", "Load a model (admin keys)",
                          {"auth": BEARER, "request": None, "parameters": [_MODEL_ID],
                           "responses": {200: _MODEL_STATUS, **_MODEL_ERRORS, **_ADMIN_ERRORS}}),
    views.UnloadModelView: ("unloadModel", "Models", "Unload a model (admin keys)",
                            {"auth": BEARER, "request": None, "parameters": [_MODEL_ID],
                             "responses": {200: _MODEL_STATUS, **_MODEL_ERRORS, **_ADMIN_ERRORS,
                                           409: _error("The model has requests in flight (model_busy).")}}),
    views.TokenizeView: ("tokenize", "Tokenizer", "Tokenize a prompt or chat messages",
                         {"auth": BEARER, "request": protocol.TokenizeRequest,
                          "responses": {200: _TOKENIZED, **_AUTH_ERRORS, **_BODY_ERRORS, **_MODEL_ERRORS}}),
    views.DetokenizeView: ("detokenize", "Tokenizer", "Turn token ids back into text",
                           {"auth": BEARER, "request": protocol.DetokenizeRequest,
                            "responses": {200: _DETOKENIZED, **_AUTH_ERRORS, **_BODY_ERRORS, **_MODEL_ERRORS}}),
    views.HealthView: ("health", "Server", "Liveness and the models' state",
                       {"auth": [], "responses": {200: _HEALTH, 503: OpenApiResponse(_HEALTH, "No model is serving.")}}),
    views.MetricsView: ("metrics", "Server", "Prometheus metrics (admin keys, or a client address in METRICS_ALLOWED_IPS)",
                        {"auth": [*BEARER, {}],
                         "responses": {(200, "text/plain"): OpenApiResponse({"type": "string"}), **_ADMIN_ERRORS}}),
}


def _annotate(view, operation_id: str, tag: str, summary: str, arguments: dict) -> None:
    """Annotate the view class, not its method: the generation views share
    _GenerationView.post, while the class's ``schema`` is read by the schema generator
    alone. The description is explicit, or spectacular would take the view's docstring
    (notes for this code's readers, not for the API's)."""
    extend_schema(summary=summary, description=f"{summary}.", tags=[tag], **arguments)(view)
    # The operationId by overriding the method, as spectacular refuses an operation_id on
    # a class (which could have several methods; ours have one each).
    view.schema = type(f"{view.__name__}Schema", (type(view.schema),), {"get_operation_id": lambda self: operation_id})()


for _view, _annotation in _OPERATIONS.items():
    _annotate(_view, *_annotation)


@cache
def openapi_schema() -> dict:
    """The schema, generated once per process (it depends on the code alone)."""
    with patched_settings(_SPECTACULAR):
        schema = SchemaGenerator().get_schema(request=None, public=True)
    _refine(schema["components"]["schemas"])
    return schema


# Serializers that refuse a field they do not know (OpenAIRequestSerializer, a message).
_CLOSED = ("ChatCompletionRequest", "CompletionRequest", "ResponsesRequest", "TokenizeRequest", "DetokenizeRequest",
           "ChatMessage")


def _refine(components: dict) -> None:
    """What spectacular does not read off the serializers' fields: unknown fields are
    refused, lists that may not be empty (allow_empty=False), the function name's
    pattern, and the rules across fields of a chat message and of /tokenize."""
    for name in _CLOSED:
        components[name]["additionalProperties"] = False
    for name, field in (("ChatCompletionRequest", "messages"), ("TokenizeRequest", "messages"),
                        ("ChatMessage", "tool_calls")):
        components[name]["properties"][field]["minItems"] = 1
    for name in ("Function", "ResponsesFunctionTool", "FunctionCall"):
        components[name]["properties"]["name"]["pattern"] = protocol._FUNCTION_NAME.pattern
    components["TokenizeRequest"]["oneOf"] = [{"required": ["prompt"]}, {"required": ["messages"]}]
    components["ChatMessage"] = _chat_message(components["ChatMessage"]["properties"])


def _chat_message(fields: dict) -> dict:
    """A chat message by its role (ChatMessageSerializer.validate): content is required
    but for an assistant message with tool_calls; a tool message names its call."""

    def variant(roles, required, *names, nullable=False):
        content = {**fields["content"], "nullable": nullable}
        properties = {"role": {"type": "string", "enum": roles}, "content": content,
                      **{name: fields[name] for name in names}}
        return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}

    return {"oneOf": [
        variant(["system", "developer", "user"], ["role", "content"], "name"),
        variant(["assistant"], ["role", "content"], "name", "reasoning_content"),
        variant(["assistant"], ["role", "tool_calls"], "name", "tool_calls", "reasoning_content", nullable=True),
        variant(["tool"], ["role", "content", "tool_call_id"], "tool_call_id"),
    ]}


@extend_schema(exclude=True)
class OpenAPIView(views.AsyncAPIView):
    """``GET /openapi.json``: public, like /health."""

    policy = Anyone()

    async def get(self, request):
        return JsonResponse(openapi_schema())
