"""The one error shape of llmserver, OpenAI's: ``{"error": {message, type, param, code}}``.

Every refusal is an :class:`APIError` of its code's class: one class per :class:`Code`,
carrying the status and OpenAI's ``type``; only the message (and a param or header) varies
per use. Views raise them, DRF's exception handler converts its own exceptions, Django's
400/403/404/500 handlers, the middleware and the HTTP framing answer with them, and a
stream that fails after its 200 sends their body. Nothing answers with an HTML page or a
traceback, and no body is built anywhere else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from enum import StrEnum
from typing import ClassVar

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions

log = logging.getLogger("llmserver.errors")


class Code(StrEnum):
    """Every error code a client can be sent: the ``code`` of the body, and of a usage
    record's ``error_code``."""

    # The request itself.
    BAD_REQUEST = "bad_request"
    INVALID_JSON = "invalid_json"
    INVALID_VALUE = "invalid_value"
    INVALID_TYPE = "invalid_type"
    MISSING_REQUIRED_PARAMETER = "missing_required_parameter"
    UNKNOWN_PARAMETER = "unknown_parameter"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    DUPLICATE_ID = "duplicate_id"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    CHAT_TEMPLATE_MISSING = "chat_template_missing"
    CHAT_TEMPLATE_UNSUPPORTED = "chat_template_unsupported"
    CHAT_TEMPLATE_ERROR = "chat_template_error"
    NOT_FOUND = "not_found"
    MODEL_NOT_FOUND = "model_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_ACCEPTABLE = "not_acceptable"
    REQUEST_TIMEOUT = "request_timeout"
    REQUEST_TOO_LARGE = "request_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    REQUEST_HEADER_TOO_LARGE = "request_header_too_large"
    # Keys and what they may do.
    INVALID_API_KEY = "invalid_api_key"
    USER_INACTIVE = "user_inactive"
    FORBIDDEN = "forbidden"
    ADMIN_KEY_REQUIRED = "admin_key_required"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    # Limits.
    TOO_MANY_AUTHENTICATION_FAILURES = "too_many_authentication_failures"
    REQUESTS_PER_MINUTE_LIMIT = "requests_per_minute_limit"
    TOKENS_PER_MINUTE_LIMIT = "tokens_per_minute_limit"
    TOKEN_BUDGET_EXCEEDED = "token_budget_exceeded"
    COST_BUDGET_EXCEEDED = "cost_budget_exceeded"
    KEY_CONCURRENCY_LIMIT = "key_concurrency_limit"
    # ...of the key's owner, across their keys (accounts.models.UserLimits)...
    USER_REQUESTS_PER_MINUTE_LIMIT = "user_requests_per_minute_limit"
    USER_TOKENS_PER_MINUTE_LIMIT = "user_tokens_per_minute_limit"
    USER_TOKEN_BUDGET_EXCEEDED = "user_token_budget_exceeded"
    USER_COST_BUDGET_EXCEEDED = "user_cost_budget_exceeded"
    USER_CONCURRENCY_LIMIT = "user_concurrency_limit"
    # ...of the key's team, across its members' keys (accounts.models.Team)...
    TEAM_REQUESTS_PER_MINUTE_LIMIT = "team_requests_per_minute_limit"
    TEAM_TOKENS_PER_MINUTE_LIMIT = "team_tokens_per_minute_limit"
    TEAM_TOKEN_BUDGET_EXCEEDED = "team_token_budget_exceeded"
    TEAM_COST_BUDGET_EXCEEDED = "team_cost_budget_exceeded"
    TEAM_CONCURRENCY_LIMIT = "team_concurrency_limit"
    # ...and of the deployment.
    SERVER_CONCURRENCY_LIMIT = "server_concurrency_limit"
    # The chat page's conversations (chat.history).
    CONVERSATION_CHANGED = "conversation_changed"
    # Models and the engine.
    MODEL_BUSY = "model_busy"
    MODEL_CAPACITY = "model_capacity"
    MODEL_UNAVAILABLE = "model_unavailable"
    ENGINE_OVERLOADED = "engine_overloaded"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    ENGINE_ERROR = "engine_error"
    SERVER_SHUTTING_DOWN = "server_shutting_down"
    INTERNAL_ERROR = "internal_error"


# The ``type`` OpenAI sends for each status; any other status is a client's mistake.
_TYPE_FOR_STATUS = {
    403: "permission_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}

# Each code's class, filled in as the classes are defined.
_CLASSES: dict[Code, type[APIError]] = {}


class APIError(Exception):
    """A failure a client should see. Its class says the status, ``code`` and ``type``;
    an instance adds the message, and the ``param`` and headers (``Retry-After``) of
    this use."""

    status: ClassVar[int]
    code: ClassVar[Code]
    type: ClassVar[str]

    def __init__(self, message: str, *, param: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = dict(headers or {})

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code")
        if code is None:
            return  # a subclass of a code's class, e.g. accounts.refusals.UnknownKey
        if code in _CLASSES:
            raise TypeError(f"{code} already has its class, {_CLASSES[code].__name__}")
        if "type" not in cls.__dict__:
            cls.type = _TYPE_FOR_STATUS.get(cls.status, "invalid_request_error")
        _CLASSES[code] = cls

    def reworded(self, message: str, *, headers: Mapping[str, str] | None = None) -> APIError:
        """The same refusal in other words (and with ``headers`` instead, if given)."""
        error = APIError.__new__(type(self))
        APIError.__init__(error, message, param=self.param, headers=self.headers if headers is None else headers)
        return error

    def fields(self) -> dict:
        return {"message": self.message, "type": self.type, "param": self.param, "code": str(self.code)}

    def body(self) -> dict:
        """The error object of a response, a stream's last chunk or a chat frame."""
        return {"error": self.fields()}

    def json(self) -> bytes:
        """:meth:`body` as JSON, for an answer written to the socket without Django."""
        return json.dumps(self.body()).encode()

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response

    def responses_event(self) -> dict:
        """The fields of a Responses API stream's ``error`` event."""
        return {"code": str(self.code), "message": self.message, "param": self.param}

    def responses_error(self) -> dict:
        """The ``error`` of a failed Responses API response object."""
        return {"code": str(self.code), "message": self.message}


def error_class(code: Code | str) -> type[APIError]:
    """The class of ``code`` (ValueError for a string that is no :class:`Code`)."""
    return _CLASSES[Code(code)]


# --- the classes, one per code -----------------------------------------------------------
# The request itself.


class BadRequest(APIError):
    status, code = 400, Code.BAD_REQUEST


class InvalidJSON(APIError):
    status, code = 400, Code.INVALID_JSON


class InvalidValue(APIError):
    status, code = 400, Code.INVALID_VALUE


class InvalidType(APIError):
    status, code = 400, Code.INVALID_TYPE


class MissingRequiredParameter(APIError):
    status, code = 400, Code.MISSING_REQUIRED_PARAMETER


class UnknownParameter(APIError):
    status, code = 400, Code.UNKNOWN_PARAMETER


class UnsupportedParameter(APIError):
    status, code = 400, Code.UNSUPPORTED_PARAMETER


class DuplicateId(APIError):
    """A chat turn named with the id of one still running."""
    status, code = 400, Code.DUPLICATE_ID


class ContextLengthExceeded(APIError):
    status, code = 400, Code.CONTEXT_LENGTH_EXCEEDED


class ChatTemplateMissing(APIError):
    status, code = 400, Code.CHAT_TEMPLATE_MISSING


class ChatTemplateUnsupported(APIError):
    status, code = 400, Code.CHAT_TEMPLATE_UNSUPPORTED


class ChatTemplateError(APIError):
    status, code = 400, Code.CHAT_TEMPLATE_ERROR


class NotFound(APIError):
    status, code = 404, Code.NOT_FOUND


class ModelNotFound(APIError):
    status, code = 404, Code.MODEL_NOT_FOUND


class MethodNotAllowed(APIError):
    status, code = 405, Code.METHOD_NOT_ALLOWED


class NotAcceptable(APIError):
    """An ``Accept`` header that JSON does not satisfy."""
    status, code = 406, Code.NOT_ACCEPTABLE


class RequestTimeout(APIError):
    status, code = 408, Code.REQUEST_TIMEOUT


class RequestTooLarge(APIError):
    status, code = 413, Code.REQUEST_TOO_LARGE


class UnsupportedMediaType(APIError):
    status, code = 415, Code.UNSUPPORTED_MEDIA_TYPE


class RequestHeaderTooLarge(APIError):
    status, code = 431, Code.REQUEST_HEADER_TOO_LARGE


# Keys and what they may do.


class InvalidAPIKey(APIError):
    status, code = 401, Code.INVALID_API_KEY


class UserInactive(APIError):
    status, code = 401, Code.USER_INACTIVE


class Forbidden(APIError):
    status, code = 403, Code.FORBIDDEN


class AdminKeyRequired(APIError):
    status, code = 403, Code.ADMIN_KEY_REQUIRED


class ModelNotAllowed(APIError):
    status, code = 403, Code.MODEL_NOT_ALLOWED


# Limits: each 429 says when to retry (Retry-After).


class TooManyAuthenticationFailures(APIError):
    status, code = 429, Code.TOO_MANY_AUTHENTICATION_FAILURES


class RequestsPerMinuteLimit(APIError):
    status, code = 429, Code.REQUESTS_PER_MINUTE_LIMIT


class TokensPerMinuteLimit(APIError):
    status, code = 429, Code.TOKENS_PER_MINUTE_LIMIT


class TokenBudgetExceeded(APIError):
    status, code = 429, Code.TOKEN_BUDGET_EXCEEDED


class CostBudgetExceeded(APIError):
    status, code = 429, Code.COST_BUDGET_EXCEEDED


class KeyConcurrencyLimit(APIError):
    status, code = 429, Code.KEY_CONCURRENCY_LIMIT


class UserRequestsPerMinuteLimit(APIError):
    status, code = 429, Code.USER_REQUESTS_PER_MINUTE_LIMIT


class UserTokensPerMinuteLimit(APIError):
    status, code = 429, Code.USER_TOKENS_PER_MINUTE_LIMIT


class UserTokenBudgetExceeded(APIError):
    status, code = 429, Code.USER_TOKEN_BUDGET_EXCEEDED


class UserCostBudgetExceeded(APIError):
    status, code = 429, Code.USER_COST_BUDGET_EXCEEDED


class UserConcurrencyLimit(APIError):
    status, code = 429, Code.USER_CONCURRENCY_LIMIT


class TeamRequestsPerMinuteLimit(APIError):
    status, code = 429, Code.TEAM_REQUESTS_PER_MINUTE_LIMIT


class TeamTokensPerMinuteLimit(APIError):
    status, code = 429, Code.TEAM_TOKENS_PER_MINUTE_LIMIT


class TeamTokenBudgetExceeded(APIError):
    status, code = 429, Code.TEAM_TOKEN_BUDGET_EXCEEDED


class TeamCostBudgetExceeded(APIError):
    status, code = 429, Code.TEAM_COST_BUDGET_EXCEEDED


class TeamConcurrencyLimit(APIError):
    status, code = 429, Code.TEAM_CONCURRENCY_LIMIT


class ServerConcurrencyLimit(APIError):
    status, code = 429, Code.SERVER_CONCURRENCY_LIMIT


# Models and the engine.


class ConversationChanged(APIError):
    """A conversation saved over a newer copy (another tab or browser wrote it since)."""
    status, code = 409, Code.CONVERSATION_CHANGED


class ModelBusy(APIError):
    """A model to unload that still has requests in flight."""
    status, code = 409, Code.MODEL_BUSY


class ModelCapacity(APIError):
    status, code = 503, Code.MODEL_CAPACITY


class ModelUnavailable(APIError):
    status, code = 503, Code.MODEL_UNAVAILABLE


class EngineOverloaded(APIError):
    status, code = 503, Code.ENGINE_OVERLOADED


class EngineUnavailableError(APIError):
    """The API's refusal for inference.engine.EngineUnavailable: the model's engine is
    stopping or stopped (inference.serving.generation_error builds it)."""
    status, code = 503, Code.ENGINE_UNAVAILABLE


class EngineError(APIError):
    status, code = 500, Code.ENGINE_ERROR


class ServerShuttingDown(APIError):
    status, code = 503, Code.SERVER_SHUTTING_DOWN


class InternalError(APIError):
    status, code = 500, Code.INTERNAL_ERROR


def model_not_found(model: str) -> ModelNotFound:
    return ModelNotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model")


# Seconds a client is asked to wait after a shutdown refusal: about a restart's time.
SHUTDOWN_RETRY_AFTER_SECONDS = 5


def shutting_down(message: str = "The server is shutting down and takes no new requests; retry shortly.") -> APIError:
    """503 for work this server will not do because it is stopping (llmserver.shutdown);
    another server (or this one, restarted) will."""
    return ServerShuttingDown(message, headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER_SECONDS)})


def internal_error(message: str = "The server had an error while processing your request.") -> InternalError:
    return InternalError(message)


# --- DRF ------------------------------------------------------------------------------

# DRF's field error codes, in OpenAI's vocabulary; the protocol's own checks give Codes.
_FIELD_CODES = {
    "required": Code.MISSING_REQUIRED_PARAMETER,
    "null": Code.INVALID_TYPE,
    "invalid": Code.INVALID_TYPE,
    "not_a_list": Code.INVALID_TYPE,
    "not_a_dict": Code.INVALID_TYPE,
    **{code.value: code for code in (Code.INVALID_TYPE, Code.MISSING_REQUIRED_PARAMETER, Code.UNKNOWN_PARAMETER,
                                     Code.UNSUPPORTED_PARAMETER)},
}


def _first_field_error(detail, path: str = "") -> tuple[str, drf_exceptions.ErrorDetail] | None:
    """Walk DRF's nested error detail to the first message, building OpenAI's param path
    (``messages[0].content``)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors":
                key_path = path
            elif isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                key_path = f"{path}[{key}]"
            else:
                key_path = f"{path}.{key}" if path else str(key)
            found = _first_field_error(value, key_path)
            if found:
                return found
        return None
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)) and value:
                # A list of per-item errors (ListSerializer / ListField children).
                found = _first_field_error(value, f"{path}[{index}]")
                if found:
                    return found
            elif isinstance(value, drf_exceptions.ErrorDetail):
                return path, value
        return None
    if isinstance(detail, drf_exceptions.ErrorDetail):
        return path, detail
    return None


def validation_error(exc: drf_exceptions.ValidationError) -> APIError:
    found = _first_field_error(exc.detail)
    if not found:
        return InvalidValue("Invalid request.")
    param, detail = found
    code = _FIELD_CODES.get(detail.code, Code.INVALID_VALUE)
    if code == Code.MISSING_REQUIRED_PARAMETER:
        message = f"Missing required parameter: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {detail}"
    else:
        message = str(detail)
    return error_class(code)(message, param=param or None)


def drf_exception_handler(exc, context) -> JsonResponse:
    """DRF's EXCEPTION_HANDLER: every exception a view raises leaves in OpenAI's shape."""
    return as_api_error(exc, context.get("view") if context else None).response()


def as_api_error(exc: Exception, where=None) -> APIError:
    """The APIError a client is answered with for ``exc``: itself, or DRF's and Django's
    exceptions in OpenAI's shape; anything else is a 500 (logged, naming ``where``)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, drf_exceptions.ValidationError):
        return validation_error(exc)
    if isinstance(exc, drf_exceptions.ParseError):
        return InvalidJSON(f"We could not parse the JSON body of your request: {exc.detail}")
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return UnsupportedMediaType("Unsupported Content-Type; send the request body as application/json.")
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        return MethodNotAllowed(str(exc.detail))
    if isinstance(exc, drf_exceptions.NotAcceptable):
        return NotAcceptable(str(exc.detail))
    if isinstance(exc, drf_exceptions.NotFound):
        return NotFound(str(exc.detail))
    if isinstance(exc, Http404):
        return NotFound(str(exc) or "Not found.")
    if isinstance(exc, RequestDataTooBig):
        return too_large()
    cls = _CLASSES.get(getattr(exc, "default_code", None))
    if isinstance(exc, drf_exceptions.APIException) and cls is not None and cls.status == exc.status_code:
        return cls(str(exc.detail))
    log.error("Unhandled error in %s", where.__class__.__name__ if where is not None else "a request",
              exc_info=exc)
    return internal_error()


def too_large() -> RequestTooLarge:
    """413 for a body over MAX_REQUEST_SIZE_MB."""
    from django.conf import settings

    return RequestTooLarge(f"Request body too large: the limit is {settings.MAX_REQUEST_SIZE_MB:g} MB.")


def request_too_large() -> JsonResponse:
    return too_large().response()


# --- Django's handlers (urls.handler400/403/404/500) -----------------------------------


def handler400(request, exception=None):
    if isinstance(exception, RequestDataTooBig):
        return request_too_large()
    return BadRequest("Bad request.").response()


def handler403(request, exception=None):
    return Forbidden("Forbidden.").response()


def csrf_failure(request, reason: str = ""):
    """CSRF_FAILURE_VIEW: a page's form (a browser asking for HTML) gets Django's page; a
    script's request (the chat page's fetch, any API client) the error in OpenAI's shape."""
    if "text/html" in request.headers.get("Accept", ""):
        from django.views.csrf import csrf_failure as page

        return page(request, reason)
    return Forbidden(f"CSRF verification failed: {reason.rstrip('.') or 'no valid token'}. Send the page's csrftoken in "
                     "X-CSRFToken.").response()


def handler404(request, exception=None):
    return NotFound(f"Unknown path: {request.path}").response()


def handler500(request):
    return internal_error().response()
